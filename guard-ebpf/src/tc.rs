//! The TC ingress stage of SYN cookies: an ACK whose cookie the XDP stage checked (its frame
//! carries a `CookieMeta`) is turned into a request socket of the listening socket with the
//! kfunc `bpf_sk_assign_tcp_reqsk` (Linux 6.11, as in the kernel selftest
//! `tcp_custom_syncookie`), with the MSS, window scale, SACK and timestamps the cookie and the
//! ACK's timestamp encode; the kernel then completes the connection for the real listener. No
//! iptables SYNPROXY, no conntrack. It never drops: what it does not hand over goes on as it
//! came.
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp, bpf_skc_to_tcp_sock},
    macros::classifier,
    programs::TcContext,
};
use guard_common::COOKIE_WSCALE;

use crate::cookie::{COOKIE_MAGIC, CookieMeta, META_SACK, META_TS};

/// `TCX_NEXT` (tcx) and `TC_ACT_UNSPEC` (clsact): let the packet go on as it is.
const NEXT: i32 = -1;
const TCP_LISTEN: u32 = 10;

/// `struct bpf_tcp_req_attrs` (include/net/tcp.h), 20 bytes.
#[repr(C)]
struct ReqAttrs {
    rcv_tsval: u32,
    rcv_tsecr: u32,
    mss: u16,
    rcv_wscale: u8,
    snd_wscale: u8,
    ecn_ok: u8,
    wscale_ok: u8,
    sack_ok: u8,
    tstamp_ok: u8,
    usec_ts_ok: u8,
    reserved: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<ReqAttrs>() == 20);

/// `int bpf_sk_assign_tcp_reqsk(struct __sk_buff *skb, struct sock *sk,
/// struct bpf_tcp_req_attrs *attrs, int attrs__sz)`, called as a kfunc: a `call` instruction
/// with `src_reg` 2 (BPF_PSEUDO_KFUNC_CALL) and the function's BTF id, written out by hand
/// (`guard_common::KFUNC_CALL_PLACEHOLDER`; the loader patches in the id of the running
/// kernel, since aya 0.14 relocates no kfunc calls).
///
/// # Safety
/// `skb` is the program's context, `sk` a trusted `tcp_sock` from `bpf_skc_to_tcp_sock`, and
/// `attrs` a valid `ReqAttrs`.
#[inline(always)]
unsafe fn assign_tcp_reqsk(
    skb: *mut __sk_buff,
    sk: *mut core::ffi::c_void,
    attrs: *mut ReqAttrs,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract; the instruction clobbers r0-r5 as any call does.
    unsafe {
        core::arch::asm!(
            // guard_common::KFUNC_CALL_PLACEHOLDER: BPF_JMP | BPF_CALL, dst 0, src 2 (kfunc),
            // off 0, imm 0x7eadbeef (little endian).
            ".byte 0x85, 0x20, 0x00, 0x00, 0xef, 0xbe, 0xad, 0x7e",
            inlateout("r1") skb => _,
            inlateout("r2") sk => _,
            inlateout("r3") attrs => _,
            inlateout("r4") core::mem::size_of::<ReqAttrs>() as u64 => _,
            lateout("r0") ret,
            lateout("r5") _,
        );
    }
    ret
}

#[classifier]
pub fn guard_tc(ctx: TcContext) -> i32 {
    handover(&ctx);
    NEXT
}

