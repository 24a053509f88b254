//! Section 4: how long a ban made on one guard takes to be in force on
//! another over NATS JetStream KV: a real `nats-server -js` and two daemons on a bridge, a
//! hundred sources each flooding host a once, the time until host b lists each ban.
use std::{
    fs::{self, File},
    net::UdpSocket,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{Testbed, run_in, sh},
    report::{Section, Table},
};

pub const TITLE: &str = "4. Fleet: ban propagation";

const NATS: &str = "198.18.160.1";
const PORT: &str = "14223";
const HOSTS: [&str; 2] = ["198.18.160.11", "198.18.160.12"];
/// The hundred sources: 198.18.160.100 to .199, on the attacker's interface.
const SOURCES: u8 = 100;

pub fn run(guard: Option<&Path>) -> Section {
    let mut section = Section::new(
        TITLE,
        "Two guard daemons (hosts a and b) and a real `nats-server -js` (the Debian package), each \
         in its own namespace on one bridge. Each of a hundred sources sends one burst over host \
         a's limit; the time is from the end of the burst to host b's `guard bans` listing the \
         ban, polled every 5 ms through the CLI, so it includes a's detection, \
         the KV round trip, b's applying and one CLI call.",
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

/// The nats-server, a daemon's process and paths: killed and removed on drop.
struct Proc {
    child: Child,
    dir: PathBuf,
    pin_dir: Option<PathBuf>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = &self.pin_dir {
            let _ = fs::remove_dir_all(p);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn log_of(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn guard_cli(guard: &Path, socket: &Path, args: &[&str]) -> Result<Output> {
    Command::new(guard)
        .args(args)
        .env("GUARD_SOCKET", socket)
        .output()
        .context("run the guard CLI")
}

fn start_guard(guard: &Path, ns: &str, iface: &str, host: &str, tag: &str) -> Result<Proc> {
    let dir = std::env::temp_dir().join(format!("guard-bench-fleet-{tag}-{host}"));
    fs::create_dir_all(&dir)?;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/guard-bench-fleet-{tag}-{host}"));
    let config = dir.join("guard.toml");
    fs::write(
        &config,
        format!(
            "[datapath]\npin_dir = \"{}\"\n[control]\nsocket = \"{}\"\n[state]\ndir = \"{}\"\n\
             [limits]\npps = 10\nburst = 20\nban_seconds = 600\n\
             [health]\nlisten = \"\"\nagent_listen = \"\"\n\
             [fleet]\nservers = [\"nats://{NATS}:{PORT}\"]\nbucket = \"bench{tag}\"\nhost = \"{host}\"\npool = \"bench\"\n",
            pin_dir.display(),
            dir.join("guard.sock").display(),
            dir.join("state").display()
        ),
    )?;
    let log = File::create(dir.join("guard.log"))?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(guard)
        .args(["run", "--config"])
        .arg(&config)
        .args(["--iface", iface])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {} run", guard.display()))?;
    let mut p = Proc {
        child,
        dir,
        pin_dir: Some(pin_dir),
    };
    let socket = p.dir.join("guard.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = guard_cli(guard, &socket, &["fleet", "status", "--json"])?;
        if out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["connected"] == true)
        {
            return Ok(p);
        }
        if let Some(st) = p.child.try_wait()? {
            bail!("guard run exited ({st}): {}", log_of(&p.dir, "guard.log"));
        }
        if Instant::now() > deadline {
            bail!(
                "guard run was not in the fleet after 30 s: {}",
                log_of(&p.dir, "guard.log")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn banned(guard: &Path, socket: &Path, source: &str) -> Result<bool> {
    let out = guard_cli(guard, socket, &["bans", "--json"])?;
    if !out.status.success() {
        bail!("guard bans: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bans: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let want = format!("{source}/32");
    Ok(bans
        .as_array()
        .is_some_and(|b| b.iter().any(|b| b["source"].as_str() == Some(&want))))
}

fn measure(guard: &Path, section: &mut Section) -> Result<()> {
    let mut tb = Testbed::new();
    let tag = tb.tag.clone();
    let n = tb.netns("n")?;
    let x = tb.netns("x")?;
    let a = tb.netns("a")?;
    let b = tb.netns("b")?;
    let br = format!("n15{tag}br");
    sh(&["ip", "-n", &n, "link", "add", &br, "type", "bridge"])?;
    sh(&[
        "ip",
        "-n",
        &n,
        "addr",
        "add",
        &format!("{NATS}/24"),
        "dev",
        &br,
    ])?;
    sh(&["ip", "-n", &n, "link", "set", &br, "up"])?;
    let plug = |ns: &str, addr: &str, role: &str| -> Result<String> {
        let inner = format!("n15{tag}{role}");
        let outer = format!("n15{tag}p{role}");
        if outer.len() > 15 {
            bail!("interface name {outer} is longer than IFNAMSIZ allows");
        }
        sh(&[
            "ip", "link", "add", &inner, "netns", ns, "type", "veth", "peer", "name", &outer,
            "netns", &n,
        ])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ])?;
        sh(&["ip", "-n", ns, "link", "set", &inner, "up"])?;
        sh(&["ip", "-n", &n, "link", "set", &outer, "master", &br])?;
        sh(&["ip", "-n", &n, "link", "set", &outer, "up"])?;
        Ok(inner)
    };
    let xi = plug(&x, "198.18.160.2", "x")?;
    let ai = plug(&a, HOSTS[0], "a")?;
    let bi = plug(&b, HOSTS[1], "b")?;
    for i in 0..SOURCES {
        let addr = format!("198.18.160.{}/24", 100 + u16::from(i));
        sh(&["ip", "-n", &x, "addr", "add", &addr, "dev", &xi])?;
    }
    let nats_dir = std::env::temp_dir().join(format!("guard-bench-fleet-{tag}-nats"));
    fs::create_dir_all(&nats_dir)?;
    let log = File::create(nats_dir.join("nats.log"))?;
    let nats = Proc {
        child: Command::new("nsenter")
            .arg(format!("--net=/run/netns/{n}"))
            .args(["nats-server", "-js", "-a", NATS, "-p", PORT, "-sd"])
            .arg(nats_dir.join("js"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn nats-server (Debian package nats-server)")?,
        dir: nats_dir,
        pin_dir: None,
    };
    let host_a = start_guard(guard, &a, &ai, "a", &tag)?;
    let host_b = start_guard(guard, &b, &bi, "b", &tag)?;
    let sock_b = host_b.dir.join("guard.sock");
    // The server's own traffic must never be rate limited by the guards it serves.
    for h in [&host_a, &host_b] {
        let out = guard_cli(guard, &h.dir.join("guard.sock"), &["allow", "add", NATS])?;
        if !out.status.success() {
            bail!(
                "guard allow add {NATS}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let sockets: Vec<UdpSocket> = run_in(&x, || {
        (0..SOURCES)
            .map(|i| {
                UdpSocket::bind(format!("198.18.160.{}:0", 100 + u16::from(i)))
                    .context("bind a source")
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let to = format!("{}:9000", HOSTS[0]);
    let mut times: Vec<Duration> = Vec::with_capacity(SOURCES.into());
    for (i, s) in sockets.iter().enumerate() {
        let source = format!("198.18.160.{}", 100 + i);
        // Over the burst of 20 at once: a bans it at the 21st packet.
        for _ in 0..40 {
            let _ = s.send_to(&[0u8; 32], &to);
        }
        let sent = Instant::now();
        loop {
            if banned(guard, &sock_b, &source)? {
                times.push(sent.elapsed());
                break;
            }
            if sent.elapsed() > Duration::from_secs(10) {
                bail!(
                    "host b never listed the ban of {source}\nhost a: {}\nhost b: {}",
                    log_of(&host_a.dir, "guard.log"),
                    log_of(&host_b.dir, "guard.log")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(nats);
    times.sort();
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let mut t = Table::new(
        "A ban on host a in force on host b",
        &["bans", "median", "p99", "max"],
    );
    t.row(vec![
        times.len().to_string(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(*times.last().expect("a hundred times")),
    ]);
    t.note("Target: within one second (issue #15).");
    section.tables.push(t);
    Ok(())
}
