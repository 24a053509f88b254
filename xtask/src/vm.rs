//! The test VM: a stock Debian kernel under qemu, for the tests this host's kernel cannot run
//! (its kernel refuses BPF_PROG_TYPE_EXT, which libxdp's multi-program dispatcher needs).
//!
//! The VM has no disk and no network device. Its initramfs holds busybox, the kernel modules
//! below and [`INIT`]; it mounts the host's root filesystem read-only over virtio-9p and runs the
//! command with it as the root, so the binaries under `target/` run where they are, uncopied.
//!
//! One run, the contract that `guard-userspace/tests/support/vm.rs` follows too:
//! - the host writes `cmd.sh` (exports, `cd`, the command line) into a fresh directory, shared
//!   read-write with the tag `guardrun` and mounted at `/run/guard-vm` in the VM;
//! - the init runs `/bin/sh /run/guard-vm/cmd.sh` in the host's root, its output on the serial
//!   console (qemu's standard output), writes the exit code to `status` in that directory, prints
//!   `GUARD-VM-EXIT <code>` and powers off.

use std::{
    env, fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, prereqs, run, show};

/// The Debian metapackage whose dependency names the kernel to boot (`linux-image-6.1.0-57-amd64`):
/// the generic flavour, which has the 9p modules (the cloud flavour has none).
const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Where the kernel, busybox and the initramfs are kept between runs (and clean clones).
const DEFAULT_CACHE: &str = "/var/cache/guard-vm";
/// The modules the init loads, with their dependencies (from the kernel's modules.dep): the 9p
/// share over virtio-pci, veth pairs, and tc's ingress qdisc and BPF classifier.
const MODULES: &[&str] = &[
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "veth",
    "sch_ingress",
    "cls_bpf",
];
/// The kernel command line. `panic=-1` with `-no-reboot` turns a panic into qemu exiting.
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet";
/// The last line of a run on the console, before the exit code.
pub const EXIT_MARKER: &str = "GUARD-VM-EXIT ";

/// /init of the initramfs (busybox sh). The host's /tmp, /run and /var/tmp are fresh tmpfs in
/// the VM, and /proc, /sys, /dev and bpffs are the VM's own: only the files are shared. It
/// switches root (not chroot) to the host's files, so that pid 1 sees what the tests see: the
/// daemon checks its bpffs pins through /proc/1/root.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/guard-vm-modules); do
    insmod /lib/modules/$m.ko || echo "guard-vm: insmod $m failed"
done
ip link set lo up
die() { echo "guard-vm: $*"; echo "GUARD-VM-EXIT 125"; poweroff -f; }
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o $opts,cache=loose,ro hostroot /host || die "cannot mount the host's root"
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
mount -t bpf bpf /host/sys/fs/bpf
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
mount -t debugfs debugfs /host/sys/kernel/debug
mount -t tracefs tracefs /host/sys/kernel/tracing
# The host's /tmp, kept reachable under /run before a tmpfs covers it: cmd.sh binds back the
# directories it needs (a clone under /tmp).
mount -t tmpfs run /host/run
mkdir -p /host/run/guard-vm-host-tmp
mount --bind /host/tmp /host/run/guard-vm-host-tmp
for d in /host/tmp /host/var/tmp; do mount -t tmpfs tmp $d; done
# Debian's /var/run is a link to /run; anything else gets its own tmpfs.
[ -L /host/var/run ] || mount -t tmpfs run /host/var/run
mkdir -p /host/run/guard-vm /host/run/guard-vm-init
mount -t 9p -o $opts,cache=none guardrun /host/run/guard-vm || die "cannot mount the run share"
# After the switch, busybox (for poweroff) and the rest of this script live in /run.
cp /bin/busybox /host/run/guard-vm-init/busybox
cat > /host/run/guard-vm-init/run <<'RUN'
/bin/sh /run/guard-vm/cmd.sh
rc=$?
echo $rc > /run/guard-vm/status
sync
echo "GUARD-VM-EXIT $rc"
/run/guard-vm-init/busybox poweroff -f
RUN
echo
echo "guard-vm: Linux $(uname -r), running /run/guard-vm/cmd.sh"
exec switch_root /host /bin/sh /run/guard-vm-init/run
die "switch_root failed"
"#;

/// A kernel and an initramfs ready to boot.
pub struct Vm {
    /// The kernel release, e.g. `6.1.0-57-amd64`.
    pub release: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `kvm` or `tcg`: see [`accel`].
    pub accel: String,
}

