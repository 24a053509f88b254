//! Packet fixtures for spoofed and distributed floods through BPF_PROG_TEST_RUN: services
//! under attack, known sources first, the newcomer budget, the front stage, prefix buckets
//! and prefix bans, handshake and time promotion. (The races on several CPUs are in
//! `races.rs`.)
mod support;

use std::{
    net::{TcpListener, TcpStream},
    time::Duration,
};

use guard::{
    cidr::Cidr,
    datapath::{Datapath, List, ServiceProto},
    ebpf::KernelDatapath,
};
use guard_common::{
    Config, FLAG_DRY_RUN, Gcra, Known, ListEntry, SERVICE_TCP, SERVICE_UNDER_ATTACK, Service,
    known_by, reason, source_key_v4,
};
use support::{
    XDP_DROP, XDP_PASS, kernel_or_skip, limits,
    packet::{Builder, TCP_ACK, TCP_SYN},
    totals,
};

const SEC: u64 = 1_000_000_000;

/// UDP port 53 is service slot 1, TCP port 443 slot 2, UDP port 123 slot 3.
fn services(k: &mut KernelDatapath) {
    k.set_service_ports(&[
        (ServiceProto::Udp, 53, 1),
        (ServiceProto::Tcp, 443, 2),
        (ServiceProto::Udp, 123, 3),
    ])
    .unwrap();
}

/// Puts a slot under attack with a newcomer budget of `burst` packets at once and a rate so
/// low that it does not refill during a test (per CPU).
fn under_attack(k: &mut KernelDatapath, slot: u32, burst: u64, tcp: bool) {
    let g = Gcra::new(1, burst);
    let s = Service {
        flags: SERVICE_UNDER_ATTACK | if tcp { SERVICE_TCP } else { 0 },
        _pad: 0,
        attack_until_ns: k.now_ns() + 60 * SEC,
        newcomer_interval_ns: g.interval_ns,
        newcomer_tolerance_ns: g.tolerance_ns,
    };
    k.set_service(slot, &s).unwrap();
}

fn known(k: &mut KernelDatapath, addr: [u8; 4]) {
    let now = k.now_ns();
    k.known_insert(
        &source_key_v4(addr, 32),
        &Known {
            since_ns: now,
            last_ns: now,
            how: known_by::DAEMON,
            _pad: 0,
        },
    )
    .unwrap();
}

fn dns(src: &str) -> Vec<u8> {
    Builder::v4(src).ports(40_000, 53).build()
}

fn run_n(k: &mut KernelDatapath, packet: &[u8], n: usize) -> Vec<u32> {
    (0..n).map(|_| k.test_run(packet).unwrap()).collect()
}

/// The defaults the daemon writes, with an admission threshold of `admit`.
fn defaults(admit: u32) -> Config {
    Config {
        admit_packets: admit,
        ..limits(20_000, 40_000, 200, 400, 60)
    }
}

#[test]
fn a_known_source_passes_while_its_service_is_under_attack() {
    let Some(mut k) = kernel_or_skip("known_under_attack") else {
        return;
    };
    k.set_config(&defaults(4)).unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 1, false);
    known(&mut k, [198, 18, 1, 2]);
    assert_eq!(
        run_n(&mut k, &dns("198.18.1.2"), 50),
        vec![XDP_PASS; 50],
        "a known source keeps its own (generous) limits"
    );
    let tracked = k.sources().unwrap();
    assert_eq!(tracked.len(), 1, "a known source is tracked at once");
    assert_eq!(tracked[0].1.known, 1);
    let stats = k.service_stats().unwrap();
    assert_eq!(stats[1].packets, 50);
    assert_eq!(stats[1].newcomer_passed + stats[1].newcomer_dropped, 0);
    assert_eq!(totals(&k).packets[reason::PASSED], 50);
}

