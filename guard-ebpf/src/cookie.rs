//! The SYN-cookie stage, a program of its own that the verdict pipeline tail-calls (so the
//! verifier judges it apart): a SYN from a source that is not known is answered in place with
//! a SYN-ACK carrying the kernel's own SYN cookie (`bpf_tcp_raw_gen_syncookie_ipv4/ipv6`, Linux
//! 6.0) and sent back with `XDP_TX`; the client's ACK is checked
//! (`bpf_tcp_raw_check_syncookie_*`), and a valid one makes its source known and passes on, with
//! what the TC stage (`tc.rs`) needs to hand the connection to the listener. The cookie and the
//! timestamp encoding are the kernel's (net/ipv4/syncookies.c: `cookie_init_timestamp`), as in
//! the reference selftest (tools/testing/selftests/bpf/progs/xdp_synproxy_kern.c).
//!
//! Headers are copied to the stack (`bpf_xdp_load_bytes`), built there, and written back
//! (`bpf_xdp_store_bytes`): the helpers take stack copies, and no packet pointer with a
//! variable offset (VLAN tags) needs proving in bounds.
use aya_ebpf::{
    EbpfContext,
    bindings::{iphdr, ipv6hdr, tcphdr, xdp_action},
    helpers::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6, bpf_tcp_raw_gen_syncookie_ipv4,
        bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use guard_common::{
    COOKIE_MSS_TABLE_V4, COOKIE_MSS_TABLE_V6, COOKIE_MSS_V4, COOKIE_MSS_V6, COOKIE_WSCALE,
    capacity, cookie_ts_options, cookie_tsval, known_by, reason,
};

use crate::{
    known,
    maps::{SCRATCH, STATS},
    parse::Packet,
};

/// The SYN-ACK's window (unscaled in a SYN-ACK, RFC 7323 2.2).
const WINDOW: u16 = 64_240;
const TTL: u8 = 64;

/// What the TC stage needs to hand a cookie client's connection to the listener, in the
/// frame's metadata (`bpf_xdp_adjust_meta`), so it travels with the ACK to whichever CPU the
/// stack runs it on.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CookieMeta {
    /// `COOKIE_MAGIC`: a cookie this program made and checked.
    pub magic: u32,
    pub mss: u16,
    /// The client's window scale (0xff: none).
    pub snd_wscale: u8,
    /// `META_*` bits.
    pub flags: u8,
    /// The ACK's timestamp option, host order.
    pub tsval: u32,
    pub tsecr: u32,
}

/// `CookieMeta::magic`.
pub const COOKIE_MAGIC: u32 = 0x6775_6331;
/// `CookieMeta::flags`: the client permits SACK.
pub const META_SACK: u8 = 1;
/// `CookieMeta::flags`: the ACK carries a timestamp.
pub const META_TS: u8 = 2;

/// Counts one verdict of this stage, as the pipeline's `record` does for its own.
#[inline(always)]
fn record(ctx: &XdpContext, why: usize, len: u64) {
    let slot = (ctx.ingress_ifindex() as u32) % capacity::STATS_SLOTS;
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        let c = unsafe { &mut *c };
        if why < reason::COUNT {
            c.packets[why] += 1;
            c.bytes[why] += len;
        }
    }
}

#[aya_ebpf::macros::xdp]
pub fn guard_cookie(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        record(&ctx, reason::PASSED, len);
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch, filled by the run that tail-called us.
    let scratch = unsafe { &*scratch };
    let pkt = &scratch.pkt;
    let (why, action) = if pkt.syn {
        match syn_ack(&ctx, pkt) {
            Answer::Sent => (reason::COOKIE_SENT, xdp_action::XDP_TX),
            // Not answerable here (IP options, extension headers): the kernel answers it,
            // with its own SYN cookies if its queue is full.
            Answer::NotHere => (reason::PASSED, xdp_action::XDP_PASS),
            // Rewritten half-way and then refused by a helper (never expected): a broken frame
            // goes nowhere.
            Answer::Broken => (reason::MALFORMED_LIMITED, xdp_action::XDP_DROP),
        }
    } else if ack_valid(&ctx, pkt) {
        known::promote(&scratch.job.key, scratch.job.now, known_by::COOKIE);
        (reason::COOKIE_VALID, xdp_action::XDP_PASS)
    } else {
        (reason::COOKIE_INVALID, xdp_action::XDP_DROP)
    };
    record(&ctx, why, len);
    action
}

