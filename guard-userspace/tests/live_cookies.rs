//! Live: SYN cookies at the NIC. The real daemon in front of a TCP service (accept, read a
//! request, answer, close) with `syn_cookies = "auto"`; SYNs from 16,384 spoofed sources flood
//! the port from an attacker namespace, the service goes under attack, and from then on the
//! program answers every SYN of a source it does not know with a cookie (XDP_TX). New clients,
//! each from an address the guard never saw, connect during the flood: their ACK's cookie is
//! checked in XDP, the TC stage hands the connection to the listener, and they are answered,
//! while the kernel itself sends (almost) no cookie of its own: the flood never reached it.
//! `net.ipv4.tcp_syncookies` is 0 at the start: the daemon sets it to 1, says so in `guard
//! status`, and `guard detach` puts it back.
mod support;

use std::{
    io::{self, Read, Write},
    mem,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    WAIT,
    netns::{Testbed, in_netns, live_or_skip, sh, warm_up},
    raw::{StopOnDrop, mac_of, no_rp_filter, spawn_flood},
    wait_for,
};

const SRV_ATK: &str = "198.18.17.1";
const ATK: &str = "198.18.17.2";
const SRV_CLI: &str = "198.18.18.1";
const CLI_NET: [u8; 3] = [198, 18, 18];
const PORT: u16 = 8081;
const REQUEST: &[u8] = b"ping\n";
const RESPONSE: &[u8] = b"pong\n";

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// An Ethernet/IPv4/TCP SYN from `src` to the service, with an MSS option and both checksums.
fn syn(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(24);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&PORT.to_be_bytes());
    tcp.extend_from_slice(&u32::from(sport).wrapping_mul(2_654_435_761).to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.push(6 << 4);
    tcp.push(0x02);
    tcp.extend_from_slice(&64_240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    let pseudo = sum16(&src.octets()) + sum16(&dst.octets()) + 6 + tcp.len() as u32;
    let c = fold(pseudo + sum16(&tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20 + tcp.len() as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum16(&ip));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(14 + 20 + tcp.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// The service: accepts, reads the request, answers, closes; until `stop`.
fn serve(listener: TcpListener, stop: Arc<AtomicBool>, accepted: Arc<AtomicU64>) {
    listener.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                accepted.fetch_add(1, Ordering::Relaxed);
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut buf = [0u8; 16];
                if matches!(s.read(&mut buf), Ok(n) if n > 0) {
                    let _ = s.write_all(RESPONSE);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// One new client: a TCP connection from `src` (bound first, so the guard sees a source it
/// never saw) established within `within` (that is, with no SYN retransmission), a request
/// and its answer. `Err` says what failed.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = |a: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sin(src, 0);
    // SAFETY: a valid sockaddr_in and its size.
    if unsafe { libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) } != 0 {
        return Err(format!("bind {src}: {}", io::Error::last_os_error()));
    }
    let remote = sin(*dst.ip(), dst.port());
    // SAFETY: a valid sockaddr_in and its size.
    let rc = unsafe { libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(format!("connect: {}", io::Error::last_os_error()));
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, within.as_millis() as libc::c_int) };
    if n != 1 {
        return Err(format!("not established within {within:?}"));
    }
    let mut err: libc::c_int = 0;
    let mut elen = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_ERROR into a c_int of the right size.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut elen,
        )
    };
    if err != 0 {
        return Err(format!("connect: {}", io::Error::from_raw_os_error(err)));
    }
    let connected = started.elapsed();
    let mut s = TcpStream::from(sock);
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(REQUEST).map_err(|e| format!("request: {e}"))?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).map_err(|e| format!("answer: {e}"))?;
    if &buf[..n] != RESPONSE {
        return Err(format!("answered {:?}", &buf[..n]));
    }
    Ok(connected)
}

