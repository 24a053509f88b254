//! Property tests through BPF_PROG_TEST_RUN: random and mutated packets never make the program
//! abort, and an allow-listed source is never dropped, whatever else the packet holds.
mod support;

use std::cell::RefCell;

use guard::{
    datapath::{Datapath, List},
    ebpf::KernelDatapath,
};
use guard_common::ListEntry;
use proptest::prelude::*;
use support::{
    XDP_DROP, XDP_PASS, kernel_or_skip, limits,
    packet::{Builder, TCP_ACK, TCP_SYN},
};

/// The harshest setup: deny everything, limits of one packet, bans on; only the allow list
/// (198.18.0.0/16, fd00::/16) stands between a packet and a drop.
fn hostile() -> Option<KernelDatapath> {
    let mut k = kernel_or_skip("properties")?;
    for c in ["0.0.0.0/0", "::/0"] {
        k.list_insert(List::Deny, &c.parse().unwrap(), ListEntry::default())
            .unwrap();
    }
    for c in ["198.18.0.0/16", "fd00::/16"] {
        k.list_insert(List::Allow, &c.parse().unwrap(), ListEntry::default())
            .unwrap();
    }
    k.set_config(&limits(1, 1, 1, 1, 60)).unwrap();
    Some(k)
}

/// The same, tracking IPv4 per /24 and IPv6 per /128 (the widest and narrowest keys).
fn hostile_other_prefixes() -> Option<KernelDatapath> {
    let mut k = hostile()?;
    k.set_config(&guard_common::Config {
        v4_prefix_len: 24,
        v6_prefix_len: 128,
        ..limits(1, 1, 1, 1, 60)
    })
    .unwrap();
    Some(k)
}

thread_local! {
    static KERNEL: RefCell<Option<KernelDatapath>> = RefCell::new(hostile());
    static KERNEL_OTHER: RefCell<Option<KernelDatapath>> = RefCell::new(hostile_other_prefixes());
}

fn run_other(packet: &[u8]) -> Option<u32> {
    KERNEL_OTHER.with(|k| {
        k.borrow_mut()
            .as_mut()
            .map(|k| k.test_run(packet).expect("test run"))
    })
}

fn run(packet: &[u8]) -> Option<u32> {
    KERNEL.with(|k| {
        k.borrow_mut()
            .as_mut()
            .map(|k| k.test_run(packet).expect("test run"))
    })
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_abort(bytes in prop::collection::vec(any::<u8>(), 14..256)) {
        if let Some(v) = run(&bytes) {
            prop_assert!(v == XDP_PASS || v == XDP_DROP, "action {v} for {bytes:02x?}");
        }
    }

    #[test]
    fn random_bytes_after_a_valid_ethertype_never_abort(
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x88a8]),
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        p.extend_from_slice(&ethertype.to_be_bytes());
        p.extend_from_slice(&body);
        if let Some(v) = run(&p) {
            prop_assert!(v == XDP_PASS || v == XDP_DROP, "action {v} for {p:02x?}");
        }
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
        if let Some(v) = run(&p) {
            prop_assert_eq!(v, XDP_PASS, "allow-listed packet dropped: {:02x?}", p);
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
        // Its IPv4-mapped twin, and an IPv6 neighbour, flood first under 1 pps limits.
        for src in [format!("::ffff:{v4}"), format!("fd01::{host:x}")] {
            let p = Builder::v6(&src).build();
            for _ in 0..v6_first {
                if let Some(v) = run_other(&p) {
                    prop_assert!(v == XDP_PASS || v == XDP_DROP);
                }
            }
        }
        if let Some(v) = run_other(&Builder::v4(&v4).build()) {
            prop_assert_eq!(v, XDP_PASS, "allow-listed {} dropped", v4);
        }
    }
}

#[test]
fn the_hostile_setup_does_drop_unlisted_sources() {
    // Guards the properties above against passing for the wrong reason.
    let Some(v) = run(&Builder::v4("198.19.0.9").build()) else {
        return;
    };
    assert_eq!(v, XDP_DROP);
    assert_eq!(run(&Builder::v6("fd01::9").build()), Some(XDP_DROP));
}
