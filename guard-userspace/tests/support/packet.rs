//! A small packet builder for fixtures: Ethernet with VLAN tags, IPv4 with options and
//! fragments, IPv6 with extension headers, TCP/UDP/ICMPv6, and ARP.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr};

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy)]
pub enum L4 {
    Udp,
    Tcp(u8),
    /// ICMPv6 type.
    Icmp6(u8),
    None,
}

#[derive(Clone)]
pub struct Builder {
    vlans: Vec<u16>,
    l3: L3,
    l4: L4,
    payload: usize,
    /// Source and destination ports (TCP and UDP).
    ports: (u16, u16),
    /// The destination address, if not the default (198.18.0.1, fd00::1).
    dst: Option<std::net::IpAddr>,
}

#[derive(Clone)]
enum L3 {
    V4 {
        src: Ipv4Addr,
        options: usize,
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        /// (next-header code, total length in bytes) per extension header.
        ext: Vec<u8>,
        frag_offset: Option<u16>,
        hop_limit: u8,
    },
    Arp,
}

impl Builder {
    pub fn v4(src: &str) -> Self {
        Self {
            vlans: Vec::new(),
            l3: L3::V4 {
                src: src.parse().unwrap(),
                options: 0,
                frag_offset: 0,
                more_fragments: false,
            },
            l4: L4::Udp,
            payload: 18,
            ports: (40_000, 8080),
            dst: None,
        }
    }

    pub fn v6(src: &str) -> Self {
        Self {
            vlans: Vec::new(),
            l3: L3::V6 {
                src: src.parse().unwrap(),
                ext: Vec::new(),
                frag_offset: None,
                hop_limit: 64,
            },
            l4: L4::Udp,
            payload: 18,
            ports: (40_000, 8080),
            dst: None,
        }
    }

    pub fn arp() -> Self {
        Self {
            vlans: Vec::new(),
            l3: L3::Arp,
            l4: L4::None,
            payload: 0,
            ports: (40_000, 8080),
            dst: None,
        }
    }

    /// Adds a VLAN tag (outermost first); `tpid` 0x88a8 for an 802.1ad outer tag.
    pub fn vlan(mut self, tpid: u16) -> Self {
        self.vlans.push(tpid);
        self
    }

    pub fn tcp(mut self, flags: u8) -> Self {
        self.l4 = L4::Tcp(flags);
        self
    }

    pub fn icmp6(mut self, ty: u8) -> Self {
        self.l4 = L4::Icmp6(ty);
        self
    }

    pub fn hop_limit(mut self, h: u8) -> Self {
        if let L3::V6 { hop_limit, .. } = &mut self.l3 {
            *hop_limit = h;
        }
        self
    }

    /// IPv4 options, in bytes (a multiple of 4, at most 40).
    pub fn options(mut self, n: usize) -> Self {
        if let L3::V4 { options, .. } = &mut self.l3 {
            *options = n;
        }
        self
    }

    /// Makes this a fragment at `offset` (in 8-byte units).
    pub fn fragment(mut self, offset: u16) -> Self {
        match &mut self.l3 {
            L3::V4 {
                frag_offset,
                more_fragments,
                ..
            } => {
                *frag_offset = offset;
                *more_fragments = true;
            }
            L3::V6 { frag_offset, .. } => *frag_offset = Some(offset),
            L3::Arp => {}
        }
        self
    }

    /// IPv6 extension headers by next-header code (0 hop-by-hop, 43 routing, 60 dest opts).
    pub fn ext(mut self, code: u8) -> Self {
        if let L3::V6 { ext, .. } = &mut self.l3 {
            ext.push(code);
        }
        self
    }

    /// TCP or UDP ports (the defaults: 40000 to 8080 for UDP, 40000 to 80 for TCP).
    pub fn ports(mut self, src: u16, dst: u16) -> Self {
        self.ports = (src, dst);
        self
    }

    /// The destination address (of the packet's family).
    pub fn dst(mut self, addr: &str) -> Self {
        self.dst = Some(addr.parse().unwrap());
        self
    }

