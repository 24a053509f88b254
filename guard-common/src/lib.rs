//! Types that cross the kernel/user boundary, the map names, and the pure logic both sides
//! need (token-bucket arithmetic, prefix masking), unit-tested on the host.
#![no_std]

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "guard";

/// Map names, as the object file spells them. Userspace never spells a map name itself.
pub mod map_names {
    /// `u32 (0) -> Config`. Written by userspace, read per packet.
    pub const CONFIG: &str = "GUARD_CONFIG";
    /// Per-CPU `u32 (ifindex % STATS_SLOTS) -> Counters`. Written per packet, read by userspace.
    pub const STATS: &str = "GUARD_STATS";
    /// LPM `Key<[u8; 4]> -> ListEntry`. Written by userspace, read per packet.
    pub const ALLOW_V4: &str = "GUARD_ALLOW_V4";
    /// LPM `Key<[u8; 16]> -> ListEntry`. Written by userspace, read per packet.
    pub const ALLOW_V6: &str = "GUARD_ALLOW_V6";
    /// LPM `Key<[u8; 4]> -> ListEntry`. Written by userspace, read per packet.
    pub const DENY_V4: &str = "GUARD_DENY_V4";
    /// LPM `Key<[u8; 16]> -> ListEntry`. Written by userspace, read per packet.
    pub const DENY_V6: &str = "GUARD_DENY_V6";
    /// LRU `SourceKey -> SourceState`. Written per packet, read by userspace (`guard top`).
    pub const SOURCES: &str = "GUARD_SOURCES";
    /// Hash `SourceKey -> Ban`. Written per packet (new bans) and by userspace (restore, unban,
    /// expiry), read per packet.
    pub const BANS: &str = "GUARD_BANS";
    /// Ring buffer of `BanEvent`. Written per new ban, read by userspace.
    pub const EVENTS: &str = "GUARD_EVENTS";

    /// Every map, in a fixed order (pinning, compatibility checks).
    pub const ALL: [&str; 9] = [
        CONFIG, STATS, ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6, SOURCES, BANS, EVENTS,
    ];
}

/// Map capacities. Changing one changes the pinned-state layout: bump `LAYOUT_VERSION`.
pub mod capacity {
    /// Interfaces are counted in `ifindex % STATS_SLOTS`.
    pub const STATS_SLOTS: u32 = 256;
    pub const ALLOW_V4: u32 = 1 << 16;
    pub const ALLOW_V6: u32 = 1 << 16;
    /// Large enough for a 1M-entry netset import.
    pub const DENY_V4: u32 = 1 << 21;
    pub const DENY_V6: u32 = 1 << 18;
    pub const SOURCES: u32 = 1 << 17;
    pub const BANS: u32 = 1 << 16;
    /// Bytes.
    pub const EVENTS: u32 = 1 << 18;
}

/// Version of the map layout and value types. Pinned state from another version is not reused.
pub const LAYOUT_VERSION: u32 = 1;

/// Verdict reasons: indexes into `Counters`.
pub mod reason {
    /// No rule matched; the packet passed.
    pub const PASSED: usize = 0;
    /// The source is in the allow list.
    pub const ALLOWED: usize = 1;
    /// The source is in the deny list.
    pub const DENIED: usize = 2;
    /// The source is banned.
    pub const BANNED: usize = 3;
    /// The source went over its packet rate.
    pub const RATE_LIMITED: usize = 4;
    /// The source went over its SYN rate.
    pub const SYN_LIMITED: usize = 5;
    /// Too short or malformed to judge: passed.
    pub const MALFORMED: usize = 6;
    /// Dry-run: a packet that would have been dropped, counted here as well as under its reason.
    pub const WOULD_DROP: usize = 7;
    /// Number of counter slots.
    pub const COUNT: usize = 8;
    /// Names as shown to operators and in metrics labels.
    pub const NAMES: [&str; COUNT] = [
        "passed",
        "allowed",
        "denied",
        "banned",
        "rate_limited",
        "syn_limited",
        "malformed",
        "would_drop",
    ];
    /// True for the reasons that drop the packet (outside dry-run).
    pub const fn drops(reason: usize) -> bool {
        matches!(reason, DENIED | BANNED | RATE_LIMITED | SYN_LIMITED)
    }
}

