//! The guard controller: loads and attaches the XDP program, manages its maps, lists and bans,
//! and serves the control socket and health outputs. The `guard` binary is a thin front end.
//!
//! One module per concern: [`daemon`] (start-up, tick, reload), [`control`] (lists, bans,
//! sweep, restore, operator, stats, attack mode), [`rpc`] (the control socket's protocol,
//! server and client), [`state`] (the state file), [`serve`] (health HTTP, agent-check,
//! metrics), [`health`] (the health state and its inputs), [`dataplane`] (loader, pins, links,
//! maps and the [`dataplane::Datapath`] trait), [`config`] (schema, validation, overrides,
//! route discovery).
pub mod cidr;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod duration;
pub mod escalate;
pub mod fleet;
pub mod health;
pub mod rpc;
pub mod serve;
pub mod state;
pub mod watchdog;

pub use control::attack;

/// The loader's paths as they were before the data plane got its folder (guard-bench and the
/// tests use them).
pub mod ebpf {
    pub use crate::dataplane::{
        AttachMode, Attachment, BPFFS, ChainSlot, CpuRun, KernelDatapath, LoadError, Loaded,
        Placement, StartOptions, chain, detach, dispatcher, dispatcher_support, ensure_bpffs,
        link_pin_name, link_pins, load, netlink, parse_link_pin_name, start, versioned_dir,
    };
}

/// The [`Datapath`](crate::dataplane::Datapath) trait and its types at their old path.
pub mod datapath {
    pub use crate::dataplane::{Datapath, DatapathError, List, ServiceProto};
}
