//! Shared test support: the packet builder, and loading the real program for fixtures.
#![allow(dead_code)]

pub mod netns;
pub mod packet;

use guard::{datapath::Datapath, ebpf::KernelDatapath};
use guard_common::{Config, Counters};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Kernel tests run when root. `cargo xtask test` sets GUARD_TEST_KERNEL=require, so there a
/// missing privilege or object fails the test instead of skipping it.
pub fn kernel_or_skip(test: &str) -> Option<KernelDatapath> {
    let required = std::env::var("GUARD_TEST_KERNEL").as_deref() == Ok("require");
    if !is_root() {
        assert!(
            !required,
            "{test}: needs root (CAP_BPF) to load XDP programs"
        );
        eprintln!(
            "SKIP {test}: needs root (CAP_BPF) for BPF_PROG_TEST_RUN; run `cargo xtask test`"
        );
        return None;
    }
    match guard::ebpf::load(None) {
        Ok(k) => Some(k),
        Err(guard::ebpf::LoadError::NoObject) if !required => {
            eprintln!("SKIP {test}: the XDP object is not embedded; run `cargo xtask test`");
            None
        }
        Err(e) => panic!(
            "{test}: loading the XDP program failed: {:#}",
            anyhow::Error::new(e)
        ),
    }
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
