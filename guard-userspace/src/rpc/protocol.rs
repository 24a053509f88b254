//! The wire form: one JSON request line in, one JSON response line out.
use serde::{Deserialize, Serialize};

use crate::{
    cidr::Cidr,
    control::{
        AddOutcome, BanInfo, ImportOutcome, ReloadReport, StatsReport, StatusReport, TopSource,
    },
    dataplane::List,
    health::{HealthReport, Override, OverrideMode},
    state::ListRecord,
};

/// `guard top`'s sampling interval bounds.
pub const TOP_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=10_000;

/// A request: `{"cmd": "<name>", ...fields}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    ListAdd {
        list: List,
        cidr: Cidr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ListDel {
        list: List,
        cidr: Cidr,
    },
    ListShow {
        list: List,
    },
    /// All or nothing; the client parses the netset file (see `control::parse_netset`).
    ListImport {
        list: List,
        entries: Vec<Cidr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Bans,
    Unban {
        cidr: Cidr,
    },
    Stats,
    /// The `n` heaviest sources over `interval_ms` (100 to 10,000).
    Top {
        n: usize,
        interval_ms: u64,
    },
    Status,
    /// Re-read the config file the daemon was started with.
    Reload,
    /// Detach from every interface, remove the pins, and stop the daemon.
    Detach,
    /// The current health report.
    Health,
    /// `guard drain|maint [--for D] [--reason R]`, `guard ready`.
    Operator {
        mode: OverrideMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// Drain (or maintenance) even past the pool's drain budget (`[fleet] max_drained`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// `guard fleet status`.
    FleetStatus,
    /// `guard unban --fleet`: lifted here and everywhere in the fleet.
    FleetUnban {
        cidr: Cidr,
    },
    /// `guard deny|allow add --fleet`: added here and published to the fleet.
    FleetListAdd {
        list: List,
        cidr: Cidr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// `guard deny|allow del --fleet`: removed here and everywhere in the fleet.
    FleetListDel {
        list: List,
        cidr: Cidr,
    },
    /// `guard watchdog status`: every watchdog's samples, limits and history.
    Watchdogs,
    /// `guard watchdog restart NAME`: drain, restart and readmit by hand.
    WatchdogRestart {
        name: String,
    },
}

/// A response: `{"ok": <reply>}` or `{"error": {"message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error { message: String },
}

/// What a request returns when it succeeds, one variant per kind of answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Added(AddOutcome),
    Deleted,
    Entries(Vec<ListRecord>),
    Imported(ImportOutcome),
    Bans(Vec<BanInfo>),
    Unbanned(Vec<BanInfo>),
    Stats(StatsReport),
    Top {
        interval_ms: u64,
        sources: Vec<TopSource>,
    },
    Status(Box<StatusReport>),
    Reloaded(ReloadReport),
    Detached {
        interfaces: Vec<String>,
    },
    Health(Box<HealthReport>),
    /// The override now in force (`None` after `guard ready`) and the first health report
    /// that took it into account (or the latest, if none came within a few seconds).
    Operator {
        operator: Option<Override>,
        report: Box<HealthReport>,
    },
    Watchdogs(Vec<crate::watchdog::WatchdogReport>),
    /// The restart asked for by hand is under way (the message says what comes next).
    WatchdogRestart {
        message: String,
    },
    /// `guard fleet status`.
    Fleet(Box<crate::fleet::FleetStatus>),
}
