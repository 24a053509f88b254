//! What the control plane answers with: the reports of its operations, as they travel over
//! the control socket (serde) and are shown by the CLI.
use super::*;

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

pub(crate) fn reason_counts(c: &Counters) -> Vec<ReasonCount> {
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
    /// `[datapath] attach` (auto, direct, dispatcher) and the priority in libxdp's dispatcher.
    #[serde(default)]
    pub attach: String,
    #[serde(default)]
    pub priority: u32,
    /// `[datapath] next`: the pinned program that gets what the guard passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
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
    /// What the operator must know about how the daemon runs (a bpffs private to its mount
    /// namespace); filled in by the daemon.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// SYN cookies at the NIC: whether they can be sent, and the kernel's switch.
    #[serde(default)]
    pub syn_cookies: CookieStatus,
    /// The fleet, if this host is in one (filled in by the daemon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
}

/// `guard status`: SYN cookies at the NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieStatus {
    /// `None` when they can be sent; otherwise why not.
    pub unavailable: Option<String>,
    /// `net.ipv4.tcp_syncookies` now, and the value the guard replaced (restored on detach).
    pub sysctl: crate::dataplane::cookies::SyncookiesSysctl,
}
