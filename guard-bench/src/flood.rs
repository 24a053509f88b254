//! Section 2: flood survival on veth. A server namespace runs a TCP request/response service,
//! a client namespace counts completed transactions, an attacker namespace floods UDP from
//! one source, then from more than 100,000 spoofed ones; with no protection, with nftables
//! per-source limiting, and with the guard.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use guard::{
    datapath::Datapath,
    ebpf::{AttachMode, KernelDatapath, StartOptions},
};
use guard_common::{Config, reason};

use crate::{
    netns::{Testbed, join, run_in, sh, sh_out, spawn_in},
    report::{Section, Table, verdict},
    sender::{self, Frames, MAX_SPOOFED},
};

pub struct Options {
    /// Seconds the client runs per scenario.
    pub secs: u64,
    /// Attack packets at most per scenario.
    pub max_packets: u64,
    /// Sending threads in the attacker namespace.
    pub attack_threads: usize,
}

const SERVER_C: &str = "198.18.1.1";
const CLIENT: &str = "198.18.1.2";
const SERVER_A: &str = "198.18.2.1";
const ATTACKER: &str = "198.18.2.2";
const PORT: u16 = 7000;
/// Request and response size of one transaction.
const MESSAGE: usize = 64;
/// The flood runs this long before the client starts, so the client meets it at full rate.
const WARMUP: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protection {
    None,
    Nftables,
    Guard,
}

impl Protection {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nftables => "nftables",
            Self::Guard => "guard",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Quiet,
    OneSource,
    Spoofed,
}

impl Traffic {
    fn name(self) -> &'static str {
        match self {
            Self::Quiet => "no flood",
            Self::OneSource => "UDP flood, 1 source",
            Self::Spoofed => "UDP flood, spoofed sources",
        }
    }
}

/// The three namespaces and their links. Deleted (with everything in them) on drop.
struct Topology {
    bed: Testbed,
    server: String,
    client: String,
    attacker: String,
    /// Server-side interfaces: towards the client, towards the attacker.
    server_ifaces: [String; 2],
    attack_iface: String,
    attack_mac: [u8; 6],
    server_attack_mac: [u8; 6],
}

pub(crate) fn mac_of(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let text = sh_out(&["ip", "-n", ns, "-j", "link", "show", "dev", iface])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let s = json
        .pointer("/0/address")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("no MAC address for {iface}"))?;
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

impl Topology {
    fn new() -> Result<Self> {
        let mut bed = Testbed::new();
        let server = bed.netns("srv")?;
        let client = bed.netns("cli")?;
        let attacker = bed.netns("att")?;
        let (sc, cs) = bed.link(
            &server,
            Some(&format!("{SERVER_C}/24")),
            &client,
            Some(&format!("{CLIENT}/24")),
        )?;
        let (sa, att) = bed.link(
            &server,
            Some(&format!("{SERVER_A}/24")),
            &attacker,
            Some(&format!("{ATTACKER}/24")),
        )?;
        let _ = cs;
        // Spoofed sources arrive on the attacker's link: no reverse-path filter may drop them
        // before the protection under test sees them, and replies (ICMP port unreachable)
        // route back towards the attacker, whose namespace does not forward them.
        for conf in ["all", "default", sc.as_str(), sa.as_str()] {
            sh(&[
                "ip",
                "netns",
                "exec",
                &server,
                "sysctl",
                "-qw",
                &format!("net.ipv4.conf.{conf}.rp_filter=0"),
            ])?;
        }
        sh(&[
            "ip", "-n", &server, "route", "add", "default", "via", ATTACKER,
        ])?;
        sh(&[
            "ip", "netns", "exec", &client, "ping", "-c", "1", "-W", "2", SERVER_C,
        ])?;
        sh(&[
            "ip", "netns", "exec", &attacker, "ping", "-c", "1", "-W", "2", SERVER_A,
        ])?;
        Ok(Self {
            attack_mac: mac_of(&attacker, &att)?,
            server_attack_mac: mac_of(&server, &sa)?,
            server_ifaces: [sc, sa],
            attack_iface: att,
            bed,
            server,
            client,
            attacker,
        })
    }

