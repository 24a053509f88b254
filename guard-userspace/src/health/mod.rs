//! The host's one health state (starting, pass, warn with a weight, drain, maint, fail) and its
//! reason, computed from headroom, the data plane, local checks and operator overrides, with hysteresis.
//!
//! Every output (HTTP `/readyz`, the HAProxy agent, `/metrics`, `guard health check`) is a view
//! of one [`HealthReport`], which [`Evaluator::evaluate`] produces from one [`Inputs`] per tick.
//! The evaluator is pure over its inputs: the daemon samples the host ([`SystemSample::read`]),
//! runs local checks off its tick ([`CheckRunner`]) and passes what the data plane reports.
pub mod checks;
pub mod exit;
pub mod system;

use std::{collections::BTreeMap, fmt, time::Duration, time::Instant};

use guard_common::{Counters, reason};
use serde::{Deserialize, Serialize};

pub use checks::{CheckKind, CheckResult, CheckRunner, CheckSpec, HttpUrl, LocalCheck};
pub use exit::{CheckFormat, check_output, exit_code, unreachable_exit_code};
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HealthError {
    #[error("{field} = {value}: expected a percentage from 0 to 100")]
    Threshold { field: &'static str, value: f64 },
    #[error("{warn_field} = {warn} must be below {drain_field} = {drain}")]
    ThresholdOrder {
        warn_field: &'static str,
        warn: f64,
        drain_field: &'static str,
        drain: f64,
    },
    #[error("{field} = {value}: expected a whole number from {min} to {max}")]
    Range {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("health.checks[{index}].type = {kind:?}: expected \"tcp\" or \"http\"")]
    UnknownCheckType { index: usize, kind: String },
    #[error("health.checks[{index}].target = {target:?}: {reason}")]
    CheckTarget {
        index: usize,
        target: String,
        reason: &'static str,
    },
    #[error(
        "health.checks[{index}].timeout_ms = {value}: expected milliseconds from 1 to {}",
        checks::MAX_TIMEOUT_MS
    )]
    CheckTimeout { index: usize, value: u64 },
    #[error(
        "health.checks has {count} entries: at most {} are accepted",
        checks::MAX_CHECKS
    )]
    TooManyChecks { count: usize },
    #[error("unknown health check format {value:?}: expected keepalived, consul or nagios")]
    UnknownFormat { value: String },
}

/// The `[health]` settings as written, before validation. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// CPU or memory utilisation (percent) at which the host turns warn and its weight falls.
    pub warn_at: f64,
    /// CPU or memory utilisation (percent) at which the host asks to be drained.
    pub drain_at: f64,
    /// The weight (percent) warn falls to just below `drain_at`.
    pub weight_floor: u32,
    /// PSI "some" avg10 (percent) of cpu, memory or io at which the host turns warn.
    pub psi_warn_at: f64,
    /// PSI "some" avg10 (percent) at which the host asks to be drained.
    pub psi_drain_at: f64,
    /// Map fill (percent) at which a map's observation turns warn (informational).
    pub map_warn_at: f64,
    /// Consecutive samples needed to move to a better state.
    pub rise: u32,
    /// Consecutive samples needed to move to a worse state.
    pub fall: u32,
    pub checks: Vec<CheckSpec>,
}

impl Default for HealthSettings {
    fn default() -> Self {
        Self {
            warn_at: 70.0,
            drain_at: 90.0,
            weight_floor: 10,
            psi_warn_at: 20.0,
            psi_drain_at: 60.0,
            map_warn_at: 90.0,
            rise: 2,
            fall: 3,
            checks: Vec::new(),
        }
    }
}

/// A warn/drain pair of percentages, `warn_at < drain_at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warn_at: f64,
    pub drain_at: f64,
}

/// Validated health settings. Build with [`HealthConfig::from_settings`].
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    headroom: Thresholds,
    pressure: Thresholds,
    weight_floor: u8,
    map_warn_at: f64,
    rise: u32,
    fall: u32,
    checks: Vec<LocalCheck>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self::from_settings(&HealthSettings::default()).expect("the defaults are valid")
    }
}

