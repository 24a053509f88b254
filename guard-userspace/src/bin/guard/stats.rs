//! `guard stats`, `guard top`, `guard status` and `guard reload`: what the daemon sees and
//! does, as tables for the operator or JSON for scripts.
use std::time::Duration;

use anyhow::Context;

use super::{ClientArgs, Table, print_json, unexpected};
use guard::{
    config::ConfigSource,
    control::StatsReport,
    duration::{self, Human},
    rpc::{Reply, Request, TOP_INTERVAL_MS},
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// How many sources to show.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 10)]
    count: usize,
    /// How long to measure: 1s to 10s.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        allow_hyphen_values = true
    )]
    interval: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn stats(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Stats)?;
    let Reply::Stats(report) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&report);
    }
    print!("{}", render_stats(&report));
    Ok(())
}

fn render_stats(report: &StatsReport) -> String {
    let StatsReport {
        dry_run,
        interfaces,
        total,
        maps,
    } = report;
    let mut out = String::new();
    if *dry_run {
        out.push_str("DRY RUN: nothing is dropped; would_drop counts what would have been\n\n");
    }
    let mut t = Table::new(&["INTERFACE", "VERDICT", "PACKETS", "BYTES"]);
    for i in interfaces.iter().chain(std::iter::once(total)) {
        t.row(vec![
            i.iface.clone(),
            "all".into(),
            i.packets.to_string(),
            i.bytes.to_string(),
        ]);
        for r in i.reasons.iter().filter(|r| r.packets > 0) {
            t.row(vec![
                String::new(),
                r.reason.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    let mut m = Table::new(&["MAP", "ENTRIES", "CAPACITY", "FILL"]);
    for f in maps {
        let pct = if f.capacity == 0 {
            0.0
        } else {
            f.entries as f64 * 100.0 / f64::from(f.capacity)
        };
        m.row(vec![
            f.map.clone(),
            f.entries.to_string(),
            f.capacity.to_string(),
            format!("{pct:.1}%"),
        ]);
    }
    out.push_str(&m.to_string());
    out
}

pub fn top(args: &TopArgs) -> anyhow::Result<()> {
    let TopArgs {
        count,
        interval,
        client,
    } = args;
    let d = duration::parse(interval).context("--interval")?;
    let interval_ms = d.as_millis() as u64;
    if !TOP_INTERVAL_MS.contains(&interval_ms) || interval_ms < 1000 {
        anyhow::bail!("--interval {interval}: expected 1s to 10s");
    }
    let reply = client.call(&Request::Top {
        n: *count,
        interval_ms,
    })?;
    let Reply::Top {
        interval_ms,
        sources,
    } = reply
    else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&serde_json::json!({ "interval_ms": interval_ms, "sources": sources }));
    }
    if sources.is_empty() {
        println!("no traffic in the last {}", Human(d));
        return Ok(());
    }
    let mut t = Table::new(&["SOURCE", "PKT/S", "BYTES/S", "DROPPED/S", "SYN/S", "BANNED"]);
    for s in &sources {
        t.row(vec![
            s.source.to_string(),
            s.pps.to_string(),
            s.bps.to_string(),
            s.dropped_pps.to_string(),
            s.syn_pps.to_string(),
            if s.banned { "yes" } else { "" }.to_string(),
        ]);
    }
    print!("{t}");
    Ok(())
}

pub fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Status)?;
    let Reply::Status(s) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&s);
    }
    let config = match &s.config {
        ConfigSource::Embedded => "built-in default".to_string(),
        ConfigSource::File(p) => p.display().to_string(),
    };
    let l = s.limits;
    println!(
        "guard {} (pid {}), up {}",
        s.version,
        s.pid,
        Human(Duration::from_secs(s.uptime_secs))
    );
    println!("config      {config}");
    println!(
        "mode        {}",
        if s.dry_run {
            "DRY RUN (nothing is dropped)"
        } else {
            "enforcing"
        }
    );
    println!(
        "limits      {} pps (burst {}), {} SYN/s (burst {}), bans {}",
        l.pps,
        l.burst,
        l.syn_pps,
        l.syn_burst,
        Human(Duration::from_secs(l.ban_seconds))
    );
    println!(
        "lists       {} allow, {} deny; {} bans, {} prefix bans; {} known sources",
        s.allow_entries, s.deny_entries, s.bans, s.prefix_bans, s.known_sources
    );
    println!("pins        {}", s.pin_dir);
    println!("state       {}", s.state_file);
    let mut t = Table::new(&["INTERFACE", "IFINDEX", "XDP MODE", "ADOPTED"]);
    for a in &s.attachments {
        t.row(vec![
            a.iface.clone(),
            a.ifindex.to_string(),
            a.mode.clone(),
            if a.adopted { "yes" } else { "no" }.to_string(),
        ]);
    }
    print!("\n{t}");
    if !s.services.is_empty() {
        print!("\n{}", services_table(&s.services));
    }
    Ok(())
}

