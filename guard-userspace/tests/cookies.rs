//! Packet fixtures of SYN cookies at the NIC through BPF_PROG_TEST_RUN: a SYN to a cookie
//! service comes back as a well-formed SYN-ACK (`XDP_TX`) whose cookie the kernel's own check
//! accepts; a valid ACK passes and makes its source known; a forged one drops; a known
//! source's SYN and a SYN to another port pass untouched.
mod support;

use guard::{
    datapath::{Datapath, ServiceProto},
    ebpf::KernelDatapath,
};
use guard_common::{
    COOKIE_MSS_V4, COOKIE_MSS_V6, COOKIE_WSCALE, Config, FLAG_DRY_RUN, Known, SERVICE_COOKIES,
    SERVICE_TCP, Service, known_by, reason, source_key_v4,
};
use support::{XDP_DROP, XDP_PASS, kernel_or_skip, limits, totals};

const XDP_TX: u32 = 3;
const SERVER: [u8; 4] = [198, 18, 0, 1];
const SERVER6: &str = "fd00::1";
const PORT: u16 = 443;

/// The kernel's checksum over `data` plus `seed` (RFC 1071), folded.
fn csum(data: &[u8], seed: u64) -> u16 {
    let mut s = seed;
    for w in data.chunks(2) {
        s += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// A TCP segment's options: MSS 1460, SACK permitted, a timestamp, window scale 7 (as Linux
/// sends them), or none.
fn syn_options(ts: bool) -> Vec<u8> {
    if ts {
        let mut o = vec![2, 4, 0x05, 0xb4, 4, 2, 8, 10];
        o.extend_from_slice(&0x1122_3344u32.to_be_bytes());
        o.extend_from_slice(&[0, 0, 0, 0, 1, 3, 3, 7]);
        o
    } else {
        vec![2, 4, 0x05, 0xb4]
    }
}

/// An Ethernet frame with `vlans` tags, IPv4 or IPv6, and a TCP segment with valid checksums.
#[allow(clippy::too_many_arguments)]
fn segment(
    src: &str,
    dst: &str,
    sport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    options: &[u8],
    vlans: usize,
) -> Vec<u8> {
    let src: std::net::IpAddr = src.parse().unwrap();
    let dst: std::net::IpAddr = dst.parse().unwrap();
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&PORT.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push((((20 + options.len()) / 4) as u8) << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    tcp.extend_from_slice(options);
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for _ in 0..vlans {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    }
    match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            let pseudo = u64::from(u16::from_be_bytes([s.octets()[0], s.octets()[1]]))
                + u64::from(u16::from_be_bytes([s.octets()[2], s.octets()[3]]))
                + u64::from(u16::from_be_bytes([d.octets()[0], d.octets()[1]]))
                + u64::from(u16::from_be_bytes([d.octets()[2], d.octets()[3]]))
                + 6
                + tcp.len() as u64;
            let c = csum(&tcp, pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
            ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let c = csum(&ip, 0);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            let mut pseudo = 0u64;
            for w in s.octets().chunks(2).chain(d.octets().chunks(2)) {
                pseudo += u64::from(u16::from_be_bytes([w[0], w[1]]));
            }
            pseudo += tcp.len() as u64 + 6;
            let c = csum(&tcp, pseudo);
            tcp[16..18].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(&tcp);
    f
}

/// TCP/443 is a cookie service (slot 1), cookies on whatever the attack state.
fn cookie_service(k: &mut KernelDatapath) {
    k.set_config(&limits(20_000, 40_000, 200, 400, 60)).unwrap();
    k.set_service_ports(&[(ServiceProto::Tcp, PORT, 1)])
        .unwrap();
    k.set_service(
        1,
        &Service {
            flags: SERVICE_TCP | SERVICE_COOKIES,
            ..Service::default()
        },
    )
    .unwrap();
}

fn loaded(test: &str) -> Option<KernelDatapath> {
    let k = kernel_or_skip(test)?;
    if let Err(why) = k.cookie_stages() {
        panic!("{test}: SYN cookies at the NIC are unavailable on this kernel: {why}");
    }
    Some(k)
}

/// What a SYN-ACK the program built says, checked for well-formedness on the way.
struct SynAck {
    seq: u32,
    ack: u32,
    options: Vec<u8>,
}

fn parse_syn_ack(f: &[u8], l3: usize, v6: bool, client: &str, sport: u16) -> SynAck {
    // The MACs are swapped: back to the sender.
    assert_eq!(&f[0..6], &[0x02, 0, 0, 0, 0, 2]);
    assert_eq!(&f[6..12], &[0x02, 0, 0, 0, 0, 1]);
    let client: std::net::IpAddr = client.parse().unwrap();
    let (tcp, pseudo) = if v6 {
        let ip = &f[l3..l3 + 40];
        assert_eq!(ip[0] >> 4, 6);
        assert_eq!(ip[6], 6, "next header TCP");
        let plen = u16::from_be_bytes([ip[4], ip[5]]) as usize;
        assert_eq!(f.len(), l3 + 40 + plen, "the frame ends with the segment");
        assert_eq!(
            &ip[8..24],
            &SERVER6.parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        let std::net::IpAddr::V6(c) = client else {
            panic!()
        };
        assert_eq!(&ip[24..40], &c.octets());
        let mut p = 0u64;
        for w in ip[8..40].chunks(2) {
            p += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        (&f[l3 + 40..], p + plen as u64 + 6)
    } else {
        let ip = &f[l3..l3 + 20];
        assert_eq!(ip[0], 0x45);
        assert_eq!(csum(ip, 0), 0, "the IPv4 header checksum holds");
        let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        assert_eq!(f.len(), l3 + total, "the frame ends with the segment");
        assert_eq!(&ip[12..16], &SERVER);
        let std::net::IpAddr::V4(c) = client else {
            panic!()
        };
        assert_eq!(&ip[16..20], &c.octets());
        let mut p = 0u64;
        for w in ip[12..20].chunks(2) {
            p += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        (&f[l3 + 20..], p + (total - 20) as u64 + 6)
    };
    assert_eq!(csum(tcp, pseudo), 0, "the TCP checksum holds");
    assert_eq!(u16::from_be_bytes([tcp[0], tcp[1]]), PORT);
    assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), sport);
    assert_eq!(tcp[13], 0x12, "SYN|ACK");
    let hlen = (tcp[12] >> 4) as usize * 4;
    assert_eq!(hlen, tcp.len());
    SynAck {
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        ack: u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]),
        options: tcp[20..].to_vec(),
    }
}

/// The (TSval, TSecr) of a timestamp option in `o`, if any.
fn timestamp(o: &[u8]) -> Option<(u32, u32)> {
    let mut i = 0;
    while i < o.len() {
        match o[i] {
            0 => return None,
            1 => i += 1,
            8 => {
                return Some((
                    u32::from_be_bytes([o[i + 2], o[i + 3], o[i + 4], o[i + 5]]),
                    u32::from_be_bytes([o[i + 6], o[i + 7], o[i + 8], o[i + 9]]),
                ));
            }
            _ => i += o[i + 1] as usize,
        }
    }
    None
}

#[test]
fn a_syn_to_a_cookie_service_gets_a_well_formed_syn_ack_whose_cookie_the_kernel_accepts() {
    let Some(mut k) = loaded("cookie_syn_ack") else {
        return;
    };
    cookie_service(&mut k);
    let isn = 0x0102_0304;
    let syn = segment(
        "198.18.20.5",
        "198.18.0.1",
        40_000,
        0x02,
        isn,
        0,
        &syn_options(true),
        0,
    );
    let (action, out) = k.test_run_out(&syn).unwrap();
    assert_eq!(action, XDP_TX, "answered at the NIC");
    let sa = parse_syn_ack(&out, 14, false, "198.18.20.5", 40_000);
    assert_eq!(sa.ack, isn + 1);
    // MSS, SACK permitted, the timestamp echoing the client's, window scale.
    assert_eq!(
        &sa.options[0..4],
        &[2, 4, (COOKIE_MSS_V4 >> 8) as u8, COOKIE_MSS_V4 as u8]
    );
    assert_eq!(&sa.options[4..6], &[4, 2]);
    let (tsval, tsecr) = timestamp(&sa.options).expect("a timestamp");
    assert_eq!(tsecr, 0x1122_3344);
    assert_eq!(
        tsval & 0xf,
        7,
        "the client's window scale rides in the TSval"
    );
    assert_eq!(tsval & 0x10, 0x10, "and its SACK");
    assert_eq!(&sa.options[16..20], &[1, 3, 3, COOKIE_WSCALE]);
    assert!(k.sources().unwrap().is_empty(), "nothing tracked for a SYN");
    assert!(k.known().unwrap().is_empty());

    // The client's ACK: the cookie checks out, the source is known, the ACK goes on up.
    let mut opts = vec![1, 1, 8, 10];
    opts.extend_from_slice(&0x1122_3345u32.to_be_bytes());
    opts.extend_from_slice(&tsval.to_be_bytes());
    let ack = segment(
        "198.18.20.5",
        "198.18.0.1",
        40_000,
        0x10,
        isn + 1,
        sa.seq.wrapping_add(1),
        &opts,
        0,
    );
    let (action, _) = k.test_run_out(&ack).unwrap();
    assert_eq!(action, XDP_PASS);
    let known = k.known().unwrap();
    assert_eq!(known.len(), 1);
    assert_eq!(known[0].0, source_key_v4([198, 18, 20, 5], 32));
    assert_eq!(known[0].1.how, known_by::COOKIE);
    // Known now: its next SYN goes to the kernel untouched.
    let again = segment(
        "198.18.20.5",
        "198.18.0.1",
        40_001,
        0x02,
        7,
        0,
        &syn_options(true),
        0,
    );
    assert_eq!(k.test_run(&again).unwrap(), XDP_PASS);

    let c = totals(&k);
    assert_eq!(c.packets[reason::COOKIE_SENT], 1);
    assert_eq!(c.packets[reason::COOKIE_VALID], 1);
    assert_eq!(c.packets[reason::PASSED], 1);
}

#[test]
fn a_forged_ack_is_dropped_and_counted() {
    let Some(mut k) = loaded("cookie_forged") else {
        return;
    };
    cookie_service(&mut k);
    let syn = segment(
        "198.18.20.6",
        "198.18.0.1",
        40_000,
        0x02,
        99,
        0,
        &syn_options(true),
        0,
    );
    let (_, out) = k.test_run_out(&syn).unwrap();
    let sa = parse_syn_ack(&out, 14, false, "198.18.20.6", 40_000);
    // The ack number off by one, the sequence number of another connection, a made-up ack.
    // (A sequence number off by a few still checks: the kernel's cookie adds the client's ISN
    // to low bits that also hold the MSS index; it is no MAC over the ISN.)
    for (seq, ack) in [
        (100, sa.seq.wrapping_add(2)),
        (0x4000_0000, sa.seq.wrapping_add(1)),
        (100, 12345),
    ] {
        let forged = segment("198.18.20.6", "198.18.0.1", 40_000, 0x10, seq, ack, &[], 0);
        assert_eq!(
            k.test_run(&forged).unwrap(),
            XDP_DROP,
            "seq {seq} ack {ack}"
        );
    }
    // A blind ACK flood from spoofed sources: all dropped, none known.
    for i in 0..50u8 {
        let blind = segment(
            &format!("198.19.3.{i}"),
            "198.18.0.1",
            40_000,
            0x10,
            1,
            2,
            &[],
            0,
        );
        assert_eq!(k.test_run(&blind).unwrap(), XDP_DROP);
    }
    assert!(k.known().unwrap().is_empty());
    assert_eq!(totals(&k).packets[reason::COOKIE_INVALID], 53);
}

#[test]
fn a_known_source_and_another_port_pass_untouched() {
    let Some(mut k) = loaded("cookie_untouched") else {
        return;
    };
    cookie_service(&mut k);
    let now = k.now_ns();
    k.known_insert(
        &source_key_v4([198, 18, 20, 7], 32),
        &Known {
            since_ns: now,
            last_ns: now,
            how: known_by::DAEMON,
            _pad: 0,
        },
    )
    .unwrap();
    let syn = segment(
        "198.18.20.7",
        "198.18.0.1",
        40_000,
        0x02,
        1,
        0,
        &syn_options(true),
        0,
    );
    let (action, out) = k.test_run_out(&syn).unwrap();
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, syn, "a known source's SYN is not touched");
    // A SYN to a port that is no cookie service.
    let mut other = segment(
        "198.18.20.8",
        "198.18.0.1",
        40_000,
        0x02,
        1,
        0,
        &syn_options(true),
        0,
    );
    other[36..38].copy_from_slice(&8080u16.to_be_bytes());
    let (action, out) = k.test_run_out(&other).unwrap();
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, other);
    assert_eq!(totals(&k).packets[reason::COOKIE_SENT], 0);
}

#[test]
fn vlan_tagged_ipv6_and_timestampless_syns_are_answered_too() {
    let Some(mut k) = loaded("cookie_variants") else {
        return;
    };
    cookie_service(&mut k);
    // Two VLAN tags: the SYN-ACK keeps them.
    let syn = segment(
        "198.18.20.9",
        "198.18.0.1",
        40_000,
        0x02,
        5,
        0,
        &syn_options(true),
        2,
    );
    let (action, out) = k.test_run_out(&syn).unwrap();
    assert_eq!(action, XDP_TX);
    assert_eq!(&out[12..20], &syn[12..20], "the tags stay");
    parse_syn_ack(&out, 22, false, "198.18.20.9", 40_000);
    // IPv6.
    let syn6 = segment(
        "fd00:20::9",
        SERVER6,
        40_002,
        0x02,
        5,
        0,
        &syn_options(true),
        0,
    );
    let (action, out) = k.test_run_out(&syn6).unwrap();
    assert_eq!(action, XDP_TX);
    let sa = parse_syn_ack(&out, 14, true, "fd00:20::9", 40_002);
    assert_eq!(
        &sa.options[0..4],
        &[2, 4, (COOKIE_MSS_V6 >> 8) as u8, COOKIE_MSS_V6 as u8]
    );
    let ack6 = segment(
        "fd00:20::9",
        SERVER6,
        40_002,
        0x10,
        6,
        sa.seq.wrapping_add(1),
        &[],
        0,
    );
    assert_eq!(
        k.test_run(&ack6).unwrap(),
        XDP_PASS,
        "the IPv6 cookie checks out"
    );
    // No timestamp in the SYN: MSS only (no window scale or SACK can ride in the cookie).
    let bare = segment(
        "198.18.20.10",
        "198.18.0.1",
        40_000,
        0x02,
        5,
        0,
        &syn_options(false),
        0,
    );
    let (action, out) = k.test_run_out(&bare).unwrap();
    assert_eq!(action, XDP_TX);
    let sa = parse_syn_ack(&out, 14, false, "198.18.20.10", 40_000);
    assert_eq!(
        sa.options,
        [2, 4, (COOKIE_MSS_V4 >> 8) as u8, COOKIE_MSS_V4 as u8]
    );
}

#[test]
fn dry_run_counts_the_cookie_and_passes_the_syn() {
    let Some(mut k) = loaded("cookie_dry_run") else {
        return;
    };
    cookie_service(&mut k);
    k.set_config(&Config {
        flags: FLAG_DRY_RUN,
        ..limits(20_000, 40_000, 200, 400, 60)
    })
    .unwrap();
    let syn = segment(
        "198.18.20.11",
        "198.18.0.1",
        40_000,
        0x02,
        5,
        0,
        &syn_options(true),
        0,
    );
    let (action, out) = k.test_run_out(&syn).unwrap();
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, syn);
    let c = totals(&k);
    assert_eq!(c.packets[reason::COOKIE_SENT], 1);
    assert_eq!(c.packets[reason::WOULD_DROP], 1);
}
