//! The automatic controls as the daemon's tasks: one per `[[watchdog]]` (sample each second,
//! drain, restart, readmit, as [`crate::watchdog`] decides) and one per `[[escalate.haproxy]]`
//! (poll the stick table, ban persistent offenders in XDP). Checked at start and on reload:
//! a unit systemd does not have, an unreachable HAProxy socket or a table or column HAProxy
//! refuses stops the start, or the reload, with the field named.
use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{BanEvents, Daemon};
use crate::{
    config::Settings,
    control::{Control, L7Ban},
    dataplane::Datapath,
    duration::Human,
    escalate::{self, HaproxySettings, POLL_EVERY, Tracker},
    health::{CheckResult, OverrideMode},
    rpc::{self, error_chain},
    state::unix_now,
    watchdog::{
        Action, Phase, Restart, Sample, Watchdog, WatchdogReport, WatchdogSettings,
        probe::{self, MemorySource},
        restart,
    },
};

/// How often a watchdog samples its service.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// A repeated warning (maintenance holds a watchdog back; a table cannot be polled) is logged
/// again at most this often.
const REPEAT_LOG: Duration = Duration::from_secs(60);

/// What a start or reload found out: the units' memory cgroups (unit mode's memory).
#[derive(Debug, Default)]
pub(super) struct Preflight {
    cgroups: HashMap<String, Option<PathBuf>>,
}

/// Checks the controls of `settings` against the world: each unit exists (systemd over
/// D-Bus) and, with `max_memory`, has a memory cgroup that can be read; each HAProxy table
/// answers the condition's column.
///
/// # Errors
///
/// A message naming the field and what is wrong.
pub(super) async fn preflight(settings: &Settings) -> Result<Preflight, String> {
    let mut out = Preflight::default();
    for (i, w) in settings.watchdogs.iter().enumerate() {
        if let Restart::Unit(unit) = &w.restart {
            let cgroup = restart::preflight_unit(unit)
                .await
                .map_err(|e| format!("watchdog[{i}].unit = {unit:?} (watchdog {}): {e}", w.name))?;
            let memory = match (&cgroup, w.max_memory) {
                (Some(cg), Some(max)) => Some(probe::unit_memory(cg).ok_or_else(|| {
                    format!(
                        "watchdog[{i}].max_memory = \"{}\" (watchdog {}): the memory of {unit} cannot be read: its cgroup {cg} has no memory.current (cgroup v2) nor memory.usage_in_bytes (v1 memory controller) under /sys/fs/cgroup, so systemd accounts no memory to it here (a container whose memory controller is read-only, or MemoryAccounting=no); remove max_memory, or run where the unit has a memory cgroup",
                        crate::watchdog::human_bytes(max),
                        w.name
                    )
                })?),
                (Some(cg), None) => probe::unit_memory(cg),
                // Not running: no cgroup to look at yet (see README: the next reload finds it).
                (None, _) => None,
            };
            out.cgroups.insert(w.name.clone(), memory);
        }
    }
    for (i, h) in settings.escalate.iter().enumerate() {
        let h2 = h.clone();
        tokio::task::spawn_blocking(move || escalate::poll(&h2.socket, &h2.table, &h2.when))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| {
                format!(
                    "escalate.haproxy[{i}] (socket {}, table {:?}, when \"{}\"): {}",
                    h.socket.display(),
                    h.table,
                    h.when,
                    error_chain(&e)
                )
            })?;
    }
    Ok(out)
}

/// One watchdog: its state machine and what its task needs to sample.
struct Entry {
    machine: Watchdog,
    /// The check's place in `[[health.checks]]` (the runner's results are in that order).
    check_index: Option<usize>,
    /// The service's port (the check's), for its connections.
    port: Option<u16>,
    memory: Option<MemorySource>,
    /// A drain waits for a slot of the pool's drain budget (`[fleet]`): not shown meanwhile.
    slot_pending: bool,
}

struct Slot {
    entry: Arc<Mutex<Entry>>,
    stop: CancellationToken,
}

