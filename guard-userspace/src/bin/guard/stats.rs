//! `guard stats`, `guard top`, `guard status` and `guard reload`: what the daemon sees and
//! does, as tables for the operator or JSON for scripts.
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{ClientArgs, Table, print_json, unexpected};
use guard::{
    config::ConfigSource,
    control::{BanInfo, StatsReport},
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
    /// Measure again and again, redrawn in place (q or Ctrl-C quits).
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Redraw every --interval with rates per second and the newest bans (q or Ctrl-C quits).
    #[arg(long)]
    watch: bool,
    /// How often --watch redraws: 1s to 10s.
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

/// The bans `guard stats --watch` shows, newest first.
const WATCH_BANS: usize = 10;

/// An interval of 1s to 10s (`guard top --interval`, `guard stats --interval`).
fn interval(text: &str) -> anyhow::Result<Duration> {
    let d = duration::parse(text).context("--interval")?;
    let ms = d.as_millis() as u64;
    if !TOP_INTERVAL_MS.contains(&ms) || ms < 1000 {
        anyhow::bail!("--interval {text}: expected 1s to 10s");
    }
    Ok(d)
}

fn fetch_stats(client: &ClientArgs) -> anyhow::Result<StatsReport> {
    match client.call(&Request::Stats)? {
        Reply::Stats(report) => Ok(report),
        other => Err(unexpected(&other)),
    }
}

pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let StatsArgs {
        watch,
        interval: every,
        client,
    } = args;
    if *watch {
        return watch_stats(client, interval(every)?);
    }
    let report = fetch_stats(client)?;
    if client.json {
        return print_json(&report);
    }
    print!("{}", render_stats(&report));
    Ok(())
}

/// `guard stats --watch`: the counters with their rates since the last frame, the newest
/// bans, the maps.
fn watch_stats(client: &ClientArgs, every: Duration) -> anyhow::Result<()> {
    let mut prev: Option<(StatsReport, Instant)> = None;
    super::watch::watch(every, |_| {
        let report = fetch_stats(client)?;
        let now = Instant::now();
        if client.json {
            prev = Some((report.clone(), now));
            return Ok(format!("{}\n", serde_json::to_string(&report)?));
        }
        let bans = match client.call(&Request::Bans)? {
            Reply::Bans(b) => b,
            other => return Err(unexpected(&other)),
        };
        let since = prev.as_ref().map(|(p, at)| (p, now.duration_since(*at)));
        let text = render_watch(&report, since, &bans, every);
        prev = Some((report, now));
        Ok(text)
    })
}

/// One frame of `guard stats --watch`.
fn render_watch(
    report: &StatsReport,
    since: Option<(&StatsReport, Duration)>,
    bans: &[BanInfo],
    every: Duration,
) -> String {
    let now = guard::state::unix_now();
    let mut out = format!(
        "guard stats, every {} (q or Ctrl-C quits)    {}\n\n",
        Human(every),
        guard::state::format_unix(now)
    );
    if report.dry_run {
        out.push_str("DRY RUN: nothing is dropped; would_drop counts what would have been\n\n");
    }
    // Packets per second of (interface, verdict) since the previous frame.
    let rate = |iface: &str, reason: Option<&str>, packets: u64| -> String {
        let Some((prev, dt)) = since else {
            return "-".into();
        };
        let before = prev
            .interfaces
            .iter()
            .chain(std::iter::once(&prev.total))
            .find(|i| i.iface == iface)
            .map(|i| match reason {
                None => i.packets,
                Some(r) => i
                    .reasons
                    .iter()
                    .find(|x| x.reason == r)
                    .map_or(0, |x| x.packets),
            });
        match before {
            Some(b) if dt.as_secs_f64() > 0.0 => {
                format!("{:.0}", packets.saturating_sub(b) as f64 / dt.as_secs_f64())
            }
            _ => "-".into(),
        }
    };
    let mut t = Table::new(&["INTERFACE", "VERDICT", "PKT/S", "PACKETS", "BYTES"]);
    for i in report
        .interfaces
        .iter()
        .chain(std::iter::once(&report.total))
    {
        t.row(vec![
            i.iface.clone(),
            "all".into(),
            rate(&i.iface, None, i.packets),
            i.packets.to_string(),
            i.bytes.to_string(),
        ]);
        for r in i.reasons.iter().filter(|r| r.packets > 0) {
            t.row(vec![
                String::new(),
                r.reason.clone(),
                rate(&i.iface, Some(&r.reason), r.packets),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]);
        }
    }
    out.push_str(&t.to_string());
    out.push('\n');
    let mut newest: Vec<&BanInfo> = bans.iter().collect();
    newest.sort_by_key(|b| std::cmp::Reverse(b.since));
    if newest.is_empty() {
        out.push_str("no bans\n");
    } else {
        let mut b = Table::new(&["BANNED", "REASON", "SINCE", "EXPIRES"]);
        for ban in newest.iter().take(WATCH_BANS) {
            b.row(vec![
                ban.source.to_string(),
                ban.reason.clone(),
                super::relative(ban.since, now),
                super::relative(ban.expires, now),
            ]);
        }
        out.push_str(&b.to_string());
        if newest.len() > WATCH_BANS {
            out.push_str(&format!(
                "... and {} more (`guard bans` lists them all)\n",
                newest.len() - WATCH_BANS
            ));
        }
    }
    out
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
        interval: every,
        watch,
        client,
    } = args;
    let d = interval(every)?;
    if *watch {
        // Each frame measures for the interval inside the daemon: no wait between them.
        return super::watch::watch(Duration::ZERO, |_| {
            let text = top_frame(client, *count, d)?;
            Ok(if client.json {
                text
            } else {
                format!(
                    "guard top, {} sources over {} (q or Ctrl-C quits)    {}\n\n{text}",
                    count,
                    Human(d),
                    guard::state::format_unix(guard::state::unix_now())
                )
            })
        });
    }
    print!("{}", top_frame(client, *count, d)?);
    Ok(())
}

