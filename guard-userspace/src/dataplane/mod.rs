//! Kernel access behind a small trait, so the control plane (lists, TTLs, bans, health) can be
//! tested without a kernel. `crate::dataplane::KernelDatapath` is the real one.
pub mod chain;
mod component;
pub mod cookies;
pub mod dispatcher;
pub mod events;
mod kernel;
pub mod link;
mod loader;
pub mod netlink;
mod occupant;

mod pindir;
mod pins;
pub mod seen;
mod testrun;
mod types;

pub use kernel::KernelDatapath;
pub use loader::{BPFFS, detach, dispatcher_support, ensure_bpffs, load, start};
pub use pindir::{BpffsScope, PinDirLock, bpffs_scope, lock_pin_dir};
pub use pins::{link_pin_name, link_pins, parse_link_pin_name, versioned_dir};
pub use testrun::CpuRun;
pub use types::{AttachMode, Attachment, ChainSlot, LoadError, Loaded, Placement, StartOptions};

use guard_common::{
    Ban, Config, Counters, Known, ListEntry, Service, ServiceStats, SourceKey, SourceState,
};

use crate::cidr::Cidr;

/// Which CIDR list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("map {map}: {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {map} is full ({capacity} entries)")]
    Full { map: &'static str, capacity: u32 },
}

/// What the control plane needs from the data plane.
pub trait Datapath {
    /// Now, on the clock the XDP program uses (`bpf_ktime_get_ns`: CLOCK_MONOTONIC).
    fn now_ns(&self) -> u64;
    fn config(&self) -> Result<Config, DatapathError>;
    fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError>;
    /// Inserts or replaces a list entry.
    fn list_insert(
        &mut self,
        list: List,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError>;
    /// Inserts or replaces many entries with one value, stopping at the first error, which
    /// comes with the number inserted before it. The kernel datapath publishes the change
    /// to the program once, at the end, rather than per entry.
    fn list_insert_many(
        &mut self,
        list: List,
        cidrs: &[Cidr],
        entry: ListEntry,
    ) -> Result<(), (usize, DatapathError)> {
        for (i, cidr) in cidrs.iter().enumerate() {
            self.list_insert(list, cidr, entry).map_err(|e| (i, e))?;
        }
        Ok(())
    }
    /// Removes a list entry; false if it was not there.
    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool, DatapathError>;
    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>, DatapathError>;
    fn bans(&self) -> Result<Vec<(SourceKey, Ban)>, DatapathError>;
    fn ban_insert(&mut self, key: &SourceKey, ban: &Ban) -> Result<(), DatapathError>;
    /// Lifts a ban (an operator's unban): the source is free at once. False if there was none.
    fn ban_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError>;
    /// Clears a ban that expired by `now_ns` from the map, leaving any newer ban the data
    /// plane holds for the source in place. False if there was none, or it had not expired.
    fn ban_expire(&mut self, key: &SourceKey, now_ns: u64) -> Result<bool, DatapathError> {
        let _ = now_ns;
        self.ban_remove(key)
    }
    /// Counters summed over CPUs, per stats slot (`ifindex % STATS_SLOTS`), non-zero slots only.
    fn counters(&self) -> Result<Vec<(u32, Counters)>, DatapathError>;
    /// The sources the tracker holds now.
    fn sources(&self) -> Result<Vec<(SourceKey, SourceState)>, DatapathError>;

    /// Inserts or replaces a prefix ban (`reason::BAN_PREFIX`): a CIDR the program drops as
    /// banned after the allow and deny lists.
    fn prefix_ban_insert(&mut self, cidr: &Cidr, entry: ListEntry) -> Result<(), DatapathError>;
    /// Lifts a prefix ban; false if there was none.
    fn prefix_ban_remove(&mut self, cidr: &Cidr) -> Result<bool, DatapathError>;
    fn prefix_bans(&self) -> Result<Vec<(Cidr, ListEntry)>, DatapathError>;

    /// Points each `(protocol, port)` at its service slot (1..); every other port goes to
    /// slot 0. Replaces the previous mapping as a whole.
    fn set_service_ports(
        &mut self,
        ports: &[(ServiceProto, u16, u32)],
    ) -> Result<(), DatapathError>;
    /// Writes a service slot's mode (attack, newcomer budget).
    fn set_service(&mut self, slot: u32, service: &Service) -> Result<(), DatapathError>;
    /// The per-service counts summed over CPUs, indexed by slot (every slot).
    fn service_stats(&self) -> Result<Vec<ServiceStats>, DatapathError>;

    /// The known sources.
    fn known(&self) -> Result<Vec<(SourceKey, Known)>, DatapathError>;
    /// Makes a source known (restore); replaces any entry.
    fn known_insert(&mut self, key: &SourceKey, known: &Known) -> Result<(), DatapathError>;
    /// Forgets a known source (expiry): also its tracker entry, which caches the status.
    fn known_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError>;
    /// Rebuilds whatever summary the data plane keeps of the sources it holds (the kernel's
    /// seen filter), dropping the ones it no longer holds. Called every
    /// `control::services::KNOWN_SWEEP_EVERY`.
    fn refresh_seen(&mut self) -> Result<(), DatapathError> {
        Ok(())
    }
    /// Whether SYN cookies can be sent: the cookie stages loaded and the TC stage that hands
    /// a validated ACK to its listener attached to every interface, or why not. Without them
    /// no service is told to send cookies (its SYNs go to the kernel, as with "off").
    fn cookie_support(&self) -> Result<(), String> {
        Err("this data plane has no SYN-cookie stages".to_string())
    }
    /// Makes the kernel ready for the connections cookies bring (`net.ipv4.tcp_syncookies` at
    /// least 1) when `wanted` (a service may send cookies), or puts back what it changed when
    /// not. Returns what it did, for the log.
    fn kernel_syncookies(&mut self, wanted: bool) -> Result<Option<String>, String> {
        let _ = wanted;
        Ok(None)
    }
    /// Attaches the program afresh to `iface` (it came back under a new index, or its link
    /// was severed), replacing the link pinned for it under `pin_dir`. Returns the new
    /// index and the mode (`native` or `generic`).
    ///
    /// # Errors
    /// Why not, for the log.
    fn reattach(
        &mut self,
        pin_dir: &std::path::Path,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(u32, &'static str), String> {
        let _ = (pin_dir, mode);
        Err(format!("this data plane cannot attach to {iface}"))
    }
}

/// A service's transport protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProto {
    Tcp,
    Udp,
}

impl ServiceProto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// The slot index in `SERVICE_PORTS` of this protocol's `port`.
    pub fn port_slot(self, port: u16) -> u32 {
        let base = match self {
            Self::Tcp => 0,
            Self::Udp => 1,
        };
        (base << 16) | u32::from(port)
    }
}
