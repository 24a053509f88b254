//! The control plane: allow and deny lists with TTLs, bans, expiry, restore at start, stats and
//! top sources, and reloads, all behind the `Datapath` trait and persisted in the state store.
//!
//! Sources of truth: the lists are written only by userspace, so [`Control`]'s own copy is
//! the truth and the maps follow it; bans are made by the data plane, so the `BANS` map is the
//! truth and the store mirrors it on every [`Control::sweep`], one row per changed ban.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use guard_common::{
    Ban, BanEvent, Counters, ListEntry, SourceKey, SourceState, capacity, map_names, reason,
    source_key_v4,
};
use serde::{Deserialize, Serialize};

use crate::{
    cidr::{Cidr, CidrError},
    config::{Limits, Settings},
    control::attack::{Escalator, Monitor, ServiceReport},
    dataplane::Attachment,
    dataplane::{Datapath, DatapathError, List},
    health::{self, Override, OverrideMode},
    state::{
        self, BanRecord, LearnedRecord, ListRecord, PrefixBanRecord, State, StateError, Store,
    },
};
use persist::Unsaved;

pub mod attack;
mod bans;
mod fleet;
mod links;
mod lists;
mod operator;
mod persist;
mod reports;
mod restore;
mod services;
mod stats;
mod sweep;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
pub use bans::L7Ban;
pub use reports::*;
pub use services::{KNOWN_SWEEP_EVERY, PREFIX_REASON};

const NS_PER_SEC: u64 = 1_000_000_000;

/// A gap between how far the wall clock and the monotonic clock moved larger than this is a
/// jump of the wall clock (NTP slews by far less; a step is seconds to years).
const CLOCK_JUMP_SECS: u64 = 10;

/// How long the daemon runs with a steady wall clock before it deletes the stored records
/// that looked expired at start (see `restore.rs`).
pub const PARK_GRACE: Duration = Duration::from_secs(600);

/// The longest reason text accepted.
pub const MAX_REASON_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the data plane refused the change")]
    Datapath(#[from] DatapathError),
    #[error("the change was undone because it could not be saved in the state store")]
    State(#[from] StateError),
    #[error("{cidr} is not in the {} list", list.name())]
    NotListed { list: List, cidr: Cidr },
    #[error("no ban matches {cidr}")]
    NotBanned { cidr: Cidr },
    #[error(
        "the {} list would hold {wanted} {family} entries, over its capacity of {capacity}: nothing was changed",
        list.name()
    )]
    Full {
        list: List,
        family: &'static str,
        wanted: usize,
        capacity: u32,
    },
    #[error("reason {reason:?}: {problem}")]
    BadReason { reason: String, problem: String },
    #[error("TTL of {secs}s: expected 1s to {}s", crate::duration::MAX.as_secs())]
    BadTtl { secs: u64 },
    // The CidrError is part of this message, not a separate cause, so the chain shows it once.
    #[error("line {line}: {error}; nothing was imported{}", more_text(*more))]
    BadNetsetLine {
        line: usize,
        error: CidrError,
        /// Bad lines after this one.
        more: usize,
    },
}

fn more_text(more: usize) -> String {
    match more {
        0 => String::new(),
        1 => " (1 more bad line follows)".to_string(),
        n => format!(" ({n} more bad lines follow)"),
    }
}

/// Parses a netset (ipset/FireHOL-style) file: one address or CIDR a line; `#` starts a
/// comment, blank lines are skipped. Duplicates are kept (the import collapses them).
///
/// All or nothing: one bad line fails the whole file, naming the first bad line and how many
/// more there are, so that a typo never leaves a half-applied list behind.
///
/// # Errors
///
/// [`ControlError::BadNetsetLine`].
pub fn parse_netset(text: &str) -> Result<Vec<Cidr>, ControlError> {
    let mut out = Vec::new();
    let mut first_bad: Option<(usize, CidrError)> = None;
    let mut more = 0;
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        match content.parse::<Cidr>() {
            Ok(c) => out.push(c),
            Err(e) if first_bad.is_none() => first_bad = Some((i + 1, e)),
            Err(_) => more += 1,
        }
    }
    match first_bad {
        Some((line, error)) => Err(ControlError::BadNetsetLine { line, error, more }),
        None => Ok(out),
    }
}

