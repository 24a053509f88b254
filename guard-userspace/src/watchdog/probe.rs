//! What a watchdog samples besides its check: the service's memory (a systemd unit's cgroup
//! `memory.current`, or the resident set of the process a pid file names) and its open
//! connections (established TCP sockets on the check's port, in this network namespace).
use std::path::{Path, PathBuf};

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The files a memory cgroup's usage is in: cgroup v2's, then the v1 memory controller's.
const MEMORY_FILES: [&str; 2] = ["memory.current", "memory.usage_in_bytes"];

/// Where a service's memory is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemorySource {
    /// A memory cgroup's directory: `memory.current` (v2,
    /// `/sys/fs/cgroup/system.slice/app.service`) or `memory.usage_in_bytes` (the v1 memory
    /// controller, `/sys/fs/cgroup/memory/system.slice/app.service`).
    Cgroup(PathBuf),
    /// A pid file: the resident memory (`/proc/PID/statm`) of the process it names.
    PidFile(PathBuf),
}

impl MemorySource {
    /// Bytes now; `Err` says why it cannot be read (the sample then has no memory: a probe that
    /// cannot read must not restart a service).
    ///
    /// # Errors
    ///
    /// The file cannot be read or does not hold what it should.
    pub fn read(&self) -> Result<u64, String> {
        match self {
            Self::Cgroup(dir) => {
                let path = MEMORY_FILES
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|p| p.exists())
                    .unwrap_or_else(|| dir.join(MEMORY_FILES[0]));
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                text.trim()
                    .parse()
                    .map_err(|_| format!("{}: not a number: {:?}", path.display(), text.trim()))
            }
            Self::PidFile(file) => {
                let pid = read_pid(file)?;
                rss_bytes(pid)
            }
        }
    }
}

/// The memory cgroup of the unit whose cgroup is `control_group` (systemd's ControlGroup, such
/// as `/system.slice/app.service`) under `root`: on cgroup v2 the unit's own directory; on a
/// v1 or hybrid host the memory controller's hierarchy (`memory/`), where systemd places the
/// unit only if it may (`MemoryAccounting`; a container's read-only controllers leave every
/// unit in the container's root). `None`: no memory of this unit's own can be read.
pub fn unit_memory_dir(root: &Path, control_group: &str) -> Option<PathBuf> {
    let rel = control_group.trim_start_matches('/');
    if rel.is_empty() {
        return None;
    }
    [root.join(rel), root.join("memory").join(rel)]
        .into_iter()
        .find(|dir| MEMORY_FILES.iter().any(|f| dir.join(f).is_file()))
}

/// [`unit_memory_dir`] under `/sys/fs/cgroup`.
pub fn unit_memory(control_group: &str) -> Option<PathBuf> {
    unit_memory_dir(Path::new(CGROUP_ROOT), control_group)
}

/// The pid a pid file holds.
///
/// # Errors
///
/// The file cannot be read or holds no pid.
pub fn read_pid(file: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{}: no pid in {:?}", file.display(), text.trim()))
}

/// A process's resident set, from `/proc/PID/statm` (its second field, in pages).
///
/// # Errors
///
/// The process is gone or its statm cannot be read.
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/statm");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| format!("{path}: unexpected content {text:?}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * u64::try_from(page).unwrap_or(4096))
}

/// Established TCP connections whose local port is `port`, from `/proc/net/tcp` and `tcp6`
/// (this network namespace's); `None` if neither can be read.
pub fn connections(port: u16) -> Option<usize> {
    let mut found = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            *found.get_or_insert(0) += count_established(&text, port);
        }
    }
    found
}

/// Lines of a `/proc/net/tcp*` table in state ESTABLISHED (01) with local port `port`.
pub fn count_established(table: &str, port: u16) -> usize {
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3 && f[3] == "01" && f[1].ends_with(&want)
        })
        .count()
}

/// The port a check probes: the service's port (`HOST:PORT`, or an http URL's).
pub fn check_port(spec: &crate::health::CheckSpec) -> Option<u16> {
    match crate::health::LocalCheck::from_spec(0, spec).ok()? {
        crate::health::LocalCheck::Http { url, .. } => Some(url.port),
        crate::health::LocalCheck::Tcp { target, .. } => {
            target.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn established_connections_on_the_port_are_counted_and_nothing_else() {
        // 8080 = 0x1F90; states 0A (listen), 01 (established), 06 (time wait).
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000\n\
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000\n\
            2: 0100007F:1F90 0100007F:D433 01 00000000:00000000\n\
            3: 0100007F:1F90 0100007F:D435 06 00000000:00000000\n\
            4: 0100007F:D431 0100007F:1F90 01 00000000:00000000\n";
        assert_eq!(count_established(table, 8080), 2);
        assert_eq!(count_established(table, 80), 0);
    }

    #[test]
    fn the_memory_of_a_pid_file_is_its_process_resident_set() {
        let dir = std::env::temp_dir().join(format!("guard-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("app.pid");
        std::fs::write(&file, format!("{}\n", std::process::id())).unwrap();
        let rss = MemorySource::PidFile(file.clone()).read().unwrap();
        assert!(rss > 1 << 20, "{rss}");
        std::fs::write(&file, "nonsense").unwrap();
        let e = MemorySource::PidFile(file).read().unwrap_err();
        assert!(e.contains("no pid"), "{e}");
        let e = MemorySource::Cgroup(dir.clone()).read().unwrap_err();
        assert!(e.contains("memory.current"), "{e}");
        std::fs::write(dir.join("memory.current"), "2469606195\n").unwrap();
        assert_eq!(MemorySource::Cgroup(dir.clone()).read(), Ok(2_469_606_195));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_units_memory_is_found_on_cgroup_v2_or_the_v1_memory_controller_or_not_at_all() {
        let root = std::env::temp_dir().join(format!("guard-cgroups-{}", std::process::id()));
        let unit = "/system.slice/app.service";
        // Hybrid, as systemd-nspawn gives a container on a v1 host: the unit is in the
        // systemd hierarchies only, the read-only memory controller has no place for it.
        for d in [
            "unified/system.slice/app.service",
            "systemd/system.slice/app.service",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            std::fs::write(root.join(d).join("cgroup.procs"), "42\n").unwrap();
        }
        assert_eq!(unit_memory_dir(&root, unit), None);
        assert_eq!(unit_memory_dir(&root, ""), None);
        // The v1 memory controller with the unit in it.
        let v1 = root.join("memory/system.slice/app.service");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "8388608\n").unwrap();
        assert_eq!(unit_memory_dir(&root, unit), Some(v1.clone()));
        assert_eq!(MemorySource::Cgroup(v1).read(), Ok(8 << 20));
        // cgroup v2 wins where both are.
        let v2 = root.join("system.slice/app.service");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        assert_eq!(unit_memory_dir(&root, unit), Some(v2));
        let _ = std::fs::remove_dir_all(&root);
    }
}
