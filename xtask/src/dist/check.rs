//! `cargo xtask dist --check`: installs the package on this host, runs the installed binary on
//! a namespace interface with only the unit's capabilities, upgrades it over an edited config,
//! purges it, and checks that nothing is left; then the same under systemd (`container`).

use std::{
    env,
    fs::{self, File},
    io::{Read, Write as _},
    net::TcpStream,
    os::{
        fd::AsRawFd,
        unix::{net::UnixDatagram, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use super::{
    BIN, CHECK_DEBS, COMPLETIONS, CONFIG, DOC_DIR, Dist, MAN, STATE_DIR, UNIT, VERSION, bare, bin,
    capture, dpkg_deb, mkdirs, path_str, systemd_analyze_verify,
};
use crate::{prereqs, run, show};

/// What the run on the namespace uses: our pid keeps the names apart from other runs.
struct Names {
    ns: String,
    peer_ns: String,
    veth: String,
    peer: String,
    pins: PathBuf,
    tmp: PathBuf,
}

impl Names {
    fn new() -> Self {
        let pid = std::process::id();
        Self {
            ns: format!("gdist{pid}"),
            peer_ns: format!("gdist{pid}p"),
            veth: format!("gdist{pid}a"),
            peer: format!("gdist{pid}b"),
            pins: PathBuf::from(format!("/sys/fs/bpf/guard-disttest-{pid}")),
            tmp: env::temp_dir().join(format!("guard-disttest-{pid}")),
        }
    }
    fn socket(&self) -> PathBuf {
        self.tmp.join("guard.sock")
    }
    fn log(&self) -> PathBuf {
        self.tmp.join("daemon.log")
    }
}

/// Everything the check creates, removed on drop (also on error or panic): the daemon, the
/// pins, the namespaces, the package, the temporary directory.
struct Host {
    names: Names,
    daemon: Option<Child>,
    installed: bool,
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        if self.names.pins.exists() {
            // Unpinning the last reference to the link detaches the program.
            let _ = fs::remove_dir_all(&self.names.pins);
        }
        for ns in [&self.names.ns, &self.names.peer_ns] {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
        if self.installed {
            let _ = bare("dpkg").args(["--purge", "guard"]).status();
        }
        let _ = fs::remove_dir_all(&self.names.tmp);
    }
}

/// The outcome of each step, printed as it goes; the check fails at the end if one failed.
#[derive(Default)]
pub(super) struct Report {
    failed: Vec<String>,
}

impl Report {
    pub(super) fn step(&mut self, what: &str, r: Result<String>) {
        match r {
            Ok(detail) if detail.is_empty() => eprintln!("check: ok: {what}"),
            Ok(detail) => eprintln!("check: ok: {what}: {}", detail.trim_end()),
            Err(e) => {
                eprintln!("check: FAILED: {what}: {e:#}");
                self.failed.push(format!("{what}: {e:#}"));
            }
        }
    }
}

/// Installs the package on this host, runs it on a namespace interface with the unit's
/// capabilities only, upgrades it over an edited config, and purges it; then checks that
/// nothing is left.
pub fn check_on_this_host(dist: &Dist) -> Result<()> {
    prereqs::ensure_debs(CHECK_DEBS)?;
    prereqs::ensure_bpffs()?;
    preflight()?;
    let mut host = Host {
        names: Names::new(),
        daemon: None,
        installed: false,
    };
    let mut report = Report::default();
    mkdirs(&host.names.tmp)?;

    // Install, as an operator would.
    host.installed = true;
    let out = capture(bare("dpkg").args(["-i", path_str(&dist.deb)?])).context("dpkg -i failed")?;
    report.step(
        "dpkg -i says the service is not started",
        if out.contains("not started") {
            Ok(String::new())
        } else {
            Err(anyhow::anyhow!("postinst printed:\n{out}"))
        },
    );
    installed_checks(&mut report, dist);

    // An operator's edit of the conffile survives an upgrade. The edit is the pin directory,
    // which the prerm reads back when the package is removed.
    let names = &host.names;
    report.step("edit /etc/guard/guard.toml", edit_config(names));
    report.step("upgrade keeps the edited conffile", upgrade(dist, names));

    namespace(&mut report, &mut host)?;

    // Purge: the prerm detaches what the last run left attached, the postrm removes the rest.
    let purge = capture(bare("dpkg").args(["--purge", "guard"]));
    host.installed = purge.is_err();
    report.step(
        "dpkg --purge guard detaches the program left attached",
        purge.and_then(|out| {
            let pins = &host.names.pins;
            ensure!(!pins.exists(), "{} is still there", pins.display());
            ensure!(
                !xdp_attached(&host.names)?,
                "{} still has an XDP program",
                host.names.veth
            );
            Ok(out)
        }),
    );
    report.step("nothing of the package is left", leftovers());

    drop(host);
    report.step("nothing of the check is left", check_clean(&Names::new()));

    // The same package under a real systemd, in a container on a namespace of its own.
    let systemd = super::container::check_under_systemd(&mut report, dist);
    report.step(
        "systemd: the container check ran to the end",
        systemd.map(|()| String::new()),
    );

    if report.failed.is_empty() {
        eprintln!("check: all passed");
        Ok(())
    } else {
        bail!(
            "{} check(s) failed:\n  {}",
            report.failed.len(),
            report.failed.join("\n  ")
        )
    }
}

/// Refuses to run where the check would disturb something: an installed guard package (a
/// purge would take its config and state), or a guard using the default pins or socket (the
/// prerm would detach it).
fn preflight() -> Result<()> {
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "guard"])
        .stderr(Stdio::null())
        .output()
        .context("run dpkg-query")?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.trim().is_empty() || status.contains("not-installed"),
        "a guard package is on this host ({}): the check installs and purges its own, so remove it first (`dpkg --purge guard`)",
        status.trim()
    );
    for path in [
        "/usr/sbin/guard",
        "/etc/guard",
        "/var/lib/guard",
        "/run/guard/guard.sock",
        "/sys/fs/bpf/guard",
    ] {
        ensure!(
            !Path::new(path).exists(),
            "{path} exists: a guard is installed or running on this host, and the check's install and purge would disturb it"
        );
    }
    Ok(())
}

