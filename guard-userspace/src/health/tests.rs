//! State-machine tests: a fake [`SystemSource`] with chosen numbers, no /proc, no kernel.
use super::*;

/// A host whose CPU runs at `cpu` percent between samples, with `memory` percent in use.
struct FakeHost {
    times: CpuTimes,
    cpu: f64,
    memory: f64,
    psi: [Option<f64>; 3],
}

impl SystemSource for FakeHost {
    fn cpu_times(&self) -> Result<CpuTimes, SourceError> {
        Ok(self.times)
    }

    fn meminfo(&self) -> Result<MemInfo, SourceError> {
        Ok(MemInfo {
            total_kib: 1000,
            available_kib: 1000 - (self.memory * 10.0) as u64,
        })
    }

    fn pressure(&self, resource: Resource) -> Result<Option<f64>, SourceError> {
        Ok(self.psi[resource as usize])
    }
}

struct Sim {
    host: FakeHost,
    eval: Evaluator,
    inputs: Inputs,
}

impl Sim {
    fn new(settings: HealthSettings) -> Self {
        let config = HealthConfig::from_settings(&settings).expect("valid settings");
        Self {
            host: FakeHost {
                times: CpuTimes::default(),
                cpu: 10.0,
                memory: 30.0,
                psi: [None; 3],
            },
            eval: Evaluator::new(config),
            inputs: Inputs {
                now_unix: 1_700_000_000,
                checks: Some(Vec::new()),
                ..Inputs::default()
            },
        }
    }

    fn defaults() -> Self {
        Self::new(HealthSettings::default())
    }

    /// One second passes at the host's current load; evaluates.
    fn tick(&mut self) -> HealthReport {
        self.host.times.busy += (self.host.cpu * 10.0) as u64;
        self.host.times.total += 1000;
        self.inputs.now_unix += 1;
        self.inputs.system = SystemSample::read(&self.host);
        self.eval.evaluate(&self.inputs)
    }

    fn ticks(&mut self, n: usize) -> Vec<Status> {
        (0..n).map(|_| self.tick().status).collect()
    }

    /// Past `starting`, settled at the current load.
    fn settled(mut self) -> Self {
        self.ticks(5);
        self
    }
}

fn failed_check() -> CheckResult {
    CheckResult {
        kind: CheckKind::Http,
        target: "http://127.0.0.1:8080/health".into(),
        ok: false,
        elapsed: Duration::from_millis(3),
        detail: "HTTP 503 (expected 2xx or 3xx)".into(),
    }
}

#[test]
fn defaults_follow_the_70_percent_rule() {
    let s = HealthSettings::default();
    assert_eq!((s.warn_at, s.drain_at, s.rise, s.fall), (70.0, 90.0, 2, 3));
    assert_eq!((s.psi_warn_at, s.psi_drain_at), (20.0, 60.0));
    HealthConfig::from_settings(&s).expect("defaults are valid");
}

#[test]
fn threshold_of_150_percent_is_rejected_naming_field_value_and_range() {
    let s = HealthSettings {
        drain_at: 150.0,
        ..HealthSettings::default()
    };
    let err = HealthConfig::from_settings(&s).expect_err("150% is not a percentage");
    assert_eq!(
        err.to_string(),
        "health.drain_at = 150: expected a percentage from 0 to 100"
    );
    let s = HealthSettings {
        psi_warn_at: f64::NAN,
        ..HealthSettings::default()
    };
    assert!(matches!(
        HealthConfig::from_settings(&s),
        Err(HealthError::Threshold {
            field: "health.psi_warn_at",
            ..
        })
    ));
}

#[test]
fn warn_threshold_must_be_below_drain_threshold() {
    let s = HealthSettings {
        warn_at: 90.0,
        drain_at: 80.0,
        ..HealthSettings::default()
    };
    let err = HealthConfig::from_settings(&s).expect_err("inverted");
    assert_eq!(
        err.to_string(),
        "health.warn_at = 90 must be below health.drain_at = 80"
    );
}

