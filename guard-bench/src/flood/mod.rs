//! Section 2: floods that hurt. Services pinned to the server's CPU, legitimate clients at
//! steady rates, and floods from one sender CPU (UDP, SYN, connections; one source, spoofed,
//! IPv6), against no protection, nftables and the guard, all on the same veth NAPI path.

mod attacks;
mod clients;
mod live;
mod modes;
mod report;
mod services;
mod topology;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use self::{
    attacks::{Attack, Traffic},
    clients::{ANSWER_TIMEOUT, CONNECT_TIMEOUT, Clients, Kind, Summary, summarize},
    live::{ProgStats, StatsOn},
    modes::{Limits, Protection, Setup, Shield},
    services::Services,
    topology::{SERVER_CPU, Topology},
};
use crate::{
    cpu::{self, CpuShare, CpuTicks},
    netns::xdp_prog_id,
    report::{Section, Table},
    sender::{Budget, Frames},
};

pub struct Options {
    /// Seconds of each scenario's measurement window.
    pub secs: u64,
    /// Attack packets (or connections) at most per scenario.
    pub max_packets: u64,
    /// The pass-all program (guard-ebpf's `guard-floor`).
    pub floor_object: PathBuf,
    /// The `guard` binary; the guard mode runs the real daemon.
    pub guard_bin: Option<PathBuf>,
}

/// Section 2, and the live per-packet cost it measured for section 1.
pub struct Results {
    pub section: Section,
    pub live: Option<Table>,
}

/// The clients run this long before the flood starts, as real clients were there first.
const LEAD: Duration = Duration::from_millis(500);
/// The flood runs this long before the window opens, so the window meets it at full rate.
const WARMUP: Duration = Duration::from_secs(1);
/// Pause between scenarios, for the queues to drain.
const SETTLE: Duration = Duration::from_millis(500);

/// One scenario's figures, over its measurement window.
pub struct Outcome {
    pub protection: Protection,
    pub traffic: Traffic,
    /// The control run: the flood paced to this many packets/s (the rate the guard's run met).
    pub paced: Option<u64>,
    pub clients: Vec<(Kind, Summary)>,
    /// Flood packets per second put on the link.
    pub sent_pps: Option<f64>,
    /// Share of the window in which the sender made no progress, in percent (AF_PACKET
    /// floods only).
    pub stalled_pct: Option<f64>,
    /// Requests per second the connection flood got answered.
    pub flood_answered_ps: Option<f64>,
    pub dropped_pps: Option<f64>,
    pub link_drop_pps: f64,
    pub backlog_drop_pps: f64,
    /// The server CPU's time.
    pub cpu: CpuShare,
    /// The attacker-facing program's mean ns per run, and runs.
    pub xdp: Option<(f64, u64)>,
}

impl Outcome {
    /// The protection, and for the control run its pace.
    pub fn label(&self) -> String {
        match self.paced {
            None => self.protection.name().to_owned(),
            Some(_) => format!("{}, flood at the guard's rate", self.protection.name()),
        }
    }

    pub fn client(&self, kind: Kind) -> Option<&Summary> {
        self.clients
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| s)
    }
}

/// What the report says about how the section ran.
pub struct RunInfo {
    pub opts_secs: u64,
    pub max_packets: u64,
    pub limits: Limits,
    pub work_ns: f64,
    pub sysctl_before: String,
    pub sysctl_after: String,
}

pub fn run(opts: &Options) -> Results {
    let mut section = Section::new(
        "2. Floods that hurt (real packets on veth)",
        "Floods from one sender CPU against services pinned to the server's CPU, with no \
         protection, nftables and the guard (the README's Benchmarks section describes the \
         setup).",
    );
    let live = match measure(opts) {
        Ok((outcomes, info)) => {
            section.intro = report::intro(&info);
            let (tables, live) = report::tables(&outcomes, &info);
            for t in tables {
                println!("{}", t.markdown());
                section.tables.push(t);
            }
            Some(live)
        }
        Err(e) => {
            section.failure = Some(format!("{e:#}"));
            None
        }
    };
    Results { section, live }
}