#[inline(always)]
fn handover(ctx: &TcContext) -> Option<()> {
    let skb = ctx.skb.skb;
    // SAFETY: the program's context.
    let (meta, data, end) = unsafe {
        (
            (*skb).data_meta as usize,
            (*skb).data as usize,
            (*skb).data_end as usize,
        )
    };
    if meta + core::mem::size_of::<CookieMeta>() > data {
        return None;
    }
    // SAFETY: inside the metadata (checked).
    let m = unsafe { core::ptr::read_unaligned(meta as *const CookieMeta) };
    if m.magic != COOKIE_MAGIC {
        return None;
    }
    let tuple = tuple(data, end)?;
    let (mut t, size) = tuple;
    // SAFETY: a valid context and a tuple of the size given, on the stack; released below.
    let skc =
        unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), &mut t, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if skc.is_null() {
        return None;
    }
    // SAFETY: a socket from the lookup, read before its release.
    let listening = unsafe { (*skc.cast::<bpf_sock>()).state } == TCP_LISTEN;
    if listening {
        let ts = m.flags & META_TS != 0;
        let wscale = m.snd_wscale != 0xff && ts;
        let mut attrs = ReqAttrs {
            rcv_tsval: m.tsval,
            rcv_tsecr: m.tsecr,
            mss: m.mss,
            rcv_wscale: if wscale { COOKIE_WSCALE } else { 0 },
            snd_wscale: if wscale { m.snd_wscale } else { 0 },
            ecn_ok: 0,
            wscale_ok: wscale as u8,
            sack_ok: (ts && m.flags & META_SACK != 0) as u8,
            tstamp_ok: ts as u8,
            usec_ts_ok: 0,
            reserved: [0; 3],
        };
        // SAFETY: a socket from the lookup; a null result is checked.
        let tp = unsafe { bpf_skc_to_tcp_sock(skc.cast()) };
        if !tp.is_null() {
            // SAFETY: the context, a trusted tcp_sock, attributes on the stack.
            unsafe { assign_tcp_reqsk(skb, tp.cast(), &mut attrs) };
        }
    }
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(skc.cast()) };
    Some(())
}

/// The ACK's 4-tuple from the frame (after up to two VLAN tags), and its size.
#[inline(always)]
fn tuple(data: usize, end: usize) -> Option<(bpf_sock_tuple, u32)> {
    let at = |off: usize| -> Option<u16> {
        if data + off + 2 > end {
            return None;
        }
        // SAFETY: inside the frame (checked).
        Some(u16::from_be(unsafe {
            core::ptr::read_unaligned((data + off) as *const u16)
        }))
    };
    let mut l3 = 14;
    let mut proto = at(12)?;
    for _ in 0..2 {
        if proto == 0x8100 || proto == 0x88a8 {
            proto = at(l3 + 2)?;
            l3 += 4;
        }
    }
    let zero = crate::limit::opaque_zero() as u32;
    let mut t = bpf_sock_tuple {
        __bindgen_anon_1: aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1 {
            ipv6: aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: [zero; 4],
                daddr: [zero; 4],
                sport: zero as u16,
                dport: zero as u16,
            },
        },
    };
    match proto {
        0x0800 => {
            let ip = data + l3;
            if ip + 20 + 4 > end {
                return None;
            }
            // SAFETY: the IPv4 header and the ports are inside the frame (checked).
            unsafe {
                let ihl = (*(ip as *const u8) & 0x0f) as usize * 4;
                if ihl != 20 || *((ip + 9) as *const u8) != 6 {
                    return None;
                }
                t.__bindgen_anon_1.ipv4.saddr = core::ptr::read_unaligned((ip + 12) as *const u32);
                t.__bindgen_anon_1.ipv4.daddr = core::ptr::read_unaligned((ip + 16) as *const u32);
                t.__bindgen_anon_1.ipv4.sport = core::ptr::read_unaligned((ip + 20) as *const u16);
                t.__bindgen_anon_1.ipv4.dport = core::ptr::read_unaligned((ip + 22) as *const u16);
            }
            Some((t, 12))
        }
        0x86dd => {
            let ip = data + l3;
            if ip + 40 + 4 > end {
                return None;
            }
            // SAFETY: the IPv6 header and the ports are inside the frame (checked).
            unsafe {
                if *((ip + 6) as *const u8) != 6 {
                    return None;
                }
                let s = core::ptr::read_unaligned((ip + 8) as *const [u32; 4]);
                let d = core::ptr::read_unaligned((ip + 24) as *const [u32; 4]);
                t.__bindgen_anon_1.ipv6.saddr = s;
                t.__bindgen_anon_1.ipv6.daddr = d;
                t.__bindgen_anon_1.ipv6.sport = core::ptr::read_unaligned((ip + 40) as *const u16);
                t.__bindgen_anon_1.ipv6.dport = core::ptr::read_unaligned((ip + 42) as *const u16);
            }
            Some((t, 36))
        }
        _ => None,
    }
}
