//! The host's one health state (starting, pass, warn with a weight, drain, maint, fail) and its
//! reason, computed from headroom, the data plane, local checks and operator overrides, with hysteresis.
//!
//! Every output (HTTP `/readyz`, the HAProxy agent, `/metrics`, `guard health check`) is a view
//! of one [`HealthReport`], which [`Evaluator::evaluate`] produces from one [`Inputs`] per tick.
//! The evaluator is pure over its inputs: the daemon samples the host ([`SystemSample::read`]),
//! runs local checks off its tick ([`CheckRunner`]) and passes what the data plane reports.
pub mod checks;
mod evaluate;
pub mod exit;
mod settings;
pub mod system;

use std::{collections::BTreeMap, fmt, time::Duration, time::Instant};

use guard_common::{Counters, reason};
use serde::{Deserialize, Serialize};

pub use checks::{CheckKind, CheckResult, CheckRunner, CheckSpec, HttpUrl, LocalCheck};
pub use evaluate::Evaluator;
pub use exit::{CheckFormat, check_output, exit_code, unreachable_exit_code};
pub use settings::{HealthConfig, HealthError, HealthSettings, Thresholds};
pub use system::{
    CpuTimes, MemInfo, ProcSource, Resource, SourceError, SystemSample, SystemSource,
};

/// The state load balancers act on. Only `Warn` carries a weight; see [`Status::weight`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// No full evaluation yet (the daemon just started).
    Starting,
    /// Serve at full weight.
    Pass,
    /// Serve at `weight` percent (1..=100) of the configured weight.
    Warn { weight: u8 },
    /// Take no new connections; finish the current ones (headroom exhausted, or the operator).
    Drain,
    /// Out of service by the operator.
    Maint,
    /// Do not send traffic: a local check failed or the XDP program is not attached.
    Fail,
}

impl Status {
    pub fn kind(self) -> StatusKind {
        match self {
            Self::Starting => StatusKind::Starting,
            Self::Pass => StatusKind::Pass,
            Self::Warn { .. } => StatusKind::Warn,
            Self::Drain => StatusKind::Drain,
            Self::Maint => StatusKind::Maint,
            Self::Fail => StatusKind::Fail,
        }
    }

    /// Percent of the configured weight: 100 for pass, the weight for warn, 0 otherwise.
    pub fn weight(self) -> u8 {
        match self {
            Self::Pass => 100,
            Self::Warn { weight } => weight,
            _ => 0,
        }
    }

    /// True for pass and warn: the states in which the host asks for new traffic.
    pub fn serves(self) -> bool {
        matches!(self, Self::Pass | Self::Warn { .. })
    }

    pub fn name(self) -> &'static str {
        self.kind().name()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Warn { weight } => write!(f, "warn (weight {weight}%)"),
            s => f.write_str(s.name()),
        }
    }
}

/// [`Status`] without the weight: JSON values and metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusKind {
    Starting,
    Pass,
    Warn,
    Drain,
    Maint,
    Fail,
}

impl StatusKind {
    pub const ALL: [StatusKind; 6] = [
        Self::Starting,
        Self::Pass,
        Self::Warn,
        Self::Drain,
        Self::Maint,
        Self::Fail,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Drain => "drain",
            Self::Maint => "maint",
            Self::Fail => "fail",
        }
    }
}

/// What the operator asked for with `guard drain|maint|ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverrideMode {
    /// Drain the host (unless a failure is already taking it out: see [`Evaluator`]).
    Drain,
    /// Put the host in maintenance, whatever else holds.
    Maint,
    /// Cancel drain and maint: the computed state applies. It does not hide a failure or
    /// exhausted headroom, as HAProxy's own `ready` does not change a server's health.
    Ready,
}

impl OverrideMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Maint => "maint",
            Self::Ready => "ready",
        }
    }
}

/// An operator override, as the daemon persists it (it survives restarts; the daemon stores
/// it and passes it back in [`Inputs::operator`]). Times are Unix seconds, so an expiry still
/// means the same moment after a reboot.
// No `deny_unknown_fields`: it is persisted, and a field a newer guard added is not damage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub mode: OverrideMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub since: u64,
    /// `None` lasts until the next `guard ready` (or another override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

impl Override {
    /// An override made at `now_unix`, lasting `lasts` if given (`guard drain --for 10m`).
    pub fn new(
        mode: OverrideMode,
        reason: Option<String>,
        now_unix: u64,
        lasts: Option<Duration>,
    ) -> Self {
        Self {
            mode,
            reason,
            since: now_unix,
            expires: lasts.map(|d| now_unix.saturating_add(d.as_secs().max(1))),
        }
    }

    /// False once the expiry has passed: an expired override lapses on its own (the daemon
    /// may then delete it from its state file).
    pub fn is_active(&self, now_unix: u64) -> bool {
        self.expires.is_none_or(|e| now_unix < e)
    }

    fn describe(&self) -> String {
        let what = match &self.reason {
            Some(r) if !r.trim().is_empty() => format!("operator: {}", r.trim()),
            _ => format!("operator: {}", self.mode.name()),
        };
        match self.expires {
            Some(e) => format!("{what} (until {})", crate::state::format_unix(e)),
            None => what,
        }
    }
}

/// Whether the XDP program is attached on one configured interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceInput {
    pub name: String,
    pub attached: bool,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// Short name for labels and reports: `bans`, `deny_v4`, ...
    pub name: String,
    pub entries: u64,
    pub capacity: u64,
}