/// Checks of the installed package before it runs.
fn installed_checks(report: &mut Report, dist: &Dist) {
    report.step(
        "files are where the package puts them",
        (|| {
            let mut paths: Vec<String> = [BIN, CONFIG, UNIT, STATE_DIR, MAN]
                .iter()
                .map(|p| format!("/{p}"))
                .collect();
            paths.extend(COMPLETIONS.iter().map(|(_, _, p)| format!("/{p}")));
            paths.extend(
                ["README.md", "copyright", "changelog.gz", "THIRD-PARTY.txt"]
                    .iter()
                    .map(|f| format!("/{DOC_DIR}/{f}")),
            );
            let missing: Vec<&String> = paths.iter().filter(|p| !Path::new(p).exists()).collect();
            ensure!(missing.is_empty(), "missing: {missing:?}");
            Ok(format!("{} paths", paths.len()))
        })(),
    );
    report.step(
        "the config is a conffile",
        capture(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "guard"])).and_then(
            |c| {
                ensure!(c.contains(&format!("/{CONFIG} ")), "conffiles: {c:?}");
                Ok(c.trim().to_string())
            },
        ),
    );
    report.step(
        "the binary needs only libc and libgcc_s",
        capture(bare("ldd").arg(format!("/{BIN}"))).and_then(|ldd| {
            let libs: Vec<&str> = ldd
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|l| !l.starts_with("linux-vdso") && !l.contains("ld-linux"))
                .collect();
            ensure!(
                libs.iter()
                    .all(|l| *l == "libc.so.6" || *l == "libgcc_s.so.1"),
                "ldd: {ldd}"
            );
            Ok(libs.join(" "))
        }),
    );
    report.step(
        "no Rust toolchain on the PATH the checks use",
        (|| {
            let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
            let found: Vec<PathBuf> = env::split_paths(path)
                .flat_map(|d| ["cargo", "rustc", "rustup"].map(|t| d.join(t)))
                .filter(|p| p.exists())
                .collect();
            ensure!(found.is_empty(), "found {found:?}");
            Ok(format!("PATH={path}, environment emptied"))
        })(),
    );
    report.step(
        "/usr/sbin/guard --version",
        capture(&mut bin(Path::new("/usr/sbin/guard"), &["--version"])).and_then(|v| {
            ensure!(v.starts_with(&format!("guard {VERSION}")), "{v}");
            if let Some(c) = &dist.commit {
                ensure!(v.contains(c.as_str()), "no commit {c} in:\n{v}");
            }
            Ok(format!("\n{v}"))
        }),
    );
    report.step(
        "guard config check /etc/guard/guard.toml",
        capture(&mut bin(
            Path::new("guard"),
            &["config", "check", "/etc/guard/guard.toml"],
        ))
        .map(|out| format!("\n{out}")),
    );
    report.step(
        "systemd-analyze verify on the installed unit",
        systemd_analyze_verify(bare("systemd-analyze").args(["verify", &format!("/{UNIT}")]))
            .map(|()| String::new()),
    );
    report.step(
        "bash completion parses",
        capture(bare("bash").args(["-n", &format!("/{}", COMPLETIONS[0].2)]))
            .map(|_| String::new()),
    );
}

