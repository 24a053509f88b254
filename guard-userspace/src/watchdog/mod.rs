//! The watchdog: a service that leaks memory, slows down or fails its check is taken out of
//! the load balancers' pools (the host drains), restarted, and let back in once its check
//! passes again, so that no user notices. This module is the decision: one state machine per
//! `[[watchdog]]`, fed a sample a second; the daemon carries out what it asks (drain, restart,
//! readmit) and tells it how the restart went. [`probe`] reads the samples, [`restart`]
//! restarts (systemd over D-Bus, or a command).
pub mod probe;
pub mod restart;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a restarted service may take to pass its check again before the watchdog gives
/// up (the host stays drained, and says why).
pub const RECOVER_TIMEOUT: Duration = Duration::from_secs(300);

/// How a watchdog restarts its service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// A systemd unit, through D-Bus (`RestartUnit`); its cgroup gives the memory.
    Unit(String),
    /// Any command, for hosts without systemd (with a pid file for the memory, if any).
    Command(Vec<String>),
}

/// `[[watchdog]]`, validated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogSettings {
    pub name: String,
    /// The name of the `[[health.checks]]` entry that probes the service.
    pub check: String,
    pub restart: Restart,
    /// For `Restart::Command`: a pid file whose process's resident memory is watched.
    pub pid_file: Option<std::path::PathBuf>,
    pub max_memory: Option<u64>,
    pub max_latency_ms: Option<u64>,
    pub fail_after: u32,
    pub drain_secs: u64,
    pub min_interval_secs: u64,
    /// How long a restart command may run.
    pub restart_timeout_secs: u64,
}

/// One second's look at the service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Bytes (the unit's cgroup, or the pid file's process), if known.
    pub memory: Option<u64>,
    /// The check's response time, if it answered.
    pub latency: Option<Duration>,
    /// Whether the check passed.
    pub check_ok: bool,
    /// Connections the service still has open (its port's established sockets), if known:
    /// the drain can end early when they are gone.
    pub connections: Option<usize>,
}

/// Where a watchdog stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// All is well, or `bad` consecutive bad samples so far.
    Watching { bad: u32 },
    /// The host is drained so the load balancers move the traffic away.
    Draining { since: u64, reason: String },
    /// The restart runs.
    Restarting { since: u64, reason: String },
    /// Restarted: waiting for the check to pass again.
    Recovering { since: u64, reason: String },
    /// Drained and waiting: a restart is not allowed yet (`min_interval`), or it failed, or the
    /// service did not recover. `retry_at`: when it tries again on its own (`None`: only by
    /// `guard watchdog restart`).
    Held {
        reason: String,
        retry_at: Option<u64>,
    },
}

/// What the daemon must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Drain the host with this reason (`watchdog: app memory 2.3GiB > 2GiB`).
    Drain(String),
    /// Restart the service now (the host is drained).
    Restart,
    /// The service is well again: let the host back in.
    Readmit,
    /// Bad samples, but the operator has the host in maintenance: no drain, no restart.
    Suppressed(String),
}

/// One watchdog.
#[derive(Clone, Debug)]
pub struct Watchdog {
    pub settings: WatchdogSettings,
    pub phase: Phase,
    /// Unix seconds of the last restart this watchdog ran.
    pub last_restart: Option<u64>,
    /// What happened, newest last (at most `HISTORY`).
    pub history: Vec<(u64, String)>,
    pub last_sample: Sample,
}

const HISTORY: usize = 20;

/// A drain ends early once the service has no connections left, but never before this many
/// seconds (or `drain_secs`, if shorter): the load balancers must have seen the drain first,
/// or a connection between two of their checks would find the service restarting.
pub const EARLY_END_AFTER_SECS: u64 = 5;

/// What `max_memory` accepts, for error messages.
pub const SIZE_EXPECTED: &str = "a size in bytes with a unit, B, KiB, MiB, GiB or TiB (powers of 1024), such as \"2GiB\" or \"512MiB\"";

/// Parses `2GiB`, `512MiB`, `1.5GiB`, `4096B`: powers of 1024; at least 1 MiB.
///
/// # Errors
///
/// A message naming what is accepted.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("no unit: expected {SIZE_EXPECTED}"))?;
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return Err(format!("unknown unit {unit:?}: expected {SIZE_EXPECTED}")),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{number:?} is not a number: expected {SIZE_EXPECTED}"))?;
    let bytes = n * factor as f64;
    if !bytes.is_finite() || bytes < f64::from(1u32 << 20) || bytes > (1u64 << 50) as f64 {
        return Err(format!(
            "out of range: accepts 1MiB to 1024TiB ({SIZE_EXPECTED})"
        ));
    }
    Ok(bytes as u64)
}

