//! [`KernelDatapath`]: the loaded program and its maps, the config written in two slots, the
//! list hints and lists generation the program reads; its map access is in `maps`.
use super::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{ProgramError, Xdp},
};
use guard_common::{
    Ban, BanEvent, Config, Counters, FLAG_CACHE_V4, FLAG_CACHE_V6, FLAG_HAS_ALLOW_V4,
    FLAG_HAS_ALLOW_V6, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6, FLAG_HAS_PBAN_V4, FLAG_HAS_PBAN_V6,
    FLAG_LIST_HINTS, FLAG_NEXT, FLAG_SEEN_FILTER, FLAG_SEEN_HALF, FLAG_SERVICES, Gcra, Known,
    LIST_HINT_BITS, ListEntry, PROGRAM_NAME, Service, ServiceStats, SourceKey, SourceState,
    capacity, map_names,
};

use crate::{
    cidr::Cidr,
    dataplane::{DatapathError, List, seen::SeenFilter},
};

mod batch;
mod maps;

pub(super) fn if_index(iface: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(iface)
        .ok()
        .filter(|i| *i != 0)
}

pub(super) fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        op,
        source: Box::new(e),
    }
}

/// The data plane through its maps.
pub struct KernelDatapath {
    pub(super) ebpf: Ebpf,
    config: Array<MapData, Config>,
    config_slot: Array<MapData, u32>,
    stats: PerCpuArray<MapData, Counters>,
    allow_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    allow_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    deny_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    deny_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    pbans_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    pbans_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    bans: HashMap<MapData, SourceKey, Ban>,
    /// The ban-event ring, until [`KernelDatapath::take_event_ring`] hands it to its reader.
    events: Option<RingBuf<MapData>>,
    /// The program's log reader, if the object has aya-log's map (see [`super::events`]).
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    known: HashMap<MapData, SourceKey, Known>,
    service_ports: Array<MapData, u32>,
    services: Array<MapData, Service>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    /// The config as last set, without the list hints and derived fields.
    base: Config,
    /// `FLAG_HAS_*` bits of the lists known to have entries (see `guard_common::LIST_HINT_BITS`).
    hints: u32,
    /// The longest IPv4 and IPv6 list prefixes ever inserted since load (never lowered on a
    /// removal: a stale high value only turns the verdict cache off, never on wrongly).
    max_prefix: [u8; 2],
    /// `Config::lists_gen`, bumped on every list change.
    lists_gen: u64,
    /// The `CONFIG` slot in force, and when it was made so.
    slot: u32,
    flipped: Option<std::time::Instant>,
    /// `SERVICE_PORTS` indexes set to a service (to clear on the next mapping).
    mapped_ports: Vec<u32>,
    /// Possible CPUs: budgets enforced per CPU are shared out among them.
    cpus: u32,
    /// Whether the SYN-cookie stages loaded (and why not).
    pub(super) cookies: Result<(), String>,
    /// Whether the TC stage is attached to every interface (and why not).
    pub(super) tc: Result<(), String>,
    /// The run priority in libxdp's dispatcher, for a re-attach.
    pub(super) priority: u32,
    /// Whether `GUARD_NEXT` holds a next program (`FLAG_NEXT`).
    pub(super) next: bool,
    /// The pin directory root `start` used (`None`: loaded without pins).
    pub(super) pin_root: Option<std::path::PathBuf>,
    /// `GUARD_SEEN`, mapped: bits set before every insert into the tracker, `BANS` or
    /// `KNOWN` from here, and rebuilt by `refresh_seen`.
    pub(super) seen: SeenFilter,
    /// bpf(2) calls made by whole-map reads (`batch`), for tests of their cost.
    walk_calls: std::sync::atomic::AtomicU64,
}

type V4Trie = LpmTrie<MapData, [u8; 4], ListEntry>;
type V6Trie = LpmTrie<MapData, [u8; 16], ListEntry>;
type Tries<'a> = (&'a V4Trie, &'a V6Trie, &'static str, &'static str);
type TriesMut<'a> = (
    &'a mut V4Trie,
    &'a mut V6Trie,
    (&'static str, u32),
    (&'static str, u32),
);

/// Which LPM trie pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trie {
    Allow,
    Deny,
    PrefixBan,
}

impl From<List> for Trie {
    fn from(l: List) -> Self {
        match l {
            List::Allow => Self::Allow,
            List::Deny => Self::Deny,
        }
    }
}