/// The kernel, busybox and initramfs of the test VM, downloaded and built once into the cache
/// (GUARD_VM_CACHE, default /var/cache/guard-vm) and reused after. The kernel is the package
/// `linux-image-amd64` depends on, or GUARD_VM_KERNEL_PACKAGE (Debian 12's security archive
/// also has `linux-image-6.12.<n>+deb12-amd64-unsigned`, for what 6.1 lacks: tcx, SYN cookies
/// at the NIC).
///
/// # Errors
/// When the packages cannot be resolved or downloaded (no apt sources for Debian, no network),
/// or a tool the build needs (`dpkg-deb`, `depmod`, `gzip`) fails.
pub fn ensure_vm() -> Result<Vm> {
    prereqs::ensure_debs(&["qemu-system-x86", "kmod", "gzip", "xz-utils", "zstd"])?;
    let cache = env::var_os("GUARD_VM_CACHE").map_or_else(|| DEFAULT_CACHE.into(), PathBuf::from);
    let package = match env::var("GUARD_VM_KERNEL_PACKAGE") {
        Ok(p) => p,
        Err(_) => kernel_package()?,
    };
    // `linux-image-6.12.107+deb12-amd64-unsigned` boots Linux 6.12.107+deb12-amd64.
    let release = package
        .strip_prefix("linux-image-")
        .map(|r| r.strip_suffix("-unsigned").unwrap_or(r))
        .with_context(|| format!("the VM's kernel package is {package}, not linux-image-*"))?
        .to_owned();
    let dir = cache.join(&release);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let kernel_deb = dir.join("linux-image.deb");
    let busybox_deb = dir.join("busybox-static.deb");
    if !kernel_deb.is_file() || !busybox_deb.is_file() {
        download(
            &dir,
            &[(&package, &kernel_deb), ("busybox-static", &busybox_deb)],
        )?;
    }

    let initrd = dir.join(format!("initramfs-{:016x}.cpio.gz", recipe_hash()));
    let kernel = dir.join("vmlinuz");
    if !initrd.is_file() || !kernel.is_file() {
        build(&dir, &release, &kernel_deb, &busybox_deb, &kernel, &initrd)?;
    }
    eprintln!(
        "xtask: test VM: kernel {}, initramfs {}",
        kernel.display(),
        initrd.display()
    );
    Ok(Vm {
        release,
        kernel,
        initrd,
        accel: accel(),
    })
}

