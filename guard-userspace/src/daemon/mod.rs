//! `guard run`: load settings, attach (or adopt) the program, restore lists and bans, serve the
//! control socket and the health outputs, and every second expire entries, log new bans and
//! evaluate the host's health; SIGHUP reloads.
//!
//! SIGTERM and SIGINT stop the daemon and leave the program attached (fail-static: the pins
//! keep it and its maps alive, and a restarted daemon adopts them). `guard detach` removes it.
use std::{
    ffi::OsStr,
    io,
    net::SocketAddr as NetAddr,
    os::{
        linux::net::SocketAddrExt,
        unix::{
            ffi::OsStrExt,
            net::{SocketAddr, UnixDatagram},
        },
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Condvar, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use guard_common::BanEvent;

use crate::{
    config::{self, ConfigError, HealthSection, Origin, Overrides, Settings, mode_name},
    control::{Control, ControlError, NewBan, ReloadReport},
    dataplane::Datapath,
    dataplane::{self, KernelDatapath, LoadError, StartOptions},
    duration::Human,
    health::{
        CheckRunner, DropRate, Evaluator, HealthReport, Inputs, InterfaceInput, MapFill,
        ProcSource, StatusKind, SystemSample, dropped_packets,
    },
    rpc::{self, ApiError, Handler, Reply, Request, error_chain},
    serve::agent::{AgentError, AgentServer},
    serve::http::{Handlers, HttpServer, HttpServerError},
    serve::metrics::{self, Snapshot},
    state::{self, Loaded, StateError, Store},
};

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
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    #[error("cannot use the state directory")]
    State(#[from] StateError),
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
    #[error("cannot start the health check thread")]
    Checks(#[source] io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
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

/// Runs the daemon until SIGTERM, SIGINT or `guard detach`.
///
/// # Errors
///
/// Any failure to start. Once serving, failures are logged and the daemon carries on.
pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    // Before any thread starts, so every thread inherits the mask and the signals are taken
    // only by `sigtimedwait` in this loop.
    let signals = Signals::block(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT])
        .map_err(DaemonError::Signals)?;
    let settings = load_settings(&opts)?;
    let interfaces = if settings.datapath.interfaces.is_empty() {
        let found = config::default_route_interfaces()?;
        log::info!("no interfaces configured: using the default-route interfaces {found:?}");
        found
    } else {
        settings.datapath.interfaces.clone()
    };
    log::info!("config: {}", settings.source);

    // Read the state before attaching: an unreadable state directory stops us here.
    let store = Store::new(&settings.state.dir);
    let saved = match store.load()? {
        Loaded::Found(s) => {
            log::info!(
                "state file {}: {} allow, {} deny, {} bans",
                store.path().display(),
                s.allow.len(),
                s.deny.len(),
                s.bans.len()
            );
            Some(s)
        }
        Loaded::Missing => {
            log::info!(
                "no state file at {}: starting from the pinned maps, if any",
                store.path().display()
            );
            None
        }
        Loaded::Corrupt { moved_to, error } => {
            log::error!(
                "THE STATE FILE {} IS CORRUPT ({error}): moved aside to {}; lists and bans are rebuilt from the pinned maps, if any. Inspect the moved file and re-import what is missing.",
                store.path().display(),
                moved_to.display()
            );
            None
        }
    };

    // Bound before touching the maps: a second `guard run` stops here instead of rewriting
    // the running daemon's config and lists. Clients wait in the backlog until we serve.
    let socket = settings.control.socket.clone();
    let listener = rpc::bind(&socket)?;
    let _socket_file = SocketFile(socket.clone());

    // The health listeners too, before anything is attached: an address in use stops the
    // start here with nothing left behind. They serve `starting` until the first evaluation.
    let health_config = settings
        .health
        .config()
        .map_err(|error| ConfigError::Health {
            origin: Origin::Config {
                source: settings.source.clone(),
                line: None,
            },
            error,
        })?;
    let published = Arc::new(Published::new(state::unix_now()));
    let listeners = Listeners::bind(&settings.health, &Listeners::default(), &published)?;
    for (what, addr) in [
        ("health HTTP", listeners.http_addr()),
        ("HAProxy agent-check", listeners.agent_addr()),
    ] {
        match addr {
            Some(a) => log::info!("serving {what} on {a}"),
            None => log::info!("{what} server is off"),
        }
    }

    let dataplane::Loaded {
        datapath,
        attachments,
    } = dataplane::start(&StartOptions {
        interfaces,
        mode: settings.datapath.mode,
        pin_dir: settings.datapath.pin_dir.clone(),
    })?;
    for a in &attachments {
        log::info!(
            "attached to {} (ifindex {}) in {} mode{} (requested: {})",
            a.iface,
            a.ifindex,
            a.mode,
            if a.adopted {
                ", adopted from the pins"
            } else {
                ""
            },
            mode_name(settings.datapath.mode)
        );
    }
    let limits = settings.limits;
    let dry_run = settings.datapath.dry_run;
    let mut control = Control::new(datapath, settings, attachments);
    control
        .apply_kernel_config()
        .map_err(DaemonError::KernelConfig)?;
    log::info!(
        "limits: {} pps (burst {}), {} SYN/s (burst {}), bans {}, sources per /{} (IPv4) and /{} (IPv6){}",
        limits.pps,
        limits.burst,
        limits.syn_pps,
        limits.syn_burst,
        Human(Duration::from_secs(limits.ban_seconds)),
        limits.ipv4_prefix,
        limits.ipv6_prefix,
        if dry_run {
            "; DRY RUN: nothing is dropped"
        } else {
            ""
        }
    );
    let r = control.restore(saved).map_err(DaemonError::Restore)?;
    control
        .apply_services()
        .map_err(DaemonError::KernelConfig)?;
    for svc in &control.settings().services {
        log::info!(
            "service {}: {}/{}, ceiling {}",
            svc.name,
            svc.protocol.name(),
            svc.port,
            svc.max_pps
                .map_or_else(|| "learned".to_string(), |c| format!("{c} packets/s"))
        );
    }
    log::info!(
        "restored {} allow and {} deny entries and {} bans{}{}{}",
        r.allow,
        r.deny,
        r.bans,
        if r.from_maps {
            " from the pinned maps"
        } else {
            ""
        },
        if r.expired > 0 {
            format!("; {} had expired while the daemon was down", r.expired)
        } else {
            String::new()
        },
        if r.stale_removed > 0 {
            format!(
                "; {} map entries not in the state file were removed",
                r.stale_removed
            )
        } else {
            String::new()
        }
    );

    let health = Health::new(health_config, listeners).map_err(DaemonError::Checks)?;
    let daemon = Arc::new(Daemon::new(
        control,
        opts,
        dataplane::detach,
        health,
        published,
    ));
    // The first evaluation now, so that /metrics shows the data plane from the start.
    daemon.tick();
    rpc::serve(listener, Arc::clone(&daemon) as Arc<dyn Handler>);
    log::info!("serving {}", socket.display());
    match sd_notify("READY=1") {
        Ok(true) => log::debug!("told systemd we are ready"),
        Ok(false) => {}
        Err(e) => log::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}"),
    }

    let watchdog = watchdog_requested();
    let mut next_tick = Instant::now() + TICK;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match signals.wait(wait) {
            Ok(Some(libc::SIGHUP)) => {
                log::info!("SIGHUP: reloading the configuration");
                // Errors are logged inside.
                let _ = daemon.reload();
            }
            Ok(Some(sig)) => {
                log::info!(
                    "{}: stopping; the program stays attached and keeps protecting (`guard detach` removes it)",
                    if sig == libc::SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    }
                );
                break;
            }
            Ok(None) => {}
            Err(e) => log::warn!("waiting for signals: {e}"),
        }
        if daemon.stop.load(Ordering::SeqCst) {
            log::info!("detached: stopping");
            break;
        }
        if Instant::now() >= next_tick {
            // systemd's watchdog (WatchdogSec=) hears from us only while the loop is sound;
            // a daemon stuck or unable to read its maps is restarted, and the pinned program
            // keeps protecting meanwhile.
            if daemon.tick() && watchdog {
                let _ = sd_notify("WATCHDOG=1");
            }
            next_tick += TICK;
            // After a long stall, do not run a burst of catch-up ticks.
            if next_tick < Instant::now() {
                next_tick = Instant::now() + TICK;
            }
        }
    }
    let _ = sd_notify("STOPPING=1");
    Ok(())
}

