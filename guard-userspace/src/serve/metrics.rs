//! The `/metrics` body: Prometheus text exposition format 0.0.4, `guard_` prefix, base units,
//! `_total` on counters, no per-source labels (their cardinality is the attacker's choice).
use std::fmt::Write as _;

use guard_common::{Counters, capacity::STATS_SLOTS, reason};

use crate::{
    dataplane::Attachment,
    health::{HealthReport, MapFill, StatusKind},
};

/// One interface's verdict counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceCounters {
    /// The interface name, or `slotN` for counters of a stats slot no attachment maps to (an
    /// interface the guard no longer holds).
    pub interface: String,
    pub counters: Counters,
}

/// Names the per-slot counters of [`crate::dataplane::Datapath::counters`] by interface: slot
/// `ifindex % STATS_SLOTS`. Two attached interfaces sharing a slot share its counters, and
/// are labelled together (`eth0+eth1`) rather than double counted. Sorted by label.
pub fn interface_counters(
    slots: &[(u32, Counters)],
    attachments: &[Attachment],
) -> Vec<InterfaceCounters> {
    let mut out: Vec<InterfaceCounters> = Vec::new();
    for (slot, counters) in slots {
        let mut names: Vec<&str> = attachments
            .iter()
            .filter(|a| a.ifindex % STATS_SLOTS == *slot)
            .map(|a| a.iface.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let interface = if names.is_empty() {
            format!("slot{slot}")
        } else {
            names.join("+")
        };
        match out.iter_mut().find(|i| i.interface == interface) {
            Some(existing) => existing.counters.add(counters),
            None => out.push(InterfaceCounters {
                interface,
                counters: *counters,
            }),
        }
    }
    out.sort_by(|a, b| a.interface.cmp(&b.interface));
    out
}

/// Everything one scrape shows.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// False when the daemon runs but cannot read its data plane.
    pub up: bool,
    pub interfaces: &'a [InterfaceCounters],
    pub bans_active: u64,
    pub maps: &'a [MapFill],
    /// `None` before the first evaluation: health families are left out.
    pub health: Option<&'a HealthReport>,
    /// Each service (and "other").
    pub services: &'a [crate::control::attack::ServiceReport],
    pub known_sources: u64,
    pub prefix_bans: u64,
}

#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
}

struct Writer {
    out: String,
}

impl Writer {
    /// Writes one family: HELP, TYPE and its samples. A family with no samples is left out.
    fn family(&mut self, name: &str, kind: &str, help: &str, samples: &[(Vec<(&str, &str)>, Num)]) {
        if samples.is_empty() {
            return;
        }
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.out.push_str(name);
            if !labels.is_empty() {
                self.out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
                }
                self.out.push('}');
            }
            let _ = match value {
                Num::Int(v) => writeln!(self.out, " {v}"),
                Num::Float(v) if v.is_nan() => writeln!(self.out, " NaN"),
                Num::Float(v) => writeln!(self.out, " {v}"),
            };
        }
    }
}

