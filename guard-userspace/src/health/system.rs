//! Host headroom samples: CPU time from `/proc/stat`, memory from `/proc/meminfo` and pressure
//! stall information from `/proc/pressure/*`, read through [`SystemSource`] so tests use fakes.
//!
//! Hand-written here: the three small reads, because procfs parses `/proc/stat` and
//! `/proc/meminfo` whole and fails on any line it expects and a kernel or container lacks
//! (`btime`, `ctxt`, `Buffers`, ...), none of which we need, and keeps its PSI line parser
//! private.
use std::{fs, io, path::PathBuf};

/// Cumulative CPU time of all CPUs, in clock ticks, from the `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Ticks spent doing anything but idling or waiting for I/O.
    pub busy: u64,
    /// All ticks, busy and idle.
    pub total: u64,
}

impl CpuTimes {
    /// CPU utilisation in percent between `earlier` and `self`; `None` if no time passed or
    /// the counters went backwards (a CPU hot-unplugged between the two reads).
    pub fn utilisation_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        if total == 0 || busy > total {
            return None;
        }
        Some(busy as f64 * 100.0 / total as f64)
    }
}

/// The two `/proc/meminfo` fields memory utilisation needs, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total_kib: u64,
    pub available_kib: u64,
}

impl MemInfo {
    /// Memory in use (`MemTotal - MemAvailable`) in percent of `MemTotal`.
    pub fn used_percent(&self) -> Option<f64> {
        if self.total_kib == 0 {
            return None;
        }
        let used = self.total_kib.saturating_sub(self.available_kib);
        Some(used as f64 * 100.0 / self.total_kib as f64)
    }
}

/// A resource with pressure stall information.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Cpu,
    Memory,
    Io,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Resource::Cpu, Resource::Memory, Resource::Io];

    /// The file name under `/proc/pressure`, also used in metric labels and check names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Memory => "memory",
            Self::Io => "io",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} has no {what}", path.display())]
    Parse { path: PathBuf, what: &'static str },
}

/// Where the health sampler gets host numbers. The real one is [`ProcSource`].
pub trait SystemSource: Send {
    /// # Errors
    ///
    /// [`SourceError`] if the CPU counters cannot be read or parsed.
    fn cpu_times(&self) -> Result<CpuTimes, SourceError>;
    /// # Errors
    ///
    /// [`SourceError`] if memory totals cannot be read or parsed.
    fn meminfo(&self) -> Result<MemInfo, SourceError>;
    /// The "some" avg10 of `resource`, in percent; `Ok(None)` when the kernel has no PSI
    /// (built without `CONFIG_PSI` or booted with `psi=0`), which is not an error.
    ///
    /// # Errors
    ///
    /// [`SourceError`] if the file exists but cannot be read or parsed.
    fn pressure(&self, resource: Resource) -> Result<Option<f64>, SourceError>;
}

/// Reads `/proc` (or another root holding `stat`, `meminfo` and `pressure/`, for tests).
#[derive(Clone, Debug)]
pub struct ProcSource {
    root: PathBuf,
}

impl Default for ProcSource {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ProcSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn read(&self, rel: &str) -> Result<(PathBuf, String), SourceError> {
        let path = self.root.join(rel);
        match fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(SourceError::Read { path, source }),
        }
    }
}

impl SystemSource for ProcSource {
    fn cpu_times(&self) -> Result<CpuTimes, SourceError> {
        let (path, text) = self.read("stat")?;
        parse_proc_stat(&text).ok_or(SourceError::Parse {
            path,
            what: "aggregate \"cpu\" line",
        })
    }

    fn meminfo(&self) -> Result<MemInfo, SourceError> {
        let (path, text) = self.read("meminfo")?;
        parse_meminfo(&text).ok_or(SourceError::Parse {
            path,
            what: "MemTotal and MemAvailable (MemAvailable needs Linux 3.14)",
        })
    }

    fn pressure(&self, resource: Resource) -> Result<Option<f64>, SourceError> {
        let path = self.root.join("pressure").join(resource.name());
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // No file: no PSI in this kernel. EOPNOTSUPP: PSI compiled in but disabled.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(SourceError::Read { path, source }),
        };
        parse_psi_some_avg10(&text)
            .map(Some)
            .ok_or_else(|| SourceError::Parse {
                path: path.clone(),
                what: "\"some avg10=\" field",
            })
    }
}