/// Checks an operator's reason text.
///
/// # Errors
///
/// [`ControlError::BadReason`] for text too long or with control characters.
pub fn check_reason(reason: &str) -> Result<(), ControlError> {
    let bad = |problem: &str| ControlError::BadReason {
        reason: reason.chars().take(40).collect(),
        problem: problem.to_string(),
    };
    if reason.len() > MAX_REASON_LEN {
        return Err(bad(&format!("longer than {MAX_REASON_LEN} bytes")));
    }
    if reason.chars().any(char::is_control) {
        return Err(bad("contains control characters (such as a newline)"));
    }
    Ok(())
}

/// The address of a tracker key: IPv4 for `::ffff:a.b.c.d`, else IPv6.
pub fn key_addr(key: &SourceKey) -> IpAddr {
    match key.as_v4() {
        Some(v4) => IpAddr::from(v4),
        None => IpAddr::V6(Ipv6Addr::from(key.addr)),
    }
}

/// The tracker key of an address, unmasked.
pub fn addr_key(ip: IpAddr) -> SourceKey {
    match ip {
        IpAddr::V4(v4) => source_key_v4(v4.octets(), 32),
        IpAddr::V6(v6) => SourceKey { addr: v6.octets() },
    }
}

/// A tracker key as the network it stands for under `limits`' prefixes.
pub fn key_cidr(key: &SourceKey, limits: &Limits) -> Cidr {
    let addr = key_addr(key);
    let prefix = if addr.is_ipv4() {
        limits.ipv4_prefix
    } else {
        limits.ipv6_prefix
    };
    Cidr::new(addr, prefix).unwrap_or_else(|| Cidr::host(addr))
}

/// A `reason::*` index by its name, for bans read back from the state file.
fn reason_index(name: &str) -> u32 {
    if name == reason::BAN_L7_HAPROXY_NAME {
        return reason::BAN_L7_HAPROXY;
    }
    reason::NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(reason::RATE_LIMITED as u32, |i| i as u32)
}

fn reason_name(index: u32) -> String {
    if index == reason::BAN_L7_HAPROXY {
        return reason::BAN_L7_HAPROXY_NAME.to_string();
    }
    reason::NAMES
        .get(index as usize)
        .map_or_else(|| format!("reason {index}"), |n| (*n).to_string())
}

fn list_capacity(list: List, v4: bool) -> u32 {
    match (list, v4) {
        (List::Allow, true) => capacity::ALLOW_V4,
        (List::Allow, false) => capacity::ALLOW_V6,
        (List::Deny, true) => capacity::DENY_V4,
        (List::Deny, false) => capacity::DENY_V6,
    }
}

/// One list entry as kept in memory: the record for the state file and the map's expiry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    record: ListRecord,
    /// Monotonic ns, as in the map; 0 never expires.
    expires_ns: u64,
}

/// A ban as the map holds it, and as the state file records it.
#[derive(Clone, Debug)]
struct MirroredBan {
    ban: Ban,
    record: BanRecord,
}

/// Unix seconds now; replaceable for tests.
pub type WallClock = Box<dyn Fn() -> u64 + Send>;