/// Points the installed config's pin_dir at the check's directory.
fn edit_config(names: &Names) -> Result<String> {
    let path = format!("/{CONFIG}");
    let text = fs::read_to_string(&path)?;
    let from = "pin_dir = \"/sys/fs/bpf/guard\"\n";
    ensure!(
        text.matches(from).count() == 1,
        "{path} has no single line {from:?}"
    );
    let to = format!("pin_dir = \"{}\"\n", names.pins.display());
    fs::write(&path, text.replace(from, &to))?;
    Ok(to.trim().to_string())
}

/// Installs the same package under a later version over the edited config, as an upgrade.
fn upgrade(dist: &Dist, names: &Names) -> Result<String> {
    let version = format!("{VERSION}+distcheck1");
    let root = names.tmp.join("upgrade");
    run(&mut crate::cmd(
        "cp",
        &["-a", path_str(&dist.deb_root)?, path_str(&root)?],
    ))?;
    let control_path = root.join("DEBIAN/control");
    let control = fs::read_to_string(&control_path)?;
    fs::write(
        &control_path,
        control.replace(
            &format!("\nVersion: {VERSION}\n"),
            &format!("\nVersion: {version}\n"),
        ),
    )?;
    let deb = names.tmp.join("guard-upgrade.deb");
    dpkg_deb(&root, &deb, 0)?;
    let before = fs::read_to_string(format!("/{CONFIG}"))?;
    capture(
        bare("dpkg")
            .args(["-i", path_str(&deb)?])
            .stdin(Stdio::null()),
    )?;
    let now = capture(Command::new("dpkg-query").args(["-W", "-f=${Version}", "guard"]))?;
    ensure!(now == version, "installed version {now}, not {version}");
    let after = fs::read_to_string(format!("/{CONFIG}"))?;
    ensure!(after == before, "the upgrade changed /{CONFIG}");
    for suffix in ["dpkg-new", "dpkg-dist", "dpkg-old"] {
        let p = format!("/{CONFIG}.{suffix}");
        ensure!(!Path::new(&p).exists(), "{p} appeared");
    }
    Ok(format!("{VERSION} -> {version}"))
}

