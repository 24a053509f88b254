//! The `guard` command: the daemon (`guard run`) and the operator's CLI, a thin front end over
//! the library's `cli` module.
use std::process::ExitCode;

fn main() -> ExitCode {
    guard::cli::main()
}
