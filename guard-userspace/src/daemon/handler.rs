//! The daemon's answers on the control socket: what needs the daemon (reload, detach, health,
//! the operator's overrides) here, the rest by [`crate::rpc::dispatch`] over the control plane.
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::{BanEvents, Daemon, OPERATOR_WAIT};
use crate::{
    dataplane::Datapath,
    health::OverrideMode,
    rpc::{self, Handler, Reply, Request, error_chain},
    state,
};

impl<D: Datapath + BanEvents + Send + 'static> Daemon<D> {
    /// `guard detach`: the program off every interface and its pins removed, then every task
    /// stops. The control plane's lock is held meanwhile, so no request changes the maps while
    /// they go away.
    async fn detach(&self) -> Result<Reply, String> {
        let detach = self.detach;
        let done = rpc::blocking(&self.control, move |c| {
            let pin_dir = c.settings().datapath.pin_dir.clone();
            detach(&pin_dir).map(|interfaces| (interfaces, pin_dir))
        })
        .await?;
        match done {
            Ok((interfaces, pin_dir)) => {
                tracing::warn!(
                    "guard detach: removed the program from {} and the pins under {}",
                    interfaces.join(", "),
                    pin_dir.display()
                );
                tracing::info!("detached: stopping");
                self.stop.cancel();
                Ok(Reply::Detached { interfaces })
            }
            Err(e) => Err(format!("detach failed: {}", error_chain(&e))),
        }
    }

    async fn answer(&self, request: Request) -> Result<Reply, String> {
        match request {
            Request::Reload => self.reload().await.map(Reply::Reloaded),
            Request::Detach => self.detach().await,
            Request::Health => Ok(Reply::Health(Box::new(self.published.report()))),
            Request::Status => {
                let mut reply = rpc::dispatch(&self.control, Request::Status).await?;
                if let Reply::Status(s) = &mut reply {
                    if let Some(f) = &self.fleet {
                        s.fleet = Some(f.status());
                    }
                    if let Some(w) = &self.bpffs {
                        s.warnings.push(w.clone());
                    }
                }
                Ok(reply)
            }
            Request::FleetStatus => self.fleet_status(),
            Request::FleetUnban { cidr } => self.fleet_unban(cidr).await,
            Request::FleetListAdd {
                list,
                cidr,
                ttl_secs,
                reason,
            } => self.fleet_list_add(list, cidr, ttl_secs, reason).await,
            Request::FleetListDel { list, cidr } => self.fleet_list_del(list, cidr).await,
            Request::Operator {
                mode,
                for_secs,
                reason,
                force,
            } => {
                if matches!(mode, OverrideMode::Drain | OverrideMode::Maint) {
                    self.drain_slot(for_secs, force).await?;
                }
                let (operator, seq) = rpc::blocking(&self.control, move |c| {
                    c.set_operator(mode, for_secs.map(Duration::from_secs), reason)
                })
                .await?
                .map_err(|e| error_chain(&e))?;
                match &operator {
                    Some(o) => tracing::warn!(
                        "operator: {}{}{}",
                        o.mode.name(),
                        o.reason
                            .as_ref()
                            .map(|r| format!(" ({r})"))
                            .unwrap_or_default(),
                        o.expires
                            .map(|e| format!(" until {}", state::format_unix(e)))
                            .unwrap_or_default()
                    ),
                    None => tracing::warn!("operator: ready (override cleared)"),
                }
                let report = self.published.report_after(seq, OPERATOR_WAIT).await;
                Ok(Reply::Operator {
                    operator,
                    report: Box::new(report),
                })
            }
            Request::Watchdogs => Ok(Reply::Watchdogs(self.controls.reports())),
            Request::WatchdogRestart { name } => self
                .controls
                .restart_by_hand(&name)
                .map(|message| Reply::WatchdogRestart { message }),
            other => rpc::dispatch(&self.control, other).await,
        }
    }
}

impl<D: Datapath + BanEvents + Send + 'static> Handler for Daemon<D> {
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, String>> {
        Box::pin(self.answer(request))
    }
}