    /// Bytes of payload after the transport header (default 18).
    pub fn payload(mut self, n: usize) -> Self {
        self.payload = n;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2]);
        for tpid in &self.vlans {
            p.extend_from_slice(&tpid.to_be_bytes());
            p.extend_from_slice(&[0x00, 0x0a]);
        }
        let l4 = self.l4_bytes();
        match &self.l3 {
            L3::Arp => {
                p.extend_from_slice(&0x0806u16.to_be_bytes());
                // Ethernet/IPv4 request, who-has 198.18.0.1 tell 198.18.0.2.
                p.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
                p.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 198, 18, 0, 2]);
                p.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
            }
            L3::V4 {
                src,
                options,
                frag_offset,
                more_fragments,
            } => {
                p.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 5 + options / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                let proto = match self.l4 {
                    L4::Tcp(_) => 6,
                    L4::Udp => 17,
                    L4::Icmp6(_) | L4::None => 1,
                };
                let frag = frag_offset | if *more_fragments { 0x2000 } else { 0 };
                p.push(0x40 | ihl as u8);
                p.push(0);
                p.extend_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&[0, 1]);
                p.extend_from_slice(&frag.to_be_bytes());
                p.extend_from_slice(&[64, proto, 0, 0]);
                p.extend_from_slice(&src.octets());
                match self.dst {
                    Some(std::net::IpAddr::V4(d)) => p.extend_from_slice(&d.octets()),
                    _ => p.extend_from_slice(&[198, 18, 0, 1]),
                }
                // NOPs, then end of options.
                p.extend(std::iter::repeat_n(1u8, *options));
                if *frag_offset == 0 {
                    p.extend_from_slice(&l4);
                } else {
                    p.extend(std::iter::repeat_n(0xabu8, 24));
                }
            }
            L3::V6 {
                src,
                ext,
                frag_offset,
                hop_limit,
            } => {
                p.extend_from_slice(&0x86ddu16.to_be_bytes());
                let last = match self.l4 {
                    L4::Tcp(_) => 6,
                    L4::Udp => 17,
                    L4::Icmp6(_) => 58,
                    L4::None => 59,
                };
                // The chain: ext..., [fragment], L4.
                let mut chain: Vec<u8> = ext.clone();
                if frag_offset.is_some() {
                    chain.push(44);
                }
                let mut hdrs = Vec::new();
                for (i, code) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).copied().unwrap_or(last);
                    if *code == 44 {
                        let off = frag_offset.unwrap_or(0) << 3 | 1;
                        hdrs.extend_from_slice(&[next, 0]);
                        hdrs.extend_from_slice(&off.to_be_bytes());
                        hdrs.extend_from_slice(&[0, 0, 0, 7]);
                    } else {
                        // 16 bytes: hdr ext len 1, padded with PadN.
                        hdrs.extend_from_slice(&[next, 1, 1, 12]);
                        hdrs.extend(std::iter::repeat_n(0u8, 12));
                    }
                }
                let body: Vec<u8> = if frag_offset.unwrap_or(0) != 0 {
                    vec![0xab; 24]
                } else {
                    l4.clone()
                };
                let first = chain.first().copied().unwrap_or(last);
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                p.extend_from_slice(&((hdrs.len() + body.len()) as u16).to_be_bytes());
                p.push(first);
                p.push(*hop_limit);
                p.extend_from_slice(&src.octets());
                match self.dst {
                    Some(std::net::IpAddr::V6(d)) => p.extend_from_slice(&d.octets()),
                    _ => p.extend_from_slice(&"fd00::1".parse::<Ipv6Addr>().unwrap().octets()),
                }
                p.extend_from_slice(&hdrs);
                p.extend_from_slice(&body);
            }
        }
        p
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.l4 {
            L4::Udp => {
                l4.extend_from_slice(&self.ports.0.to_be_bytes());
                l4.extend_from_slice(&self.ports.1.to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
            }
            L4::Tcp(flags) => {
                l4.extend_from_slice(&self.ports.0.to_be_bytes());
                // The default TCP destination is port 80 (the UDP one 8080).
                let dport = if self.ports == (40_000, 8080) {
                    80
                } else {
                    self.ports.1
                };
                l4.extend_from_slice(&dport.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
                l4.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            }
            L4::Icmp6(ty) => l4.extend_from_slice(&[ty, 0, 0, 0, 0, 0, 0, 0]),
            L4::None => {}
        }
        l4.extend(std::iter::repeat_n(0x5au8, self.payload));
        l4
    }
}
