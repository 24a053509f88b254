//! Types that cross the kernel/user boundary, the map names, and the pure logic both sides
//! need (token-bucket arithmetic, prefix masking), unit-tested on the host.
#![no_std]

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "guard";

/// Map names, as the object file spells them (at most 15 bytes: the kernel's map names hold
/// 16 with the NUL). Userspace never spells a map name itself.
pub mod map_names {
    /// `u32 (0 or 1) -> Config`: two slots. Written by userspace (the one not in use), read
    /// once per packet through `CONFIG_SLOT`.
    pub const CONFIG: &str = "GUARD_CONFIG";
    /// `u32 (0) -> u32`: which `CONFIG` slot is current. Written by userspace after the slot.
    pub const CONFIG_SLOT: &str = "GUARD_CFG_SLOT";
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
    /// LPM `Key<[u8; 4]> -> ListEntry`: prefix bans (escalated by the daemon). Written by
    /// userspace, read per packet like the lists (after the deny list).
    pub const PREFIX_BANS_V4: &str = "GUARD_PBANS_V4";
    /// LPM `Key<[u8; 16]> -> ListEntry`: IPv6 prefix bans.
    pub const PREFIX_BANS_V6: &str = "GUARD_PBANS_V6";
    /// LRU `SourceKey -> SourceState`. Written per packet, read by userspace (`guard top`).
    pub const SOURCES: &str = "GUARD_SOURCES";
    /// Hash `SourceKey -> Ban`. Written per packet (new bans) and by userspace (restore, unban,
    /// expiry), read per packet.
    pub const BANS: &str = "GUARD_BANS";
    /// Ring buffer of `BanEvent`. Written per new ban, read by userspace.
    pub const EVENTS: &str = "GUARD_EVENTS";
    /// Hash `SourceKey -> Known`: sources in good standing. Written by the program (promotion,
    /// refresh) and by userspace (expiry, allow list); read on a tracker miss.
    pub const KNOWN: &str = "GUARD_KNOWN";
    /// LRU `SourceKey (masked to the prefix) -> PrefixState`: aggregate buckets per prefix.
    /// Written per packet of an unknown source; read by userspace.
    pub const PREFIXES: &str = "GUARD_PREFIXES";
    /// `u32 (protocol slot * 65536 + port) -> u32 service slot` (0: no service). Written by
    /// userspace, read per packet.
    pub const SERVICE_PORTS: &str = "GUARD_SVC_PORTS";
    /// `u32 service slot -> Service`: attack mode and newcomer budget. Written by userspace
    /// every second, read per packet.
    pub const SERVICES: &str = "GUARD_SERVICES";
    /// Per-CPU `u32 service slot -> ServiceStats`. Written per packet, read by userspace.
    pub const SERVICE_STATS: &str = "GUARD_SVC_STATS";
    /// Per-CPU `u32 (0) -> CpuState`: the front stage's sketch and the malformed budget.
    /// Written per packet, never read by userspace.
    pub const CPU_STATE: &str = "GUARD_CPU";
    /// Array `u32 -> u64`, memory-mapped (`BPF_F_MMAPABLE`): the seen filter's two halves
    /// (`seen`). Bits set by the program and by userspace with atomic ORs; rebuilt by userspace.
    pub const SEEN: &str = "GUARD_SEEN";

    /// Per-CPU `u32 (0) -> the program's scratch` (the packet being judged). The only map
    /// that is never pinned (nor in `ALL`): it holds nothing between packets.
    pub const SCRATCH: &str = "GUARD_SCRATCH";
    /// Program array `0 -> guard_cookie`: the SYN-cookie stage, tail-called by the program.
    /// Pinned (a program array no file or process holds is emptied); the daemon puts the
    /// stage of its own load in at each start (none on kernels without the syncookie
    /// helpers, where cookie services pass their SYNs to the kernel).
    pub const COOKIE_PROGS: &str = "GUARD_COOKIE";
    /// Program array `0 -> the operator's next program` (`[datapath] next`): tail-called for
    /// every packet the guard passes, so the guard can sit in front of a load balancer. Empty
    /// (no next program): passed packets go to the kernel. Pinned, like `COOKIE_PROGS`.
    pub const NEXT_PROGS: &str = "GUARD_NEXT";
    /// The programs the object holds besides `PROGRAM_NAME`.
    pub const COOKIE_PROGRAM: &str = "guard_cookie";
    /// The guard as a component of libxdp's dispatcher: the same pipeline without tail calls,
    /// loaded as an freplace extension of a dispatcher slot.
    pub const EXT_PROGRAM: &str = "guard_ext";
    /// The TC ingress program that hands a cookie-validated ACK to the listener.
    pub const TC_PROGRAM: &str = "guard_tc";

