//! Packet fixtures through BPF_PROG_TEST_RUN: the real XDP program, real maps, each case
//! asserting the verdict and the counters it leaves.
mod support;

use guard::{
    cidr::Cidr,
    datapath::{Datapath, List},
    ebpf::KernelDatapath,
};
use guard_common::{Ban, Config, FLAG_DRY_RUN, ListEntry, reason, source_key_v4, source_key_v6};
use support::{
    XDP_DROP, XDP_PASS, kernel_or_skip, limits,
    packet::{Builder, TCP_ACK, TCP_SYN},
    totals, wait_for_program_clock,
};

fn deny(k: &mut KernelDatapath, cidr: &str) {
    k.list_insert(
        List::Deny,
        &cidr.parse::<Cidr>().unwrap(),
        ListEntry::default(),
    )
    .unwrap();
}

fn allow(k: &mut KernelDatapath, cidr: &str) {
    k.list_insert(
        List::Allow,
        &cidr.parse::<Cidr>().unwrap(),
        ListEntry::default(),
    )
    .unwrap();
}

/// One packet, one verdict, the counters it leaves.
struct Fixture {
    description: &'static str,
    packet: Vec<u8>,
    setup: fn(&mut KernelDatapath),
    verdict: u32,
    /// (reason, packets) pairs expected in the counters; every other reason must be 0.
    counters: &'static [(usize, u64)],
}

fn no_setup(_: &mut KernelDatapath) {}

/// No limits but a budget for frames with no readable source: `pps` per second for the host,
/// `burst` at once (each CPU gets its share of the rate and the whole burst).
fn malformed_budget(pps: u64, burst: u64) -> Config {
    Config {
        malformed_pps: pps,
        malformed_burst: burst,
        ..Config::default()
    }
}

/// A rate-limit ban from now for `ns` nanoseconds.
fn ban_for(k: &KernelDatapath, ns: u64) -> Ban {
    let now = k.now_ns();
    Ban {
        expires_ns: now + ns,
        since_ns: now,
        reason: reason::RATE_LIMITED as u32,
        _pad: 0,
    }
}

