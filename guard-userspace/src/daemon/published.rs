//! What the health outputs serve, written once a tick by the evaluation and read by the
//! servers' tasks through a `watch` channel (a read never waits for the control plane, so a
//! slow map read never stalls a load balancer's check).
use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::{
    health::HealthReport,
    serve::metrics::{self, Snapshot},
};

/// One publication: the report, the `/metrics` body, and the operator change it took in.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) report: HealthReport,
    pub(super) metrics: String,
    /// The [`crate::control::Control::operator_seq`] the report took into account.
    pub(super) seq: u64,
}

pub(super) struct Published {
    tx: watch::Sender<Arc<Current>>,
}

impl Published {
    pub(super) fn new(now_unix: u64) -> Self {
        let report = HealthReport::starting(now_unix);
        let metrics = metrics::render(&Snapshot {
            up: false,
            interfaces: &[],
            bans_active: 0,
            maps: &[],
            health: Some(&report),
            services: &[],
            known_sources: 0,
            prefix_bans: 0,
        });
        let (tx, _) = watch::channel(Arc::new(Current {
            report,
            metrics,
            seq: 0,
        }));
        Self { tx }
    }

    /// A reader for a server task.
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Current>> {
        self.tx.subscribe()
    }

    pub(super) fn report(&self) -> HealthReport {
        self.tx.borrow().report.clone()
    }

    pub(super) fn publish(&self, report: HealthReport, metrics: String, seq: u64) {
        self.tx.send_replace(Arc::new(Current {
            report,
            metrics,
            seq,
        }));
    }

    /// The first report that took operator change `seq` into account, waiting up to `wait`;
    /// the latest report if none came in time.
    pub(super) async fn report_after(&self, seq: u64, wait: Duration) -> HealthReport {
        let mut rx = self.tx.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|c| c.seq >= seq)).await;
        self.report()
    }
}