/// `guard watchdog status`: one watchdog as the operator sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WatchdogReport {
    pub settings: WatchdogSettings,
    pub phase: Phase,
    /// The drain this watchdog holds (every health output shows it), if any.
    pub drain: Option<String>,
    /// Unix seconds of the last restart.
    pub last_restart: Option<u64>,
    /// The last sample: bytes, milliseconds, the check, the service's connections.
    pub memory: Option<u64>,
    pub latency_ms: Option<u64>,
    pub check_ok: bool,
    pub connections: Option<usize>,
    /// Unix seconds and what happened, newest last.
    pub history: Vec<(u64, String)>,
}

/// Bytes as an operator reads them (`2.3GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v.fract() == 0.0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

impl Watchdog {
    pub fn new(settings: WatchdogSettings) -> Self {
        Self {
            settings,
            phase: Phase::Watching { bad: 0 },
            last_restart: None,
            history: Vec::new(),
            last_sample: Sample::default(),
        }
    }

    /// The report `guard watchdog status` shows.
    pub fn report(&self) -> WatchdogReport {
        let s = &self.last_sample;
        WatchdogReport {
            settings: self.settings.clone(),
            phase: self.phase.clone(),
            drain: self.drain_reason(),
            last_restart: self.last_restart,
            memory: s.memory,
            latency_ms: s.latency.map(|l| l.as_millis() as u64),
            check_ok: s.check_ok,
            connections: s.connections,
            history: self.history.clone(),
        }
    }

    /// Takes reloaded settings; the phase, last restart and history stay.
    pub fn set_settings(&mut self, settings: WatchdogSettings) {
        self.settings = settings;
    }

    fn note(&mut self, now: u64, what: String) {
        self.history.push((now, what));
        if self.history.len() > HISTORY {
            self.history.remove(0);
        }
    }

    /// Why `sample` is bad, if it is.
    pub fn fault(&self, sample: &Sample) -> Option<String> {
        let s = &self.settings;
        if let (Some(max), Some(m)) = (s.max_memory, sample.memory)
            && m > max
        {
            return Some(format!(
                "{} memory {} > {}",
                s.name,
                human_bytes(m),
                human_bytes(max)
            ));
        }
        if !sample.check_ok {
            return Some(format!("{} check {} failed", s.name, s.check));
        }
        if let (Some(max), Some(l)) = (s.max_latency_ms, sample.latency)
            && l > Duration::from_millis(max)
        {
            return Some(format!(
                "{} latency {} ms > {max} ms",
                s.name,
                l.as_millis()
            ));
        }
        None
    }

    /// The drain this watchdog holds, if any: the reason every health output shows.
    pub fn drain_reason(&self) -> Option<String> {
        match &self.phase {
            Phase::Watching { .. } => None,
            Phase::Draining { reason, .. }
            | Phase::Restarting { reason, .. }
            | Phase::Recovering { reason, .. }
            | Phase::Held { reason, .. } => Some(format!("watchdog: {reason}")),
        }
    }

    /// When a restart would be allowed again (`min_interval` after the last).
    fn restart_allowed_at(&self) -> Option<u64> {
        self.last_restart
            .map(|t| t + self.settings.min_interval_secs)
    }

