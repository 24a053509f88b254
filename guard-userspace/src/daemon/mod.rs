//! `guard run`: load settings, attach (or adopt) the program, restore lists and bans, serve the
//! control socket and the health outputs, and every second expire entries, log new bans and
//! evaluate the host's health; SIGHUP reloads.
//!
//! The daemon runs on tokio, one task per concern: the control socket ([`crate::rpc`]), the
//! health HTTP and agent-check servers ([`crate::serve`]), the ban-event reader (the ring
//! buffer through `AsyncFd`), the program's log reader, the one-second tick (`tick`), the
//! signals (`signals`) and the local checks' runner. One [`CancellationToken`] stops them all,
//! and the daemon waits for them. The control plane is owned by one `Mutex`, taken only for
//! short synchronous work on blocking threads, never across an `.await`; the health outputs
//! read their state through a `watch` channel (`published`).
//!
//! SIGTERM and SIGINT stop the daemon and leave the program attached (fail-static: the pins
//! keep it and its maps alive, and a restarted daemon adopts them). `guard detach` removes it.
mod controls;
mod fleet;
mod handler;
mod listeners;
mod logging;
mod notify;
mod published;
mod reload;
mod run;
#[cfg(test)]
mod tests;
mod tick;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use guard_common::BanEvent;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;

pub use logging::init_logging;
pub use notify::{sd_notify, watchdog};
pub use run::run;

use crate::{
    cidr::Cidr,
    config::{ConfigError, Overrides, Settings},
    control::{Control, ControlError, NewBan},
    dataplane::{Datapath, KernelDatapath, LoadError, link::LinkState},
    duration::Human,
    rpc::ApiError,
    serve::{agent::AgentError, http::HttpServerError},
    state::{self, StateError},
};
use published::Published;
use tick::Health;

/// The data plane's stream of new bans (the ring buffer), drained once a tick.
pub trait BanEvents {
    /// New bans since the last call; never blocks.
    fn take_events(&mut self) -> Vec<BanEvent>;
}

impl BanEvents for KernelDatapath {
    fn take_events(&mut self) -> Vec<BanEvent> {
        KernelDatapath::take_events(self)
    }
}

/// Detaches everything under a pin directory (`dataplane::detach`, or a test's stand-in).
type DetachFn = fn(&Path) -> Result<Vec<String>, LoadError>;

/// How often expiry runs, ban events are drained and health is evaluated.
const TICK: Duration = Duration::from_secs(1);

/// How often the local checks run.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the source tracker is walked to count its entries for the map fill: the one
/// map read that grows with an attack (up to 131,072 entries), so not every second.
const SOURCE_COUNT_EVERY: Duration = Duration::from_secs(10);

/// How often the services' learned rates are saved (they also go with every other save).
const LEARNED_SAVE_EVERY: Duration = Duration::from_secs(300);

/// How long `guard drain|maint|ready` waits for a health report that shows the change.
const OPERATOR_WAIT: Duration = Duration::from_secs(3);

/// New bans logged one by one per tick; the rest are summed up in one line.
pub const BAN_LINES_PER_TICK: usize = 10;

/// What `guard run` was asked for.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `None`: the embedded default.
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    /// Run even when the pins' bpffs is private to the daemon's mount namespace (they die
    /// with it): `--allow-private-bpffs`.
    pub allow_private_bpffs: bool,
    /// `guard run --start-empty`: a damaged state store is moved aside and the daemon starts
    /// without it (from the pinned maps if any survived, else empty), health at warn until
    /// the moved file is deleted. Without it, a damaged store stops the start.
    pub start_empty: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("cannot use the state directory")]
    State(#[from] StateError),
    #[error(
        "the state store {} is damaged ({problem}); guard refuses to start without its lists and bans. Restore the file from a backup, or start with `guard run --start-empty` to move it aside and start from the pinned maps (if any survived) or empty",
        path.display()
    )]
    DamagedStore { path: PathBuf, problem: String },
    #[error("cannot load and attach the XDP program")]
    Load(#[from] LoadError),
    #[error("cannot restore the lists and bans into the maps")]
    Restore(#[source] ControlError),
    #[error("cannot write the limits into the program's config map")]
    KernelConfig(#[source] ControlError),
    #[error("cannot serve the control socket")]
    Api(#[from] ApiError),
    #[error(
        "cannot serve the health HTTP endpoints (choose a free address with --health-listen or [health] listen, or \"\" to turn them off)"
    )]
    HealthHttp(#[from] HttpServerError),
    #[error(
        "cannot serve the HAProxy agent-check port (choose a free address with --agent-listen or [health] agent_listen, or \"\" to turn it off)"
    )]
    Agent(#[from] AgentError),
    #[error("cannot start the health checks")]
    Checks(#[source] std::io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the daemon's runtime")]
    Runtime(#[source] std::io::Error),
    /// A watchdog's unit or an escalation's HAProxy table is not there (the field is named).
    #[error("{0}")]
    Controls(String),
}

/// Reads the settings as `guard run` and `guard reload` do: the file (or embedded default),
/// then the command-line overrides.
///
/// # Errors
///
/// A [`ConfigError`] naming the line, field and value.
pub fn load_settings(opts: &RunOptions) -> Result<Settings, ConfigError> {
    let mut settings = Settings::load(opts.config.as_deref())?;
    settings.apply(&opts.overrides)?;
    Ok(settings)
}

/// Removes the control socket file when the daemon stops, on success or failure, so clients
/// are told at once that no daemon is running.
pub(super) struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            tracing::debug!("removing {}: {e}", self.0.display());
        }
    }
}

