//! Start-up (settings, state, sockets bound before anything is attached, the program loaded
//! or adopted, the lists and bans restored) and the daemon's tasks until it stops.
use std::{os::unix::net::UnixListener, path::PathBuf, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use sd_notify::NotifyState;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use super::{
    Daemon, DaemonError, Health, RunOptions, SocketFile, TICK, allow_list,
    listeners::Listeners,
    load_settings,
    notify::{sd_notify, watchdog},
    published::Published,
};
use crate::{
    cidr::Cidr,
    config::{self, ConfigError, Origin, mode_name},
    control::Control,
    dataplane::{self, KernelDatapath, StartOptions, events},
    duration::Human,
    rpc::{self, Handler},
    state::{self, Opened, Store},
};

/// Ban events waiting for the tick; more are dropped (and counted), never the bans.
const BAN_EVENT_QUEUE: usize = 4096;

/// Runs the daemon until SIGTERM, SIGINT or `guard detach`.
///
/// # Errors
///
/// Any failure to start. Once serving, failures are logged and the daemon carries on.
pub fn run(opts: RunOptions) -> Result<(), DaemonError> {
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("guard")
        .build()
        .map_err(DaemonError::Runtime)?;
    // Start-up runs inside the runtime's context (the servers and the check runner are its
    // tasks); its blocking steps (loading, attaching, restoring) run before anything serves.
    let _context = runtime.enter();
    // The signals first: a SIGTERM during start-up is taken, and acted on once the daemon
    // serves, rather than killing it half-started.
    let signals = Signals::new()?;
    let settings = load_settings(&opts)?;
    let interfaces = if settings.datapath.chain.is_some() {
        // Chain mode: the root program's interfaces, not ours.
        Vec::new()
    } else if settings.datapath.interfaces.is_empty() {
        let found = config::default_route_interfaces()?;
        tracing::info!("no interfaces configured: using the default-route interfaces {found:?}");
        found
    } else {
        settings.datapath.interfaces.clone()
    };
    tracing::info!("config: {}", settings.source);

    // One daemon per pin directory, decided before anything else is touched (the state file,
    // the socket, the pins): a second `guard run`, whatever its --socket, stops here.
    let (pin_lock, bpffs) = guard_pin_dir(&settings.datapath.pin_dir, opts.allow_private_bpffs)?;

    // Read the state before attaching: an unreadable state directory or a damaged store
    // stops us here, with nothing attached or changed.
    let StartStore {
        store,
        damaged_aside,
        saved,
    } = open_store(&settings.state.dir, opts.start_empty)?;

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
    let published = Published::new(state::unix_now());
    let stop = CancellationToken::new();
    // The preferred pool follows the allow list once the daemon runs; until then it is empty.
    let (allow_tx, allow_rx) = watch::channel(Arc::new(Vec::<Cidr>::new()));
    let priority: crate::serve::PriorityFn =
        Arc::new(move |ip| allow_rx.borrow().iter().any(|c| c.contains(ip)));
    let listeners = Listeners::bind(&settings.health, (None, None), &published, &priority, &stop)?;
    for (what, addr) in [
        ("health HTTP", listeners.http_addr()),
        ("HAProxy agent-check", listeners.agent_addr()),
    ] {
        match addr {
            Some(a) => tracing::info!("serving {what} on {a}"),
            None => tracing::info!("{what} server is off"),
        }
    }

    // The watchdogs' units and the HAProxy tables, before anything is attached.
    let preflight = runtime
        .block_on(super::controls::preflight(&settings))
        .map_err(DaemonError::Controls)?;

    let dataplane::Loaded {
        datapath,
        attachments,
    } = dataplane::start(&StartOptions {
        interfaces,
        mode: settings.datapath.mode,
        placement: settings.datapath.attach,
        priority: settings.datapath.priority,
        pin_dir: settings.datapath.pin_dir.clone(),
        chain: settings.datapath.chain.clone(),
        next: settings.datapath.next.clone(),
    })?;
    if let Some(next) = &settings.datapath.next {
        tracing::info!("passed packets go on to {}", next.display());
    }
    for a in &attachments {
        if a.mode == "chain" {
            tracing::info!(
                "in {}{}",
                a.iface,
                if a.adopted {
                    ", swapped in for the previous run's program"
                } else {
                    ""
                }
            );
            continue;
        }
        tracing::info!(
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
    let settings_fleet = settings.fleet.clone();
    let dry_run = settings.datapath.dry_run;
    let mut control = Control::new(datapath, settings, attachments).with_store(store);
    if let Some(aside) = damaged_aside {
        control.set_damaged_aside(aside);
    }
    control
        .apply_kernel_config()
        .map_err(DaemonError::KernelConfig)?;
    tracing::info!(
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
        tracing::info!(
            "service {}: {}/{}, ceiling {}",
            svc.name,
            svc.protocol.name(),
            svc.port,
            svc.max_pps
                .map_or_else(|| "learned".to_string(), |c| format!("{c} packets/s"))
        );
    }
    tracing::info!(
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

    let ring = control.datapath_mut().take_event_ring();
    let logger = control.datapath_mut().take_logger();
    let health = Health::new(health_config, listeners).map_err(DaemonError::Checks)?;
    let mut daemon = Daemon::new(control, opts, dataplane::detach, health, published);
    daemon.stop = stop;
    daemon.bpffs = bpffs;
    daemon.pin_lock = Some(pin_lock);
    daemon.allow = allow_tx;
    daemon.fleet = settings_fleet.map(crate::fleet::Fleet::new);
    let daemon = Arc::new(daemon);
    daemon.publish_allow(allow_list(&daemon.lock()));
    let controls = daemon.lock().settings().clone();
    daemon.apply_controls(&controls, &preflight);
    // The first evaluation now, so that /metrics shows the data plane from the start.
    daemon.tick();
    let result = runtime.block_on(serve(
        Arc::clone(&daemon),
        listener,
        socket,
        (ring, logger),
        signals,
    ));
    drop(daemon);
    // Tasks still running (a connection mid-answer) are dropped with the runtime, boundedly.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Mounts bpffs if need be, locks the pin directory for the daemon's life and checks that its
/// bpffs is the host's. Returns the lock and, for a private bpffs the operator allowed, the
/// warning that `guard status` shows.
///
/// # Errors
///
/// [`LoadError::Locked`](crate::dataplane::LoadError::Locked) naming the other daemon's pid;
/// `PrivateBpffs` unless `allow_private`; a failure to mount or create the directory.
fn guard_pin_dir(
    pin_dir: &std::path::Path,
    allow_private: bool,
) -> Result<(dataplane::PinDirLock, Option<String>), DaemonError> {
    let mounted = dataplane::ensure_bpffs()?;
    let lock = dataplane::lock_pin_dir(pin_dir)?;
    let warning = match dataplane::bpffs_scope(pin_dir, mounted) {
        dataplane::BpffsScope::Host => None,
        dataplane::BpffsScope::Private(why) if !allow_private => {
            return Err(dataplane::LoadError::PrivateBpffs {
                pin_dir: pin_dir.to_path_buf(),
                why,
            }
            .into());
        }
        dataplane::BpffsScope::Private(why) => Some(format!(
            "the pins under {} are on a bpffs private to the daemon's mount namespace ({why}): they, the program and its lists vanish with the daemon (allowed by --allow-private-bpffs)",
            pin_dir.display()
        )),
        dataplane::BpffsScope::Unknown(why) => {
            // Not refused: a sandbox without access to pid 1 is the likelier cause.
            tracing::warn!(
                "cannot tell whether the bpffs under {} is the host's ({why}); if it is private to this mount namespace, protection ends with the daemon",
                pin_dir.display()
            );
            None
        }
    };
    if let Some(w) = &warning {
        tracing::warn!("{}", w.to_uppercase());
    }
    Ok((lock, warning))
}

/// The state store as start-up found it.
struct StartStore {
    store: Store,
    /// Where a damaged store was moved (`--start-empty`).
    damaged_aside: Option<PathBuf>,
    /// What it holds; `None` when nothing is stored.
    saved: Option<state::State>,
}

/// Opens the state store (migrating a JSON state file once). A damaged one stops the start
/// unless `start_empty`, which moves it aside (returned, for health to warn about). A full
/// disk does not stop it: the store is created once there is room.
fn open_store(dir: &std::path::Path, start_empty: bool) -> Result<StartStore, DaemonError> {
    let (store, opened) = Store::open(dir)?;
    let (store, opened, aside) = match opened {
        Opened::Damaged { path, problem } if !start_empty => {
            return Err(DaemonError::DamagedStore { path, problem });
        }
        Opened::Damaged { path, problem } => {
            drop(store);
            let aside = Store::set_aside(&path)?;
            tracing::error!(
                "THE STATE STORE {} IS DAMAGED ({problem}): moved aside to {} (--start-empty); lists and bans are rebuilt from the pinned maps, if any. Health warns until the moved file is deleted: recover what you need from it first.",
                path.display(),
                aside.display()
            );
            let (store, opened) = Store::open(dir)?;
            (store, opened, Some(aside))
        }
        other => (store, other, None),
    };
    let saved = match opened {
        Opened::Found(s) => {
            tracing::info!(
                "state store {}: {} allow, {} deny, {} bans",
                store.path().display(),
                s.allow.len(),
                s.deny.len(),
                s.bans.len()
            );
            Some(s)
        }
        Opened::Missing => {
            tracing::info!(
                "nothing stored in {}: starting from the pinned maps, if any",
                store.path().display()
            );
            None
        }
        // Moved aside above: a second damaged one (a damaged state.json behind it) stops us.
        Opened::Damaged { path, problem } => {
            return Err(DaemonError::DamagedStore { path, problem });
        }
    };
    if !store.is_open() {
        tracing::error!(
            "cannot create the state store {} (the disk is full?): starting all the same; it is created, with everything, once there is room",
            store.path().display()
        );
    }
    Ok(StartStore {
        store,
        damaged_aside: aside,
        saved,
    })
}

/// SIGHUP, SIGTERM and SIGINT, taken by the daemon's signal task.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, DaemonError> {
        let on = |kind| signal(kind).map_err(DaemonError::Signals);
        Ok(Self {
            hup: on(SignalKind::hangup())?,
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
        })
    }
}

/// The program's two streams: new bans, and its log (if it has aya-log's map).
type Streams = (
    Option<RingBuf<MapData>>,
    Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
);

/// The daemon's tasks, until a signal or `guard detach` cancels them; then waits for them.
async fn serve(
    daemon: Arc<Daemon<KernelDatapath>>,
    listener: UnixListener,
    socket: PathBuf,
    (ring, logger): Streams,
    signals: Signals,
) -> Result<(), DaemonError> {
    let stop = daemon.stop.clone();
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    let mut tasks = JoinSet::new();
    tasks.spawn(rpc::serve_async(
        listener,
        Arc::clone(&daemon) as Arc<dyn Handler>,
        stop.clone(),
    ));
    tracing::info!("serving {}", socket.display());
    if let Some(fleet) = &daemon.fleet {
        let applier = super::fleet::Applier(Arc::clone(&daemon.control));
        let link = fleet.spawn(Arc::new(applier), stop.clone());
        tasks.spawn(async move {
            let _ = link.await;
        });
    }
    if let Some(ring) = ring {
        let (tx, rx) = mpsc::channel(BAN_EVENT_QUEUE);
        *daemon.ban_events.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        // In a fleet, the events go to the fleet as they come (the tick logs them a second
        // later): one reader, its events copied to both.
        let tx = match &daemon.fleet {
            None => tx,
            Some(fleet) if fleet.settings().shares(crate::config::Share::Bans) => {
                let (fleet_tx, fleet_rx) = mpsc::channel(BAN_EVENT_QUEUE);
                let (tee_tx, mut tee_rx) = mpsc::channel::<bytes::Bytes>(BAN_EVENT_QUEUE);
                tasks.spawn(super::fleet::publish_bans(
                    Arc::clone(&daemon.control),
                    fleet.clone(),
                    fleet_rx,
                ));
                tasks.spawn(async move {
                    while let Some(item) = tee_rx.recv().await {
                        let _ = fleet_tx.try_send(item.clone());
                        let _ = tx.try_send(item);
                    }
                });
                tee_tx
            }
            Some(_) => tx,
        };
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = events::read_bans(ring, tx, stop).await {
                tracing::error!("reading the ban events: {e}");
            }
        });
    }
    if let Some(logger) = logger {
        tracing::info!("reading the XDP program's log");
        let stop = stop.clone();
        tasks.spawn(async move {
            if let Err(e) = events::read_logs(logger, stop).await {
                tracing::warn!("reading the XDP program's log: {e}");
            }
        });
    }
    tasks.spawn(tick_loop(Arc::clone(&daemon)));
    // Signals: the daemon's own task.
    let signals = {
        let daemon = Arc::clone(&daemon);
        async move {
            loop {
                tokio::select! {
                    () = daemon.stop.cancelled() => break,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // Errors are logged inside.
                        let _ = daemon.reload().await;
                    }
                    _ = term.recv() => {
                        stopping("SIGTERM");
                        daemon.stop.cancel();
                    }
                    _ = int.recv() => {
                        stopping("SIGINT");
                        daemon.stop.cancel();
                    }
                }
            }
        }
    };
    tasks.spawn(signals);
    match sd_notify(&[NotifyState::Ready]) {
        Ok(true) => tracing::debug!("told systemd we are ready"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}"),
    }
    stop.cancelled().await;
    let _ = sd_notify(&[NotifyState::Stopping]);
    while tasks.join_next().await.is_some() {}
    daemon.controls.tasks.close();
    daemon.controls.tasks.wait().await;
    let listeners = std::mem::take(&mut daemon.lock_health().listeners);
    listeners.close().await;
    Ok(())
}

fn stopping(signal: &str) {
    tracing::info!(
        "{signal}: stopping; the program stays attached and keeps protecting (`guard detach` removes it)"
    );
}

/// The one-second tick as a task: the work on a blocking thread, one tick at a time, no
/// burst of catch-up ticks after a stall.
async fn tick_loop(daemon: Arc<Daemon<KernelDatapath>>) {
    let watchdog = watchdog().is_some();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + TICK, TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = daemon.stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let d = Arc::clone(&daemon);
        let sound = tokio::task::spawn_blocking(move || {
            let sound = d.tick();
            d.publish_allow(allow_list(&d.lock()));
            sound
        })
        .await
        .unwrap_or(false);
        // systemd's watchdog (WatchdogSec=) hears from us only while the loop is sound; a
        // daemon stuck or unable to read its maps is restarted, and the pinned program
        // keeps protecting meanwhile.
        if sound && watchdog {
            let _ = sd_notify(&[NotifyState::Watchdog]);
        }
    }
}

/// Raises the soft limit on open files to the hard one: every health client is a descriptor
/// (systemd's default soft limit is 1024, its hard limit far higher).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!("cannot raise the open-file limit from {soft} to {hard}: {e}");
    }
}