    /// One second: a sample at `now` (Unix seconds), with the operator's maintenance mode.
    pub fn step(&mut self, now: u64, sample: Sample, maint: bool) -> Action {
        self.last_sample = sample;
        let fault = self.fault(&sample);
        match self.phase.clone() {
            Phase::Watching { bad } => {
                let Some(reason) = fault else {
                    self.phase = Phase::Watching { bad: 0 };
                    return Action::None;
                };
                let bad = bad + 1;
                self.phase = Phase::Watching { bad };
                if bad < self.settings.fail_after {
                    return Action::None;
                }
                if maint {
                    // The operator has the host; a drain or restart now would fight them.
                    self.phase = Phase::Watching { bad: 0 };
                    return Action::Suppressed(format!(
                        "{reason}: not draining, the host is in maintenance"
                    ));
                }
                self.note(now, format!("drain: {reason}"));
                if let Some(at) = self.restart_allowed_at().filter(|at| *at > now) {
                    self.phase = Phase::Held {
                        reason: format!("{reason}; restarted less than min_interval ago"),
                        retry_at: Some(at),
                    };
                } else {
                    self.phase = Phase::Draining {
                        since: now,
                        reason: reason.clone(),
                    };
                }
                Action::Drain(reason)
            }
            Phase::Draining { since, reason } => {
                let waited = now.saturating_sub(since);
                let drained = waited >= self.settings.drain_secs
                    || (sample.connections == Some(0)
                        && waited >= EARLY_END_AFTER_SECS.min(self.settings.drain_secs));
                if !drained {
                    return Action::None;
                }
                self.note(now, "restart".to_string());
                self.phase = Phase::Restarting { since: now, reason };
                self.last_restart = Some(now);
                Action::Restart
            }
            // The daemon reports the restart through `restarted`.
            Phase::Restarting { .. } => Action::None,
            Phase::Recovering { since, reason } => {
                // The check passing is what readmits (README, issue #14): a service still over
                // a limit after its restart is let back in and, its limit broken again for
                // fail_after samples, drained and held by min_interval, saying so. Judged on
                // the whole fault instead, it would stay drained as "did not recover" until an
                // operator acts, although its check passes.
                if sample.check_ok {
                    self.note(now, "recovered: readmit".to_string());
                    self.phase = Phase::Watching { bad: 0 };
                    return Action::Readmit;
                }
                if now.saturating_sub(since) >= RECOVER_TIMEOUT.as_secs() {
                    let why = format!("{reason}; did not recover after the restart");
                    self.note(now, why.clone());
                    self.phase = Phase::Held {
                        reason: why,
                        retry_at: None,
                    };
                }
                Action::None
            }
            Phase::Held { retry_at, reason } => match retry_at {
                Some(at) if now >= at => {
                    self.note(now, "restart (min_interval has passed)".to_string());
                    self.phase = Phase::Restarting { since: now, reason };
                    self.last_restart = Some(now);
                    Action::Restart
                }
                _ => Action::None,
            },
        }
    }

    /// The pool's drain budget (`[fleet] max_drained`) has no room for the drain `step` just
    /// asked for: the host stays in the pool and the service is not restarted (a restart
    /// without a drain would cost users requests); the watchdog starts counting bad samples
    /// again, so it asks again after `fail_after` more.
    pub fn drain_refused(&mut self, now: u64, why: &str) {
        if matches!(self.phase, Phase::Draining { .. } | Phase::Held { .. }) {
            self.note(now, format!("not drained: {why}"));
            self.phase = Phase::Watching { bad: 0 };
        }
    }

    /// How the restart the daemon ran went: on success the watchdog waits for the check; on
    /// failure the host stays drained, with the error as the reason, until an operator acts.
    pub fn restarted(&mut self, now: u64, result: Result<(), String>) {
        let reason = match &self.phase {
            Phase::Restarting { reason, .. } => reason.clone(),
            _ => return,
        };
        match result {
            Ok(()) => {
                self.note(now, "restarted: waiting for the check".to_string());
                self.phase = Phase::Recovering { since: now, reason };
            }
            Err(e) => {
                let why = format!("{reason}; the restart failed: {e}");
                self.note(now, why.clone());
                self.phase = Phase::Held {
                    reason: why,
                    retry_at: None,
                };
            }
        }
    }