fn measure(opts: &Options) -> Result<(Vec<Outcome>, RunInfo)> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    if cpus <= SERVER_CPU {
        bail!(
            "this section needs CPUs 0 and 1 (one for the peers, one for the server); found {cpus}"
        );
    }
    let guard = opts.guard_bin.as_deref().context(
        "no guard binary given (GUARD_BIN or --guard-bin; `cargo xtask bench` passes it)",
    )?;
    let limits = Limits::of_defaults(guard)?;
    let work_ns = services::work_ns();
    let top = Topology::new(&opts.floor_object).context("building the flood testbed")?;
    let services = Services::start(&top.server)?;
    let stats = StatsOn::enable()?;
    let setup = Setup {
        floor_object: &opts.floor_object,
        guard,
        limits: &limits,
    };
    let frames: Vec<(Traffic, Option<Arc<Frames>>)> = Traffic::ALL
        .iter()
        .map(|&t| (t, t.frames(&top).map(Arc::new)))
        .collect();
    let frames_of = |t: Traffic| {
        frames
            .iter()
            .find(|(x, _)| *x == t)
            .and_then(|(_, f)| f.clone())
    };

    // A first, discarded run through the pass-all program: the first flood after XDP attaches
    // and the first connections after the namespaces come up are slower (page faults,
    // neighbour entries, CPU frequency) and would make a poor baseline.
    let bounds = Bounds {
        secs: opts.secs,
        max_packets: opts.max_packets,
        pace: None,
    };
    {
        let shield = Shield::raise(Protection::None, &top, &setup, 0)?;
        let warm = Bounds { secs: 1, ..bounds };
        let t = Traffic::UdpSpoofed;
        scenario(&top, &shield, Protection::None, t, frames_of(t), warm).context("warm-up run")?;
    }

    // Each flood against the three protections in turn, so that drift on a shared machine
    // touches them alike; every scenario raises its protection afresh.
    let mut outcomes = Vec::new();
    let mut run = 0;
    for traffic in Traffic::ALL {
        let extra: &[Protection] = if traffic.syn() {
            &[Protection::GuardNoCookies]
        } else {
            &[]
        };
        for &protection in Protection::ALL.iter().chain(extra) {
            crate::signal::check()?;
            run += 1;
            let shield = Shield::raise(protection, &top, &setup, run)
                .with_context(|| format!("raising {}", protection.name()))?;
            if protection.is_guard() {
                // As on a host: the clients talk before the attack, long enough to become
                // known (known_after_secs) and for the services' rates to be learned (the
                // first seconds are only learned).
                learn(&top).context("the clients before the attack")?;
            }
            let o = scenario(
                &top,
                &shield,
                protection,
                traffic,
                frames_of(traffic),
                bounds,
            )
            .with_context(|| format!("{} under {}", protection.name(), traffic.name()))?;
            drop(shield);
            outcomes.push(o);
            std::thread::sleep(SETTLE);
        }
        // Where the guard dropped little of a flood that reached it much slower than the
        // unprotected server, the control: no protection, the flood paced to the guard's rate.
        // It tells whether the clients were spared by the guard or by the slower flood.
        if let Some(rate) = report::control_pace(&outcomes, traffic) {
            crate::signal::check()?;
            run += 1;
            let shield = Shield::raise(Protection::None, &top, &setup, run)?;
            let paced = Bounds {
                pace: Some(rate),
                ..bounds
            };
            let o = scenario(
                &top,
                &shield,
                Protection::None,
                traffic,
                frames_of(traffic),
                paced,
            )
            .with_context(|| format!("the control run under {}", traffic.name()))?;
            drop(shield);
            outcomes.push(o);
            std::thread::sleep(SETTLE);
        }
    }
    services.stop().context("the server's services")?;
    let info = RunInfo {
        opts_secs: opts.secs,
        max_packets: opts.max_packets,
        limits,
        work_ns,
        sysctl_before: stats.before.clone(),
        sysctl_after: {
            drop(stats);
            live::read_sysctl()
        },
    };
    Ok((outcomes, info))
}

