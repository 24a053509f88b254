//! The maps of the XDP program. Names match `guard_common::map_names` (checked by a userspace
//! test that loads the object); what happens when each is full is written beside it.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use guard_common::{Ban, Config, Counters, ListEntry, SourceKey, SourceState, capacity};

/// `0 -> Config`. Userspace writes it; read once per packet. Never full (one slot).
#[map(name = "GUARD_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

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

/// Source -> rate state. Written per packet; userspace reads it for `guard top`. When full the
/// LRU evicts the least recently seen source, which then starts again with a full bucket: a
/// spoofed flood can churn it, which is why bans live in `BANS`, not here.
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