/// Label values escape `\`, `"` and newline (exposition format, "Text format details").
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// HELP text escapes `\` and newline.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Renders a scrape.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut w = Writer {
        out: String::with_capacity(4096),
    };
    w.family(
        "guard_up",
        "gauge",
        "1 if the guard daemon is running and can read its data plane, else 0.",
        &[(vec![], Num::Int(u64::from(s.up)))],
    );
    for (name, help, pick) in [
        (
            "guard_packets_total",
            "Packets seen by the XDP program, by interface and verdict reason. would_drop counts dry-run decisions that are also counted under their own reason.",
            (|c: &Counters, r: usize| c.packets[r]) as fn(&Counters, usize) -> u64,
        ),
        (
            "guard_bytes_total",
            "Bytes seen by the XDP program, by interface and verdict reason. would_drop counts dry-run decisions that are also counted under their own reason.",
            |c: &Counters, r: usize| c.bytes[r],
        ),
    ] {
        let samples: Vec<_> = s
            .interfaces
            .iter()
            .flat_map(|i| {
                (0..reason::COUNT).map(move |r| {
                    (
                        vec![
                            ("interface", i.interface.as_str()),
                            ("reason", reason::NAMES[r]),
                        ],
                        Num::Int(pick(&i.counters, r)),
                    )
                })
            })
            .collect();
        w.family(name, "counter", help, &samples);
    }
    w.family(
        "guard_bans_active",
        "gauge",
        "Sources banned now.",
        &[(vec![], Num::Int(s.bans_active))],
    );
    w.family(
        "guard_prefix_bans_active",
        "gauge",
        "Prefixes banned now (escalated from the bans of their sources).",
        &[(vec![], Num::Int(s.prefix_bans))],
    );
    w.family(
        "guard_known_sources",
        "gauge",
        "Sources known to the guard (good standing or a completed TCP handshake), as of the last walk.",
        &[(vec![], Num::Int(s.known_sources))],
    );
    for (name, help, pick) in [
        (
            "guard_service_packets_per_second",
            "Packets per second to a service (\"other\": to no configured service).",
            (|r: &crate::control::attack::ServiceReport| r.pps)
                as fn(&crate::control::attack::ServiceReport) -> f64,
        ),
        (
            "guard_service_syns_per_second",
            "TCP SYNs per second to a service.",
            |r| r.syn_pps,
        ),
        (
            "guard_service_ceiling_packets_per_second",
            "The packet rate above which a service is under attack (configured or learned).",
            |r| r.ceiling_pps,
        ),
        (
            "guard_service_under_attack",
            "1 while a service is under attack (known sources first, newcomers on a budget).",
            |r| if r.under_attack { 1.0 } else { 0.0 },
        ),
        (
            "guard_service_newcomer_dropped_per_second",
            "Packets per second of unknown sources over a service's newcomer budget.",
            |r| r.newcomer_dropped_pps,
        ),
    ] {
        let samples: Vec<_> = s
            .services
            .iter()
            .map(|r| (vec![("service", r.name.as_str())], Num::Float(pick(r))))
            .collect();
        w.family(name, "gauge", help, &samples);
    }
    let entries: Vec<_> = s
        .maps
        .iter()
        .map(|m| (vec![("map", m.name.as_str())], Num::Int(m.entries)))
        .collect();
    w.family(
        "guard_map_entries",
        "gauge",
        "Entries in a data-plane map.",
        &entries,
    );
    let capacity: Vec<_> = s
        .maps
        .iter()
        .map(|m| (vec![("map", m.name.as_str())], Num::Int(m.capacity)))
        .collect();
    w.family(
        "guard_map_capacity",
        "gauge",
        "Maximum entries of a data-plane map.",
        &capacity,
    );
    if let Some(h) = s.health {
        let current = h.status.kind();
        let states: Vec<_> = StatusKind::ALL
            .iter()
            .map(|k| {
                (
                    vec![("status", k.name())],
                    Num::Int(u64::from(*k == current)),
                )
            })
            .collect();
        w.family(
            "guard_health_status",
            "gauge",
            "1 for the host's current health state, 0 for the others.",
            &states,
        );
        w.family(
            "guard_health_weight_ratio",
            "gauge",
            "Share of its configured load-balancer weight the host asks for (0 to 1).",
            &[(vec![], Num::Float(f64::from(h.weight()) / 100.0))],
        );
        let ratio = |p: Option<f64>| p.map(|v| vec![(vec![], Num::Float(v / 100.0))]);
        w.family(
            "guard_cpu_utilisation_ratio",
            "gauge",
            "CPU time spent busy (not idle or waiting for I/O) over the last health sample, 0 to 1.",
            &ratio(h.headroom.cpu_percent).unwrap_or_default(),
        );
        w.family(
            "guard_memory_utilisation_ratio",
            "gauge",
            "Memory in use (MemTotal - MemAvailable) over MemTotal, 0 to 1.",
            &ratio(h.headroom.memory_percent).unwrap_or_default(),
        );
        let pressure: Vec<_> = h
            .headroom
            .pressure_percent
            .iter()
            .map(|(r, v)| (vec![("resource", r.as_str())], Num::Float(v / 100.0)))
            .collect();
        w.family(
            "guard_pressure_some_avg10_ratio",
            "gauge",
            "Pressure stall information: share of the last 10 s in which some task stalled on the resource, 0 to 1.",
            &pressure,
        );
    }
    w.out
}

#[cfg(test)]
mod tests {
    use std::{io::Write, process::Command};

    use super::*;
    use crate::health::{Evaluator, HealthConfig, Inputs, MapFill, SystemSample};

    fn attachment(iface: &str, ifindex: u32) -> Attachment {
        Attachment {
            iface: iface.into(),
            ifindex,
            mode: "native".into(),
            adopted: false,
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

    fn sample() -> String {
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
        assert!(
            text.contains("guard_bytes_total{interface=\"slot9\",reason=\"rate_limited\"} 320\n")
        );
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
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
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
}