    /// Every map that is pinned, in a fixed order (pinning, compatibility checks).
    pub const ALL: [&str; 21] = [
        CONFIG,
        CONFIG_SLOT,
        STATS,
        ALLOW_V4,
        ALLOW_V6,
        DENY_V4,
        DENY_V6,
        PREFIX_BANS_V4,
        PREFIX_BANS_V6,
        SOURCES,
        BANS,
        EVENTS,
        KNOWN,
        PREFIXES,
        SERVICE_PORTS,
        SERVICES,
        SERVICE_STATS,
        CPU_STATE,
        COOKIE_PROGS,
        SEEN,
        NEXT_PROGS,
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
    pub const PREFIX_BANS_V4: u32 = 1 << 14;
    pub const PREFIX_BANS_V6: u32 = 1 << 14;
    pub const SOURCES: u32 = 1 << 17;
    pub const BANS: u32 = 1 << 16;
    /// Bytes.
    pub const EVENTS: u32 = 1 << 18;
    pub const KNOWN: u32 = 1 << 17;
    pub const PREFIXES: u32 = 1 << 16;
    /// Service slots, slot 0 included (everything that matches no configured service).
    pub const SERVICES: u32 = 64;
    /// One slot per (protocol, port): TCP ports first, then UDP.
    pub const SERVICE_PORTS: u32 = 2 << 16;
    /// Words of the seen filter, both halves.
    pub const SEEN: u32 = 2 * super::seen::WORDS;
}

/// Version of the map layout and value types. Pinned state from another version is not reused
/// (its links are, so an upgrade never leaves an interface unprotected).
pub const LAYOUT_VERSION: u32 = 2;

/// Verdict reasons: indexes into `Counters`.
pub mod reason {
    /// No rule matched; the packet passed.
    pub const PASSED: usize = 0;
    /// The source is in the allow list.
    pub const ALLOWED: usize = 1;
    /// The source is in the deny list.
    pub const DENIED: usize = 2;
    /// The source (or its prefix) is banned.
    pub const BANNED: usize = 3;
    /// The source went over its packet rate.
    pub const RATE_LIMITED: usize = 4;
    /// The source went over its SYN rate.
    pub const SYN_LIMITED: usize = 5;
    /// The source's prefix went over its aggregate rate.
    pub const PREFIX_LIMITED: usize = 6;
    /// An unknown source of a service under attack, over the service's newcomer budget.
    pub const NEWCOMER_LIMITED: usize = 7;
    /// Malformed but passed: judged by its source and passed, or with no readable source and
    /// within the global budget for such frames.
    pub const MALFORMED: usize = 8;
    /// No readable source, over the global budget for such frames: dropped.
    pub const MALFORMED_LIMITED: usize = 9;
    /// A source that is never valid on the wire (an IPv4-mapped IPv6 address): dropped.
    pub const BAD_SOURCE: usize = 10;
    /// A SYN answered in XDP with a SYN cookie (XDP_TX).
    pub const COOKIE_SENT: usize = 11;
    /// An ACK carrying a valid SYN cookie: passed, and its source made known.
    pub const COOKIE_VALID: usize = 12;
    /// An ACK to a cookie-protected service with an invalid cookie: dropped.
    pub const COOKIE_INVALID: usize = 13;
    /// Dry-run: a packet that would have been dropped, counted here as well as under its reason.
    pub const WOULD_DROP: usize = 14;
    /// Number of counter slots.
    pub const COUNT: usize = 15;
    /// Names as shown to operators and in metrics labels.
    pub const NAMES: [&str; COUNT] = [
        "passed",
        "allowed",
        "denied",
        "banned",
        "rate_limited",
        "syn_limited",
        "prefix_limited",
        "newcomer_limited",
        "malformed",
        "malformed_limited",
        "bad_source",
        "cookie_sent",
        "cookie_valid",
        "cookie_invalid",
        "would_drop",
    ];
    /// True for the reasons that drop the packet (outside dry-run).
    pub const fn drops(reason: usize) -> bool {
        matches!(
            reason,
            DENIED
                | BANNED
                | RATE_LIMITED
                | SYN_LIMITED
                | PREFIX_LIMITED
                | NEWCOMER_LIMITED
                | MALFORMED_LIMITED
                | BAD_SOURCE
                | COOKIE_INVALID
        )
    }
    /// A `Ban::reason` for a prefix ban the daemon escalated (not a counter slot).
    pub const BAN_PREFIX: u32 = 64;
    /// A `Ban::reason` for a source the load balancer kept refusing (`[[escalate.haproxy]]`),
    /// banned by the daemon (not a counter slot): shown as [`BAN_L7_HAPROXY_NAME`].
    pub const BAN_L7_HAPROXY: u32 = 65;
    /// How `guard bans` and the state file name [`BAN_L7_HAPROXY`].
    pub const BAN_L7_HAPROXY_NAME: &str = "l7:haproxy";
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
/// `Config::flags`: every IPv4 list entry (and prefix ban) is at most as long as the IPv4
/// tracking prefix, so all addresses of one tracked source share one list verdict, which the
/// tracker entry may cache (tagged with `Config::lists_gen`).
pub const FLAG_CACHE_V4: u32 = 1 << 6;
/// `Config::flags`: likewise for IPv6.
pub const FLAG_CACHE_V6: u32 = 1 << 7;
/// `Config::flags`: the IPv4 prefix-ban trie has entries.
pub const FLAG_HAS_PBAN_V4: u32 = 1 << 8;
pub const FLAG_HAS_PBAN_V6: u32 = 1 << 9;
/// `Config::flags`: services are configured (`SERVICE_PORTS` is worth a lookup).
pub const FLAG_SERVICES: u32 = 1 << 10;
/// `Config::flags`: the seen filter (`seen`) is built and covers every tracked, banned and
/// known source: a source it has never seen skips those three lookups. Without it the program
/// looks them all up.
pub const FLAG_SEEN_FILTER: u32 = 1 << 11;
/// `Config::flags`: the seen filter's second half is the one to read (the first without).
pub const FLAG_SEEN_HALF: u32 = 1 << 12;
/// `Config::flags`: `GUARD_NEXT` holds the operator's next program (`[datapath] next`): what
/// the guard passes is tail-called to it. Without it no tail call is tried.
pub const FLAG_NEXT: u32 = 1 << 13;
/// The bits userspace derives from the lists themselves, not from the operator's config.
pub const LIST_HINT_BITS: u32 = FLAG_LIST_HINTS
    | FLAG_HAS_ALLOW_V4
    | FLAG_HAS_ALLOW_V6
    | FLAG_HAS_DENY_V4
    | FLAG_HAS_DENY_V6
    | FLAG_CACHE_V4
    | FLAG_CACHE_V6
    | FLAG_HAS_PBAN_V4
    | FLAG_HAS_PBAN_V6;

/// The seen filter: a blocked Bloom filter over the sources the tracker, `BANS` and `KNOWN`
/// hold, in two halves of `WORDS` 64-bit words (`GUARD_SEEN`). A source sets `BITS` bits of
/// one word (one cache line for the lookup); the program reads the half `FLAG_SEEN_HALF`
/// names and sets bits in both, before it inserts the source into any of the three maps, as
/// userspace does. Userspace rebuilds the other half from the maps now and then (dropping
/// sources they no longer hold) and flips. A clear bit means "in none of the three maps":
/// such a source (every packet of a spoofed flood) skips their lookups. A set bit is only a
/// maybe: the lookups follow.
pub mod seen {
    use super::SourceKey;

