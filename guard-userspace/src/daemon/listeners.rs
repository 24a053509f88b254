//! The health servers as tasks: bound before they are needed (at start, before anything is
//! attached; on reload, while the old one still serves), each cancelled and waited for when
//! it is replaced, so a port is closed by the time a reload answers.
use std::{net::SocketAddr, sync::Arc};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{DaemonError, published::Published};
use crate::{
    config::HealthSection,
    serve::{
        self, PriorityFn,
        http::{Handlers, HttpServerError},
    },
};

/// One server task.
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Stops it and waits until its listener is closed.
    pub(super) async fn close(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The health servers, each `None` when turned off.
#[derive(Default)]
pub(super) struct Listeners {
    pub(super) http: Option<Server>,
    pub(super) agent: Option<Server>,
}

impl Listeners {
    /// Servers for `section`'s addresses, on the current runtime, cancelled with `parent`. A
    /// server whose address is unchanged from `current` is not bound again (the caller keeps
    /// it, see [`Listeners::replace`]); a changed one is bound here, while the old one serves.
    ///
    /// # Errors
    ///
    /// An address that cannot be bound; whatever was bound here is stopped again.
    pub(super) fn bind(
        section: &HealthSection,
        current: (Option<SocketAddr>, Option<SocketAddr>),
        published: &Published,
        priority: &PriorityFn,
        parent: &CancellationToken,
    ) -> Result<Self, DaemonError> {
        let mut out = Listeners::default();
        if let Some(addr) = section.listen
            && current.0 != Some(addr)
        {
            let listener = serve::http::bind(addr)?;
            let (r, m) = (published.subscribe(), published.subscribe());
            let handlers = Handlers {
                report: Arc::new(move || r.borrow().report.clone()),
                metrics: Arc::new(move || m.borrow().metrics.clone()),
            };
            let cancel = parent.child_token();
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| HttpServerError::Bind { addr, source })?;
            let task = tokio::spawn(serve::http::serve(
                listener,
                handlers,
                Some(Arc::clone(priority)),
                cancel.clone(),
            ));
            out.http = Some(Server {
                addr,
                cancel,
                task: Some(task),
            });
        }
        if let Some(addr) = section.agent_listen
            && current.1 != Some(addr)
        {
            let listener = serve::agent::bind(addr)?;
            let r = published.subscribe();
            let cancel = parent.child_token();
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|source| serve::agent::AgentError::Bind { addr, source })?;
            let task = tokio::spawn(serve::agent::serve(
                listener,
                Arc::new(move || r.borrow().report.clone()),
                Some(Arc::clone(priority)),
                cancel.clone(),
            ));
            out.agent = Some(Server {
                addr,
                cancel,
                task: Some(task),
            });
        }
        Ok(out)
    }

    /// Takes the servers bound by [`Listeners::bind`] for `section`, keeps the unchanged ones
    /// and returns the ones no longer wanted, for the caller to close.
    pub(super) fn replace(&mut self, section: &HealthSection, new: Listeners) -> Listeners {
        let Listeners { http, agent } = new;
        let mut old = Listeners::default();
        if http.is_some() || section.listen.is_none() {
            old.http = std::mem::replace(&mut self.http, http);
        }
        if agent.is_some() || section.agent_listen.is_none() {
            old.agent = std::mem::replace(&mut self.agent, agent);
        }
        old
    }

    pub(super) fn addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.http_addr(), self.agent_addr())
    }

    pub(super) fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|s| s.addr)
    }

    pub(super) fn agent_addr(&self) -> Option<SocketAddr> {
        self.agent.as_ref().map(|s| s.addr)
    }

    /// Stops every server and waits until their listeners are closed.
    pub(super) async fn close(self) {
        let Listeners { http, agent } = self;
        for s in [http, agent].into_iter().flatten() {
            s.close().await;
        }
    }
}
