//! The guard controller: loads and attaches the XDP program, manages its maps, lists and bans,
//! and serves the control socket and health outputs. The `guard` binary is a thin front end.
pub mod cidr;
pub mod datapath;
pub mod ebpf;
pub mod config;
pub mod duration;
pub mod state;
pub mod agent;
pub mod health;
pub mod http_server;
pub mod metrics;
pub mod xdp_link;
pub mod control;
pub mod api;
pub mod daemon;
pub mod cli;