    /// Words per half: 2^17 (1 MiB), about 2.5 words per entry when all three maps are full
    /// (327,680 sources), so a never-seen source finds its 3 bits set about 0.2% of the time.
    pub const WORDS: u32 = 1 << 17;
    /// Bits a source sets in its word.
    pub const BITS: u32 = 3;

    /// The word (within a half) and the bits of `key`.
    #[inline(always)]
    pub fn slot(key: &SourceKey) -> (u32, u64) {
        let a = u64::from_ne_bytes([
            key.addr[0],
            key.addr[1],
            key.addr[2],
            key.addr[3],
            key.addr[4],
            key.addr[5],
            key.addr[6],
            key.addr[7],
        ]);
        let b = u64::from_ne_bytes([
            key.addr[8],
            key.addr[9],
            key.addr[10],
            key.addr[11],
            key.addr[12],
            key.addr[13],
            key.addr[14],
            key.addr[15],
        ]);
        // Two rounds of a multiply-xorshift mixer (splitmix64's finaliser).
        let mut h = a ^ b.rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15;
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
        let word = ((h >> 40) as u32) & (WORDS - 1);
        let bits = (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63)) | (1u64 << ((h >> 12) & 63));
        (word, bits)
    }
}

/// Should the program look `bit`'s list up under `flags`? Yes unless hints are maintained and
/// say the list is empty.
#[inline(always)]
pub const fn list_may_match(flags: u32, bit: u32) -> bool {
    flags & FLAG_LIST_HINTS == 0 || flags & bit != 0
}

/// Run-time limits and mode, in a `GUARD_CONFIG` slot. A zero rate turns that limit off, so an
/// unwritten config (all zero) fails open: no rate limits, the lists still apply.
///
/// The operator's figures (`pps`, `burst`, ...) are what userspace writes and reads back; the
/// program reads only the derived GCRA parameters (`*_interval_ns`, `*_tolerance_ns`), which
/// userspace computes with [`Gcra::new`] so the per-packet path never divides.
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
    /// The front stage: a never-seen source is tracked only once it has sent more than this
    /// many packets in one sketch window (about a second) on one CPU; 0 tracks at once.
    pub admit_packets: u32,
    /// Bumped by userspace on every change to the allow or deny lists or the prefix bans: a
    /// list verdict cached in a tracker entry under another generation is stale. Never 0
    /// once written.
    pub lists_gen: u64,
    /// A source tracked this long in good standing becomes known; 0: never by time alone.
    pub known_after_ns: u64,
    /// The aggregate prefix buckets: IPv4 prefix length (1..=32; 0 means 24).
    pub prefix_v4_len: u32,
    /// IPv6 prefix length (1..=128; 0 means 48).
    pub prefix_v6_len: u32,
    /// Packets per second per prefix (unknown sources only); 0 = off.
    pub prefix_pps: u64,
    pub prefix_burst: u64,
    /// Frames with no readable source, per second per CPU; 0 = unlimited.
    pub malformed_pps: u64,
    pub malformed_burst: u64,
    /// Derived by userspace: the per-source packet GCRA (interval 0 = unlimited).
    pub pkt_interval_ns: u64,
    pub pkt_tolerance_ns: u64,
    /// Derived: the per-source SYN GCRA.
    pub syn_interval_ns: u64,
    pub syn_tolerance_ns: u64,
    /// Derived: the per-prefix GCRA.
    pub prefix_interval_ns: u64,
    pub prefix_tolerance_ns: u64,
    /// Derived: the per-CPU malformed-frame GCRA.
    pub malformed_interval_ns: u64,
    pub malformed_tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Config>() == 176);

