//! The `/metrics` body: Prometheus text exposition format 0.0.4, `guard_` prefix, base units,
//! `_total` on counters, no per-source labels (their cardinality is the attacker's choice).
//!
//! Each scrape is a prometheus-client registry (families, label and value encoding). Its text
//! is OpenMetrics, whose counter family is named without `_total` (`# TYPE guard_packets
//! counter` over `guard_packets_total` samples) and which ends in `# EOF`; Prometheus' own
//! text format names the family as its samples, and promtool's check wants it so. Hand-written
//! here: that renaming of the counters' HELP and TYPE lines, and leaving out `# EOF`.
use guard_common::{Counters, capacity::STATS_SLOTS, reason};
use prometheus_client::{
    encoding::{EncodeGaugeValue, EncodeMetric, GaugeValueEncoder, MetricEncoder},
    metrics::{MetricType, TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    control::attack::ServiceReport,
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
    pub services: &'a [ServiceReport],
    pub known_sources: u64,
    pub prefix_bans: u64,
}

/// Renders a scrape.
pub fn render(s: &Snapshot<'_>) -> String {
    let mut r = Scrape::default();
    r.gauge(
        "guard_up",
        "1 if the guard daemon is running and can read its data plane, else 0.",
        vec![(vec![], i64::from(s.up))],
    );
    for (name, help, pick) in [
        (
            "guard_packets",
            "Packets seen by the XDP program, by interface and verdict reason. would_drop counts dry-run decisions that are also counted under their own reason.",
            (|c: &Counters, r: usize| c.packets[r]) as fn(&Counters, usize) -> u64,
        ),
        (
            "guard_bytes",
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
                            ("interface", i.interface.clone()),
                            ("reason", reason::NAMES[r].to_string()),
                        ],
                        pick(&i.counters, r),
                    )
                })
            })
            .collect();
        r.counter(name, help, samples);
    }
    r.gauge(
        "guard_bans_active",
        "Sources banned now.",
        vec![(vec![], count(s.bans_active))],
    );
    r.gauge(
        "guard_prefix_bans_active",
        "Prefixes banned now (escalated from the bans of their sources).",
        vec![(vec![], count(s.prefix_bans))],
    );
    r.gauge(
        "guard_known_sources",
        "Sources known to the guard (good standing or a completed TCP handshake), as of the last walk.",
        vec![(vec![], count(s.known_sources))],
    );
    for (name, help, pick) in [
        (
            "guard_service_packets_per_second",
            "Packets per second to a service (\"other\": to no configured service).",
            (|r: &ServiceReport| r.pps) as fn(&ServiceReport) -> f64,
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
        let samples = s
            .services
            .iter()
            .map(|r| (vec![("service", r.name.clone())], pick(r)))
            .collect();
        r.ratio(name, help, samples);
    }
    let per_map = |f: fn(&MapFill) -> u64| -> Vec<_> {
        s.maps
            .iter()
            .map(|m| (vec![("map", m.name.clone())], count(f(m))))
            .collect()
    };
    r.gauge(
        "guard_map_entries",
        "Entries in a data-plane map.",
        per_map(|m| m.entries),
    );
    r.gauge(
        "guard_map_capacity",
        "Maximum entries of a data-plane map.",
        per_map(|m| m.capacity),
    );
    if let Some(h) = s.health {
        let current = h.status.kind();
        r.gauge(
            "guard_health_status",
            "1 for the host's current health state, 0 for the others.",
            StatusKind::ALL
                .iter()
                .map(|k| {
                    (
                        vec![("status", k.name().to_string())],
                        i64::from(*k == current),
                    )
                })
                .collect(),
        );
        r.ratio(
            "guard_health_weight_ratio",
            "Share of its configured load-balancer weight the host asks for (0 to 1).",
            vec![(vec![], f64::from(h.weight()) / 100.0)],
        );
        let ratio = |p: Option<f64>| p.map(|v| (vec![], v / 100.0)).into_iter().collect();
        r.ratio(
            "guard_cpu_utilisation_ratio",
            "CPU time spent busy (not idle or waiting for I/O) over the last health sample, 0 to 1.",
            ratio(h.headroom.cpu_percent),
        );
        r.ratio(
            "guard_memory_utilisation_ratio",
            "Memory in use (MemTotal - MemAvailable) over MemTotal, 0 to 1.",
            ratio(h.headroom.memory_percent),
        );
        r.ratio(
            "guard_pressure_some_avg10_ratio",
            "Pressure stall information: share of the last 10 s in which some task stalled on the resource, 0 to 1.",
            h.headroom
                .pressure_percent
                .iter()
                .map(|(res, v)| (vec![("resource", res.clone())], v / 100.0))
                .collect(),
        );
    }
    r.text()
}

