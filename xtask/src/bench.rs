//! `cargo xtask bench`: builds the XDP objects and the release binaries, installs the peers
//! the benchmarks compare against, then runs guard-bench as root, which writes BENCHMARKS.md.

use std::{
    env,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context, Result, bail};

use crate::{build, cmd, prereqs, run, run_status};

/// What the benchmarks run besides our own binaries: `ip` and `nsenter` for the namespaces,
/// `ping` and `sysctl` to check and set up the flood testbed, xdp-filter (xdp-tools) and
/// `bpftool prog run` for the peer (bpftool also reads the live run-time statistics), nft for
/// the nftables peer. The flood sender is guard-bench's own (AF_PACKET), so no traffic
/// generator is needed.
const BENCH_DEBS: &[&str] = &[
    "iproute2",
    "util-linux",
    "iputils-ping",
    "procps",
    "bpftool",
    "xdp-tools",
    "nftables",
    "nats-server",
];

/// Runs the benchmarks; `args` go to guard-bench as they are (see `guard-bench --help`).
pub fn bench(args: &[String]) -> Result<()> {
    if !prereqs::is_root()? {
        bail!(
            "cargo xtask bench needs root (it loads XDP programs and creates network namespaces): \
             run it as root or with `sudo -E env \"PATH=$PATH\" cargo xtask bench`"
        );
    }
    prereqs::ensure_debs(BENCH_DEBS)?;
    prereqs::ensure_bpffs()?;
    // Builds guard-ebpf's two objects (the guard and the floor) and the release `guard`.
    let guard = build::all(true)?;
    let object = build::ebpf_object()?;
    let floor = object.with_file_name("guard-floor");
    if !floor.is_file() {
        bail!(
            "the eBPF build did not leave the floor object at {}",
            floor.display()
        );
    }
    let mut build = cmd("cargo", &["build", "--release", "-p", "guard-bench"]);
    build.current_dir(root()).env("GUARD_EBPF_OBJECT", &object);
    run(&mut build).context("fix the guard-bench build errors above")?;
    let bench = target_dir().join("release").join("guard-bench");
    let mut c = cmd(&bench, args);
    c.current_dir(root())
        .env("GUARD_FLOOR_OBJECT", &floor)
        .env("GUARD_BIN", &guard)
        .stdout(Stdio::inherit());
    if !args.iter().any(|a| a == "--out" || a.starts_with("--out=")) {
        c.arg("--out").arg(root().join("BENCHMARKS.md"));
    }
    let status = run_status(&mut c)?;
    if !status.success() {
        bail!("guard-bench failed ({status}): see above; BENCHMARKS.md says which section");
    }
    Ok(())
}

/// The workspace root: the parent of the xtask crate.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
}

/// Cargo's target directory: CARGO_TARGET_DIR (relative to the root) or `<root>/target`.
fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |dir| root().join(dir))
}