/// Value of the allow and deny tries (and of the prefix-ban tries).
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

/// Per-source rate state, in the LRU tracker. The two GCRA words are updated with
/// compare-and-swap, so flows of one source on several CPUs never make a limit stricter than
/// configured; the statistics are plain adds (a race may lose an increment of a count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    /// GCRA theoretical arrival time of the next packet (ns), for the packet limit.
    pub pkt_tat: u64,
    /// Likewise for the SYN limit.
    pub syn_tat: u64,
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
    /// The list verdict cached for this source (`reason::ALLOWED`, `reason::DENIED`,
    /// `reason::BANNED` for a prefix ban, or `reason::PASSED` for none), valid while
    /// `list_gen == Config::lists_gen` and until `list_expires_ns` (0 = no expiry).
    pub list_gen: u64,
    pub list_expires_ns: u64,
    pub list_verdict: u32,
    /// 1 if the source is in `KNOWN` (a cached copy; userspace forgets the tracker entry when
    /// it removes a known source).
    pub known: u32,
    /// In good standing (tracked, never dropped) since this time; every drop restarts it.
    pub good_since_ns: u64,
    /// When the program last refreshed this source's `KNOWN` entry (known sources), or last
    /// looked for its TCP connection (unknown ones).
    pub known_seen_ns: u64,
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

