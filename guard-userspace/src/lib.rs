//! The guard controller: loads and attaches the XDP program, manages its maps, lists and bans,
//! and serves the control socket and health outputs. The `guard` binary is a thin front end.
pub mod cidr;
pub mod datapath;
pub mod ebpf;