/// Parses the aggregate `cpu` line of `/proc/stat` (see proc(5)). Busy time is everything
/// but `idle` and `iowait`; `guest` and `guest_nice` are already counted in `user` and `nice`,
/// so only the first eight fields are summed.
pub fn parse_proc_stat(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_ascii_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle [iowait irq softirq steal]: the first four exist on every kernel.
    if fields.len() < 4 {
        return None;
    }
    let total = fields.iter().try_fold(0u64, |acc, v| acc.checked_add(*v))?;
    let idle = fields[3] + fields.get(4).copied().unwrap_or(0);
    Some(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Parses `MemTotal` and `MemAvailable` (kB) out of `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<MemInfo> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..]
            .split_ascii_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(MemInfo {
        total_kib: field("MemTotal:")?,
        available_kib: field("MemAvailable:")?,
    })
}

/// Parses the `some avg10=` value (percent) of a `/proc/pressure/<resource>` file
/// (Documentation/accounting/psi.rst).
pub fn parse_psi_some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    let value = line
        .split_ascii_whitespace()
        .find_map(|f| f.strip_prefix("avg10="))?
        .parse::<f64>()
        .ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// One reading of every source, errors kept as text for the report.
#[derive(Clone, Debug, PartialEq)]
pub struct SystemSample {
    pub cpu: Result<CpuTimes, String>,
    pub memory: Result<MemInfo, String>,
    /// Per resource: `Ok(None)` when the kernel has no PSI.
    pub pressure: [(Resource, Result<Option<f64>, String>); 3],
}

impl Default for SystemSample {
    /// A sample in which nothing could be read.
    fn default() -> Self {
        let none = || "not sampled".to_string();
        Self {
            cpu: Err(none()),
            memory: Err(none()),
            pressure: Resource::ALL.map(|r| (r, Err(none()))),
        }
    }
}

impl SystemSample {
    /// Reads every source once. Never fails: what cannot be read is kept as its error text.
    pub fn read(source: &dyn SystemSource) -> Self {
        let text = |e: SourceError| DisplayChain(&e).to_string();
        Self {
            cpu: source.cpu_times().map_err(text),
            memory: source.meminfo().map_err(text),
            pressure: Resource::ALL.map(|r| (r, source.pressure(r).map_err(text))),
        }
    }
}

/// Displays an error with its sources, `outer: inner`.
pub(crate) struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        // Error chains are short; the bound only guards against a cyclic source().
        for _ in 0..16 {
            let Some(e) = next else { break };
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str =
        "cpu  100 20 30 800 50 0 0 0 10 0\ncpu0 50 10 15 400 25 0 0 0 5 0\nintr 1 2 3\n";

    #[test]
    fn proc_stat_busy_excludes_idle_iowait_and_double_counted_guest() {
        let t = parse_proc_stat(STAT).expect("parses");
        assert_eq!(t.total, 1000);
        assert_eq!(t.busy, 150);
    }

    #[test]
    fn proc_stat_without_aggregate_line_is_rejected() {
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2 x 4\n"), None);
        assert_eq!(parse_proc_stat("cpu  1 2\n"), None);
    }

    #[test]
    fn cpu_utilisation_is_busy_share_of_elapsed_ticks() {
        let a = CpuTimes {
            busy: 100,
            total: 1000,
        };
        let b = CpuTimes {
            busy: 175,
            total: 1100,
        };
        assert_eq!(b.utilisation_since(&a), Some(75.0));
        assert_eq!(a.utilisation_since(&a), None, "no time passed");
        assert_eq!(a.utilisation_since(&b), None, "counters went backwards");
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let m = parse_meminfo(
            "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n",
        )
        .expect("parses");
        assert_eq!(m.used_percent(), Some(75.0));
        assert_eq!(parse_meminfo("MemTotal: 1000 kB\nMemFree: 1 kB\n"), None);
    }

    #[test]
    fn psi_some_avg10_is_read_and_full_line_ignored() {
        let text = "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\nfull avg10=99.00 avg60=0.00 avg300=0.00 total=1\n";
        assert_eq!(parse_psi_some_avg10(text), Some(12.5));
        assert_eq!(parse_psi_some_avg10("full avg10=1.00\n"), None);
        assert_eq!(parse_psi_some_avg10("some avg10=nan\n"), None);
    }

    #[test]
    fn proc_source_reads_a_fake_root_and_reports_missing_psi_as_none() {
        let dir = std::env::temp_dir().join(format!("guard-health-proc-{}", std::process::id()));
        fs::create_dir_all(dir.join("pressure")).expect("temp dir");
        fs::write(dir.join("stat"), STAT).expect("write");
        fs::write(
            dir.join("meminfo"),
            "MemTotal: 200 kB\nMemAvailable: 50 kB\n",
        )
        .expect("write");
        fs::write(
            dir.join("pressure/cpu"),
            "some avg10=1.5 avg60=0 avg300=0 total=0\n",
        )
        .expect("write");
        let src = ProcSource::new(&dir);
        let sample = SystemSample::read(&src);
        assert_eq!(sample.cpu.as_ref().map(|c| c.total), Ok(1000));
        assert_eq!(
            sample.memory.as_ref().ok().and_then(MemInfo::used_percent),
            Some(75.0)
        );
        assert_eq!(sample.pressure[0], (Resource::Cpu, Ok(Some(1.5))));
        assert_eq!(sample.pressure[1], (Resource::Memory, Ok(None)));
        fs::remove_dir_all(&dir).ok();
        let missing = SystemSample::read(&ProcSource::new(dir.join("nope")));
        let err = missing.cpu.expect_err("no stat file");
        assert!(err.contains("nope/stat"), "{err}");
    }

    #[test]
    fn real_proc_is_readable_on_linux() {
        let sample = SystemSample::read(&ProcSource::default());
        assert!(sample.cpu.is_ok(), "{:?}", sample.cpu);
        assert!(sample.memory.is_ok(), "{:?}", sample.memory);
    }
}