#[test]
fn unknown_sources_share_the_newcomer_budget_and_are_never_tracked() {
    let Some(mut k) = kernel_or_skip("newcomer_budget") else {
        return;
    };
    k.set_config(&defaults(0)).unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 3, false);
    // Three spoofed sources, then three more: the budget of 3 is shared, not per source.
    let mut verdicts = Vec::new();
    for i in 0..6u8 {
        verdicts.push(k.test_run(&dns(&format!("198.19.0.{i}"))).unwrap());
    }
    assert_eq!(
        verdicts,
        [XDP_PASS, XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP]
    );
    assert!(
        k.sources().unwrap().is_empty(),
        "while the service is under attack, newcomers never enter the tracker"
    );
    let c = totals(&k);
    assert_eq!(c.packets[reason::PASSED], 3);
    assert_eq!(c.packets[reason::NEWCOMER_LIMITED], 3);
    let s = k.service_stats().unwrap();
    assert_eq!((s[1].newcomer_passed, s[1].newcomer_dropped), (3, 3));
}

#[test]
fn the_newcomer_budget_is_per_service() {
    let Some(mut k) = kernel_or_skip("budget_per_service") else {
        return;
    };
    k.set_config(&defaults(0)).unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 1, false);
    under_attack(&mut k, 3, 1, false);
    assert_eq!(k.test_run(&dns("198.19.0.1")).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&dns("198.19.0.2")).unwrap(), XDP_DROP);
    // NTP (slot 3) has a budget of its own.
    let ntp = Builder::v4("198.19.0.3").ports(40_000, 123).build();
    assert_eq!(k.test_run(&ntp).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&ntp).unwrap(), XDP_DROP);
    // A port that is no service (slot 0, not under attack) is not held at all.
    let other = Builder::v4("198.19.0.4").ports(40_000, 9999).build();
    assert_eq!(run_n(&mut k, &other, 5), vec![XDP_PASS; 5]);
    let s = k.service_stats().unwrap();
    assert_eq!((s[1].packets, s[3].packets, s[0].packets), (2, 2, 5));
}

#[test]
fn attack_mode_lapses_when_the_daemon_stops_renewing_it() {
    let Some(mut k) = kernel_or_skip("attack_lease") else {
        return;
    };
    k.set_config(&defaults(0)).unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 1, false);
    let mut s = Service {
        flags: SERVICE_UNDER_ATTACK,
        _pad: 0,
        attack_until_ns: k.now_ns() - SEC,
        newcomer_interval_ns: u64::MAX,
        newcomer_tolerance_ns: 0,
    };
    k.set_service(1, &s).unwrap();
    assert_eq!(run_n(&mut k, &dns("198.19.0.1"), 3), vec![XDP_PASS; 3]);
    s.attack_until_ns = k.now_ns() + 60 * SEC;
    k.set_service(1, &s).unwrap();
    // A budget of nothing: every newcomer is dropped (the first of an interval aside).
    assert_eq!(k.test_run(&dns("198.19.0.9")).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&dns("198.19.0.9")).unwrap(), XDP_DROP);
}

#[test]
fn dry_run_counts_what_the_newcomer_budget_would_drop() {
    let Some(mut k) = kernel_or_skip("newcomer_dry_run") else {
        return;
    };
    k.set_config(&Config {
        flags: FLAG_DRY_RUN,
        ..defaults(0)
    })
    .unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 1, false);
    assert_eq!(run_n(&mut k, &dns("198.19.0.1"), 3), vec![XDP_PASS; 3]);
    let c = totals(&k);
    assert_eq!(c.packets[reason::NEWCOMER_LIMITED], 2);
    assert_eq!(c.packets[reason::WOULD_DROP], 2);
}

#[test]
fn the_front_stage_tracks_a_source_only_after_a_few_packets() {
    let Some(mut k) = kernel_or_skip("front_stage") else {
        return;
    };
    k.set_config(&defaults(4)).unwrap();
    let p = dns("198.18.3.3");
    assert_eq!(run_n(&mut k, &p, 4), vec![XDP_PASS; 4]);
    assert!(
        k.sources().unwrap().is_empty(),
        "four packets: still in the front stage"
    );
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let tracked = k.sources().unwrap();
    assert_eq!(tracked.len(), 1, "the fifth packet admits it");
    assert_eq!(tracked[0].0, source_key_v4([198, 18, 3, 3], 32));
    // 10,000 sources of one packet each churn nothing.
    for i in 0..10_000u32 {
        let b = i.to_be_bytes();
        k.test_run(&dns(&format!("198.19.{}.{}", b[2], b[3])))
            .unwrap();
    }
    assert_eq!(k.sources().unwrap().len(), 1);
}