/// How long a scenario measures, and how much (and how fast) its flood may send.
#[derive(Clone, Copy)]
struct Bounds {
    secs: u64,
    max_packets: u64,
    pace: Option<u64>,
}

/// A counter read by another process (ip, nft, the guard CLI), with when it returned: under a
/// flood such a process can wait long for a CPU, so its reading is timed on its own.
type Timed = (Instant, u64);

/// Per second between two timed readings.
fn rate_between((ta, x): Timed, (tb, y): Timed) -> f64 {
    y.saturating_sub(x) as f64 / (tb - ta).as_secs_f64().max(1e-3)
}

/// The counters read at both ends of a window.
struct Snapshot {
    at: Instant,
    sent: Option<Timed>,
    flood_answered: u64,
    /// Read first and timed apart: `guard stats` and nft can take a good part of a second
    /// under a spoofed flood.
    dropped: Option<Timed>,
    link: Timed,
    backlog: u64,
    cpu: CpuTicks,
    prog: Option<ProgStats>,
}

impl Snapshot {
    /// Reads every counter from a thread pinned to the peers' CPU, so that the processes it
    /// runs (ip, nft, bpftool, the guard CLI) inherit that CPU: on the server's CPU a flood's
    /// softirq work can keep a process from running for seconds, and its reading with it.
    fn take(
        top: &Topology,
        shield: &Shield,
        attack: Option<&Attack>,
        prog: Option<u32>,
    ) -> Result<Self> {
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::cpu::pin_current_thread(topology::PEER_CPU)?;
                Self::read(top, shield, attack, prog)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the counter reader panicked"))?
        })
    }

    fn read(
        top: &Topology,
        shield: &Shield,
        attack: Option<&Attack>,
        prog: Option<u32>,
    ) -> Result<Self> {
        let dropped = shield.dropped()?.map(|d| (Instant::now(), d));
        let timed = |r: Result<u64>| r.map(|v| (Instant::now(), v));
        Ok(Self {
            at: Instant::now(),
            sent: attack.map(|a| timed(a.packets(top))).transpose()?,
            flood_answered: attack.map_or(0, Attack::answered),
            dropped,
            link: timed(top.link_drops())?,
            backlog: cpu::backlog_drops(SERVER_CPU)?,
            cpu: cpu::ticks(SERVER_CPU)?,
            prog: prog.map(ProgStats::of).transpose()?,
        })
    }
}

/// Sleeps through the window, sampling an AF_PACKET flood's progress every `STALL_TICK`:
/// returns the ticks in which it sent next to nothing, and all ticks. A flood that stopped in
/// the window (its bound reached, a sender that could not send) did not test the protection,
/// whatever its average over the window says.
fn watch(
    attack: Option<&Attack>,
    traffic: Traffic,
    top: &Topology,
    window: Duration,
) -> Result<Option<(u64, u64)>> {
    let Some(a) = attack.filter(|_| traffic != Traffic::Connections) else {
        std::thread::sleep(window);
        return Ok(None);
    };
    let end = Instant::now() + window;
    let (mut idle, mut all) = (0, 0);
    let mut last = a.packets(top)?;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        std::thread::sleep(left.min(STALL_TICK));
        let now = a.packets(top)?;
        all += 1;
        // Fewer than 1,000 frames in 50 ms is under 20,000 packets/s: nothing, for a flood.
        if now - last < 1000 {
            idle += 1;
        }
        last = now;
    }
    Ok(Some((idle, all)))
}