/// Each service: its rates, ceiling, learned rate and attack state.
fn services_table(services: &[guard::attack::ServiceReport]) -> Table {
    let mut t = Table::new(&[
        "SERVICE",
        "PROTO/PORT",
        "PPS",
        "SYN/S",
        "CEILING",
        "LEARNED",
        "STATE",
        "NEWCOMERS",
    ]);
    let rate = |v: f64| format!("{v:.0}");
    for r in services {
        let proto = r
            .protocol
            .map_or_else(|| "-".to_string(), |p| format!("{}/{}", p.name(), r.port));
        let ceiling = format!(
            "{}{}{}",
            rate(r.ceiling_pps),
            r.ceiling_syn_pps
                .map(|c| format!(" ({} SYN/s)", rate(c)))
                .unwrap_or_default(),
            if r.ceiling_learned { " learned" } else { "" }
        );
        let state = match (r.protocol, r.under_attack, r.attack_since) {
            (None, _, _) => "counted".to_string(),
            (_, true, Some(since)) => {
                format!("UNDER ATTACK since {}", guard::state::format_unix(since))
            }
            (_, true, None) => "UNDER ATTACK".to_string(),
            _ => "normal".to_string(),
        };
        let newcomers = if r.under_attack {
            format!(
                "budget {}/s: {} passed/s, {} dropped/s",
                rate(r.newcomer_budget_pps),
                rate(r.newcomer_passed_pps),
                rate(r.newcomer_dropped_pps)
            )
        } else {
            "-".to_string()
        };
        t.row(vec![
            r.name.clone(),
            proto,
            rate(r.pps),
            if r.protocol == Some(guard::dataplane::ServiceProto::Tcp) {
                rate(r.syn_pps)
            } else {
                "-".to_string()
            },
            ceiling,
            r.learned_pps.map_or_else(|| "-".to_string(), rate),
            state,
            newcomers,
        ]);
    }
    t
}

pub fn reload(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Reload)?;
    let Reply::Reloaded(r) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&r);
    }
    let l = r.limits;
    println!(
        "reloaded {}: {} pps (burst {}), {} SYN/s (burst {}), bans {}{}",
        r.config,
        l.pps,
        l.burst,
        l.syn_pps,
        l.syn_burst,
        Human(Duration::from_secs(l.ban_seconds)),
        if r.dry_run { ", dry run" } else { "" }
    );
    if !r.restart_needed.is_empty() {
        println!(
            "not applied until the daemon restarts: {}",
            r.restart_needed.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard::control::{InterfaceStats, MapFill, ReasonCount};

    #[test]
    fn stats_table_shows_non_zero_verdicts_and_map_fill() {
        let reasons = |p: u64| {
            vec![
                ReasonCount {
                    reason: "passed".into(),
                    packets: p,
                    bytes: p * 100,
                },
                ReasonCount {
                    reason: "denied".into(),
                    packets: 0,
                    bytes: 0,
                },
            ]
        };
        let eth0 = InterfaceStats {
            iface: "eth0".into(),
            slot: 2,
            packets: 3,
            bytes: 300,
            reasons: reasons(3),
        };
        let report = StatsReport {
            dry_run: false,
            interfaces: vec![eth0.clone()],
            total: InterfaceStats {
                iface: "total".into(),
                slot: u32::MAX,
                ..eth0
            },
            maps: vec![MapFill {
                map: "GUARD_BANS".into(),
                entries: 16_384,
                capacity: 65_536,
            }],
        };
        let text = render_stats(&report);
        assert!(text.contains("eth0       all      3        300"), "{text}");
        assert!(text.contains("passed"), "{text}");
        assert!(!text.contains("denied"), "{text}");
        assert!(
            text.contains("GUARD_BANS  16384    65536     25.0%"),
            "{text}"
        );
    }
}