#[test]
fn a_denied_source_drops_on_its_first_packet_without_being_tracked() {
    let Some(mut k) = kernel_or_skip("front_stage_deny") else {
        return;
    };
    k.set_config(&defaults(4)).unwrap();
    k.list_insert(
        List::Deny,
        &"198.19.0.0/16".parse::<Cidr>().unwrap(),
        ListEntry::default(),
    )
    .unwrap();
    for i in 0..100u8 {
        assert_eq!(
            k.test_run(&dns(&format!("198.19.7.{i}"))).unwrap(),
            XDP_DROP
        );
    }
    assert!(k.sources().unwrap().is_empty());
    assert_eq!(totals(&k).packets[reason::DENIED], 100);
    // A banned source too, even while its service is under attack and it is known.
    let key = source_key_v4([198, 18, 9, 9], 32);
    let now = k.now_ns();
    k.ban_insert(
        &key,
        &guard_common::Ban {
            expires_ns: now + 60 * SEC,
            since_ns: now,
            reason: reason::RATE_LIMITED as u32,
            _pad: 0,
        },
    )
    .unwrap();
    services(&mut k);
    under_attack(&mut k, 1, 10, false);
    known(&mut k, [198, 18, 9, 9]);
    assert_eq!(k.test_run(&dns("198.18.9.9")).unwrap(), XDP_DROP);
    assert_eq!(totals(&k).packets[reason::BANNED], 1);
}

#[test]
fn a_prefix_over_its_aggregate_rate_is_limited_but_its_known_sources_are_not() {
    let Some(mut k) = kernel_or_skip("prefix_bucket") else {
        return;
    };
    // Sources tracked at once; each under its own limit, the /24 over 1 pps with a burst of 5.
    k.set_config(&Config {
        prefix_pps: 1,
        prefix_burst: 5,
        ..defaults(0)
    })
    .unwrap();
    let mut verdicts = Vec::new();
    for i in 0..8u8 {
        verdicts.push(k.test_run(&dns(&format!("198.18.44.{i}"))).unwrap());
    }
    assert_eq!(&verdicts[..5], &[XDP_PASS; 5]);
    assert_eq!(&verdicts[5..], &[XDP_DROP; 3]);
    assert_eq!(totals(&k).packets[reason::PREFIX_LIMITED], 3);
    assert!(
        k.bans().unwrap().is_empty(),
        "an aggregate limit bans no one"
    );
    // Another /24 has its own bucket; a known source of the same /24 is not held.
    assert_eq!(k.test_run(&dns("198.18.45.1")).unwrap(), XDP_PASS);
    known(&mut k, [198, 18, 44, 200]);
    assert_eq!(run_n(&mut k, &dns("198.18.44.200"), 3), vec![XDP_PASS; 3]);
}

#[test]
fn a_prefix_ban_drops_its_sources_and_lifting_it_lets_them_pass() {
    let Some(mut k) = kernel_or_skip("prefix_ban") else {
        return;
    };
    k.set_config(&defaults(0)).unwrap();
    let p = dns("198.18.50.7");
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let prefix: Cidr = "198.18.50.0/24".parse().unwrap();
    k.prefix_ban_insert(&prefix, ListEntry::expiring(k.now_ns() + 60 * SEC))
        .unwrap();
    // Tracked (its verdict cached) and untracked sources alike.
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
    assert_eq!(k.test_run(&dns("198.18.50.8")).unwrap(), XDP_DROP);
    assert_eq!(k.test_run(&dns("198.18.51.8")).unwrap(), XDP_PASS);
    // The allow list wins over a prefix ban.
    k.list_insert(
        List::Allow,
        &"198.18.50.9/32".parse::<Cidr>().unwrap(),
        ListEntry::default(),
    )
    .unwrap();
    assert_eq!(k.test_run(&dns("198.18.50.9")).unwrap(), XDP_PASS);
    assert!(k.prefix_ban_remove(&prefix).unwrap());
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    let c = totals(&k);
    assert_eq!(c.packets[reason::BANNED], 2);
    assert_eq!(c.packets[reason::ALLOWED], 1);
}

