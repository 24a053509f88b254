//! `cargo xtask`: builds, runs, tests and lints guard, installing what the eBPF build needs.
//! Subcommands are declared here with clap; the work is in `prereqs`, `build`, `bench` and `vm`.

mod bench;
mod build;
mod demo;
mod dist;
mod prereqs;
mod vm;

use std::{
    ffi::OsStr,
    os::unix::process::ExitStatusExt,
    process::{Command, ExitCode, ExitStatus, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(bin_name = "cargo xtask", about = "Build, run, test and lint guard")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install missing prerequisites, build the eBPF object, then the `guard` binary.
    Build {
        /// Build userspace with the release profile (the eBPF object is always release).
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `guard <ARGS>` as root in the foreground (default: `guard run`).
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for `guard`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Build the eBPF object and run the workspace tests as root (live tests unless --skip-live).
    Test {
        /// Do not set GUARD_TEST_LIVE=1: skip the tests that need live network namespaces.
        #[arg(long)]
        skip_live: bool,
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run CMD in the test VM (a stock Debian kernel under qemu, the host's files read-only):
    /// downloads and builds it the first time. Passes the exit code through.
    Vm {
        /// Print the VM's kernel release, kernel, initramfs and accelerator first.
        #[arg(long)]
        kernel_info: bool,
        /// Kill the VM after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// The command and its arguments, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run clippy on userspace crates (stable) and on guard-ebpf (nightly, bpfel), -D warnings.
    Clippy,
    /// Build the eBPF object and print its path.
    EbpfObject,
    /// Build, then show the guard on a throwaway namespace testbed: a client and a flood at once.
    Demo,
    /// Build (release) and package for operators under target/dist/: a tarball and a .deb.
    Dist {
        /// Then (as root) install the .deb on this host, run it on a namespace interface with
        /// the unit's capabilities only, upgrade it and purge it, and check nothing is left.
        #[arg(long)]
        check: bool,
    },
    /// Build (release), install the peers, and run the benchmarks as root: writes BENCHMARKS.md.
    Bench {
        /// Arguments for `guard-bench`, after `--` (e.g. `-- --only cost --repeat 500000`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> Result<ExitCode> {
    match task {
        Task::Build { release } => {
            let guard = build::all(release)?;
            println!("{}", guard.display());
        }
        Task::Run { release, args } => {
            if !prereqs::is_root()? {
                bail!(
                    "cargo xtask run needs root (CAP_BPF, CAP_NET_ADMIN): run it as root or with sudo"
                );
            }
            let guard = build::all(release)?;
            let args = if args.is_empty() {
                vec!["run".to_owned()]
            } else {
                args
            };
            let status = run_status(cmd(&guard, &args).stdout(Stdio::inherit()))?;
            return Ok(exit_code(status));
        }
        Task::Test { skip_live, args } => {
            if !prereqs::is_root()? {
                eprintln!(
                    "cargo xtask test needs root: the packet fixtures and live tests load XDP programs and create network namespaces. Run it as root (sudo -E cargo xtask test)."
                );
                return Ok(ExitCode::FAILURE);
            }
            build::test(skip_live, &args)?;
        }
        Task::Vm {
            kernel_info,
            timeout,
            args,
        } => {
            if !prereqs::is_root()? {
                bail!("cargo xtask vm needs root: it installs packages and shares / with qemu");
            }
            let code = vm::vm(kernel_info, timeout, &args)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Task::Clippy => build::clippy()?,
        Task::EbpfObject => {
            let object = build::ebpf_object()?;
            println!("{}", object.display());
        }
        Task::Bench { args } => bench::bench(&args)?,
        Task::Dist { check } => dist::dist(check)?,
        Task::Demo => {
            if !prereqs::is_root()? {
                bail!(
                    "cargo xtask demo needs root: it creates network namespaces and attaches XDP"
                );
            }
            demo::demo()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit code to hand back for a child's status: its own code, or 128 + the signal.
fn exit_code(status: ExitStatus) -> ExitCode {
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        (None, Some(signal)) => ExitCode::from(u8::try_from(128 + signal).unwrap_or(1)),
        (None, None) => ExitCode::FAILURE,
    }
}

/// A command for `program` with `args`; its standard output goes to our standard error, so
/// that the xtask's own standard output carries only its result (a path). Set `.stdout()` to
/// `Stdio::inherit()` where the child's output is the point.
pub(crate) fn cmd<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut c = Command::new(program);
    c.args(args).stdout(std::io::stderr());
    c
}

/// Runs `c` after printing it, and fails with the command line and its status if it fails.
pub(crate) fn run(c: &mut Command) -> Result<()> {
    let status = run_status(c)?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(c));
    }
    Ok(())
}

/// Runs `c` after printing it, and returns its exit status whatever it is.
pub(crate) fn run_status(c: &mut Command) -> Result<ExitStatus> {
    eprintln!("xtask: {}", show(c));
    c.status().with_context(|| {
        format!(
            "could not start `{}`: is it installed and in PATH?",
            show(c)
        )
    })
}

/// The command line of `c` as a shell would show it, with the variables it sets in front.
pub(crate) fn show(c: &Command) -> String {
    let envs = c
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))));
    let words = std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(quote);
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_puts_env_first_and_quotes() {
        let mut c = cmd("cargo", &["install", "a b"]);
        c.env("LLVM_PREFIX", "/usr/lib/llvm-22").env_remove("RUSTC");
        assert_eq!(show(&c), "LLVM_PREFIX=/usr/lib/llvm-22 cargo install 'a b'");
    }
}