/// The versioned kernel package `linux-image-amd64` depends on (apt-get update first if apt
/// does not know the metapackage yet, as on a fresh machine).
fn kernel_package() -> Result<String> {
    let depends = || -> Option<String> {
        let out = cmd("apt-cache", &["depends", KERNEL_METAPACKAGE])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        parse_depends(&String::from_utf8_lossy(&out.stdout))
    };
    if let Some(p) = depends() {
        return Ok(p);
    }
    run(cmd("apt-get", &["update"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .context("apt-get update failed: the test VM's kernel comes from Debian's archive")?;
    depends().with_context(|| {
        format!(
            "apt knows no {KERNEL_METAPACKAGE}: the test VM needs Debian's amd64 kernel packages \
             in the apt sources"
        )
    })
}

/// The first `linux-image-*` dependency in `apt-cache depends` output.
fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_owned)
}

/// `apt-get download`s each package into `dir` and renames its .deb to the path given.
fn download(dir: &Path, packages: &[(&str, &Path)]) -> Result<()> {
    let scratch = dir.join(format!("download-{}", std::process::id()));
    fs::create_dir_all(&scratch)?;
    // apt fetches as the user _apt where it can write (else it warns and fetches as root).
    let _ = Command::new("chown")
        .args(["_apt".as_ref(), scratch.as_os_str()])
        .status();
    let names: Vec<&str> = packages.iter().map(|(p, _)| *p).collect();
    let fetched = run(cmd("apt-get", &["download"])
        .args(&names)
        .current_dir(&scratch))
    .with_context(|| {
        format!(
            "cannot download {} for the test VM: does `apt-get download {}` work here?",
            names.join(" "),
            names.join(" ")
        )
    });
    let moved = fetched.and_then(|()| {
        for (package, to) in packages {
            // apt names the file <package>_<version>_<arch>.deb (the epoch's ':' as %3a).
            let prefix = format!("{package}_");
            let deb = fs::read_dir(&scratch)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .with_context(|| format!("apt-get download left no {prefix}*.deb"))?;
            fs::rename(&deb, to)?;
        }
        Ok(())
    });
    let _ = fs::remove_dir_all(&scratch);
    moved
}

/// Extracts the kernel and busybox and builds the initramfs, both renamed into place at the end
/// so that a run cut short leaves nothing half-made under their names.
fn build(
    dir: &Path,
    release: &str,
    kernel_deb: &Path,
    busybox_deb: &Path,
    kernel: &Path,
    initrd: &Path,
) -> Result<()> {
    let scratch = dir.join(format!("build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch)?;
    let built = (|| {
        let (kroot, broot, root) = (scratch.join("k"), scratch.join("b"), scratch.join("root"));
        for (deb, to) in [(kernel_deb, &kroot), (busybox_deb, &broot)] {
            run(&mut cmd(
                "dpkg-deb",
                &["-x".as_ref(), deb.as_os_str(), to.as_os_str()],
            ))?;
        }
        // The package's modules.dep is made by depmod at install time; make it here.
        run(&mut cmd(
            "depmod",
            &["-b".as_ref(), kroot.as_os_str(), release.as_ref()],
        ))
        .context("depmod could not index the VM kernel's modules")?;

        for d in ["bin", "etc", "lib/modules"] {
            fs::create_dir_all(root.join(d))?;
        }
        fs::copy(broot.join("bin/busybox"), root.join("bin/busybox"))
            .context("busybox-static has no bin/busybox")?;
        let modules = kroot.join("lib/modules").join(release);
        let order = module_order(&modules)?;
        for (name, rel) in &order {
            unpack_module(
                &modules.join(rel),
                &root.join(format!("lib/modules/{name}.ko")),
            )?;
        }
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        fs::write(root.join("etc/guard-vm-modules"), names.join("\n") + "\n")?;
        write_executable(&root.join("init"), INIT)?;

        let cpio = scratch.join("initramfs.cpio.gz");
        pack(&root, &root.join("bin/busybox"), &cpio)?;
        fs::copy(
            kroot.join(format!("boot/vmlinuz-{release}")),
            scratch.join("vmlinuz"),
        )
        .context("the kernel package has no boot/vmlinuz-<release>")?;
        fs::rename(scratch.join("vmlinuz"), kernel)?;
        fs::rename(&cpio, initrd)?;
        // Initramfs images of an older recipe.
        for e in fs::read_dir(dir)?.filter_map(Result::ok) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("initramfs-") && e.path() != initrd {
                let _ = fs::remove_file(e.path());
            }
        }
        anyhow::Ok(())
    })();
    let _ = fs::remove_dir_all(&scratch);
    built.context("building the test VM's initramfs failed")
}

/// [`MODULES`] with their dependencies, each after what it needs: `(name, path in modules/)`.
/// Modules built into the kernel are left out.
fn module_order(modules: &Path) -> Result<Vec<(String, String)>> {
    let dep = fs::read_to_string(modules.join("modules.dep"))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let graph = parse_modules_dep(&dep);
    let mut order = Vec::new();
    for want in MODULES {
        if builtin.lines().any(|l| module_name(l) == *want) {
            continue;
        }
        visit(want, &graph, &mut order)
            .with_context(|| format!("the VM kernel has no module {want}"))?;
    }
    Ok(order)
}

/// modules.dep as `(name, path, dependency paths)`.
fn parse_modules_dep(text: &str) -> Vec<(String, String, Vec<String>)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, deps)| {
            (
                module_name(path),
                path.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// A module's name from its path: `kernel/net/9p/9pnet_virtio.ko.xz` gives `9pnet_virtio`
/// (and `-` is `_`, as the kernel sees it).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn visit(
    name: &str,
    graph: &[(String, String, Vec<String>)],
    order: &mut Vec<(String, String)>,
) -> Result<()> {
    if order.iter().any(|(n, _)| n == name) {
        return Ok(());
    }
    let (_, path, deps) = graph
        .iter()
        .find(|(n, _, _)| n == name)
        .with_context(|| format!("{name} is not in modules.dep"))?;
    for d in deps {
        visit(&module_name(d), graph, order)?;
    }
    order.push((name.to_owned(), path.clone()));
    Ok(())
}

/// Copies a module, decompressed: busybox insmod reads plain .ko files only.
fn unpack_module(from: &Path, to: &Path) -> Result<()> {
    let name = from.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    match tool {
        None => {
            fs::copy(from, to).with_context(|| format!("cannot copy {name}"))?;
        }
        Some(tool) => {
            let out = fs::File::create(to)?;
            let status = Command::new(tool)
                .args(["-dc".as_ref(), from.as_os_str()])
                .stdout(out)
                .status()
                .with_context(|| format!("cannot run {tool} to decompress {name}"))?;
            if !status.success() {
                bail!("{tool} -dc {name} failed ({status})");
            }
        }
    }
    Ok(())
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// `find . | busybox cpio -o -H newc | gzip -1 > out`, run in `root`.
fn pack(root: &Path, busybox: &Path, out: &Path) -> Result<()> {
    let mut names = Vec::new();
    list(root, Path::new("."), &mut names)?;
    let mut cpio = Command::new(busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run busybox cpio")?;
    let cpio_out = cpio.stdout.take().expect("piped");
    let mut gzip = Command::new("gzip")
        .arg("-1")
        .stdin(cpio_out)
        .stdout(fs::File::create(out)?)
        .spawn()
        .context("cannot run gzip")?;
    {
        let mut stdin = cpio.stdin.take().expect("piped");
        for n in &names {
            writeln!(stdin, "{}", n.display())?;
        }
    }
    let (c, g) = (cpio.wait()?, gzip.wait()?);
    if !c.success() || !g.success() {
        bail!("packing the initramfs failed (cpio {c}, gzip {g})");
    }
    Ok(())
}

/// Every path under `dir` (relative, as `./...`), parents first.
fn list(root: &Path, rel: &Path, names: &mut Vec<PathBuf>) -> Result<()> {
    names.push(rel.to_owned());
    let path = root.join(rel);
    if path.is_dir() && !path.is_symlink() {
        let mut entries: Vec<_> = fs::read_dir(&path)?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        entries.sort();
        for e in entries {
            list(root, &rel.join(e), names)?;
        }
    }
    Ok(())
}

/// Names the initramfs after what goes into it, so a changed init or module list makes a new one.
fn recipe_hash() -> u64 {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in INIT.bytes().chain(MODULES.join(",").bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// GUARD_VM_ACCEL if set; else `kvm` when /dev/kvm opens and the CPU shows hardware
/// virtualisation (vmx or svm), else `tcg`. A nested host can offer /dev/kvm without it (this
/// one's kvm-pvm boots only PVM guest kernels: a stock kernel hangs in the firmware), so
/// /dev/kvm alone is not enough.
pub fn accel() -> String {
    if let Ok(a) = env::var("GUARD_VM_ACCEL") {
        return a;
    }
    let kvm = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let hw = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    });
    if kvm && hw { "kvm" } else { "tcg" }.to_owned()
}

/// Boots `vm` and runs `argv` in it, in `cwd` with `envs`, for at most `timeout`; the console
/// goes to standard error as it comes. Returns the command's exit code.
///
/// # Errors
/// When qemu cannot start, the VM does not finish within `timeout` (qemu is killed), or it
/// stops without the command's exit code (a panic, a failed mount: see the console).
pub fn run_in(
    vm: &Vm,
    argv: &[String],
    envs: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
) -> Result<i32> {
    run_collecting(vm, argv, envs, cwd, timeout, None).map(|(rc, _)| rc)
}

/// Like [`run_in`], and returns the file `collect` the command wrote into the writable share
/// (`/run/guard-vm/<collect>` in the VM), if it did.
///
/// # Errors
/// As [`run_in`].
pub fn run_collecting(
    vm: &Vm,
    argv: &[String],
    envs: &[(String, String)],
    cwd: &Path,
    timeout: Duration,
    collect: Option<&str>,
) -> Result<(i32, Option<Vec<u8>>)> {
    let share = env::temp_dir().join(format!("guard-vm-{}", std::process::id()));
    let _ = fs::remove_dir_all(&share);
    fs::create_dir_all(&share)?;
    let result = (|| {
        fs::write(share.join("cmd.sh"), cmd_script(argv, envs, cwd))?;
        let mut qemu = qemu(vm, &share);
        eprintln!("xtask: {}", show(&qemu));
        let mut child = qemu
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        let console = Arc::new(Mutex::new(String::new()));
        let reader = {
            let console = Arc::clone(&console);
            let out = child.stdout.take().expect("piped");
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
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = reader.join();
                bail!("the test VM did not finish within {timeout:?}: qemu killed");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let _ = reader.join();
        let console = console.lock().unwrap_or_else(|e| e.into_inner()).clone();
        exit_code(&share, &console).with_context(|| {
            format!("the test VM stopped ({status}) without the command's exit code: see its console above")
        })
    })();
    let collected = collect.and_then(|name| fs::read(share.join(name)).ok());
    let _ = fs::remove_dir_all(&share);
    result.map(|rc| (rc, collected))
}

fn qemu(vm: &Vm, share: &Path) -> Command {
    let cpu = if vm.accel == "kvm" { "host" } else { "max" };
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-accel", &vm.accel, "-cpu", cpu, "-smp", "2", "-m", "2048"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&vm.kernel)
        .arg("-initrd")
        .arg(&vm.initrd)
        .args(["-append", CMDLINE])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=guardrun,security_model=none",
            share.display()
        ));
    c
}

/// The script the VM runs: the environment, the directory, the command.
fn cmd_script(argv: &[String], envs: &[(String, String)], cwd: &Path) -> String {
    let mut s = String::from("# Written by cargo xtask vm: run in the test VM.\n");
    for (k, v) in envs {
        if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            s += &format!("export {k}={}\n", sh_quote(v));
        }
    }
    s += &tmp_binds(argv, envs, cwd);
    s += &format!("cd {} || exit 126\n", sh_quote(&cwd.to_string_lossy()));
    s += &argv
        .iter()
        .map(|a| sh_quote(a))
        .collect::<Vec<_>>()
        .join(" ");
    s.push('\n');
    s
}

/// The host's directories under /tmp that `cwd`, the command and the environment name (a clone
/// checked out under /tmp, its target dir): the VM's /tmp is a tmpfs of its own, so each is
/// bound back in, read-only, from the host's /tmp that /init keeps at `HOST_TMP`.
fn tmp_binds(argv: &[String], envs: &[(String, String)], cwd: &Path) -> String {
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
    dirs.iter()
        .map(|d| {
            let d = sh_quote(d);
            format!("mkdir -p /tmp/{d} && mount --bind {HOST_TMP}/{d} /tmp/{d} || exit 126\n")
        })
        .collect()
}

/// Where /init keeps the host's /tmp (see `INIT`).
pub const HOST_TMP: &str = "/run/guard-vm-host-tmp";

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The exit code from the share's `status` file, else from the console's last marker.
fn exit_code(share: &Path, console: &str) -> Option<i32> {
    fs::read_to_string(share.join("status"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| {
            console
                .lines()
                .rev()
                .find_map(|l| l.trim().strip_prefix(EXIT_MARKER))
                .and_then(|c| c.trim().parse().ok())
        })
}

/// A console line without its carriage return and terminal control sequences (the firmware
/// clears the screen).
fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `cargo xtask vm`: runs `argv` in the test VM with this environment and directory; with
/// `kernel_info`, first prints the kernel release, the files and the accelerator.
pub fn vm(kernel_info: bool, timeout_secs: u64, argv: &[String]) -> Result<i32> {
    let vm = ensure_vm()?;
    if kernel_info {
        println!("release {}", vm.release);
        println!("kernel {}", vm.kernel.display());
        println!("initrd {}", vm.initrd.display());
        println!("accel {}", vm.accel);
    }
    if argv.is_empty() {
        if kernel_info {
            return Ok(0);
        }
        bail!("nothing to run: `cargo xtask vm -- CMD ARGS...`");
    }
    let envs: Vec<(String, String)> = env::vars().collect();
    run_in(
        &vm,
        argv,
        &envs,
        &env::current_dir()?,
        Duration::from_secs(timeout_secs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_names_the_versioned_kernel() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        assert_eq!(parse_depends("linux-image-amd64\n"), None);
    }

    #[test]
    fn modules_come_after_their_dependencies() {
        let dep = "kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz\n\
                   kernel/net/9p/9pnet.ko.xz:\n\
                   kernel/drivers/virtio/virtio_ring.ko.xz:\n";
        let graph = parse_modules_dep(dep);
        let mut order = Vec::new();
        visit("9pnet_virtio", &graph, &mut order).unwrap();
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["9pnet", "virtio_ring", "9pnet_virtio"]);
        assert!(visit("nope", &graph, &mut order).is_err());
    }

    #[test]
    fn module_names_drop_path_and_compression() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko"), "9p");
        assert_eq!(module_name("kernel/x/virtio-pci.ko.zst"), "virtio_pci");
    }

    #[test]
    fn console_lines_lose_control_sequences() {
        assert_eq!(clean("\u{1b}c\u{1b}[?7l\u{1b}[2Jhello\r"), "hello");
    }

    #[test]
    fn script_quotes_what_it_runs() {
        let s = cmd_script(
            &["echo".into(), "it's".into()],
            &[("A".into(), "x y".into()), ("BAD-NAME".into(), "z".into())],
            Path::new("/w"),
        );
        assert!(s.contains("export A='x y'\n"));
        assert!(!s.contains("BAD-NAME"));
        assert!(s.ends_with("cd '/w' || exit 126\n'echo' 'it'\\''s'\n"));
    }
}