/// A program run can last at most microseconds (XDP runs with preemption off), so once the
/// config slot index has flipped and this much time passed, no run still reads the old slot.
const SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

impl KernelDatapath {
    pub(super) fn new(mut ebpf: Ebpf) -> Result<Self, LoadError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
        }
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| LoadError::Io {
            op: "read",
            path: path.into(),
            source,
        })? as u32;
        Ok(Self {
            config: take(&mut ebpf, map_names::CONFIG)?,
            config_slot: take(&mut ebpf, map_names::CONFIG_SLOT)?,
            stats: take(&mut ebpf, map_names::STATS)?,
            allow_v4: take(&mut ebpf, map_names::ALLOW_V4)?,
            allow_v6: take(&mut ebpf, map_names::ALLOW_V6)?,
            deny_v4: take(&mut ebpf, map_names::DENY_V4)?,
            deny_v6: take(&mut ebpf, map_names::DENY_V6)?,
            pbans_v4: take(&mut ebpf, map_names::PREFIX_BANS_V4)?,
            pbans_v6: take(&mut ebpf, map_names::PREFIX_BANS_V6)?,
            sources: take(&mut ebpf, map_names::SOURCES)?,
            bans: take(&mut ebpf, map_names::BANS)?,
            events: Some(take(&mut ebpf, map_names::EVENTS)?),
            logger: super::events::logger(&mut ebpf),
            known: take(&mut ebpf, map_names::KNOWN)?,
            service_ports: take(&mut ebpf, map_names::SERVICE_PORTS)?,
            services: take(&mut ebpf, map_names::SERVICES)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_STATS)?,
            seen: {
                let map = ebpf
                    .take_map(map_names::SEEN)
                    .ok_or(LoadError::Missing(map_names::SEEN))?;
                let aya::maps::Map::Array(data) = map else {
                    return Err(LoadError::Link(format!(
                        "{} is not an array map",
                        map_names::SEEN
                    )));
                };
                SeenFilter::new(data).map_err(|source| LoadError::Io {
                    op: "mmap",
                    path: map_names::SEEN.into(),
                    source,
                })?
            },
            ebpf,
            base: Config::default(),
            hints: 0,
            max_prefix: [0, 0],
            lists_gen: 0,
            slot: 0,
            flipped: None,
            mapped_ports: Vec::new(),
            cpus: cpus.max(1),
            cookies: Err("not loaded".to_string()),
            tc: Err("the TC stage is not attached (not started)".to_string()),
            priority: super::dispatcher::DEFAULT_PRIORITY,
            pin_root: None,
            next: false,
            walk_calls: std::sync::atomic::AtomicU64::new(0),
        })
        .and_then(|mut dp| {
            // Adopted maps keep their config and entries: start from them.
            let slot = dp.config_slot.get(&0, 0).map_err(|source| LoadError::Map {
                map: map_names::CONFIG_SLOT,
                source,
            })? & 1;
            let current = dp.config.get(&slot, 0).map_err(|source| LoadError::Map {
                map: map_names::CONFIG,
                source,
            })?;
            dp.slot = slot;
            dp.base = user_view(&current);
            // An adopted filter half stays the one the program reads until the other is
            // rebuilt below.
            dp.seen
                .flipped(current.flags & (FLAG_SEEN_FILTER | FLAG_SEEN_HALF));
            // Continue the adopted generation: the pinned tracker holds verdicts cached under
            // every generation up to it.
            dp.lists_gen = current.lists_gen + 1;
            for bit in [
                FLAG_HAS_ALLOW_V4,
                FLAG_HAS_ALLOW_V6,
                FLAG_HAS_DENY_V4,
                FLAG_HAS_DENY_V6,
                FLAG_HAS_PBAN_V4,
                FLAG_HAS_PBAN_V6,
            ] {
                if dp.trie_has_entries(bit) {
                    dp.hints |= bit;
                }
            }
            // The ports an adopted mapping points at a service.
            dp.mapped_ports = dp
                .service_ports
                .iter()
                .filter_map(Result::ok)
                .enumerate()
                .filter(|(_, slot)| *slot != 0)
                .map(|(i, _)| i as u32)
                .collect();
            // The adopted entries' longest prefixes decide whether the verdict cache may be on.
            let longest = |keys: &mut dyn Iterator<Item = u32>| keys.max().unwrap_or(0) as u8;
            dp.max_prefix = [
                longest(
                    &mut dp
                        .allow_v4
                        .keys()
                        .chain(dp.deny_v4.keys())
                        .chain(dp.pbans_v4.keys())
                        .filter_map(Result::ok)
                        .map(|k| k.prefix_len()),
                ),
                longest(
                    &mut dp
                        .allow_v6
                        .keys()
                        .chain(dp.deny_v6.keys())
                        .chain(dp.pbans_v6.keys())
                        .filter_map(Result::ok)
                        .map(|k| k.prefix_len()),
                ),
            ];
            dp.write_config()
                .map_err(|e| LoadError::Link(e.to_string()))?;
            crate::dataplane::Datapath::refresh_seen(&mut dp)
                .map_err(|e| LoadError::Link(e.to_string()))?;
            Ok(dp)
        })
    }

    /// bpf(2) calls the whole-map reads (sources, bans, known) made since load.
    pub fn walk_calls(&self) -> u64 {
        self.walk_calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Possible CPUs, among which the per-CPU budgets are shared out.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// How full the seen filter's half in use is (bits set, of all), and whether it is in use.
    pub fn seen_fill(&self) -> Option<f64> {
        (self.seen.flags() != 0).then(|| self.seen.fill())
    }

    /// Whether the SYN-cookie stages loaded, or why not (attached or not: see
    /// `Datapath::cookie_support`).
    pub fn cookie_stages(&self) -> Result<(), &str> {
        self.cookies.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Does the trie behind hint `bit` hold any entry? (One BPF_MAP_GET_NEXT_KEY.)
    fn trie_has_entries(&self, bit: u32) -> bool {
        match bit {
            FLAG_HAS_ALLOW_V4 => self.allow_v4.keys().next().is_some(),
            FLAG_HAS_ALLOW_V6 => self.allow_v6.keys().next().is_some(),
            FLAG_HAS_DENY_V4 => self.deny_v4.keys().next().is_some(),
            FLAG_HAS_DENY_V6 => self.deny_v6.keys().next().is_some(),
            FLAG_HAS_PBAN_V4 => self.pbans_v4.keys().next().is_some(),
            FLAG_HAS_PBAN_V6 => self.pbans_v6.keys().next().is_some(),
            _ => true,
        }
    }

    /// Writes the config with the list hints (which let the program skip lookups of empty
    /// lists) and the derived GCRA parameters. The hint for a list is set after its first
    /// entry is in, and cleared after its last is out, so the program never skips a list that
    /// has entries.
    ///
    /// The write goes to the slot not in use, and the slot index flips after it, so a packet
    /// reads either the whole old config or the whole new one (never a mix, such as a new
    /// lists generation with old cache flags). Before a slot is written again, `SLOT_GRACE`
    /// has passed since it was last in use.
    pub(super) fn write_config(&mut self) -> Result<(), DatapathError> {
        let b = &self.base;
        // The verdict cache is sound only if every list entry covers whole tracked sources.
        let v4_track = if b.v4_prefix_len == 0 {
            32
        } else {
            b.v4_prefix_len
        };
        let v6_track = if b.v6_prefix_len == 0 {
            64
        } else {
            b.v6_prefix_len
        };
        let mut cache = 0;
        if u32::from(self.max_prefix[0]) <= v4_track {
            cache |= FLAG_CACHE_V4;
        }
        if u32::from(self.max_prefix[1]) <= v6_track {
            cache |= FLAG_CACHE_V6;
        }
        let services = if self.mapped_ports.is_empty() {
            0
        } else {
            FLAG_SERVICES
        };
        let pkt = Gcra::new(b.pps, b.burst);
        let syn = Gcra::new(b.syn_pps, b.syn_burst);
        let prefix = Gcra::new(b.prefix_pps, b.prefix_burst);
        // Enforced per CPU: each CPU gets its share of the rate (and the whole burst).
        let malformed = if b.malformed_pps == 0 {
            Gcra::default()
        } else {
            Gcra::from_f64(
                b.malformed_pps as f64 / f64::from(self.cpus),
                b.malformed_burst,
            )
        };
        let cfg = Config {
            flags: b.flags
                | FLAG_LIST_HINTS
                | self.hints
                | cache
                | services
                | self.seen.flags()
                | if self.next { FLAG_NEXT } else { 0 },
            lists_gen: self.lists_gen,
            pkt_interval_ns: pkt.interval_ns,
            pkt_tolerance_ns: pkt.tolerance_ns,
            syn_interval_ns: syn.interval_ns,
            syn_tolerance_ns: syn.tolerance_ns,
            prefix_interval_ns: prefix.interval_ns,
            prefix_tolerance_ns: prefix.tolerance_ns,
            malformed_interval_ns: malformed.interval_ns,
            malformed_tolerance_ns: malformed.tolerance_ns,
            ..*b
        };
        if let Some(at) = self.flipped {
            let since = at.elapsed();
            if since < SLOT_GRACE {
                std::thread::sleep(SLOT_GRACE - since);
            }
        }
        let next = self.slot ^ 1;
        self.config
            .set(next, cfg, 0)
            .map_err(map_err(map_names::CONFIG, "write"))?;
        self.config_slot
            .set(0, next, 0)
            .map_err(map_err(map_names::CONFIG_SLOT, "write"))?;
        self.slot = next;
        self.flipped = Some(std::time::Instant::now());
        Ok(())
    }

    fn hint_bit(trie: Trie, cidr: &Cidr) -> u32 {
        match (trie, cidr.is_ipv4()) {
            (Trie::Allow, true) => FLAG_HAS_ALLOW_V4,
            (Trie::Allow, false) => FLAG_HAS_ALLOW_V6,
            (Trie::Deny, true) => FLAG_HAS_DENY_V4,
            (Trie::Deny, false) => FLAG_HAS_DENY_V6,
            (Trie::PrefixBan, true) => FLAG_HAS_PBAN_V4,
            (Trie::PrefixBan, false) => FLAG_HAS_PBAN_V6,
        }
    }

    /// A trie pair with the maps' names.
    fn tries(&self, trie: Trie) -> Tries<'_> {
        match trie {
            Trie::Allow => (
                &self.allow_v4,
                &self.allow_v6,
                map_names::ALLOW_V4,
                map_names::ALLOW_V6,
            ),
            Trie::Deny => (
                &self.deny_v4,
                &self.deny_v6,
                map_names::DENY_V4,
                map_names::DENY_V6,
            ),
            Trie::PrefixBan => (
                &self.pbans_v4,
                &self.pbans_v6,
                map_names::PREFIX_BANS_V4,
                map_names::PREFIX_BANS_V6,
            ),
        }
    }

    /// A trie pair with the maps' names and capacities.
    fn tries_mut(&mut self, trie: Trie) -> TriesMut<'_> {
        match trie {
            Trie::Allow => (
                &mut self.allow_v4,
                &mut self.allow_v6,
                (map_names::ALLOW_V4, capacity::ALLOW_V4),
                (map_names::ALLOW_V6, capacity::ALLOW_V6),
            ),
            Trie::Deny => (
                &mut self.deny_v4,
                &mut self.deny_v6,
                (map_names::DENY_V4, capacity::DENY_V4),
                (map_names::DENY_V6, capacity::DENY_V6),
            ),
            Trie::PrefixBan => (
                &mut self.pbans_v4,
                &mut self.pbans_v6,
                (map_names::PREFIX_BANS_V4, capacity::PREFIX_BANS_V4),
                (map_names::PREFIX_BANS_V6, capacity::PREFIX_BANS_V6),
            ),
        }
    }

    /// Inserts a trie entry and notes what the program's hints need to know; the change is
    /// published by `publish_list_change`.
    fn insert_raw(
        &mut self,
        trie: Trie,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        // The program needs each entry's own prefix to look past it once it expires.
        let entry = ListEntry {
            prefix_len: u32::from(cidr.prefix()),
            ..entry
        };
        let (v4, v6, n4, n6) = self.tries_mut(trie);
        match (v4_key(cidr), v6_key(cidr)) {
            (Some(k), _) => v4.insert(&k, entry, 0).map_err(insert_err(n4.0, n4.1)),
            (_, Some(k)) => v6.insert(&k, entry, 0).map_err(insert_err(n6.0, n6.1)),
            (None, None) => unreachable!("a CIDR is IPv4 or IPv6"),
        }?;
        self.hints |= Self::hint_bit(trie, cidr);
        let family = usize::from(!cidr.is_ipv4());
        self.max_prefix[family] = self.max_prefix[family].max(cidr.prefix());
        Ok(())
    }

    fn remove_raw(&mut self, trie: Trie, cidr: &Cidr) -> Result<bool, DatapathError> {
        let (v4, v6, n4, n6) = self.tries_mut(trie);
        let removed = match (v4_key(cidr), v6_key(cidr)) {
            (Some(k), _) => absent_ok(v4.remove(&k), n4.0),
            (_, Some(k)) => absent_ok(v6.remove(&k), n6.0),
            (None, None) => unreachable!("a CIDR is IPv4 or IPv6"),
        }?;
        if removed {
            let bit = Self::hint_bit(trie, cidr);
            if !self.trie_has_entries(bit) {
                self.hints &= !bit;
            }
            self.publish_list_change()?;
        }
        Ok(removed)
    }

    fn entries_raw(&self, trie: Trie) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        let (v4, v6, n4, n6) = self.tries(trie);
        let mut out = Vec::new();
        for item in v4.iter() {
            let (k, v) = item.map_err(map_err(n4, "read"))?;
            let addr = IpAddr::V4(Ipv4Addr::from(k.data()));
            if let Some(c) = Cidr::new(addr, k.prefix_len() as u8) {
                out.push((c, v));
            }
        }
        for item in v6.iter() {
            let (k, v) = item.map_err(map_err(n6, "read"))?;
            let addr = IpAddr::V6(Ipv6Addr::from(k.data()));
            if let Some(c) = Cidr::new(addr, k.prefix_len() as u8) {
                out.push((c, v));
            }
        }
        Ok(out)
    }

    /// Bumps the lists generation, which invalidates every verdict the tracker cached, and
    /// writes the config with the new hints.
    fn publish_list_change(&mut self) -> Result<(), DatapathError> {
        self.lists_gen += 1;
        self.write_config()
    }

    /// Forgets `key`'s tracker entry, so that its next packet reads its ban (and known
    /// status) afresh (the entry caches them).
    fn forget_source(&mut self, key: &SourceKey) -> Result<(), DatapathError> {
        absent_ok(self.sources.remove(key), map_names::SOURCES).map(|_| ())
    }

    pub(super) fn program_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::Missing("program"))?
            .try_into()
            .map_err(LoadError::Program)
    }

    pub(super) fn program(&self) -> Result<&Xdp, ProgramError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()
    }

    /// New bans reported by the program since the last call (non-blocking).
    pub fn take_events(&mut self) -> Vec<BanEvent> {
        let mut out = Vec::new();
        if let Some(ring) = &mut self.events {
            while let Some(item) = ring.next() {
                out.extend(super::events::parse(&item));
            }
        }
        out
    }

    /// Hands the ban-event ring to its reader task (see [`super::events::read_bans`]); from
    /// then on [`KernelDatapath::take_events`] finds nothing.
    pub fn take_event_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Hands the program's log reader to its task (see [`super::events::read_logs`]); `None`
    /// if the object has no aya-log map.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        self.logger.take()
    }
}

