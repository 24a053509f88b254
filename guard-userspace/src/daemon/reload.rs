//! What happens on SIGHUP or `guard reload`: the config re-read and checked whole; new
//! listen addresses bound while the old ones still serve; the settings applied to the data
//! plane; then the old servers closed. A bad config or an address in use is refused as a
//! whole and the running configuration stays.
use std::time::Duration;

use super::{BanEvents, Daemon, listeners::Listeners, load_settings};
use crate::{
    control::ReloadReport,
    dataplane::Datapath,
    duration::Human,
    rpc::{self, error_chain},
};

impl<D: Datapath + BanEvents + Send + 'static> Daemon<D> {
    /// Re-reads the config; a bad one is rejected and the running one stays.
    pub(super) async fn reload(&self) -> Result<ReloadReport, String> {
        let reject = |why: String| {
            let msg = format!("reload rejected, the running configuration stays: {why}");
            tracing::error!("{msg}");
            msg
        };
        // One at a time: a SIGHUP and a `guard reload` may meet.
        let _one = self
            .reloading
            .acquire()
            .await
            .map_err(|e| reject(e.to_string()))?;
        let settings = load_settings(&self.opts).map_err(|e| reject(error_chain(&e)))?;
        let health_config = settings
            .health
            .config()
            .map_err(|e| reject(e.to_string()))?;
        let section = settings.health.clone();
        // A watchdog's unit or a HAProxy table that is not there refuses the reload.
        let preflight = super::controls::preflight(&settings)
            .await
            .map_err(reject)?;
        let controls = settings.clone();
        // A new listen address is bound while the old one still serves; if it cannot be, the
        // reload is refused as a whole and everything stays as it was.
        let before = self.lock_health().listeners.addrs();
        let bound = Listeners::bind(
            &section,
            before,
            &self.published,
            &self.priority(),
            &self.stop,
        )
        .map_err(|e| reject(error_chain(&e)))?;
        let applied = rpc::blocking(&self.control, move |c| c.apply_settings(settings))
            .await
            .map_err(reject)?;
        let report = match applied {
            Ok(report) => report,
            Err(e) => {
                // `bound` is dropped here: what it bound stops again.
                let msg = format!(
                    "reload failed, the running limits stay: {}",
                    error_chain(&e)
                );
                tracing::error!("{msg}");
                return Err(msg);
            }
        };
        let (old, now) = {
            let mut health = self.lock_health();
            let old = health.listeners.replace(&section, bound);
            health.runner.set_checks(health_config.checks().to_vec());
            health.eval.set_config(health_config);
            (old, health.listeners.addrs())
        };
        self.apply_controls(&controls, &preflight);
        // Closed after the swap, so the new servers answer before the old ones stop.
        old.close().await;
        for (what, before, now) in [
            ("health HTTP", before.0, now.0),
            ("HAProxy agent-check", before.1, now.1),
        ] {
            if before != now {
                match now {
                    Some(a) => tracing::info!("serving {what} on {a} now"),
                    None => tracing::info!("{what} server turned off"),
                }
            }
        }
        let l = report.limits;
        tracing::info!(
            "reloaded {}: {} pps (burst {}), {} SYN/s (burst {}), bans {}{}",
            report.config,
            l.pps,
            l.burst,
            l.syn_pps,
            l.syn_burst,
            Human(Duration::from_secs(l.ban_seconds)),
            if report.dry_run { ", dry run" } else { "" }
        );
        if !report.restart_needed.is_empty() {
            tracing::warn!(
                "changed but not applied, restart the daemon for: {}",
                report.restart_needed.join(", ")
            );
        }
        Ok(report)
    }
}
