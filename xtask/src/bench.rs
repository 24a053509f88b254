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
    if let Some(section) = dispatcher_in_vm(&bench, &floor, &guard, args)? {
        c.arg("--include-section").arg(section);
    }
    let status = run_status(&mut c)?;
    if !status.success() {
        bail!("guard-bench failed ({status}): see above; BENCHMARKS.md says which section");
    }
    Ok(())
}

/// Section 5 (the dispatcher) needs a kernel that loads freplace programs. Where this one
/// does not (`guard-bench --only dispatcher` says so), it is measured in the test VM, and the
/// host's run takes the section from there. Returns the section's file, or None if the host
/// measures it itself (or it is not asked for).
fn dispatcher_in_vm(
    bench: &Path,
    floor: &Path,
    guard: &Path,
    args: &[String],
) -> Result<Option<PathBuf>> {
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    if only.is_some_and(|o| !o.split(',').any(|p| p == "dispatcher")) {
        return Ok(None);
    }
    // Can the host run it? The same probe the section makes.
    let mut here = cmd(
        bench,
        &["--only", "dispatcher", "--rounds", "1", "--repeat", "1"],
    );
    let scratch = env::temp_dir().join(format!("guard-bench-probe-{}.md", std::process::id()));
    here.arg("--section-out")
        .arg(&scratch)
        .env("GUARD_FLOOR_OBJECT", floor)
        .env("GUARD_BIN", guard)
        .stdout(Stdio::null());
    let ok_here = run_status(&mut here)?.success();
    let _ = std::fs::remove_file(&scratch);
    if ok_here {
        return Ok(None);
    }
    eprintln!(
        "xtask: this kernel cannot run libxdp's dispatcher: measuring section 5 in the test VM"
    );
    let vm = crate::vm::ensure_vm()?;
    let mut argv: Vec<String> = vec![
        bench.display().to_string(),
        "--only".into(),
        "dispatcher".into(),
        "--section-out".into(),
        "/run/guard-vm/dispatcher.md".into(),
    ];
    // The repeat and rounds asked for the host's run hold in the VM's too.
    for flag in ["--repeat", "--rounds"] {
        if let Some(i) = args.iter().position(|a| a == flag)
            && let Some(v) = args.get(i + 1)
        {
            argv.extend([flag.to_string(), v.clone()]);
        }
    }
    let envs = vec![
        (
            "GUARD_FLOOR_OBJECT".to_string(),
            floor.display().to_string(),
        ),
        ("GUARD_BIN".to_string(), guard.display().to_string()),
        ("PATH".to_string(), env::var("PATH").unwrap_or_default()),
        ("GUARD_BENCH_VM".to_string(), vm.accel.clone()),
    ];
    let (rc, text) = crate::vm::run_collecting(
        &vm,
        &argv,
        &envs,
        root(),
        std::time::Duration::from_secs(900),
        Some("dispatcher.md"),
    )?;
    let Some(text) = text else {
        bail!("guard-bench in the test VM (exit {rc}) wrote no dispatcher section");
    };
    let path = target_dir().join("bench-dispatcher.md");
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
    Ok(Some(path))
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
