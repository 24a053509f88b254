//! Tests that this host's kernel cannot run (it refuses freplace programs, which libxdp's
//! dispatcher needs) re-run themselves in the test VM that `cargo xtask test` builds.
//!
//! The VM is described in xtask/src/vm.rs, with the contract kept here: GUARD_VM_KERNEL and
//! GUARD_VM_INITRD name it; `cmd.sh` in a share tagged `guardrun` is what it runs, and its
//! `status` file the exit code. The VM sees the host's files read-only and has no network device.
#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Where the calling test is to go on.
#[derive(Debug, PartialEq, Eq)]
pub enum Place {
    /// Here: this kernel can run it, or this is the VM.
    Here,
    /// It ran in the VM and passed there: the caller returns.
    InVm,
    /// It cannot run here and there is no VM (outside `cargo xtask test`): skipped, saying why.
    Skipped,
}

/// How long a VM run may take (GUARD_VM_TIMEOUT seconds) before qemu is killed and the test
/// fails. Under TCG (no usable KVM) the VM is several times slower than the host.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One VM at a time per test binary: under TCG each takes a CPU per vCPU.
static ONE_VM: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs the calling test here if `can_here()` says this kernel can, or if this is already the
/// VM (GUARD_IN_VM=1); otherwise re-runs exactly this test (`test`, the name libtest knows it
/// by: the function's name for a test at the top of its file) in the test VM and returns
/// [`Place::InVm`] once it passed there, or panics with the end of its output if it did not.
/// Without a VM (GUARD_VM_KERNEL, GUARD_VM_INITRD unset) the test skips, saying why, except
/// under `cargo xtask test`, where that fails.
///
/// ```ignore
/// if vm::here_or_in_vm("dispatcher_beside_xdp_filter", vm::xdp_dispatcher_works) != Place::Here {
///     return;
/// }
/// ```
///
/// In the VM the test sees GUARD_VM_HOST_RELEASE, the host's kernel release.
pub fn here_or_in_vm(test: &str, can_here: impl FnOnce() -> Result<(), String>) -> Place {
    if let Some(thread) = std::thread::current().name().filter(|n| *n != "main") {
        assert_eq!(
            thread, test,
            "here_or_in_vm: libtest runs this test as {thread:?}, so that is the name to pass"
        );
    }
    if std::env::var("GUARD_IN_VM").as_deref() == Ok("1") {
        return Place::Here;
    }
    let why = match can_here() {
        Ok(()) => return Place::Here,
        Err(why) => why,
    };
    let (Some(kernel), Some(initrd)) = (
        std::env::var_os("GUARD_VM_KERNEL"),
        std::env::var_os("GUARD_VM_INITRD"),
    ) else {
        let why = format!(
            "{why}, and no test VM to run it in (GUARD_VM_KERNEL, GUARD_VM_INITRD); run `cargo xtask test`"
        );
        assert!(!super::required(), "{test}: {why}");
        super::skip(test, &why);
        return Place::Skipped;
    };
    eprintln!("{test}: {why}: running it in the test VM");
    let exe = std::env::current_exe().expect("the test binary's path");
    let argv = [
        exe.to_string_lossy().into_owned(),
        test.to_owned(),
        "--exact".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
    ];
    let mut envs: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            ["GUARD_", "CARGO_", "RUST_"]
                .iter()
                .any(|p| k.starts_with(p))
                || ["PATH", "HOME"].contains(&k.as_str())
        })
        .collect();
    envs.push(("GUARD_IN_VM".into(), "1".into()));
    envs.push(("GUARD_VM_HOST_RELEASE".into(), host_release()));
    let timeout = std::env::var("GUARD_VM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let vm = Vm {
        kernel: kernel.into(),
        initrd: initrd.into(),
        accel: std::env::var("GUARD_VM_ACCEL").unwrap_or_else(|_| "tcg".into()),
    };
    let started = Instant::now();
    let (code, console) = {
        let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
        vm.run(
            &argv,
            &envs,
            &std::env::current_dir().expect("cwd"),
            timeout,
        )
    };
    // `--exact` with a name that matches nothing runs nothing and exits 0.
    let passed = console
        .lines()
        .any(|l| l.trim() == format!("test {test} ... ok"));
    if code != Some(0) || !passed {
        let code = code.map_or("none (see the console)".into(), |c| c.to_string());
        panic!(
            "{test} did not pass in the test VM (exit code {code}, `test {test} ... ok` {}):\n{}\n\
             the end of its console:\n{}",
            if passed { "seen" } else { "not seen" },
            panic_message(&console),
            tail(&console, 40)
        );
    }
    let skipped = format!("SKIP {test}: ");
    if let Some(why) = console
        .lines()
        .find_map(|l| l.trim().strip_prefix(skipped.as_str()))
    {
        super::skip(test, &format!("in the test VM: {why}"));
        return Place::Skipped;
    }
    eprintln!(
        "{test}: passed in the test VM ({} s, {})",
        started.elapsed().as_secs(),
        vm.accel
    );
    Place::InVm
}