    /// `guard watchdog restart NAME`: the same sequence by hand, from the drain on. `Err` if a
    /// restart is under way already.
    pub fn restart_by_hand(&mut self, now: u64) -> Result<String, String> {
        match &self.phase {
            Phase::Restarting { .. } | Phase::Recovering { .. } => Err(format!(
                "{}: a restart is under way already",
                self.settings.name
            )),
            _ => {
                let reason = format!("{} restart asked by the operator", self.settings.name);
                self.note(now, "drain: by hand".to_string());
                self.phase = Phase::Draining {
                    since: now,
                    reason: reason.clone(),
                };
                Ok(reason)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn app() -> Watchdog {
        Watchdog::new(WatchdogSettings {
            name: "app".into(),
            check: "app-http".into(),
            restart: Restart::Unit("app.service".into()),
            pid_file: None,
            max_memory: Some(2 * GIB),
            max_latency_ms: Some(800),
            fail_after: 3,
            drain_secs: 30,
            min_interval_secs: 600,
            restart_timeout_secs: 60,
        })
    }

    fn well() -> Sample {
        Sample {
            memory: Some(GIB),
            latency: Some(Duration::from_millis(5)),
            check_ok: true,
            connections: Some(3),
        }
    }

    fn leaking() -> Sample {
        Sample {
            memory: Some(2 * GIB + 300 * (1 << 20)),
            ..well()
        }
    }

    #[test]
    fn a_leak_for_fail_after_samples_drains_then_restarts_then_readmits() {
        let mut w = app();
        assert_eq!(w.step(100, leaking(), false), Action::None);
        assert_eq!(w.step(101, leaking(), false), Action::None);
        let a = w.step(102, leaking(), false);
        assert_eq!(a, Action::Drain("app memory 2.3GiB > 2GiB".into()));
        assert_eq!(
            w.drain_reason().as_deref(),
            Some("watchdog: app memory 2.3GiB > 2GiB")
        );
        // The drain lasts drain_secs (connections still open)...
        assert_eq!(w.step(120, leaking(), false), Action::None);
        assert_eq!(w.step(132, leaking(), false), Action::Restart);
        assert!(matches!(w.phase, Phase::Restarting { .. }));
        w.restarted(133, Ok(()));
        // ...the service comes back; the first good sample readmits the host.
        assert_eq!(
            w.step(
                134,
                Sample {
                    check_ok: false,
                    ..well()
                },
                false
            ),
            Action::None
        );
        assert_eq!(w.step(135, well(), false), Action::Readmit);
        assert_eq!(w.drain_reason(), None);
        assert_eq!(w.history.len(), 4, "{:?}", w.history);
    }

    #[test]
    fn a_drain_ends_early_once_the_connections_are_gone() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        let gone = Sample {
            connections: Some(0),
            ..leaking()
        };
        // Drained at 2: not before the load balancers have had EARLY_END_AFTER_SECS to see it.
        assert_eq!(w.step(4, gone, false), Action::None);
        assert_eq!(w.step(7, gone, false), Action::Restart);
    }

    #[test]
    fn one_bad_sample_or_a_slow_but_passing_one_is_not_enough() {
        let mut w = app();
        assert_eq!(w.step(1, leaking(), false), Action::None);
        assert_eq!(w.step(2, well(), false), Action::None);
        assert_eq!(w.step(3, leaking(), false), Action::None);
        assert_eq!(w.step(4, leaking(), false), Action::None);
        assert_eq!(w.phase, Phase::Watching { bad: 2 });
        let slow = Sample {
            latency: Some(Duration::from_millis(900)),
            ..well()
        };
        w.step(5, slow, false);
        assert_eq!(
            w.fault(&slow).as_deref(),
            Some("app latency 900 ms > 800 ms")
        );
    }

    #[test]
    fn never_more_often_than_min_interval_and_never_over_maintenance() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        w.step(40, leaking(), false);
        w.restarted(41, Ok(()));
        w.step(42, well(), false);
        // Leaking again five minutes later: drained, but held until min_interval (600 s).
        for t in 300..302 {
            w.step(t, leaking(), false);
        }
        assert!(matches!(w.step(302, leaking(), false), Action::Drain(_)));
        assert!(
            matches!(
                w.phase,
                Phase::Held {
                    retry_at: Some(640),
                    ..
                }
            ),
            "{:?}",
            w.phase
        );
        assert!(w.drain_reason().unwrap().contains("min_interval"));
        assert_eq!(w.step(639, leaking(), false), Action::None);
        assert_eq!(w.step(640, leaking(), false), Action::Restart);
        // Maintenance: bad samples drain nothing.
        let mut m = app();
        for t in 0..2 {
            m.step(t, leaking(), true);
        }
        assert!(matches!(m.step(2, leaking(), true), Action::Suppressed(_)));
        assert_eq!(m.drain_reason(), None);
    }

    #[test]
    fn a_failed_restart_keeps_the_host_drained_with_the_error_until_an_operator_acts() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        assert_eq!(w.step(40, leaking(), false), Action::Restart);
        w.restarted(41, Err("unit app.service not found".into()));
        let why = w.drain_reason().unwrap();
        assert!(
            why.contains("the restart failed: unit app.service not found"),
            "{why}"
        );
        // Nothing loops: no restart on its own.
        for t in 42..2000 {
            assert_eq!(w.step(t, leaking(), false), Action::None);
        }
        assert!(w.restart_by_hand(2000).is_ok());
        assert!(matches!(w.phase, Phase::Draining { .. }));
        assert!(
            w.restart_by_hand(2001).is_ok(),
            "a drain can be asked again"
        );
    }

