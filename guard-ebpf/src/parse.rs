//! Packet parsing with a bounds-checked cursor: Ethernet, up to two VLAN tags, IPv4 with
//! options, IPv6 with a bounded walk over extension headers, fragments and TCP flags.
use aya_ebpf::programs::XdpContext;
use guard_common::is_v4_mapped;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer tag).
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: usize = 4;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers walked before giving up on finding the transport header. The packet is
/// still judged by its source; only the SYN check needs the transport header.
const MAX_EXT_HEADERS: usize = 6;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Source address of a parsed IP packet, network order.
#[derive(Clone, Copy)]
pub enum Source {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// What the verdict pipeline needs from an IP packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub src: Source,
    /// TCP SYN without ACK: a connection attempt.
    pub syn: bool,
    /// The IP header parsed but the transport header is cut short: judged by the source,
    /// counted as malformed if it passes.
    pub truncated: bool,
    /// IPv6 neighbour discovery (RFC 4861): always passes.
    pub neighbour_discovery: bool,
}

pub enum Parsed {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passes untouched.
    NotIp,
    /// Too short or malformed to find a source address: passes, counted as malformed.
    Malformed,
    Ip(Packet),
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Reads `N` bytes at `off`.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    // SAFETY: ptr_at checked that N bytes at off are inside the packet; [u8; N] has align 1.
    ptr_at::<[u8; N]>(ctx, off).map(|p| unsafe { *p })
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    bytes::<2>(ctx, off).map(u16::from_be_bytes)
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Parsed {
    let Some(mut proto) = be16(ctx, 12) else {
        return Parsed::Malformed;
    };
    let mut off = ETH_HLEN;
    // Two tags cover 802.1Q and QinQ (802.1ad outer, 802.1Q inner). Unrolled on purpose.
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        let Some(inner) = be16(ctx, off + 2) else {
            return Parsed::Malformed;
        };
        proto = inner;
        off += VLAN_HLEN;
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(inner) = be16(ctx, off + 2) else {
                return Parsed::Malformed;
            };
            proto = inner;
            off += VLAN_HLEN;
            if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
                // A third tag: nothing on this host terminates it; don't guess.
                return Parsed::Malformed;
            }
        }
    }
    match proto {
        ETH_P_IP => parse_ipv4(ctx, off),
        ETH_P_IPV6 => parse_ipv6(ctx, off),
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Parsed {
    // The fixed 20-byte header: version/IHL, ..., flags/fragment offset at 6, protocol at 9,
    // source at 12.
    let Some(hdr) = bytes::<20>(ctx, off) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 4 {
        return Parsed::Malformed;
    }
    // IHL counts 32-bit words: 5 (no options) to 15 (40 bytes of options), RFC 791.
    let ihl = (hdr[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Parsed::Malformed;
    }
    let src = Source::V4([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let mut pkt = Packet {
        src,
        syn: false,
        truncated: false,
        neighbour_discovery: false,
    };
    // The options must be in the packet for the header to be valid. (Checks here are at
    // least two bytes wide: LLVM turns a one-byte check into `ptr >= end`, which the
    // verifier does not accept as a bound.)
    if ptr_at::<[u8; 2]>(ctx, off + ihl - 2).is_none() {
        return Parsed::Malformed;
    }
    let frag_offset = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x1fff;
    if frag_offset != 0 {
        // A non-first fragment has no transport header; it still counts against its source.
        return Parsed::Ip(pkt);
    }
    if hdr[9] == IPPROTO_TCP {
        tcp_flags(ctx, off + ihl, &mut pkt);
    }
    Parsed::Ip(pkt)
}

#[inline(always)]
fn tcp_flags(ctx: &XdpContext, l4: usize, pkt: &mut Packet) {
    // Flags are byte 13 of the TCP header; the header is at least 20 bytes (RFC 9293).
    match bytes::<20>(ctx, l4) {
        Some(tcp) => pkt.syn = tcp[13] & TCP_FLAG_SYN != 0 && tcp[13] & TCP_FLAG_ACK == 0,
        // A TCP header cut short (a tiny first fragment, RFC 1858) may hide a SYN that the
        // stack will reassemble: charge it as one.
        None => {
            pkt.truncated = true;
            pkt.syn = true;
        }
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Parsed {
    // Fixed header: next header at 6, hop limit at 7, source at 8..24.
    let Some(hdr) = bytes::<24>(ctx, off) else {
        return Parsed::Malformed;
    };
    if hdr[0] >> 4 != 6 || ptr_at::<[u8; 40]>(ctx, off).is_none() {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&hdr[8..24]);
    if is_v4_mapped(&src) {
        // Never valid on the wire, and it would share an IPv4 source's tracker entry.
        return Parsed::Malformed;
    }
    let hop_limit = hdr[7];
    let mut pkt = Packet {
        src: Source::V6(src),
        syn: false,
        truncated: false,
        neighbour_discovery: false,
    };
    let mut next = hdr[6];
    let mut off = off + 40;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = bytes::<2>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip(pkt);
                };
                next = ext[0];
                // Length in 8-octet units, not counting the first 8 (RFC 8200 4.3).
                off += (ext[1] as usize + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = bytes::<8>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip(pkt);
                };
                if u16::from_be_bytes([ext[2], ext[3]]) >> 3 != 0 {
                    // Non-first fragment: no transport header, still counts (RFC 8200 4.5).
                    return Parsed::Ip(pkt);
                }
                next = ext[0];
                off += 8;
            }
            IPV6_AH => {
                let Some(ext) = bytes::<2>(ctx, off) else {
                    pkt.truncated = true;
                    return Parsed::Ip(pkt);
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
        return Parsed::Ip(pkt);
    }
    match next {
        IPPROTO_TCP => tcp_flags(ctx, off, &mut pkt),
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
    Parsed::Ip(pkt)
}
