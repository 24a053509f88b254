//! `cargo xtask dist --check`, under systemd: a Debian 12 container (debootstrap, cached under
//! target/dist/) boots with systemd-nspawn in a network namespace of its own whose default route
//! leaves through a veth, so the unit, unchanged, attaches there and nowhere else.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{Dist, bare, capture, check::Report, mkdirs, path_str};
use crate::{prereqs, run};

mod watchdog;

/// What booting the container takes.
const CONTAINER_DEBS: &[&str] = &["systemd-container", "debootstrap"];
/// The container's Debian: the release the package is built for, and what it needs to boot
/// systemd and install the package (its Depends), and busybox for the watchdog's service (its
/// httpd) and client (wget).
const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,procps,libgcc-s1,busybox";
/// CapEff the daemon must run with: CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const UNIT_CAP_EFF: &str = "000000c000001000";
/// The watchdog period the container's drop-in sets, so that a missing WATCHDOG=1 shows in
/// seconds rather than the unit's 30.
const TEST_WATCHDOG_SECS: u64 = 3;

/// Everything the container check creates, removed on drop (also on error or panic).
struct Container {
    pid: u32,
    nspawn: Option<Child>,
    /// The container's PID 1, seen from the host.
    leader: Option<i32>,
    tmp: PathBuf,
    pins: PathBuf,
    /// Whether nspawn's runtime directory was there before (else it is removed after).
    had_run_dir: bool,
}

impl Container {
    fn ns(&self) -> String {
        format!("gbox{}", self.pid)
    }
    fn peer_ns(&self) -> String {
        format!("gbox{}p", self.pid)
    }
    fn veth(&self) -> String {
        format!("gbox{}a", self.pid)
    }
    fn log(&self) -> String {
        fs::read_to_string(self.tmp.join("nspawn.log")).unwrap_or_default()
    }

    /// `args` run inside the container, with a plain environment.
    fn exec(&self, args: &[&str]) -> Result<String> {
        let leader = self.leader.context("the container is not running")?;
        let mut c = bare("nsenter");
        c.args(["-t", &leader.to_string(), "-a", "env", "-i"])
            .arg("PATH=/usr/sbin:/usr/bin:/sbin:/bin")
            .arg("SYSTEMD_PAGER=")
            .args(args);
        capture(&mut c)
    }

    /// Whether the container's default-route interface has an XDP program.
    fn xdp_attached(&self) -> Result<bool> {
        let link =
            capture(bare("ip").args(["-n", &self.ns(), "link", "show", "dev", &self.veth()]))?;
        Ok(link.split_whitespace().any(|w| w.starts_with("xdp")))
    }

