//! The evaluator: one [`HealthReport`] per tick from one [`Inputs`], with hysteresis (a state
//! gets worse after `fall` samples and better after `rise`), pure over its inputs. Past 500
//! lines on purpose: `Evaluator::evaluate` is the policy in order, best read in one piece.
use super::*;

/// The computed (non-operator) levels, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Level {
    Pass,
    Warn,
    Drain,
    Fail,
}

impl Level {
    pub(super) fn name(self) -> &'static str {
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
pub(super) struct Assessment {
    level: Level,
    weight: u8,
    reason: String,
}

/// Consecutive samples pointing the same way from the held state.
#[derive(Clone, Debug)]
pub(super) struct Streak {
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
/// - A watchdog's drain (it is restarting the service) applies at once, over everything but
///   maint: the reason says what the watchdog is doing.
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
            _ if !inputs.watchdog.is_empty() => (Status::Drain, inputs.watchdog.join("; ")),
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
        // A lost fleet is a fact, not a noisy sample: warn at once (at full weight: the local
        // protection is intact), past the hysteresis, and never worse than warn.
        let status = match (&inputs.fleet, status) {
            (Some(problem), Status::Pass) => {
                reason = problem.clone();
                Status::Warn { weight: 100 }
            }
            (Some(problem), s) if s != Status::Starting => {
                reason.push_str(&format!("; {problem}"));
                s
            }
            (_, s) => s,
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

    pub(super) fn held_reason(&self, held: &Assessment, now: &Assessment) -> String {
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
    pub(super) fn step(&mut self, now: Assessment) {
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

    pub(super) fn assess(
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

        // The state store: the host serves as well as before, so warn (full weight), to be
        // seen, never fail. Shown only when something is wrong.
        if let Some(problem) = &inputs.store {
            found.push(Assessment {
                level: Level::Warn,
                weight: 100,
                reason: problem.clone(),
            });
            obs.push(Observation {
                component: "store".to_string(),
                measurement: "saved".to_string(),
                component_id: None,
                observed: Some(Observed::Bool(false)),
                unit: None,
                threshold: Some("saved".to_string()),
                status: CheckStatus::Warn,
                output: Some(problem.clone()),
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

        if let Some(problem) = &inputs.fleet {
            obs.push(Observation {
                component: "fleet".to_string(),
                measurement: "connected".to_string(),
                component_id: None,
                observed: Some(Observed::Bool(false)),
                unit: None,
                threshold: Some("connected".to_string()),
                status: CheckStatus::Warn,
                output: Some(problem.clone()),
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
    pub(super) fn grade(
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
pub(super) fn weight_for(v: f64, t: Thresholds, floor: u8) -> (Level, u8) {
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

pub(super) fn status_of(a: &Assessment) -> Status {
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

pub(super) fn threshold_text(t: Thresholds) -> String {
    format!("warn {}%, drain {}%", t.warn_at, t.drain_at)
}

pub(super) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub(super) fn format_rate(pps: f64) -> String {
    if pps >= 10.0 {
        format!("{pps:.0}")
    } else {
        format!("{pps:.1}")
    }
}