#[test]
fn rise_fall_and_weight_floor_ranges_are_enforced() {
    for (s, field) in [
        (
            HealthSettings {
                rise: 0,
                ..HealthSettings::default()
            },
            "health.rise",
        ),
        (
            HealthSettings {
                fall: 101,
                ..HealthSettings::default()
            },
            "health.fall",
        ),
        (
            HealthSettings {
                weight_floor: 101,
                ..HealthSettings::default()
            },
            "health.weight_floor",
        ),
    ] {
        let err = HealthConfig::from_settings(&s).expect_err("out of range");
        assert!(err.to_string().starts_with(field), "{err}");
    }
}

#[test]
fn settings_parse_from_toml_and_reject_unknown_fields() {
    let s: HealthSettings = toml::from_str(
        "warn_at = 60\n[[checks]]\ntype = \"tcp\"\ntarget = \"127.0.0.1:5432\"\ntimeout_ms = 500\n",
    )
    .expect("parses");
    let cfg = HealthConfig::from_settings(&s).expect("valid");
    assert_eq!(cfg.headroom().warn_at, 60.0);
    assert_eq!(cfg.checks()[0].timeout(), Duration::from_millis(500));
    assert!(toml::from_str::<HealthSettings>("warn_pct = 60\n").is_err());
}

#[test]
fn starting_until_a_second_sample_then_first_evaluation_applies_at_once() {
    let mut sim = Sim::defaults();
    let first = sim.tick();
    assert_eq!(first.status, Status::Starting);
    assert!(first.reason.starts_with("starting"), "{}", first.reason);
    assert_eq!(sim.tick().status, Status::Pass);
}

#[test]
fn starting_until_the_first_round_of_local_checks() {
    let mut sim = Sim::defaults();
    sim.inputs.checks = None;
    assert_eq!(sim.ticks(3), [Status::Starting; 3]);
    assert!(sim.tick().reason.contains("local checks"));
    sim.inputs.checks = Some(Vec::new());
    assert_eq!(sim.tick().status, Status::Pass);
}

#[test]
fn cpu_below_warn_threshold_is_pass_at_full_weight() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 69.0;
    let r = sim.tick();
    assert_eq!(r.status, Status::Pass);
    assert_eq!(r.weight(), 100);
    assert!(
        r.reason.starts_with("healthy: cpu 69%, memory 30%"),
        "{}",
        r.reason
    );
}

#[test]
fn cpu_above_warn_threshold_lowers_weight_after_fall_samples() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 80.0;
    let statuses = sim.ticks(3);
    // fall = 3: two samples keep pass, the third agrees and moves.
    assert_eq!(statuses[..2], [Status::Pass, Status::Pass]);
    // Halfway from 70 to 90: halfway from 100 to the floor of 10.
    assert_eq!(statuses[2], Status::Warn { weight: 55 });
}

#[test]
fn pending_change_is_explained_in_the_reason() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 80.0;
    let r = sim.tick();
    assert_eq!(r.status, Status::Pass);
    assert!(
        r.reason
            .contains("(warn after 2 more sample(s): cpu 80% (warn at 70%))"),
        "{}",
        r.reason
    );
}

#[test]
fn weight_falls_linearly_and_follows_each_sample_within_warn() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 72.0;
    sim.ticks(3);
    assert_eq!(sim.tick().status, Status::Warn { weight: 91 });
    sim.host.cpu = 88.0;
    assert_eq!(sim.tick().status, Status::Warn { weight: 19 });
    sim.host.cpu = 70.0;
    assert_eq!(sim.tick().status, Status::Warn { weight: 100 });
}

#[test]
fn utilisation_at_drain_threshold_drains_after_fall_samples() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 90.0;
    assert_eq!(
        sim.ticks(3),
        [Status::Pass, Status::Pass, Status::Drain],
        "straight from pass to drain when every sample agrees"
    );
    assert!(sim.tick().reason.contains("cpu 90% (drain at 90%)"));
}

