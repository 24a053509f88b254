//! Property tests through BPF_PROG_TEST_RUN, each case from the state a fresh load leaves (so
//! that a shrunk failure reproduces): every run is counted under exactly one reason and gets
//! that reason's action; generated lists, bans and limits get the verdicts a host-side model of
//! the decision order predicts; and an allow-listed source is never dropped.
mod support;

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use guard::{
    cidr::Cidr,
    datapath::{Datapath, List},
    ebpf::KernelDatapath,
};
use guard_common::{
    Ban, Config, FLAG_DRY_RUN, ListEntry, SourceKey, reason, source_key_v4, source_key_v6,
};
use proptest::{prelude::*, test_runner::TestCaseError};
use support::{
    XDP_DROP, XDP_PASS, kernel_or_skip, limits,
    packet::{Builder, TCP_ACK, TCP_SYN},
    program_now_ns, totals,
};

const SEC: u64 = 1_000_000_000;

/// A freshly loaded program with empty maps, or `None` where kernel tests skip. A load costs
/// about a quarter of a second (most of it the verifier), so only the model's cases, whose lists
/// differ, load one each; the others share one per test and [`reset`] it.
fn fresh() -> Option<KernelDatapath> {
    kernel_or_skip("properties")
}

/// Cases of a property that loads a program per case: PROPTEST_CASES if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// The harshest setup: deny everything, limits of one packet, bans on; only the allow list
/// (198.18.0.0/16, fd00::/16) stands between a packet and a drop. Sources are tracked per
/// `v4_prefix_len` and `v6_prefix_len` (0: the defaults, /32 and /64).
fn hostile(v4_prefix_len: u32, v6_prefix_len: u32) -> Option<KernelDatapath> {
    let mut k = fresh()?;
    for c in ["0.0.0.0/0", "::/0"] {
        k.list_insert(List::Deny, &c.parse().unwrap(), ListEntry::default())
            .unwrap();
    }
    for c in ["198.18.0.0/16", "fd00::/16"] {
        k.list_insert(List::Allow, &c.parse().unwrap(), ListEntry::default())
            .unwrap();
    }
    k.set_config(&Config {
        v4_prefix_len,
        v6_prefix_len,
        ..limits(1, 1, 1, 1, 60)
    })
    .unwrap();
    Some(k)
}

/// Forgets what earlier cases left in a program whose lists and config no packet changes: every
/// tracked source (with the list verdict and ban it cached), every ban, the ban reports. That is
/// the state a fresh load of the same setup starts from, but for the counters, which only grow:
/// [`run_counted`] compares them before and after each run.
fn reset(k: &mut KernelDatapath) {
    for (key, _) in k.sources().expect("read the tracker") {
        // Lifting a ban also forgets the source's tracker entry, banned or not.
        k.ban_remove(&key).expect("forget a source");
    }
    for (key, _) in k.bans().expect("read the bans") {
        k.ban_remove(&key).expect("lift a ban");
    }
    k.take_events();
    assert!(
        k.sources().unwrap().is_empty() && k.bans().unwrap().is_empty(),
        "the reset left state behind"
    );
}

/// Runs `f` on this thread's [`hostile`] program for these prefixes, [`reset`] first; `None`
/// where kernel tests skip.
fn with_hostile<T>(
    v4_prefix_len: u32,
    v6_prefix_len: u32,
    f: impl FnOnce(&mut KernelDatapath) -> T,
) -> Option<T> {
    thread_local! {
        static LOADED: RefCell<Option<((u32, u32), KernelDatapath)>> = const { RefCell::new(None) };
    }
    let prefixes = (v4_prefix_len, v6_prefix_len);
    LOADED.with(|loaded| {
        let mut loaded = loaded.borrow_mut();
        if loaded.as_ref().is_none_or(|(p, _)| *p != prefixes) {
            *loaded = Some((prefixes, hostile(v4_prefix_len, v6_prefix_len)?));
        }
        let (_, k) = loaded.as_mut().expect("loaded above");
        reset(k);
        Some(f(k))
    })
}

