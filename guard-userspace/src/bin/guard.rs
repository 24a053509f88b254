//! The `guard` command: the daemon (`guard run`) and the operator's CLI.
fn main() {}