impl HealthConfig {
    /// Validates `settings`.
    ///
    /// # Errors
    ///
    /// A [`HealthError`] naming the field, its value and what would be accepted: a threshold
    /// outside 0..=100 (`health.warn_at = 150`), a warn threshold not below its drain
    /// threshold, rise/fall outside 1..=100, an unknown check type or a bad check target.
    pub fn from_settings(settings: &HealthSettings) -> Result<Self, HealthError> {
        let HealthSettings {
            warn_at,
            drain_at,
            weight_floor,
            psi_warn_at,
            psi_drain_at,
            map_warn_at,
            rise,
            fall,
            checks,
        } = settings;
        let percent = |field: &'static str, value: f64| {
            if (0.0..=100.0).contains(&value) {
                Ok(value)
            } else {
                Err(HealthError::Threshold { field, value })
            }
        };
        let pair = |wf: &'static str, w: f64, df: &'static str, d: f64| {
            let (w, d) = (percent(wf, w)?, percent(df, d)?);
            if w < d {
                Ok(Thresholds {
                    warn_at: w,
                    drain_at: d,
                })
            } else {
                Err(HealthError::ThresholdOrder {
                    warn_field: wf,
                    warn: w,
                    drain_field: df,
                    drain: d,
                })
            }
        };
        let range = |field: &'static str, value: u32, min: u32, max: u32| {
            if (min..=max).contains(&value) {
                Ok(value)
            } else {
                Err(HealthError::Range {
                    field,
                    value: value.into(),
                    min: min.into(),
                    max: max.into(),
                })
            }
        };
        if checks.len() > checks::MAX_CHECKS {
            return Err(HealthError::TooManyChecks {
                count: checks.len(),
            });
        }
        Ok(Self {
            headroom: pair("health.warn_at", *warn_at, "health.drain_at", *drain_at)?,
            pressure: pair(
                "health.psi_warn_at",
                *psi_warn_at,
                "health.psi_drain_at",
                *psi_drain_at,
            )?,
            weight_floor: range("health.weight_floor", *weight_floor, 0, 100)? as u8,
            map_warn_at: percent("health.map_warn_at", *map_warn_at)?,
            rise: range("health.rise", *rise, 1, 100)?,
            fall: range("health.fall", *fall, 1, 100)?,
            checks: checks
                .iter()
                .enumerate()
                .map(|(i, c)| LocalCheck::from_spec(i, c))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The local checks, for [`CheckRunner::spawn`] / [`CheckRunner::set_checks`].
    pub fn checks(&self) -> &[LocalCheck] {
        &self.checks
    }

    pub fn headroom(&self) -> Thresholds {
        self.headroom
    }

    pub fn pressure(&self) -> Thresholds {
        self.pressure
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
    pub services: Vec<crate::attack::ServiceReport>,
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

/// The computed (non-operator) levels, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Pass,
    Warn,
    Drain,
    Fail,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Warn => "warn",
            Self::Drain => "drain",
            Self::Fail => "fail",
        }
    }
}

/// What one sample says, before hysteresis.
#[derive(Clone, Debug, PartialEq)]
struct Assessment {
    level: Level,
    weight: u8,
    reason: String,
}

/// Consecutive samples pointing the same way from the held state.
#[derive(Clone, Debug)]
struct Streak {
    worse: bool,
    count: u32,
    /// The state all samples of the streak agree on: on the way down the mildest of them,
    /// on the way up the least improved.
    target: Assessment,
}

