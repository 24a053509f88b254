//! The control plane: allow and deny lists with TTLs, bans, expiry, restore at start, stats and
//! top sources, and reloads, all behind the `Datapath` trait and persisted in the state file.
//!
//! Sources of truth: the lists are written only by userspace, so [`Control`]'s own copy is
//! the truth and the maps follow it; bans are made by the data plane, so the `BANS` map is the
//! truth and the state file mirrors it on every [`Control::sweep`].
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
    attack::{Escalator, Monitor, ServiceReport},
    cidr::{Cidr, CidrError},
    config::{Limits, Settings},
    datapath::{Datapath, DatapathError, List},
    ebpf::Attachment,
    health::{self, Override, OverrideMode},
    state::{
        self, BanRecord, LearnedRecord, ListRecord, PrefixBanRecord, State, StateError, Store,
    },
};

mod services;
pub use services::{KNOWN_SWEEP_EVERY, PREFIX_REASON};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The longest reason text accepted.
pub const MAX_REASON_LEN: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the data plane refused the change")]
    Datapath(#[from] DatapathError),
    #[error("the change was undone because the state file could not be saved")]
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
    reason::NAMES
        .iter()
        .position(|n| *n == name)
        .map_or(reason::RATE_LIMITED as u32, |i| i as u32)
}

fn reason_name(index: u32) -> String {
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

/// A ban as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanInfo {
    pub source: Cidr,
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds.
    pub expires: u64,
}

