//! Packet parsing with a bounds-checked cursor: Ethernet, up to two VLAN tags, IPv4 with
//! options, IPv6 with a bounded walk over extension headers, fragments, ports and TCP flags.
//! A frame whose source can be read is always returned with it, however malformed the rest.
use aya_ebpf::programs::XdpContext;

/// The frame's bytes: where they start and end. Read from the context once and passed as full
/// 64-bit values: a subprogram given the context instead may get the two fields as promoted
/// 32-bit arguments, and the verifier then sees numbers, not packet pointers.
pub struct Frame {
    pub start: usize,
    pub end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn of(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }
}
use guard_common::is_v4_mapped;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer tag).
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on finding the transport header. The packet is
/// still judged by its source; only the SYN check needs the transport header.
const MAX_EXT_HEADERS: usize = 6;

pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// An address of a parsed IP packet: IPv4, or IPv6, as the bytes in network order held in two
/// words (IPv4 in the first four bytes, the rest zero). Words, and a struct with every field
/// set rather than an enum, on purpose: zeroed byte arrays and an enum's shorter variant
/// compile to `memset` loops or copies of undefined bytes, which cost the verifier dearly or
/// fail it.
#[derive(Clone, Copy)]
pub struct Source {
    pub v6: bool,
    pub hi: u64,
    pub lo: u64,
}

impl Source {
    #[inline(always)]
    pub fn v4(a: [u8; 4]) -> Self {
        Self {
            v6: false,
            hi: u64::from(u32::from_ne_bytes(a)),
            lo: 0,
        }
    }

    #[inline(always)]
    pub fn v6(a: &[u8; 16]) -> Self {
        Self {
            v6: true,
            hi: u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]),
            lo: u64::from_ne_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]),
        }
    }

    /// The IPv6 address (meaningful when `v6`).
    #[inline(always)]
    pub fn bytes(&self) -> [u8; 16] {
        let h = self.hi.to_ne_bytes();
        let l = self.lo.to_ne_bytes();
        [
            h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], l[0], l[1], l[2], l[3], l[4], l[5],
            l[6], l[7],
        ]
    }

    /// The IPv4 address (meaningful when `!v6`).
    #[inline(always)]
    pub fn v4_bytes(&self) -> [u8; 4] {
        (self.hi as u32).to_ne_bytes()
    }
}

/// What the verdict pipeline needs from an IP packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub src: Source,
    /// Destination address (the same family as `src`), network order.
    pub dst: Source,
    /// The transport protocol (after the extension headers), or 0 if it was not reached.
    pub proto: u8,
    /// TCP flags, 0 for anything else.
    pub tcp_flags: u8,
    /// Source and destination ports (TCP and UDP, host order), 0 when unknown.
    pub sport: u16,
    pub dport: u16,
    /// TCP SYN without ACK: a connection attempt.
    pub syn: bool,
    /// A TCP segment that carries data (by the IP length and the TCP data offset).
    pub tcp_payload: bool,
    /// Where the IP datagram ends by its own length field (offset in the frame).
    pub ip_end: u16,
    /// Offsets of the IP header and (0 if not read) of the TCP header in the frame.
    pub l3_off: u16,
    pub l4_off: u16,
    /// The IP header or the transport header is malformed or cut short: judged by the source,
    /// counted as malformed if it passes.
    pub truncated: bool,
    /// IPv6 neighbour discovery (RFC 4861): always passes.
    pub neighbour_discovery: bool,
}