/// The runs of the installed binary on a namespace interface: serve and detach; stop with the
/// program left attached; adopt it on the next start. The last run leaves it attached for the
/// purge to detach.
fn namespace(report: &mut Report, host: &mut Host) -> Result<()> {
    let n = &host.names;
    for ns in [&n.ns, &n.peer_ns] {
        ip(&["netns", "add", ns])?;
    }
    ip(&[
        "link", "add", &n.veth, "netns", &n.ns, "type", "veth", "peer", "name", &n.peer, "netns",
        &n.peer_ns,
    ])?;
    ip(&[
        "-n",
        &n.ns,
        "addr",
        "add",
        "198.19.251.1/30",
        "dev",
        &n.veth,
    ])?;
    ip(&[
        "-n",
        &n.peer_ns,
        "addr",
        "add",
        "198.19.251.2/30",
        "dev",
        &n.peer,
    ])?;
    for (ns, dev) in [
        (&n.ns, &n.veth),
        (&n.peer_ns, &n.peer),
        (&n.ns, &"lo".to_string()),
    ] {
        ip(&["-n", ns, "link", "set", dev, "up"])?;
    }
    let caps = unit_capabilities(&fs::read_to_string(format!("/{UNIT}"))?)?;
    report.step(
        "capabilities from the unit's CapabilityBoundingSet",
        Ok(caps.clone()),
    );

    // 1. Serve: ready, watchdog, status, health, reload; then detach.
    let notify = start(host, &caps)?;
    let ready = wait_notify(host, &notify, "READY=1", Duration::from_secs(15));
    let is_ready = ready.is_ok();
    report.step("guard run sends READY=1 (Type=notify)", ready);
    if !is_ready {
        bail!("the daemon did not start:\n{}", log(&host.names));
    }
    report.step(
        "guard run sends WATCHDOG=1 while healthy (WatchdogSec)",
        wait_notify(host, &notify, "WATCHDOG=1", Duration::from_secs(4)).map_err(|e| {
            e.context("with WATCHDOG_USEC=2000000 set the daemon sent no WATCHDOG=1: under the unit's WatchdogSec systemd would kill it")
        }),
    );
    let n = &host.names;
    report.step(
        "the program is attached to the namespace interface",
        xdp_attached(n).and_then(|a| {
            ensure!(a, "no xdp on {}", n.veth);
            Ok(n.veth.clone())
        }),
    );
    report.step(
        "guard status",
        client(n, &["status"]).and_then(|s| {
            ensure!(s.contains(&n.veth), "no {} in:\n{s}", n.veth);
            Ok(format!("\n{s}"))
        }),
    );
    report.step("GET /livez on the health listener", livez(&n.ns));
    report.step("SIGHUP reloads and the daemon carries on", sighup(host));
    let n = &host.names;
    report.step("guard detach", client(n, &["detach"]));
    report.step(
        "detach stops the daemon and removes program and pins",
        wait_exit(host).and_then(|code| {
            let n = &host.names;
            ensure!(code == 0, "the daemon exited with {code}");
            ensure!(!n.pins.exists(), "{} is still there", n.pins.display());
            ensure!(!xdp_attached(n)?, "{} still has an XDP program", n.veth);
            Ok(String::new())
        }),
    );

    // 2. SIGTERM leaves the program attached (fail-static).
    let notify = start(host, &caps)?;
    wait_notify(host, &notify, "READY=1", Duration::from_secs(15))?;
    signal(host, libc::SIGTERM)?;
    report.step(
        "SIGTERM stops the daemon and leaves the program attached",
        wait_exit(host).and_then(|code| {
            let n = &host.names;
            ensure!(code == 0, "the daemon exited with {code}");
            ensure!(n.pins.exists(), "{} is gone", n.pins.display());
            ensure!(xdp_attached(n)?, "no XDP program on {}", n.veth);
            Ok(String::new())
        }),
    );

    // 3. A new daemon adopts it.
    let notify = start(host, &caps)?;
    wait_notify(host, &notify, "READY=1", Duration::from_secs(15))?;
    report.step(
        "a restarted daemon adopts the pinned program",
        (|| {
            let log = log(&host.names);
            ensure!(log.contains("adopted from the pins"), "daemon log:\n{log}");
            Ok(String::new())
        })(),
    );
    signal(host, libc::SIGTERM)?;
    let code = wait_exit(host)?;
    ensure!(code == 0, "the daemon exited with {code}");
    Ok(())
}

