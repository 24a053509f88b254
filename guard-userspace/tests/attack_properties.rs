//! Property tests of attack mode through BPF_PROG_TEST_RUN, each case on a fresh load: under
//! attack an allow-listed source is never dropped, a known source within its own limit is
//! never dropped whatever else arrives, and the newcomers of a service never pass more than
//! its budget plus one burst.
mod support;

use guard::{
    cidr::Cidr,
    datapath::{Datapath, List, ServiceProto},
    ebpf::KernelDatapath,
};
use guard_common::{
    Config, Gcra, Known, ListEntry, SERVICE_UNDER_ATTACK, Service, known_by, reason, source_key_v4,
};
use proptest::prelude::*;
use support::{XDP_DROP, XDP_PASS, kernel_or_skip, limits, packet::Builder, totals};

const SEC: u64 = 1_000_000_000;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// UDP/53 is service slot 1, under attack, with a newcomer budget of `burst` packets at once
/// and `rate` per second (per CPU); per-source limits of `pps` with a burst of `burst_src`.
fn attacked(rate: u64, burst: u64, pps: u64, burst_src: u64) -> Option<KernelDatapath> {
    let mut k = kernel_or_skip("attack_properties")?;
    k.set_config(&Config {
        admit_packets: 4,
        ..limits(pps, burst_src, 0, 0, 60)
    })
    .unwrap();
    k.set_service_ports(&[(ServiceProto::Udp, 53, 1)]).unwrap();
    let g = Gcra::new(rate, burst);
    k.set_service(
        1,
        &Service {
            flags: SERVICE_UNDER_ATTACK,
            _pad: 0,
            attack_until_ns: k.now_ns() + 600 * SEC,
            newcomer_interval_ns: g.interval_ns,
            newcomer_tolerance_ns: g.tolerance_ns,
        },
    )
    .unwrap();
    Some(k)
}

/// A packet to the attacked service (or, if `other`, to a port that is no service).
#[derive(Clone, Debug)]
struct Pkt {
    /// The last two bytes of a 198.19.0.0/16 source (the flood's range).
    src: u16,
    other: bool,
    tcp_syn: bool,
}

fn pkt() -> impl Strategy<Value = Pkt> {
    (
        any::<u16>(),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(src, other, tcp_syn)| Pkt {
            src,
            other,
            tcp_syn,
        })
}

fn build(p: &Pkt) -> Vec<u8> {
    let [a, b] = p.src.to_be_bytes();
    let b4 = Builder::v4(&format!("198.19.{a}.{b}"));
    let b4 = if p.tcp_syn {
        b4.tcp(support::packet::TCP_SYN)
    } else {
        b4
    };
    b4.ports(40_000, if p.other { 9_999 } else { 53 }).build()
}

fn known(k: &mut KernelDatapath, a: [u8; 4]) {
    let now = k.now_ns();
    k.known_insert(
        &source_key_v4(a, 32),
        &Known {
            since_ns: now,
            last_ns: now,
            how: known_by::DAEMON,
            _pad: 0,
        },
    )
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    /// Under attack, with no newcomer budget at all, an allow-listed source passes every packet
    /// amid any flood.
    #[test]
    fn an_allow_listed_source_is_never_dropped_under_attack(
        flood in prop::collection::vec(pkt(), 1..200),
        every in 1usize..20,
    ) {
        let Some(mut k) = attacked(1, 1, 1, 1) else { return Ok(()) };
        k.list_insert(List::Allow, &"198.18.5.0/24".parse::<Cidr>().unwrap(), ListEntry::default())
            .unwrap();
        let lb = Builder::v4("198.18.5.7").ports(40_000, 53).build();
        for (i, p) in flood.iter().enumerate() {
            k.test_run(&build(p)).unwrap();
            if i % every == 0 {
                prop_assert_eq!(k.test_run(&lb).unwrap(), XDP_PASS);
            }
        }
        prop_assert!(totals(&k).packets[reason::ALLOWED] > 0);
    }

    /// Under attack, a known source that stays within its own limit (its burst, here) is never
    /// dropped, however many newcomers flood the same service and whatever its packets are.
    #[test]
    fn a_known_source_within_its_limit_is_never_dropped_under_attack(
        flood in prop::collection::vec(pkt(), 1..300),
        mine in prop::collection::vec(any::<bool>(), 1..50),
    ) {
        // Its own limit: 1 packet/s with a burst of 50 (so up to 50 packets now are within it).
        let Some(mut k) = attacked(1, 1, 1, 50) else { return Ok(()) };
        known(&mut k, [198, 18, 1, 2]);
        let mut flood = flood.into_iter();
        for syn in mine {
            for p in flood.by_ref().take(6) {
                k.test_run(&build(&p)).unwrap();
            }
            let b = Builder::v4("198.18.1.2");
            let b = if syn { b.tcp(support::packet::TCP_SYN) } else { b };
            let own = b.ports(40_000, 53).build();
            prop_assert_eq!(k.test_run(&own).unwrap(), XDP_PASS);
        }
    }

    /// The newcomers of a service under attack pass no more than its budget: at most the burst
    /// plus what the rate refills over the time the packets took (and a tick of the coarse
    /// clock), on the one CPU this test runs on. Packets to no service are not held.
    #[test]
    fn newcomers_never_pass_more_than_the_budget_plus_one_burst(
        flood in prop::collection::vec(pkt(), 1..400),
        rate in 1u64..2_000,
        burst in 1u64..40,
    ) {
        let Some(mut k) = attacked(rate, burst, 20_000, 40_000) else { return Ok(()) };
        let t0 = support::program_now_ns();
        let mut held = 0u64;
        for p in &flood {
            let v = k.test_run(&build(p)).unwrap();
            // The service is UDP/53: TCP to port 53, like any other port, is no service.
            if p.other || p.tcp_syn {
                prop_assert_eq!(v, XDP_PASS, "a port that is no service is not held");
            } else {
                held += 1;
                prop_assert!(v == XDP_PASS || v == XDP_DROP);
            }
        }
        let elapsed = support::program_now_ns() - t0;
        let s = k.service_stats().unwrap();
        prop_assert_eq!(s[1].newcomer_passed + s[1].newcomer_dropped, held);
        // One tick of the coarse clock (at most 10 ms) on top of the time the runs took.
        let refill = (elapsed + 10_000_000) as u128 * u128::from(rate) / u128::from(SEC);
        let bound = burst as u128 + refill + 1;
        prop_assert!(
            u128::from(s[1].newcomer_passed) <= bound,
            "{} newcomers passed; the budget allows {bound}", s[1].newcomer_passed
        );
        let c = totals(&k);
        prop_assert_eq!(c.packets[reason::NEWCOMER_LIMITED], s[1].newcomer_dropped);
        prop_assert!(k.sources().unwrap().is_empty(), "newcomers under attack are never tracked");
    }
}
