//! A fleet of guards over NATS JetStream KV: this host's bans and `--fleet` list entries
//! published, the others' applied (reason `fleet:<host>`), and the pool's drain budget.
//!
//! One task ([`link`]) owns the connection: it connects (retrying for ever: an unreachable
//! server never stops the daemon, which protects locally meanwhile), opens or creates the
//! buckets, reads each bucket's current state before it watches for changes (so a host that
//! starts or reconnects converges), and publishes what the daemon queues. Everything else
//! talks to it through [`Fleet`]: short locks, no lock across an `.await`.
pub mod budget;
pub mod entry;
mod link;

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

pub use budget::{MemberState, Slots};
pub use entry::{EntryError, SharedEntry, key_for};
pub use link::now_ms;

use crate::{
    cidr::Cidr,
    config::{FleetSettings, Share},
};

/// Publications queued while the servers cannot be reached; the oldest go past this.
const OUTBOX_MAX: usize = 65_536;

/// What the fleet asks of this host's control plane (blocking: called on a blocking thread).
pub trait Apply: Send + Sync + 'static {
    /// Applies another host's entry (a ban, a deny or allow entry).
    ///
    /// # Errors
    ///
    /// A message for the log; the entry is skipped.
    fn put(&self, what: Share, entry: &SharedEntry) -> Result<Applied, String>;
    /// Lifts what the fleet lifted (a deleted key): the ban or list entry of `cidr`.
    ///
    /// # Errors
    ///
    /// A message for the log.
    fn remove(&self, what: Share, cidr: Cidr) -> Result<Applied, String>;
}

/// What applying an entry did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// Not applied, and why (allow-listed here, already expired, nothing to lift).
    Skipped(String),
}

/// The fleet as `guard fleet status`, `guard status` and the metrics see it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetStatus {
    pub servers: Vec<String>,
    pub connected: bool,
    /// Unix seconds of the last change of `connected` (0: never connected yet).
    pub since: u64,
    /// The last connection or bucket error, while not connected.
    pub error: Option<String>,
    pub host: String,
    pub pool: String,
    pub max_drained: f64,
    pub share: Vec<Share>,
    /// The pool's members as they last published, by host.
    pub members: Vec<MemberState>,
    /// The pool's drain slots.
    pub slots: Slots,
    /// Shared entries in the buckets, by origin host, then by kind (`bans`, `deny`, `allow`).
    pub origins: BTreeMap<String, BTreeMap<String, u64>>,
    /// Others' entries applied here, since start.
    pub applied: u64,
    /// Entries skipped (malformed, allow-listed, expired), since start.
    pub skipped: u64,
    /// Malformed entries seen, since start (also in `skipped`).
    pub malformed: u64,
    /// This host's entries published, since start.
    pub published: u64,
    /// Publications waiting for the servers.
    pub queued: u64,
    /// From the origin's publication to applied here, the latest one, milliseconds.
    pub lag_ms: Option<u64>,
}

/// A publication for the link task.
#[derive(Clone, Debug)]
enum Out {
    Put(Share, String, bytes::Bytes),
    Delete(Share, String),
}

/// This host's state for the pool, from the tick.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Local {
    state: String,
    /// Whether the operator has the host drained or in maintenance (holding a slot).
    out: bool,
}

struct Inner {
    settings: FleetSettings,
    status: Mutex<FleetStatus>,
    outbox: Mutex<VecDeque<Out>>,
    wake: Notify,
    local: watch::Sender<Local>,
    conn: Mutex<Option<link::Conn>>,
}

/// The daemon's handle on the fleet (cheap to clone).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    pub fn new(settings: FleetSettings) -> Self {
        let status = FleetStatus {
            servers: settings.servers.clone(),
            host: settings.host.clone(),
            pool: settings.pool.clone(),
            max_drained: settings.max_drained,
            share: settings.share.clone(),
            error: Some("not connected yet".to_string()),
            ..FleetStatus::default()
        };
        Self {
            inner: Arc::new(Inner {
                settings,
                status: Mutex::new(status),
                outbox: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
                local: watch::channel(Local::default()).0,
                conn: Mutex::new(None),
            }),
        }
    }

    pub fn settings(&self) -> &FleetSettings {
        &self.inner.settings
    }

    /// Starts the link task on the current runtime; it stops with `stop`.
    pub fn spawn(
        &self,
        apply: Arc<dyn Apply>,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(link::run(self.clone(), apply, stop))
    }

    fn status_mut(&self) -> std::sync::MutexGuard<'_, FleetStatus> {
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> FleetStatus {
        let mut s = self.status_mut().clone();
        s.queued = self.outbox().len() as u64;
        s
    }

    /// The health warning while the servers cannot be reached (local protection is intact,
    /// so never worse than warn).
    pub fn warning(&self) -> Option<String> {
        let s = self.status_mut();
        (!s.connected).then(|| {
            format!(
                "fleet servers unreachable ({}): protecting with local state",
                s.error.as_deref().unwrap_or("not connected")
            )
        })
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, VecDeque<Out>> {
        self.inner.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, out: Out) {
        let mut q = self.outbox();
        if q.len() >= OUTBOX_MAX {
            q.pop_front();
        }
        q.push_back(out);
        drop(q);
        self.inner.wake.notify_one();
    }

    /// Publishes this host's entry (a new ban, a `--fleet` list entry) if it shares `what`.
    pub fn publish(&self, what: Share, entry: &SharedEntry) {
        if self.inner.settings.shares(what) {
            self.queue(Out::Put(what, key_for(&entry.source), entry.encode()));
        }
    }

    /// Lifts `cidr` everywhere: deletes its key.
    pub fn remove(&self, what: Share, cidr: &Cidr) {
        if self.inner.settings.shares(what) {
            self.queue(Out::Delete(what, key_for(cidr)));
        }
    }

    /// This host's health state and whether the operator has it out; published to the pool.
    pub fn set_local(&self, state: &str, out: bool) {
        let new = Local {
            state: state.to_string(),
            out,
        };
        self.inner.local.send_if_modified(|cur| {
            let changed = *cur != new;
            if changed {
                *cur = new;
            }
            changed
        });
    }

    /// Takes a drain slot in the pool until `until` (Unix seconds, 0: until ready), or says
    /// why not: the hosts already out, or that the budget cannot be checked now.
    ///
    /// # Errors
    ///
    /// A message for the operator, naming the hosts already out and `--force`.
    pub async fn take_slot(&self, until: u64) -> Result<(), String> {
        let conn = self
            .inner
            .conn
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(conn) = conn else {
            return Err(format!(
                "cannot check the drain budget of pool {:?}: the fleet servers cannot be reached ({}); --force drains anyway",
                self.inner.settings.pool,
                self.status_mut().error.clone().unwrap_or_default()
            ));
        };
        link::take_slot(self, &conn, until).await
    }
}
