//! Known sources: promotion (good standing, a TCP handshake the host accepted), the once-a-second
//! refresh of a known source's last-seen time, and the lookup of its TCP connection.
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock_tuple},
    helpers::{bpf_sk_lookup_tcp, bpf_sk_release},
    programs::XdpContext,
};
use guard_common::{Known, SourceKey, SourceState};

use crate::{
    maps::KNOWN,
    parse::{Packet, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
};

const NS_PER_SEC: u64 = 1_000_000_000;
/// After a lookup that found no connection, a tracked source's next one waits this long.
const HANDSHAKE_RETRY_NS: u64 = NS_PER_SEC / 10;
/// `struct sock` states (include/net/tcp_states.h) that mean no handshake completed here.
const TCP_LISTEN: u32 = 10;
const TCP_CLOSE: u32 = 7;
const TCP_NEW_SYN_RECV: u32 = 12;

/// Is `key` in `KNOWN`? (One hash lookup.)
#[inline(always)]
pub fn is_known(key: &SourceKey) -> bool {
    KNOWN.get_ptr(key).is_some()
}

/// Makes `key` known (`how` is a `known_by` value). False if `KNOWN` is full: the source then
/// stays a newcomer, and no known source is pushed out for it. (Not inlined: see
/// `limit::track`.)
#[inline(never)]
pub fn promote(key: &SourceKey, now: u64, how: u32) -> bool {
    let known = Known {
        since_ns: now,
        last_ns: now,
        how,
        _pad: 0,
    };
    crate::seen::mark(key);
    KNOWN.insert(key, known, BPF_NOEXIST as u64).is_ok() || is_known(key)
}

/// Refreshes a tracked known source's last-seen time in `KNOWN`, at most once a second. If the
/// entry is gone (the daemon expired it meanwhile), the tracker's copy is dropped too.
#[inline(always)]
pub fn refresh(state: &mut SourceState, key: &SourceKey, now: u64) {
    if now.wrapping_sub(state.known_seen_ns) < NS_PER_SEC {
        return;
    }
    state.known_seen_ns = now;
    match KNOWN.get_ptr_mut(key) {
        // SAFETY: a pointer from a map lookup is valid for this program run.
        Some(k) => unsafe { (*k).last_ns = now },
        None => {
            state.known = 0;
            state.good_since_ns = now;
        }
    }
}

/// Could this packet show a completed handshake? A TCP segment with data and ACK (and no SYN
/// or RST) to a TCP service: the handshake's own last ACK carries no data, and is not yet a
/// connection when XDP sees it, so the first data segment is the one to look at.
#[inline(always)]
pub fn may_show_handshake(pkt: &Packet, tcp_service: bool) -> bool {
    tcp_service
        && pkt.tcp_payload
        && pkt.tcp_flags & TCP_FLAG_ACK != 0
        && pkt.tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_RST) == 0
}

/// Promotes a tracked newcomer whose data segment belongs to a connection the host accepted
/// (at most one lookup per source every `HANDSHAKE_RETRY_NS`). True if it is known now.
#[inline(always)]
pub fn promote_on_handshake(
    ctx: &XdpContext,
    pkt: &Packet,
    state: &mut SourceState,
    key: &SourceKey,
    now: u64,
) -> bool {
    if now < state.known_seen_ns {
        return false;
    }
    if established(ctx, pkt) && promote(key, now, guard_common::known_by::HANDSHAKE) {
        state.known = 1;
        state.known_seen_ns = now;
        return true;
    }
    state.known_seen_ns = now + HANDSHAKE_RETRY_NS;
    false
}

/// Does the host hold a connected TCP socket for this packet's 4-tuple (in the namespace of
/// the interface it arrived on)? A listener or a request socket does not count: only a
/// completed handshake (or a connection the host opened to this source itself) does. (Not
/// inlined: see `limit::track`.)
#[inline(never)]
pub fn established(ctx: &XdpContext, pkt: &Packet) -> bool {
    let (s, d) = (pkt.src.bytes(), pkt.dst.bytes());
    // Not zeroed first (that compiles to a `memset` loop): every byte the kernel reads is
    // written below.
    let zero = crate::limit::opaque_zero() as u32;
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1 {
            ipv6: aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                saddr: [zero; 4],
                daddr: [zero; 4],
                sport: zero as u16,
                dport: zero as u16,
            },
        },
    };
    let size = match (pkt.src.v6, pkt.dst.v6) {
        (false, false) => {
            // Writing a union's member is safe; the kernel reads the one `size` names.
            tuple.__bindgen_anon_1.ipv4.saddr = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
            tuple.__bindgen_anon_1.ipv4.daddr = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
            tuple.__bindgen_anon_1.ipv4.sport = pkt.sport.to_be();
            tuple.__bindgen_anon_1.ipv4.dport = pkt.dport.to_be();
            12
        }
        (true, true) => {
            let word = |a: &[u8; 16], i: usize| {
                u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
            };
            tuple.__bindgen_anon_1.ipv6 =
                aya_ebpf::bindings::bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 {
                    saddr: [word(&s, 0), word(&s, 1), word(&s, 2), word(&s, 3)],
                    daddr: [word(&d, 0), word(&d, 1), word(&d, 2), word(&d, 3)],
                    sport: pkt.sport.to_be(),
                    dport: pkt.dport.to_be(),
                };
            36
        }
        _ => return false,
    };
    // SAFETY: a valid context and a tuple of the size passed, on the stack; the socket is
    // released below on every path.
    let sk = unsafe {
        bpf_sk_lookup_tcp(
            ctx.as_ptr(),
            &mut tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a non-null socket from the lookup; read before it is released.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    !matches!(state, TCP_LISTEN | TCP_CLOSE | TCP_NEW_SYN_RECV)
}