/// The control plane over a data plane `D`.
pub struct Control<D: Datapath> {
    dp: D,
    settings: Settings,
    store: Store,
    wall: WallClock,
    allow: BTreeMap<Cidr, Entry>,
    deny: BTreeMap<Cidr, Entry>,
    bans: HashMap<SourceKey, MirroredBan>,
    attachments: Vec<Attachment>,
    started: Instant,
    /// `guard drain|maint` in force, persisted; `None` after `guard ready`.
    operator: Option<Override>,
    /// Counts changes of `operator`, so that a caller can wait for a health report that
    /// took a change into account.
    operator_seq: u64,
    /// One monitor per service slot; slot 0 is the traffic of no service.
    monitors: Vec<Monitor>,
    /// Learned rates from the state file, until the services they belong to are set up.
    learned: Vec<LearnedRecord>,
    /// Source bans per prefix, for escalation.
    escalator: Escalator,
    /// Prefix bans in force (the tries follow this copy), with their monotonic expiry.
    prefix_bans: BTreeMap<Cidr, (PrefixBanRecord, u64)>,
    /// Prefixes escalation asked to ban, done at the end of the sweep.
    pending_prefixes: Vec<Cidr>,
    /// When the known sources were last walked for expiry, and how many there were.
    known_swept: Option<(Instant, usize)>,
    /// What the store does not hold yet (written each tick until it does).
    unsaved: Unsaved,
    /// Why the last write to the store failed; `None` once a flush succeeds.
    store_problem: Option<String>,
    /// Where start-up moved a damaged store (`guard run --start-empty`).
    damaged_aside: Option<std::path::PathBuf>,
    /// Stored records that looked expired at restore: kept in the store, not in the maps,
    /// until the clock is trusted (see `restore.rs`).
    parked: restore::Parked,
    /// No list entry expires before this (monotonic ns; 0: not known, so the next sweep
    /// looks): the sweep walks the lists only once it is due, not every second. Every TTL'd
    /// insert lowers it ([`Control::note_list_expiry`]).
    next_list_expiry_ns: u64,
    /// Bans applied from the fleet: the origin host and the ban's expiry (a later local ban of
    /// the same source, with another expiry, is this host's own again).
    fleet_origins: HashMap<SourceKey, (String, u64)>,
}

impl<D: Datapath> Control<D> {
    /// A control plane with empty lists, saving to a store in the settings' state directory
    /// opened at the first write ([`Store::lazy`]; the daemon passes its own with
    /// [`Control::with_store`]). Call [`Control::restore`] before serving.
    pub fn new(dp: D, settings: Settings, attachments: Vec<Attachment>) -> Self {
        let store = Store::lazy(&settings.state.dir);
        Self {
            dp,
            settings,
            store,
            wall: Box::new(state::unix_now),
            allow: BTreeMap::new(),
            deny: BTreeMap::new(),
            bans: HashMap::new(),
            attachments,
            started: Instant::now(),
            operator: None,
            operator_seq: 0,
            monitors: vec![Monitor::other()],
            learned: Vec::new(),
            escalator: Escalator::default(),
            prefix_bans: BTreeMap::new(),
            pending_prefixes: Vec::new(),
            known_swept: None,
            unsaved: Unsaved::default(),
            store_problem: None,
            damaged_aside: None,
            parked: restore::Parked::default(),
            next_list_expiry_ns: 0,
            fleet_origins: HashMap::new(),
        }
    }