    /// Dropped packets on the attacker's link: server side rx, attacker side tx.
    fn link_drops(&self) -> Result<u64> {
        let read = |ns: &str, dev: &str, dir: &str| -> Result<u64> {
            let text = sh_out(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
            let json: serde_json::Value = serde_json::from_str(&text)?;
            Ok(json
                .pointer(&format!("/0/stats64/{dir}/dropped"))
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0))
        };
        Ok(read(&self.server, &self.server_ifaces[1], "rx")?
            + read(&self.attacker, &self.attack_iface, "tx")?)
    }
}

/// The TCP request/response service: echoes each `MESSAGE`-byte request. Runs in the server
/// namespace until `stop`.
fn serve(stop: Arc<AtomicBool>) -> Result<()> {
    let listener = TcpListener::bind((SERVER_C, PORT)).context("bind the echo service")?;
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                conn.set_nonblocking(false)?;
                conn.set_nodelay(true)?;
                // The handler inherits the server namespace from this thread; it ends when
                // the client closes the connection.
                std::thread::spawn(move || {
                    let mut buf = [0u8; MESSAGE];
                    while conn.read_exact(&mut buf).is_ok() {
                        if conn.write_all(&buf).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
    Ok(())
}

/// What the legitimate client achieved.
struct ClientRun {
    transactions: u64,
    elapsed: Duration,
    /// Microseconds per transaction, sorted.
    latencies: Vec<u32>,
    /// Set if a transaction did not complete within the read timeout.
    stalled: Option<String>,
}

impl ClientRun {
    fn tps(&self) -> f64 {
        self.transactions as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Option<u32> {
        if self.latencies.is_empty() {
            return None;
        }
        let i = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        Some(self.latencies[i])
    }
}

/// One connection, one transaction at a time, for `secs` (in the client namespace).
fn client(secs: u64) -> Result<ClientRun> {
    let to: SocketAddr = format!("{SERVER_C}:{PORT}").parse()?;
    let mut conn = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .context("connect to the echo service")?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    conn.set_write_timeout(Some(Duration::from_secs(3)))?;
    let request = [0x42u8; MESSAGE];
    let mut reply = [0u8; MESSAGE];
    let mut latencies = Vec::with_capacity(200_000);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut stalled = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        if let Err(e) = conn
            .write_all(&request)
            .and_then(|()| conn.read_exact(&mut reply))
        {
            stalled = Some(format!("a transaction failed after {:?}: {e}", t - start));
            break;
        }
        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(ClientRun {
        transactions: latencies.len() as u64,
        elapsed,
        latencies,
        stalled,
    })
}

/// Host-wide CPU time from the first line of /proc/stat: (softirq, total) in clock ticks.
fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|w| w.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already inside user and nice.
    let total = v.iter().take(8).sum();
    Ok((*v.get(6).context("no softirq column in /proc/stat")?, total))
}

/// A protection in place on the server; removed on drop.
enum Shield {
    None,
    Nftables {
        server: String,
    },
    Guard {
        datapath: Box<KernelDatapath>,
        pin_dir: PathBuf,
    },
}

/// The burst allowed above a per-source budget of `limit` packets/s: a tenth of a second's worth.
fn burst(limit: u64) -> u64 {
    (limit / 10).max(100)
}

/// The nftables ruleset: per-source packet budgets like the guard's token buckets (`N`
/// packets/s with a burst of `N / 10`, IPv4 per address, IPv6 per /64), over budget dropped. It
/// hooks prerouting at raw priority, before connection tracking, the earliest place a
/// per-source rule can live in nftables short of the netdev family.
fn nft_ruleset(limit: u64) -> String {
    let burst = burst(limit);
    format!(
        "table inet guard_bench {{
    # Per-source meters; an entry is forgotten 10 s after its source goes quiet.
    set meter_v4 {{
        type ipv4_addr
        size 262144
        flags dynamic,timeout
        timeout 10s
    }}
    set meter_v6 {{
        type ipv6_addr
        size 262144
        flags dynamic,timeout
        timeout 10s
    }}
    chain prerouting {{
        type filter hook prerouting priority raw; policy accept;
        meta nfproto ipv4 update @meter_v4 {{ ip saddr limit rate over {limit}/second burst {burst} packets }} counter drop
        meta nfproto ipv6 update @meter_v6 {{ ip6 saddr & ffff:ffff:ffff:ffff:: limit rate over {limit}/second burst {burst} packets }} counter drop
    }}
}}
"
    )
}

impl Shield {
    fn raise(p: Protection, top: &Topology, limit: u64) -> Result<Self> {
        match p {
            Protection::None => Ok(Self::None),
            Protection::Nftables => {
                let file = std::env::temp_dir().join(format!("guard-bench-{}.nft", top.bed.tag));
                fs::write(&file, nft_ruleset(limit))?;
                let r = sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &top.server,
                    "nft",
                    "-f",
                    &file.to_string_lossy(),
                ]);
                let _ = fs::remove_file(&file);
                r.context("loading the nftables ruleset in the server namespace")?;
                Ok(Self::Nftables {
                    server: top.server.clone(),
                })
            }
            Protection::Guard => {
                let pin_dir = PathBuf::from(format!("/sys/fs/bpf/guard-bench-{}", top.bed.tag));
                let opts = StartOptions {
                    interfaces: top.server_ifaces.to_vec(),
                    mode: AttachMode::Auto,
                    pin_dir: pin_dir.clone(),
                };
                // Attach from inside the server namespace: the interface names and the
                // netlink requests are resolved there.
                let started = run_in(&top.server, move || {
                    guard::ebpf::start(&opts).context("attaching the guard in the server namespace")
                });
                let mut loaded = match started {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = guard::ebpf::detach(&pin_dir);
                        return Err(e);
                    }
                };
                let shield_modes: Vec<String> = loaded
                    .attachments
                    .iter()
                    .map(|a| format!("{}: {}", a.iface, a.mode))
                    .collect();
                eprintln!("guard-bench: guard attached ({})", shield_modes.join(", "));
                let cfg = Config {
                    pps: limit,
                    burst: burst(limit),
                    // The client opens one connection per run; SYN floods are not this test's.
                    syn_pps: 100,
                    syn_burst: 100,
                    ban_ns: 60_000_000_000,
                    ..Config::default()
                };
                let set = loaded.datapath.set_config(&cfg);
                let shield = Self::Guard {
                    datapath: Box::new(loaded.datapath),
                    pin_dir,
                };
                set?;
                Ok(shield)
            }
        }
    }

    /// Packets the protection dropped so far.
    fn drops(&self) -> Result<Option<u64>> {
        match self {
            Self::None => Ok(None),
            Self::Nftables { server } => {
                let text = sh_out(&[
                    "ip",
                    "netns",
                    "exec",
                    server,
                    "nft",
                    "-j",
                    "list",
                    "table",
                    "inet",
                    "guard_bench",
                ])?;
                let json: serde_json::Value = serde_json::from_str(&text)?;
                let mut sum = 0;
                for item in json["nftables"].as_array().into_iter().flatten() {
                    for expr in item
                        .pointer("/rule/expr")
                        .and_then(serde_json::Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        sum += expr
                            .pointer("/counter/packets")
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(0);
                    }
                }
                Ok(Some(sum))
            }
            Self::Guard { datapath, .. } => {
                let mut sum = 0;
                for (_, c) in datapath.counters()? {
                    for (why, n) in c.packets.iter().enumerate().take(reason::WOULD_DROP) {
                        if reason::drops(why) {
                            sum += n;
                        }
                    }
                }
                Ok(Some(sum))
            }
        }
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        match self {
            Self::None => {}
            Self::Nftables { server } => {
                let _ = sh(&[
                    "ip",
                    "netns",
                    "exec",
                    server,
                    "nft",
                    "delete",
                    "table",
                    "inet",
                    "guard_bench",
                ]);
            }
            // Removing the pinned links detaches the program; the maps go with the fds.
            Self::Guard { pin_dir, .. } => {
                if let Err(e) = guard::ebpf::detach(pin_dir) {
                    eprintln!("guard-bench: detaching the guard: {e}");
                }
            }
        }
    }
}