#[test]
fn worst_of_cpu_and_memory_decides() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 75.0;
    sim.host.memory = 85.0;
    sim.ticks(2);
    let r = sim.tick();
    // memory 85%: 3/4 of the way to drain → 100 - 0.75 * 90 = 32.5 → 33 (rounded).
    assert_eq!(r.status, Status::Warn { weight: 33 });
    assert!(
        r.reason.contains("cpu 75%") && r.reason.contains("memory 85%"),
        "{}",
        r.reason
    );
}

#[test]
fn pressure_is_judged_against_its_own_thresholds() {
    let mut sim = Sim::defaults().settled();
    sim.host.psi = [None, None, Some(40.0)];
    sim.ticks(2);
    let r = sim.tick();
    // io 40%: halfway from 20 to 60.
    assert_eq!(r.status, Status::Warn { weight: 55 });
    assert!(
        r.reason.contains("io pressure 40% (warn at 20%)"),
        "{}",
        r.reason
    );
    assert_eq!(r.headroom.pressure_percent.get("io"), Some(&40.0));
}

#[test]
fn one_noisy_sample_does_not_flap() {
    let mut sim = Sim::defaults().settled();
    for _ in 0..3 {
        sim.host.cpu = 95.0;
        sim.tick();
        sim.host.cpu = 95.0;
        sim.tick();
        sim.host.cpu = 10.0;
        assert_eq!(sim.tick().status, Status::Pass);
    }
}

#[test]
fn worsening_streak_moves_only_as_far_as_every_sample_agrees() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 80.0;
    sim.tick();
    sim.host.cpu = 95.0;
    sim.tick();
    // warn, drain, drain: all three agree on "at least warn", not on drain.
    assert_eq!(sim.tick().status, Status::Warn { weight: 10 });
    // Three more drain samples take it to drain.
    assert_eq!(
        sim.ticks(3),
        [
            Status::Warn { weight: 10 },
            Status::Warn { weight: 10 },
            Status::Drain
        ]
    );
}

#[test]
fn recovery_takes_rise_samples() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 95.0;
    sim.ticks(3);
    sim.host.cpu = 10.0;
    assert_eq!(sim.ticks(2), [Status::Drain, Status::Pass]);
}

#[test]
fn failed_local_check_fails_after_fall_samples_and_names_the_check() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.checks = Some(vec![failed_check()]);
    let reports: Vec<_> = (0..3).map(|_| sim.tick()).collect();
    assert_eq!(reports[1].status, Status::Pass);
    assert_eq!(reports[2].status, Status::Fail);
    assert_eq!(
        reports[2].reason,
        "http check http://127.0.0.1:8080/health failed: HTTP 503 (expected 2xx or 3xx)"
    );
    let obs = reports[2]
        .observations
        .iter()
        .find(|o| o.component == "http")
        .expect("check observed");
    assert_eq!(obs.status, CheckStatus::Fail);
    assert_eq!(obs.observed, Some(Observed::Number(3.0)));
}

#[test]
fn detached_interface_fails_after_fall_samples() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.interfaces = vec![
        InterfaceInput {
            name: "eth0".into(),
            attached: true,
        },
        InterfaceInput {
            name: "eth1".into(),
            attached: false,
        },
    ];
    let r: Vec<_> = (0..3).map(|_| sim.tick()).collect();
    assert_eq!(r[2].status, Status::Fail);
    assert_eq!(r[2].reason, "XDP program not attached on eth1");
}

#[test]
fn operator_drain_and_maint_apply_at_once_and_expire_on_their_own() {
    let mut sim = Sim::defaults().settled();
    let now = sim.inputs.now_unix;
    sim.inputs.operator = Some(Override::new(
        OverrideMode::Drain,
        Some("deploy".into()),
        now,
        Some(Duration::from_secs(3)),
    ));
    let r = sim.tick();
    assert_eq!(r.status, Status::Drain);
    assert!(
        r.reason.starts_with("operator: deploy (until "),
        "{}",
        r.reason
    );
    assert_eq!(
        r.operator.as_ref().map(|o| o.mode),
        Some(OverrideMode::Drain)
    );
    sim.tick();
    // The third second reaches the expiry: the computed state is back with no hysteresis.
    let r = sim.tick();
    assert_eq!(r.status, Status::Pass);
    assert_eq!(r.operator, None);
    sim.inputs.operator = Some(Override::new(OverrideMode::Maint, None, now, None));
    let r = sim.tick();
    assert_eq!(
        (r.status, r.reason.as_str()),
        (Status::Maint, "operator: maint")
    );
}

