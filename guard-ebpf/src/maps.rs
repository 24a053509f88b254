//! The maps of the XDP program. Names match `guard_common::map_names` (checked by a userspace
//! test that loads the object); what happens when each is full is written beside it.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use guard_common::{
    Ban, Config, Counters, CpuState, Known, ListEntry, PrefixState, Service, ServiceStats,
    SourceKey, SourceState, capacity,
};

/// `BPF_F_MMAPABLE`: userspace maps the array into its memory (atomic ORs, no syscalls).
const MMAPABLE: u32 = 1 << 10;

/// `0 | 1 -> Config`: two slots, so a reload never lets a packet read a half-written config.
/// Userspace writes the slot not in use, then flips `CONFIG_SLOT`. Never full.
#[map(name = "GUARD_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(2, 0);

/// `0 -> u32`: the current `CONFIG` slot (0 or 1). Written by userspace, read once per packet.
#[map(name = "GUARD_CFG_SLOT")]
pub static CONFIG_SLOT: Array<u32> = Array::with_max_entries(1, 0);

/// `ifindex % STATS_SLOTS -> Counters`, per CPU. Written per packet; userspace sums the CPUs.
#[map(name = "GUARD_STATS")]
pub static STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(capacity::STATS_SLOTS, 0);

/// IPv4 allow CIDRs -> entry. Userspace writes; a full trie refuses the insert in userspace.
#[map(name = "GUARD_ALLOW_V4")]
pub static ALLOW_V4: LpmTrie<[u8; 4], ListEntry> = LpmTrie::with_max_entries(capacity::ALLOW_V4, 0);

/// IPv6 allow CIDRs -> entry.
#[map(name = "GUARD_ALLOW_V6")]
pub static ALLOW_V6: LpmTrie<[u8; 16], ListEntry> =
    LpmTrie::with_max_entries(capacity::ALLOW_V6, 0);

/// IPv4 deny CIDRs -> entry. Userspace writes; a full trie refuses the insert in userspace.
#[map(name = "GUARD_DENY_V4")]
pub static DENY_V4: LpmTrie<[u8; 4], ListEntry> = LpmTrie::with_max_entries(capacity::DENY_V4, 0);

/// IPv6 deny CIDRs -> entry.
#[map(name = "GUARD_DENY_V6")]
pub static DENY_V6: LpmTrie<[u8; 16], ListEntry> = LpmTrie::with_max_entries(capacity::DENY_V6, 0);

/// IPv4 prefix bans -> entry. The daemon escalates them and expires them; a full trie refuses
/// the escalation in userspace (logged), and the sources' own bans still hold.
#[map(name = "GUARD_PBANS_V4")]
pub static PREFIX_BANS_V4: LpmTrie<[u8; 4], ListEntry> =
    LpmTrie::with_max_entries(capacity::PREFIX_BANS_V4, 0);

/// IPv6 prefix bans -> entry.
#[map(name = "GUARD_PBANS_V6")]
pub static PREFIX_BANS_V6: LpmTrie<[u8; 16], ListEntry> =
    LpmTrie::with_max_entries(capacity::PREFIX_BANS_V6, 0);

/// Source -> rate state. Written per packet; userspace reads it for `guard top`. Only sources
/// admitted by the front stage (or known ones) are inserted, so a spoofed flood cannot churn
/// it much; when full the LRU evicts the least recently seen source, which starts again in the
/// front stage (its ban lives on in `BANS`, its known status in `KNOWN`).
#[map(name = "GUARD_SOURCES")]
pub static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(capacity::SOURCES, 0);

/// Source -> ban. Written per packet when a source goes over a limit, and by userspace
/// (restore, unban, expiry). When full, a new ban is not recorded: the packet is still dropped
/// and the source stays limited by its bucket (fail closed for the packet, open for the ban).
#[map(name = "GUARD_BANS")]
pub static BANS: HashMap<SourceKey, Ban> = HashMap::with_max_entries(capacity::BANS, 0);

/// New bans, for the daemon's log. When full, the event is lost (counted in no counter); the
/// ban itself is in `BANS`, which the daemon also scans.
#[map(name = "GUARD_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS, 0);

/// Known sources -> when they became known and were last seen. Inserted by the program only
/// for a source in good standing (never for a never-seen one), refreshed once a second while
/// it sends, expired by the daemon once it has been silent for `known_ttl_secs`. A plain hash,
/// not an LRU, on purpose: when full, new sources are not made known (they stay newcomers)
/// and no known source is ever pushed out, so a flood cannot evict the sources it competes
/// with.
#[map(name = "GUARD_KNOWN")]
pub static KNOWN: HashMap<SourceKey, Known> = HashMap::with_max_entries(capacity::KNOWN, 0);

/// Prefix (masked key) -> aggregate bucket, charged by unknown sources. When full the LRU
/// evicts the least recently seen prefix, which starts again with a full bucket (fail open).
#[map(name = "GUARD_PREFIXES")]
pub static PREFIXES: LruHashMap<SourceKey, PrefixState> =
    LruHashMap::with_max_entries(capacity::PREFIXES, 0);

/// `(protocol slot << 16) | port -> service slot` (0: none). Written by userspace. Never full
/// (one slot per protocol and port).
#[map(name = "GUARD_SVC_PORTS")]
pub static SERVICE_PORTS: Array<u32> = Array::with_max_entries(capacity::SERVICE_PORTS, 0);

/// Service slot -> its mode (attack, newcomer budget). Written by userspace each second.
#[map(name = "GUARD_SERVICES")]
pub static SERVICES: Array<Service> = Array::with_max_entries(capacity::SERVICES, 0);

/// Service slot -> per-CPU counts and newcomer bucket. Written per packet, summed by userspace.
#[map(name = "GUARD_SVC_STATS")]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(capacity::SERVICES, 0);

/// `0 -> CpuState`, per CPU: the front stage's sketch and the malformed-frame budget.
#[map(name = "GUARD_CPU")]
pub static CPU_STATE: PerCpuArray<CpuState> = PerCpuArray::with_max_entries(1, 0);

/// `0 -> Scratch`, per CPU: the packet being judged and what the pipeline found out about it,
/// kept here rather than on the 512-byte stack. Never pinned: it holds nothing between
/// packets (XDP never runs twice at once on one CPU).
#[map(name = "GUARD_SCRATCH")]
pub static SCRATCH: PerCpuArray<crate::program::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// `0 -> guard_cookie`, the SYN-cookie stage, tail-called for the SYNs and ACKs of cookie
/// services. Filled by the daemon at each load; pinned, since a program array that no file
/// or process holds is emptied. Empty (the kernel lacks the syncookie helpers, or the stage
/// did not load): those packets pass to the kernel.
#[map(name = "GUARD_COOKIE")]
pub static COOKIE_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The seen filter (`guard_common::seen`): two halves of 64-bit words. Never full (a Bloom
/// filter saturates instead: more of its answers are "maybe", each costing the lookups it
/// would spare; userspace rebuilds a half from the maps it covers).
#[map(name = "GUARD_SEEN")]
pub static SEEN: Array<u64> = Array::with_max_entries(capacity::SEEN, MMAPABLE);

/// `0 -> the operator's next program` (`[datapath] next`), tail-called for every packet the
/// guard passes. Filled by the daemon at each start, cleared when no next program is set;
/// pinned, since a program array that no file or process holds is emptied. Empty: the packet
/// goes to the kernel (`XDP_PASS`).
#[map(name = "GUARD_NEXT")]
pub static NEXT_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);