/// A running flood; stopped (and joined) on drop.
struct Attack {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<u64>>>,
}

impl Attack {
    fn start(top: &Topology, frames: Arc<Frames>, opts: &Options) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let threads = opts.attack_threads.max(1);
        let max_packets = opts.max_packets / threads as u64;
        let max_time = WARMUP + Duration::from_secs(opts.secs + 5);
        let threads = (0..threads)
            .map(|_| {
                let (s, n, f) = (stop.clone(), sent.clone(), frames.clone());
                let iface = top.attack_iface.clone();
                spawn_in(&top.attacker, move || {
                    sender::flood(&iface, &f, &s, &n, max_packets, max_time)
                })
            })
            .collect();
        Self {
            stop,
            sent,
            threads,
        }
    }

    fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for t in self.threads.drain(..) {
            total += join(t)?;
        }
        Ok(total)
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One scenario's figures.
struct Outcome {
    protection: Protection,
    traffic: Traffic,
    client: ClientRun,
    attack_pps: Option<f64>,
    filter_drops: Option<u64>,
    link_drops: u64,
    softirq_pct: f64,
}

fn scenario(
    top: &Topology,
    shield: &Shield,
    protection: Protection,
    traffic: Traffic,
    frames: Option<Arc<Frames>>,
    opts: &Options,
) -> Result<Outcome> {
    eprintln!(
        "guard-bench: flood: protection {}, {}",
        protection.name(),
        traffic.name()
    );
    let mut attack = frames.map(|f| Attack::start(top, f, opts));
    if attack.is_some() {
        std::thread::sleep(WARMUP);
    }
    let sent0 = attack.as_ref().map(|a| a.sent.load(Ordering::Relaxed));
    let drops0 = shield.drops()?;
    let link0 = top.link_drops()?;
    let cpu0 = cpu_ticks()?;
    let secs = opts.secs;
    let t0 = Instant::now();
    let run = run_in(&top.client, move || client(secs));
    let window = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_ticks()?;
    let sent1 = attack.as_ref().map(|a| a.sent.load(Ordering::Relaxed));
    let drops1 = shield.drops()?;
    let link1 = top.link_drops()?;
    if let Some(a) = attack.as_mut() {
        a.stop()?;
    }
    // Let the queues drain before the next scenario.
    std::thread::sleep(Duration::from_secs(1));
    let client = run?;
    let attack_pps = sent0.zip(sent1).map(|(a, b)| (b - a) as f64 / window);
    let softirq_pct =
        100.0 * (cpu1.0 - cpu0.0) as f64 / (cpu1.1.saturating_sub(cpu0.1)).max(1) as f64;
    Ok(Outcome {
        protection,
        traffic,
        client,
        attack_pps,
        filter_drops: drops0.zip(drops1).map(|(a, b)| b - a),
        link_drops: link1.saturating_sub(link0),
        softirq_pct,
    })
}

