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

pub struct StartOptions {
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    /// Pin directory root, e.g. /sys/fs/bpf/guard; state lives in its `v<LAYOUT_VERSION>/`.
    pub pin_dir: PathBuf,
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "generic".
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