    #[test]
    fn sizes_parse_as_an_operator_writes_them_and_bad_ones_say_what_is_accepted() {
        assert_eq!(parse_size("2GiB"), Ok(2 * GIB));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 * GIB / 2));
        for bad in ["2", "2GB", "GiB", "-1GiB", "1KiB", "x2MiB", "2 gib"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("such as \"2GiB\""), "{bad}: {e}");
        }
    }

    #[test]
    fn a_restart_that_hangs_past_its_timeout_leaves_the_host_drained_and_nothing_loops() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        assert_eq!(w.step(40, leaking(), false), Action::Restart);
        // The daemon's restart runs (under its timeout); the samples go on meanwhile.
        for t in 41..100 {
            assert_eq!(w.step(t, leaking(), false), Action::None);
        }
        w.restarted(
            101,
            Err("restart command did not finish within 1m (killed)".into()),
        );
        assert!(
            w.drain_reason()
                .unwrap()
                .contains("did not finish within 1m")
        );
        for t in 102..3000 {
            assert_eq!(w.step(t, well(), false), Action::None, "at {t}");
        }
        assert!(w.drain_reason().is_some(), "still drained, saying why");
    }

    #[test]
    fn a_restarted_service_still_over_its_limit_is_readmitted_then_held_by_min_interval() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        assert_eq!(w.step(40, leaking(), false), Action::Restart);
        w.restarted(41, Ok(()));
        // Its check passes although its memory is still over: readmitted, as the README says.
        assert_eq!(w.step(42, leaking(), false), Action::Readmit);
        w.step(43, leaking(), false);
        w.step(44, leaking(), false);
        assert!(matches!(w.step(45, leaking(), false), Action::Drain(_)));
        assert_eq!(
            w.phase,
            Phase::Held {
                reason: "app memory 2.3GiB > 2GiB; restarted less than min_interval ago".into(),
                retry_at: Some(640),
            }
        );
        for t in 46..640 {
            assert_eq!(w.step(t, leaking(), false), Action::None, "at {t}");
        }
    }

    #[test]
    fn a_service_that_never_recovers_is_held_drained_not_restarted_again() {
        let mut w = app();
        for t in 0..3 {
            w.step(t, leaking(), false);
        }
        w.step(40, leaking(), false);
        w.restarted(41, Ok(()));
        let down = Sample {
            check_ok: false,
            ..well()
        };
        for t in 42..42 + RECOVER_TIMEOUT.as_secs() {
            assert_eq!(w.step(t, down, false), Action::None);
        }
        assert!(matches!(w.phase, Phase::Held { retry_at: None, .. }));
        assert!(w.drain_reason().unwrap().contains("did not recover"));
        assert_eq!(w.step(5000, well(), false), Action::None);
        assert_eq!(
            w.report()
                .history
                .last()
                .map(|h| h.1.contains("did not recover")),
            Some(true)
        );
    }

    #[test]
    fn bytes_read_as_an_operator_writes_them() {
        assert_eq!(human_bytes(2 * GIB), "2GiB");
        assert_eq!(human_bytes(2 * GIB + 300 * (1 << 20)), "2.3GiB");
        assert_eq!(human_bytes(512), "512B");
    }

    #[test]
    fn a_drain_the_pool_budget_refuses_leaves_the_host_in_and_asks_again_later() {
        let mut w = app();
        let mut now = 1_000;
        let mut action = Action::None;
        for _ in 0..3 {
            now += 1;
            action = w.step(now, leaking(), false);
        }
        assert!(matches!(action, Action::Drain(_)), "{action:?}");
        w.drain_refused(now, "pool \"web\" may have 1 of its 3 hosts out");
        assert_eq!(w.phase, Phase::Watching { bad: 0 });
        assert_eq!(w.drain_reason(), None, "the host stays in the pool");
        assert!(
            w.history.last().unwrap().1.starts_with("not drained: pool"),
            "{:?}",
            w.history
        );
        // No restart follows; after fail_after more bad samples it asks again.
        for i in 0..3 {
            now += 1;
            let a = w.step(now, leaking(), false);
            assert_eq!(matches!(a, Action::Drain(_)), i == 2, "sample {i}: {a:?}");
            assert_ne!(a, Action::Restart);
        }
    }
}
