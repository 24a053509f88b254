//! Checks for, and installs when missing, what building and testing guard needs on Debian:
//! nightly's rust-src, bpf-linker on the same LLVM as nightly, Debian packages, bpffs, root.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, run, show};

/// The toolchain that builds guard-ebpf; it must be installed already, under this name.
pub const NIGHTLY: &str = "nightly";
/// The LLVM that bpf-linker is built against when the xtask installs it (Debian's llvm-22).
const LLVM_MAJOR: &str = "22";
/// Debian packages that `cargo install bpf-linker --features llvm-22` needs.
const BPF_LINKER_DEBS: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Debian packages the tests need at run time (`ip`, `bpftool`, ...): extend here. HAProxy
/// (2.6 on Debian 12) is the real load balancer of the health tests; `prometheus` brings
/// `promtool`, which checks the live daemon's /metrics; `nats-server` (2.9, run with -js) is
/// the fleet tests' JetStream KV; `xdp-tools` the programs the guard runs beside.
pub const TEST_DEBS: &[&str] = &[
    "iproute2",
    "bpftool",
    "iputils-ping",
    "util-linux",
    "haproxy",
    "prometheus",
    "nats-server",
    // xdp-filter and xdp-loader (libxdp and its dispatcher object): live_cookies and
    // live_dispatcher.
    "xdp-tools",
];

/// Everything `cargo +nightly build -p guard-ebpf` needs: rust-src, bpf-linker, matching LLVMs.
pub fn ensure_ebpf_build() -> Result<()> {
    ensure_nightly_component("rust-src")?;
    let linker = ensure_bpf_linker()?;
    check_llvm_versions(&linker)
}

/// A `program` command run by the nightly toolchain through rustup (`cargo +nightly ...`),
/// cleared of what cargo sets for the xtask and would pin the stable toolchain or its flags.
pub fn nightly(program: &str, args: &[&str]) -> Command {
    let mut c = cmd(program, &[&format!("+{NIGHTLY}")]);
    c.args(args);
    for var in [
        "RUSTC",
        "RUSTDOC",
        "CARGO",
        "RUSTUP_TOOLCHAIN",
        "RUSTUP_TOOLCHAIN_SOURCE",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTC",
        "CARGO_BUILD_RUSTC_WRAPPER",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        c.env_remove(var);
    }
    // rustc runs bpf-linker from PATH; `cargo install` put it in ~/.cargo/bin.
    let bin = cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    if !env::split_paths(&path).any(|p| p == bin) {
        let paths = std::iter::once(bin).chain(env::split_paths(&path));
        c.env(
            "PATH",
            env::join_paths(paths).expect("PATH entries have no ':'"),
        );
    }
    c
}

/// Installs the nightly toolchain's component `name` (rust-src, clippy) if it is missing.
pub fn ensure_nightly_component(name: &str) -> Result<()> {
    let installed = output(cmd(
        "rustup",
        &["component", "list", "--toolchain", NIGHTLY, "--installed"],
    ))
    .with_context(|| {
        format!("is the `{NIGHTLY}` toolchain installed? (`rustup toolchain list`)")
    })?;
    if installed
        .lines()
        .any(|l| l.trim() == name || l.trim().starts_with(&format!("{name}-")))
    {
        eprintln!("xtask: {NIGHTLY} has {name}");
        return Ok(());
    }
    eprintln!("xtask: {NIGHTLY} lacks {name}: installing it");
    run(&mut cmd(
        "rustup",
        &["component", "add", name, "--toolchain", NIGHTLY],
    ))
    .with_context(|| format!("install {name} for {NIGHTLY} by hand and run the xtask again"))
}