/// Runs the program once on `packet` and checks that the counters account for the run:
/// exactly one reason counts one more packet, of the packet's length (and `would_drop` as well
/// for a drop in dry-run), and the action is the one that reason calls for. Returns the reason.
fn run_counted(k: &mut KernelDatapath, packet: &[u8]) -> Result<usize, TestCaseError> {
    let dry_run = k.config().expect("read the config").flags & FLAG_DRY_RUN != 0;
    let before = totals(k);
    let action = k.test_run(packet).expect("test run");
    let after = totals(k);
    let counted: Vec<usize> = (0..reason::WOULD_DROP)
        .filter(|r| after.packets[*r] != before.packets[*r])
        .collect();
    prop_assert_eq!(
        counted.len(),
        1,
        "one reason counts the run, not {:?}: {:02x?}",
        counted,
        packet
    );
    let why = counted[0];
    prop_assert_eq!(after.packets[why] - before.packets[why], 1);
    prop_assert_eq!(
        (
            after.bytes[why] - before.bytes[why],
            after.total_bytes() - before.total_bytes()
        ),
        (packet.len() as u64, packet.len() as u64),
        "bytes counted under {} and in all",
        reason::NAMES[why]
    );
    let would_drop = reason::drops(why) && dry_run;
    prop_assert_eq!(
        after.packets[reason::WOULD_DROP] - before.packets[reason::WOULD_DROP],
        u64::from(would_drop),
        "would_drop after {} (dry run: {})",
        reason::NAMES[why],
        dry_run
    );
    let want = if reason::drops(why) && !dry_run {
        XDP_DROP
    } else {
        XDP_PASS
    };
    let name = |a| match a {
        XDP_PASS => "XDP_PASS",
        XDP_DROP => "XDP_DROP",
        _ => "neither XDP_PASS nor XDP_DROP",
    };
    prop_assert_eq!(
        name(action),
        name(want),
        "action for a packet counted as {}: {:02x?}",
        reason::NAMES[why],
        packet
    );
    Ok(why)
}

/// A valid packet from an allow-listed source, and the offset where its source address ends.
fn allowed_packet() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (
        any::<bool>(),
        0usize..=2,
        0usize..=10,
        prop::collection::vec(prop::sample::select(vec![0u8, 43, 60]), 0..=4),
        prop::option::of(0u16..2000),
        prop::sample::select(vec![0u8, TCP_SYN, TCP_ACK, TCP_SYN | TCP_ACK]),
        any::<u16>(),
    )
        .prop_map(|(v6, vlans, opts, ext, frag, flags, host)| {
            let mut b = if v6 {
                Builder::v6(&format!("fd00:{host:x}::{host:x}"))
            } else {
                Builder::v4(&format!("198.18.{}.{}", host >> 8, host & 0xff)).options(opts * 4)
            };
            for i in 0..vlans {
                b = b.vlan(if i == 0 && vlans == 2 { 0x88a8 } else { 0x8100 });
            }
            if v6 {
                for e in ext {
                    b = b.ext(e);
                }
            }
            b = b.tcp(flags);
            if let Some(f) = frag {
                b = b.fragment(f);
            }
            let src_end = 14 + 4 * vlans + if v6 { 24 } else { 16 };
            (b.build(), src_end)
        })
}

// The host-side model of the decision order, over small pools of sources that share and split
// prefixes, so that generated lists overlap, nest and cover several sources.

const V4_POOL: [&str; 4] = ["198.18.0.1", "198.18.0.2", "198.18.1.1", "198.19.0.1"];
const V6_POOL: [&str; 4] = ["fd00::1", "fd00::2", "fd00:0:0:1::1", "fd01::1"];
const V4_PREFIXES: [u8; 6] = [0, 15, 16, 24, 31, 32];
const V6_PREFIXES: [u8; 7] = [0, 8, 16, 48, 64, 127, 128];

#[derive(Clone, Copy, Debug)]
struct Src {
    v6: bool,
    i: usize,
}

impl Src {
    fn addr(self) -> IpAddr {
        let pool = if self.v6 { V6_POOL } else { V4_POOL };
        pool[self.i].parse().unwrap()
    }
}

fn src() -> impl Strategy<Value = Src> {
    (any::<bool>(), 0..V4_POOL.len()).prop_map(|(v6, i)| Src { v6, i })
}

/// A list entry: a pool source under one of the family's prefix lengths, live or expired
/// (its expiry long past, so that the program looks past it).
#[derive(Clone, Copy, Debug)]
struct Rule {
    src: Src,
    prefix: usize,
    expired: bool,
}

impl Rule {
    fn cidr(self) -> Cidr {
        let prefix = if self.src.v6 {
            V6_PREFIXES[self.prefix % V6_PREFIXES.len()]
        } else {
            V4_PREFIXES[self.prefix % V4_PREFIXES.len()]
        };
        Cidr::new(self.src.addr(), prefix).unwrap()
    }

    fn entry(self) -> ListEntry {
        ListEntry::expiring(if self.expired { 1 } else { 0 })
    }
}

