//! `cargo xtask demo`: a throwaway namespace testbed where a legitimate client and a flood hit
//! one server at once, with the guard in front; prints what happened, then removes everything.

use std::{
    fs::File,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build, cmd, prereqs, run};

const SERVER_TO_CLIENT: &str = "198.18.21.1";
const CLIENT: &str = "198.18.21.2";
const SERVER_TO_ATTACKER: &str = "198.18.22.1";
const ATTACKER: &str = "198.18.22.2";
const PORT: u16 = 7000;
/// How long the client and the flood run together.
const SECONDS: u64 = 5;
/// The flood stops at this many packets even if time remains.
const FLOOD_MAX_PACKETS: u64 = 3_000_000;

/// Everything the demo creates, removed on drop (also on error or panic).
struct Testbed {
    tag: String,
    namespaces: Vec<String>,
    daemon: Option<Child>,
    guard: PathBuf,
    tmp: PathBuf,
    pin_dir: PathBuf,
}

impl Testbed {
    fn ns(&self, role: &str) -> String {
        format!("gdemo{}{role}", self.tag)
    }

    fn socket(&self) -> PathBuf {
        self.tmp.join("guard.sock")
    }

    fn guard_cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.guard)
            .args(args)
            .env("GUARD_SOCKET", self.socket())
            .output()
            .context("run the guard CLI")?;
        if !out.status.success() {
            bail!(
                "guard {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `f` on a thread inside `ns`'s network namespace (sockets made there stay there).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns with a valid netns fd changes only this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {path}: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

fn join<T>(h: thread::JoinHandle<Result<T>>) -> Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("a demo thread panicked"))?
}