/// `count` new clients one after the other, each from its own address `CLI_NET.first+i`, a
/// connection every 50 ms; returns (answered, connect times, failures).
fn clients(
    ns: &str,
    first: u8,
    count: u8,
    dst: SocketAddrV4,
) -> (usize, Vec<Duration>, Vec<String>) {
    in_netns(ns, move || {
        let mut times = Vec::new();
        let mut failed = Vec::new();
        for i in 0..count {
            let src = Ipv4Addr::new(CLI_NET[0], CLI_NET[1], CLI_NET[2], first + i);
            match connect_from(src, dst, Duration::from_millis(900)) {
                Ok(t) => times.push(t),
                Err(e) => failed.push(format!("{src}: {e}")),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        (times.len(), times, failed)
    })
}

/// xdp-filter on a veth with no rules (it passes everything), unloaded on drop.
struct PassAll {
    ns: String,
    dev: String,
}

impl PassAll {
    fn load(ns: &str, dev: &str) -> Self {
        let net = format!("--net=/run/netns/{ns}");
        sh(&["nsenter", &net, "xdp-filter", "load", dev, "-m", "native"]);
        Self {
            ns: ns.to_string(),
            dev: dev.to_string(),
        }
    }
}

impl Drop for PassAll {
    fn drop(&mut self) {
        let net = format!("--net=/run/netns/{}", self.ns);
        let _ = std::process::Command::new("nsenter")
            .args([net.as_str(), "xdp-filter", "unload", &self.dev, "--all"])
            .output();
        // What libxdp made under bpffs for this, if it left it empty.
        for dir in ["/sys/fs/bpf/xdp-filter", "/sys/fs/bpf/xdp"] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn reason(stats: &Value, name: &str) -> u64 {
    stats["total"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == name)
        .and_then(|r| r["packets"].as_u64())
        .unwrap_or_else(|| panic!("no reason {name} in {stats}"))
}

/// `TcpExt: SyncookiesSent` of the namespace `ns`: the SYN cookies the kernel itself sent.
fn kernel_cookies_sent(ns: &str) -> u64 {
    in_netns(ns, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == "SyncookiesSent")
            .unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    })
}

fn syncookies(ns: &str) -> String {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-n",
        "net.ipv4.tcp_syncookies",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn new_clients_connect_and_are_served_under_a_spoofed_syn_flood_answered_with_cookies() {
    if !live_or_skip("live SYN cookies") {
        return;
    }
    let mut tb = Testbed::new();
    let srv = tb.netns("s");
    let atk = tb.netns("a");
    let cli = tb.netns("c");
    let (s_atk, a_dev) = tb.link(&srv, &format!("{SRV_ATK}/24"), &atk, &format!("{ATK}/24"));
    let (s_cli, c_dev) = tb.link(
        &srv,
        &format!("{SRV_CLI}/24"),
        &cli,
        &format!("{}.2/24", "198.18.18"),
    );
    // The new clients' addresses; each is a source the guard has never seen.
    for i in 10..=80u8 {
        sh(&[
            "ip",
            "-n",
            &cli,
            "addr",
            "add",
            &format!("198.18.18.{i}/24"),
            "dev",
            &c_dev,
        ]);
    }
    // A veth takes frames sent back with XDP_TX only while its peer runs an XDP program of
    // its own (NAPI): the client's side gets xdp-filter with no rules, which passes all, as a
    // NIC's link partner takes any frame. (xdp-filter needs the host's bpffs: nsenter.)
    let _peer = PassAll::load(&cli, &c_dev);
    warm_up(&atk, SRV_ATK);
    warm_up(&cli, SRV_CLI);
    no_rp_filter(&srv, &s_atk);
    // The kernel's own SYN cookies are off to begin with: the guard needs them on (the
    // kernel takes a cookie connection only then) and must put the value back.
    sh(&[
        "ip",
        "netns",
        "exec",
        &srv,
        "sysctl",
        "-qw",
        "net.ipv4.tcp_syncookies=0",
    ]);

    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let accepted = Arc::new(AtomicU64::new(0));
    let listener = in_netns(&srv, || {
        TcpListener::bind(("0.0.0.0", PORT)).expect("bind the service")
    });
    let (sstop, sacc) = (stop.clone(), accepted.clone());
    let server = std::thread::spawn(move || serve(listener, sstop, sacc));

    let config = tb.tmp.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "[attack]\nenter_secs = 1\nleave_secs = 3\n\
             [[services]]\nname = \"web\"\nprotocol = \"tcp\"\nport = {PORT}\n\
             max_pps = 2000\nmax_syn_pps = 1000\n"
        ),
    )
    .unwrap();
    tb.start_guard(
        &srv,
        &[
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &s_atk,
            "--iface",
            &s_cli,
            "--health-listen",
            "",
            "--agent-listen",
            "",
        ],
    );
    let status: Value = serde_json::from_str(&tb.guard_ok(&["status", "--json"])).unwrap();
    assert_eq!(
        status["syn_cookies"]["unavailable"],
        Value::Null,
        "cookies are available on this kernel: {status}"
    );
    assert_eq!(status["syn_cookies"]["sysctl"]["value"], 1, "{status}");
    assert_eq!(status["syn_cookies"]["sysctl"]["replaced"], 0, "{status}");
    assert_eq!(syncookies(&srv), "1");
    let web = &status["services"][0];
    assert_eq!(
        (web["syn_cookies"].as_str(), web["cookies_active"].as_bool()),
        (Some("auto"), Some(false)),
        "{web}"
    );

    // Before the flood ("auto", no attack): new clients connect the kernel's way, no cookie.
    let dst = SocketAddrV4::new(SRV_CLI.parse().unwrap(), PORT);
    let (ok, _, failed) = clients(&cli, 10, 5, dst);
    assert_eq!(ok, 5, "without a flood: {failed:?}\n{}", tb.logs());
    let stats: Value = serde_json::from_str(&tb.guard_ok(&["stats", "--json"])).unwrap();
    assert_eq!(
        reason(&stats, "cookie_sent"),
        0,
        "no cookie before the attack"
    );

    // 16,384 spoofed sources of 198.19.0.0/16 send SYNs at ~40,000/s for at most 12 s.
    let dst_mac = mac_of(&srv, &s_atk);
    let src_mac = mac_of(&atk, &a_dev);
    let target: Ipv4Addr = SRV_ATK.parse().unwrap();
    let frames: Vec<Vec<u8>> = (0..16_384u32)
        .map(|i| {
            let b = i.to_be_bytes();
            syn(
                dst_mac,
                src_mac,
                Ipv4Addr::new(198, 19, b[2], b[3]),
                target,
                1024 + (i % 50_000) as u16,
            )
        })
        .collect();
    let (flooder, sent) = spawn_flood(
        &atk,
        &a_dev,
        frames,
        40_000,
        &stop,
        480_000,
        Duration::from_secs(12),
    );
    let under = wait_for(WAIT, || {
        let s: Value = serde_json::from_str(&tb.guard_ok(&["status", "--json"])).ok()?;
        let web = s["services"][0].clone();
        web["cookies_active"].as_bool().filter(|a| *a).map(|_| web)
    })
    .unwrap_or_else(|| {
        panic!(
            "the service never went under attack with cookies on\n{}",
            tb.logs()
        )
    });
    assert_eq!(under["under_attack"], true, "{under}");
    // Until the attack was seen, the kernel answered the flood with its own cookies; from
    // now on it should not see the flood's SYNs at all.
    let kernel_before = kernel_cookies_sent(&srv);
    let cookies_at_start = {
        let s: Value = serde_json::from_str(&tb.guard_ok(&["stats", "--json"])).unwrap();
        (reason(&s, "cookie_sent"), reason(&s, "cookie_valid"))
    };

    // New clients during the flood: 40, each from an address never seen, one every 50 ms.
    let (ok, mut times, failed) = clients(&cli, 20, 40, dst);
    let flood_sent_then = sent.load(Ordering::Relaxed);
    let kernel_during = kernel_cookies_sent(&srv) - kernel_before;
    let stats: Value = serde_json::from_str(&tb.guard_ok(&["stats", "--json"])).unwrap();
    stop.store(true, Ordering::Relaxed);
    let flooded = flooder.join().expect("flood thread");
    let _ = server.join();
    assert!(flooded > 40_000, "the flood sent only {flooded} packets");
    let diag = || {
        let ethtool = sh(&["ip", "netns", "exec", &srv, "ethtool", "-S", &s_cli]);
        let link = sh(&["ip", "-n", &cli, "-s", "link", "show", "dev", &c_dev]);
        format!(
            "cookies sent {}, valid {}, invalid {}\n{}\n{}",
            reason(&stats, "cookie_sent"),
            reason(&stats, "cookie_valid"),
            reason(&stats, "cookie_invalid"),
            String::from_utf8_lossy(&ethtool.stdout),
            String::from_utf8_lossy(&link.stdout)
        )
    };
    assert!(
        ok >= 38,
        "under the spoofed SYN flood {ok} of 40 new clients were served: {failed:?}\n{}\n{}",
        diag(),
        tb.logs()
    );
    times.sort();
    let p95 = times[times.len() * 95 / 100 - 1];
    assert!(p95 < Duration::from_millis(500), "connect p95 {p95:?}");
    let (sent_c, valid_c) = (
        reason(&stats, "cookie_sent"),
        reason(&stats, "cookie_valid"),
    );
    assert!(
        sent_c - cookies_at_start.0 > flood_sent_then / 4,
        "the flood's SYNs were answered with cookies: {sent_c} sent, {flood_sent_then} flooded"
    );
    assert!(
        valid_c - cookies_at_start.1 >= ok as u64,
        "every served client came through a valid cookie: {valid_c} valid, {ok} served"
    );
    // The flood's SYNs never reached the kernel: it sent next to no cookie of its own.
    assert!(
        kernel_during < 1_000,
        "the kernel sent {kernel_during} SYN cookies of its own during the flood"
    );
    // Each served client is known now (made so by its cookie).
    let status: Value = serde_json::from_str(&tb.guard_ok(&["status", "--json"])).unwrap();
    assert!(
        status["known_sources"].as_u64().unwrap() >= ok as u64,
        "{}",
        status["known_sources"]
    );

    // guard detach puts the kernel's switch back.
    tb.guard_ok(&["detach"]);
    wait_for(WAIT, || (syncookies(&srv) == "0").then_some(())).unwrap_or_else(|| {
        panic!(
            "tcp_syncookies is {} after detach\n{}",
            syncookies(&srv),
            tb.logs()
        )
    });
    let _ = s_cli;
}
