//! Shared test support: the packet builder, loading the real program for fixtures, waits
//! with deadlines, and skips that say why (and fail instead under `cargo xtask test`).
#![allow(dead_code)]

pub mod netns;
pub mod packet;
pub mod raw;
pub mod twolinks;
pub mod vm;

use std::{
    sync::{Mutex, Once},
    time::{Duration, Instant},
};

use guard::{datapath::Datapath, ebpf::KernelDatapath};
use guard_common::{Config, Counters};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// True under `cargo xtask test`, which sets GUARD_TEST_KERNEL=require: there every
/// prerequisite (root, the embedded XDP object, the haproxy binary) is required, and a missing
/// one fails the test that needs it instead of skipping it.
pub fn required() -> bool {
    std::env::var("GUARD_TEST_KERNEL").as_deref() == Ok("require")
}

/// The tests of this binary that skipped, with why.
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records that the running test cannot run here, and why. Once per test binary, at exit, one
/// line naming every skipped test goes straight to fd 2, past cargo's output capture.
pub fn skip(test: &str, why: &str) {
    static AT_EXIT: Once = Once::new();
    // libtest names each test's thread after the test; `test` is for a test run elsewhere.
    let name = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or(test)
        .to_string();
    eprintln!("SKIP {name}: {why}");
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    if !skipped.iter().any(|(n, _)| *n == name) {
        skipped.push((name, why.to_string()));
    }
    drop(skipped);
    AT_EXIT.call_once(|| {
        // SAFETY: registers a function with no preconditions, which libc calls once at exit.
        unsafe { libc::atexit(print_skipped) };
    });
}

/// The exit-time summary of [`skip`]: `SKIPPED n tests of <binary>: <why> (<tests>); ...`.
extern "C" fn print_skipped() {
    let mut skipped = SKIPPED.lock().unwrap_or_else(|e| e.into_inner());
    skipped.sort();
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (name, why) in skipped.iter() {
        match reasons.iter_mut().find(|(w, _)| w == why) {
            Some((_, names)) => names.push(name),
            None => reasons.push((why, vec![name])),
        }
    }
    let line = format!(
        "SKIPPED {} test{} of {}: {}\n",
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        env!("CARGO_CRATE_NAME"),
        reasons
            .iter()
            .map(|(why, names)| format!("{why} ({})", names.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    );
    // SAFETY: writes an initialised buffer of the given length to fd 2, which stays open.
    unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
}

/// Kernel tests run when root with the XDP object embedded; elsewhere they skip, saying why,
/// except under `cargo xtask test` (see [`required`]), where they fail.
pub fn kernel_or_skip(test: &str) -> Option<KernelDatapath> {
    let why = if !is_root() {
        "needs root (CAP_BPF) to load the XDP program for BPF_PROG_TEST_RUN; run `cargo xtask test`"
    } else {
        match guard::ebpf::load(None) {
            Ok(k) => return Some(k),
            Err(guard::ebpf::LoadError::NoObject) => {
                "the XDP object is not embedded (GUARD_EBPF_OBJECT); run `cargo xtask test`"
            }
            Err(e) => panic!(
                "{test}: loading the XDP program failed: {:#}",
                anyhow::Error::new(e)
            ),
        }
    };
    assert!(!required(), "{test}: {why}");
    skip(test, why);
    None
}

/// Is the `haproxy` binary here? If not, the test skips, saying why, except under `cargo
/// xtask test` (which installs it), where it fails.
pub fn haproxy_or_skip(test: &str) -> bool {
    if std::process::Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let why = "no haproxy binary (Debian package `haproxy`; `cargo xtask test` installs it)";
    assert!(!required(), "{test}: {why}");
    skip(test, why);
    false
}

/// How long any one wait may take before the test fails. Generous: a wait returns as soon as
/// its condition holds, and the machine may be busy with other builds.
pub const WAIT: Duration = Duration::from_secs(30);

/// Polls `ready` until it gives a value, for at most `timeout`; `None` if it never did. The
/// caller fails the test with what it was waiting for.
pub fn wait_for<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Has the TCP listener at `addr` (IPv4, in this network namespace) accepted at least `n`
/// connections, with none left in its accept queue? Read from /proc/net/tcp, where a listening
/// socket's rx_queue is its accept queue and every other socket bound to its address and port
/// came from a handshake with it (still open or closing).
pub fn tcp_accepted(addr: std::net::SocketAddr, n: usize) -> bool {
    let std::net::SocketAddr::V4(a) = addr else {
        panic!("{addr}: IPv4 only");
    };
    // The address as the kernel prints it: the network-order word read as a host integer.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(a.ip().octets()),
        a.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let (mut queued, mut connections) = (None, 0);
    for line in table.lines().skip(1) {
        // sl local_address rem_address st tx_queue:rx_queue ...
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1] != local {
            continue;
        }
        if f[3] == "0A" {
            queued = f[4]
                .split_once(':')
                .and_then(|(_, rx)| u32::from_str_radix(rx, 16).ok());
        } else {
            connections += 1;
        }
    }
    queued == Some(0) && connections >= n
}

/// Now on the XDP program's clock (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE).
pub fn program_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for clock_gettime to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until the XDP program's clock is past `ns` (an expiry the program compares with it),
/// which must be less than [`WAIT`] away.
pub fn wait_for_program_clock(ns: u64) {
    let ahead = Duration::from_nanos(ns.saturating_sub(program_now_ns()));
    assert!(ahead < WAIT, "{ahead:?} is too far ahead to wait for");
    // The clock advances a jiffy at a time (at most 10 ms).
    wait_for(ahead + WAIT, || (program_now_ns() > ns).then_some(()))
        .unwrap_or_else(|| panic!("the program's clock never passed {ns} ns"));
}

/// Counters summed over every interface slot.
pub fn totals(k: &KernelDatapath) -> Counters {
    let mut sum = Counters::default();
    for (_, c) in k.counters().expect("read counters") {
        sum.add(&c);
    }
    sum
}

pub fn limits(pps: u64, burst: u64, syn_pps: u64, syn_burst: u64, ban_secs: u64) -> Config {
    Config {
        pps,
        burst,
        syn_pps,
        syn_burst,
        ban_ns: ban_secs * 1_000_000_000,
        ..Config::default()
    }
}

/// A TCP service that accepts connections and closes them at once (the application behind a
/// host, or a backend for a load balancer), until dropped or `max` passes.
pub struct Acceptor {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    pub fn spawn(listener: std::net::TcpListener, max: std::time::Duration) -> Self {
        use std::sync::atomic::Ordering;
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local address");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + max;
            while !stopping.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