/// A known source: one that was in good standing for `Config::known_after_ns`, completed a TCP
/// handshake the program saw, or is allow-listed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// CLOCK_MONOTONIC time at which it became known.
    pub since_ns: u64,
    /// CLOCK_MONOTONIC time it was last seen (refreshed at most once a second).
    pub last_ns: u64,
    /// How it became known: a `known_by` value.
    pub how: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Known>() == 24);

/// `Known::how`.
pub mod known_by {
    /// Good standing for `known_after_secs`.
    pub const TIME: u32 = 1;
    /// A TCP connection the host accepted (the program found it established).
    pub const HANDSHAKE: u32 = 2;
    /// A valid SYN cookie.
    pub const COOKIE: u32 = 3;
    /// Put there by the daemon (restored from the state file, or allow-listed).
    pub const DAEMON: u32 = 4;
    pub const NAMES: [&str; 5] = [
        "?",
        "good standing",
        "tcp handshake",
        "syn cookie",
        "daemon",
    ];
}

/// An aggregate bucket for one prefix (`/24`, `/48` by default) of unknown sources.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixState {
    /// GCRA theoretical arrival time (ns), updated with compare-and-swap.
    pub tat: u64,
    pub packets: u64,
    pub dropped: u64,
}
const _: () = assert!(core::mem::size_of::<PrefixState>() == 24);

/// `Service::flags`: the service is under attack: unknown sources share the newcomer budget.
pub const SERVICE_UNDER_ATTACK: u32 = 1;
/// `Service::flags`: the service is a TCP service (handshakes to it make sources known).
pub const SERVICE_TCP: u32 = 1 << 1;
/// `Service::flags`: SYNs from sources that are not known are answered in XDP with a SYN
/// cookie (set while the service is under attack with `syn_cookies = "auto"`, or always with
/// `"on"`).
pub const SERVICE_COOKIES: u32 = 1 << 2;

/// The TC stage's call of the kfunc `bpf_sk_assign_tcp_reqsk`, as the object holds it: a
/// `call` with `src_reg` 2 (BPF_PSEUDO_KFUNC_CALL) and a placeholder id (`0x7eadbeef`), whose
/// last four bytes the loader replaces with the function's BTF id in the running kernel.
pub const KFUNC_CALL_PLACEHOLDER: [u8; 8] = [0x85, 0x20, 0x00, 0x00, 0xef, 0xbe, 0xad, 0x7e];

/// The window scale the guard's SYN-ACKs announce, and the TC stage gives the listener: the
/// server then never offers more than 64 KiB << 7 = 8 MiB of window to a cookie client.
pub const COOKIE_WSCALE: u8 = 7;
/// The MSS the guard's SYN-ACKs announce (a 1500-byte MTU), IPv4 and IPv6.
pub const COOKIE_MSS_V4: u16 = 1460;
pub const COOKIE_MSS_V6: u16 = 1440;
/// The kernel's SYN-cookie MSS tables (net/ipv4/syncookies.c, net/ipv6/syncookies.c), by the
/// index the cookie encodes.
pub const COOKIE_MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
pub const COOKIE_MSS_TABLE_V6: [u16; 4] = [1220, 1420, 1440, 8940];

/// The TSval of a cookie SYN-ACK, as the kernel's `cookie_init_timestamp` makes it: the low 6
/// bits carry the client's window scale (0xf: none) and SACK, and the value is never in the
/// future of `now_ms` (`tcp_clock_ms`).
#[inline(always)]
pub const fn cookie_tsval(now_ms: u64, wscale: u8, sack: bool) -> u32 {
    // TCP timestamps are 32-bit and wrap, as the kernel's do.
    let now = now_ms as u32;
    let mut ts = (now & !63) | (wscale as u32 & 0xf);
    if sack {
        ts |= 1 << 4;
    }
    if ts > now {
        ts = ts.wrapping_sub(64);
    }
    ts
}

/// The client's window scale and SACK from the TSecr of its ACK (the TSval we sent back):
/// `None` for no window scaling.
#[inline(always)]
pub const fn cookie_ts_options(tsecr: u32) -> (Option<u8>, bool) {
    let wscale = (tsecr & 0xf) as u8;
    (
        if wscale == 0xf {
            None
        } else if wscale > 14 {
            Some(14)
        } else {
            Some(wscale)
        },
        tsecr & (1 << 4) != 0,
    )
}