/// Holds the CPUs out of deep idle states while it lives (PM QoS: /dev/cpu_dma_latency at 0,
/// kernel Documentation/power/pm_qos_interface.rst), so that a run with no flood, where the
/// CPUs idle between transactions, is not slowed by idle-exit latency that a flood hides.
struct NoDeepIdle(Option<std::fs::File>);

impl NoDeepIdle {
    fn hold() -> Self {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| f.write_all(&0i32.to_ne_bytes()).map(|()| f));
        match file {
            Ok(f) => Self(Some(f)),
            Err(e) => {
                eprintln!(
                    "guard-bench: cannot hold /dev/cpu_dma_latency at 0 ({e}); baselines may be noisy"
                );
                Self(None)
            }
        }
    }

    fn held(&self) -> bool {
        self.0.is_some()
    }
}

pub fn run(opts: &Options) -> Section {
    // The request is dropped (the file closed) at the end of the section.
    let qos = NoDeepIdle::hold();
    let mut section = Section::new(
        "2. Flood survival on veth (real packets)",
        &format!(
            "Three namespaces made for the run: a **server** running a TCP request/response \
             service (our own echo of {MESSAGE}-byte messages, in a thread inside the \
             namespace), a **client** ({CLIENT}) doing one transaction at a time on one \
             connection for {secs} s and counting completed transactions, and an **attacker** \
             ({ATTACKER}) sending 60-byte UDP frames to a closed port of the server as fast as \
             {threads} thread(s) can (AF_PACKET, qdisc bypassed, `sendmmsg` in batches of 256; at most \
             {max} packets and {max_s} s per scenario), first from its own address, then from \
             {MAX_SPOOFED} distinct spoofed addresses of 198.18.0.0/15. The flood starts 1 s \
             before the client; the no-flood runs of all three come first. Each link is a veth pair; the guard attaches to both \
             server-side veths (native XDP), nftables hooks the server's prerouting. Both get \
             the same per-source budget, derived from the measured baseline (2x the client's \
             own packet rate, so the legitimate client never meets it).",
            secs = opts.secs,
            max = opts.max_packets,
            max_s = opts.secs + 6,
            threads = opts.attack_threads,
        ),
    );
    if let Err(e) = measure(opts, &mut section, qos.held()) {
        section.failure = Some(format!("{e:#}"));
    }
    section
}