    /// Powers the container off (SIGRTMIN+4 to its systemd), waits up to 30 s, then kills.
    fn power_off(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        if let Some(leader) = self.leader.take() {
            // SAFETY: kill(2) on the container's PID 1, a process of ours (nspawn's child).
            unsafe { libc::kill(leader, libc::SIGRTMIN() + 4) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = nspawn.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = nspawn.kill();
        let _ = nspawn.wait();
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        let _ = fs::remove_dir_all(&self.pins);
        for ns in [self.ns(), self.peer_ns()] {
            if Path::new("/run/netns").join(&ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", &ns]).status();
            }
        }
        if !self.had_run_dir {
            for dir in ["propagate", "locks", ""] {
                let _ = fs::remove_dir(Path::new("/run/systemd/nspawn").join(dir));
            }
        }
        let _ = fs::remove_dir_all(&self.tmp);
    }
}

/// Boots the container, installs the package there and drives it through systemd: not started
/// on install, `enable --now`, the capabilities it really holds, reload, the watchdog, stop
/// (the program stays) and start (adopted), remove (detached) and purge.
pub fn check_under_systemd(report: &mut Report, dist: &Dist) -> Result<()> {
    prereqs::ensure_debs(CONTAINER_DEBS)?;
    let dist_dir = dist.deb.parent().context("the .deb has no directory")?;
    let root = rootfs(dist_dir)?;
    let pid = std::process::id();
    let mut c = Container {
        pid,
        nspawn: None,
        leader: None,
        tmp: std::env::temp_dir().join(format!("guard-distbox-{pid}")),
        pins: PathBuf::from(format!("/sys/fs/bpf/guard-distbox-{pid}")),
        had_run_dir: Path::new("/run/systemd/nspawn").exists(),
    };
    mkdirs(&c.tmp)?;
    fs::create_dir(&c.pins).with_context(|| format!("mkdir {}", c.pins.display()))?;
    let (ns, peer_ns, veth, peer) = (c.ns(), c.peer_ns(), c.veth(), format!("gbox{pid}b"));
    for n in [&ns, &peer_ns] {
        ip(&["netns", "add", n])?;
    }
    ip(&[
        "link", "add", &veth, "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
        &peer_ns,
    ])?;
    ip(&["-n", &ns, "addr", "add", "198.19.253.1/30", "dev", &veth])?;
    ip(&[
        "-n",
        &peer_ns,
        "addr",
        "add",
        "198.19.253.2/30",
        "dev",
        &peer,
    ])?;
    ip(&["-n", &ns, "link", "set", &veth, "up"])?;
    ip(&["-n", &peer_ns, "link", "set", &peer, "up"])?;
    ip(&["-n", &ns, "route", "add", "default", "via", "198.19.253.2"])?;

    boot(&mut c, &root, &dist.deb)?;

    let installed = c.exec(&["dpkg", "-i", "/mnt/guard.deb"]);
    report.step(
        "systemd: dpkg -i leaves the service disabled and stopped",
        installed.and_then(|_| {
            let enabled = c
                .exec(&["systemctl", "is-enabled", "guard"])
                .unwrap_or_else(|e| format!("{e:#}"));
            let active = c
                .exec(&["systemctl", "is-active", "guard"])
                .unwrap_or_else(|e| format!("{e:#}"));
            ensure!(
                enabled.trim_end().ends_with("disabled") && active.trim_end().ends_with("inactive"),
                "is-enabled: {enabled}; is-active: {active}"
            );
            ensure!(!c.xdp_attached()?, "something is attached already");
            Ok(String::new())
        }),
    );
    c.exec(&[
        "sh",
        "-c",
        &format!(
            "mkdir -p /etc/systemd/system/guard.service.d && printf '[Service]\\nWatchdogSec={TEST_WATCHDOG_SECS}s\\n' > /etc/systemd/system/guard.service.d/watchdog.conf && systemctl daemon-reload"
        ),
    ])?;

    let started = c.exec(&["systemctl", "enable", "--now", "guard"]);
    let running = started.is_ok();
    report.step(
        "systemd: systemctl enable --now guard (Type=notify: returns once attached)",
        started.and_then(|_| {
            ensure!(c.xdp_attached()?, "no XDP program on {}", c.veth());
            Ok(format!(
                "attached to {}, the container's default-route interface",
                c.veth()
            ))
        }),
    );
    if !running {
        let journal = c
            .exec(&["journalctl", "-u", "guard", "--no-pager"])
            .unwrap_or_default();
        bail!("the service did not start under systemd; its journal:\n{journal}");
    }
    report.step(
        "systemd: the daemon holds only CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, with NoNewPrivileges",
        (|| {
            let main = c.exec(&["systemctl", "show", "-p", "MainPID", "--value", "guard"])?;
            let status = c.exec(&["cat", &format!("/proc/{}/status", main.trim())])?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_string()
            };
            let (eff, bnd, nnp) = (field("CapEff:"), field("CapBnd:"), field("NoNewPrivs:"));
            ensure!(
                eff == UNIT_CAP_EFF && bnd == UNIT_CAP_EFF && nnp == "1",
                "CapEff {eff}, CapBnd {bnd}, NoNewPrivs {nnp}"
            );
            Ok(format!("CapEff {eff}"))
        })(),
    );
    report.step(
        "systemd: guard status",
        c.exec(&["guard", "status"]).map(|s| format!("\n{s}")),
    );
    report.step(
        "systemd: systemctl reload guard re-reads the config",
        c.exec(&["systemctl", "reload", "guard"]).and_then(|_| {
            let journal = c.exec(&["journalctl", "-u", "guard", "--no-pager"])?;
            ensure!(
                journal.contains("SIGHUP"),
                "no reload in the journal:\n{journal}"
            );
            Ok(String::new())
        }),
    );
    thread::sleep(Duration::from_secs(2 * TEST_WATCHDOG_SECS + 1));
    report.step(
        &format!(
            "systemd: no watchdog restart in {}s with WatchdogSec={TEST_WATCHDOG_SECS}s",
            2 * TEST_WATCHDOG_SECS + 1
        ),
        (|| {
            let restarts = c.exec(&["systemctl", "show", "-p", "NRestarts", "--value", "guard"])?;
            if restarts.trim() != "0" {
                let journal = c.exec(&["journalctl", "-u", "guard", "--no-pager"])?;
                let lines: Vec<&str> = journal
                    .lines()
                    .filter(|l| l.contains("atchdog"))
                    .take(2)
                    .collect();
                bail!("{} restarts: {}", restarts.trim(), lines.join(" / "));
            }
            Ok(String::new())
        })(),
    );
    report.step(
        "systemd: systemctl stop leaves the program attached; start adopts it",
        (|| {
            c.exec(&["systemctl", "stop", "guard"])?;
            ensure!(c.xdp_attached()?, "stop detached the program");
            c.exec(&["systemctl", "start", "guard"])?;
            let journal = c.exec(&["journalctl", "-u", "guard", "--no-pager"])?;
            let last = journal
                .lines()
                .rev()
                .find(|l| l.contains("attached to"))
                .unwrap_or_default();
            ensure!(
                last.contains("adopted from the pins"),
                "last attach: {last}"
            );
            Ok(String::new())
        })(),
    );
    watchdog_steps(report, &c);
    report.step(
        "systemd: dpkg -r stops the service and detaches the program",
        c.exec(&["dpkg", "-r", "guard"]).and_then(|out| {
            ensure!(!c.xdp_attached()?, "still attached after dpkg -r:\n{out}");
            let active = c
                .exec(&["systemctl", "is-active", "guard"])
                .unwrap_or_else(|e| format!("{e:#}"));
            ensure!(
                active.trim_end().ends_with("inactive"),
                "is-active: {active}"
            );
            ensure!(
                fs::read_dir(&c.pins)?.next().is_none(),
                "pins left under {}",
                c.pins.display()
            );
            Ok(out
                .lines()
                .filter(|l| l.contains("detached"))
                .collect::<Vec<_>>()
                .join(""))
        }),
    );
    report.step(
        "systemd: dpkg --purge leaves nothing",
        c.exec(&["dpkg", "--purge", "guard"]).and_then(|_| {
            let left = c.exec(&[
                "sh",
                "-c",
                "ls -d /etc/guard /var/lib/guard /run/guard /etc/systemd/system/multi-user.target.wants/guard.service /usr/sbin/guard 2>/dev/null; true",
            ])?;
            ensure!(left.trim().is_empty(), "left: {left}");
            Ok(String::new())
        }),
    );

    c.power_off();
    let (tmp, pins) = (c.tmp.clone(), c.pins.clone());
    drop(c);
    report.step(
        "systemd: nothing of the container is left",
        (|| {
            let mut left = Vec::new();
            for n in [&ns, &peer_ns] {
                if Path::new("/run/netns").join(n).exists() {
                    left.push(format!("namespace {n}"));
                }
            }
            for p in [&tmp, &pins] {
                if p.exists() {
                    left.push(p.display().to_string());
                }
            }
            // nspawn --ephemeral copies the tree next to it as .#<name>...; gone once it exits.
            let parent = root.parent().context("the rootfs has a parent")?;
            for entry in fs::read_dir(parent)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with(".#") {
                    left.push(entry.path().display().to_string());
                }
            }
            ensure!(left.is_empty(), "left behind: {left:?}");
            Ok(String::new())
        })(),
    );
    Ok(())
}