/// A service slot's mode, written by userspace every second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// `SERVICE_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// The attack mode holds until this CLOCK_MONOTONIC time unless the daemon renews it, so a
    /// daemon that dies never leaves a service in attack mode for good.
    pub attack_until_ns: u64,
    /// The newcomer budget per CPU, as a GCRA (interval 0: no budget, every newcomer dropped).
    pub newcomer_interval_ns: u64,
    pub newcomer_tolerance_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Service>() == 32);

/// Per-CPU counts of one service slot, and its newcomer bucket on that CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    pub packets: u64,
    pub bytes: u64,
    /// TCP SYNs without ACK.
    pub syns: u64,
    /// Packets of unknown sources passed within the newcomer budget under attack.
    pub newcomer_passed: u64,
    /// Packets of unknown sources over the newcomer budget (dropped, or would-drop).
    pub newcomer_dropped: u64,
    /// This CPU's newcomer GCRA (program state, not a count).
    pub newcomer_tat: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 48);

/// The front stage's count-min sketch: rows of cells, each `window << 24 | count`.
pub const SKETCH_ROWS: usize = 2;
pub const SKETCH_COLS: usize = 2048;

/// Per-CPU scratch state of the program.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CpuState {
    pub sketch: [u32; SKETCH_ROWS * SKETCH_COLS],
    /// Packets counted in the sketch this window, as a cell (`window << 24 | count`).
    pub total: u32,
    pub _pad: u32,
    /// The malformed-frame GCRA on this CPU.
    pub malformed_tat: u64,
}
const _: () = assert!(core::mem::size_of::<CpuState>() == 4 * SKETCH_ROWS * SKETCH_COLS + 16);

/// Per-interface verdict counters (per CPU in the kernel; summed by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [u64; reason::COUNT],
    pub bytes: [u64; reason::COUNT],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 16 * reason::COUNT);

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
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::BanEvent {}
    unsafe impl aya::Pod for super::Counters {}
    unsafe impl aya::Pod for super::Known {}
    unsafe impl aya::Pod for super::PrefixState {}
    unsafe impl aya::Pod for super::Service {}
    unsafe impl aya::Pod for super::ServiceStats {}
    unsafe impl aya::Pod for super::CpuState {}
}

/// Largest rate or burst userspace may configure.
pub const MAX_RATE: u64 = 1 << 32;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A rate limit as the generic cell rate algorithm (GCRA, ITU-T I.371) sees it: one packet
/// every `interval_ns`, with `tolerance_ns` of slack (a burst). Its state is one word, the
/// theoretical arrival time (TAT) of the next packet, so it can be updated with one
/// compare-and-swap: two CPUs can never erase each other's refills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gcra {
    /// 0: unlimited.
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl Gcra {
    /// `rate` packets per second with bursts of `burst` packets at once (a `burst` of 0
    /// behaves as 1); a `rate` of 0 is unlimited. The interval is rounded down (at most 1 ns
    /// short), so the limit is never stricter than configured.
    pub const fn new(rate: u64, burst: u64) -> Self {
        if rate == 0 {
            return Self {
                interval_ns: 0,
                tolerance_ns: 0,
            };
        }
        let interval = NS_PER_SEC / rate;
        let interval = if interval == 0 { 1 } else { interval };
        let burst = if burst == 0 { 1 } else { burst };
        Self {
            interval_ns: interval,
            tolerance_ns: interval.saturating_mul(burst - 1),
        }
    }

    /// Like [`Gcra::new`] for a fractional rate (a share of a budget); a rate below one
    /// packet in about 18 s (or not a number) gets no budget at all (`interval_ns` of
    /// `u64::MAX`: nothing conforms after the first packet of each such interval).
    pub fn from_f64(rate: f64, burst: u64) -> Self {
        let burst = if burst == 0 { 1 } else { burst };
        if rate.is_nan() || rate <= 0.0 {
            return Self {
                interval_ns: u64::MAX,
                tolerance_ns: 0,
            };
        }
        let interval = (NS_PER_SEC as f64 / rate).clamp(1.0, u64::MAX as f64) as u64;
        Self {
            interval_ns: interval,
            tolerance_ns: interval.saturating_mul(burst - 1),
        }
    }

    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }
}