/// `Config::flags`: decide and count, but pass everything.
pub const FLAG_DRY_RUN: u32 = 1;
/// `Config::flags`: the `FLAG_HAS_*` bits are maintained by userspace. Without it (a config
/// never written) the program looks up every list: hints can only ever skip a lookup of a list
/// that is known to be empty.
pub const FLAG_LIST_HINTS: u32 = 1 << 1;
/// `Config::flags`: the IPv4 allow list has entries (meaningful with `FLAG_LIST_HINTS`).
pub const FLAG_HAS_ALLOW_V4: u32 = 1 << 2;
pub const FLAG_HAS_ALLOW_V6: u32 = 1 << 3;
pub const FLAG_HAS_DENY_V4: u32 = 1 << 4;
pub const FLAG_HAS_DENY_V6: u32 = 1 << 5;
/// `Config::flags`: every IPv4 list entry is at most as long as the IPv4 tracking prefix, so
/// all addresses of one tracked source share one list verdict, which the tracker entry may
/// cache (tagged with `Config::lists_gen`).
pub const FLAG_CACHE_V4: u32 = 1 << 6;
/// `Config::flags`: likewise for IPv6.
pub const FLAG_CACHE_V6: u32 = 1 << 7;
/// The bits userspace derives from the lists themselves, not from the operator's config.
pub const LIST_HINT_BITS: u32 = FLAG_LIST_HINTS
    | FLAG_HAS_ALLOW_V4
    | FLAG_HAS_ALLOW_V6
    | FLAG_HAS_DENY_V4
    | FLAG_HAS_DENY_V6
    | FLAG_CACHE_V4
    | FLAG_CACHE_V6;

/// Should the program look `bit`'s list up under `flags`? Yes unless hints are maintained and
/// say the list is empty.
#[inline(always)]
pub const fn list_may_match(flags: u32, bit: u32) -> bool {
    flags & FLAG_LIST_HINTS == 0 || flags & bit != 0
}

/// Run-time limits and mode, in `GUARD_CONFIG[0]`. A zero rate turns that limit off, so an
/// unwritten config (all zero) fails open: no rate limits, the lists still apply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Packets per second per source; 0 = unlimited.
    pub pps: u64,
    /// Packets a source may send at once above `pps`.
    pub burst: u64,
    /// TCP SYNs (without ACK) per second per source; 0 = unlimited.
    pub syn_pps: u64,
    pub syn_burst: u64,
    /// How long a source that went over a limit stays banned; 0 = no bans, only limiting.
    pub ban_ns: u64,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// IPv4 sources are tracked per this prefix (1..=32; 0 means 32).
    pub v4_prefix_len: u32,
    /// IPv6 sources are tracked per this prefix (1..=128; 0 means 64).
    pub v6_prefix_len: u32,
    pub _pad: u32,
    /// `fill_ns(pps, burst)`, precomputed by userspace so the program never divides; 0 makes
    /// the program compute it.
    pub pkt_fill_ns: u64,
    /// `fill_ns(syn_pps, syn_burst)`, likewise.
    pub syn_fill_ns: u64,
    /// Bumped by userspace on every change to the allow or deny lists: a list verdict cached
    /// in a tracker entry under another generation is stale. Never 0 once written.
    pub lists_gen: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 80);

/// Value of the allow and deny tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListEntry {
    /// CLOCK_MONOTONIC time (the program's `bpf_ktime_get_coarse_ns`) after which the entry
    /// no longer matches; 0 = never expires.
    pub expires_ns: u64,
    /// The entry's own prefix length (the trie returns the value, not the key it matched):
    /// when an expired entry is the longest match, the program looks again above it, so an
    /// expired /24 never hides a live /16.
    pub prefix_len: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ListEntry>() == 16);

impl ListEntry {
    /// An entry that expires at `expires_ns` (0 = never); the datapath fills in the prefix.
    pub const fn expiring(expires_ns: u64) -> Self {
        Self {
            expires_ns,
            prefix_len: 0,
            _pad: 0,
        }
    }
}

/// A tracked source: an IPv4 address as `::ffff:a.b.c.d`, or an IPv6 address masked to the
/// configured prefix. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<SourceKey>() == 16);

/// A token bucket: `tokens` in units of `TOKEN` per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: u64,
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Bucket>() == 16);

/// Per-source rate state, in the LRU tracker. Updated without atomics: two CPUs racing on one
/// source may lose an increment, which only makes the limit slightly more generous.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub pkt: Bucket,
    pub syn: Bucket,
    /// Packets seen from this source since it was first tracked.
    pub packets: u64,
    pub bytes: u64,
    pub syns: u64,
    /// Packets of this source that were dropped.
    pub dropped: u64,
    /// A copy of the source's ban expiry (`BANS` holds the ban itself), so a tracked source
    /// costs one lookup per packet. Filled from `BANS` when the source is first tracked;
    /// userspace drops the tracker entry when it changes a ban, so the copy never goes stale.
    pub banned_until_ns: u64,
    /// The list verdict cached for this source (`reason::ALLOWED`, `reason::DENIED` or
    /// `reason::PASSED` for neither), valid while `list_gen == Config::lists_gen` and until
    /// `list_expires_ns` (0 = no expiry).
    pub list_gen: u64,
    pub list_expires_ns: u64,
    pub list_verdict: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SourceState>() == 96);