fn measure(opts: &Options, section: &mut Section, no_deep_idle: bool) -> Result<()> {
    let top = Topology::new().context("building the flood testbed")?;
    let stop_server = Arc::new(AtomicBool::new(false));
    let s = stop_server.clone();
    let server = spawn_in(&top.server, move || serve(s));
    // Stop the service however this function ends.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = StopOnDrop(stop_server.clone());
    std::thread::sleep(Duration::from_millis(200));

    let server_ip: Ipv4Addr = SERVER_A.parse()?;
    let attacker_ip: Ipv4Addr = ATTACKER.parse()?;
    let one = Arc::new(Frames::udp(
        top.attack_mac,
        top.server_attack_mac,
        server_ip,
        std::iter::once(attacker_ip),
    ));
    let spoofed = Arc::new(Frames::udp(
        top.attack_mac,
        top.server_attack_mac,
        server_ip,
        sender::spoofed_sources(MAX_SPOOFED),
    ));

    // A first, discarded run: the first connection after the namespaces come up is slower
    // (page faults, neighbour entries, CPU frequency), and would make a poor baseline.
    let secs = opts.secs.min(2);
    run_in(&top.client, move || client(secs)).context("warm-up run of the client")?;

    // The quiet runs first, all of them, so that none follows a flood's aftermath; the
    // first one sets the budget for the others.
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut limit = 0;
    let protections = [Protection::None, Protection::Nftables, Protection::Guard];
    for protection in protections {
        let shield = Shield::raise(protection, &top, limit)?;
        let o = scenario(&top, &shield, protection, Traffic::Quiet, None, opts)?;
        if protection == Protection::None {
            if o.client.transactions == 0 {
                bail!(
                    "the client completed no transaction without a flood: {}",
                    o.client.stalled.as_deref().unwrap_or("no error")
                );
            }
            // One request packet per transaction (ACKs ride on the next request), so
            // twice the client's transaction rate leaves it room, while a flood from one
            // source goes over within a fraction of a second.
            limit = ((o.client.tps() * 2.0 / 1000.0).ceil() as u64 * 1000).max(1000);
        }
        outcomes.push(o);
    }
    for protection in protections {
        let shield = Shield::raise(protection, &top, limit)?;
        for (traffic, frames) in [
            (Traffic::OneSource, one.clone()),
            (Traffic::Spoofed, spoofed.clone()),
        ] {
            let o = scenario(&top, &shield, protection, traffic, Some(frames), opts)?;
            outcomes.push(o);
        }
    }
    // In the table, each protection's rows together.
    outcomes.sort_by_key(|o| (o.protection as u8, o.traffic as u8));
    stop_server.store(true, Ordering::Relaxed);
    join(server)?;
    report(section, &outcomes, limit, no_deep_idle);
    Ok(())
}