/// One GCRA step: the TAT to store if a packet at `now_ns` conforms, or `None` if it does not
/// (the TAT is then left as it is). `interval_ns` must be non-zero.
///
/// The TAT never lags `now` (an idle source starts again from now with its full burst), and a
/// clock that appears to go backwards (two CPUs racing on one source) only makes the packet
/// look later, never earlier.
#[inline(always)]
pub fn gcra_next(tat: u64, now_ns: u64, interval_ns: u64, tolerance_ns: u64) -> Option<u64> {
    let t = if tat > now_ns { tat } else { now_ns };
    if t - now_ns > tolerance_ns {
        None
    } else {
        Some(t.saturating_add(interval_ns))
    }
}

/// The front stage's sketch: the cell index of `key` in each row (a different hash per row).
#[inline(always)]
pub fn sketch_slots(key: &SourceKey) -> [usize; SKETCH_ROWS] {
    let a = &key.addr;
    let hi = u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    // Two multiplicative hashes (odd 64-bit constants) of the folded key; the top bits are
    // the best mixed.
    let x = hi ^ lo.rotate_left(29);
    let h0 = (x ^ (x >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let h1 = (x ^ (x >> 27)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
    let shift = 64 - SKETCH_COLS.trailing_zeros();
    [
        (h0 >> shift) as usize & (SKETCH_COLS - 1),
        SKETCH_COLS + ((h1 >> shift) as usize & (SKETCH_COLS - 1)),
    ]
}

/// The sketch window of `now_ns`: about a second (2^30 ns), 8 bits of it.
#[inline(always)]
pub const fn sketch_window(now_ns: u64) -> u32 {
    ((now_ns >> 30) & 0xff) as u32
}

/// Counts one packet in a sketch cell for `window`; returns the new cell and its count. A cell
/// of another window starts again at 1.
#[inline(always)]
pub const fn sketch_bump(cell: u32, window: u32) -> (u32, u32) {
    let count = if cell >> 24 == window {
        let c = cell & 0x00ff_ffff;
        if c < 0x00ff_ffff { c + 1 } else { c }
    } else {
        1
    };
    ((window << 24) | count, count)
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

    /// Runs `n` packets at `step_ns` apart through one GCRA; returns how many conform.
    fn conforming(g: Gcra, start: u64, step_ns: u64, n: u64) -> usize {
        let mut tat = 0;
        (0..n)
            .filter(
                |i| match gcra_next(tat, start + i * step_ns, g.interval_ns, g.tolerance_ns) {
                    Some(t) => {
                        tat = t;
                        true
                    }
                    None => false,
                },
            )
            .count()
    }

    #[test]
    fn gcra_allows_exactly_burst_packets_at_one_instant() {
        assert_eq!(conforming(Gcra::new(10, 5), SEC, 0, 10), 5);
        assert_eq!(conforming(Gcra::new(10, 1), SEC, 0, 10), 1);
        // A burst of 0 behaves as 1.
        assert_eq!(conforming(Gcra::new(10, 0), SEC, 0, 10), 1);
    }

    #[test]
    fn gcra_refills_at_rate() {
        let g = Gcra::new(10, 2);
        let mut tat = 0;
        let mut step = |now| match gcra_next(tat, now, g.interval_ns, g.tolerance_ns) {
            Some(t) => {
                tat = t;
                true
            }
            None => false,
        };
        assert!(step(SEC));
        assert!(step(SEC));
        assert!(!step(SEC));
        // 10 pps: one packet every 100 ms.
        assert!(!step(SEC + SEC / 10 - 1));
        assert!(step(SEC + SEC / 10));
        assert!(!step(SEC + SEC / 10));
    }

    #[test]
    fn gcra_refill_never_exceeds_burst() {
        let g = Gcra::new(1000, 3);
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra_next(tat, SEC, g.interval_ns, g.tolerance_ns).unwrap();
        }
        // A long idle refills to the burst, not beyond.
        let later = 3600 * SEC;
        let mut allowed = 0;
        for _ in 0..10 {
            if let Some(t) = gcra_next(tat, later, g.interval_ns, g.tolerance_ns) {
                tat = t;
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3);
    }

    #[test]
    fn gcra_sustained_rate_matches_configuration() {
        // 1000 pps for 10 s with packets every 100 us (10,000 pps offered): ~10,000 + burst.
        let allowed = conforming(Gcra::new(1000, 50), SEC, 100_000, 100_000);
        assert!((10_000..=10_051).contains(&allowed), "allowed {allowed}");
    }

    #[test]
    fn gcra_extremes_do_not_overflow() {
        let g = Gcra::new(MAX_RATE, MAX_RATE);
        assert_eq!(g.interval_ns, 1);
        assert!(gcra_next(u64::MAX - 1, u64::MAX - 1, g.interval_ns, g.tolerance_ns).is_some());
        let g = Gcra::new(1, MAX_RATE);
        assert!(gcra_next(0, u64::MAX / 2, g.interval_ns, g.tolerance_ns).is_some());
        // No budget: the first packet of an interval conforms, the next never does.
        let none = Gcra::from_f64(0.0, 1);
        let t = gcra_next(0, SEC, none.interval_ns, none.tolerance_ns).unwrap();
        assert_eq!(t, u64::MAX);
        assert!(gcra_next(t, 100 * SEC, none.interval_ns, none.tolerance_ns).is_none());
    }

    #[test]
    fn gcra_is_never_stricter_than_configured() {
        // 3 pps: 333,333,333 ns, rounded down, so 3 packets always fit in a second.
        let g = Gcra::new(3, 1);
        assert_eq!(g.interval_ns, 333_333_333);
        assert_eq!(conforming(g, SEC, SEC / 3, 30), 30);
        let f = Gcra::from_f64(2.5, 1);
        assert_eq!(f.interval_ns, 400_000_000);
    }

    #[test]
    fn gcra_clock_going_backwards_gives_no_credit() {
        let g = Gcra::new(1, 1);
        let tat = gcra_next(0, 10 * SEC, g.interval_ns, g.tolerance_ns).unwrap();
        assert!(gcra_next(tat, 5 * SEC, g.interval_ns, g.tolerance_ns).is_none());
    }

    #[test]
    fn cookie_timestamps_carry_the_options_and_are_never_in_the_future() {
        for now in [0u64, 63, 64, 1_000_000, 1_000_007, u64::from(u32::MAX) + 5] {
            for (ws, sack) in [(7u8, true), (0xf, false), (0, true)] {
                let ts = cookie_tsval(now, ws, sack);
                let now32 = now as u32;
                assert!(ts <= now32 || now32 < 64, "{now} {ts}");
                let (w, s) = cookie_ts_options(ts);
                assert_eq!(w, if ws == 0xf { None } else { Some(ws) });
                assert_eq!(s, sack);
            }
        }
        assert_eq!(cookie_ts_options(0x3f), (None, true));
        assert_eq!(cookie_tsval(1_000_000, 7, false), 1_000_000 - 64 + 7);
    }

    #[test]
    fn sketch_cells_count_per_window_and_restart_in_a_new_one() {
        let (c, n) = sketch_bump(0, 7);
        assert_eq!(n, 1);
        let (c, n) = sketch_bump(c, 7);
        assert_eq!(n, 2);
        let (_, n) = sketch_bump(c, 8);
        assert_eq!(n, 1);
        let (c, n) = sketch_bump((7 << 24) | 0x00ff_ffff, 7);
        assert_eq!((c, n), ((7 << 24) | 0x00ff_ffff, 0x00ff_ffff));
        assert_eq!(sketch_window(3 << 30), 3);
        assert_eq!(sketch_window(256 << 30), 0);
    }

    #[test]
    fn sketch_slots_stay_in_their_rows_and_spread() {
        let mut seen = [0u32; SKETCH_ROWS * SKETCH_COLS];
        for i in 0..65_536u32 {
            let b = i.to_be_bytes();
            let key = source_key_v4([198, 18 + (b[1] & 1), b[2], b[3]], 32);
            let [r0, r1] = sketch_slots(&key);
            assert!(r0 < SKETCH_COLS, "{r0}");
            assert!((SKETCH_COLS..2 * SKETCH_COLS).contains(&r1), "{r1}");
            seen[r0] += 1;
            seen[r1] += 1;
        }
        // 65,536 keys over 2,048 cells a row: 32 each on average; no cell far off.
        let max = *seen.iter().max().unwrap();
        let min = *seen.iter().min().unwrap();
        assert!(max < 80 && min > 5, "cells hold {min}..{max} keys");
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