/// A new ban from the data plane's event stream, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBan {
    pub ban: BanInfo,
    pub iface: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddOutcome {
    /// An entry for the same CIDR was there and was replaced (new TTL and reason).
    pub replaced: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportOutcome {
    pub added: usize,
    pub replaced: usize,
    /// Lines that repeated an earlier CIDR of the same import.
    pub duplicates: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepOutcome {
    pub expired_allow: usize,
    pub expired_deny: usize,
    pub expired_bans: usize,
    /// Bans that appeared in (or vanished from) the map since the last sweep.
    pub bans_changed: usize,
    /// Prefixes banned by escalation in this sweep.
    pub escalated: Vec<BanInfo>,
    /// Known sources forgotten after their silence (walked every `KNOWN_SWEEP_EVERY`).
    pub expired_known: usize,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub allow: usize,
    pub deny: usize,
    pub bans: usize,
    /// Entries and bans in the state file whose time ran out while the daemon was down.
    pub expired: usize,
    /// Map entries of a previous run that the state file does not have (removed).
    pub stale_removed: usize,
    /// True if the state came from the pinned maps (no usable state file).
    pub from_maps: bool,
}

/// Packets and bytes for one verdict reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
    pub bytes: u64,
}

fn reason_counts(c: &Counters) -> Vec<ReasonCount> {
    (0..reason::COUNT)
        .map(|i| ReasonCount {
            reason: reason::NAMES[i].to_string(),
            packets: c.packets[i],
            bytes: c.bytes[i],
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStats {
    /// The interface name (several joined with `+` if their ifindexes share a stats slot), or
    /// `slot N` for a slot no attached interface maps to.
    pub iface: String,
    pub slot: u32,
    pub packets: u64,
    pub bytes: u64,
    pub reasons: Vec<ReasonCount>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapFill {
    pub map: String,
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub dry_run: bool,
    pub interfaces: Vec<InterfaceStats>,
    pub total: InterfaceStats,
    pub maps: Vec<MapFill>,
}

/// One sample of the source tracker, for [`top_sources`].
#[derive(Clone, Debug)]
pub struct SourceSample {
    pub at_ns: u64,
    pub sources: HashMap<SourceKey, SourceState>,
    pub banned: HashSet<SourceKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopSource {
    pub source: Cidr,
    pub pps: u64,
    /// Bytes per second.
    pub bps: u64,
    pub dropped_pps: u64,
    pub syn_pps: u64,
    pub banned: bool,
}

/// The `n` sources with the highest packet rate between two samples, highest first. A source
/// first tracked between the samples counts from zero; one whose counters went down (evicted
/// from the LRU and tracked anew) counts from zero too.
pub fn top_sources(
    before: &SourceSample,
    after: &SourceSample,
    n: usize,
    limits: &Limits,
) -> Vec<TopSource> {
    let elapsed_ns = after.at_ns.saturating_sub(before.at_ns).max(1);
    let rate = |now: u64, then: u64| -> u64 {
        let delta = if now >= then { now - then } else { now };
        (u128::from(delta) * u128::from(NS_PER_SEC) / u128::from(elapsed_ns)) as u64
    };
    let mut out: Vec<TopSource> = after
        .sources
        .iter()
        .map(|(key, s)| {
            let old = before.sources.get(key).copied().unwrap_or_default();
            let decreased = s.packets < old.packets;
            let base = if decreased {
                SourceState::default()
            } else {
                old
            };
            TopSource {
                source: key_cidr(key, limits),
                pps: rate(s.packets, base.packets),
                bps: rate(s.bytes, base.bytes),
                dropped_pps: rate(s.dropped, base.dropped),
                syn_pps: rate(s.syns, base.syns),
                banned: after.banned.contains(key),
            }
        })
        .filter(|t| t.pps > 0 || t.banned)
        .collect();
    out.sort_by(|a, b| b.pps.cmp(&a.pps).then(a.source.cmp(&b.source)));
    out.truncate(n);
    out
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub config: crate::config::ConfigSource,
    pub limits: Limits,
    pub dry_run: bool,
    /// Changed settings that were not applied: they need a restart of the daemon.
    pub restart_needed: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: crate::config::ConfigSource,
    pub dry_run: bool,
    pub limits: Limits,
    pub attachments: Vec<Attachment>,
    pub pin_dir: String,
    pub state_file: String,
    pub allow_entries: usize,
    pub deny_entries: usize,
    pub bans: usize,
    /// Prefix bans in force.
    #[serde(default)]
    pub prefix_bans: usize,
    /// Known sources as of the last walk.
    #[serde(default)]
    pub known_sources: usize,
    /// Each service, and the traffic of none ("other").
    #[serde(default)]
    pub services: Vec<ServiceReport>,
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
}

impl<D: Datapath> Control<D> {
    /// A control plane with empty lists. Call [`Control::restore`] before serving.
    pub fn new(dp: D, settings: Settings, attachments: Vec<Attachment>) -> Self {
        let store = Store::new(&settings.state.dir);
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
        }
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

    fn persist(&self) -> Result<(), ControlError> {
        Ok(self.store.save(&self.state())?)
    }

    fn check_capacity<'a>(
        &self,
        list: List,
        new: impl Iterator<Item = &'a Cidr>,
    ) -> Result<(), ControlError> {
        let current = self.list(list);
        let (mut v4, mut v6) =
            current.keys().fold(
                (0, 0),
                |(a, b), c| {
                    if c.is_ipv4() { (a + 1, b) } else { (a, b + 1) }
                },
            );
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

    /// Adds (or replaces) a list entry, in the map and the state file.
    ///
    /// # Errors
    ///
    /// Bad TTL or reason, a full list, a map error; a state file that cannot be saved undoes
    /// the change.
    pub fn list_add(
        &mut self,
        list: List,
        cidr: Cidr,
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<AddOutcome, ControlError> {
        Self::check_ttl_reason(ttl, reason.as_deref())?;
        self.check_capacity(list, std::iter::once(&cidr))?;
        let entry = self.new_entry(cidr, ttl, reason);
        self.dp
            .list_insert(list, &cidr, ListEntry::expiring(entry.expires_ns))?;
        let old = self.list_mut(list).insert(cidr, entry);
        if let Err(e) = self.persist() {
            self.undo(list, cidr, old);
            return Err(e);
        }
        Ok(AddOutcome {
            replaced: old.is_some(),
        })
    }

    /// Puts back `old` for `cidr` (or removes it), in memory and the map: undoing a change.
    fn undo(&mut self, list: List, cidr: Cidr, old: Option<Entry>) {
        let result = match &old {
            Some(e) => self
                .dp
                .list_insert(list, &cidr, ListEntry::expiring(e.expires_ns)),
            None => self.dp.list_remove(list, &cidr).map(|_| ()),
        };
        if let Err(e) = result {
            log::error!(
                "undoing the change to {cidr} in the {} list failed: the map and the state file disagree until the next restart: {e}",
                list.name()
            );
        }
        match old {
            Some(e) => {
                self.list_mut(list).insert(cidr, e);
            }
            None => {
                self.list_mut(list).remove(&cidr);
            }
        }
    }

    /// Removes a list entry from the map and the state file.
    ///
    /// # Errors
    ///
    /// [`ControlError::NotListed`] if it is not there; a map error; a state file that cannot be
    /// saved undoes the change.
    pub fn list_del(&mut self, list: List, cidr: Cidr) -> Result<(), ControlError> {
        if !self.list(list).contains_key(&cidr) {
            return Err(ControlError::NotListed { list, cidr });
        }
        self.dp.list_remove(list, &cidr)?;
        let old = self.list_mut(list).remove(&cidr);
        if let Err(e) = self.persist() {
            self.undo(list, cidr, old);
            return Err(e);
        }
        Ok(())
    }

    /// The entries of a list, in address order.
    pub fn list_entries(&self, list: List) -> Vec<ListRecord> {
        self.list(list).values().map(|e| e.record.clone()).collect()
    }

    /// Adds (or replaces) many entries at once, all or nothing, with one state file write.
    ///
    /// # Errors
    ///
    /// As [`Control::list_add`]; on any error, every entry is as it was.
    pub fn list_import(
        &mut self,
        list: List,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<ImportOutcome, ControlError> {
        Self::check_ttl_reason(ttl, reason.as_deref())?;
        let mut unique: Vec<Cidr> = cidrs.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let duplicates = cidrs.len() - unique.len();
        self.check_capacity(list, unique.iter())?;

        // One stamp for the whole import: every entry gets the same times.
        let template = self.new_entry(Cidr::host(IpAddr::from([0u8; 4])), ttl, reason);
        let value = ListEntry::expiring(template.expires_ns);
        let mut previous: Vec<(Cidr, Option<Entry>)> = Vec::with_capacity(unique.len());
        let mut failure = None;
        let inserted = match self.dp.list_insert_many(list, &unique, value) {
            Ok(()) => unique.len(),
            Err((done, e)) => {
                failure = Some(ControlError::from(e));
                done
            }
        };
        for cidr in &unique[..inserted] {
            let mut entry = template.clone();
            entry.record.cidr = *cidr;
            let old = self.list_mut(list).insert(*cidr, entry);
            previous.push((*cidr, old));
        }
        if failure.is_none()
            && let Err(e) = self.persist()
        {
            failure = Some(e);
        }
        if let Some(e) = failure {
            for (cidr, old) in previous.into_iter().rev() {
                self.undo(list, cidr, old);
            }
            return Err(e);
        }
        let replaced = previous.iter().filter(|(_, old)| old.is_some()).count();
        Ok(ImportOutcome {
            added: previous.len() - replaced,
            replaced,
            duplicates,
        })
    }

    /// The bans in the map now, by source.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn bans(&self) -> Result<Vec<BanInfo>, ControlError> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        let mut out: Vec<BanInfo> = self
            .dp
            .bans()?
            .iter()
            .filter(|(_, b)| b.expires_ns > now_ns)
            .map(|(k, b)| self.ban_info(k, b, now_unix, now_ns))
            .collect();
        out.extend(self.prefix_ban_infos(now_ns));
        out.sort_by_key(|b| b.source);
        Ok(out)
    }

    fn ban_info(&self, key: &SourceKey, ban: &Ban, now_unix: u64, now_ns: u64) -> BanInfo {
        BanInfo {
            source: key_cidr(key, &self.settings.limits),
            reason: reason_name(ban.reason),
            since: self.mono_to_wall(ban.since_ns, now_unix, now_ns),
            expires: self.mono_to_wall(ban.expires_ns, now_unix, now_ns),
        }
    }

    /// Describes the data plane's new-ban events for the log.
    pub fn describe_events(&self, events: &[BanEvent]) -> Vec<NewBan> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        events
            .iter()
            .map(|ev| {
                let ban = Ban {
                    expires_ns: ev.expires_ns,
                    since_ns: ev.since_ns,
                    reason: ev.reason,
                    _pad: 0,
                };
                let iface = self
                    .attachments
                    .iter()
                    .find(|a| a.ifindex == ev.ifindex)
                    .map_or_else(|| format!("ifindex {}", ev.ifindex), |a| a.iface.clone());
                NewBan {
                    ban: self.ban_info(&ev.source, &ban, now_unix, now_ns),
                    iface,
                }
            })
            .collect()
    }

    /// Lifts every ban that overlaps `cidr` (a ban of a network inside it, or the network a
    /// single address is tracked in).
    ///
    /// # Errors
    ///
    /// [`ControlError::NotBanned`] if none matches; a map error. The state file is brought in
    /// line at the next sweep if saving it fails here.
    pub fn unban(&mut self, cidr: Cidr) -> Result<Vec<BanInfo>, ControlError> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        let limits = self.settings.limits;
        let mut removed = Vec::new();
        let overlaps = |key: &SourceKey| {
            let ban_net = key_cidr(key, &limits);
            cidr.contains(ban_net.addr()) || ban_net.contains(cidr.addr())
        };
        let mut lifted = HashSet::new();
        for (key, ban) in self.dp.bans()? {
            if overlaps(&key) && self.dp.ban_remove(&key)? {
                lifted.insert(key);
                self.bans.remove(&key);
                if ban.expires_ns > now_ns {
                    removed.push(self.ban_info(&key, &ban, now_unix, now_ns));
                }
            }
        }
        // A ban the data plane could not record in its full bans map lives only in the
        // source's tracker entry: lift those too (ban_remove forgets the entry).
        for (key, state) in self.dp.sources()? {
            if state.banned_until_ns > now_ns && !lifted.contains(&key) && overlaps(&key) {
                self.dp.ban_remove(&key)?;
                let ban = Ban {
                    expires_ns: state.banned_until_ns,
                    since_ns: now_ns,
                    reason: guard_common::reason::RATE_LIMITED as u32,
                    _pad: 0,
                };
                let mut info = self.ban_info(&key, &ban, now_unix, now_ns);
                info.reason = "tracker only (bans map full)".into();
                removed.push(info);
            }
        }
        removed.extend(self.unban_prefixes(&cidr, now_ns)?);
        if removed.is_empty() {
            return Err(ControlError::NotBanned { cidr });
        }
        removed.sort_by_key(|b| b.source);
        self.persist()?;
        Ok(removed)
    }

    /// Removes expired list entries and bans from the maps, mirrors the map's bans into the
    /// state, and saves the state file if anything changed.
    ///
    /// # Errors
    ///
    /// A map error, or the state file cannot be saved (the maps are swept all the same).
    pub fn sweep(&mut self) -> Result<SweepOutcome, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut out = SweepOutcome::default();
        for list in [List::Allow, List::Deny] {
            let expired: Vec<Cidr> = self
                .list(list)
                .iter()
                .filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= now_ns)
                .map(|(c, _)| *c)
                .collect();
            for cidr in &expired {
                self.dp.list_remove(list, cidr)?;
                self.list_mut(list).remove(cidr);
            }
            match list {
                List::Allow => out.expired_allow = expired.len(),
                List::Deny => out.expired_deny = expired.len(),
            }
        }

        let mut seen = HashSet::new();
        for (key, ban) in self.dp.bans()? {
            if ban.expires_ns <= now_ns {
                // Not ban_remove: that also forgets the tracker entry, which may by now hold
                // a new ban the program made (and failed to record over the expired one).
                self.dp.ban_expire(&key, now_ns)?;
                out.expired_bans += 1;
                continue;
            }
            seen.insert(key);
            if !self.bans.contains_key(&key) {
                self.note_ban_for_escalation(&key, &ban, now_unix, now_ns);
            }
            let unchanged = self.bans.get(&key).is_some_and(|m| m.ban == ban);
            if !unchanged {
                let info = self.ban_info(&key, &ban, now_unix, now_ns);
                let record = BanRecord {
                    source: info.source.addr(),
                    reason: info.reason,
                    since: info.since,
                    expires: info.expires,
                };
                self.bans.insert(key, MirroredBan { ban, record });
                out.bans_changed += 1;
            }
        }
        let before = self.bans.len();
        self.bans.retain(|k, _| seen.contains(k));
        out.bans_changed += before - self.bans.len();
        let (escalated, expired_prefixes) = self.sweep_prefix_bans(now_unix, now_ns)?;
        out.escalated = escalated;
        out.expired_bans += expired_prefixes.len();
        out.bans_changed += out.escalated.len() + expired_prefixes.len();
        out.expired_known = self.sweep_known(now_ns)?;

        if out.expired_allow + out.expired_deny + out.bans_changed > 0 {
            self.persist()?;
        }
        Ok(out)
    }

    /// Brings the maps in line with the state file at start: `Some(state)` is the truth for
    /// the lists (stale map entries of a previous run are removed); `None` (no usable file)
    /// takes the lists from the maps, so pinned protection survives a lost state file. Bans
    /// are merged: the map's (made while the daemon was down, too) and the file's that are
    /// not in the map (after a reboot). Times are converted between the wall clock of the file
    /// and the data plane's monotonic clock; entries whose time ran out are dropped.
    ///
    /// # Errors
    ///
    /// A full list, a map error, or the state file cannot be saved.
    pub fn restore(&mut self, state: Option<State>) -> Result<RestoreReport, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut report = RestoreReport {
            from_maps: state.is_none(),
            ..RestoreReport::default()
        };
        let (state_lists, state_bans, state_prefix_bans) = match state {
            Some(State {
                version: _,
                allow,
                deny,
                bans,
                operator,
                prefix_bans,
                learned,
            }) => {
                // An override whose time ran out while the daemon was down has lapsed.
                self.operator = operator.filter(|o| o.is_active(now_unix));
                self.learned = learned;
                (Some([allow, deny]), bans, Some(prefix_bans))
            }
            None => (None, Vec::new(), None),
        };

        for (i, list) in [List::Allow, List::Deny].into_iter().enumerate() {
            let in_map = self.dp.list_entries(list)?;
            let mut entries = BTreeMap::new();
            match &state_lists {
                Some(lists) => {
                    for rec in &lists[i] {
                        match rec.expires {
                            Some(t) if t <= now_unix => report.expired += 1,
                            _ => {
                                let expires_ns = rec
                                    .expires
                                    .map_or(0, |t| self.wall_to_mono(t, now_unix, now_ns));
                                entries.insert(
                                    rec.cidr,
                                    Entry {
                                        record: rec.clone(),
                                        expires_ns,
                                    },
                                );
                            }
                        }
                    }
                }
                None => {
                    for (cidr, e) in &in_map {
                        if e.expires_ns != 0 && e.expires_ns <= now_ns {
                            continue;
                        }
                        let expires = (e.expires_ns != 0)
                            .then(|| self.mono_to_wall(e.expires_ns, now_unix, now_ns));
                        entries.insert(
                            *cidr,
                            Entry {
                                record: ListRecord {
                                    cidr: *cidr,
                                    reason: None,
                                    added: now_unix,
                                    expires,
                                },
                                expires_ns: e.expires_ns,
                            },
                        );
                    }
                }
            }
            *self.list_mut(list) = BTreeMap::new();
            self.check_capacity(list, entries.keys())?;
            for (cidr, _) in &in_map {
                if !entries.contains_key(cidr) {
                    self.dp.list_remove(list, cidr)?;
                    if state_lists.is_some() {
                        report.stale_removed += 1;
                    }
                }
            }
            for (cidr, e) in &entries {
                self.dp
                    .list_insert(list, cidr, ListEntry::expiring(e.expires_ns))?;
            }
            match list {
                List::Allow => report.allow = entries.len(),
                List::Deny => report.deny = entries.len(),
            }
            *self.list_mut(list) = entries;
        }

        let in_map: HashSet<SourceKey> = self.dp.bans()?.into_iter().map(|(k, _)| k).collect();
        for rec in state_bans {
            let key = addr_key(rec.source);
            if rec.expires <= now_unix {
                report.expired += 1;
                continue;
            }
            if in_map.contains(&key) {
                continue;
            }
            let ban = Ban {
                expires_ns: self.wall_to_mono(rec.expires, now_unix, now_ns),
                since_ns: self.wall_to_mono(rec.since, now_unix, now_ns),
                reason: reason_index(&rec.reason),
                _pad: 0,
            };
            self.dp.ban_insert(&key, &ban)?;
        }
        report.expired += self.restore_prefix_bans(state_prefix_bans, now_unix, now_ns)?;
        self.bans.clear();
        self.sweep()?;
        report.bans = self.bans.len() + self.prefix_bans.len();
        self.persist()?;
        Ok(report)
    }

    /// Unix seconds now, on the control plane's wall clock.
    pub fn now_unix(&self) -> u64 {
        (self.wall)()
    }

    /// The operator's override in force, if any (it may have expired since the last
    /// [`Control::expire_operator`]; the health evaluator checks).
    pub fn operator(&self) -> Option<&Override> {
        self.operator.as_ref()
    }

    /// How many times the override changed; see [`Control::set_operator`].
    pub fn operator_seq(&self) -> u64 {
        self.operator_seq
    }

    /// `guard drain|maint [--for D] [--reason R]` and `guard ready`: sets the override (ready
    /// clears it) and saves it in the state file, so that it survives a restart. Returns the
    /// override now in force and the new [`Control::operator_seq`].
    ///
    /// # Errors
    ///
    /// Bad reason or duration; a state file that cannot be saved undoes the change.
    pub fn set_operator(
        &mut self,
        mode: OverrideMode,
        lasts: Option<Duration>,
        reason: Option<String>,
    ) -> Result<(Option<Override>, u64), ControlError> {
        Self::check_ttl_reason(lasts, reason.as_deref())?;
        let next = match mode {
            OverrideMode::Ready => None,
            OverrideMode::Drain | OverrideMode::Maint => {
                Some(Override::new(mode, reason, (self.wall)(), lasts))
            }
        };
        let before = std::mem::replace(&mut self.operator, next);
        if let Err(e) = self.persist() {
            self.operator = before;
            return Err(e);
        }
        self.operator_seq += 1;
        Ok((self.operator.clone(), self.operator_seq))
    }

    /// Drops an override whose time has run out, from memory and the state file; true if it
    /// did. (The evaluator ignores it already: this only keeps the file tidy.)
    ///
    /// # Errors
    ///
    /// The state file cannot be saved (the override is dropped all the same).
    pub fn expire_operator(&mut self) -> Result<bool, ControlError> {
        let now = (self.wall)();
        if self.operator.as_ref().is_none_or(|o| o.is_active(now)) {
            return Ok(false);
        }
        self.operator = None;
        self.operator_seq += 1;
        self.persist()?;
        Ok(true)
    }

    /// The interfaces the program was attached to at start.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Bans in the map as of the last [`Control::sweep`].
    pub fn bans_active(&self) -> usize {
        self.bans.len()
    }

    /// The fill of every map for health and metrics, short-named (`deny_v4`, `bans`, ...).
    /// The lists come from the control plane's copy and the bans from the last sweep, so this
    /// costs no map walk; the source tracker's count is the caller's (walking the LRU is the
    /// one expensive read, so the daemon does it less often).
    pub fn map_fill(&self, sources: usize) -> Vec<health::MapFill> {
        let count =
            |m: &BTreeMap<Cidr, Entry>, v4: bool| m.keys().filter(|c| c.is_ipv4() == v4).count();
        let fill = |name: &str, entries: usize, capacity: u32| health::MapFill {
            name: name.to_string(),
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        vec![
            fill("allow_v4", count(&self.allow, true), capacity::ALLOW_V4),
            fill("allow_v6", count(&self.allow, false), capacity::ALLOW_V6),
            fill("deny_v4", count(&self.deny, true), capacity::DENY_V4),
            fill("deny_v6", count(&self.deny, false), capacity::DENY_V6),
            fill("sources", sources, capacity::SOURCES),
            fill("bans", self.bans.len(), capacity::BANS),
            fill("known", self.known_count(), capacity::KNOWN),
            fill(
                "prefix_bans",
                self.prefix_bans.len(),
                capacity::PREFIX_BANS_V4.min(capacity::PREFIX_BANS_V6),
            ),
        ]
    }

    /// Entries in the source tracker now (a walk of the LRU map).
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn source_count(&self) -> Result<usize, ControlError> {
        Ok(self.dp.sources()?.len())
    }

    /// Counters per stats slot, straight from the data plane.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn counters(&self) -> Result<Vec<(u32, Counters)>, ControlError> {
        Ok(self.dp.counters()?)
    }

    /// Writes the settings' limits into the data plane (at start).
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn apply_kernel_config(&mut self) -> Result<(), ControlError> {
        Ok(self.dp.set_config(&self.settings.kernel_config())?)
    }

    /// Applies reloaded settings: limits and dry-run at once; settings that need a restart are
    /// kept as they are and reported.
    ///
    /// # Errors
    ///
    /// A map error; the running settings then stay.
    pub fn apply_settings(&mut self, new: Settings) -> Result<ReloadReport, ControlError> {
        let restart_needed = self.settings.restart_needed_for(&new);
        let mut next = self.settings.clone();
        next.source = new.source;
        // The tracking prefixes shape the keys of every tracked source and ban: changing them
        // live would orphan the bans made under the old ones. They wait for a restart.
        next.limits = crate::config::Limits {
            ipv4_prefix: self.settings.limits.ipv4_prefix,
            ipv6_prefix: self.settings.limits.ipv6_prefix,
            ..new.limits
        };
        next.datapath.dry_run = new.datapath.dry_run;
        next.attack = new.attack;
        next.prefixes = new.prefixes;
        next.services = new.services;
        self.dp.set_config(&next.kernel_config())?;
        self.settings = next;
        self.apply_services()?;
        Ok(ReloadReport {
            config: self.settings.source.clone(),
            limits: self.settings.limits,
            dry_run: self.settings.datapath.dry_run,
            restart_needed: restart_needed.into_iter().map(String::from).collect(),
        })
    }

    /// Counters per interface and in total, and the fill of each map.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn stats(&self) -> Result<StatsReport, ControlError> {
        let mut total = Counters::default();
        let mut interfaces = Vec::new();
        for (slot, c) in self.dp.counters()? {
            total.add(&c);
            let names: Vec<&str> = self
                .attachments
                .iter()
                .filter(|a| a.ifindex % capacity::STATS_SLOTS == slot)
                .map(|a| a.iface.as_str())
                .collect();
            let iface = if names.is_empty() {
                format!("slot {slot}")
            } else {
                names.join("+")
            };
            interfaces.push(InterfaceStats {
                iface,
                slot,
                packets: c.total_packets(),
                bytes: c.total_bytes(),
                reasons: reason_counts(&c),
            });
        }
        // Attached interfaces that saw no packet yet are shown with zeros.
        for a in &self.attachments {
            let slot = a.ifindex % capacity::STATS_SLOTS;
            if !interfaces.iter().any(|i| i.slot == slot) {
                interfaces.push(InterfaceStats {
                    iface: a.iface.clone(),
                    slot,
                    packets: 0,
                    bytes: 0,
                    reasons: reason_counts(&Counters::default()),
                });
            }
        }
        interfaces.sort_by(|a, b| a.iface.cmp(&b.iface));
        let count =
            |m: &BTreeMap<Cidr, Entry>, v4: bool| m.keys().filter(|c| c.is_ipv4() == v4).count();
        let maps = vec![
            fill(
                map_names::ALLOW_V4,
                count(&self.allow, true),
                capacity::ALLOW_V4,
            ),
            fill(
                map_names::ALLOW_V6,
                count(&self.allow, false),
                capacity::ALLOW_V6,
            ),
            fill(
                map_names::DENY_V4,
                count(&self.deny, true),
                capacity::DENY_V4,
            ),
            fill(
                map_names::DENY_V6,
                count(&self.deny, false),
                capacity::DENY_V6,
            ),
            fill(
                map_names::SOURCES,
                self.dp.sources()?.len(),
                capacity::SOURCES,
            ),
            fill(map_names::BANS, self.dp.bans()?.len(), capacity::BANS),
            fill(map_names::KNOWN, self.dp.known()?.len(), capacity::KNOWN),
            fill(
                map_names::PREFIX_BANS_V4,
                self.prefix_bans.keys().filter(|c| c.is_ipv4()).count(),
                capacity::PREFIX_BANS_V4,
            ),
            fill(
                map_names::PREFIX_BANS_V6,
                self.prefix_bans.keys().filter(|c| !c.is_ipv4()).count(),
                capacity::PREFIX_BANS_V6,
            ),
        ];
        Ok(StatsReport {
            dry_run: self.settings.datapath.dry_run,
            interfaces,
            total: InterfaceStats {
                iface: "total".to_string(),
                slot: u32::MAX,
                packets: total.total_packets(),
                bytes: total.total_bytes(),
                reasons: reason_counts(&total),
            },
            maps,
        })
    }

    /// One sample of the source tracker for [`top_sources`].
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn sample_sources(&self) -> Result<SourceSample, ControlError> {
        Ok(SourceSample {
            at_ns: self.dp.now_ns(),
            sources: self.dp.sources()?.into_iter().collect(),
            banned: self.dp.bans()?.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// What `guard status` shows.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.settings.source.clone(),
            dry_run: self.settings.datapath.dry_run,
            limits: self.settings.limits,
            attachments: self.attachments.clone(),
            pin_dir: self.settings.datapath.pin_dir.display().to_string(),
            state_file: self.store.path().display().to_string(),
            allow_entries: self.allow.len(),
            deny_entries: self.deny.len(),
            bans: self.bans.len(),
            prefix_bans: self.prefix_bans.len(),
            // Counted now (a walk of KNOWN), not as of the last expiry walk.
            known_sources: self
                .dp
                .known()
                .map_or_else(|_| self.known_count(), |k| k.len()),
            services: self.service_reports(),
        }
    }
}

fn fill(map: &str, entries: usize, capacity: u32) -> MapFill {
    MapFill {
        map: map.to_string(),
        entries,
        capacity,
    }
}

/// An in-memory [`Datapath`] with a settable clock, for tests of the control plane and the
/// control socket (here and in other modules' tests).
pub mod testing {
    use std::{
        collections::HashMap,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
        time::Duration,
    };

    use guard_common::{
        Ban, BanEvent, Config, Counters, Known, ListEntry, Service, ServiceStats, SourceKey,
        SourceState, capacity,
    };

    use crate::{
        cidr::Cidr,
        datapath::{Datapath, DatapathError, List, ServiceProto},
    };

    /// A monotonic clock (ns) and a wall clock (Unix seconds) that advance together.
    #[derive(Clone, Debug)]
    pub struct FakeClock {
        ns: Arc<AtomicU64>,
        unix_base: u64,
    }

    impl FakeClock {
        /// Monotonic time starts at `ns`, wall time at `unix`.
        pub fn new(ns: u64, unix: u64) -> Self {
            Self {
                ns: Arc::new(AtomicU64::new(ns)),
                unix_base: unix - ns / 1_000_000_000,
            }
        }

        pub fn now_ns(&self) -> u64 {
            self.ns.load(Ordering::SeqCst)
        }

        pub fn now_unix(&self) -> u64 {
            self.unix_base + self.now_ns() / 1_000_000_000
        }

        pub fn advance(&self, d: Duration) {
            self.ns.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
        }

        /// A wall clock for `Control::with_wall_clock`.
        pub fn wall(&self) -> super::WallClock {
            let c = self.clone();
            Box::new(move || c.now_unix())
        }
    }

    /// The data plane in memory.
    #[derive(Debug)]
    pub struct FakeDatapath {
        pub clock: FakeClock,
        pub config: Config,
        pub lists: HashMap<(List, Cidr), ListEntry>,
        pub bans: HashMap<SourceKey, Ban>,
        pub counters: Vec<(u32, Counters)>,
        pub sources: HashMap<SourceKey, SourceState>,
        /// List inserts that succeed before the next one fails, once (failure injection).
        pub inserts_before_failure: Option<usize>,
        /// Every list insert so far.
        pub list_inserts: usize,
        /// New-ban events waiting to be taken (as from the ring buffer).
        pub events: Vec<BanEvent>,
        pub prefix_bans: HashMap<Cidr, ListEntry>,
        pub service_ports: HashMap<(ServiceProto, u16), u32>,
        pub services: HashMap<u32, Service>,
        /// Per-slot counts, as the program would have summed them.
        pub service_stats: Vec<ServiceStats>,
        pub known: HashMap<SourceKey, Known>,
    }

    impl FakeDatapath {
        pub fn new(clock: FakeClock) -> Self {
            Self {
                clock,
                config: Config::default(),
                lists: HashMap::new(),
                bans: HashMap::new(),
                counters: Vec::new(),
                sources: HashMap::new(),
                inserts_before_failure: None,
                list_inserts: 0,
                events: Vec::new(),
                prefix_bans: HashMap::new(),
                service_ports: HashMap::new(),
                services: HashMap::new(),
                service_stats: vec![ServiceStats::default(); capacity::SERVICES as usize],
                known: HashMap::new(),
            }
        }

        /// The map's entry for `cidr` in `list`.
        pub fn entry(&self, list: List, cidr: &str) -> Option<ListEntry> {
            let cidr: Cidr = cidr.parse().expect("test CIDR");
            self.lists.get(&(list, cidr)).copied()
        }
    }

    impl Datapath for FakeDatapath {
        fn now_ns(&self) -> u64 {
            self.clock.now_ns()
        }

        fn config(&self) -> Result<Config, DatapathError> {
            Ok(self.config)
        }

        fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError> {
            self.config = *cfg;
            Ok(())
        }

        fn list_insert(
            &mut self,
            list: List,
            cidr: &Cidr,
            entry: ListEntry,
        ) -> Result<(), DatapathError> {
            if let Some(n) = &mut self.inserts_before_failure {
                if *n == 0 {
                    self.inserts_before_failure = None;
                    return Err(DatapathError::Map {
                        map: "FAKE",
                        op: "insert",
                        source: "injected failure".into(),
                    });
                }
                *n -= 1;
            }
            self.list_inserts += 1;
            self.lists.insert((list, *cidr), entry);
            Ok(())
        }

        fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool, DatapathError> {
            Ok(self.lists.remove(&(list, *cidr)).is_some())
        }

        fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
            Ok(self
                .lists
                .iter()
                .filter(|((l, _), _)| *l == list)
                .map(|((_, c), e)| (*c, *e))
                .collect())
        }

        fn bans(&self) -> Result<Vec<(SourceKey, Ban)>, DatapathError> {
            Ok(self.bans.iter().map(|(k, b)| (*k, *b)).collect())
        }

        fn ban_insert(&mut self, key: &SourceKey, ban: &Ban) -> Result<(), DatapathError> {
            self.bans.insert(*key, *ban);
            Ok(())
        }

        fn ban_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
            // As the kernel datapath: lifting a ban also forgets the tracker entry.
            self.sources.remove(key);
            Ok(self.bans.remove(key).is_some())
        }

        fn counters(&self) -> Result<Vec<(u32, Counters)>, DatapathError> {
            Ok(self.counters.clone())
        }

        fn sources(&self) -> Result<Vec<(SourceKey, SourceState)>, DatapathError> {
            Ok(self.sources.iter().map(|(k, s)| (*k, *s)).collect())
        }

        fn prefix_ban_insert(
            &mut self,
            cidr: &Cidr,
            entry: ListEntry,
        ) -> Result<(), DatapathError> {
            self.prefix_bans.insert(*cidr, entry);
            Ok(())
        }

        fn prefix_ban_remove(&mut self, cidr: &Cidr) -> Result<bool, DatapathError> {
            Ok(self.prefix_bans.remove(cidr).is_some())
        }

        fn prefix_bans(&self) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
            Ok(self.prefix_bans.iter().map(|(c, e)| (*c, *e)).collect())
        }

        fn set_service_ports(
            &mut self,
            ports: &[(ServiceProto, u16, u32)],
        ) -> Result<(), DatapathError> {
            self.service_ports = ports.iter().map(|(p, port, s)| ((*p, *port), *s)).collect();
            Ok(())
        }

        fn set_service(&mut self, slot: u32, service: &Service) -> Result<(), DatapathError> {
            self.services.insert(slot, *service);
            Ok(())
        }

        fn service_stats(&self) -> Result<Vec<ServiceStats>, DatapathError> {
            Ok(self.service_stats.clone())
        }

        fn known(&self) -> Result<Vec<(SourceKey, Known)>, DatapathError> {
            Ok(self.known.iter().map(|(k, v)| (*k, *v)).collect())
        }

        fn known_insert(&mut self, key: &SourceKey, known: &Known) -> Result<(), DatapathError> {
            self.known.insert(*key, *known);
            self.sources.remove(key);
            Ok(())
        }

        fn known_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
            self.sources.remove(key);
            Ok(self.known.remove(key).is_some())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, sync::atomic::AtomicUsize};

    use super::{testing::*, *};

    const SEC: u64 = NS_PER_SEC;
    const T0_UNIX: u64 = 1_700_000_000;

    struct Fixture {
        clock: FakeClock,
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture() -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "guard-control-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Fixture {
            clock: FakeClock::new(1000 * SEC, T0_UNIX),
            dir,
        }
    }

    impl Fixture {
        fn settings(&self) -> Settings {
            let mut s = Settings::builtin();
            s.state.dir = self.dir.clone();
            s
        }

        fn control_with(&self, dp: FakeDatapath) -> Control<FakeDatapath> {
            Control::new(dp, self.settings(), vec![]).with_wall_clock(self.clock.wall())
        }

        fn control(&self) -> Control<FakeDatapath> {
            self.control_with(FakeDatapath::new(self.clock.clone()))
        }

        fn saved(&self) -> State {
            match Store::new(&self.dir).load().unwrap() {
                state::Loaded::Found(s) => s,
                other => panic!("no state file: {other:?}"),
            }
        }
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn v4key(a: [u8; 4]) -> SourceKey {
        source_key_v4(a, 32)
    }

    fn ban_for(now_ns: u64, secs: u64) -> Ban {
        Ban {
            expires_ns: now_ns + secs * SEC,
            since_ns: now_ns,
            reason: reason::RATE_LIMITED as u32,
            _pad: 0,
        }
    }

    #[test]
    fn deny_add_writes_map_and_state_file() {
        let f = fixture();
        let mut c = f.control();
        let out = c
            .list_add(
                List::Deny,
                cidr("203.0.113.0/24"),
                None,
                Some("abuse".into()),
            )
            .unwrap();
        assert!(!out.replaced);
        assert_eq!(
            c.datapath().entry(List::Deny, "203.0.113.0/24"),
            Some(ListEntry::expiring(0))
        );
        let saved = f.saved();
        assert_eq!(saved.deny.len(), 1);
        assert_eq!(saved.deny[0].reason.as_deref(), Some("abuse"));
        assert_eq!(saved.deny[0].added, T0_UNIX);
        assert_eq!(saved.deny[0].expires, None);
        assert!(saved.allow.is_empty());
    }

    #[test]
    fn re_adding_an_entry_replaces_its_ttl_and_reason() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(List::Allow, cidr("10.0.0.0/8"), None, None)
            .unwrap();
        let out = c
            .list_add(
                List::Allow,
                cidr("10.0.0.0/8"),
                Some(Duration::from_secs(60)),
                Some("tmp".into()),
            )
            .unwrap();
        assert!(out.replaced);
        let list = c.list_entries(List::Allow);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].expires, Some(T0_UNIX + 60));
        assert_eq!(
            c.datapath()
                .entry(List::Allow, "10.0.0.0/8")
                .unwrap()
                .expires_ns,
            f.clock.now_ns() + 60 * SEC
        );
    }

    #[test]
    fn deny_entry_expires_and_leaves_map_and_state() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(
            List::Deny,
            cidr("198.51.100.7"),
            Some(Duration::from_secs(600)),
            None,
        )
        .unwrap();
        c.list_add(List::Deny, cidr("198.51.100.8"), None, None)
            .unwrap();
        f.clock.advance(Duration::from_secs(599));
        assert_eq!(c.sweep().unwrap().expired_deny, 0);
        assert!(c.datapath().entry(List::Deny, "198.51.100.7").is_some());
        f.clock.advance(Duration::from_secs(1));
        assert_eq!(c.sweep().unwrap().expired_deny, 1);
        assert!(c.datapath().entry(List::Deny, "198.51.100.7").is_none());
        assert!(c.datapath().entry(List::Deny, "198.51.100.8").is_some());
        let saved = f.saved();
        assert_eq!(saved.deny.len(), 1);
        assert_eq!(saved.deny[0].cidr, cidr("198.51.100.8"));
    }

    #[test]
    fn del_removes_entry_and_missing_entry_is_an_error() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(List::Deny, cidr("fd00::/8"), None, None)
            .unwrap();
        c.list_del(List::Deny, cidr("fd00::/8")).unwrap();
        assert!(c.datapath().lists.is_empty());
        assert!(f.saved().deny.is_empty());
        let e = c.list_del(List::Deny, cidr("fd00::/8")).unwrap_err();
        assert_eq!(e.to_string(), "fd00::/8 is not in the deny list");
        // The same CIDR in the other list is another entry.
        c.list_add(List::Allow, cidr("fd00::/8"), None, None)
            .unwrap();
        assert!(c.list_del(List::Deny, cidr("fd00::/8")).is_err());
    }

    #[test]
    fn bad_reason_and_ttl_change_nothing() {
        let f = fixture();
        let mut c = f.control();
        let e = c
            .list_add(List::Deny, cidr("10.0.0.1"), None, Some("a\nb".into()))
            .unwrap_err();
        assert!(matches!(e, ControlError::BadReason { .. }), "{e}");
        let e = c
            .list_add(List::Deny, cidr("10.0.0.1"), Some(Duration::ZERO), None)
            .unwrap_err();
        assert!(matches!(e, ControlError::BadTtl { secs: 0 }), "{e}");
        assert!(c.datapath().lists.is_empty());
        assert!(c.list_entries(List::Deny).is_empty());
    }

    #[test]
    fn state_file_failure_undoes_the_map_change() {
        let f = fixture();
        let mut s = f.settings();
        // A state "directory" under a regular file cannot be created.
        std::fs::create_dir_all(&f.dir).unwrap();
        std::fs::write(f.dir.join("file"), b"").unwrap();
        s.state.dir = f.dir.join("file/sub");
        let mut c = Control::new(FakeDatapath::new(f.clock.clone()), s, vec![])
            .with_wall_clock(f.clock.wall());
        let e = c
            .list_add(List::Deny, cidr("10.0.0.1"), None, None)
            .unwrap_err();
        assert!(matches!(e, ControlError::State(_)), "{e}");
        assert!(c.datapath().lists.is_empty());
        assert!(c.list_entries(List::Deny).is_empty());
    }

    #[test]
    fn netset_parsing_skips_comments_and_blank_lines() {
        let text = "# FireHOL level1\n\n198.18.0.0/15\n  203.0.113.5 # one host\n2001:db8::/32\n";
        let got = parse_netset(text).unwrap();
        assert_eq!(
            got,
            [
                cidr("198.18.0.0/15"),
                cidr("203.0.113.5"),
                cidr("2001:db8::/32")
            ]
        );
        assert!(parse_netset("").unwrap().is_empty());
    }

    #[test]
    fn netset_bad_line_names_the_line_and_imports_nothing() {
        let text = "10.0.0.0/8\n# ok\n300.1.2.3\n10.0.0.0/33\n192.0.2.1\n";
        let e = parse_netset(text).unwrap_err();
        let ControlError::BadNetsetLine { line, more, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((*line, *more), (3, 1));
        assert!(e.to_string().starts_with("line 3: \"300.1.2.3\""), "{e}");
        assert!(e.to_string().contains("nothing was imported"), "{e}");
    }

    #[test]
    fn import_adds_replaces_and_collapses_duplicates() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(List::Deny, cidr("192.0.2.0/24"), None, None)
            .unwrap();
        let entries =
            parse_netset("192.0.2.0/24\n198.51.100.0/24\n198.51.100.0/24\nfd00::1\n").unwrap();
        let out = c
            .list_import(
                List::Deny,
                &entries,
                Some(Duration::from_secs(3600)),
                Some("feed".into()),
            )
            .unwrap();
        assert_eq!(
            out,
            ImportOutcome {
                added: 2,
                replaced: 1,
                duplicates: 1
            }
        );
        assert_eq!(c.datapath().lists.len(), 3);
        let saved = f.saved();
        assert_eq!(saved.deny.len(), 3);
        assert!(
            saved
                .deny
                .iter()
                .all(|r| r.reason.as_deref() == Some("feed") && r.expires == Some(T0_UNIX + 3600))
        );
    }

    #[test]
    fn import_failing_midway_leaves_everything_as_it_was() {
        let f = fixture();
        let mut dp = FakeDatapath::new(f.clock.clone());
        dp.inserts_before_failure = Some(3);
        let mut c = f.control_with(dp);
        c.list_add(List::Deny, cidr("10.0.0.2"), None, Some("keep".into()))
            .unwrap();
        let entries: Vec<Cidr> = (1..=5).map(|i| cidr(&format!("10.0.0.{i}"))).collect();
        let e = c
            .list_import(List::Deny, &entries, Some(Duration::from_secs(5)), None)
            .unwrap_err();
        assert!(matches!(e, ControlError::Datapath(_)), "{e}");
        let list = c.list_entries(List::Deny);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].reason.as_deref(), Some("keep"));
        assert_eq!(c.datapath().lists.len(), 1);
        assert_eq!(
            c.datapath().entry(List::Deny, "10.0.0.2"),
            Some(ListEntry::expiring(0))
        );
        assert_eq!(f.saved().deny.len(), 1);
    }

    /// Runs `f` and counts the writes of the state file in `dir` meanwhile: `Store::save`
    /// writes a temporary file and renames it over the state file, one IN_MOVED_TO (inotify(7))
    /// per write. The temporary file's IN_CLOSE_WRITE is watched too, only so that two saves'
    /// IN_MOVED_TO are never adjacent: the kernel merges identical adjacent events.
    fn state_file_writes<T>(dir: &std::path::Path, f: impl FnOnce() -> T) -> (T, usize) {
        use std::os::unix::ffi::OsStrExt;
        std::fs::create_dir_all(dir).unwrap();
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: inotify_init1 has no preconditions.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a valid inotify descriptor and a NUL-terminated path.
        let wd = unsafe {
            libc::inotify_add_watch(fd, path.as_ptr(), libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE)
        };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        let out = f();
        let header = std::mem::size_of::<libc::inotify_event>();
        let mut writes = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: reads at most buf.len() bytes into buf, which outlives the call.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut at = 0;
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event header at `at`; read_unaligned copes
                // with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                assert_eq!(
                    ev.mask & libc::IN_Q_OVERFLOW,
                    0,
                    "more writes than inotify holds"
                );
                let name = &buf[at + header..at + header + ev.len as usize];
                if ev.mask & libc::IN_MOVED_TO != 0
                    && name.split(|b| *b == 0).next() == Some(state::FILE_NAME.as_bytes())
                {
                    writes += 1;
                }
                at += header + ev.len as usize;
            }
        }
        // SAFETY: closes the descriptor opened above, once.
        unsafe { libc::close(fd) };
        (out, writes)
    }

    #[test]
    fn import_of_100k_entries_adds_them_all_and_writes_the_state_file_once() {
        let f = fixture();
        let mut c = f.control();
        let text: String = (0..100_000u32)
            .map(|i| {
                let [_, b, c, d] = i.to_be_bytes();
                format!("10.{b}.{c}.{d}\n")
            })
            .collect();
        let entries = parse_netset(&text).unwrap();
        let (out, writes) = state_file_writes(&f.dir, || {
            c.list_import(List::Deny, &entries, None, None).unwrap()
        });
        assert_eq!(out.added, 100_000);
        assert_eq!(writes, 1, "state file writes for one import");
        assert_eq!(f.saved().deny.len(), 100_000);
    }

    #[test]
    fn import_over_capacity_is_refused_whole() {
        let f = fixture();
        let mut c = f.control();
        let entries: Vec<Cidr> = (0..=capacity::ALLOW_V6)
            .map(|i| Cidr::host(IpAddr::V6(Ipv6Addr::from(u128::from(i) + 1))))
            .collect();
        let e = c
            .list_import(List::Allow, &entries, None, None)
            .unwrap_err();
        assert!(matches!(e, ControlError::Full { .. }), "{e}");
        assert!(c.datapath().lists.is_empty());
    }

    #[test]
    fn restart_restores_entries_with_remaining_ttl_on_a_new_monotonic_clock() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(
            List::Deny,
            cidr("192.0.2.9"),
            Some(Duration::from_secs(600)),
            None,
        )
        .unwrap();
        c.list_add(List::Allow, cidr("198.18.0.0/15"), None, Some("lab".into()))
            .unwrap();
        drop(c);

        // A reboot: 100 s of wall time pass, the monotonic clock starts again near zero, and
        // the maps are empty.
        let rebooted = FakeClock::new(5 * SEC, f.clock.now_unix() + 100);
        let mut c = Control::new(FakeDatapath::new(rebooted.clone()), f.settings(), vec![])
            .with_wall_clock(rebooted.wall());
        let report = c.restore(Some(f.saved())).unwrap();
        assert_eq!((report.allow, report.deny, report.expired), (1, 1, 0));
        assert_eq!(
            c.datapath().entry(List::Deny, "192.0.2.9"),
            Some(ListEntry::expiring(5 * SEC + 500 * SEC))
        );
        assert_eq!(
            c.datapath().entry(List::Allow, "198.18.0.0/15"),
            Some(ListEntry::expiring(0))
        );
        assert_eq!(
            c.list_entries(List::Allow)[0].reason.as_deref(),
            Some("lab")
        );
        rebooted.advance(Duration::from_secs(500));
        assert_eq!(c.sweep().unwrap().expired_deny, 1);
    }

    #[test]
    fn restore_drops_entries_that_expired_while_down() {
        let f = fixture();
        let mut c = f.control();
        c.list_add(
            List::Deny,
            cidr("192.0.2.9"),
            Some(Duration::from_secs(60)),
            None,
        )
        .unwrap();
        c.datapath_mut()
            .bans
            .insert(v4key([203, 0, 113, 1]), ban_for(f.clock.now_ns(), 30));
        c.sweep().unwrap();
        assert_eq!(f.saved().bans.len(), 1);
        let saved = f.saved();
        drop(c);
        f.clock.advance(Duration::from_secs(61));
        let mut c = f.control();
        let report = c.restore(Some(saved)).unwrap();
        assert_eq!((report.deny, report.bans, report.expired), (0, 0, 2));
        assert!(c.datapath().lists.is_empty());
        assert!(c.datapath().bans.is_empty());
        let saved = f.saved();
        assert!(saved.deny.is_empty() && saved.bans.is_empty());
    }

    #[test]
    fn restore_with_state_file_removes_stale_map_entries_of_a_previous_run() {
        let f = fixture();
        let mut dp = FakeDatapath::new(f.clock.clone());
        dp.lists
            .insert((List::Deny, cidr("10.9.9.9")), ListEntry::expiring(0));
        let mut c = f.control_with(dp);
        let report = c.restore(Some(State::default())).unwrap();
        assert_eq!(report.stale_removed, 1);
        assert!(c.datapath().lists.is_empty());
    }

    #[test]
    fn restore_without_state_file_adopts_the_pinned_maps() {
        let f = fixture();
        let mut dp = FakeDatapath::new(f.clock.clone());
        let now = f.clock.now_ns();
        dp.lists
            .insert((List::Deny, cidr("10.9.9.9")), ListEntry::expiring(0));
        dp.lists.insert(
            (List::Deny, cidr("10.9.9.10")),
            ListEntry::expiring(now + 120 * SEC),
        );
        dp.lists.insert(
            (List::Allow, cidr("10.1.1.1")),
            ListEntry::expiring(now - 1),
        );
        dp.bans.insert(v4key([192, 0, 2, 1]), ban_for(now, 60));
        let mut c = f.control_with(dp);
        let report = c.restore(None).unwrap();
        assert!(report.from_maps);
        assert_eq!((report.allow, report.deny, report.bans), (0, 2, 1));
        let saved = f.saved();
        assert_eq!(saved.deny.len(), 2);
        assert_eq!(
            saved
                .deny
                .iter()
                .find(|r| r.cidr == cidr("10.9.9.10"))
                .unwrap()
                .expires,
            Some(T0_UNIX + 120)
        );
        assert_eq!(saved.bans[0].source, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert!(c.datapath().entry(List::Allow, "10.1.1.1").is_none());
    }

    #[test]
    fn restore_after_reboot_reinserts_bans_from_the_state_file() {
        let f = fixture();
        let state = State {
            version: state::VERSION,
            bans: vec![BanRecord {
                source: "2001:db8:1:2::".parse().unwrap(),
                reason: "syn_limited".into(),
                since: T0_UNIX - 10,
                expires: T0_UNIX + 50,
            }],
            ..State::default()
        };
        let mut c = f.control();
        let report = c.restore(Some(state)).unwrap();
        assert_eq!(report.bans, 1);
        let (key, ban) = c.datapath().bans.iter().next().unwrap();
        assert_eq!(key_addr(key), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_eq!(ban.reason, reason::SYN_LIMITED as u32);
        assert_eq!(ban.expires_ns, f.clock.now_ns() + 50 * SEC);
        assert_eq!(ban.since_ns, f.clock.now_ns() - 10 * SEC);
        let bans = c.bans().unwrap();
        assert_eq!(bans[0].source.to_string(), "2001:db8:1:2::/64");
        assert_eq!(bans[0].expires, T0_UNIX + 50);
    }

    #[test]
    fn ban_expires_and_leaves_map_and_state() {
        let f = fixture();
        let mut c = f.control();
        let now = f.clock.now_ns();
        c.datapath_mut()
            .bans
            .insert(v4key([192, 0, 2, 1]), ban_for(now, 60));
        let out = c.sweep().unwrap();
        assert_eq!(out.bans_changed, 1);
        assert_eq!(f.saved().bans.len(), 1);
        assert_eq!(f.saved().bans[0].expires, T0_UNIX + 60);
        // A second sweep with nothing new changes nothing.
        assert_eq!(c.sweep().unwrap(), SweepOutcome::default());
        f.clock.advance(Duration::from_secs(60));
        let out = c.sweep().unwrap();
        assert_eq!((out.expired_bans, out.bans_changed), (1, 1));
        assert!(c.datapath().bans.is_empty());
        assert!(f.saved().bans.is_empty());
    }

    #[test]
    fn unban_of_a_cidr_removes_every_ban_inside_it() {
        let f = fixture();
        let mut c = f.control();
        let now = f.clock.now_ns();
        for a in [[192, 0, 2, 1], [192, 0, 2, 200], [198, 51, 100, 1]] {
            c.datapath_mut().bans.insert(v4key(a), ban_for(now, 60));
        }
        c.sweep().unwrap();
        let removed = c.unban(cidr("192.0.2.0/24")).unwrap();
        assert_eq!(removed.len(), 2);
        assert_eq!(removed[0].source, cidr("192.0.2.1"));
        assert_eq!(c.datapath().bans.len(), 1);
        assert_eq!(f.saved().bans.len(), 1);
        let e = c.unban(cidr("192.0.2.1")).unwrap_err();
        assert_eq!(e.to_string(), "no ban matches 192.0.2.1/32");
    }

    #[test]
    fn unban_lifts_a_ban_held_only_in_the_tracker() {
        let f = fixture();
        let mut c = f.control();
        let now = f.clock.now_ns();
        // The data plane banned it but its bans map was full.
        let state = SourceState {
            banned_until_ns: now + 60_000_000_000,
            ..SourceState::default()
        };
        c.datapath_mut()
            .sources
            .insert(v4key([192, 0, 2, 7]), state);
        c.datapath_mut()
            .sources
            .insert(v4key([192, 0, 2, 8]), SourceState::default());
        let removed = c.unban(cidr("192.0.2.0/24")).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].source, cidr("192.0.2.7"));
        assert!(removed[0].reason.contains("tracker only"));
        assert!(!c.datapath().sources.contains_key(&v4key([192, 0, 2, 7])));
        assert!(c.datapath().sources.contains_key(&v4key([192, 0, 2, 8])));
    }

    #[test]
    fn unban_of_an_ipv6_host_lifts_the_ban_on_its_tracked_network() {
        let f = fixture();
        let mut c = f.control();
        let net: IpAddr = "2001:db8:0:7::".parse().unwrap();
        c.datapath_mut()
            .bans
            .insert(addr_key(net), ban_for(f.clock.now_ns(), 60));
        let removed = c.unban(cidr("2001:db8:0:7::1234")).unwrap();
        assert_eq!(removed[0].source, cidr("2001:db8:0:7::/64"));
        assert!(c.datapath().bans.is_empty());
    }

    #[test]
    fn ban_events_are_described_with_interface_and_wall_clock_expiry() {
        let f = fixture();
        let attachments = vec![Attachment {
            iface: "eth0".into(),
            ifindex: 2,
            mode: "native".into(),
            adopted: false,
        }];
        let c = Control::new(
            FakeDatapath::new(f.clock.clone()),
            f.settings(),
            attachments,
        )
        .with_wall_clock(f.clock.wall());
        let now = f.clock.now_ns();
        let ev = BanEvent {
            source: v4key([203, 0, 113, 50]),
            since_ns: now,
            expires_ns: now + 60 * SEC,
            reason: reason::SYN_LIMITED as u32,
            ifindex: 2,
        };
        let got = c.describe_events(&[ev]);
        assert_eq!(got[0].iface, "eth0");
        assert_eq!(got[0].ban.source, cidr("203.0.113.50"));
        assert_eq!(got[0].ban.reason, "syn_limited");
        assert_eq!(got[0].ban.expires, T0_UNIX + 60);
    }

    #[test]
    fn reload_applies_limits_and_keeps_restart_only_settings() {
        let f = fixture();
        let mut c = f.control();
        c.apply_kernel_config().unwrap();
        assert_eq!(c.datapath().config.pps, 20_000);
        let mut new = f.settings();
        new.limits.pps = 5;
        new.datapath.dry_run = true;
        new.datapath.interfaces = vec!["eth7".into()];
        let report = c.apply_settings(new).unwrap();
        assert_eq!(report.restart_needed, ["datapath.interfaces"]);
        let mut narrower = c.settings.clone();
        narrower.limits.ipv6_prefix = 56;
        let report = c.apply_settings(narrower).unwrap();
        assert_eq!(report.restart_needed, ["limits.ipv6_prefix"]);
        assert_eq!(c.settings.limits.ipv6_prefix, 64, "kept until a restart");
        assert_eq!(c.datapath().config.pps, 5);
        assert_eq!(c.datapath().config.flags, guard_common::FLAG_DRY_RUN);
        assert!(c.settings().datapath.interfaces.is_empty());
    }

    #[test]
    fn stats_name_interfaces_by_slot_and_sum_totals() {
        let f = fixture();
        let attachments = vec![
            Attachment {
                iface: "eth0".into(),
                ifindex: 2,
                mode: "native".into(),
                adopted: false,
            },
            Attachment {
                iface: "eth1".into(),
                ifindex: 3,
                mode: "generic".into(),
                adopted: false,
            },
        ];
        let mut dp = FakeDatapath::new(f.clock.clone());
        let mut a = Counters::default();
        a.packets[reason::PASSED] = 10;
        a.bytes[reason::PASSED] = 1000;
        let mut b = Counters::default();
        b.packets[reason::DENIED] = 5;
        b.bytes[reason::DENIED] = 300;
        dp.counters = vec![(2, a), (7, b)];
        let mut c = Control::new(dp, f.settings(), attachments).with_wall_clock(f.clock.wall());
        c.list_add(List::Deny, cidr("10.0.0.0/8"), None, None)
            .unwrap();
        let s = c.stats().unwrap();
        let names: Vec<&str> = s.interfaces.iter().map(|i| i.iface.as_str()).collect();
        assert_eq!(names, ["eth0", "eth1", "slot 7"]);
        assert_eq!(s.interfaces[0].packets, 10);
        assert_eq!(s.interfaces[1].packets, 0);
        assert_eq!((s.total.packets, s.total.bytes), (15, 1300));
        let denied = s
            .total
            .reasons
            .iter()
            .find(|r| r.reason == "denied")
            .unwrap();
        assert_eq!(denied.packets, 5);
        let deny_v4 = s.maps.iter().find(|m| m.map == map_names::DENY_V4).unwrap();
        assert_eq!((deny_v4.entries, deny_v4.capacity), (1, capacity::DENY_V4));
    }

    #[test]
    fn top_ranks_sources_by_rate_between_two_samples() {
        let f = fixture();
        let mut dp = FakeDatapath::new(f.clock.clone());
        let heavy = v4key([203, 0, 113, 1]);
        let light = v4key([203, 0, 113, 2]);
        let idle = v4key([203, 0, 113, 3]);
        let st = |packets: u64| SourceState {
            packets,
            bytes: packets * 100,
            ..SourceState::default()
        };
        dp.sources.insert(heavy, st(1_000_000));
        dp.sources.insert(light, st(5));
        dp.sources.insert(idle, st(77));
        let mut c = f.control_with(dp);
        let before = c.sample_sources().unwrap();
        f.clock.advance(Duration::from_secs(2));
        let now = f.clock.now_ns();
        let dp = c.datapath_mut();
        dp.sources.insert(heavy, st(1_020_000));
        dp.sources.insert(light, st(25));
        dp.sources.insert(v4key([203, 0, 113, 4]), st(100));
        dp.bans.insert(heavy, ban_for(now, 60));
        let after = c.sample_sources().unwrap();
        let top = top_sources(&before, &after, 10, &c.settings().limits);
        let got: Vec<(String, u64, bool)> = top
            .iter()
            .map(|t| (t.source.to_string(), t.pps, t.banned))
            .collect();
        assert_eq!(
            got,
            [
                ("203.0.113.1/32".to_string(), 10_000, true),
                ("203.0.113.4/32".to_string(), 50, false),
                ("203.0.113.2/32".to_string(), 10, false),
            ]
        );
        assert_eq!(top[0].bps, 1_000_000);
        assert_eq!(
            top_sources(&before, &after, 1, &c.settings().limits).len(),
            1
        );
    }

    #[test]
    fn key_conversions_round_trip() {
        for ip in ["192.0.2.1", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(key_addr(&addr_key(ip)), ip);
        }
    }
}