/// Turns [`Inputs`] into [`HealthReport`]s, one per tick, holding the hysteresis state.
///
/// Policy, in order:
/// - `Starting` until the first full evaluation: a second system sample (CPU utilisation is
///   a difference of two) and a finished round of local checks. The first full evaluation
///   is taken as is: `starting` is not a health level to recover from.
/// - Each sample is assessed: utilisation of CPU and memory against `warn_at`/`drain_at`,
///   PSI some avg10 of cpu, memory and io against `psi_warn_at`/`psi_drain_at`, the worst
///   one deciding (below warn: pass at 100; from warn to drain: warn, weight falling
///   linearly from 100 to `weight_floor`; from drain: drain); a failed local check or an
///   interface without the XDP program is fail. Inputs that cannot be read are shown as
///   warn observations but do not move the state: a probe that cannot read `/proc` must
///   not take a healthy host out of service.
/// - Hysteresis: moving to a worse level takes `fall` consecutive worse samples, to a
///   better one `rise`. Within warn, the weight follows each sample.
/// - Operator overrides apply at once: maint always; drain unless the host is failing
///   (a failing host is already out, and `fail` tells the load balancer more).
/// - The XDP drop rate never moves the state (the guard absorbing a flood is not the host
///   being overloaded); when positive, the reason says how many packets/s are dropped.
#[derive(Clone, Debug)]
pub struct Evaluator {
    config: HealthConfig,
    prev_cpu: Option<CpuTimes>,
    samples: u64,
    held: Option<Assessment>,
    streak: Option<Streak>,
}

impl Evaluator {
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            prev_cpu: None,
            samples: 0,
            held: None,
            streak: None,
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Applies a reloaded configuration. The held state stays (no return to `starting`);
    /// a streak in progress restarts under the new thresholds.
    pub fn set_config(&mut self, config: HealthConfig) {
        self.config = config;
        self.streak = None;
    }

    /// Evaluates one tick.
    pub fn evaluate(&mut self, inputs: &Inputs) -> HealthReport {
        let cpu_percent = match (&inputs.system.cpu, &self.prev_cpu) {
            (Err(e), _) => Err(e.clone()),
            (Ok(_), None) => Err("needs a second sample".to_string()),
            (Ok(now), Some(prev)) => now
                .utilisation_since(prev)
                .ok_or_else(|| "no CPU time elapsed between samples".to_string()),
        };
        if let Ok(now) = &inputs.system.cpu {
            self.prev_cpu = Some(*now);
        }
        self.samples = self.samples.saturating_add(1);
        let (assessment, observations, headroom) = self.assess(inputs, cpu_percent);
        let full = self.samples >= 2 && inputs.checks.is_some();
        if full {
            self.step(assessment.clone());
        }
        let operator = inputs
            .operator
            .clone()
            .filter(|o| o.is_active(inputs.now_unix));
        let failing = self.held.as_ref().is_some_and(|h| h.level == Level::Fail);
        let (status, mut reason) = match &operator {
            Some(o) if o.mode == OverrideMode::Maint => (Status::Maint, o.describe()),
            Some(o) if o.mode == OverrideMode::Drain && !failing => (Status::Drain, o.describe()),
            _ => match &self.held {
                None if inputs.checks.is_none() => (
                    Status::Starting,
                    "starting: waiting for the first round of local checks".to_string(),
                ),
                None => (
                    Status::Starting,
                    "starting: waiting for a second sample".to_string(),
                ),
                Some(held) => (status_of(held), self.held_reason(held, &assessment)),
            },
        };
        if inputs.drop_rate_pps > 0.0 {
            reason.push_str(&format!(
                "; guard is dropping {} packets/s",
                format_rate(inputs.drop_rate_pps)
            ));
        }
        for svc in inputs.services.iter().filter(|s| s.under_attack) {
            reason.push_str(&format!(
                "; service {} under attack ({} packets/s, ceiling {}): dropping {} newcomer packets/s",
                svc.name,
                format_rate(svc.pps),
                format_rate(svc.ceiling_pps),
                format_rate(svc.newcomer_dropped_pps)
            ));
        }
        HealthReport {
            status,
            reason,
            time: inputs.now_unix,
            drop_rate_pps: inputs.drop_rate_pps.max(0.0),
            headroom,
            operator,
            observations,
        }
    }

    fn held_reason(&self, held: &Assessment, now: &Assessment) -> String {
        match &self.streak {
            Some(s) => {
                let needed = if s.worse {
                    self.config.fall
                } else {
                    self.config.rise
                };
                format!(
                    "{} ({} after {} more sample(s): {})",
                    held.reason,
                    s.target.level.name(),
                    needed.saturating_sub(s.count),
                    now.reason
                )
            }
            None => held.reason.clone(),
        }
    }

