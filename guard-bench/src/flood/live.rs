//! The live cost of an attached XDP program: the kernel's run-time statistics (`run_time_ns`
//! and `run_cnt`, what `kernel.bpf_stats_enabled=1` turns on), read with bpftool.
//!
//! The statistics are turned on with BPF_ENABLE_STATS rather than by writing the sysctl: it
//! raises the same static key (the same counters), only while the returned descriptor is open,
//! so the sysctl is never written and nothing is left on even if the bench is killed. (The
//! sysctl reads back its own last written value, so it shows 0 meanwhile.)

use std::{fs, os::fd::OwnedFd};

use anyhow::{Context, Result};
use aya::sys::{Stats, enable_stats};

use crate::netns::sh_out;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run-time statistics on while this lives.
pub struct StatsOn {
    _fd: OwnedFd,
    /// `kernel.bpf_stats_enabled` before.
    pub before: String,
}

impl StatsOn {
    /// # Errors
    /// When the kernel refuses BPF_ENABLE_STATS (before Linux 5.8, or without CAP_SYS_ADMIN).
    pub fn enable() -> Result<Self> {
        let before = read_sysctl();
        let fd = enable_stats(Stats::RunTime)
            .context("BPF_ENABLE_STATS (Linux 5.8 or later, as root)")?;
        Ok(Self { _fd: fd, before })
    }
}

/// `kernel.bpf_stats_enabled` now (as text; "?" if unreadable).
pub fn read_sysctl() -> String {
    fs::read_to_string(SYSCTL).map_or_else(|_| "?".to_owned(), |s| s.trim().to_owned())
}

/// A program's run-time counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

impl ProgStats {
    /// Of program `id`, from `bpftool prog show`.
    ///
    /// # Errors
    /// When bpftool fails or the program is gone.
    pub fn of(id: u32) -> Result<Self> {
        let text = sh_out(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])?;
        let json: serde_json::Value =
            serde_json::from_str(&text).context("bpftool prog show printed no JSON")?;
        // bpftool leaves both out while they are zero.
        let get = |k: &str| json[k].as_u64().unwrap_or(0);
        Ok(Self {
            run_time_ns: get("run_time_ns"),
            run_cnt: get("run_cnt"),
        })
    }

    /// Mean ns per run and runs between `earlier` and `self`; `None` without runs.
    pub fn since(&self, earlier: &ProgStats) -> Option<(f64, u64)> {
        let runs = self.run_cnt.checked_sub(earlier.run_cnt)?;
        let ns = self.run_time_ns.checked_sub(earlier.run_time_ns)?;
        (runs > 0).then(|| (ns as f64 / runs as f64, runs))
    }
}