    /// Saves to `store` (the daemon's, opened and read at start).
    pub fn with_store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// Replaces the wall clock (tests).
    pub fn with_wall_clock(mut self, wall: WallClock) -> Self {
        self.wall = wall;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn datapath(&self) -> &D {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    fn list(&self, list: List) -> &BTreeMap<Cidr, Entry> {
        match list {
            List::Allow => &self.allow,
            List::Deny => &self.deny,
        }
    }

    /// A list entry now expires at `expires_ns` (0: never): the sweep must look by then.
    fn note_list_expiry(&mut self, expires_ns: u64) {
        if expires_ns != 0 {
            self.next_list_expiry_ns = self.next_list_expiry_ns.min(expires_ns);
        }
    }

    fn list_mut(&mut self, list: List) -> &mut BTreeMap<Cidr, Entry> {
        match list {
            List::Allow => &mut self.allow,
            List::Deny => &mut self.deny,
        }
    }

    /// Monotonic ns for a wall-clock time, given both clocks now. Never 0 (0 = no expiry).
    fn wall_to_mono(&self, unix: u64, now_unix: u64, now_ns: u64) -> u64 {
        let delta = i128::from(unix) - i128::from(now_unix);
        let ns = i128::from(now_ns) + delta * i128::from(NS_PER_SEC);
        ns.clamp(1, i128::from(u64::MAX)) as u64
    }

    /// Wall-clock seconds for a monotonic time, given both clocks now (rounded to the second).
    fn mono_to_wall(&self, ns: u64, now_unix: u64, now_ns: u64) -> u64 {
        let delta = i128::from(ns) - i128::from(now_ns);
        let secs = (delta + i128::from(NS_PER_SEC / 2)).div_euclid(i128::from(NS_PER_SEC));
        (i128::from(now_unix) + secs).clamp(0, i128::from(u64::MAX)) as u64
    }

    fn state(&self) -> State {
        let records = |m: &BTreeMap<Cidr, Entry>| m.values().map(|e| e.record.clone()).collect();
        let mut bans: Vec<BanRecord> = self.bans.values().map(|b| b.record.clone()).collect();
        bans.sort_by_key(|b| b.source);
        State {
            version: state::VERSION,
            allow: records(&self.allow),
            deny: records(&self.deny),
            bans,
            operator: self.operator.clone(),
            prefix_bans: self.prefix_bans.values().map(|(r, _)| r.clone()).collect(),
            learned: self.learned_records(),
        }
    }

    fn check_capacity<'a>(
        &self,
        list: List,
        new: impl Iterator<Item = &'a Cidr>,
    ) -> Result<(), ControlError> {
        let current = self.list(list);
        // IPv4 prefixes sort before IPv6 ones (`IpNet`'s order), and `::/0` is the least
        // IPv6 one: the IPv6 entries are counted from there, the IPv4 ones are the rest. (Not
        // a walk of the whole list: a `guard deny add` with a million IPv4 entries loaded
        // would spend tens of milliseconds here.)
        let first_v6 = Cidr::new(IpAddr::from([0u16; 8]), 0).expect("::/0 is a prefix");
        let mut v6 = current.range(first_v6..).count();
        let mut v4 = current.len() - v6;
        for c in new.filter(|c| !current.contains_key(c)) {
            if c.is_ipv4() {
                v4 += 1;
            } else {
                v6 += 1;
            }
        }
        for (wanted, is_v4) in [(v4, true), (v6, false)] {
            let capacity = list_capacity(list, is_v4);
            if wanted > capacity as usize {
                return Err(ControlError::Full {
                    list,
                    family: if is_v4 { "IPv4" } else { "IPv6" },
                    wanted,
                    capacity,
                });
            }
        }
        Ok(())
    }

    /// A new entry for `cidr`, stamped with both clocks now.
    fn new_entry(&self, cidr: Cidr, ttl: Option<Duration>, reason: Option<String>) -> Entry {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        let (expires, expires_ns) = match ttl {
            Some(t) => (
                Some(now_unix + t.as_secs()),
                now_ns.saturating_add(t.as_secs() * NS_PER_SEC).max(1),
            ),
            None => (None, 0),
        };
        Entry {
            record: ListRecord {
                cidr,
                reason,
                added: now_unix,
                expires,
            },
            expires_ns,
        }
    }

    fn check_ttl_reason(ttl: Option<Duration>, reason: Option<&str>) -> Result<(), ControlError> {
        if let Some(t) = ttl
            && (t.as_secs() == 0 || t > crate::duration::MAX)
        {
            return Err(ControlError::BadTtl { secs: t.as_secs() });
        }
        if let Some(r) = reason {
            check_reason(r)?;
        }
        Ok(())
    }
}