/// The IP header's offset as the verifier can bound it (two VLAN tags at most), if the TCP
/// header follows it directly: IPv4 without options, IPv6 without extension headers. `None`
/// for any other layout (the kernel handles those).
#[inline(always)]
fn l3_offset(pkt: &Packet) -> Option<u32> {
    let l3 = u32::from(pkt.l3_off);
    let hdr = if pkt.src.v6 { 40 } else { 20 };
    ((14..=22).contains(&l3) && u32::from(pkt.l4_off) == l3 + hdr).then_some(l3 & 0x1f)
}

/// A copy of the IP header (20 or 40 bytes) and the TCP header (up to 60) of the frame, and
/// what the TCP options say: window scale (0xf: none), SACK permitted, and the timestamp
/// (without one, no window scale or SACK can be encoded in a cookie, as in the kernel).
#[repr(C)]
struct Headers {
    ip: [u8; 40],
    tcp: [u8; 64],
    /// Where the option walk stands (from 20), and the TCP header's length.
    off: u32,
    len: u32,
    wscale: u8,
    sack: u8,
    ts: u8,
    _pad: u8,
    /// The timestamp option's TSval and TSecr, network order.
    tsval: u32,
    tsecr: u32,
}

impl Headers {
    /// Copies the headers at `l3` out of the frame and walks the TCP options. `None` if the
    /// frame does not hold them.
    #[inline(always)]
    fn read(ctx: &XdpContext, l3: u32, v6: bool) -> Option<Headers> {
        let zero = crate::limit::opaque_zero() as u32;
        let mut h = Headers {
            ip: [0; 40],
            tcp: [0; 64],
            off: 20,
            len: 20,
            wscale: 0xf,
            sack: 0,
            ts: 0,
            _pad: 0,
            tsval: zero,
            tsecr: zero,
        };
        let ip_len = if v6 { 40 } else { 20 };
        let l4 = l3 + ip_len;
        let md = ctx.as_ptr().cast();
        // SAFETY (the three copies): a valid context, stack buffers at least as long as the
        // lengths given (each bounded before the call).
        unsafe {
            if bpf_xdp_load_bytes(md, l3, h.ip.as_mut_ptr().cast(), ip_len) != 0
                || bpf_xdp_load_bytes(md, l4, h.tcp.as_mut_ptr().cast(), 20) != 0
            {
                return None;
            }
        }
        let len = u32::from(h.tcp[12] >> 4) * 4;
        if !(20..=60).contains(&len) {
            return None;
        }
        h.len = len;
        if len > 20 {
            // SAFETY: as above; the options, up to 40 bytes, after the fixed 20.
            let r = unsafe {
                bpf_xdp_load_bytes(
                    md,
                    l4 + 20,
                    h.tcp.as_mut_ptr().add(20).cast(),
                    (len - 20) & 0x3f,
                )
            };
            if r != 0 {
                return None;
            }
            // At most 40 steps: each takes one byte at least.
            for _ in 0..40 {
                if option_step(&mut h) {
                    break;
                }
            }
        }
        Some(h)
    }

