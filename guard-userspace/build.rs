//! Embeds the compiled XDP object into the `guard` binary, so one file is all a host needs.
//!
//! `cargo xtask build` compiles guard-ebpf first and passes its path in `GUARD_EBPF_OBJECT`.
//! Without it (a plain `cargo check` or `cargo clippy`), the object is looked up where the
//! xtask leaves it; if there is none, an empty object is embedded and `guard run` says how to
//! build a real one.
//!
//! It also records the git commit for `guard --version` in `GUARD_GIT_COMMIT`: taken from the
//! environment when set (a packaging build without `.git`), else `git rev-parse --short HEAD`
//! when git and a repository are there, else left unset (the binary says "unknown").
use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    git_commit();
    println!("cargo:rerun-if-env-changed=GUARD_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("guard.bpf.o");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let candidates = match env::var_os("GUARD_EBPF_OBJECT") {
        Some(p) => vec![PathBuf::from(p)],
        None => ["release", "debug"]
            .iter()
            .map(|p| {
                manifest
                    .join("../target/bpfel-unknown-none")
                    .join(p)
                    .join("guard-ebpf")
            })
            .collect(),
    };
    for c in &candidates {
        println!("cargo:rerun-if-changed={}", c.display());
    }
    match candidates.iter().find(|c| c.is_file()) {
        Some(obj) => {
            fs::copy(obj, &out).expect("copy the eBPF object into OUT_DIR");
        }
        None => {
            if env::var_os("GUARD_EBPF_OBJECT").is_some() {
                panic!(
                    "GUARD_EBPF_OBJECT={} does not exist",
                    candidates[0].display()
                );
            }
            println!(
                "cargo:warning=no compiled guard-ebpf object found; build with `cargo xtask build` to embed the XDP program"
            );
            fs::write(&out, b"").expect("write an empty eBPF object");
        }
    }
}

/// Passes the commit to the compiler as `GUARD_GIT_COMMIT`, rerunning when HEAD moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=GUARD_GIT_COMMIT");
    if let Ok(commit) = env::var("GUARD_GIT_COMMIT") {
        println!("cargo:rustc-env=GUARD_GIT_COMMIT={commit}");
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=GUARD_GIT_COMMIT={commit}");
    // HEAD names the branch; the branch's ref (loose or packed) names the commit.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(p) = git(&["rev-parse", "--git-path", &branch])
    {
        println!("cargo:rerun-if-changed={p}");
    }
}