/// What `parse` found; for `Ip`, the packet it filled in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passes untouched.
    NotIp,
    /// Too short or malformed to read a source address: held to the global budget for such
    /// frames.
    NoSource,
    /// A source that is never valid on the wire (an IPv4-mapped IPv6 address, RFC 4038 4.2):
    /// dropped.
    BadSource,
    Ip,
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it.
#[inline(always)]
fn ptr_at<T>(ctx: &Frame, off: usize) -> Option<*const T> {
    let start = ctx.start;
    let end = ctx.end;
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads `N` bytes at `off`.
#[inline(always)]
fn bytes<const N: usize>(ctx: &Frame, off: usize) -> Option<[u8; N]> {
    // SAFETY: ptr_at checked that N bytes at off are inside the packet; [u8; N] has align 1.
    ptr_at::<[u8; N]>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16(ctx: &Frame, off: usize) -> Option<u16> {
    bytes::<2>(ctx, off).map(u16::from_be_bytes)
}

/// Parses the frame; for `Parsed::Ip`, `out` holds the packet (written in place: a packet
/// returned by value is copied through the stack, and the program's frame is small). Not
/// inlined: its frame (headers are read into the stack) then never adds to the frames of the
/// calls after it.
#[inline(never)]
pub fn parse(frame: &Frame, out: &mut Packet) -> Parsed {
    let ctx = frame;
    let Some(mut proto) = be16(ctx, 12) else {
        return Parsed::NoSource;
    };
    let mut off = ETH_HLEN;
    // Two tags cover 802.1Q and QinQ (802.1ad outer, 802.1Q inner). Unrolled on purpose.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(inner) = be16(ctx, off + 2) else {
            return Parsed::NoSource;
        };
        proto = inner;
        off += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(inner) = be16(ctx, off + 2) else {
                return Parsed::NoSource;
            };
            proto = inner;
            off += VLAN_HLEN;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                // A third tag: nothing on this host terminates it, and where its source is
                // cannot be known without guessing: no readable source.
                return Parsed::NoSource;
            }
        }
    }
    match proto {
        ETH_P_IP => parse_ipv4(ctx, off, out),
        ETH_P_IPV6 => parse_ipv6(ctx, off, out),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &Frame, off: usize, pkt: &mut Packet) -> Parsed {
    // The fixed 20-byte header: version/IHL, ..., flags/fragment offset at 6, protocol at 9,
    // source at 12, destination at 16.
    let Some(hdr) = bytes::<20>(ctx, off) else {
        return Parsed::NoSource;
    };
    if hdr[0] >> 4 != 4 {
        return Parsed::NoSource;
    }
    *pkt = Packet {
        src: Source::v4([hdr[12], hdr[13], hdr[14], hdr[15]]),
        dst: Source::v4([hdr[16], hdr[17], hdr[18], hdr[19]]),
        proto: hdr[9],
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        syn: false,
        tcp_payload: false,
        ip_end: (off as u16).wrapping_add(u16::from_be_bytes([hdr[2], hdr[3]])),
        l3_off: off as u16,
        l4_off: 0,
        truncated: false,
        neighbour_discovery: false,
    };
    // IHL counts 32-bit words: 5 (no options) to 15 (40 bytes of options), RFC 791. A bad IHL
    // or options beyond the frame: the header is not valid, but its source is readable, and
    // the frame is judged by it (and charged as a SYN if it is TCP, as it may hide one).
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    // (Checks here are at least two bytes wide: LLVM turns a one-byte check into
    // `ptr >= end`, which the verifier does not accept as a bound.)
    if ihl < 20 || ptr_at::<[u8; 2]>(ctx, off + ihl - 2).is_none() {
        pkt.truncated = true;
        pkt.syn = pkt.proto == IPPROTO_TCP;
        return Parsed::Ip;
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if frag_offset != 0 {
        // A non-first fragment has no transport header; it still counts against its source.
        return Parsed::Ip;
    }
    transport(ctx, off + ihl, pkt);
    Parsed::Ip
}

/// Reads the ports (TCP, UDP) and the TCP flags at `l4`.
#[inline(always)]
fn transport(ctx: &Frame, l4: usize, pkt: &mut Packet) {
    match pkt.proto {
        IPPROTO_TCP => tcp_flags(ctx, l4, pkt),
        IPPROTO_UDP => match bytes::<8>(ctx, l4) {
            Some(udp) => {
                pkt.sport = u16::from_be_bytes([udp[0], udp[1]]);
                pkt.dport = u16::from_be_bytes([udp[2], udp[3]]);
            }
            None => pkt.truncated = true,
        },
        _ => {}
    }
}

#[inline(always)]
fn tcp_flags(ctx: &Frame, l4: usize, pkt: &mut Packet) {
    // Flags are byte 13 of the TCP header; the header is at least 20 bytes (RFC 9293).
    match bytes::<20>(ctx, l4) {
        Some(tcp) => {
            pkt.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            pkt.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            pkt.tcp_flags = tcp[13];
            pkt.syn = tcp[13] & TCP_FLAG_SYN != 0 && tcp[13] & TCP_FLAG_ACK == 0;
            pkt.l4_off = l4 as u16;
            // Data offset: the header's length in 32-bit words.
            let hlen = usize::from(tcp[12] >> 4) * 4;
            pkt.tcp_payload = usize::from(pkt.ip_end) > l4 + hlen;
        }
        // A TCP header cut short (a tiny first fragment, RFC 1858) may hide a SYN that the
        // stack will reassemble: charge it as one.
        None => {
            pkt.truncated = true;
            pkt.syn = true;
        }
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &Frame, off: usize, pkt: &mut Packet) -> Parsed {
    // Fixed header: next header at 6, hop limit at 7, source at 8..24.
    let Some(hdr) = bytes::<24>(ctx, off) else {
        return Parsed::NoSource;
    };
    if hdr[0] >> 4 != 6 {
        return Parsed::NoSource;
    }
    let src = [
        hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15], hdr[16], hdr[17],
        hdr[18], hdr[19], hdr[20], hdr[21], hdr[22], hdr[23],
    ];
    if is_v4_mapped(&src) {
        // Never valid on the wire (RFC 4038 4.2; Linux before 5.16 may accept them), and it
        // would share an IPv4 source's tracker entry.
        return Parsed::BadSource;
    }
    let hop_limit = hdr[7];
    *pkt = Packet {
        src: Source::v6(&src),
        dst: Source::v6(&src),
        proto: 0,
        tcp_flags: 0,
        sport: 0,
        dport: 0,
        syn: false,
        tcp_payload: false,
        ip_end: (off as u16)
            .wrapping_add(40)
            .wrapping_add(u16::from_be_bytes([hdr[4], hdr[5]])),
        l3_off: off as u16,
        l4_off: 0,
        truncated: false,
        neighbour_discovery: false,
    };
    // The source is readable; a header cut short before its end is judged by it.
    let Some(rest) = bytes::<16>(ctx, off + 24) else {
        pkt.truncated = true;
        pkt.syn = hdr[6] == IPPROTO_TCP;
        return Parsed::Ip;
    };
    pkt.dst = Source::v6(&rest);
    let mut next = hdr[6];
    let mut off = off + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = bytes::<2>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip;
                };
                next = ext[0];
                // Length in 8-octet units, not counting the first 8 (RFC 8200 4.3).
                off += (ext[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = bytes::<8>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip;
                };
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    // Non-first fragment: no transport header, still counts (RFC 8200 4.5).
                    return Parsed::Ip;
                }
                next = ext[0];
                off += 8;
            }
            IPV6_AH => {
                let Some(ext) = bytes::<2>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip;
                };
                next = ext[0];
                // Length in 4-octet units, minus 2 (RFC 4302 2.2).
                off += (ext[1] as usize + 2) * 4;
            }
            _ => break,
        }
    }
    if matches!(
        next,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT | IPV6_AH
    ) {
        // More extension headers than the walk follows: the transport header is out of
        // sight, and could be a SYN. Judged by its source, charged as a SYN.
        pkt.truncated = true;
        pkt.syn = true;
        return Parsed::Ip;
    }
    pkt.proto = next;
    match next {
        IPPROTO_TCP | IPPROTO_UDP => transport(ctx, off, pkt),
        // Type, code and checksum are always there.
        IPPROTO_ICMPV6 => match bytes::<4>(ctx, off) {
            // Router/neighbour solicitation and advertisement, redirect. RFC 4861 7.1 has
            // receivers discard them unless the hop limit is 255, which also means they
            // cannot come from off-link: exempting only those gives a flood nothing.
            Some([t, ..]) => pkt.neighbour_discovery = (133..=137).contains(&t) && hop_limit == 255,
            None => pkt.truncated = true,
        },
        _ => {}
    }
    Parsed::Ip
}