/// Up to `n` rules. At most the first three may be expired: the program looks past at most
/// three expired entries per lookup (README), and this model does not count hops.
fn rules(n: usize) -> impl Strategy<Value = Vec<Rule>> {
    prop::collection::vec((src(), 0..V6_PREFIXES.len(), any::<bool>()), 0..=n).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (src, prefix, expired))| Rule {
                src,
                prefix,
                expired: expired && i < 3,
            })
            .collect()
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Udp,
    Syn,
    Ack,
    SynAck,
}

impl Kind {
    fn packet(self, src: Src) -> Vec<u8> {
        let a = src.addr().to_string();
        let b = if src.v6 {
            Builder::v6(&a)
        } else {
            Builder::v4(&a)
        };
        match self {
            Kind::Udp => b,
            Kind::Syn => b.tcp(TCP_SYN),
            Kind::Ack => b.tcp(TCP_ACK),
            Kind::SynAck => b.tcp(TCP_SYN | TCP_ACK),
        }
        .build()
    }
}

/// One case: limits, lists, bans already in the map, then packets.
#[derive(Clone, Debug)]
struct Case {
    /// 0 or 1 packets per second: a bucket refills nothing within the case (see `model_case`).
    pps: u64,
    burst: u64,
    syn_pps: u64,
    syn_burst: u64,
    /// Bans of an hour, or none.
    bans_on: bool,
    dry_run: bool,
    v4_prefix_len: u32,
    v6_prefix_len: u32,
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    /// Bans in the map before the first packet: (source, still live).
    banned: Vec<(Src, bool)>,
    packets: Vec<(Src, Kind)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        (0u64..=1, 0u64..=3, 0u64..=1, 0u64..=3, any::<bool>()),
        (
            any::<bool>(),
            prop::sample::select(vec![0u32, 16, 24, 32]),
            prop::sample::select(vec![0u32, 48, 64, 128]),
        ),
        (rules(4), rules(5)),
        prop::collection::vec((src(), any::<bool>()), 0..=3),
        prop::collection::vec(
            (
                src(),
                prop::sample::select(vec![Kind::Udp, Kind::Syn, Kind::Ack, Kind::SynAck]),
            ),
            1..=24,
        ),
    )
        .prop_map(
            |(
                (pps, burst, syn_pps, syn_burst, bans_on),
                (dry_run, v4_prefix_len, v6_prefix_len),
                (allow, deny),
                banned,
                packets,
            )| Case {
                pps,
                burst,
                syn_pps,
                syn_burst,
                bans_on,
                dry_run,
                v4_prefix_len,
                v6_prefix_len,
                allow,
                deny,
                banned,
                packets,
            },
        )
}

impl Case {
    fn config(&self) -> Config {
        Config {
            flags: if self.dry_run { FLAG_DRY_RUN } else { 0 },
            v4_prefix_len: self.v4_prefix_len,
            v6_prefix_len: self.v6_prefix_len,
            ..limits(
                self.pps,
                self.burst,
                self.syn_pps,
                self.syn_burst,
                if self.bans_on { 3600 } else { 0 },
            )
        }
    }

    fn key(&self, src: Src) -> SourceKey {
        match src.addr() {
            IpAddr::V4(a) => source_key_v4(a.octets(), self.v4_prefix_len),
            IpAddr::V6(a) => source_key_v6(a.octets(), self.v6_prefix_len),
        }
    }

    /// Loads the case into `k`: limits, list entries in order, then the bans.
    fn load(&self, k: &mut KernelDatapath) {
        k.set_config(&self.config()).unwrap();
        for (list, rules) in [(List::Allow, &self.allow), (List::Deny, &self.deny)] {
            for r in rules {
                k.list_insert(list, &r.cidr(), r.entry()).unwrap();
            }
        }
        let now = program_now_ns();
        for (src, live) in &self.banned {
            let ban = Ban {
                expires_ns: if *live { now + 3600 * SEC } else { 1 },
                since_ns: 0,
                reason: reason::RATE_LIMITED as u32,
                _pad: 0,
            };
            k.ban_insert(&self.key(*src), &ban).unwrap();
        }
    }
}

/// What the model knows of a tracked source.
#[derive(Debug, Default)]
struct Tracked {
    /// Whole tokens left in the packet and SYN buckets.
    pkt: u64,
    syn: u64,
    banned: bool,
    /// The list verdict of its last packet.
    listed: usize,
    packets: u64,
    dropped: u64,
}

