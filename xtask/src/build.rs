//! The build, test and lint steps: guard-ebpf with nightly for bpfel (always release), then
//! guard-userspace with the object embedded through GUARD_EBPF_OBJECT.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, prereqs, run, run_status, vm};

const BPF_TARGET: &str = "bpfel-unknown-none";
/// What `cargo +nightly build|clippy` needs to build guard-ebpf for the BPF target.
const EBPF_ARGS: &[&str] = &[
    "-p",
    "guard-ebpf",
    "--target",
    BPF_TARGET,
    "-Z",
    "build-std=core",
    "--release",
];

/// Builds everything and returns the path of the `guard` binary.
pub fn all(release: bool) -> Result<PathBuf> {
    let object = ebpf_object()?;
    let mut build = cargo(&["build", "-p", "guard-userspace"]);
    if release {
        build.arg("--release");
    }
    run(build.env("GUARD_EBPF_OBJECT", &object))
        .context("fix the guard-userspace build errors above")?;
    let guard = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("guard");
    if !guard.is_file() {
        bail!(
            "cargo built guard-userspace but {} is not there",
            guard.display()
        );
    }
    Ok(guard)
}

/// Builds guard-ebpf (installing what that needs) and returns the path of the object.
pub fn ebpf_object() -> Result<PathBuf> {
    prereqs::ensure_ebpf_build()?;
    let mut build = prereqs::nightly("cargo", &["build"]);
    build.args(EBPF_ARGS).current_dir(root());
    run(&mut build).context("fix the guard-ebpf build errors above")?;
    let object = object_path();
    if !object.is_file() {
        bail!(
            "cargo built guard-ebpf but {} is not there",
            object.display()
        );
    }
    Ok(object)
}

/// Runs the workspace tests (all default members) with the eBPF object, live tests included
/// unless `skip_live`; `extra` goes to `cargo test` as it is. Needs root.
pub fn test(skip_live: bool, extra: &[String]) -> Result<()> {
    // tmux drives the live views (`guard top --watch`, `guard stats --watch`) in the tests.
    prereqs::ensure_debs(&[prereqs::TEST_DEBS, &["tmux"]].concat())?;
    let object = ebpf_object()?;
    prereqs::ensure_bpffs()?;
    // The live tests this kernel cannot run (freplace, for libxdp's dispatcher) boot this VM;
    // --skip-live skips them, and needs no VM.
    let vm = if skip_live {
        None
    } else {
        Some(vm::ensure_vm().context("the live tests that run in the test VM need it")?)
    };
    let mut test = cargo(&["test", "--workspace", "--exclude", "guard-ebpf"]);
    test.args(extra)
        .env("GUARD_EBPF_OBJECT", &object)
        // The chain tests' root and next programs (guard-ebpf/src/testroot.rs).
        .env(
            "GUARD_TESTROOT_OBJECT",
            object.with_file_name("guard-testroot"),
        )
        // Tests fail rather than skip here when something they need is missing (root, the
        // object, haproxy): this is the suite CI trusts. Only --skip-live skips, as asked.
        .env("GUARD_TEST_KERNEL", "require")
        .stdout(Stdio::inherit());
    if let Some(vm) = vm {
        test.env("GUARD_VM_KERNEL", &vm.kernel)
            .env("GUARD_VM_INITRD", &vm.initrd)
            .env("GUARD_VM_ACCEL", &vm.accel);
    }
    if skip_live {
        test.env_remove("GUARD_TEST_LIVE");
    } else {
        test.env("GUARD_TEST_LIVE", "1");
    }
    let status = run_status(&mut test)?;
    if !status.success() {
        bail!("tests failed ({status}): see the failures above");
    }
    Ok(())
}

/// Clippy with warnings denied: userspace crates on stable, then guard-ebpf on nightly.
pub fn clippy() -> Result<()> {
    let mut userspace = cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "guard-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    let object = object_path();
    if object.is_file() {
        userspace.env("GUARD_EBPF_OBJECT", &object);
    }
    run(&mut userspace).context("fix the clippy findings above")?;

    prereqs::ensure_ebpf_build()?;
    prereqs::ensure_nightly_component("clippy")?;
    let mut ebpf = prereqs::nightly("cargo", &["clippy"]);
    ebpf.args(EBPF_ARGS)
        .args(["--", "-D", "warnings"])
        .current_dir(root());
    run(&mut ebpf).context("fix the guard-ebpf clippy findings above")
}

/// A stable-toolchain (the one running the xtask) cargo command in the workspace root.
fn cargo(args: &[&str]) -> Command {
    let mut c = cmd("cargo", args);
    c.current_dir(root());
    c
}

fn object_path() -> PathBuf {
    target_dir()
        .join(BPF_TARGET)
        .join("release")
        .join("guard-ebpf")
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