/// Removes the control socket file when the daemon stops, on success or failure, so clients
/// are told at once that no daemon is running.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            log::debug!("removing {}: {e}", self.0.display());
        }
    }
}

/// What the health outputs serve, written once a tick and read by the servers' threads (which
/// never touch the control plane, so a slow map read never stalls a load balancer's check).
struct Published {
    report: RwLock<HealthReport>,
    /// The `/metrics` body.
    metrics: RwLock<String>,
    /// The [`Control::operator_seq`] the latest report took into account.
    seq: Mutex<u64>,
    changed: Condvar,
}

impl Published {
    fn new(now_unix: u64) -> Self {
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
        Self {
            report: RwLock::new(report),
            metrics: RwLock::new(metrics),
            seq: Mutex::new(0),
            changed: Condvar::new(),
        }
    }

    fn report(&self) -> HealthReport {
        self.report
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, report: HealthReport, metrics: String, seq: u64) {
        *self.report.write().unwrap_or_else(|p| p.into_inner()) = report;
        *self.metrics.write().unwrap_or_else(|p| p.into_inner()) = metrics;
        *self.seq.lock().unwrap_or_else(|p| p.into_inner()) = seq;
        self.changed.notify_all();
    }

    /// The first report that took operator change `seq` into account, waiting up to `wait`;
    /// the latest report if none came in time.
    fn report_after(&self, seq: u64, wait: Duration) -> HealthReport {
        let deadline = Instant::now() + wait;
        let mut at = self.seq.lock().unwrap_or_else(|p| p.into_inner());
        while *at < seq {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            at = self
                .changed
                .wait_timeout(at, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(at);
        self.report()
    }
}

/// The health servers, each `None` when turned off.
#[derive(Default)]
struct Listeners {
    http: Option<(NetAddr, HttpServer)>,
    agent: Option<(NetAddr, AgentServer)>,
}

impl Listeners {
    /// Servers for `section`'s addresses. A server whose address is unchanged from `current`
    /// is not bound again (the caller keeps it, see [`Listeners::replace`]); a changed one
    /// is bound here, while the old one still serves.
    ///
    /// # Errors
    ///
    /// An address that cannot be bound; whatever was bound here is dropped again.
    fn bind(
        section: &HealthSection,
        current: &Listeners,
        published: &Arc<Published>,
    ) -> Result<Self, DaemonError> {
        let mut out = Listeners::default();
        if let Some(addr) = section.listen
            && current.http_addr() != Some(addr)
        {
            let (r, m) = (Arc::clone(published), Arc::clone(published));
            let handlers = Handlers {
                report: Arc::new(move || r.report()),
                metrics: Arc::new(move || {
                    m.metrics.read().unwrap_or_else(|p| p.into_inner()).clone()
                }),
            };
            out.http = Some((addr, HttpServer::bind(addr, handlers)?));
        }
        if let Some(addr) = section.agent_listen
            && current.agent_addr() != Some(addr)
        {
            let r = Arc::clone(published);
            out.agent = Some((addr, AgentServer::bind(addr, Arc::new(move || r.report()))?));
        }
        Ok(out)
    }

    /// Takes the servers bound by [`Listeners::bind`] for `section`, keeps the unchanged ones
    /// and drops (closes) the ones no longer wanted.
    fn replace(&mut self, section: &HealthSection, new: Listeners) {
        let Listeners { http, agent } = new;
        if http.is_some() || section.listen.is_none() {
            self.http = http;
        }
        if agent.is_some() || section.agent_listen.is_none() {
            self.agent = agent;
        }
    }

    fn http_addr(&self) -> Option<NetAddr> {
        self.http.as_ref().map(|(a, _)| *a)
    }

    fn agent_addr(&self) -> Option<NetAddr> {
        self.agent.as_ref().map(|(a, _)| *a)
    }
}

/// The health evaluation's state, held between ticks.
struct Health {
    eval: Evaluator,
    runner: CheckRunner,
    drop_rate: DropRate,
    listeners: Listeners,
    /// Per attachment, whether it was attached at the last tick (to log changes once).
    attached: Vec<bool>,
    last_status: Option<StatusKind>,
}

impl Health {
    /// Starts the local checks' runner.
    fn new(config: crate::health::HealthConfig, listeners: Listeners) -> io::Result<Self> {
        Ok(Self {
            runner: CheckRunner::spawn(config.checks().to_vec(), CHECK_INTERVAL)?,
            eval: Evaluator::new(config),
            drop_rate: DropRate::default(),
            listeners,
            attached: Vec::new(),
            last_status: None,
        })
    }
}

/// What one tick read from the control plane for the health evaluation.
struct HealthInputs {
    /// The expiry sweep read and wrote the maps: the daemon's loop is sound (the watchdog).
    loop_sound: bool,
    now_unix: u64,
    counters: Result<Vec<(u32, guard_common::Counters)>, String>,
    attachments: Vec<dataplane::Attachment>,
    pin_dir: PathBuf,
    maps: Vec<MapFill>,
    bans_active: usize,
    operator: Option<crate::health::Override>,
    seq: u64,
    services: Vec<crate::control::attack::ServiceReport>,
    known_sources: usize,
    prefix_bans: usize,
}

/// The running daemon, shared with the control socket's threads.
struct Daemon<D: Datapath> {
    control: Mutex<Control<D>>,
    opts: RunOptions,
    /// Set by `guard detach`.
    stop: AtomicBool,
    detach: DetachFn,
    health: Mutex<Health>,
    published: Arc<Published>,
    /// The source tracker's entry count and when it was taken (read under the control lock).
    sources: Mutex<Option<(usize, Instant)>>,
    /// Whether the program is attached to an interface (the kernel's answer, or a test's).
    link_check: fn(&Path, &str) -> crate::dataplane::link::LinkState,
    /// When the learned rates were last saved.
    learned_saved: Mutex<Instant>,
}

impl<D: Datapath + BanEvents> Daemon<D> {
    fn new(
        control: Control<D>,
        opts: RunOptions,
        detach: DetachFn,
        health: Health,
        published: Arc<Published>,
    ) -> Self {
        Self {
            control: Mutex::new(control),
            opts,
            stop: AtomicBool::new(false),
            detach,
            health: Mutex::new(health),
            published,
            sources: Mutex::new(None),
            link_check: crate::dataplane::link::check,
            learned_saved: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Control<D>> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One second's work: log new bans, expire entries, bans and overrides, mirror bans to
    /// disk, then evaluate health and publish it with the metrics.
    /// One second's work. True if the daemon's own loop is sound: the maps answered the
    /// expiry sweep. (Not the host's health: a busy or draining host's daemon is fine.)
    fn tick(&self) -> bool {
        let inputs = self.housekeeping();
        let sound = inputs.loop_sound;
        self.evaluate(inputs);
        sound
    }

    /// The control plane's part of a tick, under its lock; returns what health needs.
    fn housekeeping(&self) -> HealthInputs {
        let mut control = self.lock();
        let events = control.datapath_mut().take_events();
        if !events.is_empty() {
            for line in ban_log_lines(&control.describe_events(&events), BAN_LINES_PER_TICK) {
                log::warn!("{line}");
            }
        }
        match control.attack_tick() {
            Ok(changes) => {
                for t in &changes {
                    log::warn!("{}", crate::control::attack::describe(t));
                }
            }
            Err(e) => log::error!("reading the services' rates: {}", error_chain(&e)),
        }
        let sweep = control.sweep();
        let loop_sound = sweep.is_ok();
        match sweep {
            Ok(s) => {
                if s.expired_allow + s.expired_deny + s.expired_bans > 0 {
                    log::info!(
                        "expired: {} allow entries, {} deny entries, {} bans",
                        s.expired_allow,
                        s.expired_deny,
                        s.expired_bans
                    );
                }
                for b in &s.escalated {
                    log::warn!(
                        "banned the prefix {} until {}: its sources kept getting banned (escalation)",
                        b.source,
                        state::format_unix(b.expires)
                    );
                }
                if s.expired_known > 0 {
                    log::info!(
                        "forgot {} known sources that had been silent too long",
                        s.expired_known
                    );
                }
            }
            Err(e) => log::error!("expiry sweep: {}", error_chain(&e)),
        }
        {
            let mut saved = self.learned_saved.lock().unwrap_or_else(|p| p.into_inner());
            if saved.elapsed() >= LEARNED_SAVE_EVERY {
                if let Err(e) = control.save_learned() {
                    log::warn!("saving the learned rates: {}", error_chain(&e));
                }
                *saved = Instant::now();
            }
        }
        match control.expire_operator() {
            Ok(true) => log::info!("the operator's health override expired"),
            Ok(false) => {}
            Err(e) => log::error!("expiring the health override: {}", error_chain(&e)),
        }
        let sources = {
            let mut cached = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            match cached.filter(|(_, at)| at.elapsed() < SOURCE_COUNT_EVERY) {
                Some((n, _)) => n,
                None => {
                    let n = control.source_count().unwrap_or_else(|e| {
                        log::warn!("counting the source tracker: {}", error_chain(&e));
                        cached.map_or(0, |(n, _)| n)
                    });
                    *cached = Some((n, Instant::now()));
                    n
                }
            }
        };
        HealthInputs {
            loop_sound,
            now_unix: control.now_unix(),
            counters: control.counters().map_err(|e| error_chain(&e)),
            attachments: control.attachments().to_vec(),
            pin_dir: control.settings().datapath.pin_dir.clone(),
            maps: control.map_fill(sources),
            bans_active: control.bans_active(),
            operator: control.operator().cloned(),
            seq: control.operator_seq(),
            services: control.service_reports(),
            known_sources: control.known_count(),
            prefix_bans: control.prefix_ban_count(),
        }
    }

    /// The health part of a tick, off the control plane's lock: evaluate and publish.
    fn evaluate(&self, inputs: HealthInputs) {
        let HealthInputs {
            loop_sound: _,
            now_unix,
            counters,
            attachments,
            pin_dir,
            maps,
            bans_active,
            operator,
            seq,
            services,
            known_sources,
            prefix_bans,
        } = inputs;
        let mut health = self.lock_health();
        let mut sum = guard_common::Counters::default();
        if let Ok(slots) = &counters {
            for (_, c) in slots {
                sum.add(c);
            }
        }
        let drop_rate_pps = health
            .drop_rate
            .update(dropped_packets(&sum), Instant::now());
        let mut interfaces = Vec::with_capacity(attachments.len());
        health.attached.resize(attachments.len(), true);
        for (i, a) in attachments.iter().enumerate() {
            let state = (self.link_check)(&pin_dir, &a.iface);
            if state.attached != health.attached[i] {
                if state.attached {
                    log::info!(
                        "{}: the XDP program is attached again ({})",
                        a.iface,
                        state.detail
                    );
                } else {
                    log::error!(
                        "{}: THE XDP PROGRAM IS NOT ATTACHED: {}",
                        a.iface,
                        state.detail
                    );
                }
                health.attached[i] = state.attached;
            }
            interfaces.push(InterfaceInput {
                name: a.iface.clone(),
                attached: state.attached,
            });
        }
        let checks = health.runner.results();
        let report = health.eval.evaluate(&Inputs {
            now_unix,
            system: SystemSample::read(&ProcSource::default()),
            interfaces,
            maps: maps.clone(),
            checks,
            operator,
            drop_rate_pps,
            services: services.clone(),
        });
        let kind = report.status.kind();
        if health.last_status != Some(kind) {
            if health.last_status.is_some() || kind != StatusKind::Starting {
                log::info!("health: {}: {}", report.status, report.reason);
            }
            health.last_status = Some(kind);
        }
        if let Err(e) = &counters {
            log::warn!("reading the counters for metrics: {e}");
        }
        let slots = counters.as_deref().unwrap_or_default();
        let text = metrics::render(&Snapshot {
            up: counters.is_ok(),
            interfaces: &metrics::interface_counters(slots, &attachments),
            bans_active: bans_active as u64,
            maps: &maps,
            health: Some(&report),
            services: &services,
            known_sources: known_sources as u64,
            prefix_bans: prefix_bans as u64,
        });
        self.published.publish(report, text, seq);
    }

    /// Re-reads the config; a bad one is rejected and the running one stays.
    fn reload(&self) -> Result<ReloadReport, String> {
        let reject = |why: String| {
            let msg = format!("reload rejected, the running configuration stays: {why}");
            log::error!("{msg}");
            msg
        };
        let settings = load_settings(&self.opts).map_err(|e| reject(error_chain(&e)))?;
        let health_config = settings
            .health
            .config()
            .map_err(|e| reject(e.to_string()))?;
        let section = settings.health.clone();
        // Lock order: health, then control. The tick never holds both (it takes control,
        // lets go, then takes health).
        let mut health = self.lock_health();
        // A new listen address is bound while the old one still serves; if it cannot be, the
        // reload is refused as a whole and everything stays as it was.
        let bound = Listeners::bind(&section, &health.listeners, &self.published)
            .map_err(|e| reject(error_chain(&e)))?;
        let mut control = self.lock();
        match control.apply_settings(settings) {
            Ok(report) => {
                drop(control);
                let (http_before, agent_before) =
                    (health.listeners.http_addr(), health.listeners.agent_addr());
                health.listeners.replace(&section, bound);
                for (what, before, now) in [
                    ("health HTTP", http_before, health.listeners.http_addr()),
                    (
                        "HAProxy agent-check",
                        agent_before,
                        health.listeners.agent_addr(),
                    ),
                ] {
                    if before != now {
                        match now {
                            Some(a) => log::info!("serving {what} on {a} now"),
                            None => log::info!("{what} server turned off"),
                        }
                    }
                }
                health.runner.set_checks(health_config.checks().to_vec());
                health.eval.set_config(health_config);
                let l = report.limits;
                log::info!(
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
                    log::warn!(
                        "changed but not applied, restart the daemon for: {}",
                        report.restart_needed.join(", ")
                    );
                }
                Ok(report)
            }
            Err(e) => {
                let msg = format!(
                    "reload failed, the running limits stay: {}",
                    error_chain(&e)
                );
                log::error!("{msg}");
                Err(msg)
            }
        }
    }

    fn detach(&self) -> Result<Reply, String> {
        // Held so that no request changes the maps while they go away.
        let control = self.lock();
        let pin_dir = control.settings().datapath.pin_dir.clone();
        match (self.detach)(&pin_dir) {
            Ok(interfaces) => {
                log::warn!(
                    "guard detach: removed the program from {} and the pins under {}",
                    interfaces.join(", "),
                    pin_dir.display()
                );
                self.stop.store(true, Ordering::SeqCst);
                Ok(Reply::Detached { interfaces })
            }
            Err(e) => Err(format!("detach failed: {}", error_chain(&e))),
        }
    }
}

impl<D: Datapath + BanEvents + Send + 'static> Handler for Daemon<D> {
    fn handle(&self, request: Request) -> Result<Reply, String> {
        match request {
            Request::Reload => self.reload().map(Reply::Reloaded),
            Request::Detach => self.detach(),
            Request::Health => Ok(Reply::Health(Box::new(self.published.report()))),
            Request::Operator {
                mode,
                for_secs,
                reason,
            } => {
                let (operator, seq) = self
                    .lock()
                    .set_operator(mode, for_secs.map(Duration::from_secs), reason)
                    .map_err(|e| error_chain(&e))?;
                match &operator {
                    Some(o) => log::warn!(
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
                    None => log::warn!("operator: ready (override cleared)"),
                }
                let report = self.published.report_after(seq, OPERATOR_WAIT);
                Ok(Reply::Operator {
                    operator,
                    report: Box::new(report),
                })
            }
            other => rpc::dispatch(&self.control, other),
        }
    }
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

/// Blocked signals, taken synchronously with `sigtimedwait`.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    fn block(signals: &[libc::c_int]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data that sigemptyset initialises; the calls only read and
        // write the set and this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in signals {
                libc::sigaddset(&mut set, *s);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { set })
        }
    }

    /// Waits up to `timeout` for one of the signals; `None` on timeout or interruption.
    fn wait(&self, timeout: Duration) -> io::Result<Option<libc::c_int>> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `set` was initialised in `block`; a null siginfo pointer is allowed.
        let rc = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        if rc >= 0 {
            return Ok(Some(rc));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(e),
        }
    }
}