/// A config as userspace set it: no hints, no derived fields.
pub(super) fn user_view(cfg: &Config) -> Config {
    Config {
        flags: cfg.flags
            & !(LIST_HINT_BITS | FLAG_SERVICES | FLAG_SEEN_FILTER | FLAG_SEEN_HALF | FLAG_NEXT),
        lists_gen: 0,
        pkt_interval_ns: 0,
        pkt_tolerance_ns: 0,
        syn_interval_ns: 0,
        syn_tolerance_ns: 0,
        prefix_interval_ns: 0,
        prefix_tolerance_ns: 0,
        malformed_interval_ns: 0,
        malformed_tolerance_ns: 0,
        ..*cfg
    }
}

pub(super) fn v4_key(c: &Cidr) -> Option<Key<[u8; 4]>> {
    match c.addr() {
        IpAddr::V4(a) => Some(Key::new(u32::from(c.prefix()), a.octets())),
        IpAddr::V6(_) => None,
    }
}

pub(super) fn v6_key(c: &Cidr) -> Option<Key<[u8; 16]>> {
    match c.addr() {
        IpAddr::V6(a) => Some(Key::new(u32::from(c.prefix()), a.octets())),
        IpAddr::V4(_) => None,
    }
}

/// Maps a full-trie insert error to `Full`.
pub(super) fn insert_err(
    map: &'static str,
    capacity: u32,
) -> impl FnOnce(MapError) -> DatapathError {
    move |e| match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOSPC) => {
            DatapathError::Full { map, capacity }
        }
        _ => DatapathError::Map {
            map,
            op: "insert",
            source: Box::new(e),
        },
    }
}

pub(super) fn absent_ok(r: Result<(), MapError>, map: &'static str) -> Result<bool, DatapathError> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(map_err(map, "remove")(e)),
    }
}
