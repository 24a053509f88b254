//! Packets for the benchmarks: Ethernet (optionally VLAN-tagged) with IPv4 or IPv6 and UDP.
//! Adapted from guard-userspace's test builder, with real IPv4 header checksums so that the
//! flood frames survive the receiving stack's checks, and settable addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A UDP datagram in an Ethernet frame.
#[derive(Clone)]
pub struct Udp {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// VLAN TPIDs, outermost first.
    pub vlans: Vec<u16>,
    pub l3: L3,
    pub dst_port: u16,
    pub payload: usize,
}

#[derive(Clone, Copy)]
pub enum L3 {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

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
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(&self.dst_mac);
        p.extend_from_slice(&self.src_mac);
        for tpid in &self.vlans {
            p.extend_from_slice(&tpid.to_be_bytes());
            p.extend_from_slice(&[0x00, 0x0a]);
        }
        let udp_len = (8 + self.payload) as u16;
        let mut udp = Vec::with_capacity(usize::from(udp_len));
        udp.extend_from_slice(&40000u16.to_be_bytes());
        udp.extend_from_slice(&self.dst_port.to_be_bytes());
        udp.extend_from_slice(&udp_len.to_be_bytes());
        // Checksum 0: none (allowed for UDP over IPv4; the IPv6 frames are only test-run).
        udp.extend_from_slice(&[0, 0]);
        udp.extend(std::iter::repeat_n(0x5au8, self.payload));
        match self.l3 {
            L3::V4 { src, dst } => {
                p.extend_from_slice(&0x0800u16.to_be_bytes());
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
                ip[4..6].copy_from_slice(&[0, 1]);
                ip[8] = 64;
                ip[9] = 17;
                ip[12..16].copy_from_slice(&src.octets());
                ip[16..20].copy_from_slice(&dst.octets());
                let sum = ipv4_checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                p.extend_from_slice(&ip);
            }
            L3::V6 { src, dst } => {
                p.extend_from_slice(&0x86ddu16.to_be_bytes());
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                p.extend_from_slice(&udp_len.to_be_bytes());
                p.extend_from_slice(&[17, 64]);
                p.extend_from_slice(&src.octets());
                p.extend_from_slice(&dst.octets());
            }
        }
        p.extend_from_slice(&udp);
        p
    }
}

/// The IPv4 header checksum (RFC 791, RFC 1071): the ones' complement of the ones'
/// complement sum of the header's 16-bit words, with the checksum field zero.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
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
}
