//! The daemon's durable state: the records it keeps across restarts and reboots (lists,
//! bans, prefix bans, learned rates, the operator's override) and the store that holds them.
//!
//! The store is SQLite in WAL mode (`store.rs`), one row per record, so that a change is one
//! small transaction; the JSON file of earlier guards is read once and migrated (`legacy.rs`).
use std::{
    net::IpAddr,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{cidr::Cidr, health::Override};

mod legacy;
mod store;
pub use legacy::LEGACY_FILE_NAME;
pub use store::{DB_FILE_NAME, Opened, SCHEMA, Store, Writer};

/// The format version of the records (and of the JSON file before the store). A newer one
/// is refused, not treated as damage, so a downgrade never destroys state it cannot read.
pub const VERSION: u32 = 1;

/// Everything the daemon keeps across restarts and reboots. No `deny_unknown_fields` on
/// this or the records: a field a newer guard added is not damage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub allow: Vec<ListRecord>,
    pub deny: Vec<ListRecord>,
    pub bans: Vec<BanRecord>,
    /// `guard drain|maint` in force (`guard ready` clears it). Left out when there is none,
    /// and optional when read, so files of guards without it still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Override>,
    /// Prefix bans the daemon escalated (optional when read, like `operator`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_bans: Vec<PrefixBanRecord>,
    /// Each service's learned normal rates, so a restart does not start learning again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<LearnedRecord>,
}

/// A prefix ban: a network whose sources kept getting banned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixBanRecord {
    pub cidr: Cidr,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds.
    pub expires: u64,
    /// Source bans in the window that escalated it.
    pub sources: u32,
}

/// A service's learned rates, by protocol and port (names may change across reloads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnedRecord {
    pub protocol: crate::dataplane::ServiceProto,
    pub port: u16,
    pub pps: crate::control::attack::Learned,
    pub syn_pps: crate::control::attack::Learned,
}

/// One allow or deny entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListRecord {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub added: u64,
    /// Unix seconds; `None` never expires.
    pub expires: Option<u64>,
}

/// One ban the data plane made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The tracker key's address: IPv4, or an IPv6 network address masked to the prefix.
    pub source: IpAddr,
    /// A `guard_common::reason::NAMES` name.
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds.
    pub expires: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} has format version {found}; this guard reads version {supported}: run the newer guard (this one does not touch the file)",
        path.display()
    )]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot move the damaged {} aside to {}", path.display(), to.display())]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the state store {}", path.display())]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "the state store {} is in use by another process (another `guard run`?)",
        path.display()
    )]
    Busy { path: PathBuf },
    #[error("the state store {} is not available: {reason}", path.display())]
    Unavailable { path: PathBuf, reason: String },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// True when the file system is full (or over quota): a condition to wait out, not to
    /// stop for.
    pub fn is_full(&self) -> bool {
        let io_full = |e: &std::io::Error| {
            matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        };
        match self {
            Self::CreateDir { source, .. } | Self::Write { source, .. } => io_full(source),
            Self::Db { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            ),
            Self::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 UTC (`2024-05-01T12:00:00Z`), by jiff.
pub fn format_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_format_as_rfc3339() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_714_564_800), "2024-05-01T12:00:00Z");
    }
}