/// Does libxdp's multi-program dispatcher work on this kernel? Loads xdp-filter on a fresh veth
/// in a throwaway namespace and asks xdp-loader which mode it got: `xdp_dispatcher` needs the
/// kernel to load freplace (BPF_PROG_TYPE_EXT) programs; where it cannot, libxdp falls back to
/// attaching the one program alone. Fit for `here_or_in_vm`'s `can_here`.
pub fn xdp_dispatcher_works() -> Result<(), String> {
    let mut bed = super::netns::Testbed::with_prefix("gq");
    let (a, b) = (bed.netns("a"), bed.netns("b"));
    let (dev, _) = bed.link(&a, "198.18.254.1/24", &b, "198.18.254.2/24");
    let filter = XdpFilter::load(&a, &dev)?;
    let status = filter.status()?;
    drop(filter);
    if status.contains("xdp_dispatcher") {
        Ok(())
    } else {
        Err(format!(
            "libxdp attaches no dispatcher on Linux {} (freplace refused?): xdp-loader status shows\n{}",
            host_release(),
            status.trim()
        ))
    }
}

/// xdp-filter loaded on `dev` in the namespace `ns`, unloaded on drop.
pub struct XdpFilter {
    net: String,
    dev: String,
}

impl XdpFilter {
    pub fn load(ns: &str, dev: &str) -> Result<Self, String> {
        let net = format!("--net=/run/netns/{ns}");
        let filter = Self {
            net,
            dev: dev.to_owned(),
        };
        filter.nsenter(&["xdp-filter", "load", dev])?;
        Ok(filter)
    }

    /// `xdp-loader status <dev>`: the programs on the interface and the mode libxdp used.
    pub fn status(&self) -> Result<String, String> {
        self.nsenter(&["xdp-loader", "status", &self.dev])
    }