#[test]
fn operator_drain_does_not_hide_a_failure_but_maint_does() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.checks = Some(vec![failed_check()]);
    sim.ticks(3);
    let now = sim.inputs.now_unix;
    sim.inputs.operator = Some(Override::new(OverrideMode::Drain, None, now, None));
    assert_eq!(sim.tick().status, Status::Fail);
    sim.inputs.operator = Some(Override::new(OverrideMode::Maint, None, now, None));
    assert_eq!(sim.tick().status, Status::Maint);
}

#[test]
fn a_watchdog_drain_applies_at_once_over_a_failing_check_but_not_over_maint() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.watchdog = vec!["watchdog: app memory 2.3GiB > 2GiB".into()];
    let r = sim.tick();
    assert_eq!(
        (r.status, r.reason.as_str()),
        (Status::Drain, "watchdog: app memory 2.3GiB > 2GiB")
    );
    // The service's check fails while it restarts: the host says drain, with the watchdog's
    // reason, not fail.
    sim.inputs.checks = Some(vec![failed_check()]);
    let r: Vec<_> = (0..4).map(|_| sim.tick()).collect();
    assert_eq!(r[3].status, Status::Drain, "{}", r[3].reason);
    let now = sim.inputs.now_unix;
    sim.inputs.operator = Some(Override::new(OverrideMode::Maint, None, now, None));
    assert_eq!(sim.tick().status, Status::Maint);
    sim.inputs.operator = None;
    sim.inputs.watchdog.clear();
    assert_eq!(sim.tick().status, Status::Fail);
}

#[test]
fn operator_ready_leaves_the_computed_state() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 95.0;
    sim.ticks(3);
    let now = sim.inputs.now_unix;
    sim.inputs.operator = Some(Override::new(OverrideMode::Ready, None, now, None));
    assert_eq!(sim.tick().status, Status::Drain);
}

#[test]
fn under_attack_state_follows_headroom_and_reason_names_the_drop_rate() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.drop_rate_pps = 1_250_000.4;
    let r = sim.tick();
    assert_eq!(r.status, Status::Pass);
    assert!(
        r.reason.ends_with("; guard is dropping 1250000 packets/s"),
        "{}",
        r.reason
    );
    sim.host.cpu = 80.0;
    sim.ticks(2);
    let r = sim.tick();
    assert_eq!(r.status, Status::Warn { weight: 55 });
    assert!(r.reason.contains("guard is dropping"), "{}", r.reason);
}

#[test]
fn unreadable_inputs_are_shown_but_do_not_move_the_state() {
    let mut sim = Sim::defaults().settled();
    sim.inputs.system = SystemSample::default();
    let r = sim.eval.evaluate(&sim.inputs);
    assert_eq!(r.status, Status::Pass);
    let cpu = r
        .observations
        .iter()
        .find(|o| o.component == "cpu" && o.measurement == "utilization")
        .expect("cpu observed");
    assert_eq!(
        (cpu.status, cpu.observed.clone()),
        (CheckStatus::Warn, None)
    );
    assert_eq!(cpu.output.as_deref(), Some("unavailable: not sampled"));
}

#[test]
fn every_input_is_reported_with_value_and_threshold() {
    let mut sim = Sim::defaults().settled();
    sim.host.psi = [Some(1.0), None, Some(2.0)];
    sim.inputs.maps = vec![MapFill {
        name: "bans".into(),
        entries: 950,
        capacity: 1000,
    }];
    let r = sim.tick();
    let find = |c: &str, m: &str| {
        r.observations
            .iter()
            .find(|o| o.component == c && o.measurement == m)
            .unwrap_or_else(|| panic!("{c}:{m} missing"))
    };
    let cpu = find("cpu", "utilization");
    assert_eq!(cpu.observed, Some(Observed::Number(10.0)));
    assert_eq!(cpu.threshold.as_deref(), Some("warn 70%, drain 90%"));
    assert_eq!(
        find("memory", "utilization").observed,
        Some(Observed::Number(30.0))
    );
    assert_eq!(
        find("cpu", "pressure").threshold.as_deref(),
        Some("warn 20%, drain 60%")
    );
    assert_eq!(find("memory", "pressure").observed, None);
    let map = find("map", "utilization");
    // Map fill warns on its own but does not move the host.
    assert_eq!((map.status, r.status), (CheckStatus::Warn, Status::Pass));
    find("xdp", "dropRate");
}

