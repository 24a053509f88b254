//! The guard controller: loads and attaches the XDP program, manages its maps, lists and bans,
//! and serves the control socket and health outputs. The `guard` binary is a thin front end.
pub mod agent;
pub mod api;
pub mod attack;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod control;
pub mod cookies;
pub mod daemon;
pub mod datapath;
pub mod duration;
pub mod ebpf;
pub mod escalate;
pub mod health;
pub mod http_server;
pub mod metrics;
pub mod seen;
pub mod state;
pub mod watchdog;
pub mod xdp_link;