    fn nsenter(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("nsenter")
            .arg(&self.net)
            .args(args)
            .output()
            .map_err(|e| format!("nsenter {args:?}: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("{args:?} failed ({}): {}", out.status, text.trim()))
        }
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = self.nsenter(&["xdp-filter", "unload", &self.dev, "--all"]);
        // What libxdp made under bpffs for this, if it left it empty.
        for dir in ["/sys/fs/bpf/xdp-filter", "/sys/fs/bpf/xdp"] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// This kernel's release (`uname -r`).
pub fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

struct Vm {
    kernel: PathBuf,
    initrd: PathBuf,
    accel: String,
}

/// qemu, killed on drop (a test that panics leaves no VM behind).
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Vm {
    /// Boots the VM to run `argv` in `cwd` with `envs`; its console is echoed as it comes
    /// (`vm| ...`). Returns the exit code (None if the VM gave none, or `timeout` passed) and
    /// the console.
    fn run(
        &self,
        argv: &[String],
        envs: &[(String, String)],
        cwd: &Path,
        timeout: Duration,
    ) -> (Option<i32>, String) {
        let share = std::env::temp_dir().join(format!(
            "guard-vm-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&share);
        std::fs::create_dir_all(&share).expect("create the VM's share");
        std::fs::write(share.join("cmd.sh"), script(argv, envs, cwd)).expect("write cmd.sh");
        let cpu = if self.accel == "kvm" { "host" } else { "max" };
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                &self.accel,
                "-cpu",
                cpu,
                "-smp",
                "2",
                "-m",
                "2048",
            ])
            .args(["-nographic", "-no-reboot", "-nic", "none"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .arg("-virtfs")
            .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=guardrun,security_model=none",
                share.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
        let out = child.stdout.take().expect("piped");
        let mut qemu = Qemu(child);
        let console = Arc::new(Mutex::new(String::new()));
        let reader = {
            let console = Arc::clone(&console);
            std::thread::spawn(move || {
                for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                    let line = clean(&String::from_utf8_lossy(&line));
                    eprintln!("vm| {line}");
                    let mut c = console.lock().unwrap_or_else(|e| e.into_inner());
                    c.push_str(&line);
                    c.push('\n');
                }
            })
        };
        let deadline = Instant::now() + timeout;
        let finished = loop {
            match qemu.0.try_wait() {
                Ok(Some(_)) => break true,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => break false,
            }
        };
        drop(qemu);
        let _ = reader.join();
        let mut console = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !finished {
            console += &format!("(the test VM did not finish within {timeout:?}: qemu killed)\n");
        }
        let code = std::fs::read_to_string(share.join("status"))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let _ = std::fs::remove_dir_all(&share);
        (code, console)
    }
}

/// `cmd.sh`: the environment, the directory, the command.
fn script(argv: &[String], envs: &[(String, String)], cwd: &Path) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s = String::new();
    for (k, v) in envs {
        if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            s += &format!("export {k}={}\n", q(v));
        }
    }
    // The host's directories under /tmp the command needs (a clone checked out there): the
    // VM's /tmp is its own tmpfs, and its /init keeps the host's at /run/guard-vm-host-tmp
    // (xtask/src/vm.rs).
    let mut dirs: Vec<String> = std::iter::once(cwd.to_string_lossy().into_owned())
        .chain(argv.iter().cloned())
        .chain(envs.iter().map(|(_, v)| v.clone()))
        .filter_map(|p| {
            let name = p.strip_prefix("/tmp/")?.split('/').next()?.to_owned();
            (!name.is_empty() && Path::new("/tmp").join(&name).is_dir()).then_some(name)
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        let d = q(&d);
        s += &format!(
            "mkdir -p /tmp/{d} && mount --bind /run/guard-vm-host-tmp/{d} /tmp/{d} || exit 126\n"
        );
    }
    s += &format!("cd {} || exit 126\n", q(&cwd.to_string_lossy()));
    s += &argv.iter().map(|a| q(a)).collect::<Vec<_>>().join(" ");
    s + "\n"
}

/// The inner test's panic message, from `panicked at` to its backtrace: it is easily scrolled
/// out of the console's tail.
fn panic_message(console: &str) -> String {
    let mut lines = console.lines().skip_while(|l| !l.contains("panicked at"));
    let mut message: Vec<&str> = lines.next().into_iter().collect();
    message.extend(
        lines.take_while(|l| !l.starts_with("stack backtrace:") && !l.starts_with("note: ")),
    );
    if message.is_empty() {
        "(no panic message on the console)".to_owned()
    } else {
        message.join("\n")
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A console line without carriage returns and terminal control sequences (the firmware
/// clears the screen before the kernel's first line).
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            // CSI: parameters, then one final byte in @..~; any other escape is two chars.
            '\u{1b}' => {
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}