    /// The kernel's check of the cookie in this ACK (its ack number - 1): 0 if valid.
    #[inline(always)]
    fn check(&mut self, v6: bool) -> i64 {
        // SAFETY: stack copies of the whole headers.
        unsafe {
            if v6 {
                bpf_tcp_raw_check_syncookie_ipv6(
                    self.ip.as_mut_ptr().cast::<ipv6hdr>(),
                    self.tcp.as_mut_ptr().cast::<tcphdr>(),
                )
            } else {
                bpf_tcp_raw_check_syncookie_ipv4(
                    self.ip.as_mut_ptr().cast::<iphdr>(),
                    self.tcp.as_mut_ptr().cast::<tcphdr>(),
                )
            }
        }
    }
}

/// One step of the option walk: true when it is over. (`bpf_loop` would suit it better, but
/// its callbacks need BTF function info, which this object does not carry.)
#[inline(always)]
fn option_step(h: &mut Headers) -> bool {
    let off = (h.off & 0x3f) as usize;
    if off >= h.len as usize || off >= 59 {
        return true;
    }
    let kind = h.tcp[off];
    match kind {
        0 => return true,
        1 => {
            h.off += 1;
            return false;
        }
        _ => {}
    }
    let len = h.tcp[(off + 1) & 0x3f] as usize;
    if len < 2 || off + len > h.len as usize {
        return true;
    }
    match (kind, len) {
        (3, 3) => h.wscale = h.tcp[(off + 2) & 0x3f].min(14),
        (4, 2) => h.sack = 1,
        (8, 10) if off <= 50 => {
            h.ts = 1;
            let t = &h.tcp;
            h.tsval = u32::from_ne_bytes([t[off + 2], t[off + 3], t[off + 4], t[off + 5]]);
            h.tsecr = u32::from_ne_bytes([t[off + 6], t[off + 7], t[off + 8], t[off + 9]]);
        }
        _ => {}
    }
    h.off += len as u32;
    false
}

/// Folds a 64-bit one's-complement sum into the 16-bit checksum (RFC 1071).
#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff_ffff) + (s >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

enum Answer {
    Sent,
    NotHere,
    Broken,
}

