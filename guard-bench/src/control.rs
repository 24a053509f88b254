//! Section 3: control plane and footprint, through the real `guard` daemon and CLI: deny-list
//! imports, `deny add` round trips, and the daemon's memory and CPU idle and under flood.

use std::{
    fs,
    net::Ipv4Addr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    daemon::{Daemon, HealthListen},
    netns::{Testbed, join, mac_of as mac, sh_out, spawn_in},
    report::{Section, Table, verdict},
    sender::{self, Frames, MAX_SPOOFED},
};

/// Where the daemon serves its health outputs in this run: the server's address on the load
/// balancer's own link, which the guard also guards, so the probes cross an XDP program while
/// the flood arrives on the other link, as a load balancer's checks would on a server whose
/// public interface is flooded.
const HEALTH_LISTEN: &str = "198.18.4.1:9301";
const AGENT_LISTEN: &str = "198.18.4.1:9302";

pub fn run(guard: Option<&Path>) -> Section {
    let mut section = Section::new(
        "3. Control plane and footprint",
        "The real daemon (`guard run`, attached to a veth in a namespace made for the run, its \
         pins and state private to the run) driven through the real CLI. The imported CIDRs \
         are /32s of 240.0.0.0/4 (reserved, never routed: 198.18.0.0/15 holds too few \
         prefixes for a million); they are only loaded, no packet goes to or from them.",
    );
    let result = match guard {
        None => Err(anyhow::anyhow!(
            "no guard binary given (GUARD_BIN or --guard-bin; `cargo xtask bench` passes it)"
        )),
        Some(g) => measure(g, &mut section),
    };
    if let Err(e) = result {
        section.failure = Some(format!("{e:#}"));
    }
    section
}

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

/// Bytes `pid` has passed to write(2) and friends so far (`wchar` in /proc/<pid>/io): its
/// store's WAL frames, and whatever else it writes (its replies on the control socket).
fn written_bytes(pid: u32) -> Result<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no wchar")
}

/// User + system CPU ticks of `pid` (fields 14 and 15 of /proc/<pid>/stat).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?)
}

/// CPU use of `pid` over `d`, in % of one core.
fn cpu_pct(pid: u32, d: Duration) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let a = cpu_ticks(pid)?;
    std::thread::sleep(d);
    let b = cpu_ticks(pid)?;
    Ok(100.0 * (b - a) as f64 / hz / d.as_secs_f64())
}

fn memlock(pin: &Path) -> Result<u64> {
    let text = sh_out(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        &pin.to_string_lossy(),
    ])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json["bytes_memlock"]
        .as_u64()
        .context("no bytes_memlock in bpftool's answer")
}

