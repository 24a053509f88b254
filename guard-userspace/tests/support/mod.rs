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