/// How long the clients talk to a fresh guard before a flood: known after 10 s of good
/// standing, and the learned ceilings need 10 s of traffic; a little over both.
const LEARN: Duration = Duration::from_secs(13);

/// Runs the clients for `LEARN` without a flood, and throws their figures away.
fn learn(top: &Topology) -> Result<()> {
    let clients = Clients::start(&top.client, Instant::now());
    std::thread::sleep(LEARN);
    clients.finish().map(|_| ())
}

/// The most a flood runs: the warm-up, the window, the clients' last timeouts, and 10 s of
/// room for reading counters.
fn flood_bound(secs: u64) -> Duration {
    WARMUP
        + Duration::from_secs(secs)
        + CONNECT_TIMEOUT
        + 2 * ANSWER_TIMEOUT
        + Duration::from_secs(10)
}

/// How often `watch` samples a flood's progress.
const STALL_TICK: Duration = Duration::from_millis(50);

fn scenario(
    top: &Topology,
    shield: &Shield,
    protection: Protection,
    traffic: Traffic,
    frames: Option<Arc<Frames>>,
    opts: Bounds,
) -> Result<Outcome> {
    eprintln!(
        "guard-bench: flood: {} under {}{}",
        protection.name(),
        traffic.name(),
        opts.pace
            .map_or(String::new(), |r| format!(", paced to {r} packets/s"))
    );
    let prog = xdp_prog_id(&top.server, &top.server_ifaces[1]).ok();
    let epoch = Instant::now();
    let clients = Clients::start(&top.client, epoch);
    std::thread::sleep(LEAD);
    // The flood outlasts the clients' last answers (up to a connect and an answer timeout);
    // the bound is only a safety net (the flood is stopped when the clients are done), with
    // room for the slow counter readings.
    let max_time = flood_bound(opts.secs);
    let budget = Budget {
        max_packets: opts.max_packets,
        max_time,
        pace: opts.pace,
    };
    let mut attack = Attack::start(traffic, top, frames, budget);
    if attack.is_some() {
        std::thread::sleep(WARMUP);
    }
    let a = Snapshot::take(top, shield, attack.as_ref(), prog)?;
    let start = epoch.elapsed().as_nanos() as u64;
    let stall = watch(
        attack.as_ref(),
        traffic,
        top,
        Duration::from_secs(opts.secs),
    )?;
    let end = epoch.elapsed().as_nanos() as u64;
    let b = Snapshot::take(top, shield, attack.as_ref(), prog)?;
    let records = clients.finish()?;
    if let Some(at) = attack.as_mut() {
        at.stop()?;
    }
    let secs = (b.at - a.at).as_secs_f64();
    let per_s = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    let clients = records
        .into_iter()
        .map(|(kind, r)| {
            let timeout = match kind {
                Kind::NewConnections => CONNECT_TIMEOUT,
                Kind::Udp | Kind::KeepAlive => ANSWER_TIMEOUT,
            };
            (kind, summarize(kind, &r, start, end, timeout))
        })
        .collect();
    Ok(Outcome {
        protection,
        traffic,
        paced: opts.pace,
        clients,
        sent_pps: a.sent.zip(b.sent).map(|(x, y)| rate_between(x, y)),
        stalled_pct: stall.map(|(idle, all)| 100.0 * idle as f64 / all.max(1) as f64),
        flood_answered_ps: (traffic == Traffic::Connections)
            .then(|| per_s(a.flood_answered, b.flood_answered)),
        dropped_pps: a.dropped.zip(b.dropped).map(|(x, y)| rate_between(x, y)),
        link_drop_pps: rate_between(a.link, b.link),
        backlog_drop_pps: per_s(a.backlog, b.backlog),
        cpu: b.cpu.since(&a.cpu),
        xdp: a.prog.zip(b.prog).and_then(|(x, y)| y.since(&x)),
    })
}