/// `[[watchdog]]` in unit mode, through the container's systemd over D-Bus.
fn watchdog_steps(report: &mut Report, c: &Container) {
    let app = watchdog::start_app(c);
    let ready = app.is_ok();
    report.step(
        "systemd: the watchdog's service guard-app.service runs",
        app,
    );
    if !ready {
        return;
    }
    report.step(
        "systemd: a [[watchdog]] unit systemd does not have stops the start, naming the field",
        watchdog::unknown_unit_refused(c),
    );
    report.step(
        "systemd: a [[watchdog]] max_memory is read from the unit's memory cgroup, or refused at start where there is none",
        watchdog::max_memory_read_or_refused(c),
    );
    report.step(
        "systemd: the watchdog drains, restarts guard-app.service through D-Bus, readmits, then holds the host drained (min_interval)",
        watchdog::unit_mode_sequence(c).map(|seen| {
            format!(
                "drained \"{}\"; InvocationID {} -> {}; held \"{}\"",
                seen.drained, seen.invocations.0, seen.invocations.1, seen.held
            )
        }),
    );
}

/// The container's root file system: made once with debootstrap and kept in `dir`; every boot
/// runs on a throwaway copy of it (`--ephemeral`). Its marker holds the package list, so a
/// tree made with other packages is made again.
fn rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join(format!("rootfs-{SUITE}"));
    let done = dir.join(format!("rootfs-{SUITE}.done"));
    let made_with = fs::read_to_string(&done).unwrap_or_default();
    if made_with.trim() == ROOT_PACKAGES && root.is_dir() {
        eprintln!("xtask: container root file system: {}", root.display());
        return Ok(root);
    }
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    run(&mut crate::cmd(
        "debootstrap",
        &[
            "--variant=minbase",
            &format!("--include={ROOT_PACKAGES}"),
            SUITE,
            path_str(&root)?,
            MIRROR,
        ],
    ))
    .context("debootstrap could not make the container's root file system")?;
    fs::write(&done, ROOT_PACKAGES).with_context(|| format!("write {}", done.display()))?;
    Ok(root)
}

