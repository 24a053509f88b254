//! Packets for the benchmarks: Ethernet (optionally VLAN-tagged) with IPv4 or IPv6, carrying
//! UDP or a TCP SYN. Adapted from guard-userspace's test builder, with real IPv4 header and
//! UDP/TCP checksums so that the flood frames survive the receiving stack's checks.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A UDP datagram in an Ethernet frame.
#[derive(Clone)]
pub struct Udp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN TPIDs, outermost first.
    pub vlans: Vec<u16>,
    pub l3: L3,
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: usize,
}

#[derive(Clone, Copy)]
pub enum L3 {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

impl Udp {
    /// An IPv4 datagram from `src` to 198.18.0.1, port 8080, 18 bytes of payload (a
    /// 60-byte frame, the Ethernet minimum).
    pub fn v4(src: Ipv4Addr) -> Self {
        Self {
            src_mac: [0x02, 0, 0, 0, 0, 2],
            dst_mac: [0x02, 0, 0, 0, 0, 1],
            vlans: Vec::new(),
            l3: L3::V4 {
                src,
                dst: Ipv4Addr::new(198, 18, 0, 1),
            },
            src_port: 40000,
            dst_port: 8080,
            payload: 18,
        }
    }

    /// An IPv6 datagram from `src` to fd00::1, port 8080.
    pub fn v6(src: Ipv6Addr) -> Self {
        Self {
            l3: L3::V6 {
                src,
                dst: "fd00::1".parse().expect("a valid IPv6 address"),
            },
            ..Self::v4(Ipv4Addr::UNSPECIFIED)
        }
    }

    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlans.push(tpid);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let udp_len = (8 + self.payload) as u16;
        let mut udp = Vec::with_capacity(usize::from(udp_len));
        udp.extend_from_slice(&self.src_port.to_be_bytes());
        udp.extend_from_slice(&self.dst_port.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend(std::iter::repeat_n(0x5au8, self.payload));
        // RFC 768: a computed checksum of zero is sent as all ones (zero means "none", which
        // IPv6 forbids, RFC 8200 section 8.1).
        let sum = match l4_checksum(&self.l3, PROTO_UDP, &udp) {
            0 => 0xffff,
            s => s,
        };
        udp[6..8].copy_from_slice(&sum.to_be_bytes());
        frame(
            self.dst_mac,
            self.src_mac,
            &self.vlans,
            &self.l3,
            PROTO_UDP,
            &udp,
        )
    }
}

/// A TCP SYN (with an MSS option, as real stacks send) in an Ethernet frame.
#[derive(Clone)]
pub struct Syn {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub l3: L3,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
}

impl Syn {
    pub fn build(&self) -> Vec<u8> {
        let mut tcp = [0u8; 24];
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.to_be_bytes());
        // Data offset 6 words (20 bytes and one 4-byte option), flags SYN.
        tcp[12] = 6 << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        // MSS 1460 (RFC 9293 section 3.7.1).
        tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]);
        let sum = l4_checksum(&self.l3, PROTO_TCP, &tcp);
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
        frame(self.dst_mac, self.src_mac, &[], &self.l3, PROTO_TCP, &tcp)
    }
}

/// Ethernet, VLAN tags, the IP header and `l4` (a UDP or TCP segment with its checksum).
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlans: &[u16],
    l3: &L3,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(14 + 4 * vlans.len() + 40 + l4.len());
    p.extend_from_slice(&dst_mac);
    p.extend_from_slice(&src_mac);
    for tpid in vlans {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&[0x00, 0x0a]);
    }
    let l4_len = l4.len() as u16;
    match *l3 {
        L3::V4 { src, dst } => {
            p.extend_from_slice(&0x0800u16.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + l4_len).to_be_bytes());
            ip[4..6].copy_from_slice(&[0, 1]);
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let sum = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            p.extend_from_slice(&ip);
        }
        L3::V6 { src, dst } => {
            p.extend_from_slice(&0x86ddu16.to_be_bytes());
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&l4_len.to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
        }
    }
    p.extend_from_slice(l4);
    p
}

