//! The types of loading and attaching: how to attach, what was attached, and what can fail.
use super::*;
use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};
use guard_common::PROGRAM_NAME;

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic where the driver has none.
    Auto,
    Native,
    Generic,
}

/// Where on an interface the program goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Directly where the interface runs no XDP program; into libxdp's dispatcher where it
    /// runs one; refused where it runs another program.
    Auto,
    /// Directly (the guard's own pinned link), never beside another program.
    Direct,
    /// Always as a component of libxdp's dispatcher (building one where there is none), so
    /// that libxdp's tools can add programs beside the guard later.
    Dispatcher,
}

/// A slot of a program array another XDP program tail-calls (`[datapath] chain`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainSlot {
    /// The pinned program array (e.g. katran's root array under /sys/fs/bpf).
    pub prog_array: PathBuf,
    pub index: u32,
}

pub struct StartOptions {
    /// Interfaces to attach to; ignored (none is attached) when `chain` is set.
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    /// Directly or through libxdp's dispatcher.
    pub placement: Placement,
    /// The guard's run priority in a dispatcher (lower runs first).
    pub priority: u32,
    /// Pin directory root, e.g. /sys/fs/bpf/guard; state lives in its `v<LAYOUT_VERSION>/`.
    pub pin_dir: PathBuf,
    /// Chain mode: the program goes into this slot instead of onto interfaces.
    pub chain: Option<ChainSlot>,
    /// A pinned XDP program the guard tail-calls for every packet it passes.
    pub next: Option<PathBuf>,
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// The interface, or in chain mode the slot (`chain:<array>[<index>]`, ifindex 0).
    pub iface: String,
    pub ifindex: u32,
    /// "native", "generic" (attached directly), "dispatcher" (a component of libxdp's
    /// dispatcher) or "chain".
    pub mode: String,
    /// True if the attachment was adopted from a previous run's pins (and its program
    /// replaced in place, with no gap in protection).
    pub adopted: bool,
    /// Times the daemon attached it again after the interface came back (deleted and made
    /// anew under its name) or lost its link.
    #[serde(default)]
    pub reattached: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this guard binary was built without its XDP program: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the XDP object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {PROGRAM_NAME:?} or map {0:?}")]
    Missing(&'static str),
    #[error("the kernel rejected the XDP program (verifier or permissions; are you root?)")]
    Program(#[source] ProgramError),
    #[error("interface {iface:?} does not exist")]
    NoInterface { iface: String },
    #[error("attaching to {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {BPFFS} failed")]
    Mount(#[source] io::Error),
    #[error("{0}")]
    Link(String),
    #[error(
        "{iface} already runs an XDP program: {program} (id {id}). The guard does not replace it. Put the guard into the program array that program tail-calls ([datapath] chain = {{ prog_array = \"/sys/fs/bpf/...\", index = N }}, for a katran-style root), load that program through libxdp's dispatcher (xdp-loader) so the guard can join it, or detach it first"
    )]
    Occupied {
        iface: String,
        id: u32,
        program: String,
    },
    #[error("{iface} (libxdp's dispatcher): {why}")]
    Dispatcher { iface: String, why: String },
    #[error("the next program {}", path.display())]
    Next {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "another guard daemon{} holds the pin directory {}: two daemons on one set of pins undo each other's lists and bans. Stop it first, or give this one its own --pin-dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(),
        pin_dir.display()
    )]
    Locked {
        pin_dir: PathBuf,
        /// The holder's pid, if `/proc/locks` named it.
        holder: Option<u32>,
    },
    #[error(
        "the pin directory {} is on a bpffs private to this mount namespace ({why}): its pins, and with them the program and its lists, would vanish with the daemon, leaving the host unprotected after a crash. Run the daemon in the host's mount namespace (`nsenter --net=/run/netns/NAME`, not `ip netns exec`, which remounts /sys), or pass --allow-private-bpffs to run anyway",
        pin_dir.display()
    )]
    PrivateBpffs { pin_dir: PathBuf, why: String },
}

/// The loaded program with its maps.
pub struct Loaded {
    pub datapath: KernelDatapath,
    pub attachments: Vec<Attachment>,
}