/// Everything one evaluation looks at. The daemon builds one per tick.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Wall clock, Unix seconds (override expiry, report time).
    pub now_unix: u64,
    pub system: SystemSample,
    /// One per configured interface. An empty list means no data-plane requirement.
    pub interfaces: Vec<InterfaceInput>,
    pub maps: Vec<MapFill>,
    /// The latest round of local checks; `None` until the first round has finished (the
    /// state stays `starting`). `Some(vec![])` when no checks are configured.
    pub checks: Option<Vec<CheckResult>>,
    /// The persisted operator override, expired or not: expiry is checked here.
    pub operator: Option<Override>,
    /// Packets per second the XDP program is dropping now (see [`DropRate`]).
    pub drop_rate_pps: f64,
    /// The services the guard watches: shown, and named in the reason while under attack;
    /// they never move the state (a host whose guard sheds a flood is not overloaded).
    pub services: Vec<crate::control::attack::ServiceReport>,
    /// What is wrong with the state store (changes it cannot save, a damaged one moved
    /// aside): warn, since the guard protects but what it holds may not survive a restart.
    pub store: Option<String>,
    /// The drains the watchdogs hold (`watchdog: app memory 2.3GiB > 2GiB`), while they
    /// restart a service: drain at once, over a computed fail (the host is out either way, and
    /// the watchdog's reason says why and what comes next); only the operator's maint is above.
    pub watchdog: Vec<String>,
    /// The fleet's problem, if any (its servers cannot be reached): a warn, never worse, since
    /// the host's local protection is intact. `None` outside a fleet.
    pub fleet: Option<String>,
}

/// A check's own verdict, as in draft-inadarei-api-health-check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

/// An observed value: a number (with a unit), a flag or a word.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Observed {
    Bool(bool),
    Number(f64),
    Text(String),
}

/// One input as the report shows it: what was observed, against what, and its own verdict.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// `cpu`, `memory`, `io`, `xdp`, `map`, `tcp`, `http`, `operator`.
    pub component: String,
    /// `utilization`, `pressure`, `attached`, `dropRate`, `responseTime`, `override`.
    pub measurement: String,
    /// Which one, when a component has several: an interface, a map, a check target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_id: Option<String>,
    /// `None` when it could not be observed (see `output`).
    pub observed: Option<Observed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<String>,
    pub status: CheckStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The raw headroom numbers, for metrics and `guard health`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Headroom {
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    /// PSI "some" avg10 in percent, for the resources the kernel reports.
    pub pressure_percent: BTreeMap<String, f64>,
}

/// The health state with everything behind it. Serialises as
/// `{"status":"warn","weight":62,"reason":..., "checks":[...], ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "ReportWire", into = "ReportWire")]
pub struct HealthReport {
    pub status: Status,
    pub reason: String,
    /// Unix seconds of the evaluation.
    pub time: u64,
    pub drop_rate_pps: f64,
    pub headroom: Headroom,
    /// The active override, if any.
    pub operator: Option<Override>,
    pub observations: Vec<Observation>,
}

impl HealthReport {
    /// The report before any evaluation: what the outputs serve while the daemon starts.
    pub fn starting(now_unix: u64) -> Self {
        Self {
            status: Status::Starting,
            reason: "starting: no evaluation yet".to_string(),
            time: now_unix,
            drop_rate_pps: 0.0,
            headroom: Headroom::default(),
            operator: None,
            observations: Vec::new(),
        }
    }

    pub fn weight(&self) -> u8 {
        self.status.weight()
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct ReportWire {
    status: StatusKind,
    weight: u8,
    reason: String,
    time: u64,
    drop_rate_pps: f64,
    headroom: Headroom,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    operator: Option<Override>,
    checks: Vec<Observation>,
}

impl From<HealthReport> for ReportWire {
    fn from(r: HealthReport) -> Self {
        Self {
            status: r.status.kind(),
            weight: r.status.weight(),
            reason: r.reason,
            time: r.time,
            drop_rate_pps: r.drop_rate_pps,
            headroom: r.headroom,
            operator: r.operator,
            checks: r.observations,
        }
    }
}

impl From<ReportWire> for HealthReport {
    fn from(w: ReportWire) -> Self {
        let status = match w.status {
            StatusKind::Starting => Status::Starting,
            StatusKind::Pass => Status::Pass,
            StatusKind::Warn => Status::Warn {
                weight: w.weight.min(100),
            },
            StatusKind::Drain => Status::Drain,
            StatusKind::Maint => Status::Maint,
            StatusKind::Fail => Status::Fail,
        };
        Self {
            status,
            reason: w.reason,
            time: w.time,
            drop_rate_pps: w.drop_rate_pps,
            headroom: w.headroom,
            operator: w.operator,
            observations: w.checks,
        }
    }
}

/// Packets the data plane dropped, over every dropping reason (dry-run drops nothing).
pub fn dropped_packets(counters: &Counters) -> u64 {
    (0..reason::COUNT)
        .filter(|r| reason::drops(*r))
        .map(|r| counters.packets[r])
        .fold(0u64, u64::saturating_add)
}

/// Turns the cumulative dropped-packet count into a rate for [`Inputs::drop_rate_pps`].
#[derive(Clone, Debug, Default)]
pub struct DropRate {
    last: Option<(Instant, u64)>,
}

impl DropRate {
    /// Packets/s since the previous call; 0 on the first call, and when the counter went
    /// backwards (the program was reloaded with fresh maps).
    pub fn update(&mut self, dropped_total: u64, now: Instant) -> f64 {
        let rate = match self.last {
            Some((then, before)) if dropped_total >= before => {
                let secs = now.saturating_duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    (dropped_total - before) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = Some((now, dropped_total));
        rate
    }
}

#[cfg(test)]
mod tests;
