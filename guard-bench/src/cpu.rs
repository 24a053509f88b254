//! CPUs: pinning the calling thread to one, and reading what one CPU spent (its line of
//! /proc/stat) and dropped (its line of /proc/net/softnet_stat).

use std::{fs, io};

use anyhow::{Context, Result, bail};

/// Pins the calling thread (not the process) to `cpu`; threads it spawns inherit the mask.
///
/// # Errors
/// When the CPU does not exist or is not allowed to this process.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is a plain bit mask; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        bail!("CPU {cpu} is beyond what cpu_set_t holds");
    }
    // SAFETY: CPU_SET writes one bit of the set we own; cpu is within its size (above).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is valid and its size is passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("sched_setaffinity to CPU {cpu}"));
    }
    Ok(())
}

/// One CPU's time from /proc/stat, in clock ticks since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// user + nice.
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    /// Every column but guest time (already inside user and nice).
    pub total: u64,
}

/// Shares of a window that one CPU spent, in percent.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuShare {
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
}

impl CpuTicks {
    /// What this CPU spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTicks) -> CpuShare {
        let total = self.total.saturating_sub(earlier.total).max(1) as f64;
        let pct = |a: u64, b: u64| 100.0 * a.saturating_sub(b) as f64 / total;
        CpuShare {
            user: pct(self.user, earlier.user),
            system: pct(self.system, earlier.system),
            softirq: pct(self.softirq, earlier.softirq),
        }
    }
}

/// The `cpu<N>` line of a /proc/stat text.
pub fn parse_stat(stat: &str, cpu: usize) -> Option<CpuTicks> {
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice] (proc_stat(5)).
    if v.len() < 8 {
        return None;
    }
    Some(CpuTicks {
        user: v[0] + v[1],
        system: v[2],
        softirq: v[6],
        total: v[..8].iter().sum(),
    })
}

/// CPU `cpu`'s ticks now.
///
/// # Errors
/// When /proc/stat cannot be read or has no line for `cpu`.
pub fn ticks(cpu: usize) -> Result<CpuTicks> {
    let stat = fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_stat(&stat, cpu).with_context(|| format!("no cpu{cpu} line in /proc/stat"))
}

/// Packets CPU `cpu` dropped because its backlog (where RPS queues packets for it) was full:
/// the second column of its line in a /proc/net/softnet_stat text (hexadecimal).
pub fn parse_backlog_drops(softnet: &str, cpu: usize) -> Option<u64> {
    // Since Linux 5.18 the 13th column names the CPU (offline CPUs have no line); before, the
    // line number is the CPU.
    let lines: Vec<Vec<&str>> = softnet
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let line = lines
        .iter()
        .find(|cols| {
            cols.get(12)
                .and_then(|c| u64::from_str_radix(c, 16).ok())
                .is_some_and(|id| id == cpu as u64)
        })
        .or_else(|| lines.get(cpu).filter(|cols| cols.len() < 13))?;
    u64::from_str_radix(line.get(1)?, 16).ok()
}

/// CPU `cpu`'s backlog drops since boot.
///
/// # Errors
/// When /proc/net/softnet_stat cannot be read or has no line for `cpu`.
pub fn backlog_drops(cpu: usize) -> Result<u64> {
    let text = fs::read_to_string("/proc/net/softnet_stat").context("read softnet_stat")?;
    parse_backlog_drops(&text, cpu)
        .with_context(|| format!("no line for CPU {cpu} in /proc/net/softnet_stat"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  100 5 50 1000 2 0 40 0 0 0
cpu0 60 5 30 400 1 0 10 0 0 0
cpu1 40 0 20 600 1 0 30 0 7 0
intr 12345
";

    #[test]
    fn stat_line_of_one_cpu_is_read_by_label() {
        let t = parse_stat(STAT, 1).unwrap();
        assert_eq!(
            t,
            CpuTicks {
                user: 40,
                system: 20,
                softirq: 30,
                total: 40 + 20 + 600 + 1 + 30,
            }
        );
        assert!(parse_stat(STAT, 2).is_none());
    }

    #[test]
    fn shares_are_of_the_window_not_of_the_uptime() {
        let a = parse_stat(STAT, 1).unwrap();
        let b = CpuTicks {
            user: a.user + 30,
            system: a.system + 10,
            softirq: a.softirq + 50,
            total: a.total + 100,
        };
        let s = b.since(&a);
        assert_eq!((s.user, s.system, s.softirq), (30.0, 10.0, 50.0));
    }

    #[test]
    fn backlog_drops_are_found_by_cpu_id_or_by_line() {
        let new = "0001e240 00000000 00000003 0 0 0 0 0 0 0 0 00000000 00000000 00000000\n\
                   00010000 0000002a 00000001 0 0 0 0 0 0 0 0 00000000 00000001 00000000\n";
        assert_eq!(parse_backlog_drops(new, 1), Some(42));
        assert_eq!(parse_backlog_drops(new, 0), Some(0));
        let old =
            "0001e240 00000001 00000003 0 0 0 0 0 0 0 0\n00010000 000000ff 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(parse_backlog_drops(old, 1), Some(255));
        assert_eq!(parse_backlog_drops(old, 2), None);
    }
}
