//! Tests of the metrics text: families, labels, escaping, and promtool's check.
use std::{io::Write, process::Command};

use super::*;
use crate::health::{Evaluator, HealthConfig, Inputs, MapFill, SystemSample};

fn attachment(iface: &str, ifindex: u32) -> Attachment {
    Attachment {
        iface: iface.into(),
        ifindex,
        mode: "native".into(),
        adopted: false,
        reattached: 0,
    }
}

fn sample_counters() -> Counters {
    let mut c = Counters::default();
    c.packets[reason::PASSED] = 1000;
    c.bytes[reason::PASSED] = 64_000;
    c.packets[reason::RATE_LIMITED] = 5;
    c.bytes[reason::RATE_LIMITED] = 320;
    c
}

fn sample_report() -> HealthReport {
    let mut eval = Evaluator::new(HealthConfig::default());
    let proc = crate::health::ProcSource::default();
    let mut inputs = Inputs {
        checks: Some(Vec::new()),
        ..Inputs::default()
    };
    let mut report = HealthReport::starting(0);
    for _ in 0..2 {
        inputs.system = SystemSample::read(&proc);
        report = eval.evaluate(&inputs);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Whatever this machine's load, make the pressure family present.
    report.headroom.pressure_percent.insert("io".into(), 1.5);
    report.headroom.cpu_percent.get_or_insert(12.5);
    report.headroom.memory_percent.get_or_insert(40.0);
    report
}

pub(super) fn sample() -> String {
    let slots = vec![(2, sample_counters()), (9, sample_counters())];
    let interfaces = interface_counters(&slots, &[attachment("eth0", 2)]);
    let maps = vec![MapFill {
        name: "bans".into(),
        entries: 3,
        capacity: 65_536,
    }];
    let report = sample_report();
    render(&Snapshot {
        up: true,
        interfaces: &interfaces,
        bans_active: 3,
        maps: &maps,
        health: Some(&report),
        services: &[],
        known_sources: 0,
        prefix_bans: 0,
    })
}

#[test]
fn slots_are_named_by_attached_interface_or_slot_number() {
    let slots = vec![(2, sample_counters()), (9, sample_counters())];
    let named = interface_counters(
        &slots,
        &[
            attachment("eth0", 2),
            attachment("eth1", 258),
            attachment("lo", 1),
        ],
    );
    let labels: Vec<_> = named.iter().map(|i| i.interface.as_str()).collect();
    assert_eq!(labels, ["eth0+eth1", "slot9"]);
}

#[test]
fn counters_carry_interface_and_reason_labels() {
    let text = sample();
    assert!(
        text.contains("# TYPE guard_packets_total counter\n"),
        "{text}"
    );
    assert!(text.contains("guard_packets_total{interface=\"eth0\",reason=\"passed\"} 1000\n"));
    assert!(text.contains("guard_bytes_total{interface=\"slot9\",reason=\"rate_limited\"} 320\n"));
    assert!(text.contains("guard_map_capacity{map=\"bans\"} 65536\n"));
    assert!(text.contains("guard_pressure_some_avg10_ratio{resource=\"io\"} 0.015\n"));
    assert!(text.contains("guard_up 1\n"));
}

#[test]
fn exactly_one_health_status_is_set() {
    let text = sample();
    let set: Vec<_> = text
        .lines()
        .filter(|l| l.starts_with("guard_health_status{") && l.ends_with(" 1"))
        .collect();
    assert_eq!(set.len(), 1, "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("guard_health_status{"))
            .count(),
        6
    );
}

#[test]
fn every_family_has_help_and_type_once() {
    let text = sample();
    for family in text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default())
    {
        assert_eq!(
            text.matches(&format!("# TYPE {family} ")).count(),
            1,
            "{family}"
        );
        assert_eq!(
            text.matches(&format!("# HELP {family} ")).count(),
            1,
            "{family}"
        );
    }
}

#[test]
fn label_values_are_escaped() {
    let interfaces = [InterfaceCounters {
        interface: "a\"b\\c\nd".into(),
        counters: sample_counters(),
    }];
    let text = render(&Snapshot {
        up: true,
        interfaces: &interfaces,
        bans_active: 0,
        maps: &[],
        health: None,
        services: &[],
        known_sources: 0,
        prefix_bans: 0,
    });
    assert!(text.contains("interface=\"a\\\"b\\\\c\\nd\""), "{text}");
}

#[test]
fn sample_passes_promtool_check_metrics() {
    let text = sample();
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        println!(
            "SKIP sample_passes_promtool_check_metrics: promtool is not installed (Debian package `prometheus`)"
        );
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool failed:\n{problems}\n{text}");
    assert_eq!(problems.trim(), "", "promtool reported problems:\n{text}");
}

#[test]
fn fleet_families_count_members_entries_and_name_counters_with_total() {
    use crate::fleet::{FleetStatus, MemberState};
    let mut f = FleetStatus {
        connected: true,
        applied: 7,
        malformed: 1,
        lag_ms: Some(42),
        ..FleetStatus::default()
    };
    for (host, state) in [("a", "pass"), ("b", "drain"), ("c", "pass")] {
        f.members.push(MemberState {
            host: host.into(),
            state: state.into(),
            at: 0,
        });
    }
    f.origins
        .entry("a".into())
        .or_default()
        .insert("bans".into(), 3);
    let text = super::render_fleet(&f);
    for line in [
        "guard_fleet_connected 1",
        "guard_fleet_members{state=\"pass\"} 2",
        "guard_fleet_members{state=\"drain\"} 1",
        "guard_fleet_entries{origin=\"a\",kind=\"bans\"} 3",
        "guard_fleet_applied_total 7",
        "guard_fleet_malformed_total 1",
        "# TYPE guard_fleet_applied_total counter",
        "guard_fleet_lag_seconds 0.042",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
    }
}