#[test]
fn report_json_has_status_word_and_weight_and_round_trips() {
    let mut sim = Sim::defaults().settled();
    sim.host.cpu = 80.0;
    sim.ticks(2);
    let r = sim.tick();
    let json = serde_json::to_value(&r).expect("serialises");
    assert_eq!(json["status"], "warn");
    assert_eq!(json["weight"], 55);
    assert!(json["checks"].as_array().is_some_and(|c| !c.is_empty()));
    let back: HealthReport = serde_json::from_value(json).expect("deserialises");
    assert_eq!(back, r);
}

#[test]
fn override_round_trips_through_json_for_persistence() {
    let o = Override::new(
        OverrideMode::Drain,
        Some("deploy".into()),
        100,
        Some(Duration::from_secs(600)),
    );
    let text = serde_json::to_string(&o).expect("serialises");
    assert_eq!(
        text,
        r#"{"mode":"drain","reason":"deploy","since":100,"expires":700}"#
    );
    assert_eq!(serde_json::from_str::<Override>(&text).expect("parses"), o);
    assert!(o.is_active(699) && !o.is_active(700));
}

#[test]
fn reload_keeps_the_held_state() {
    let mut sim = Sim::defaults().settled();
    let cfg = HealthConfig::from_settings(&HealthSettings {
        warn_at: 5.0,
        ..HealthSettings::default()
    })
    .expect("valid");
    sim.eval.set_config(cfg);
    // A lowered threshold now applies, through fall, not by going back to starting: memory
    // at 30% is 25/85 of the way from 5% to 90%, so the weight is 100 - 25/85 * 90 = 74.
    assert_eq!(
        sim.ticks(3),
        [Status::Pass, Status::Pass, Status::Warn { weight: 74 }]
    );
}

#[test]
fn drop_rate_is_the_difference_over_elapsed_time() {
    let mut c = Counters::default();
    c.packets[reason::DENIED] = 10;
    c.packets[reason::RATE_LIMITED] = 5;
    c.packets[reason::PASSED] = 1000;
    c.packets[reason::WOULD_DROP] = 7;
    assert_eq!(dropped_packets(&c), 15);
    let mut rate = DropRate::default();
    let t0 = Instant::now();
    assert_eq!(rate.update(100, t0), 0.0);
    assert_eq!(rate.update(600, t0 + Duration::from_millis(500)), 1000.0);
    assert_eq!(
        rate.update(10, t0 + Duration::from_secs(1)),
        0.0,
        "counter reset"
    );
}

#[test]
fn a_lost_fleet_warns_at_once_at_full_weight_and_never_worse() {
    let mut eval = Evaluator::new(HealthConfig::default());
    let mut inputs = Inputs {
        now_unix: 1_700_000_000,
        checks: Some(Vec::new()),
        ..Inputs::default()
    };
    for _ in 0..2 {
        eval.evaluate(&inputs);
    }
    assert_eq!(eval.evaluate(&inputs).status, Status::Pass);
    inputs.fleet = Some("fleet servers unreachable (refused)".into());
    let r = eval.evaluate(&inputs);
    assert_eq!(r.status, Status::Warn { weight: 100 });
    assert!(
        r.reason.contains("fleet servers unreachable"),
        "{}",
        r.reason
    );
    assert!(r.observations.iter().any(|o| o.component == "fleet"));
    inputs.fleet = None;
    assert_eq!(eval.evaluate(&inputs).status, Status::Pass);
}