/// A count as a gauge value.
/// The fleet's families (`[fleet]`), appended to a scrape: connected, members by state, shared
/// entries by origin and kind, entries applied, skipped, malformed and published, and the lag.
pub fn render_fleet(f: &crate::fleet::FleetStatus) -> String {
    let mut r = Scrape::default();
    r.gauge(
        "guard_fleet_connected",
        "1 while the fleet's NATS servers are reached, else 0 (the guard protects with its local state meanwhile).",
        vec![(vec![], i64::from(f.connected))],
    );
    let mut states: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
    for m in &f.members {
        *states.entry(m.state.as_str()).or_default() += 1;
    }
    r.gauge(
        "guard_fleet_members",
        "Members of this host's pool, by the health state they last published.",
        states
            .into_iter()
            .map(|(state, n)| (vec![("state", state.to_string())], n))
            .collect(),
    );
    r.gauge(
        "guard_fleet_drain_slots",
        "Drain slots held in this host's pool.",
        vec![(vec![], f.slots.held.len() as i64)],
    );
    r.gauge(
        "guard_fleet_entries",
        "Shared entries in the fleet's buckets, by origin host and kind (bans, deny, allow).",
        f.origins
            .iter()
            .flat_map(|(origin, kinds)| {
                kinds.iter().map(move |(kind, n)| {
                    (
                        vec![("origin", origin.clone()), ("kind", kind.clone())],
                        count(*n),
                    )
                })
            })
            .collect(),
    );
    for (name, help, v) in [
        (
            "guard_fleet_applied",
            "Other hosts' entries applied here.",
            f.applied,
        ),
        (
            "guard_fleet_skipped",
            "Entries not applied: malformed, allow-listed here, or already expired.",
            f.skipped,
        ),
        (
            "guard_fleet_malformed",
            "Malformed entries seen in the fleet's buckets (skipped and logged).",
            f.malformed,
        ),
        (
            "guard_fleet_published",
            "This host's entries published to the fleet.",
            f.published,
        ),
    ] {
        r.counter(name, help, vec![(vec![], v)]);
    }
    if let Some(ms) = f.lag_ms {
        r.ratio(
            "guard_fleet_lag_seconds",
            "From the origin's publication to applied here, the latest entry.",
            vec![(vec![], ms as f64 / 1000.0)],
        );
    }
    r.text()
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type Labels = Vec<(&'static str, String)>;

/// One scrape's registry, and the names of its counter families.
#[derive(Default)]
struct Scrape {
    registry: Registry,
    counters: Vec<&'static str>,
}

impl Scrape {
    /// A family of integer gauges; left out when it has no samples.
    fn gauge(&mut self, name: &'static str, help: &str, samples: Vec<(Labels, i64)>) {
        if samples.is_empty() {
            return;
        }
        let family = Ordered(
            samples
                .into_iter()
                .map(|(labels, v)| (labels, ConstGauge::new(v)))
                .collect(),
        );
        self.registry.register(name, help_text(help), family);
    }

    /// A family of float gauges (ratios, rates); left out when it has no samples.
    fn ratio(&mut self, name: &'static str, help: &str, samples: Vec<(Labels, f64)>) {
        if samples.is_empty() {
            return;
        }
        let family = Ordered(
            samples
                .into_iter()
                .map(|(labels, v)| (labels, ConstGauge::new(Num(v))))
                .collect(),
        );
        self.registry.register(name, help_text(help), family);
    }

    /// A family of counters, `name` without `_total` (prometheus-client adds it to the
    /// samples); left out when it has no samples.
    fn counter(&mut self, name: &'static str, help: &str, samples: Vec<(Labels, u64)>) {
        if samples.is_empty() {
            return;
        }
        let family = Ordered(
            samples
                .into_iter()
                .map(|(labels, v)| (labels, ConstCounter::new(v)))
                .collect(),
        );
        self.registry.register(name, help_text(help), family);
        self.counters.push(name);
    }

    /// The Prometheus text format 0.0.4: prometheus-client's OpenMetrics text with each
    /// counter's HELP and TYPE lines naming its samples (`guard_packets_total`), and no
    /// `# EOF` (see the module docs).
    fn text(&self) -> String {
        let mut om = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut om, &self.registry);
        let mut out = String::with_capacity(om.len() + 64);
        for line in om.lines() {
            let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
                let rest = line.strip_prefix(tag)?;
                let (name, tail) = rest.split_once(' ')?;
                self.counters
                    .contains(&name)
                    .then(|| format!("{tag}{name}_total {tail}"))
            });
            match renamed {
                Some(l) => out.push_str(&l),
                None => out.push_str(line),
            }
            out.push('\n');
        }
        out
    }
}

/// A family whose samples keep the order they were given in (prometheus-client's `Family` is
/// a hash map, which would shuffle them on every scrape).
#[derive(Debug)]
struct Ordered<M>(Vec<(Labels, M)>);

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Ordered<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, m) in &self.0 {
            m.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// A float gauge's value, written as an integer when it is one (`1`, not `1.0`), as the
/// metrics have always read.
#[derive(Clone, Copy, Debug)]
struct Num(f64);

impl EncodeGaugeValue for Num {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> Result<(), std::fmt::Error> {
        let v = self.0;
        if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
            (v as i64).encode(encoder)
        } else {
            v.encode(encoder)
        }
    }
}

/// prometheus-client ends each HELP text with a full stop of its own.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

#[cfg(test)]
mod tests;