/// The running controls.
#[derive(Default)]
pub(super) struct Controls {
    watchdogs: Mutex<Vec<Slot>>,
    escalations: Mutex<Vec<(HaproxySettings, CancellationToken)>>,
    pub(super) tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Entry {
    fn new(settings: WatchdogSettings, all: &Settings, pre: &Preflight) -> Self {
        let mut e = Self {
            machine: Watchdog::new(settings),
            check_index: None,
            port: None,
            memory: None,
            slot_pending: false,
        };
        e.wire(all, pre);
        e
    }

    /// Where this watchdog's check, port and memory are under `all`.
    fn wire(&mut self, all: &Settings, pre: &Preflight) {
        let s = &self.machine.settings;
        let checks = &all.health.settings.checks;
        self.check_index = checks
            .iter()
            .position(|c| c.name.as_deref() == Some(s.check.as_str()));
        self.port = self.check_index.and_then(|i| probe::check_port(&checks[i]));
        self.memory = match (&s.restart, &s.pid_file) {
            (Restart::Command(_), Some(p)) => Some(MemorySource::PidFile(p.clone())),
            (Restart::Unit(_), _) => pre
                .cgroups
                .get(&s.name)
                .cloned()
                .flatten()
                .map(MemorySource::Cgroup),
            _ => None,
        };
    }
}

impl Controls {
    /// The drains the watchdogs hold, for the health evaluation.
    pub(super) fn drains(&self) -> Vec<String> {
        lock(&self.watchdogs)
            .iter()
            .filter_map(|s| {
                let e = lock(&s.entry);
                if e.slot_pending {
                    None
                } else {
                    e.machine.drain_reason()
                }
            })
            .collect()
    }

    pub(super) fn reports(&self) -> Vec<WatchdogReport> {
        lock(&self.watchdogs)
            .iter()
            .map(|s| lock(&s.entry).machine.report())
            .collect()
    }

