//! The health settings (`[health]`): thresholds, hysteresis, weights and local checks, and
//! their validation into a [`HealthConfig`].
use super::*;

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
    pub(super) headroom: Thresholds,
    pub(super) pressure: Thresholds,
    pub(super) weight_floor: u8,
    pub(super) map_warn_at: f64,
    pub(super) rise: u32,
    pub(super) fall: u32,
    pub(super) checks: Vec<LocalCheck>,
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