/// `ip ARGS`, failing with its standard error.
fn ip(args: &[&str]) -> Result<()> {
    capture(bare("ip").args(args)).map(drop)
}

/// Whether the namespace interface has an XDP program (`ip link` shows `xdp`).
fn xdp_attached(n: &Names) -> Result<bool> {
    let link = capture(bare("ip").args(["-n", &n.ns, "link", "show", "dev", &n.veth]))?;
    Ok(link.split_whitespace().any(|w| w.starts_with("xdp")))
}

/// The unit's CapabilityBoundingSet as setpriv's `--bounding-set` wants it: `-all,+bpf,...`.
fn unit_capabilities(unit: &str) -> Result<String> {
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    ensure!(!caps.is_empty(), "the unit has no CapabilityBoundingSet=");
    Ok(format!("-all,{}", caps.join(",")))
}

/// Starts `guard run` in the namespace as the unit would: the installed config, root with only
/// the unit's capabilities and no new privileges, NOTIFY_SOCKET and WATCHDOG_USEC set. Test
/// paths for the socket, pins and state come from the command line. Returns the notify socket.
fn start(host: &mut Host, caps: &str) -> Result<UnixDatagram> {
    let n = &host.names;
    let notify_path = n.tmp.join("notify");
    let _ = fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path)
        .with_context(|| format!("bind {}", notify_path.display()))?;
    notify.set_read_timeout(Some(Duration::from_millis(200)))?;
    let log = File::options().create(true).append(true).open(n.log())?;
    let state = n.tmp.join("state");
    let mut c = bare("nsenter");
    c.arg(format!("--net=/run/netns/{}", n.ns))
        .args(["setpriv", "--no-new-privs", "--inh-caps=-all"])
        .arg(format!("--bounding-set={caps}"))
        .args([
            "--",
            "/usr/sbin/guard",
            "run",
            "--config",
            "/etc/guard/guard.toml",
        ])
        .args(["--iface", &n.veth])
        .arg("--socket")
        .arg(n.socket())
        .arg("--pin-dir")
        .arg(&n.pins)
        .arg("--state-dir")
        .arg(&state)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(log.try_clone()?)
        .stderr(log);
    eprintln!("xtask: {}", show(&c));
    // nsenter and setpriv exec, so the child is the daemon itself, the unit's main process.
    host.daemon = Some(c.spawn().context("start guard run")?);
    Ok(notify)
}

/// Waits for `want` on the notify socket, failing early if the daemon exits.
fn wait_notify(
    host: &mut Host,
    notify: &UnixDatagram,
    want: &str,
    within: Duration,
) -> Result<String> {
    let start = Instant::now();
    let deadline = start + within;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        match notify.recv(&mut buf) {
            Ok(len) => {
                let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return Ok(format!("after {:.1?}", start.elapsed()));
                }
                seen.push(msg);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("read the notify socket"),
        }
        if let Some(d) = host.daemon.as_mut()
            && let Some(status) = d.try_wait()?
        {
            bail!(
                "the daemon exited ({status}) before sending {want}; log:\n{}",
                log(&host.names)
            );
        }
    }
    bail!("no {want} within {within:?} (got {seen:?})")
}

/// Sends `sig` to the daemon.
fn signal(host: &Host, sig: libc::c_int) -> Result<()> {
    let child = host.daemon.as_ref().context("no daemon running")?;
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill");
    }
    Ok(())
}