/// The UDP or TCP checksum of `segment` (its checksum field zero) over the pseudo-header of
/// `l3` (RFC 768, RFC 9293 section 3.1, RFC 8200 section 8.1).
pub fn l4_checksum(l3: &L3, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40);
    match *l3 {
        L3::V4 { src, dst } => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        L3::V6 { src, dst } => {
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
    }
    !fold(ones_sum(&pseudo) + ones_sum(segment))
}

/// The IPv4 header checksum (RFC 791, RFC 1071): the ones' complement of the ones'
/// complement sum of the header's 16-bit words, with the checksum field zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    !fold(ones_sum(header))
}

/// The sum of `bytes` as big-endian 16-bit words (an odd last byte padded with zero).
fn ones_sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// Folds the carries of a 32-bit sum into 16 bits (RFC 1071 section 4.1).
fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_checksum_verifies_to_zero() {
        let frame = Udp::v4(Ipv4Addr::new(198, 18, 7, 9)).build();
        assert_eq!(frame.len(), 60);
        assert_eq!(ipv4_checksum(&frame[14..34]), 0);
    }

    #[test]
    fn rfc1071_example_sums_as_published() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (checksum 220d).
        assert_eq!(
            ipv4_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn vlan_tags_come_before_the_ethertype() {
        let frame = Udp::v4(Ipv4Addr::new(198, 18, 7, 9)).vlan(0x8100).build();
        assert_eq!(&frame[12..14], &[0x81, 0x00]);
        assert_eq!(&frame[16..18], &[0x08, 0x00]);
    }

    /// A receiver sums the segment with its checksum in place over the pseudo-header: a
    /// correct checksum makes the folded sum all ones, so its complement is zero.
    fn verifies(l3: &L3, proto: u8, segment: &[u8]) -> bool {
        let mut zeroed = segment.to_vec();
        let at = if proto == PROTO_UDP { 6 } else { 16 };
        let sent = u16::from_be_bytes([segment[at], segment[at + 1]]);
        zeroed[at..at + 2].copy_from_slice(&[0, 0]);
        let want = match l4_checksum(l3, proto, &zeroed) {
            0 if proto == PROTO_UDP => 0xffff,
            s => s,
        };
        sent == want && sent != 0
    }

    #[test]
    fn udp_over_ipv6_carries_a_checksum_the_receiver_accepts() {
        let src: Ipv6Addr = "fd00:5:5:1::7".parse().unwrap();
        let u = Udp::v6(src);
        let frame = u.build();
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        assert_eq!(frame[20], PROTO_UDP);
        assert!(verifies(&u.l3, PROTO_UDP, &frame[54..]));
    }

    #[test]
    fn udp_over_ipv4_carries_a_checksum_the_receiver_accepts() {
        let u = Udp::v4(Ipv4Addr::new(198, 19, 1, 2));
        let frame = u.build();
        assert!(verifies(&u.l3, PROTO_UDP, &frame[34..]));
    }

    #[test]
    fn syn_over_both_families_has_the_syn_flag_and_a_valid_checksum() {
        let l3s = [
            L3::V4 {
                src: Ipv4Addr::new(198, 19, 1, 2),
                dst: Ipv4Addr::new(198, 18, 2, 1),
            },
            L3::V6 {
                src: "fd00:5:5:1::7".parse().unwrap(),
                dst: "fd00:18:2::1".parse().unwrap(),
            },
        ];
        for l3 in l3s {
            let s = Syn {
                src_mac: [2, 0, 0, 0, 0, 2],
                dst_mac: [2, 0, 0, 0, 0, 1],
                l3,
                src_port: 1234,
                dst_port: 7000,
                seq: 0xdead_beef,
            };
            let frame = s.build();
            let l4 = match l3 {
                L3::V4 { .. } => 34,
                L3::V6 { .. } => 54,
            };
            assert_eq!(frame[l4 + 13], 0x02, "only SYN set");
            assert!(verifies(&l3, PROTO_TCP, &frame[l4..]));
        }
    }
}