    /// Advances the hysteresis with one full sample.
    fn step(&mut self, now: Assessment) {
        let Some(held) = &mut self.held else {
            self.held = Some(now);
            self.streak = None;
            return;
        };
        if now.level == held.level {
            *held = now;
            self.streak = None;
            return;
        }
        let worse = now.level > held.level;
        let latest = now.level;
        let streak = match self.streak.take() {
            Some(mut s) if s.worse == worse => {
                s.count += 1;
                let agrees = if worse {
                    now.level <= s.target.level
                } else {
                    now.level >= s.target.level
                };
                if agrees {
                    s.target = now;
                }
                s
            }
            _ => Streak {
                worse,
                count: 1,
                target: now,
            },
        };
        let needed = if worse {
            self.config.fall
        } else {
            self.config.rise
        };
        if streak.count >= needed {
            *held = streak.target;
            // Moving part of the way down while the latest sample is worse still: the weight
            // of an older, milder sample would overstate the headroom, so take the floor.
            if held.level == Level::Warn && latest > Level::Warn {
                held.weight = self.config.weight_floor;
            }
        } else {
            self.streak = Some(streak);
        }
    }

    fn assess(
        &self,
        inputs: &Inputs,
        cpu: Result<f64, String>,
    ) -> (Assessment, Vec<Observation>, Headroom) {
        let cfg = &self.config;
        let mut obs = Vec::new();
        let mut found: Vec<Assessment> = Vec::new();
        let mut healthy_notes = Vec::new();
        let mut headroom = Headroom::default();

        // Headroom: CPU and memory against the 70% rule.
        let memory_percent = inputs
            .system
            .memory
            .as_ref()
            .ok()
            .and_then(MemInfo::used_percent);
        headroom.cpu_percent = cpu.as_ref().ok().copied();
        headroom.memory_percent = memory_percent;
        let (cpu_percent, cpu_unavailable) = match cpu {
            Ok(v) => (Some(v), String::new()),
            Err(e) => (None, e),
        };
        let mem_unavailable = match &inputs.system.memory {
            Err(e) => e.clone(),
            Ok(_) => "MemTotal is zero".to_string(),
        };
        for (component, value, unavailable) in [
            ("cpu", cpu_percent, cpu_unavailable),
            ("memory", memory_percent, mem_unavailable),
        ] {
            let label = component.to_string();
            obs.push(self.grade(
                &label,
                component,
                "utilization",
                None,
                value,
                cfg.headroom,
                unavailable,
                &mut found,
                &mut healthy_notes,
            ));
        }
        // Pressure stall information: its own thresholds.
        for (resource, value) in &inputs.system.pressure {
            let name = resource.name();
            match value {
                Ok(Some(v)) => {
                    headroom.pressure_percent.insert(name.to_string(), *v);
                    let label = format!("{name} pressure");
                    obs.push(self.grade(
                        &label,
                        name,
                        "pressure",
                        None,
                        Some(*v),
                        cfg.pressure,
                        String::new(),
                        &mut found,
                        &mut Vec::new(),
                    ));
                }
                Ok(None) => obs.push(Observation {
                    component: name.to_string(),
                    measurement: "pressure".to_string(),
                    component_id: None,
                    observed: None,
                    unit: Some("percent".to_string()),
                    threshold: Some(threshold_text(cfg.pressure)),
                    status: CheckStatus::Pass,
                    output: Some("PSI is not available on this kernel".to_string()),
                }),
                Err(e) => obs.push(Observation {
                    component: name.to_string(),
                    measurement: "pressure".to_string(),
                    component_id: None,
                    observed: None,
                    unit: Some("percent".to_string()),
                    threshold: Some(threshold_text(cfg.pressure)),
                    status: CheckStatus::Warn,
                    output: Some(e.clone()),
                }),
            }
        }

        // The data plane: attached everywhere, else fail.
        for iface in &inputs.interfaces {
            if !iface.attached {
                found.push(Assessment {
                    level: Level::Fail,
                    weight: 0,
                    reason: format!("XDP program not attached on {}", iface.name),
                });
            }
            obs.push(Observation {
                component: "xdp".to_string(),
                measurement: "attached".to_string(),
                component_id: Some(iface.name.clone()),
                observed: Some(Observed::Bool(iface.attached)),
                unit: None,
                threshold: Some("attached".to_string()),
                status: if iface.attached {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                output: None,
            });
        }
        obs.push(Observation {
            component: "xdp".to_string(),
            measurement: "dropRate".to_string(),
            component_id: None,
            observed: Some(Observed::Number(round1(inputs.drop_rate_pps.max(0.0)))),
            unit: Some("packets/s".to_string()),
            threshold: None,
            status: CheckStatus::Pass,
            output: None,
        });
        // A service under attack is informational too: the guard is shedding it.
        for svc in &inputs.services {
            obs.push(Observation {
                component: "service".to_string(),
                measurement: "packetRate".to_string(),
                component_id: Some(svc.name.clone()),
                observed: Some(Observed::Number(round1(svc.pps))),
                unit: Some("packets/s".to_string()),
                threshold: Some(format!(
                    "ceiling {}{}",
                    format_rate(svc.ceiling_pps),
                    if svc.ceiling_learned {
                        " (learned)"
                    } else {
                        ""
                    }
                )),
                status: if svc.under_attack {
                    CheckStatus::Warn
                } else {
                    CheckStatus::Pass
                },
                output: svc.under_attack.then(|| {
                    format!(
                        "under attack: known sources first, newcomers get {} packets/s, {} dropped",
                        format_rate(svc.newcomer_budget_pps),
                        format_rate(svc.newcomer_dropped_pps)
                    )
                }),
            });
        }
        // Map fill is informational: a full ban table means the guard protects less, not that
        // the host can serve less, so it does not move the load balancer's traffic.
        for map in inputs.maps.iter().filter(|m| m.capacity > 0) {
            let percent = map.entries as f64 * 100.0 / map.capacity as f64;
            obs.push(Observation {
                component: "map".to_string(),
                measurement: "utilization".to_string(),
                component_id: Some(map.name.clone()),
                observed: Some(Observed::Number(round1(percent))),
                unit: Some("percent".to_string()),
                threshold: Some(format!("warn {}%", cfg.map_warn_at)),
                status: if percent >= cfg.map_warn_at {
                    CheckStatus::Warn
                } else {
                    CheckStatus::Pass
                },
                output: Some(format!("{} of {} entries", map.entries, map.capacity)),
            });
        }

        // Local checks: a dead application is fail.
        for check in inputs.checks.iter().flatten() {
            if !check.ok {
                found.push(Assessment {
                    level: Level::Fail,
                    weight: 0,
                    reason: format!(
                        "{} check {} failed: {}",
                        check.kind.name(),
                        check.target,
                        check.detail
                    ),
                });
            }
            obs.push(Observation {
                component: check.kind.name().to_string(),
                measurement: "responseTime".to_string(),
                component_id: Some(check.target.clone()),
                observed: Some(Observed::Number(round1(
                    check.elapsed.as_secs_f64() * 1000.0,
                ))),
                unit: Some("ms".to_string()),
                threshold: Some(
                    match check.kind {
                        CheckKind::Tcp => "connects within the timeout",
                        CheckKind::Http => "2xx or 3xx within the timeout",
                    }
                    .to_string(),
                ),
                status: if check.ok {
                    CheckStatus::Pass
                } else {
                    CheckStatus::Fail
                },
                output: Some(check.detail.clone()),
            });
        }

        if let Some(o) = inputs
            .operator
            .as_ref()
            .filter(|o| o.is_active(inputs.now_unix))
        {
            obs.push(Observation {
                component: "operator".to_string(),
                measurement: "override".to_string(),
                component_id: None,
                observed: Some(Observed::Text(o.mode.name().to_string())),
                unit: None,
                threshold: None,
                status: match o.mode {
                    OverrideMode::Ready => CheckStatus::Pass,
                    OverrideMode::Drain => CheckStatus::Warn,
                    OverrideMode::Maint => CheckStatus::Fail,
                },
                output: Some(o.describe()),
            });
        }

        let level = found.iter().map(|a| a.level).max().unwrap_or(Level::Pass);
        let assessment = if level == Level::Pass {
            Assessment {
                level,
                weight: 100,
                reason: if healthy_notes.is_empty() {
                    "healthy".to_string()
                } else {
                    format!("healthy: {}", healthy_notes.join(", "))
                },
            }
        } else {
            let worst: Vec<&Assessment> = found.iter().filter(|a| a.level == level).collect();
            Assessment {
                level,
                weight: if level == Level::Warn {
                    worst.iter().map(|a| a.weight).min().unwrap_or(100)
                } else {
                    0
                },
                reason: worst
                    .iter()
                    .map(|a| a.reason.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        };
        (assessment, obs, headroom)
    }

    /// Grades one utilisation-like percentage against `t`, recording what it found.
    #[allow(clippy::too_many_arguments)]
    fn grade(
        &self,
        label: &str,
        component: &str,
        measurement: &str,
        component_id: Option<String>,
        value: Option<f64>,
        t: Thresholds,
        unavailable: String,
        found: &mut Vec<Assessment>,
        healthy_notes: &mut Vec<String>,
    ) -> Observation {
        let mut o = Observation {
            component: component.to_string(),
            measurement: measurement.to_string(),
            component_id,
            observed: None,
            unit: Some("percent".to_string()),
            threshold: Some(threshold_text(t)),
            status: CheckStatus::Warn,
            output: None,
        };
        let Some(v) = value else {
            o.output = Some(format!("unavailable: {unavailable}"));
            return o;
        };
        o.observed = Some(Observed::Number(round1(v)));
        let (level, weight) = weight_for(v, t, self.config.weight_floor);
        o.status = match level {
            Level::Pass => CheckStatus::Pass,
            Level::Warn => CheckStatus::Warn,
            _ => CheckStatus::Fail,
        };
        match level {
            Level::Pass => healthy_notes.push(format!("{label} {v:.0}%")),
            Level::Warn => found.push(Assessment {
                level,
                weight,
                reason: format!("{label} {v:.0}% (warn at {}%)", t.warn_at),
            }),
            _ => found.push(Assessment {
                level,
                weight,
                reason: format!("{label} {v:.0}% (drain at {}%)", t.drain_at),
            }),
        }
        o
    }
}

/// The level and weight of a utilisation `v` (percent): below warn, pass at 100; from warn to
/// drain, warn with the weight falling linearly from 100 to `floor`; from drain, drain.
fn weight_for(v: f64, t: Thresholds, floor: u8) -> (Level, u8) {
    if v < t.warn_at {
        (Level::Pass, 100)
    } else if v < t.drain_at {
        let span = t.drain_at - t.warn_at;
        let fraction = ((v - t.warn_at) / span).clamp(0.0, 1.0);
        let w = 100.0 - fraction * (100.0 - f64::from(floor));
        (Level::Warn, w.round().clamp(f64::from(floor), 100.0) as u8)
    } else {
        (Level::Drain, 0)
    }
}

fn status_of(a: &Assessment) -> Status {
    match a.level {
        Level::Pass => Status::Pass,
        // A warn weight of 0 would read as drain to HAProxy; the floor may be 0, so keep 1.
        Level::Warn => Status::Warn {
            weight: a.weight.max(1),
        },
        Level::Drain => Status::Drain,
        Level::Fail => Status::Fail,
    }
}

fn threshold_text(t: Thresholds) -> String {
    format!("warn {}%, drain {}%", t.warn_at, t.drain_at)
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn format_rate(pps: f64) -> String {
    if pps >= 10.0 {
        format!("{pps:.0}")
    } else {
        format!("{pps:.1}")
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