pub fn demo() -> Result<()> {
    prereqs::ensure_debs(prereqs::TEST_DEBS)?;
    let guard = build::all(false)?;
    prereqs::ensure_bpffs()?;
    let tag = format!("{}", std::process::id() % 100_000);
    let mut tb = Testbed {
        tmp: std::env::temp_dir().join(format!("guard-demo-{tag}")),
        pin_dir: PathBuf::from(format!("/sys/fs/bpf/guard-demo-{tag}")),
        tag,
        namespaces: Vec::new(),
        daemon: None,
        guard,
    };
    std::fs::create_dir_all(&tb.tmp)?;
    let (srv, cli, atk) = (tb.ns("s"), tb.ns("c"), tb.ns("a"));
    for ns in [&srv, &cli, &atk] {
        ip(&["netns", "add", ns])?;
        tb.namespaces.push(ns.clone());
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let (s1, s2) = (format!("gd{}s1", tb.tag), format!("gd{}s2", tb.tag));
    for (sdev, peer_ns, sadd, padd) in [
        (&s1, &cli, SERVER_TO_CLIENT, CLIENT),
        (&s2, &atk, SERVER_TO_ATTACKER, ATTACKER),
    ] {
        let pdev = format!("{sdev}p");
        ip(&[
            "link", "add", sdev, "netns", &srv, "type", "veth", "peer", "name", &pdev, "netns",
            peer_ns,
        ])?;
        ip(&[
            "-n",
            &srv,
            "addr",
            "add",
            &format!("{sadd}/24"),
            "dev",
            sdev,
        ])?;
        ip(&[
            "-n",
            peer_ns,
            "addr",
            "add",
            &format!("{padd}/24"),
            "dev",
            &pdev,
        ])?;
        ip(&["-n", &srv, "link", "set", sdev, "up"])?;
        ip(&["-n", peer_ns, "link", "set", &pdev, "up"])?;
    }
    println!(
        "testbed: server {srv} ({SERVER_TO_CLIENT}, {SERVER_TO_ATTACKER}), client {cli} ({CLIENT}), attacker {atk} ({ATTACKER})"
    );

    let log = tb.tmp.join("guard.log");
    let mut start = Command::new("nsenter");
    start
        .arg(format!("--net=/run/netns/{srv}"))
        .arg(&tb.guard)
        .args(["run", "--iface", &s1, "--iface", &s2])
        .args(["--pps", "2000", "--burst", "4000", "--ban-seconds", "30"])
        .arg("--socket")
        .arg(tb.socket())
        .arg("--pin-dir")
        .arg(&tb.pin_dir)
        .arg("--state-dir")
        .arg(tb.tmp.join("state"))
        .stdin(Stdio::null())
        .stdout(File::create(&log)?)
        .stderr(File::create(&log)?);
    eprintln!("xtask: {}", crate::show(&start));
    tb.daemon = Some(start.spawn().context("start guard run")?);
    let deadline = Instant::now() + Duration::from_secs(20);
    while tb.guard_cli(&["status"]).is_err() {
        if Instant::now() > deadline {
            bail!(
                "guard run did not come up: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    println!(
        "guard: attached to {s1} and {s2}; limits 2000 packets/s per source (burst 4000), bans 30 s\n"
    );

    let stop = Arc::new(AtomicBool::new(false));
    // The server: a UDP echo service.
    let served = Arc::new(AtomicU64::new(0));
    let server_sock = join(in_netns(&srv, || UdpSocket::bind(("0.0.0.0", PORT))))??;
    server_sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let server = {
        let (stop, served) = (stop.clone(), served.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server_sock.recv_from(&mut buf) {
                    served.fetch_add(1, Ordering::Relaxed);
                    let _ = server_sock.send_to(&buf[..n], from);
                }
            }
        })
    };
    let client_sock = join(in_netns(&cli, || UdpSocket::bind((CLIENT, 0))))??;
    let attack_sock = join(in_netns(&atk, || UdpSocket::bind((ATTACKER, 0))))??;
    // Resolve neighbours before the clock starts.
    for (ns, addr) in [(&cli, SERVER_TO_CLIENT), (&atk, SERVER_TO_ATTACKER)] {
        run(&mut cmd(
            "ip",
            &["netns", "exec", ns, "ping", "-c1", "-W2", addr],
        ))?;
    }

    let flood = thread::spawn(move || {
        let to: SocketAddr = (
            SERVER_TO_ATTACKER.parse::<std::net::IpAddr>().unwrap(),
            PORT,
        )
            .into();
        let payload = [0x41u8; 64];
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < FLOOD_MAX_PACKETS && start.elapsed() < Duration::from_secs(SECONDS) {
            if attack_sock.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    let client = thread::spawn(move || -> Result<(u64, u64, Duration)> {
        let to: SocketAddr = (SERVER_TO_CLIENT.parse::<std::net::IpAddr>()?, PORT).into();
        client_sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (mut asked, mut answered) = (0u64, 0u64);
        let mut worst = Duration::ZERO;
        let mut buf = [0u8; 64];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(SECONDS) {
            let t = Instant::now();
            asked += 1;
            client_sock.send_to(format!("request {asked}").as_bytes(), to)?;
            if client_sock.recv_from(&mut buf).is_ok() {
                answered += 1;
                worst = worst.max(t.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok((asked, answered, worst))
    });
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))?;
    let (asked, answered, worst) = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let reached = served.load(Ordering::Relaxed);

    println!("== what happened in {SECONDS} s ==");
    println!(
        "legitimate client: {answered} of {asked} requests answered (slowest {:.1} ms)",
        worst.as_secs_f64() * 1e3
    );
    let flood_reached = reached.saturating_sub(answered);
    println!(
        "flood: {sent} packets sent from {ATTACKER}, {flood_reached} reached the server, {} dropped before the stack ({:.2}%)",
        sent.saturating_sub(flood_reached),
        100.0 * sent.saturating_sub(flood_reached) as f64 / sent.max(1) as f64
    );
    println!("\n$ guard bans\n{}", tb.guard_cli(&["bans"])?);
    println!("$ guard stats\n{}", tb.guard_cli(&["stats"])?);
    let ban_lines: Vec<String> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("banned"))
        .map(str::to_owned)
        .collect();
    println!("daemon log (bans):\n{}", ban_lines.join("\n"));
    tb.guard_cli(&["detach"])?;
    println!("\ncleaned up: detached, namespaces and pins removed");
    Ok(())
}