fn report(section: &mut Section, outcomes: &[Outcome], limit: u64, no_deep_idle: bool) {
    let baseline = outcomes
        .iter()
        .find(|o| o.protection == Protection::None && o.traffic == Traffic::Quiet)
        .map_or(0.0, |o| o.client.tps());
    let pct = |o: &Outcome| 100.0 * o.client.tps() / baseline.max(f64::MIN_POSITIVE);
    let mut t = Table::new(
        "Legitimate transactions under flood",
        &[
            "protection",
            "traffic",
            "transactions/s",
            "% of baseline",
            "latency p50 / p99 (us)",
            "attack sent (pkt/s)",
            "dropped by protection",
            "dropped on the link",
            "softirq CPU (host)",
        ],
    );
    for o in outcomes {
        let mut tps = format!("{:.0}", o.client.tps());
        if let Some(s) = &o.client.stalled {
            tps += &format!(" (stalled: {s})");
        }
        t.row(vec![
            o.protection.name().to_owned(),
            o.traffic.name().to_owned(),
            tps,
            format!("{:.0}%", pct(o)),
            format!(
                "{} / {}",
                o.client
                    .percentile(0.5)
                    .map_or("-".into(), |v| v.to_string()),
                o.client
                    .percentile(0.99)
                    .map_or("-".into(), |v| v.to_string())
            ),
            o.attack_pps.map_or("-".into(), |p| format!("{p:.0}")),
            o.filter_drops.map_or("-".into(), |d| d.to_string()),
            o.link_drops.to_string(),
            format!("{:.1}%", o.softirq_pct),
        ]);
    }
    t.note(format!(
        "Baseline: no protection, no flood: {baseline:.0} transactions/s. Per-source budget for \
         nftables and the guard: {limit} packets/s, burst {}; the guard bans for 60 s \
         (nftables has no ban: it drops only what is over budget).",
        burst(limit)
    ));
    t.note(
        "Softirq CPU is host-wide (the `cpu` line of /proc/stat: softirq ticks over all ticks, \
         both CPUs), over the client's window. On veth the receiving side's softirq work runs \
         on the sending CPU, so the flood's cost is charged to the attacker's thread as much as \
         to the server; a physical NIC would charge it to the server alone.",
    );
    t.note(if no_deep_idle {
        "The CPUs were held out of deep idle states for this section (/dev/cpu_dma_latency \
         at 0), so that a no-flood run is not slowed by idle-exit latency that a flood would \
         hide. Differences of a few percent are within this machine's run-to-run noise."
    } else {
        "/dev/cpu_dma_latency could not be held at 0: a flood can lift the client above the \
         no-flood baseline, since with the CPUs kept busy the wake-ups skip the idle-state \
         exit latency. Differences of a few percent are within this machine's run-to-run noise."
    });
    t.note(
        "Dropped by protection: the guard's denied + banned + rate-limited + SYN-limited \
         counters, or the nftables drop rules' counters, over the client's window. Dropped on \
         the link: rx drops of the server's attacker-facing veth plus tx drops of the \
         attacker's veth.",
    );
    println!("{}", t.markdown());
    section.tables.push(t);

    let mut targets = Table::new(
        "Targets: guard >= 90% of baseline and above nftables",
        &[
            "flood",
            "guard",
            "nftables",
            ">= 90%",
            "> nftables",
            "why, if missed",
        ],
    );
    for traffic in [Traffic::OneSource, Traffic::Spoofed] {
        let find = |p| {
            outcomes
                .iter()
                .find(|o| o.protection == p && o.traffic == traffic)
        };
        let (Some(g), Some(n)) = (find(Protection::Guard), find(Protection::Nftables)) else {
            continue;
        };
        let (gp, np) = (pct(g), pct(n));
        let met90 = gp >= 90.0;
        let beats = gp > np;
        let mut why = Vec::new();
        if !met90 || !beats {
            if let Some(pps) = g.attack_pps {
                let sources = if traffic == Traffic::Spoofed {
                    MAX_SPOOFED as f64
                } else {
                    1.0
                };
                let per_source = pps / sources;
                let dropped = g.filter_drops.unwrap_or(0) as f64;
                let sent = pps * g.client.elapsed.as_secs_f64();
                if per_source < limit as f64 {
                    why.push(format!(
                        "each of the {sources:.0} sources sent about {per_source:.0} packets/s, \
                         under the per-source budget of {limit}: per-source state cannot tell \
                         this flood from legitimate traffic, so the guard passed {:.0}% of it",
                        100.0 * (1.0 - dropped / sent.max(1.0)).max(0.0)
                    ));
                } else {
                    why.push(format!(
                        "the guard dropped {:.0}% of the {pps:.0} packets/s; the rest of the \
                         loss is CPU contention on {} CPUs (softirq {:.1}% host-wide)",
                        100.0 * dropped / sent.max(1.0),
                        std::thread::available_parallelism().map_or(1, usize::from),
                        g.softirq_pct
                    ));
                }
            }
            if let Some(s) = &g.client.stalled {
                why.push(format!("the client stalled: {s}"));
            }
        }
        targets.row(vec![
            traffic.name().to_owned(),
            format!("{gp:.0}%"),
            format!("{np:.0}%"),
            verdict(Some(met90)),
            verdict(Some(beats)),
            if why.is_empty() {
                "-".to_owned()
            } else {
                why.join("; ")
            },
        ]);
    }
    println!("{}", targets.markdown());
    section.tables.push(targets);
}