/// The path of a working bpf-linker, installed with `cargo install` if there is none
/// (`--force` replaces one that is there but no longer runs, e.g. after an LLVM upgrade).
fn ensure_bpf_linker() -> Result<PathBuf> {
    if let Some(linker) = find_bpf_linker() {
        eprintln!("xtask: bpf-linker is {}", linker.display());
        return Ok(linker);
    }
    eprintln!(
        "xtask: no working bpf-linker in PATH or {}: installing it",
        cargo_home().join("bin").display()
    );
    ensure_debs(BPF_LINKER_DEBS)?;
    let features = format!("llvm-{LLVM_MAJOR}");
    let mut install = cmd(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--force",
            "--no-default-features",
            "--features",
            &features,
        ],
    );
    install.env("LLVM_PREFIX", format!("/usr/lib/llvm-{LLVM_MAJOR}"));
    run(&mut install)
        .context("install bpf-linker by hand (see the command above) and run the xtask again")?;
    find_bpf_linker()
        .context("bpf-linker was installed but does not run: try `bpf-linker --version`")
}

/// The first bpf-linker in PATH, then in ~/.cargo/bin, that answers `--version`.
fn find_bpf_linker() -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([cargo_home().join("bin")])
        .map(|dir| dir.join("bpf-linker"))
        .filter(|p| p.is_file())
        .find(|p| output(cmd(p, &["--version"])).is_ok())
}

/// Stops if bpf-linker is built on another LLVM major version than the nightly rustc: the
/// bitcode rustc emits would not load. Warns and goes on if bpf-linker's LLVM cannot be told.
fn check_llvm_versions(linker: &Path) -> Result<()> {
    let rustc = output(nightly("rustc", &["-vV"]))?;
    let nightly = parse_rustc_llvm_major(&rustc)
        .with_context(|| format!("no `LLVM version:` line in `rustc +{NIGHTLY} -vV`:\n{rustc}"))?;
    let (linker_llvm, how) = match bpf_linker_llvm_major(linker) {
        Some(found) => found,
        None => {
            eprintln!(
                "xtask: warning: cannot tell which LLVM {} uses; assuming LLVM {nightly} like {NIGHTLY}",
                linker.display()
            );
            return Ok(());
        }
    };
    eprintln!(
        "xtask: LLVM {nightly} in rustc +{NIGHTLY}, LLVM {linker_llvm} in bpf-linker ({how})"
    );
    if nightly != linker_llvm {
        bail!(
            "rustc +{NIGHTLY} uses LLVM {nightly} but {} uses LLVM {linker_llvm}: reinstall it with \
             `LLVM_PREFIX=/usr/lib/llvm-{nightly} cargo install bpf-linker --force --no-default-features \
             --features llvm-{nightly}` (needs llvm-{nightly}-dev), or use a nightly on LLVM {linker_llvm}",
            linker.display()
        );
    }
    Ok(())
}

/// bpf-linker's LLVM major version, and where it was read: its version text if it names
/// LLVM (0.13 does not), else the libLLVM it is dynamically linked to.
fn bpf_linker_llvm_major(linker: &Path) -> Option<(u32, &'static str)> {
    for (args, how) in [
        (&["--version"][..], "--version"),
        (&["--version", "--verbose"][..], "--version --verbose"),
    ] {
        if let Some(major) = output(cmd(linker, args))
            .ok()
            .as_deref()
            .and_then(parse_linker_llvm_major)
        {
            return Some((major, how));
        }
    }
    let ldd = output(cmd("ldd", &[linker])).ok()?;
    Some((parse_ldd_llvm_major(&ldd)?, "ldd"))
}