/// Did systemd ask for watchdog keep-alives (`WATCHDOG_USEC`, for this process if
/// `WATCHDOG_PID` is set)? See sd_watchdog_enabled(3).
fn watchdog_requested() -> bool {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_wanted(usec.as_deref(), pid.as_deref(), std::process::id())
}

fn watchdog_wanted(usec: Option<&str>, pid: Option<&str>, me: u32) -> bool {
    let armed = usec
        .and_then(|u| u.parse::<u64>().ok())
        .is_some_and(|u| u > 0);
    let ours = pid.is_none_or(|p| p.parse::<u32>().ok() == Some(me));
    armed && ours
}

/// Sends `state` (such as `READY=1`) to systemd if `NOTIFY_SOCKET` is set; false if it is not.
///
/// # Errors
///
/// The socket cannot be reached.
pub fn sd_notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) if !path.is_empty() => notify_to(&path, state).map(|()| true),
        _ => Ok(false),
    }
}

/// The sd_notify protocol: one datagram to a Unix socket path, or to an abstract-namespace
/// name when it starts with `@` (see sd_notify(3)).
fn notify_to(socket: &OsStr, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let bytes = socket.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(socket)?,
    };
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

/// A logger for the daemon: one line per record on stderr, with a level word, or with the
/// `<N>` priority prefix that journald reads when stderr is the journal (`JOURNAL_STREAM`).
/// `GUARD_LOG=debug|info|warn|error` sets the level (default info).
struct StderrLogger {
    journal: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level();
        if self.journal {
            let prio = match level {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            eprintln!("<{prio}>{}", record.args());
        } else {
            eprintln!("{:<5} {}", level, record.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the stderr logger (once; later calls do nothing).
pub fn init_logging() {
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let level = match std::env::var("GUARD_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("trace") => log::LevelFilter::Trace,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        _ => log::LevelFilter::Info,
    };
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { journal }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use guard_common::{Ban, reason, source_key_v4};

    use super::*;
    use crate::{
        cidr::Cidr,
        control::{
            BanInfo,
            testing::{FakeClock, FakeDatapath},
        },
        dataplane::List,
        health::{OverrideMode, Status},
    };

    const SEC: u64 = 1_000_000_000;

    struct Fixture {
        dir: PathBuf,
        clock: FakeClock,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("guard-daemon-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            dir,
            clock: FakeClock::new(1000 * SEC, 1_700_000_000),
        }
    }

    fn no_detach(_: &Path) -> Result<Vec<String>, LoadError> {
        Ok(vec!["veth0".to_string()])
    }

    impl Fixture {
        /// A daemon over a fake data plane, started from `config` as `guard run --config`.
        fn daemon(&self, config: &str) -> Daemon<FakeDatapath> {
            let path = self.dir.join("guard.toml");
            std::fs::write(&path, config).unwrap();
            let opts = RunOptions {
                config: Some(path),
                overrides: Overrides {
                    state_dir: Some(self.dir.join("state")),
                    // No listeners: unit tests must not take fixed ports.
                    health_listen: Some(String::new()),
                    agent_listen: Some(String::new()),
                    ..Overrides::default()
                },
            };
            let settings = load_settings(&opts).unwrap();
            let saved = match Store::new(self.dir.join("state")).load().unwrap() {
                Loaded::Found(s) => Some(s),
                _ => None,
            };
            let health =
                Health::new(settings.health.config().unwrap(), Listeners::default()).unwrap();
            let mut control = Control::new(FakeDatapath::new(self.clock.clone()), settings, vec![])
                .with_wall_clock(self.clock.wall());
            control.apply_kernel_config().unwrap();
            control.restore(saved).unwrap();
            let published = Arc::new(Published::new(self.clock.now_unix()));
            Daemon::new(control, opts, no_detach, health, published)
        }
    }

    /// Sends `request` while ticking on another thread, as the daemon's loop would.
    fn handle_ticking(d: &Arc<Daemon<FakeDatapath>>, request: Request) -> Result<Reply, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ticker, stopping) = (Arc::clone(d), Arc::clone(&stop));
        let t = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                ticker.tick();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let reply = d.handle(request);
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        reply
    }

    fn drain(secs: Option<u64>, reason: &str) -> Request {
        Request::Operator {
            mode: OverrideMode::Drain,
            for_secs: secs,
            reason: Some(reason.into()),
        }
    }

    #[test]
    fn drain_answers_with_a_report_that_shows_it_and_ready_clears_it() {
        let f = fixture("drain");
        let d = Arc::new(f.daemon(""));
        let Reply::Operator { operator, report } =
            handle_ticking(&d, drain(None, "deploy")).unwrap()
        else {
            panic!("wrong reply")
        };
        assert_eq!(operator.as_ref().map(|o| o.mode), Some(OverrideMode::Drain));
        assert_eq!(report.status, Status::Drain);
        assert_eq!(report.reason, "operator: deploy");
        let Reply::Health(now) = d.handle(Request::Health).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(now.status, Status::Drain);

        let ready = Request::Operator {
            mode: OverrideMode::Ready,
            for_secs: None,
            reason: None,
        };
        let Reply::Operator { operator, report } = handle_ticking(&d, ready).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(operator, None);
        // Whatever this machine's load says now; only the override is gone.
        assert_eq!(report.operator, None);
        assert!(!report.reason.starts_with("operator"), "{}", report.reason);
    }

    #[test]
    fn an_override_survives_a_restart_and_an_expiring_one_lapses_on_its_own() {
        let f = fixture("override-restart");
        let d = Arc::new(f.daemon(""));
        handle_ticking(&d, drain(Some(60), "kernel update")).unwrap();
        drop(d);
        let Loaded::Found(saved) = Store::new(f.dir.join("state")).load().unwrap() else {
            panic!("no state file")
        };
        let saved = saved.operator.expect("the override is in the state file");
        assert_eq!(saved.expires, Some(f.clock.now_unix() + 60));

        // A restarted daemon picks it up from the state file.
        let d = Arc::new(f.daemon(""));
        d.tick();
        let Reply::Health(report) = d.handle(Request::Health).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(report.status, Status::Drain);
        assert!(
            report.reason.starts_with("operator: kernel update (until "),
            "{}",
            report.reason
        );

        // Its time runs out: the next tick drops it, from the report and from the file.
        f.clock.advance(Duration::from_secs(61));
        d.tick();
        let Reply::Health(report) = d.handle(Request::Health).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(report.operator, None);
        assert!(!report.reason.starts_with("operator"), "{}", report.reason);
        assert_eq!(d.lock().operator(), None);
        let Loaded::Found(saved) = Store::new(f.dir.join("state")).load().unwrap() else {
            panic!("no state file")
        };
        assert_eq!(saved.operator, None);
    }

    #[test]
    fn an_override_with_a_bad_duration_or_reason_is_refused() {
        let f = fixture("override-bad");
        let d = f.daemon("");
        let e = d.handle(drain(Some(0), "x")).unwrap_err();
        assert!(e.contains("TTL of 0s"), "{e}");
        let e = d.handle(drain(None, "a\nb")).unwrap_err();
        assert!(e.contains("reason"), "{e}");
        assert_eq!(d.lock().operator(), None);
    }

    #[test]
    fn reload_with_a_threshold_of_150_is_rejected_and_the_old_health_settings_stay() {
        let f = fixture("reload-health");
        let d = f.daemon("[health]\nwarn_at = 50\n");
        std::fs::write(
            f.dir.join("guard.toml"),
            "[limits]\npps = 7\n[health]\nwarn_at = 150\n",
        )
        .unwrap();
        let e = d.handle(Request::Reload).unwrap_err();
        assert!(
            e.contains("line 4: health.warn_at = 150: expected a percentage from 0 to 100"),
            "{e}"
        );
        assert_eq!(d.lock_health().eval.config().headroom().warn_at, 50.0);
        assert_ne!(
            d.lock().datapath().config.pps,
            7,
            "nothing of it was applied"
        );

        std::fs::write(f.dir.join("guard.toml"), "[health]\nwarn_at = 60\n").unwrap();
        d.handle(Request::Reload).unwrap();
        assert_eq!(d.lock_health().eval.config().headroom().warn_at, 60.0);
    }

    #[test]
    fn reload_binds_a_new_listen_address_before_closing_the_old_one() {
        let f = fixture("reload-listen");
        let d = f.daemon("");
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (a, b) = (free_port(), free_port());
        let mut opts = d.opts.clone();
        opts.overrides.health_listen = None;
        let set = |port: u16| {
            std::fs::write(
                f.dir.join("guard.toml"),
                format!("[health]\nlisten = \"127.0.0.1:{port}\"\n"),
            )
            .unwrap();
        };
        let d = Daemon { opts, ..d };
        set(a);
        d.handle(Request::Reload).unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
        // Port a is held by someone else now: a reload to it from b must fail and keep b.
        set(b);
        d.handle(Request::Reload).unwrap();
        assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", a)).is_err(),
            "the old one closed"
        );
        let squatter = std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
        set(a);
        let e = d.handle(Request::Reload).unwrap_err();
        assert!(
            e.contains(&format!("cannot listen on 127.0.0.1:{a}")),
            "{e}"
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", b)).is_ok(),
            "b still serves"
        );
        drop(squatter);
    }

    #[test]
    fn reload_with_a_bad_config_is_rejected_and_the_old_limits_stay() {
        let f = fixture("reload");
        let d = f.daemon("[limits]\npps = 100\n");
        assert_eq!(d.lock().datapath().config.pps, 100);

        std::fs::write(f.dir.join("guard.toml"), "[limits]\nburst = 10\npps = -1\n").unwrap();
        let e = d.handle(Request::Reload).unwrap_err();
        assert!(e.contains("line 3: limits.pps = -1"), "{e}");
        assert!(e.contains("the running configuration stays"), "{e}");
        assert_eq!(d.lock().datapath().config.pps, 100);
        assert_eq!(d.lock().settings().limits.burst, 40_000);

        std::fs::write(f.dir.join("guard.toml"), "[limits]\npps = 50\n").unwrap();
        let Reply::Reloaded(r) = d.handle(Request::Reload).unwrap() else {
            panic!("wrong reply")
        };
        assert_eq!(r.limits.pps, 50);
        assert_eq!(d.lock().datapath().config.pps, 50);
    }

    #[test]
    fn reload_keeps_command_line_overrides_on_top_of_the_file() {
        let f = fixture("overrides");
        let mut d = f.daemon("[limits]\npps = 100\n");
        d.opts.overrides.syn_pps = Some(3);
        std::fs::write(f.dir.join("guard.toml"), "[limits]\nsyn_pps = 999\n").unwrap();
        d.handle(Request::Reload).unwrap();
        assert_eq!(d.lock().datapath().config.syn_pps, 3);
    }

    #[test]
    fn tick_expires_entries_and_records_new_bans_in_the_state_file() {
        let f = fixture("tick");
        let d = f.daemon("");
        {
            let mut c = d.lock();
            let cidr: Cidr = "192.0.2.0/24".parse().unwrap();
            c.list_add(List::Deny, cidr, Some(Duration::from_secs(5)), None)
                .unwrap();
            let now = f.clock.now_ns();
            let key = source_key_v4([203, 0, 113, 9], 32);
            let ban = Ban {
                expires_ns: now + 60 * SEC,
                since_ns: now,
                reason: reason::RATE_LIMITED as u32,
                _pad: 0,
            };
            let dp = c.datapath_mut();
            dp.bans.insert(key, ban);
            dp.events.push(BanEvent {
                source: key,
                since_ns: ban.since_ns,
                expires_ns: ban.expires_ns,
                reason: ban.reason,
                ifindex: 2,
            });
        }
        f.clock.advance(Duration::from_secs(5));
        d.tick();
        let c = d.lock();
        assert!(c.datapath().events.is_empty());
        assert!(c.datapath().lists.is_empty());
        let Loaded::Found(saved) = c.store().load().unwrap() else {
            panic!("no state file")
        };
        assert!(saved.deny.is_empty());
        assert_eq!(saved.bans.len(), 1);
        assert_eq!(saved.bans[0].source.to_string(), "203.0.113.9");
    }

    #[test]
    fn detach_request_stops_the_daemon() {
        let f = fixture("detach");
        let d = f.daemon("");
        let reply = d.handle(Request::Detach).unwrap();
        assert_eq!(
            reply,
            Reply::Detached {
                interfaces: vec!["veth0".into()]
            }
        );
        assert!(d.stop.load(Ordering::SeqCst));
    }

    #[test]
    fn other_requests_go_to_the_control_plane() {
        let f = fixture("dispatch");
        let d = f.daemon("");
        assert!(matches!(d.handle(Request::Status), Ok(Reply::Status(_))));
    }

    fn new_ban(i: u8) -> NewBan {
        NewBan {
            ban: BanInfo {
                source: format!("203.0.113.{i}").parse().unwrap(),
                reason: "rate_limited".into(),
                since: 1_714_564_800,
                expires: 1_714_564_860,
            },
            iface: "eth0".into(),
        }
    }

    #[test]
    fn ban_log_names_source_reason_and_expiry() {
        let lines = ban_log_lines(&[new_ban(1)], 10);
        assert_eq!(
            lines,
            ["banned 203.0.113.1/32 on eth0: rate_limited, until 2024-05-01T12:01:00Z (1m)"]
        );
    }

    #[test]
    fn ban_log_is_rate_limited_under_a_flood() {
        let bans: Vec<NewBan> = (0..250).map(|i| new_ban(i as u8)).collect();
        let lines = ban_log_lines(&bans, BAN_LINES_PER_TICK);
        assert_eq!(lines.len(), BAN_LINES_PER_TICK + 1);
        assert!(lines[10].contains("240 more new bans"), "{}", lines[10]);
        assert!(ban_log_lines(&[], 10).is_empty());
    }

    #[test]
    fn watchdog_is_wanted_only_when_systemd_arms_it_for_this_process() {
        assert!(watchdog_wanted(Some("30000000"), None, 7));
        assert!(watchdog_wanted(Some("30000000"), Some("7"), 7));
        assert!(!watchdog_wanted(Some("30000000"), Some("8"), 7));
        assert!(!watchdog_wanted(None, None, 7));
        assert!(!watchdog_wanted(Some("0"), None, 7));
        assert!(!watchdog_wanted(Some("soon"), None, 7));
    }

    #[test]
    fn sd_notify_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("guard-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sd_notify_reaches_an_abstract_socket() {
        let name = format!("guard-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(OsStr::from_bytes(format!("@{name}").as_bytes()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn sd_notify_to_a_missing_socket_is_an_error() {
        assert!(notify_to(Path::new("/nonexistent/notify").as_os_str(), "READY=1").is_err());
    }

    #[test]
    fn settings_are_the_file_then_the_flags() {
        let opts = RunOptions {
            config: None,
            overrides: Overrides {
                pps: Some(9),
                ..Overrides::default()
            },
        };
        let s = load_settings(&opts).unwrap();
        assert_eq!(s.limits.pps, 9);
        assert_eq!(s.limits.burst, Settings::builtin().limits.burst);
        let bad = RunOptions {
            config: Some(PathBuf::from("/nonexistent/guard.toml")),
            overrides: Overrides::default(),
        };
        let e = load_settings(&bad).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/guard.toml"), "{e}");
    }
}