/// The decision order the program documents (allow, deny, ban, limits), on whole tokens: the
/// case's packets all fall within a second and rates are at most 1/s, so no bucket refills.
struct Model<'a> {
    case: &'a Case,
    allow: BTreeMap<Cidr, bool>,
    deny: BTreeMap<Cidr, bool>,
    tracked: HashMap<SourceKey, Tracked>,
    /// BANS: key -> still live (an expired ban stays until a packet reads it).
    bans: HashMap<SourceKey, bool>,
    new_bans: usize,
}

impl<'a> Model<'a> {
    fn new(case: &'a Case) -> Self {
        // A later insert of the same prefix replaces the earlier one, as in the tries.
        let list = |rules: &[Rule]| rules.iter().map(|r| (r.cidr(), r.expired)).collect();
        Self {
            case,
            allow: list(&case.allow),
            deny: list(&case.deny),
            tracked: HashMap::new(),
            bans: case
                .banned
                .iter()
                .map(|(s, live)| (case.key(*s), *live))
                .collect(),
            new_bans: 0,
        }
    }

    /// ALLOWED if a live allow entry covers `addr`, else DENIED if a live deny entry does,
    /// else PASSED (expired entries are looked past).
    fn listed(&self, addr: IpAddr) -> usize {
        let covered = |list: &BTreeMap<Cidr, bool>| {
            list.iter()
                .any(|(cidr, expired)| !expired && cidr.contains(addr))
        };
        if covered(&self.allow) {
            reason::ALLOWED
        } else if covered(&self.deny) {
            reason::DENIED
        } else {
            reason::PASSED
        }
    }

    /// Reads the ban of `key` as the program does: an expired one is removed.
    fn read_ban(&mut self, key: &SourceKey) -> bool {
        match self.bans.get(key) {
            Some(true) => true,
            Some(false) => {
                self.bans.remove(key);
                false
            }
            None => false,
        }
    }

    fn judge(&mut self, src: Src, kind: Kind) -> usize {
        let c = self.case;
        let listed = self.listed(src.addr());
        let key = c.key(src);
        // A listed source's ban is not read; it is when the source leaves the lists.
        let read = listed == reason::PASSED
            && self
                .tracked
                .get(&key)
                .is_none_or(|t| t.listed != reason::PASSED);
        let ban = read && self.read_ban(&key);
        let t = self.tracked.entry(key).or_insert_with(|| Tracked {
            pkt: c.burst.max(1),
            syn: c.syn_burst.max(1),
            ..Tracked::default()
        });
        if read {
            t.banned = ban;
        }
        t.listed = listed;
        t.packets += 1;
        if listed != reason::PASSED {
            if listed == reason::DENIED {
                t.dropped += 1;
            }
            return listed;
        }
        if t.banned {
            t.dropped += 1;
            return reason::BANNED;
        }
        let why = if c.pps != 0 && t.pkt == 0 {
            reason::RATE_LIMITED
        } else {
            if c.pps != 0 {
                t.pkt -= 1;
            }
            if kind == Kind::Syn && c.syn_pps != 0 {
                if t.syn == 0 {
                    reason::SYN_LIMITED
                } else {
                    t.syn -= 1;
                    reason::PASSED
                }
            } else {
                reason::PASSED
            }
        };
        if why != reason::PASSED {
            t.dropped += 1;
            if c.bans_on {
                t.banned = true;
                // A live ban in the map stays (and is not reported again); an expired one is
                // replaced.
                if self.bans.insert(key, true) != Some(true) {
                    self.new_bans += 1;
                }
            }
        }
        why
    }
}