/// The running daemon, shared with its tasks.
struct Daemon<D: Datapath> {
    control: Arc<Mutex<Control<D>>>,
    opts: RunOptions,
    /// Cancelled by a signal or `guard detach`: every task stops.
    stop: CancellationToken,
    detach: DetachFn,
    /// Taken for short, synchronous work only (the tick's evaluation, a reload's swap).
    health: Mutex<Health>,
    published: Published,
    /// The source tracker's entry count and when it was taken (read under the control lock).
    sources: Mutex<Option<(usize, Instant)>>,
    /// Whether the program is attached to an interface (the kernel's answer, or a test's).
    link_check: fn(&Path, &str) -> LinkState,
    /// What an attachment is on now: an interface's index, or what holds a chain slot (the
    /// kernel's answer, or a test's). A failed re-attachment is retried when it changes.
    target_now: fn(&str) -> Option<u32>,
    /// Attachments a re-attachment failed on, with the target it was tried at.
    reattach_failed: Mutex<std::collections::HashMap<String, u32>>,
    /// When the learned rates were last saved.
    learned_saved: Mutex<Instant>,
    /// New bans from the ring-buffer reader task, drained by the tick.
    ban_events: Mutex<Option<mpsc::Receiver<Bytes>>>,
    /// The allow list, for the health servers' preferred pool (the load balancers).
    allow: watch::Sender<Arc<Vec<Cidr>>>,
    /// One reload at a time (a SIGHUP and a `guard reload` may meet).
    reloading: Semaphore,
    /// Why the pins will not outlive the daemon, if they will not (a private bpffs the
    /// operator allowed); shown by `guard status`.
    bpffs: Option<String>,
    /// The pin directory's lock, held for the daemon's life (`None` in tests).
    pin_lock: Option<crate::dataplane::PinDirLock>,
    /// The watchdogs and escalations, and their tasks.
    controls: controls::Controls,
    /// The fleet this host is in (`[fleet]`), if any.
    fleet: Option<crate::fleet::Fleet>,
}

impl<D: Datapath + BanEvents> Daemon<D> {
    fn new(
        control: Control<D>,
        opts: RunOptions,
        detach: DetachFn,
        health: Health,
        published: Published,
    ) -> Self {
        let allow = Arc::new(allow_list(&control));
        Self {
            control: Arc::new(Mutex::new(control)),
            opts,
            stop: CancellationToken::new(),
            detach,
            health: Mutex::new(health),
            published,
            sources: Mutex::new(None),
            link_check: crate::dataplane::link::check,
            target_now: crate::dataplane::link::target_now,
            reattach_failed: Mutex::new(std::collections::HashMap::new()),
            learned_saved: Mutex::new(Instant::now()),
            ban_events: Mutex::new(None),
            allow: watch::channel(allow).0,
            reloading: Semaphore::new(1),
            bpffs: None,
            pin_lock: None,
            controls: controls::Controls::default(),
            fleet: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control<D>> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a peer is preferred by the health servers: allow-listed (the load balancers).
    fn priority(&self) -> crate::serve::PriorityFn {
        let allow = self.allow.subscribe();
        Arc::new(move |ip| allow.borrow().iter().any(|c| c.contains(ip)))
    }

    /// Publishes the allow list to the health servers if it changed.
    fn publish_allow(&self, now: Vec<Cidr>) {
        self.allow.send_if_modified(|cur| {
            let changed = **cur != now;
            if changed {
                *cur = Arc::new(now);
            }
            changed
        });
    }
}

/// The allow list's CIDRs.
fn allow_list<D: Datapath>(control: &Control<D>) -> Vec<Cidr> {
    control
        .list_entries(crate::dataplane::List::Allow)
        .into_iter()
        .map(|r| r.cidr)
        .collect()
}

/// The log lines for one tick's new bans: one line each for the first `max`, then one line
/// that counts the rest, so a flood of bans cannot flood the log.
pub fn ban_log_lines(bans: &[NewBan], max: usize) -> Vec<String> {
    let mut lines: Vec<String> = bans
        .iter()
        .take(max)
        .map(|b| {
            let secs = b.ban.expires.saturating_sub(b.ban.since);
            format!(
                "banned {} on {}: {}, until {} ({})",
                b.ban.source,
                b.iface,
                b.ban.reason,
                state::format_unix(b.ban.expires),
                Human(Duration::from_secs(secs))
            )
        })
        .collect();
    if bans.len() > max {
        lines.push(format!(
            "... and {} more new bans in the last second (`guard bans` lists them all)",
            bans.len() - max
        ));
    }
    lines
}
