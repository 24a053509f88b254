//! `guard --version` (the build and the running kernel, for bug reports) and `guard completions`
//! (shell completion scripts generated from the clap definition).
use std::io::{self, Write};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// The aya release the loader is built on: the workspace pins it exactly (`=0.14.0`), and a
/// test keeps the two in step.
pub const AYA_VERSION: &str = "0.14.0";

/// The commit the binary was built from (see build.rs), or "unknown".
pub const GIT_COMMIT: &str = match option_env!("GUARD_GIT_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// `-V`: one line.
pub fn short_version() -> String {
    format!("{} ({GIT_COMMIT})", env!("CARGO_PKG_VERSION"))
}

/// `--version`: what a bug report needs, one item a line.
pub fn long_version() -> String {
    format!(
        "{}\ncommit:      {GIT_COMMIT}\naya:         {AYA_VERSION}\nmap layout:  v{}\nkernel:      {}",
        env!("CARGO_PKG_VERSION"),
        guard_common::LAYOUT_VERSION,
        kernel_release().unwrap_or_else(|e| format!("unknown ({e})"))
    )
}

/// The running kernel's release (`uname -r`).
///
/// # Errors
///
/// The OS error of uname(2).
pub fn kernel_release() -> io::Result<String> {
    let u = nix::sys::utsname::uname()?;
    Ok(u.release().to_string_lossy().into_owned())
}

/// The command definition with the version texts set (they are built at run time: the kernel
/// release is the running one's).
pub fn command() -> clap::Command {
    // clap keeps version strings for the program's life; these are built once per run.
    let short: &'static str = Box::leak(short_version().into_boxed_str());
    let long: &'static str = Box::leak(long_version().into_boxed_str());
    Cli::command().version(short).long_version(long)
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    shell: CompletionShell,
}

/// The shells `guard completions` supports.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

/// Prints the completion script for the shell on stdout.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<()> {
    let shell = match args.shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "guard", &mut script);
    match io::stdout().lock().write_all(&script) {
        // `guard completions bash | head` is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aya_version_matches_the_workspace_pin() {
        let manifest = include_str!("../../../../Cargo.toml");
        assert!(
            manifest.contains(&format!("aya = {{ version = \"={AYA_VERSION}\"")),
            "update AYA_VERSION to the aya version pinned in the workspace Cargo.toml"
        );
    }

    #[test]
    fn long_version_names_commit_aya_layout_and_kernel() {
        let v = long_version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains(&format!("aya:         {AYA_VERSION}")), "{v}");
        assert!(
            v.contains(&format!("map layout:  v{}", guard_common::LAYOUT_VERSION)),
            "{v}"
        );
        let kernel = kernel_release().expect("uname");
        assert!(!kernel.is_empty());
        assert!(v.ends_with(&format!("kernel:      {kernel}")), "{v}");
    }

    #[test]
    fn completions_are_generated_for_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut command(), "guard", &mut out);
            let text = String::from_utf8(out).expect("utf-8");
            assert!(text.contains("deny"), "{shell}: {text}");
        }
    }
}