/// Turns the SYN into a SYN-ACK with a cookie.
#[inline(never)]
fn syn_ack(ctx: &XdpContext, pkt: &Packet) -> Answer {
    let Some(l3) = l3_offset(pkt) else {
        return Answer::NotHere;
    };
    let v6 = pkt.src.v6;
    let Some(mut h) = Headers::read(ctx, l3, v6) else {
        return Answer::NotHere;
    };
    // SAFETY: stack copies of the whole headers, the TCP one of its own length.
    let v = unsafe {
        if v6 {
            bpf_tcp_raw_gen_syncookie_ipv6(
                h.ip.as_mut_ptr().cast::<ipv6hdr>(),
                h.tcp.as_mut_ptr().cast::<tcphdr>(),
                h.len & 0x3f,
            )
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(
                h.ip.as_mut_ptr().cast::<iphdr>(),
                h.tcp.as_mut_ptr().cast::<tcphdr>(),
                h.len & 0x3f,
            )
        }
    };
    if v < 0 {
        return Answer::NotHere;
    }
    let cookie = v as u32;
    // With a timestamp: MSS, SACK (or two NOPs), the timestamp, NOP and window scale (or
    // NOPs), 40 bytes. Without: MSS only, 24 bytes, as the kernel's cookies do.
    let ts = h.ts != 0;
    let tcp_len: u32 = if ts { 40 } else { 24 };
    let mss = if v6 { COOKIE_MSS_V6 } else { COOKIE_MSS_V4 };
    let t = &mut h.tcp;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let (sport, dport) = ([t[0], t[1]], [t[2], t[3]]);
    t[0..2].copy_from_slice(&dport);
    t[2..4].copy_from_slice(&sport);
    t[4..8].copy_from_slice(&cookie.to_be_bytes());
    t[8..12].copy_from_slice(&seq.wrapping_add(1).to_be_bytes());
    t[12] = ((tcp_len / 4) as u8) << 4;
    t[13] = 0x12;
    t[14..16].copy_from_slice(&WINDOW.to_be_bytes());
    t[16..20].copy_from_slice(&[0; 4]);
    t[20..24].copy_from_slice(&((2u32 << 24) | (4 << 16) | u32::from(mss)).to_be_bytes());
    if ts {
        // SAFETY: bpf_ktime_get_ns has no preconditions (the kernel's tcp_clock_ms).
        let now_ms = unsafe { bpf_ktime_get_ns() } / 1_000_000;
        let tsval = cookie_tsval(now_ms, h.wscale, h.sack != 0);
        let sack_ts: u32 = if h.sack != 0 {
            (4 << 24) | (2 << 16) | (8 << 8) | 10
        } else {
            (1 << 24) | (1 << 16) | (8 << 8) | 10
        };
        let ws: u32 = if h.wscale != 0xf {
            (1 << 24) | (3 << 16) | (3 << 8) | u32::from(COOKIE_WSCALE)
        } else {
            0x0101_0101
        };
        let client_ts = h.tsval;
        let t = &mut h.tcp;
        t[24..28].copy_from_slice(&sack_ts.to_be_bytes());
        t[28..32].copy_from_slice(&tsval.to_be_bytes());
        // TSecr: the client's TSval, as it came.
        t[32..36].copy_from_slice(&client_ts.to_ne_bytes());
        t[36..40].copy_from_slice(&ws.to_be_bytes());
    }
    // The IP header: addresses swapped, a fresh header for the SYN-ACK; the pseudo-header's
    // sum for the TCP checksum.
    let ip_len: u32 = if v6 { 40 } else { 20 };
    let mut sum: u64;
    if v6 {
        let ip = &mut h.ip;
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        a.copy_from_slice(&ip[8..24]);
        b.copy_from_slice(&ip[24..40]);
        ip[8..24].copy_from_slice(&b);
        ip[24..40].copy_from_slice(&a);
        ip[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
        ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        ip[6] = 6;
        ip[7] = TTL;
        // SAFETY: 32 bytes of the stack copy.
        sum = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                ip.as_mut_ptr().add(8).cast(),
                32,
                0,
            )
        } as u64;
        sum += u64::from(tcp_len.to_be());
        sum += u64::from(6u32.to_be());
    } else {
        let ip = &mut h.ip;
        let a = u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let b = u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]);
        ip[12..16].copy_from_slice(&b.to_ne_bytes());
        ip[16..20].copy_from_slice(&a.to_ne_bytes());
        // Version/IHL, TOS 0, total length; id 0, DF; TTL, TCP, checksum.
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&(20 + tcp_len as u16).to_be_bytes());
        ip[4..8].copy_from_slice(&0x0000_4000u32.to_be_bytes());
        ip[8] = TTL;
        ip[9] = 6;
        ip[10] = 0;
        ip[11] = 0;
        // SAFETY: the 20 bytes of the stack copy.
        let ip_sum =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, ip.as_mut_ptr().cast(), 20, 0) };
        ip[10..12].copy_from_slice(&fold(ip_sum as u64).to_ne_bytes());
        sum = u64::from(a) + u64::from(b);
        sum += u64::from(6u16.to_be());
        sum += u64::from((tcp_len as u16).to_be());
    }
    // SAFETY: the stack copy, 24 or 40 bytes of it.
    sum += unsafe {
        if ts {
            bpf_csum_diff(core::ptr::null_mut(), 0, h.tcp.as_mut_ptr().cast(), 40, 0)
        } else {
            bpf_csum_diff(core::ptr::null_mut(), 0, h.tcp.as_mut_ptr().cast(), 24, 0)
        }
    } as u64;
    let check = fold(sum);
    h.tcp[16..18].copy_from_slice(&check.to_ne_bytes());

    // The frame becomes the SYN-ACK: the same L2 header (MACs swapped, VLAN tags kept), then
    // the new IP and TCP headers, nothing after.
    let have = (ctx.data_end() - ctx.data()) as i32;
    let delta = (l3 + ip_len + tcp_len) as i32 - have;
    let md = ctx.as_ptr().cast();
    // SAFETY: a valid context; no packet pointer is held across the call.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(md, delta) } != 0 {
        return Answer::NotHere;
    }
    let mut macs = [0u8; 12];
    // SAFETY (the stores): a valid context, stack buffers of the lengths given.
    unsafe {
        if bpf_xdp_load_bytes(md, 0, macs.as_mut_ptr().cast(), 12) != 0 {
            return Answer::Broken;
        }
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&macs[6..]);
        swapped[6..].copy_from_slice(&macs[..6]);
        let ok = bpf_xdp_store_bytes(md, 0, swapped.as_mut_ptr().cast(), 12) == 0
            && if v6 {
                bpf_xdp_store_bytes(md, l3, h.ip.as_mut_ptr().cast(), 40) == 0
            } else {
                bpf_xdp_store_bytes(md, l3, h.ip.as_mut_ptr().cast(), 20) == 0
            }
            && if ts {
                bpf_xdp_store_bytes(md, l3 + ip_len, h.tcp.as_mut_ptr().cast(), 40) == 0
            } else {
                bpf_xdp_store_bytes(md, l3 + ip_len, h.tcp.as_mut_ptr().cast(), 24) == 0
            };
        if !ok {
            return Answer::Broken;
        }
    }
    Answer::Sent
}