#[test]
fn a_source_in_good_standing_becomes_known_after_known_after() {
    let Some(mut k) = kernel_or_skip("known_by_time") else {
        return;
    };
    // 20 ms of good standing: a few ticks of the coarse clock.
    k.set_config(&Config {
        known_after_ns: 20_000_000,
        ..defaults(0)
    })
    .unwrap();
    let p = dns("198.18.6.6");
    assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    assert!(k.known().unwrap().is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while k.known().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "never became known");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(k.test_run(&p).unwrap(), XDP_PASS);
    }
    let known = k.known().unwrap();
    assert_eq!(known[0].0, source_key_v4([198, 18, 6, 6], 32));
    assert_eq!(known[0].1.how, known_by::TIME);
    // Under attack it now passes where a newcomer would not.
    services(&mut k);
    under_attack(&mut k, 1, 1, false);
    assert_eq!(k.test_run(&dns("198.19.0.1")).unwrap(), XDP_PASS);
    assert_eq!(k.test_run(&dns("198.19.0.2")).unwrap(), XDP_DROP);
    assert_eq!(run_n(&mut k, &p, 10), vec![XDP_PASS; 10]);
}

#[test]
fn a_source_that_was_dropped_starts_its_good_standing_again() {
    let Some(mut k) = kernel_or_skip("known_reset") else {
        return;
    };
    // 1 pps, burst 2, no bans: the third packet is dropped, which restarts the clock.
    k.set_config(&Config {
        known_after_ns: 20_000_000,
        ..limits(1, 2, 0, 0, 0)
    })
    .unwrap();
    let p = dns("198.18.6.7");
    assert_eq!(run_n(&mut k, &p, 3), [XDP_PASS, XDP_PASS, XDP_DROP]);
    let (_, st) = k.sources().unwrap()[0];
    assert!(st.good_since_ns > 0);
    assert_eq!(st.known, 0);
    std::thread::sleep(Duration::from_millis(40));
    // Still over its limit: dropped, and never made known.
    assert_eq!(k.test_run(&p).unwrap(), XDP_DROP);
    assert!(k.known().unwrap().is_empty());
}

/// Runs `f` on a thread inside a throwaway network namespace (XDP test runs look sockets up
/// in the calling thread's namespace).
fn in_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare on this thread only; it never returns to the host namespace.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        let up = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip link set lo up");
        assert!(up.success());
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

#[test]
fn a_tcp_handshake_the_host_accepted_makes_its_source_known() {
    let Some(_) = kernel_or_skip("known_by_handshake") else {
        return;
    };
    in_netns(|| {
        let mut k = guard::ebpf::load(None).expect("load");
        k.set_config(&defaults(4)).unwrap();
        k.set_service_ports(&[(ServiceProto::Tcp, 443, 1)]).unwrap();
        under_attack(&mut k, 1, 2, true);
        let listener = TcpListener::bind("127.0.0.1:443").expect("bind 443 in the namespace");
        let client = TcpStream::connect("127.0.0.1:443").expect("connect");
        let (_served, _) = listener.accept().expect("accept");
        let cport = client.local_addr().unwrap().port();
        // A data segment of that connection, as the client sends it.
        let data = Builder::v4("127.0.0.1")
            .dst("127.0.0.1")
            .tcp(TCP_ACK)
            .ports(cport, 443)
            .build();
        // Another client's data, of no connection: a newcomer like any other.
        let stray = Builder::v4("127.0.0.1")
            .dst("127.0.0.1")
            .tcp(TCP_ACK)
            .ports(cport.wrapping_add(1), 443)
            .build();
        assert_eq!(k.test_run(&stray).unwrap(), XDP_PASS, "within the budget");
        assert!(k.known().unwrap().is_empty(), "no connection, not known");
        assert_eq!(k.test_run(&data).unwrap(), XDP_PASS);
        let known = k.known().unwrap();
        assert_eq!(known.len(), 1, "the accepted connection made it known");
        assert_eq!(known[0].1.how, known_by::HANDSHAKE);
        // Known now: its SYNs and data pass though the budget is spent.
        let syn = Builder::v4("127.0.0.1")
            .dst("127.0.0.1")
            .tcp(TCP_SYN)
            .ports(cport.wrapping_add(2), 443)
            .build();
        assert_eq!(run_n(&mut k, &syn, 5), vec![XDP_PASS; 5]);
        assert_eq!(
            k.service_stats().unwrap()[1].newcomer_passed,
            2,
            "the stray and the data segment spent the budget"
        );
    });
}