/// One measurement of `guard top`, as its table (or one JSON line).
fn top_frame(client: &ClientArgs, count: usize, d: Duration) -> anyhow::Result<String> {
    let reply = client.call(&Request::Top {
        n: count,
        interval_ms: d.as_millis() as u64,
    })?;
    let Reply::Top {
        interval_ms,
        sources,
    } = reply
    else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return Ok(format!(
            "{}\n",
            serde_json::to_string(
                &serde_json::json!({ "interval_ms": interval_ms, "sources": sources })
            )?
        ));
    }
    if sources.is_empty() {
        return Ok(format!("no traffic in the last {}\n", Human(d)));
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
    Ok(t.to_string())
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
    println!(
        "attach      {} (priority {} in libxdp's dispatcher)",
        s.attach, s.priority
    );
    if let Some(next) = &s.next {
        println!("next        {next} (gets every packet the guard passes)");
    }
    println!("pins        {}", s.pin_dir);
    for w in &s.warnings {
        println!("WARNING     {w}");
    }
    println!("state       {}", s.state_file);
    let c = &s.syn_cookies;
    let sysctl = match (c.sysctl.value, c.sysctl.replaced) {
        (Some(v), Some(old)) => format!("tcp_syncookies {v} (set by guard; was {old})"),
        (Some(v), None) => format!("tcp_syncookies {v}"),
        (None, _) => "tcp_syncookies unreadable".to_string(),
    };
    match &c.unavailable {
        None => println!("syn cookies available at the NIC (XDP + TC ingress); {sysctl}"),
        Some(why) => println!("syn cookies unavailable at the NIC: {why}; {sysctl}"),
    }
    if let Some(f) = &s.fleet {
        println!("{}", super::fleet::summary(f));
    }
    let mut t = Table::new(&["INTERFACE", "IFINDEX", "XDP MODE", "ADOPTED", "RE-ATTACHED"]);
    for a in &s.attachments {
        t.row(vec![
            a.iface.clone(),
            // A chain slot has no interface of its own.
            if a.mode == "chain" {
                "-".to_string()
            } else {
                a.ifindex.to_string()
            },
            a.mode.clone(),
            if a.adopted { "yes" } else { "no" }.to_string(),
            match a.reattached {
                0 => "no".to_string(),
                1 => "once".to_string(),
                n => format!("{n} times"),
            },
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
        "COOKIES",
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
            match (r.protocol, r.cookies_active) {
                (Some(guard::dataplane::ServiceProto::Tcp), true) => {
                    format!("{}: sending", r.syn_cookies)
                }
                (Some(guard::dataplane::ServiceProto::Tcp), false) => r.syn_cookies.clone(),
                _ => "-".to_string(),
            },
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