fn table() -> Vec<Fixture> {
    vec![
        Fixture {
            description: "ipv4 udp under the limit passes",
            packet: Builder::v4("198.18.0.10").build(),
            setup: |k| k.set_config(&limits(100, 100, 10, 10, 60)).unwrap(),
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "ipv4 source in a deny cidr is dropped",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "ipv6 source in a deny cidr is dropped",
            packet: Builder::v6("fd00:7::9").build(),
            setup: |k| deny(k, "fd00:7::/32"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "source in both allow and deny lists passes (allow wins)",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| {
                deny(k, "198.18.0.0/15");
                allow(k, "198.18.7.9/32");
            },
            verdict: XDP_PASS,
            counters: &[(reason::ALLOWED, 1)],
        },
        Fixture {
            description: "a source just outside a deny cidr passes",
            packet: Builder::v4("198.18.8.1").build(),
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "an expired deny entry no longer matches",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| {
                // A second in the past: the program's clock is CLOCK_MONOTONIC at jiffy
                // resolution.
                let entry = ListEntry::expiring(k.now_ns() - 1_000_000_000);
                k.list_insert(List::Deny, &"198.18.7.0/24".parse().unwrap(), entry)
                    .unwrap();
            },
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "802.1Q-tagged denied source drops",
            packet: Builder::v4("198.18.7.9").vlan(0x8100).build(),
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "QinQ-tagged (802.1ad + 802.1Q) denied source drops",
            packet: Builder::v4("198.18.7.9").vlan(0x88a8).vlan(0x8100).build(),
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "QinQ-tagged ipv6 denied source drops",
            packet: Builder::v6("fd00:7::9").vlan(0x88a8).vlan(0x8100).build(),
            setup: |k| deny(k, "fd00:7::/32"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "three VLAN tags: no readable source, within the global budget",
            packet: Builder::v4("198.18.7.9")
                .vlan(0x88a8)
                .vlan(0x8100)
                .vlan(0x8100)
                .build(),
            setup: |k| {
                deny(k, "198.18.7.0/24");
                k.set_config(&malformed_budget(1000, 1)).unwrap();
            },
            verdict: XDP_PASS,
            counters: &[(reason::MALFORMED, 1)],
        },
        Fixture {
            description: "ipv4 with 40 bytes of options from a denied source drops",
            packet: Builder::v4("198.18.7.9").options(40).tcp(TCP_SYN).build(),
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "ARP passes under deny-all",
            packet: Builder::arp().build(),
            setup: |k| {
                deny(k, "0.0.0.0/0");
                deny(k, "::/0");
            },
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "IPv6 neighbour solicitation passes under deny-all",
            packet: Builder::v6("fe80::1").icmp6(135).hop_limit(255).build(),
            setup: |k| {
                deny(k, "0.0.0.0/0");
                deny(k, "::/0");
            },
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "IPv6 router advertisement passes under deny-all",
            packet: Builder::v6("fe80::1").icmp6(134).hop_limit(255).build(),
            setup: |k| deny(k, "::/0"),
            verdict: XDP_PASS,
            counters: &[(reason::PASSED, 1)],
        },
        Fixture {
            description: "ND-typed ICMPv6 with a forwarded hop limit is not exempt",
            packet: Builder::v6("fd00:7::9").icmp6(135).hop_limit(64).build(),
            setup: |k| deny(k, "::/0"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "ICMPv6 echo from a denied source drops",
            packet: Builder::v6("fd00:7::9").icmp6(128).build(),
            setup: |k| deny(k, "::/0"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "ipv4 with a bad IHL from a denied source drops (its source is readable)",
            packet: {
                let mut p = Builder::v4("198.18.7.9").build();
                p[14] = 0x44;
                p
            },
            setup: |k| deny(k, "0.0.0.0/0"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "ipv4 with a bad IHL from an unlisted source passes as malformed",
            packet: {
                let mut p = Builder::v4("198.18.7.9").build();
                p[14] = 0x44;
                p
            },
            setup: no_setup,
            verdict: XDP_PASS,
            counters: &[(reason::MALFORMED, 1)],
        },
        Fixture {
            description: "ipv4 options beyond the frame from a denied source drop",
            packet: {
                let mut p = Builder::v4("198.18.7.9").build();
                p[14] = 0x4f;
                p.truncate(14 + 24);
                p
            },
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "an IP version that does not match the ethertype has no source: budgeted",
            packet: {
                let mut p = Builder::v6("fd00:7::9").build();
                p[14] = 0x45;
                p
            },
            setup: |k| {
                deny(k, "::/0");
                k.set_config(&malformed_budget(1000, 10)).unwrap();
            },
            verdict: XDP_PASS,
            counters: &[(reason::MALFORMED, 1)],
        },
        Fixture {
            description: "a frame cut short inside the ipv6 addresses from a denied source drops",
            packet: {
                let mut p = Builder::v6("fd00:7::9").build();
                p.truncate(14 + 30);
                p
            },
            setup: |k| deny(k, "fd00:7::/32"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "a truncated ipv6 extension-header chain from a denied source drops",
            packet: {
                let mut p = Builder::v6("fd00:7::9").ext(0).ext(60).tcp(TCP_SYN).build();
                p.truncate(14 + 40 + 9);
                p
            },
            setup: |k| deny(k, "fd00:7::/32"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "an ipv4-mapped ipv6 source is dropped as a bad source",
            packet: Builder::v6("::ffff:198.18.7.9").build(),
            setup: no_setup,
            verdict: XDP_DROP,
            counters: &[(reason::BAD_SOURCE, 1)],
        },
        Fixture {
            description: "a truncated TCP header from an unlisted source passes as malformed",
            packet: {
                let mut p = Builder::v4("198.18.7.9").tcp(TCP_SYN).build();
                p.truncate(14 + 20 + 10);
                p
            },
            setup: no_setup,
            verdict: XDP_PASS,
            counters: &[(reason::MALFORMED, 1)],
        },
        Fixture {
            description: "a truncated TCP header from a denied source still drops",
            packet: {
                let mut p = Builder::v4("198.18.7.9").tcp(TCP_SYN).build();
                p.truncate(14 + 20 + 10);
                p
            },
            setup: |k| deny(k, "198.18.7.0/24"),
            verdict: XDP_DROP,
            counters: &[(reason::DENIED, 1)],
        },
        Fixture {
            description: "dry-run passes a denied source and counts it as would-drop",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| {
                deny(k, "198.18.7.0/24");
                k.set_config(&Config {
                    flags: FLAG_DRY_RUN,
                    ..Config::default()
                })
                .unwrap();
            },
            verdict: XDP_PASS,
            counters: &[(reason::DENIED, 1), (reason::WOULD_DROP, 1)],
        },
        Fixture {
            description: "a banned source drops",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| {
                let ban = ban_for(k, 60_000_000_000);
                k.ban_insert(&source_key_v4([198, 18, 7, 9], 32), &ban)
                    .unwrap();
            },
            verdict: XDP_DROP,
            counters: &[(reason::BANNED, 1)],
        },
        Fixture {
            description: "an allow-listed source passes even when banned",
            packet: Builder::v4("198.18.7.9").build(),
            setup: |k| {
                allow(k, "198.18.7.9");
                let ban = ban_for(k, 60_000_000_000);
                k.ban_insert(&source_key_v4([198, 18, 7, 9], 32), &ban)
                    .unwrap();
            },
            verdict: XDP_PASS,
            counters: &[(reason::ALLOWED, 1)],
        },
    ]
}

#[test]
fn fixture_table() {
    let Some(_) = kernel_or_skip("fixture_table") else {
        return;
    };
    for f in table() {
        // A fresh program and maps per case: no state leaks between them.
        let mut k = kernel_or_skip(f.description).expect("loaded above");
        (f.setup)(&mut k);
        let verdict = k.test_run(&f.packet).expect("test run");
        assert_eq!(verdict, f.verdict, "{}: verdict", f.description);
        let c = totals(&k);
        for r in 0..reason::COUNT {
            let want = f
                .counters
                .iter()
                .find(|(rr, _)| *rr == r)
                .map_or(0, |(_, n)| *n);
            assert_eq!(
                c.packets[r],
                want,
                "{}: counter {} (all: {:?})",
                f.description,
                reason::NAMES[r],
                c.packets
            );
        }
        let bytes = f.packet.len() as u64;
        assert_eq!(c.total_bytes(), bytes, "{}: bytes", f.description);
    }
}

#[test]
fn frames_without_a_readable_source_share_a_budget_and_are_dropped_over_it() {
    let Some(mut k) = kernel_or_skip("malformed_budget") else {
        return;
    };
    // 1 per second for the host: over the microseconds of this test, each CPU's burst of 3
    // and no refill.
    k.set_config(&malformed_budget(1, 3)).unwrap();
    let three_tags = Builder::v4("198.18.7.9")
        .vlan(0x88a8)
        .vlan(0x8100)
        .vlan(0x8100)
        .build();
    let v = run_n(&mut k, &three_tags, 5);
    assert_eq!(v, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    let c = totals(&k);
    assert_eq!(c.packets[reason::MALFORMED], 3);
    assert_eq!(c.packets[reason::MALFORMED_LIMITED], 2);
    assert!(k.sources().unwrap().is_empty(), "nothing to track");
    // A frame with a source is judged by it, not by this budget.
    assert_eq!(
        k.test_run(&Builder::v4("198.18.7.9").build()).unwrap(),
        XDP_PASS
    );
    // Unlimited (0) passes them all.
    k.set_config(&malformed_budget(0, 0)).unwrap();
    assert_eq!(run_n(&mut k, &three_tags, 3), [XDP_PASS; 3]);
}

fn run_n(k: &mut KernelDatapath, packet: &[u8], n: usize) -> Vec<u32> {
    (0..n).map(|_| k.test_run(packet).unwrap()).collect()
}

#[test]
fn over_limit_source_drops_after_the_burst_and_is_banned_with_an_expiry() {
    let Some(mut k) = kernel_or_skip("over_limit") else {
        return;
    };
    // 1 pps: over the few microseconds of this test the bucket refills nothing.
    k.set_config(&limits(1, 3, 0, 0, 60)).unwrap();
    let attacker = Builder::v4("198.18.5.5").build();
    let before = k.now_ns();
    let v = run_n(&mut k, &attacker, 5);
    assert_eq!(v, [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]);
    let c = totals(&k);
    assert_eq!(c.packets[reason::PASSED], 3);
    assert_eq!(c.packets[reason::RATE_LIMITED], 1);
    assert_eq!(c.packets[reason::BANNED], 1);

    let bans = k.bans().unwrap();
    assert_eq!(bans.len(), 1);
    let (key, ban) = bans[0];
    assert_eq!(key, source_key_v4([198, 18, 5, 5], 32));
    assert_eq!(ban.reason, reason::RATE_LIMITED as u32);
    // The program's clock is CLOCK_MONOTONIC at jiffy resolution: allow a tick (<= 10 ms).
    assert!(ban.expires_ns + 10_000_000 >= before + 60_000_000_000);
    assert!(ban.expires_ns <= k.now_ns() + 60_000_000_000);

    let events = k.take_events();
    assert_eq!(events.len(), 1, "one event per new ban");
    assert_eq!(events[0].source, key);
    assert_eq!(events[0].expires_ns, ban.expires_ns);

    // A second source is untouched.
    let other = Builder::v4("198.18.5.6").build();
    assert_eq!(k.test_run(&other).unwrap(), XDP_PASS);
}

#[test]
fn an_expired_ban_lets_the_source_pass_again() {
    let Some(mut k) = kernel_or_skip("expired_ban") else {
        return;
    };
    let key = source_key_v4([198, 18, 5, 5], 32);
    let now = k.now_ns();
    let ban = Ban {
        // A second in the past: the program's clock is CLOCK_MONOTONIC at jiffy resolution.
        expires_ns: now - 1_000_000_000,
        since_ns: now - 60_000_000_000,
        reason: reason::RATE_LIMITED as u32,
        _pad: 0,
    };
    k.ban_insert(&key, &ban).unwrap();
    assert_eq!(
        k.test_run(&Builder::v4("198.18.5.5").build()).unwrap(),
        XDP_PASS
    );
    assert!(
        k.bans().unwrap().is_empty(),
        "the program removes an expired ban"
    );
    assert_eq!(totals(&k).packets[reason::PASSED], 1);
}

#[test]
fn two_ipv6_sources_in_one_slash64_share_a_bucket_and_another_slash64_does_not() {
    let Some(mut k) = kernel_or_skip("v6_slash64") else {
        return;
    };
    k.set_config(&limits(1, 2, 0, 0, 0)).unwrap();
    let a = Builder::v6("fd00:1:2:3::a").build();
    let b = Builder::v6("fd00:1:2:3:ffff::b").build();
    let c = Builder::v6("fd00:1:2:4::a").build();
    assert_eq!(k.test_run(&a).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&b).unwrap(), XDP_PASS);
    assert_eq!(
        k.test_run(&a).unwrap(),
        XDP_DROP,
        "the /64 spent its burst of 2"
    );
    assert_eq!(k.test_run(&b).unwrap(), XDP_DROP);
    assert_eq!(
        k.test_run(&c).unwrap(),
        XDP_PASS,
        "another /64 has its own bucket"
    );
    let tracked: Vec<_> = k.sources().unwrap().into_iter().map(|(s, _)| s).collect();
    let ab = source_key_v6(
        "fd00:1:2:3::"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
        64,
    );
    assert!(tracked.contains(&ab));
    assert_eq!(tracked.len(), 2);
    assert_eq!(totals(&k).packets[reason::RATE_LIMITED], 2);
}

#[test]
fn ipv6_prefix_is_configurable() {
    let Some(mut k) = kernel_or_skip("v6_prefix") else {
        return;
    };
    k.set_config(&Config {
        v6_prefix_len: 128,
        ..limits(1, 1, 0, 0, 0)
    })
    .unwrap();
    assert_eq!(
        k.test_run(&Builder::v6("fd00:1::a").build()).unwrap(),
        XDP_PASS
    );
    assert_eq!(
        k.test_run(&Builder::v6("fd00:1::b").build()).unwrap(),
        XDP_PASS
    );
    assert_eq!(
        k.test_run(&Builder::v6("fd00:1::a").build()).unwrap(),
        XDP_DROP
    );
}

#[test]
fn ipv4_options_do_not_hide_the_tcp_header() {
    let Some(mut k) = kernel_or_skip("ipv4_options") else {
        return;
    };
    k.set_config(&limits(0, 0, 1, 1, 0)).unwrap();
    for opts in [4, 20, 40] {
        let syn = Builder::v4(&format!("198.18.9.{opts}"))
            .options(opts)
            .tcp(TCP_SYN)
            .build();
        assert_eq!(
            k.test_run(&syn).unwrap(),
            XDP_PASS,
            "options {opts}: first SYN"
        );
        assert_eq!(
            k.test_run(&syn).unwrap(),
            XDP_DROP,
            "options {opts}: second SYN"
        );
    }
    assert_eq!(totals(&k).packets[reason::SYN_LIMITED], 3);
}

#[test]
fn ipv6_behind_extension_headers_is_parsed_to_tcp() {
    let Some(mut k) = kernel_or_skip("ipv6_ext") else {
        return;
    };
    k.set_config(&limits(0, 0, 1, 1, 0)).unwrap();
    let syn = Builder::v6("fd00:9::1")
        .ext(0)
        .ext(43)
        .ext(60)
        .tcp(TCP_SYN)
        .build();
    assert_eq!(k.test_run(&syn).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&syn).unwrap(), XDP_DROP);
    // A first fragment carries the TCP header too.
    let frag0 = Builder::v6("fd00:a::1")
        .ext(0)
        .tcp(TCP_SYN)
        .fragment(0)
        .build();
    assert_eq!(k.test_run(&frag0).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&frag0).unwrap(), XDP_DROP);
    assert_eq!(totals(&k).packets[reason::SYN_LIMITED], 2);
}

#[test]
fn a_non_first_fragment_counts_against_its_source() {
    let Some(mut k) = kernel_or_skip("fragments") else {
        return;
    };
    k.set_config(&limits(1, 2, 1, 1, 0)).unwrap();
    for (first, rest) in [
        (
            Builder::v4("198.18.3.3").tcp(TCP_SYN).fragment(0).build(),
            Builder::v4("198.18.3.3").fragment(185).build(),
        ),
        (
            Builder::v6("fd00:3::3").tcp(TCP_SYN).fragment(0).build(),
            Builder::v6("fd00:3::3").ext(60).fragment(185).build(),
        ),
    ] {
        assert_eq!(k.test_run(&first).unwrap(), XDP_PASS);
        assert_eq!(k.test_run(&rest).unwrap(), XDP_PASS);
        assert_eq!(
            k.test_run(&rest).unwrap(),
            XDP_DROP,
            "the third packet is over the burst"
        );
    }
    let c = totals(&k);
    assert_eq!(c.packets[reason::RATE_LIMITED], 2);
    // Non-first fragments carry no TCP header: no SYN was misread from their payload.
    assert_eq!(c.packets[reason::SYN_LIMITED], 0);
}

#[test]
fn syn_flood_is_limited_while_established_packets_are_judged_by_the_packet_limit() {
    let Some(mut k) = kernel_or_skip("syn_flood") else {
        return;
    };
    // No bans: this case is about the buckets.
    k.set_config(&limits(1000, 1000, 1, 2, 0)).unwrap();
    let syn = Builder::v4("198.18.4.4").tcp(TCP_SYN).build();
    let ack = Builder::v4("198.18.4.4").tcp(TCP_ACK).build();
    let synack = Builder::v4("198.18.4.4").tcp(TCP_SYN | TCP_ACK).build();
    assert_eq!(
        run_n(&mut k, &syn, 4),
        [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP]
    );
    assert!(run_n(&mut k, &ack, 20).iter().all(|v| *v == XDP_PASS));
    assert!(
        run_n(&mut k, &synack, 5).iter().all(|v| *v == XDP_PASS),
        "SYN+ACK is not a SYN"
    );
    let c = totals(&k);
    assert_eq!(c.packets[reason::SYN_LIMITED], 2);
    assert_eq!(c.packets[reason::PASSED], 27);
}

#[test]
fn a_syn_flood_with_bans_on_bans_the_source() {
    let Some(mut k) = kernel_or_skip("syn_ban") else {
        return;
    };
    k.set_config(&limits(1000, 1000, 1, 1, 30)).unwrap();
    let syn = Builder::v4("198.18.4.5").tcp(TCP_SYN).build();
    let ack = Builder::v4("198.18.4.5").tcp(TCP_ACK).build();
    assert_eq!(run_n(&mut k, &syn, 2), [XDP_PASS, XDP_DROP]);
    assert_eq!(
        k.test_run(&ack).unwrap(),
        XDP_DROP,
        "the source is banned now"
    );
    let bans = k.bans().unwrap();
    assert_eq!(bans[0].1.reason, reason::SYN_LIMITED as u32);
    let c = totals(&k);
    assert_eq!(c.packets[reason::SYN_LIMITED], 1);
    assert_eq!(c.packets[reason::BANNED], 1);
}

#[test]
fn dry_run_makes_every_decision_but_passes() {
    let Some(mut k) = kernel_or_skip("dry_run") else {
        return;
    };
    k.set_config(&Config {
        flags: FLAG_DRY_RUN,
        ..limits(1, 1, 0, 0, 60)
    })
    .unwrap();
    let p = Builder::v4("198.18.6.6").build();
    assert_eq!(run_n(&mut k, &p, 3), [XDP_PASS, XDP_PASS, XDP_PASS]);
    let c = totals(&k);
    assert_eq!(c.packets[reason::PASSED], 1);
    assert_eq!(c.packets[reason::RATE_LIMITED], 1);
    assert_eq!(c.packets[reason::BANNED], 1);
    assert_eq!(c.packets[reason::WOULD_DROP], 2);
    assert_eq!(
        k.bans().unwrap().len(),
        1,
        "dry-run records the ban it would make"
    );
}

#[test]
fn every_truncation_of_a_valid_packet_passes_without_an_abort() {
    let Some(mut k) = kernel_or_skip("truncations") else {
        return;
    };
    let packets = [
        Builder::v4("198.18.1.1").tcp(TCP_SYN).options(40).build(),
        Builder::v4("198.18.1.1").vlan(0x88a8).vlan(0x8100).build(),
        Builder::v4("198.18.1.1").fragment(10).build(),
        Builder::v6("fd00:1::1")
            .ext(0)
            .ext(43)
            .ext(60)
            .tcp(TCP_SYN)
            .build(),
        Builder::v6("fd00:1::1")
            .ext(0)
            .fragment(0)
            .tcp(TCP_ACK)
            .build(),
        Builder::v6("fe80::1").icmp6(135).hop_limit(255).build(),
        Builder::arp().build(),
    ];
    let mut runs = 0u64;
    for p in &packets {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header's worth of data.
        for len in 0..=p.len() {
            match k.test_run(&p[..len]) {
                Ok(v) => {
                    assert_eq!(v, XDP_PASS, "length {len} of {p:02x?}");
                    runs += 1;
                }
                Err(e) if len < 14 => {
                    // The kernel refuses frames shorter than an Ethernet header (EINVAL):
                    // the program never sees them.
                    let _ = e;
                }
                Err(e) => panic!("length {len}: test run failed: {e}"),
            }
        }
    }
    let c = totals(&k);
    assert_eq!(c.total_packets(), runs);
    for r in [
        reason::DENIED,
        reason::BANNED,
        reason::RATE_LIMITED,
        reason::SYN_LIMITED,
    ] {
        assert_eq!(
            c.packets[r], 0,
            "nothing was dropped with no lists and no limits"
        );
    }
}

#[test]
fn unban_lifts_a_ban_the_program_made() {
    let Some(mut k) = kernel_or_skip("unban") else {
        return;
    };
    k.set_config(&limits(1, 1, 0, 0, 60)).unwrap();
    let p = Builder::v4("198.18.5.7").build();
    assert_eq!(run_n(&mut k, &p, 3), [XDP_PASS, XDP_DROP, XDP_DROP]);
    let key = source_key_v4([198, 18, 5, 7], 32);
    assert!(k.ban_remove(&key).unwrap());
    // The tracker forgot the source: a full bucket, and no ban.
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let c = totals(&k);
    assert_eq!(c.packets[reason::BANNED], 1);
    assert_eq!(c.packets[reason::PASSED], 2);
}

#[test]
fn a_ban_inserted_by_userspace_applies_to_a_source_already_tracked() {
    let Some(mut k) = kernel_or_skip("ban_tracked") else {
        return;
    };
    let p = Builder::v4("198.18.5.8").build();
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let ban = ban_for(&k, 60_000_000_000);
    k.ban_insert(&source_key_v4([198, 18, 5, 8], 32), &ban)
        .unwrap();
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
}

#[test]
fn list_hints_skip_empty_lists_and_never_a_list_with_entries() {
    let Some(mut k) = kernel_or_skip("hints") else {
        return;
    };
    k.set_config(&Config::default()).unwrap();
    let p4 = Builder::v4("198.18.7.9").build();
    let p6 = Builder::v6("fd00:7::9").build();
    assert_eq!(k.test_run(&p4).unwrap(), XDP_PASS);
    deny(&mut k, "198.18.7.0/24");
    deny(&mut k, "fd00:7::/32");
    assert_eq!(
        k.test_run(&p4).unwrap(),
        XDP_DROP,
        "the first v4 entry applies at once"
    );
    assert_eq!(
        k.test_run(&p6).unwrap(),
        XDP_DROP,
        "the first v6 entry applies at once"
    );
    allow(&mut k, "198.18.7.9");
    assert_eq!(
        k.test_run(&p4).unwrap(),
        XDP_PASS,
        "the first allow entry applies at once"
    );
    // A config written later keeps the hints.
    k.set_config(&limits(1000, 1000, 0, 0, 0)).unwrap();
    assert_eq!(k.test_run(&p6).unwrap(), XDP_DROP);
    assert_eq!(
        k.config().unwrap(),
        limits(1000, 1000, 0, 0, 0),
        "hints stay internal"
    );
    assert!(
        k.list_remove(List::Deny, &"fd00:7::/32".parse().unwrap())
            .unwrap()
    );
    assert_eq!(k.test_run(&p6).unwrap(), XDP_PASS);
    assert!(
        k.list_remove(List::Allow, &"198.18.7.9/32".parse().unwrap())
            .unwrap()
    );
    assert_eq!(
        k.test_run(&p4).unwrap(),
        XDP_DROP,
        "the deny list still has its entry"
    );
}

#[test]
fn a_cached_list_verdict_follows_every_list_change() {
    let Some(mut k) = kernel_or_skip("cache_changes") else {
        return;
    };
    let p = Builder::v4("198.18.8.8").build();
    // The first packets cache "in no list" in the tracker entry.
    assert_eq!(run_n(&mut k, &p, 2), [XDP_PASS, XDP_PASS]);
    deny(&mut k, "198.18.8.0/24");
    assert_eq!(
        k.test_run(&p).unwrap(),
        XDP_DROP,
        "a deny added after caching applies"
    );
    allow(&mut k, "198.18.8.8");
    assert_eq!(
        k.test_run(&p).unwrap(),
        XDP_PASS,
        "an allow added after caching applies"
    );
    assert!(
        k.list_remove(List::Allow, &"198.18.8.8/32".parse().unwrap())
            .unwrap()
    );
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
    assert!(
        k.list_remove(List::Deny, &"198.18.8.0/24".parse().unwrap())
            .unwrap()
    );
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let c = totals(&k);
    assert_eq!(c.packets[reason::PASSED], 3);
    assert_eq!(c.packets[reason::DENIED], 2);
    assert_eq!(c.packets[reason::ALLOWED], 1);
}

#[test]
fn a_cached_deny_lapses_when_its_entry_expires() {
    let Some(mut k) = kernel_or_skip("cache_expiry") else {
        return;
    };
    let expires = k.now_ns() + 200_000_000;
    let entry = ListEntry::expiring(expires);
    k.list_insert(List::Deny, &"198.18.8.0/24".parse().unwrap(), entry)
        .unwrap();
    let p = Builder::v4("198.18.8.9").build();
    assert_eq!(run_n(&mut k, &p, 2), [XDP_DROP, XDP_DROP]);
    wait_for_program_clock(expires);
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
}

#[test]
fn a_list_entry_narrower_than_a_tracked_source_is_still_exact() {
    let Some(mut k) = kernel_or_skip("cache_narrow") else {
        return;
    };
    // IPv6 sources are tracked per /64: a /128 deny must not spread over its /64.
    deny(&mut k, "fd00:1::5/128");
    let denied = Builder::v6("fd00:1::5").build();
    let neighbour = Builder::v6("fd00:1::6").build();
    for _ in 0..3 {
        assert_eq!(k.test_run(&denied).unwrap(), XDP_DROP);
        assert_eq!(k.test_run(&neighbour).unwrap(), XDP_PASS);
    }
    // Likewise an IPv4 /32 deny under /24 tracking.
    k.set_config(&Config {
        v4_prefix_len: 24,
        ..Config::default()
    })
    .unwrap();
    deny(&mut k, "198.18.9.5/32");
    for _ in 0..3 {
        assert_eq!(
            k.test_run(&Builder::v4("198.18.9.5").build()).unwrap(),
            XDP_DROP
        );
        assert_eq!(
            k.test_run(&Builder::v4("198.18.9.6").build()).unwrap(),
            XDP_PASS
        );
    }
}

#[test]
fn a_batch_import_applies_to_sources_whose_verdict_was_cached() {
    let Some(mut k) = kernel_or_skip("batch") else {
        return;
    };
    let p = Builder::v4("198.18.10.10").build();
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let cidrs: Vec<Cidr> = (0..=255u8)
        .map(|i| format!("198.18.{i}.0/24").parse().unwrap())
        .collect();
    k.list_insert_many(List::Deny, &cidrs, ListEntry::default())
        .unwrap();
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
    assert_eq!(k.list_entries(List::Deny).unwrap().len(), 256);
}

#[test]
fn an_ipv4_mapped_ipv6_source_never_shares_an_ipv4_sources_state() {
    let Some(mut k) = kernel_or_skip("v4_mapped") else {
        return;
    };
    // With /128 tracking, ::ffff:a.b.c.d would otherwise be the IPv4 source's own key.
    k.set_config(&Config {
        v6_prefix_len: 128,
        ..limits(1, 1, 0, 0, 60)
    })
    .unwrap();
    deny(&mut k, "198.18.7.0/24");
    allow(&mut k, "198.18.5.1");
    let mapped_denied = Builder::v6("::ffff:198.18.7.9").build();
    let mapped_allowed = Builder::v6("::ffff:198.18.5.1").build();
    for p in [
        &mapped_denied,
        &mapped_allowed,
        &mapped_allowed,
        &mapped_allowed,
    ] {
        assert_eq!(
            k.test_run(p).unwrap(),
            XDP_DROP,
            "never valid on the wire (RFC 4038 4.2): dropped, untracked"
        );
    }
    assert!(
        k.sources().unwrap().is_empty(),
        "mapped sources are never tracked"
    );
    assert_eq!(
        k.test_run(&Builder::v4("198.18.7.9").build()).unwrap(),
        XDP_DROP
    );
    for _ in 0..3 {
        assert_eq!(
            k.test_run(&Builder::v4("198.18.5.1").build()).unwrap(),
            XDP_PASS
        );
    }
    assert!(k.bans().unwrap().is_empty());
    assert_eq!(totals(&k).packets[reason::BAD_SOURCE], 4);
}

#[test]
fn an_expired_narrower_entry_does_not_hide_a_live_wider_one() {
    let Some(mut k) = kernel_or_skip("nested_expiry") else {
        return;
    };
    let past = ListEntry::expiring(k.now_ns() - 1_000_000_000);
    deny(&mut k, "198.18.0.0/16");
    k.list_insert(List::Deny, &"198.18.7.0/24".parse().unwrap(), past)
        .unwrap();
    k.list_insert(List::Deny, &"198.18.7.9/32".parse().unwrap(), past)
        .unwrap();
    assert_eq!(
        k.test_run(&Builder::v4("198.18.7.9").build()).unwrap(),
        XDP_DROP
    );
    allow(&mut k, "198.19.0.0/16");
    k.list_insert(List::Allow, &"198.19.7.0/24".parse().unwrap(), past)
        .unwrap();
    deny(&mut k, "198.19.7.9");
    assert_eq!(
        k.test_run(&Builder::v4("198.19.7.9").build()).unwrap(),
        XDP_PASS,
        "the live allow /16 behind an expired allow /24 still wins"
    );
}

#[test]
fn a_source_that_floods_again_after_its_ban_is_banned_again_over_the_stale_entry() {
    let Some(mut k) = kernel_or_skip("reban") else {
        return;
    };
    k.set_config(&limits(1, 1, 0, 0, 1)).unwrap();
    let p = Builder::v4("198.18.6.1").build();
    assert_eq!(run_n(&mut k, &p, 2), [XDP_PASS, XDP_DROP]);
    // The ban ends a second after the drop that made it, when the bucket has refilled one token.
    let first = k.bans().unwrap();
    assert_eq!(first.len(), 1);
    wait_for_program_clock(first[0].1.expires_ns);
    // The ban expired but is still in the map (no sweep ran); the bucket refilled one token.
    assert_eq!(run_n(&mut k, &p, 2), [XDP_PASS, XDP_DROP]);
    let bans = k.bans().unwrap();
    assert_eq!(bans.len(), 1);
    assert!(
        bans[0].1.expires_ns > k.now_ns(),
        "the new ban replaced the stale one"
    );
    assert_eq!(k.take_events().len(), 2, "both bans were reported");
    // The daemon's sweep leaves a live ban alone.
    assert!(!k.ban_expire(&bans[0].0, k.now_ns()).unwrap());
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
}

#[test]
fn a_syn_hidden_past_the_extension_header_walk_or_a_tiny_fragment_is_charged_as_a_syn() {
    let Some(mut k) = kernel_or_skip("hidden_syn") else {
        return;
    };
    k.set_config(&limits(0, 0, 1, 1, 0)).unwrap();
    let mut deep = Builder::v6("fd00:b::1");
    for _ in 0..8 {
        deep = deep.ext(60);
    }
    let deep = deep.tcp(TCP_SYN).build();
    assert_eq!(run_n(&mut k, &deep, 2), [XDP_PASS, XDP_DROP]);
    // A first fragment that cuts the TCP header short (RFC 1858).
    let mut tiny = Builder::v4("198.18.12.1").tcp(TCP_SYN).fragment(0).build();
    tiny.truncate(14 + 20 + 8);
    assert_eq!(run_n(&mut k, &tiny, 2), [XDP_PASS, XDP_DROP]);
    assert_eq!(totals(&k).packets[reason::SYN_LIMITED], 2);
}

#[test]
fn the_lists_generation_carries_over_when_a_new_load_adopts_the_pinned_maps() {
    let Some(_) = kernel_or_skip("gen_adopt") else {
        return;
    };
    guard::ebpf::ensure_bpffs().unwrap();
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/guard-test-fixture-{}",
        std::process::id()
    ));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let p = Builder::v4("198.18.13.13").build();
    let mut first = guard::ebpf::load(Some(&dir)).unwrap();
    deny(&mut first, "fd00:1::5/128");
    deny(&mut first, "198.18.13.13");
    assert_eq!(first.test_run(&p).unwrap(), XDP_DROP);
    assert!(
        first
            .list_remove(List::Deny, &"198.18.13.13/32".parse().unwrap())
            .unwrap()
    );
    assert_eq!(first.test_run(&p).unwrap(), XDP_PASS, "cached: in no list");
    drop(first);
    let mut second = guard::ebpf::load(Some(&dir)).unwrap();
    allow(&mut second, "198.18.200.0/24");
    deny(&mut second, "198.18.13.13");
    assert_eq!(
        second.test_run(&p).unwrap(),
        XDP_DROP,
        "no stale cached verdict"
    );
    // The adopted /128 still keeps the IPv6 verdict cache off (sources are tracked per /64).
    assert_eq!(
        second.test_run(&Builder::v6("fd00:1::6").build()).unwrap(),
        XDP_PASS
    );
    assert_eq!(
        second.test_run(&Builder::v6("fd00:1::5").build()).unwrap(),
        XDP_DROP
    );
}

#[test]
fn a_ban_still_holds_when_its_source_leaves_the_deny_list() {
    let Some(mut k) = kernel_or_skip("ban_after_deny") else {
        return;
    };
    deny(&mut k, "198.18.14.0/24");
    let ban = ban_for(&k, 60_000_000_000);
    k.ban_insert(&source_key_v4([198, 18, 14, 1], 32), &ban)
        .unwrap();
    let p = Builder::v4("198.18.14.1").build();
    // Tracked while denied: the deny list wins, and its ban is not read yet.
    assert_eq!(run_n(&mut k, &p, 2), [XDP_DROP, XDP_DROP]);
    assert!(
        k.list_remove(List::Deny, &"198.18.14.0/24".parse().unwrap())
            .unwrap()
    );
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP, "still banned");
    let c = totals(&k);
    assert_eq!(c.packets[reason::DENIED], 2);
    assert_eq!(c.packets[reason::BANNED], 1);
}