    /// `guard watchdog restart NAME`.
    pub(super) fn restart_by_hand(&self, name: &str) -> Result<String, String> {
        let slots = lock(&self.watchdogs);
        let slot = slots
            .iter()
            .find(|s| lock(&s.entry).machine.settings.name == name)
            .ok_or_else(|| {
                let names: Vec<String> = slots
                    .iter()
                    .map(|s| lock(&s.entry).machine.settings.name.clone())
                    .collect();
                format!(
                    "no watchdog {name:?} (configured: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )
            })?;
        let mut e = lock(&slot.entry);
        let reason = e.machine.restart_by_hand(unix_now())?;
        tracing::warn!("watchdog {name}: draining the host: {reason}");
        Ok(format!(
            "watchdog {name}: draining the host, then restarting after drain_secs ({}s)",
            e.machine.settings.drain_secs
        ))
    }
}

impl<D: Datapath + BanEvents + Send + 'static> Daemon<D> {
    /// Starts (or, on reload, brings in line) the controls' tasks for `settings`: watchdogs
    /// keep their state by name, tables whose settings did not change keep their tasks.
    pub(super) fn apply_controls(&self, settings: &Settings, pre: &Preflight) {
        let (checks, stale_after) = {
            let health = self.lock_health();
            (health.runner.subscribe(), health.runner.stale_after())
        };
        {
            let mut slots = lock(&self.controls.watchdogs);
            slots.retain(|s| {
                let name = lock(&s.entry).machine.settings.name.clone();
                let keep = settings.watchdogs.iter().any(|w| w.name == name);
                if !keep {
                    tracing::info!("watchdog {name}: removed by the reload");
                    s.stop.cancel();
                }
                keep
            });
            for w in &settings.watchdogs {
                if let Some(s) = slots
                    .iter()
                    .find(|s| lock(&s.entry).machine.settings.name == w.name)
                {
                    let mut e = lock(&s.entry);
                    e.machine.set_settings(w.clone());
                    e.wire(settings, pre);
                    continue;
                }
                let entry = Arc::new(Mutex::new(Entry::new(w.clone(), settings, pre)));
                let stop = self.stop.child_token();
                tracing::info!(
                    "watchdog {}: watching check {}{}{}, restart by {}",
                    w.name,
                    w.check,
                    w.max_memory
                        .map(|m| format!(", memory up to {}", crate::watchdog::human_bytes(m)))
                        .unwrap_or_default(),
                    w.max_latency_ms
                        .map(|l| format!(", latency up to {l} ms"))
                        .unwrap_or_default(),
                    describe_restart(&w.restart)
                );
                self.controls.tasks.spawn(watch_service(
                    Arc::clone(&entry),
                    checks.clone(),
                    stale_after,
                    self.published.subscribe(),
                    self.fleet.clone(),
                    stop.clone(),
                ));
                slots.push(Slot { entry, stop });
            }
        }
        let mut running = lock(&self.controls.escalations);
        running.retain(|(h, stop)| {
            let keep = settings.escalate.contains(h);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for h in &settings.escalate {
            if running.iter().any(|(r, _)| r == h) {
                continue;
            }
            let stop = self.stop.child_token();
            tracing::info!(
                "escalation: polling HAProxy table {} on {}: a source with {} for {}s is banned for {}",
                h.table,
                h.socket.display(),
                h.when,
                h.for_secs,
                Human(Duration::from_secs(h.ban_secs))
            );
            self.controls.tasks.spawn(poll_table(
                h.clone(),
                Arc::clone(&self.control),
                stop.clone(),
            ));
            running.push((h.clone(), stop));
        }
    }
}

fn describe_restart(r: &Restart) -> String {
    match r {
        Restart::Unit(u) => format!("systemd ({u})"),
        Restart::Command(c) => format!("command {:?}", c.join(" ")),
    }
}

/// One watchdog's task: a sample a second, and what the state machine asks for.
async fn watch_service(
    entry: Arc<Mutex<Entry>>,
    mut checks: watch::Receiver<Option<(Instant, Vec<CheckResult>)>>,
    stale_after: std::time::Duration,
    published: watch::Receiver<Arc<super::published::Current>>,
    fleet: Option<crate::fleet::Fleet>,
    stop: CancellationToken,
) {
    let mut refused_logged: Option<Instant> = None;
    let mut ticks = tokio::time::interval(SAMPLE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Rounds of checks finished since the last restart ended: the first may have started
    // before, so a recovery is judged from the second on.
    let mut fresh_rounds: u32 = 2;
    let mut suppressed_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if checks.has_changed().unwrap_or(false) {
            checks.borrow_and_update();
            fresh_rounds = fresh_rounds.saturating_add(1);
        }
        // A round that hangs leaves its last results standing: past `stale_after` they count
        // as failed, as for health.
        let round = checks
            .borrow()
            .clone()
            .map(|(at, r)| crate::health::checks::stale(r, at.elapsed(), stale_after));
        let (name, check_index, port, memory, recovering) = {
            let e = lock(&entry);
            (
                e.machine.settings.name.clone(),
                e.check_index,
                e.port,
                e.memory.clone(),
                matches!(e.machine.phase, Phase::Recovering { .. }),
            )
        };
        // No round yet (the daemon just started): nothing to judge.
        let Some(round) = round else { continue };
        let result = check_index.and_then(|i| round.get(i).cloned());
        let (mem, conns) = tokio::task::spawn_blocking(move || {
            (memory.map(|m| m.read()), port.and_then(probe::connections))
        })
        .await
        .unwrap_or((None, None));
        let memory = match mem {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                tracing::debug!("watchdog {name}: cannot read the memory: {e}");
                None
            }
            None => None,
        };
        let check_ok = result.as_ref().is_some_and(|r| r.ok) && !(recovering && fresh_rounds < 2);
        let sample = Sample {
            memory,
            latency: result.as_ref().filter(|r| r.ok).map(|r| r.elapsed),
            check_ok,
            connections: conns,
        };
        // The operator's override in force, as the health outputs publish it.
        let maint = published
            .borrow()
            .report
            .operator
            .as_ref()
            .is_some_and(|o| o.mode == OverrideMode::Maint);
        let now = unix_now();
        let (action, phase) = {
            let mut e = lock(&entry);
            let a = e.machine.step(now, sample, maint);
            e.slot_pending = fleet.is_some() && matches!(a, Action::Drain(_));
            (a, e.machine.phase.clone())
        };
        // In a fleet, a drain takes a slot of the pool's drain budget first, as `guard drain`
        // does; with none free the host stays in the pool and the service is not restarted.
        if let (Action::Drain(reason), Some(f)) = (&action, &fleet) {
            let taken = f.take_slot(0).await;
            let mut e = lock(&entry);
            e.slot_pending = false;
            if let Err(why) = taken {
                e.machine.drain_refused(unix_now(), &why);
                drop(e);
                if refused_logged.is_none_or(|t| t.elapsed() >= REPEAT_LOG) {
                    tracing::warn!("watchdog {name}: {reason}, but not draining the host: {why}");
                    refused_logged = Some(Instant::now());
                }
                continue;
            }
        }
        match action {
            Action::None => {}
            Action::Drain(reason) => match phase {
                Phase::Held { retry_at, .. } => tracing::warn!(
                    "watchdog {name}: draining the host: {reason}; not restarting before {} (min_interval)",
                    retry_at
                        .map_or_else(|| "an operator acts".to_string(), crate::state::format_unix)
                ),
                _ => tracing::warn!(
                    "watchdog {name}: draining the host: {reason}; restarting in {}s or once its connections are gone",
                    lock(&entry).machine.settings.drain_secs
                ),
            },
            Action::Suppressed(why) => {
                if suppressed_logged.is_none_or(|t| t.elapsed() >= REPEAT_LOG) {
                    tracing::warn!("watchdog {name}: {why}");
                    suppressed_logged = Some(Instant::now());
                }
            }
            Action::Readmit => {
                tracing::info!(
                    "watchdog {name}: the service passes its check again: readmitting the host"
                );
            }
            Action::Restart => {
                let (how, timeout) = {
                    let e = lock(&entry);
                    (
                        e.machine.settings.restart.clone(),
                        Duration::from_secs(e.machine.settings.restart_timeout_secs),
                    )
                };
                tracing::warn!(
                    "watchdog {name}: restarting the service by {}",
                    describe_restart(&how)
                );
                let result = tokio::select! {
                    () = stop.cancelled() => {
                        tracing::warn!("watchdog {name}: the daemon stops during the restart; the restart is abandoned");
                        break;
                    }
                    r = restart::restart(&how, timeout) => r,
                };
                // Rounds that finished until now may predate the restart.
                checks.borrow_and_update();
                fresh_rounds = 0;
                match &result {
                    Ok(()) => tracing::info!(
                        "watchdog {name}: restarted; waiting for its check to pass before readmitting the host"
                    ),
                    Err(e) => tracing::error!(
                        "watchdog {name}: THE RESTART FAILED, the host stays drained until `guard watchdog restart {name}`: {e}"
                    ),
                }
                lock(&entry).machine.restarted(unix_now(), result);
            }
        }
    }
}

/// One table's task: poll, track, ban.
async fn poll_table<D: Datapath + Send + 'static>(
    h: HaproxySettings,
    control: Arc<Mutex<Control<D>>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(POLL_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tracker = Tracker::default();
    let mut failing: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let hp = h.clone();
        let polled =
            tokio::task::spawn_blocking(move || escalate::poll(&hp.socket, &hp.table, &hp.when))
                .await;
        let entries = match polled {
            Ok(Ok(entries)) => {
                if failing.take().is_some() {
                    tracing::info!("escalation: HAProxy table {} answers again", h.table);
                }
                entries
            }
            Ok(Err(e)) => {
                let msg = error_chain(&e);
                let repeat = failing
                    .as_ref()
                    .is_some_and(|(m, t)| *m == msg && t.elapsed() < REPEAT_LOG);
                if !repeat {
                    tracing::warn!(
                        "escalation: polling HAProxy table {} (retrying every {}): {msg}",
                        h.table,
                        Human(POLL_EVERY)
                    );
                    failing = Some((msg, Instant::now()));
                }
                continue;
            }
            Err(e) => {
                tracing::error!("escalation: the poll of {} failed: {e}", h.table);
                continue;
            }
        };
        let over: Vec<IpAddr> = entries.iter().map(|(ip, _)| *ip).collect();
        let due = tracker.observe(unix_now(), &over, h.for_secs);
        if due.is_empty() {
            continue;
        }
        let ban_secs = h.ban_secs;
        let done = rpc::blocking(&control, move |c| {
            due.into_iter()
                .map(|ip| (ip, c.ban_l7(ip, ban_secs)))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(done) = done else { continue };
        for (ip, outcome) in done {
            let value = entries
                .iter()
                .find(|(e, _)| *e == ip)
                .map_or(0, |(_, v)| *v);
            match outcome {
                Ok(L7Ban::Banned(b)) => tracing::warn!(
                    "banned {} in XDP for {}: l7:haproxy (table {}: {} = {value}, over \"{}\" for {}s)",
                    b.source,
                    Human(Duration::from_secs(ban_secs)),
                    h.table,
                    h.when.column,
                    h.when,
                    h.for_secs
                ),
                Ok(L7Ban::Allowed(a)) => tracing::info!(
                    "not banning {ip} (HAProxy table {}: {} = {value}): it is allow-listed ({a})",
                    h.table,
                    h.when.column
                ),
                Ok(L7Ban::AlreadyBanned(_)) => {}
                Err(e) => tracing::error!("cannot ban {ip} (l7:haproxy): {}", error_chain(&e)),
            }
        }
    }
}