/// Is the ACK's cookie (its ack number - 1) one the kernel's secret made for this 4-tuple in
/// the last two minutes? If so, what the TC stage needs goes into the frame's metadata.
#[inline(never)]
fn ack_valid(ctx: &XdpContext, pkt: &Packet) -> bool {
    let Some(l3) = l3_offset(pkt) else {
        return false;
    };
    let v6 = pkt.src.v6;
    let Some(mut h) = Headers::read(ctx, l3, v6) else {
        return false;
    };
    if h.check(v6) != 0 {
        return false;
    }
    // The MSS index the cookie encodes (the helper says only valid or not): the cookie less k
    // still checks exactly while k is at most the index (it sits in the cookie's low bits).
    let ack = u32::from_be_bytes([h.tcp[8], h.tcp[9], h.tcp[10], h.tcp[11]]);
    let mut index = 0usize;
    for k in [3u32, 2, 1] {
        h.tcp[8..12].copy_from_slice(&ack.wrapping_sub(k).to_be_bytes());
        if h.check(v6) == 0 {
            index = k as usize;
            break;
        }
    }
    let mss = if v6 {
        COOKIE_MSS_TABLE_V6[index & 3]
    } else {
        COOKIE_MSS_TABLE_V4[index & 3]
    };
    let (wscale, sack) = cookie_ts_options(u32::from_be(h.tsecr));
    let mut flags = 0;
    if sack {
        flags |= META_SACK;
    }
    if h.ts != 0 {
        flags |= META_TS;
    }
    let meta = CookieMeta {
        magic: COOKIE_MAGIC,
        mss,
        snd_wscale: wscale.unwrap_or(0xff),
        flags,
        tsval: u32::from_be(h.tsval),
        tsecr: u32::from_be(h.tsecr),
    };
    // SAFETY: a valid context; packet pointers are read again below.
    if unsafe { bpf_xdp_adjust_meta(ctx.as_ptr().cast(), -16) } != 0 {
        // No room for metadata (never expected of a driver with XDP): the ACK passes; with
        // no handover the listener answers it with a reset, and the client connects again.
        return true;
    }
    // SAFETY: data_meta and data of the context: the metadata just made 16 bytes long.
    let (m, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if m + 16 > data {
        return true;
    }
    // SAFETY: inside the metadata (checked against data).
    unsafe { core::ptr::write_unaligned(m as *mut CookieMeta, meta) };
    true
}