/// The `p` quantile of `sorted`; NaN (shown as "NaN") if it is empty.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn measure(guard: &Path, section: &mut Section) -> Result<()> {
    let mut bed = Testbed::new();
    let srv = bed.netns("csrv")?;
    let att = bed.netns("catt")?;
    let (srv_if, att_if) = bed.link(&srv, Some("198.18.3.1/24"), &att, Some("198.18.3.2/24"))?;
    let lb = bed.netns("clb")?;
    let (srv_lb_if, _) = bed.link(&srv, Some("198.18.4.1/24"), &lb, Some("198.18.4.2/24"))?;
    let health = HealthListen {
        http: Some(HEALTH_LISTEN),
        agent: Some(AGENT_LISTEN),
    };
    let slow = bed.netns("cslo")?;
    let (srv_slow_if, slow_if) =
        bed.link(&srv, Some("198.18.5.1/24"), &slow, Some("198.18.5.2/24"))?;
    let slow_sources: Vec<Ipv4Addr> = (2..12).map(|i| Ipv4Addr::new(198, 18, 5, i)).collect();
    for a in &slow_sources[1..] {
        crate::netns::sh(&[
            "ip",
            "-n",
            &slow,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &slow_if,
        ])?;
    }
    crate::netns::sh(&[
        "ip",
        "-n",
        &slow,
        "route",
        "add",
        "198.18.4.0/24",
        "via",
        "198.18.5.1",
    ])?;
    let daemon = Daemon::start(
        guard,
        &srv,
        &[&srv_if, &srv_lb_if, &srv_slow_if],
        &bed.tag,
        &health,
        &[],
    )?;
    let pid = daemon.pid();
    let mut t = Table::new(
        "Daemon footprint and control-plane latency",
        &["measure", "value", "target", "result"],
    );

    std::thread::sleep(Duration::from_secs(2));
    let idle_rss = rss_kib(pid)?;
    let idle_cpu = cpu_pct(pid, Duration::from_secs(5))?;
    t.row(vec![
        "daemon RSS, idle".into(),
        format!("{:.1} MiB", idle_rss as f64 / 1024.0),
        "< 32 MiB".into(),
        verdict(Some(idle_rss < 32 * 1024)),
    ]);
    t.row(vec![
        "daemon CPU, idle".into(),
        format!("{idle_cpu:.2}% of a core"),
        "< 1%".into(),
        verdict(Some(idle_cpu < 1.0)),
    ]);

    // As the operator guide says: the load balancer's own address is on the allow list, so its
    // checks are never limited, whatever else arrives.
    daemon.cli_ok(&["allow", "add", "198.18.4.2"])?;

    // Under a spoofed flood towards the daemon's interface, with the lists still empty (but
    // the load balancer's allow entry) so that the only difference from idle is the flood.
    let frames = Arc::new(Frames::udp(
        mac(&att, &att_if)?,
        mac(&srv, &srv_if)?,
        Ipv4Addr::new(198, 18, 3, 1),
        sender::spoofed_sources(MAX_SPOOFED),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (s, n) = (stop.clone(), sent.clone());
    let flood = spawn_in(&att, move || {
        sender::flood(
            &att_if,
            &frames,
            &s,
            &n,
            sender::Budget {
                max_packets: 20_000_000,
                max_time: Duration::from_secs(10),
                pace: None,
            },
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    // A load balancer's probes during the flood, over its own link.
    let probes = spawn_in(&lb, || probe_latencies(Duration::from_secs(4)));
    let sent0 = sent.load(std::sync::atomic::Ordering::Relaxed);
    let flood_cpu = cpu_pct(pid, Duration::from_secs(5));
    let probes = join(probes);
    let attack_pps = (sent.load(std::sync::atomic::Ordering::Relaxed) - sent0) as f64 / 5.0;
    let flood_rss = rss_kib(pid);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    join(flood)?;
    let flood_rss = flood_rss?;
    t.row(vec![
        "daemon RSS, under spoofed flood".into(),
        format!("{:.1} MiB", flood_rss as f64 / 1024.0),
        "< 32 MiB".into(),
        verdict(Some(flood_rss < 32 * 1024)),
    ]);
    t.row(vec![
        "daemon CPU, under spoofed flood".into(),
        format!(
            "{:.2}% of a core ({attack_pps:.0} packets/s from {MAX_SPOOFED} sources)",
            flood_cpu?
        ),
        "-".into(),
        "-".into(),
    ]);
    let (readyz, agent) = probes?;
    for (what, p) in [("`/readyz`", readyz), ("agent-check", agent)] {
        let p99 = percentile(&p.ok, 0.99);
        let met = p.failed == 0 && !p.ok.is_empty() && p99 < 5.0;
        t.row(vec![
            format!(
                "{what} latency under spoofed flood, median / p99 / max ({} answered, {} unanswered in 2 s)",
                p.ok.len(),
                p.failed
            ),
            format!(
                "{:.2} / {p99:.2} / {:.2} ms",
                percentile(&p.ok, 0.5),
                p.ok.last().copied().unwrap_or(0.0)
            ),
            "p99 < 5 ms".into(),
            verdict(Some(met)),
        ]);
    }
    // Slow and idle clients on the health port: ten sources, more connections in all than the
    // ordinary pool holds, while the load balancer probes.
    let per_source = guard::serve::http::MAX_CONNECTIONS / slow_sources.len() + 10;
    let to: std::net::SocketAddr = HEALTH_LISTEN.parse()?;
    let srcs = slow_sources.clone();
    let holders = spawn_in(&slow, move || crate::slow::hold(&srcs, per_source, to, 9));
    std::thread::sleep(Duration::from_secs(3));
    let probes = spawn_in(&lb, || probe_latencies(Duration::from_secs(4)));
    let slow_cpu = cpu_pct(pid, Duration::from_secs(4));
    let slow_rss = rss_kib(pid);
    let probes = join(probes);
    let held = join(holders)?;
    let (readyz, _) = probes?;
    let p99 = percentile(&readyz.ok, 0.99);
    t.row(vec![
        format!(
            "`/readyz` latency of the allow-listed load balancer under {} slow and idle clients \
             ({} connections made by 10 sources), median / p99 / max ({} answered, {} unanswered \
             in 2 s)",
            held.slots,
            held.connections,
            readyz.ok.len(),
            readyz.failed
        ),
        format!(
            "{:.2} / {p99:.2} / {:.2} ms",
            percentile(&readyz.ok, 0.5),
            readyz.ok.last().copied().unwrap_or(0.0)
        ),
        "all answered, p99 < 100 ms".into(),
        verdict(Some(
            readyz.failed == 0 && !readyz.ok.is_empty() && p99 < 100.0,
        )),
    ]);
    t.row(vec![
        "daemon CPU and RSS under the slow clients".into(),
        format!(
            "{:.2}% of a core; {:.1} MiB",
            slow_cpu?,
            slow_rss? as f64 / 1024.0
        ),
        "-".into(),
        "-".into(),
    ]);

    // deny add round trips, each a fresh CLI process, as an operator's script would run it.
    let mut rtt = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let cidr = format!("{}/32", Ipv4Addr::from(0xc613_0000 | i));
        let t0 = Instant::now();
        daemon.cli_ok(&["deny", "add", &cidr])?;
        rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    rtt.sort_by(f64::total_cmp);
    t.row(vec![
        "`guard deny add` round trip, median / p99 (1,000 calls)".into(),
        format!(
            "{:.2} / {:.2} ms",
            percentile(&rtt, 0.5),
            percentile(&rtt, 0.99)
        ),
        "p99 < 20 ms".into(),
        verdict(Some(percentile(&rtt, 0.99) < 20.0)),
    ]);

    let deny_pin = guard::ebpf::versioned_dir(&daemon.pin_dir)
        .join("maps")
        .join(guard_common::map_names::DENY_V4);
    for (n, base) in [(100_000u32, 0xf000_0000u32), (1_000_000, 0xf100_0000)] {
        let file = daemon.tmp.join(format!("deny-{n}.txt"));
        let text: String = (0..n)
            .map(|i| format!("{}/32\n", Ipv4Addr::from(base + i)))
            .collect();
        fs::write(&file, text)?;
        let t0 = Instant::now();
        daemon.cli_ok(&["deny", "import", &file.to_string_lossy()])?;
        let secs = t0.elapsed().as_secs_f64();
        let mem = memlock(&deny_pin).map_or_else(
            |e| format!("memlock unknown: {e}"),
            |b| format!("{:.1} MiB map memlock", b as f64 / (1024.0 * 1024.0)),
        );
        t.row(vec![
            format!("`guard deny import` of {n} CIDRs"),
            format!("{secs:.2} s; {mem}"),
            if n == 1_000_000 {
                "< 5 s".into()
            } else {
                "-".into()
            },
            if n == 1_000_000 {
                verdict(Some(secs < 5.0))
            } else {
                "-".into()
            },
        ]);
    }
    // The same round trip with the million entries loaded: each add is one row in the
    // store (issue #12), not a rewrite of every list. What the daemon writes for each (its
    // WAL frames and its reply) is read from its I/O counters around the call.
    let mut rtt = Vec::with_capacity(1000);
    let mut appended = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let cidr = format!("{}/32", Ipv4Addr::from(0xc613_1000 | i));
        let before = written_bytes(pid)?;
        let t0 = Instant::now();
        daemon.cli_ok(&["deny", "add", &cidr])?;
        rtt.push(t0.elapsed().as_secs_f64() * 1000.0);
        appended.push(written_bytes(pid)?.saturating_sub(before) as f64);
    }
    rtt.sort_by(f64::total_cmp);
    appended.sort_by(f64::total_cmp);
    t.row(vec![
        "`guard deny add` round trip with 1,101,000 entries loaded, median / p99 (1,000 calls)"
            .into(),
        format!(
            "{:.2} / {:.2} ms",
            percentile(&rtt, 0.5),
            percentile(&rtt, 0.99)
        ),
        "p99 < 20 ms".into(),
        verdict(Some(percentile(&rtt, 0.99) < 20.0)),
    ]);
    let per_write = percentile(&appended, 0.5);
    t.row(vec![
        "bytes the daemon writes per `deny add` with 1,101,000 entries loaded (its WAL frames and its reply; a new ban is the same one row), median"
            .into(),
        format!("{:.1} KiB", per_write / 1024.0),
        "one small write, < 64 KiB".into(),
        verdict(Some(per_write > 0.0 && per_write < 64.0 * 1024.0)),
    ]);
    let loaded_rss = rss_kib(pid)?;
    t.row(vec![
        "daemon RSS, with the 1,102,000 entries above".into(),
        format!("{:.1} MiB", loaded_rss as f64 / 1024.0),
        "-".into(),
        "-".into(),
    ]);

    t.note(
        "The state store (SQLite in WAL mode) writes a change as one transaction: a `deny add` \
         upserts one row of list_entries, a new ban one row of bans in the tick's transaction, \
         so both append the same few pages to the WAL (what the daemon wrote, measured), \
         whatever the size of the lists."
            .to_string(),
    );
    t.note(format!(
        "The health probes connect from a load balancer's namespace (its address allow-listed, \
         as the operator guide advises), over its own guarded link, every 10 ms, to {HEALTH_LISTEN} (`GET /readyz`, reading the whole response) and {AGENT_LISTEN} \
         (reading the agent line), one at a time, a new TCP connection each, while the spoofed \
         flood arrives on the server's other link. (Probes sharing the flooded veth itself mostly \
         wait out SYN retransmissions: on veth the flood overruns the receive ring, which no \
         filter behind it can prevent.)"
    ));
    t.note(format!(
        "The slow clients come from ten addresses of their own link (198.18.5.2 to .11, not \
         allow-listed), {} connections each to {HEALTH_LISTEN}, half trickling a request head a \
         byte every 300 ms, half silent, each connecting again when cut off (the header-read \
         timeout), for 9 s; the load balancer probes in the middle 4 s.",
        guard::serve::http::MAX_CONNECTIONS / 10 + 10
    ));
    println!("{}", t.markdown());
    section.tables.push(t);
    drop(daemon);
    Ok(())
}

/// Sequential `/readyz` and agent-check round trips for `window`, in milliseconds, sorted;
/// a probe that fails (refused, reset, or no answer within its 2 s timeout) is counted apart.
fn probe_latencies(window: Duration) -> Result<(Probes, Probes)> {
    use std::io::{Read, Write};
    fn once(addr: &str, request: &[u8], valid: fn(&[u8]) -> bool) -> Option<f64> {
        let t0 = Instant::now();
        let mut c =
            std::net::TcpStream::connect_timeout(&addr.parse().ok()?, PROBE_TIMEOUT).ok()?;
        c.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
        c.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
        c.write_all(request).ok()?;
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).ok()?;
        valid(&answer).then(|| t0.elapsed().as_secs_f64() * 1000.0)
    }
    let (mut readyz, mut agent) = (Probes::default(), Probes::default());
    let start = Instant::now();
    // Paced like a (busy) load balancer: a pair of probes every 10 ms, not back to back.
    while start.elapsed() < window && readyz.ok.len() + readyz.failed < 20_000 {
        std::thread::sleep(Duration::from_millis(10));
        readyz.record(once(
            HEALTH_LISTEN,
            b"GET /readyz HTTP/1.1\r\nHost: guard\r\nConnection: close\r\n\r\n",
            |a| a.starts_with(b"HTTP/1.1 "),
        ));
        agent.record(once(AGENT_LISTEN, b"", |a| a.ends_with(b"\n")));
    }
    readyz.ok.sort_by(f64::total_cmp);
    agent.ok.sort_by(f64::total_cmp);
    Ok((readyz, agent))
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Round-trip times of the probes that were answered, and how many were not.
#[derive(Default)]
struct Probes {
    ok: Vec<f64>,
    failed: usize,
}

impl Probes {
    fn record(&mut self, r: Option<f64>) {
        match r {
            Some(ms) => self.ok.push(ms),
            None => self.failed += 1,
        }
    }
}