/// Installs the Debian packages of `names` that are not installed (apt-get update first,
/// once per xtask run).
pub fn ensure_debs(names: &[&str]) -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !deb_installed(n))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages installed: {}", names.join(" "));
        return Ok(());
    }
    eprintln!(
        "xtask: Debian packages missing: {}: installing them",
        missing.join(" ")
    );
    let context = || {
        format!(
            "install {} by hand and run the xtask again",
            missing.join(" ")
        )
    };
    if !UPDATED.swap(true, Ordering::SeqCst) {
        run(cmd("apt-get", &["update"]).env("DEBIAN_FRONTEND", "noninteractive"))
            .with_context(context)?;
    }
    run(cmd("apt-get", &["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(context)
}

fn deb_installed(name: &str) -> bool {
    output(cmd("dpkg-query", &["-W", "-f=${Status}", name]))
        .is_ok_and(|s| s.trim() == "install ok installed")
}

/// Mounts bpffs at /sys/fs/bpf unless it is there (the tests pin maps in it).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")
        .context("cannot read /proc/mounts: is /proc mounted?")?;
    if bpffs_mounted(&mounts) {
        eprintln!("xtask: bpffs is mounted at /sys/fs/bpf");
        return Ok(());
    }
    run(&mut cmd("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]))
        .context("mount bpffs by hand (`mount -t bpf bpf /sys/fs/bpf`) and run the xtask again")
}

/// Whether the process runs with effective uid 0.
pub fn is_root() -> Result<bool> {
    let status = fs::read_to_string("/proc/self/status")
        .context("cannot read /proc/self/status: is /proc mounted?")?;
    Ok(parse_euid(&status).context("no Uid: line in /proc/self/status")? == 0)
}

/// Runs `c` and returns its standard output; fails with its standard error if it fails.
fn output(mut c: Command) -> Result<String> {
    let out = c
        .stdout(Stdio::piped())
        .output()
        .with_context(|| format!("could not start `{}`", show(&c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(&c),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// The LLVM major version in `rustc -vV` output (`LLVM version: 22.1.4` gives 22).
fn parse_rustc_llvm_major(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("LLVM version:"))
        .and_then(leading_number)
}

/// The LLVM major version bpf-linker's version text names, as in `LLVM 22.1.4` or
/// `LLVM version: 22.1.4`; None if it names no LLVM (`bpf-linker 0.13.0`).
fn parse_linker_llvm_major(text: &str) -> Option<u32> {
    text.lines()
        .filter_map(|l| l.split_once("LLVM"))
        .find_map(|(_, rest)| {
            rest.split_whitespace()
                .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
                .and_then(leading_number)
        })
}

/// The LLVM major version of the libLLVM in `ldd` output: `libLLVM.so.22.1` or `libLLVM-22.so`.
fn parse_ldd_llvm_major(text: &str) -> Option<u32> {
    text.match_indices("libLLVM").find_map(|(i, _)| {
        let rest = &text[i + "libLLVM".len()..];
        leading_number(
            rest.strip_prefix(".so.")
                .or_else(|| rest.strip_prefix('-'))?,
        )
    })
}

/// The effective uid, the second number of the `Uid:` line of /proc/self/status.
fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    })
}

fn leading_number(s: &str) -> Option<u32> {
    let s = s.trim_start();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustc_llvm_major() {
        let text = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n\
                    release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(parse_rustc_llvm_major(text), Some(22));
        assert_eq!(
            parse_rustc_llvm_major("rustc 1.95.0\nrelease: 1.95.0\n"),
            None
        );
    }

    #[test]
    fn linker_llvm_major() {
        assert_eq!(parse_linker_llvm_major("bpf-linker 0.13.0\n"), None);
        assert_eq!(
            parse_linker_llvm_major("bpf-linker 0.9.13 (LLVM 21.1.0)\n"),
            Some(21)
        );
        assert_eq!(
            parse_linker_llvm_major("bpf-linker 0.14.0\nLLVM version: 22.1.4\n"),
            Some(22)
        );
        assert_eq!(parse_linker_llvm_major("LLVM\n22"), None);
    }

    #[test]
    fn ldd_llvm_major() {
        let ldd = "\tlinux-vdso.so.1 (0x00007f4e2807e000)\n\
                   \tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007f4e1ee00000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f4e1ec1e000)\n";
        assert_eq!(parse_ldd_llvm_major(ldd), Some(22));
        assert_eq!(
            parse_ldd_llvm_major("\tlibLLVM-19.so => /usr/lib/llvm-19/lib/libLLVM-19.so\n"),
            Some(19)
        );
        assert_eq!(
            parse_ldd_llvm_major("\tlibc.so.6 => /lib/libc.so.6\n"),
            None
        );
    }

    #[test]
    fn euid() {
        assert_eq!(
            parse_euid("Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t0\t0\t0\t0\n"),
            Some(0)
        );
        assert_eq!(parse_euid("Uid:\t0\t1000\t1000\t1000\n"), Some(1000));
    }

    #[test]
    fn bpffs() {
        assert!(bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime,mode=700 0 0\n"
        ));
        assert!(!bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n"
        ));
    }
}