/// Boots the container on the namespace, with the package bound in read-only at /mnt/guard.deb
/// and the check's own bpffs directory as its /sys/fs/bpf, and waits for systemd to finish
/// booting.
fn boot(c: &mut Container, root: &Path, deb: &Path) -> Result<()> {
    let log = File::create(c.tmp.join("nspawn.log"))?;
    let mut nspawn = bare("systemd-nspawn");
    nspawn
        .args([
            "--boot",
            "--ephemeral",
            "--register=no",
            "--keep-unit",
            "--console=passive",
        ])
        .arg(format!("--machine=guard-distbox-{}", c.pid))
        .arg(format!("--directory={}", path_str(root)?))
        .arg(format!("--network-namespace-path=/run/netns/{}", c.ns()))
        .arg(format!("--bind={}:/sys/fs/bpf", path_str(&c.pins)?))
        .arg(format!("--bind-ro={}:/mnt/guard.deb", path_str(deb)?))
        // What the unit asks for must be there to be given; nspawn's seccomp filter lets
        // bpf(2) through only when told.
        .args([
            "--capability=CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN",
            "--system-call-filter=bpf",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    eprintln!("xtask: {}", crate::show(&nspawn));
    let child = nspawn.spawn().context("start systemd-nspawn")?;
    let nspawn_pid = i32::try_from(child.id())?;
    c.nspawn = Some(child);

    let deadline = Instant::now() + Duration::from_secs(60);
    while c.leader.is_none() {
        ensure!(
            Instant::now() < deadline,
            "the container did not start:\n{}",
            c.log()
        );
        if let Some(Ok(Some(status))) = c.nspawn.as_mut().map(Child::try_wait) {
            bail!("systemd-nspawn exited ({status}):\n{}", c.log());
        }
        c.leader = child_named(nspawn_pid, "systemd");
        thread::sleep(Duration::from_millis(200));
    }
    loop {
        // `is-system-running --wait` needs the manager's bus; until it is up, ask again.
        match c.exec(&["timeout", "60", "systemctl", "is-system-running", "--wait"]) {
            Ok(state) => {
                eprintln!("xtask: container booted: {}", state.trim());
                return Ok(());
            }
            Err(e) => {
                let msg = format!("{e:#}");
                // "degraded" exits non-zero but is booted (a unit of the minimal image failed).
                if msg.contains("degraded") {
                    eprintln!("xtask: container booted: degraded");
                    return Ok(());
                }
                ensure!(
                    Instant::now() < deadline,
                    "the container did not boot: {msg}\n{}",
                    c.log()
                );
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// A child process of `parent` whose command is `comm`.
fn child_named(parent: i32, comm: &str) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let stat = fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split at the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let name = head.split_once('(')?.1;
        let ppid: i32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && name == comm).then_some(pid)
    })
}

fn ip(args: &[&str]) -> Result<()> {
    capture(bare("ip").args(args)).map(drop)
}