/// A ban, in its own hash map so that churn in the LRU tracker cannot evict it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ban {
    /// CLOCK_MONOTONIC time (`bpf_ktime_get_coarse_ns`) at which the ban ends.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC time at which the ban began.
    pub since_ns: u64,
    /// `reason::RATE_LIMITED` or `reason::SYN_LIMITED` (as u32).
    pub reason: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Ban>() == 24);

/// Sent through `GUARD_EVENTS` for each new ban.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEvent {
    pub source: SourceKey,
    pub since_ns: u64,
    pub expires_ns: u64,
    pub reason: u32,
    pub ifindex: u32,
}
const _: () = assert!(core::mem::size_of::<BanEvent>() == 40);

/// Per-interface verdict counters (per CPU in the kernel; summed by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [u64; reason::COUNT],
    pub bytes: [u64; reason::COUNT],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 128);

impl Counters {
    /// Packets seen: every reason but `WOULD_DROP`, which double-counts dry-run decisions.
    pub fn total_packets(&self) -> u64 {
        let mut sum = 0;
        let mut i = 0;
        while i < reason::WOULD_DROP {
            sum += self.packets[i];
            i += 1;
        }
        sum
    }

    pub fn total_bytes(&self) -> u64 {
        let mut sum = 0;
        let mut i = 0;
        while i < reason::WOULD_DROP {
            sum += self.bytes[i];
            i += 1;
        }
        sum
    }

    /// Adds `other` into `self` (summing CPUs or interfaces).
    pub fn add(&mut self, other: &Counters) {
        let mut i = 0;
        while i < reason::COUNT {
            self.packets[i] += other.packets[i];
            self.bytes[i] += other.bytes[i];
            i += 1;
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is #[repr(C)], Copy, made only of fixed-width integers and arrays of
    // them, with explicit padding, so every bit pattern is valid and there are no holes.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ListEntry {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::BanEvent {}
    unsafe impl aya::Pod for super::Counters {}
}

/// Credit units per packet. Credit accrues at `rate` units per nanosecond, so a rate in packets
/// per second needs no division on the refill.
pub const TOKEN: u64 = 1_000_000_000;

/// Largest rate or burst userspace may configure, so that `burst * TOKEN` fits in a u64.
pub const MAX_RATE: u64 = 1 << 32;

/// Nanoseconds an empty bucket takes to fill: `burst` packets at `rate` per second (`rate`
/// non-zero; a `burst` of 0 behaves as 1).
#[inline(always)]
pub const fn fill_ns(rate: u64, burst: u64) -> u64 {
    let burst = if burst == 0 { 1 } else { burst };
    burst * TOKEN / rate
}

/// Refills `bucket` for the time since it was last used, then takes one packet's token.
/// Returns true if the packet conforms. `rate` is per second and must be non-zero; a bucket
/// holds at most `burst` packets (a `burst` of 0 behaves as 1); `fill` is
/// `fill_ns(rate, burst)`, passed in so that the per-packet path never divides.
///
/// Exact for any elapsed time: past `fill` the bucket is simply full, and below it
/// `elapsed * rate <= burst * TOKEN`, which cannot overflow. A clock that appears to go
/// backwards (two CPUs racing on one source) refills nothing.
#[inline(always)]
pub fn take_token(bucket: &mut Bucket, now_ns: u64, rate: u64, burst: u64, fill: u64) -> bool {
    let burst = if burst == 0 { 1 } else { burst };
    let cap = burst * TOKEN;
    let elapsed = now_ns.saturating_sub(bucket.last_ns);
    let tokens = if elapsed >= fill {
        cap
    } else {
        let t = bucket.tokens + elapsed * rate;
        if t > cap { cap } else { t }
    };
    if now_ns > bucket.last_ns {
        bucket.last_ns = now_ns;
    }
    if tokens >= TOKEN {
        bucket.tokens = tokens - TOKEN;
        true
    } else {
        bucket.tokens = tokens;
        false
    }
}

/// A new bucket, full, as a source first seen at `now_ns` gets.
#[inline(always)]
pub fn full_bucket(now_ns: u64, burst: u64) -> Bucket {
    let burst = if burst == 0 { 1 } else { burst };
    Bucket {
        tokens: burst * TOKEN,
        last_ns: now_ns,
    }
}

/// The leading `bits` ones of a u64 (`bits` is clamped to 0..=64).
#[inline(always)]
pub const fn leading_mask(bits: u32) -> u64 {
    if bits == 0 {
        0
    } else if bits >= 64 {
        u64::MAX
    } else {
        u64::MAX << (64 - bits)
    }
}

/// The tracker key of an IPv4 source (network order), masked to `prefix_len` (0 means 32).
#[inline(always)]
pub fn source_key_v4(addr: [u8; 4], prefix_len: u32) -> SourceKey {
    let prefix_len = if prefix_len == 0 || prefix_len > 32 {
        32
    } else {
        prefix_len
    };
    let masked = u32::from_be_bytes(addr) & (leading_mask(prefix_len) >> 32) as u32;
    let a = masked.to_be_bytes();
    SourceKey {
        addr: [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ],
    }
}

/// The tracker key of an IPv6 source (network order), masked to `prefix_len` (0 means 64).
#[inline(always)]
pub fn source_key_v6(addr: [u8; 16], prefix_len: u32) -> SourceKey {
    let prefix_len = if prefix_len == 0 || prefix_len > 128 {
        64
    } else {
        prefix_len
    };
    let (hi_bits, lo_bits) = if prefix_len >= 64 {
        (64, prefix_len - 64)
    } else {
        (prefix_len, 0)
    };
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]) & leading_mask(hi_bits);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]) & leading_mask(lo_bits);
    let h = hi.to_be_bytes();
    let l = lo.to_be_bytes();
    SourceKey {
        addr: [
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
            l[6], l[7],
        ],
    }
}