/// Waits up to 10 s for the daemon to exit; its exit code, or 128 + the signal.
fn wait_exit(host: &mut Host) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let child = host.daemon.as_mut().context("no daemon running")?;
    loop {
        if let Some(status) = child.try_wait()? {
            host.daemon = None;
            return Ok(status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon has not exited after 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// SIGHUP, then the daemon must log the reload and still answer.
fn sighup(host: &mut Host) -> Result<String> {
    signal(host, libc::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log(&host.names).contains("SIGHUP") {
        ensure!(
            Instant::now() < deadline,
            "no reload in the log:\n{}",
            log(&host.names)
        );
        thread::sleep(Duration::from_millis(100));
    }
    if let Some(d) = host.daemon.as_mut() {
        ensure!(d.try_wait()?.is_none(), "the daemon exited after SIGHUP");
    }
    client(&host.names, &["status"]).map(|_| String::new())
}

/// `guard <args>` against the check's socket and pins, as a client without a toolchain.
fn client(n: &Names, args: &[&str]) -> Result<String> {
    let mut c = bin(Path::new("/usr/sbin/guard"), args);
    c.arg("--socket").arg(n.socket());
    if args == ["detach"] {
        c.arg("--pin-dir").arg(&n.pins);
    }
    capture(&mut c)
}

/// GET /livez from inside the namespace, on the installed config's listener.
fn livez(ns: &str) -> Result<String> {
    let path = format!("/run/netns/{ns}");
    let h = thread::spawn(move || -> Result<String> {
        let netns = File::open(&path).with_context(|| format!("open {path}"))?;
        // SAFETY: setns with a valid netns fd moves only this thread into the namespace.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        let mut s = TcpStream::connect("127.0.0.1:9301").context("connect 127.0.0.1:9301")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /livez HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        let status = reply.lines().next().unwrap_or_default().to_string();
        ensure!(status.contains(" 200"), "reply: {reply}");
        Ok(status)
    });
    h.join()
        .map_err(|_| anyhow::anyhow!("the health probe thread panicked"))?
}

fn log(n: &Names) -> String {
    fs::read_to_string(n.log()).unwrap_or_default()
}

/// After the purge: the package is gone and so is everything it installed or made.
fn leftovers() -> Result<String> {
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "guard"])
        .stderr(Stdio::null())
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status.trim().is_empty() || status.contains("not-installed"),
        "dpkg still knows guard: {status}"
    );
    let mut paths: Vec<String> = [
        BIN,
        CONFIG,
        UNIT,
        STATE_DIR,
        MAN,
        DOC_DIR,
        "etc/guard",
        "run/guard",
    ]
    .iter()
    .map(|p| format!("/{p}"))
    .collect();
    paths.extend(COMPLETIONS.iter().map(|(_, _, p)| format!("/{p}")));
    let left: Vec<&String> = paths.iter().filter(|p| Path::new(p).exists()).collect();
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(String::new())
}

/// After the cleanup: no namespace, pins, temporary files or daemon of this check.
fn check_clean(n: &Names) -> Result<String> {
    let mut left = Vec::new();
    for ns in [&n.ns, &n.peer_ns] {
        if Path::new("/run/netns").join(ns).exists() {
            left.push(format!("namespace {ns}"));
        }
    }
    for p in [&n.pins, &n.tmp] {
        if p.exists() {
            left.push(p.display().to_string());
        }
    }
    // Any process still running the installed binary (there should be none: it is gone).
    for entry in fs::read_dir("/proc")?.flatten() {
        if let Ok(exe) = fs::read_link(entry.path().join("exe"))
            && exe.to_string_lossy().starts_with("/usr/sbin/guard")
        {
            left.push(format!("process {}", entry.file_name().to_string_lossy()));
        }
    }
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_capabilities_become_a_setpriv_bounding_set() {
        let unit = "[Service]\nCapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_PERFMON\n";
        assert_eq!(
            unit_capabilities(unit).unwrap(),
            "-all,+bpf,+net_admin,+perfmon"
        );
        assert!(unit_capabilities("[Service]\n").is_err());
    }
}