/// Runs `case` on a fresh program and compares it with the model: each packet's reason (and
/// through `run_counted` its counters and action), then the bans, their reports and the
/// tracked sources. `Ok(false)` if the program's clock moved a second or more during the run,
/// when a bucket may have refilled and the model no longer applies.
fn model_case(case: &Case) -> Result<bool, TestCaseError> {
    let Some(mut k) = fresh() else {
        return Ok(true);
    };
    case.load(&mut k);
    let mut model = Model::new(case);
    let start = program_now_ns();
    let mut seen = Vec::new();
    for (i, (src, kind)) in case.packets.iter().enumerate() {
        let got = run_counted(&mut k, &kind.packet(*src))?;
        seen.push(got);
        let want = model.judge(*src, *kind);
        if program_now_ns() - start >= SEC {
            return Ok(false);
        }
        prop_assert_eq!(
            reason::NAMES[got],
            reason::NAMES[want],
            "packet {} ({:?} from {}); verdicts so far {:?}",
            i,
            kind,
            src.addr(),
            seen.iter().map(|r| reason::NAMES[*r]).collect::<Vec<_>>()
        );
    }
    let mut bans: Vec<SourceKey> = k.bans().unwrap().into_iter().map(|(k, _)| k).collect();
    bans.sort();
    let mut want_bans: Vec<SourceKey> = model.bans.keys().copied().collect();
    want_bans.sort();
    prop_assert_eq!(bans, want_bans, "the bans in the map");
    prop_assert_eq!(k.take_events().len(), model.new_bans, "ban events");
    let mut sources: Vec<(SourceKey, u64, u64)> = k
        .sources()
        .unwrap()
        .into_iter()
        .map(|(key, s)| (key, s.packets, s.dropped))
        .collect();
    sources.sort();
    let mut want_sources: Vec<(SourceKey, u64, u64)> = model
        .tracked
        .iter()
        .map(|(key, t)| (*key, t.packets, t.dropped))
        .collect();
    want_sources.sort();
    prop_assert_eq!(
        sources,
        want_sources,
        "tracked sources (key, packets, dropped)"
    );
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_are_counted_once_under_the_reason_whose_action_they_get(
        packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 14..256), 1..=4),
    ) {
        with_hostile(0, 0, |k| {
            for p in &packets {
                run_counted(k, p)?;
            }
            Ok::<(), TestCaseError>(())
        })
        .unwrap_or(Ok(()))?;
    }

    #[test]
    fn random_bytes_after_a_valid_ethertype_are_counted_once_under_the_reason_whose_action_they_get(
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8]),
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..=4),
    ) {
        with_hostile(0, 0, |k| {
            for body in &bodies {
                let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
                p.extend_from_slice(&ethertype.to_be_bytes());
                p.extend_from_slice(body);
                run_counted(k, &p)?;
            }
            Ok::<(), TestCaseError>(())
        })
        .unwrap_or(Ok(()))?;
    }

    #[test]
    fn an_allow_listed_source_is_never_dropped(
        (packet, src_end) in allowed_packet(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut p = packet;
        // Mutate anything after the source address, then cut the packet anywhere after it.
        let tail = p.len() - src_end;
        for (at, byte) in flips {
            let i = src_end + at.index(tail);
            p[i] = byte;
        }
        let len = src_end + cut.index(tail + 1);
        p.truncate(len);
        if let Some(why) = with_hostile(0, 0, |k| run_counted(k, &p)) {
            let why = why?;
            prop_assert!(
                !reason::drops(why),
                "allow-listed packet dropped as {}: {:02x?}",
                reason::NAMES[why],
                p
            );
        }
    }
}

proptest! {
    // A program per case (its lists differ): 64 cases take about 20 s.
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn verdicts_follow_the_decision_order_allow_deny_ban_limits(case in case()) {
        // A second of the program's clock within one case is a stall of the machine: run the
        // case again on a fresh program rather than compare it with a model it left.
        let mut attempts = 0;
        while !model_case(&case)? {
            attempts += 1;
            prop_assert!(attempts < 5, "every run of the case took a second or more");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_ipv6_source_can_spend_an_allow_listed_ipv4_sources_state(
        host in any::<u16>(),
        v6_first in 0usize..6,
    ) {
        let v4 = format!("198.18.{}.{}", host >> 8, host & 0xff);
        // IPv4 tracked per /24, IPv6 per /128: the widest and narrowest keys.
        let last = with_hostile(24, 128, |k| {
            // Its IPv4-mapped twin, and an IPv6 neighbour, flood first under 1 pps limits.
            for src in [format!("::ffff:{v4}"), format!("fd01::{host:x}")] {
                let p = Builder::v6(&src).build();
                for _ in 0..v6_first {
                    run_counted(k, &p)?;
                }
            }
            run_counted(k, &Builder::v4(&v4).build())
        });
        if let Some(why) = last {
            prop_assert_eq!(reason::NAMES[why?], "allowed", "allow-listed {} not allowed", v4);
        }
    }
}

#[test]
fn the_hostile_setup_does_drop_unlisted_sources() {
    // Guards the properties above against passing for the wrong reason.
    let Some(mut k) = hostile(0, 0) else {
        return;
    };
    assert_eq!(
        k.test_run(&Builder::v4("198.19.0.9").build()).unwrap(),
        XDP_DROP
    );
    assert_eq!(
        k.test_run(&Builder::v6("fd01::9").build()).unwrap(),
        XDP_DROP
    );
}
