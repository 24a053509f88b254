//! What the daemon serves to load balancers and monitoring: the health HTTP endpoints
//! (`/livez`, `/readyz`, `/readyz/haproxy`, `/metrics`), the HAProxy agent-check port, and the
//! metrics they render.
//!
//! Both servers are tasks on the daemon's runtime: a connection is a task holding a few
//! kilobytes, bounded by a semaphore, every read and write under a timeout, so slow or idle
//! clients cost next to nothing and never make a probe wait for a thread. Connections from
//! the sources the daemon prefers (the allow list: the load balancers) have a pool of their
//! own, so clients holding every ordinary slot cannot keep a probe out. [`Running`] runs one
//! on a thread of its own, for callers without a runtime (tests, embedders).
//!
//! Hand-written here: the lingering close (`linger`), which neither hyper nor tokio does for
//! us and without which a close with unread input resets the connection (RFC 9112 9.6).
pub mod agent;
pub mod http;
pub mod metrics;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;

/// Which peers get the reserved pool: `true` for the load balancers (the daemon passes the
/// allow list).
pub type PriorityFn = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The listen backlog of the health ports: a burst of connections (a flood of slow clients
/// reconnecting at once) must not overflow the queue and drop a load balancer's SYN, which
/// would cost it a second (the first retransmission). std's default is 128.
pub const BACKLOG: i32 = 4096;

/// A non-blocking TCP listener on `addr` with [`BACKLOG`] (std's `bind` takes no backlog).
///
/// # Errors
///
/// The socket cannot be made, bound or set listening.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket,
        sockopt,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // As std does: a restarted daemon rebinds at once over connections in TIME_WAIT.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    nix::sys::socket::listen(&fd, Backlog::new(BACKLOG).unwrap_or(Backlog::MAXCONN))?;
    Ok(std::net::TcpListener::from(fd))
}

/// How long a close waits for what the client still sends, and how many reads it takes.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_READS: usize = 32;

/// Sends FIN after the response, then reads briefly what the client still sends, so that
/// closing with unread input does not reset the connection and destroy the response in
/// flight (RFC 9112 9.6, "tear-down"). Bounded in time and reads.
pub(crate) async fn linger(mut stream: TcpStream) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        for _ in 0..LINGER_READS {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// The two connection pools of a listener: ordinary clients and the preferred ones.
pub(crate) struct Pools {
    general: Arc<Semaphore>,
    preferred: Arc<Semaphore>,
    priority: Option<PriorityFn>,
}

impl Pools {
    pub(crate) fn new(general: usize, preferred: usize, priority: Option<PriorityFn>) -> Self {
        Self {
            general: Arc::new(Semaphore::new(general)),
            preferred: Arc::new(Semaphore::new(preferred)),
            priority,
        }
    }

    /// A slot for a connection from `peer`, or `None` when its pool is full (never waits: the
    /// accept loop must keep taking the preferred peers' connections).
    pub(crate) fn admit(&self, peer: IpAddr) -> Option<OwnedSemaphorePermit> {
        let preferred = self.priority.as_ref().is_some_and(|p| p(peer));
        let pool = if preferred {
            &self.preferred
        } else {
            &self.general
        };
        Arc::clone(pool).try_acquire_owned().ok()
    }
}

/// Accepts on `listener` until `cancel`, handing each connection with its slot to `handle`
/// and each one over its pool's bound to `overflow` (which must not wait). Accept errors
/// (out of descriptors) back off for a moment instead of spinning.
pub(crate) async fn accept_loop<H, HF, O>(
    listener: TcpListener,
    pools: Pools,
    cancel: CancellationToken,
    handle: H,
    overflow: O,
) where
    H: Fn(TcpStream, SocketAddr, OwnedSemaphorePermit) -> HF,
    HF: Future<Output = ()> + Send + 'static,
    O: Fn(TcpStream),
{
    let addr = listener.local_addr().ok();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => match pools.admit(peer.ip()) {
                Some(permit) => {
                    let conn = handle(stream, peer, permit);
                    let cancel = cancel.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = cancel.cancelled() => {}
                            () = conn => {}
                        }
                    });
                }
                None => overflow(stream),
            },
            Err(e) => {
                tracing::warn!("{}: accept failed: {e}", display_addr(addr));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn display_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "listener".to_string(), |a| a.to_string())
}

/// A server on a thread of its own with a one-thread runtime, for callers that have none.
/// Dropping it (or [`Running::shutdown`]) stops accepting and waits until the listener is
/// closed; connections in progress are cancelled.
pub struct Running {
    addr: SocketAddr,
    cancel: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Runs `serve(listener, cancel)` on a new thread; `std_listener` is non-blocking.
    pub(crate) fn start<F, Fut>(
        name: &str,
        std_listener: std::net::TcpListener,
        serve: F,
    ) -> io::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let local = std_listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => serve(listener, stop).await,
                        Err(e) => tracing::error!("{local}: cannot serve: {e}"),
                    }
                });
            })?;
        Ok(Self {
            addr: local,
            cancel,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the accept loop.
    pub fn shutdown(self) {}
}

impl Drop for Running {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pool_refuses_at_once_and_the_preferred_pool_is_apart() {
        let lb: IpAddr = "198.18.5.1".parse().unwrap();
        let other: IpAddr = "198.18.9.9".parse().unwrap();
        let pools = Pools::new(2, 1, Some(Arc::new(move |ip| ip == lb)));
        let held: Vec<_> = (0..2)
            .map(|_| pools.admit(other).expect("a slot"))
            .collect();
        assert!(pools.admit(other).is_none(), "full: refused, not queued");
        let probe = pools.admit(lb).expect("the preferred pool is apart");
        assert!(
            pools.admit(lb).is_none(),
            "the preferred pool is bounded too"
        );
        drop(held);
        assert!(pools.admit(other).is_some(), "a slot freed is taken again");
        drop(probe);
        let none = Pools::new(1, 1, None);
        let _one = none.admit(lb).expect("a slot");
        assert!(
            none.admit(lb).is_none(),
            "without a priority, every peer is ordinary"
        );
    }
}