/// Is `addr` an IPv4-mapped IPv6 address (`::ffff:0:0/96`)? Never a valid source on the wire
/// (RFC 4291 2.5.5.2; Linux drops it in ip6_rcv_core), and its tracker key would be an IPv4
/// source's, so the program never tracks one.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]) == 0
        && addr[8] == 0
        && addr[9] == 0
        && addr[10] == 0xff
        && addr[11] == 0xff
}

impl SourceKey {
    /// The IPv4 address if this key is `::ffff:a.b.c.d`.
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let a = &self.addr;
        if a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff {
            Some([a[12], a[13], a[14], a[15]])
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn full_bucket_allows_exactly_burst_packets_at_one_instant() {
        let mut b = full_bucket(1_000, 5);
        let allowed = (0..10)
            .filter(|_| take_token(&mut b, 1_000, 10, 5, fill_ns(10, 5)))
            .count();
        assert_eq!(allowed, 5);
    }

    #[test]
    fn bucket_refills_at_rate() {
        let mut b = full_bucket(0, 2);
        assert!(take_token(&mut b, 0, 10, 2, fill_ns(10, 2)));
        assert!(take_token(&mut b, 0, 10, 2, fill_ns(10, 2)));
        assert!(!take_token(&mut b, 0, 10, 2, fill_ns(10, 2)));
        // 10 pps: one token every 100 ms.
        assert!(!take_token(&mut b, SEC / 10 - 1, 10, 2, fill_ns(10, 2)));
        assert!(take_token(&mut b, SEC / 10, 10, 2, fill_ns(10, 2)));
        assert!(!take_token(&mut b, SEC / 10, 10, 2, fill_ns(10, 2)));
    }

    #[test]
    fn refill_never_exceeds_burst() {
        let mut b = full_bucket(0, 3);
        for _ in 0..3 {
            assert!(take_token(&mut b, 0, 1000, 3, fill_ns(1000, 3)));
        }
        // A long idle refills to the burst, not beyond.
        let later = 3600 * SEC;
        let allowed = (0..10)
            .filter(|_| take_token(&mut b, later, 1000, 3, fill_ns(1000, 3)))
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn huge_elapsed_and_rates_do_not_overflow() {
        let mut b = Bucket {
            tokens: 0,
            last_ns: 0,
        };
        assert!(take_token(
            &mut b,
            u64::MAX,
            MAX_RATE,
            MAX_RATE,
            fill_ns(MAX_RATE, MAX_RATE)
        ));
        assert_eq!(b.tokens, MAX_RATE * TOKEN - TOKEN);
        let mut b = Bucket {
            tokens: 0,
            last_ns: 0,
        };
        assert!(take_token(&mut b, u64::MAX / 2, 1, 1, fill_ns(1, 1)));
    }

    #[test]
    fn clock_going_backwards_refills_nothing() {
        let mut b = full_bucket(10 * SEC, 1);
        assert!(take_token(&mut b, 10 * SEC, 1, 1, fill_ns(1, 1)));
        assert!(!take_token(&mut b, 5 * SEC, 1, 1, fill_ns(1, 1)));
        assert_eq!(b.last_ns, 10 * SEC);
    }

    #[test]
    fn sustained_rate_matches_configuration() {
        // 1000 pps for 10 s with packets every 100 us (10,000 pps offered): ~10,000 + burst.
        let mut b = full_bucket(0, 50);
        let allowed = (0..100_000u64)
            .filter(|i| take_token(&mut b, i * 100_000, 1000, 50, fill_ns(1000, 50)))
            .count();
        assert!((10_000..=10_051).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn leading_mask_edges() {
        assert_eq!(leading_mask(0), 0);
        assert_eq!(leading_mask(1), 1 << 63);
        assert_eq!(leading_mask(64), u64::MAX);
        assert_eq!(leading_mask(99), u64::MAX);
    }

    #[test]
    fn v4_key_is_v4_mapped_and_masked() {
        let k = source_key_v4([198, 18, 7, 9], 0);
        assert_eq!(k.as_v4(), Some([198, 18, 7, 9]));
        assert_eq!(k.addr[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(
            source_key_v4([198, 18, 7, 9], 24).as_v4(),
            Some([198, 18, 7, 0])
        );
        assert_eq!(
            source_key_v4([198, 18, 7, 9], 1).as_v4(),
            Some([128, 0, 0, 0])
        );
    }

    #[test]
    fn v6_sources_in_one_slash64_share_a_key() {
        let a = [0xfd, 0, 0, 1, 0, 2, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut b = a;
        b[15] = 99;
        b[8] = 77;
        assert_eq!(source_key_v6(a, 0), source_key_v6(b, 0));
        assert_eq!(source_key_v6(a, 64), source_key_v6(b, 64));
        let mut c = a;
        c[7] = 4;
        assert_ne!(source_key_v6(a, 64), source_key_v6(c, 64));
        // /128 keeps every bit; /56 drops the last byte of the /64.
        assert_eq!(source_key_v6(a, 128).addr, a);
        assert_eq!(source_key_v6(a, 56).addr[7], 0);
        assert_eq!(source_key_v6(a, 56).addr[6], 0);
        assert_eq!(source_key_v6(a, 56).addr[5], 2);
        assert_eq!(source_key_v6(a, 72).addr[8], 1);
        assert_eq!(source_key_v6(a, 72).addr[9], 0);
        assert_eq!(source_key_v6(a, 64).as_v4(), None);
    }

    #[test]
    fn list_hints_only_ever_skip_known_empty_lists() {
        // Never written: look everything up.
        assert!(list_may_match(0, FLAG_HAS_DENY_V4));
        assert!(list_may_match(FLAG_DRY_RUN, FLAG_HAS_DENY_V4));
        // Maintained: skip the empty ones only.
        assert!(!list_may_match(FLAG_LIST_HINTS, FLAG_HAS_DENY_V4));
        assert!(list_may_match(
            FLAG_LIST_HINTS | FLAG_HAS_DENY_V4,
            FLAG_HAS_DENY_V4
        ));
        assert!(!list_may_match(
            FLAG_LIST_HINTS | FLAG_HAS_DENY_V4,
            FLAG_HAS_ALLOW_V4
        ));
    }

    #[test]
    fn v4_mapped_sources_are_recognised() {
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 7, 9];
        assert!(is_v4_mapped(&mapped));
        let mut other = mapped;
        other[9] = 1;
        assert!(!is_v4_mapped(&other));
        assert!(!is_v4_mapped(&[
            0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4
        ]));
        // The collision it prevents: with a /128 tracking prefix the keys are equal.
        assert_eq!(
            source_key_v6(mapped, 128),
            source_key_v4([198, 18, 7, 9], 32)
        );
    }

    #[test]
    fn counters_total_excludes_would_drop() {
        let mut c = Counters::default();
        c.packets[reason::DENIED] = 3;
        c.packets[reason::WOULD_DROP] = 3;
        c.packets[reason::PASSED] = 2;
        c.bytes[reason::PASSED] = 100;
        assert_eq!(c.total_packets(), 5);
        assert_eq!(c.total_bytes(), 100);
        let mut d = c;
        d.add(&c);
        assert_eq!(d.total_packets(), 10);
    }
}
