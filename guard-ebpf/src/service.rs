//! Services: which (protocol, port) a packet is for, the per-CPU counts the daemon turns into
//! rates, and the newcomer budget that holds unknown sources while a service is under attack.
use guard_common::{Config, FLAG_SERVICES, SERVICE_COOKIES, SERVICE_TCP, SERVICE_UNDER_ATTACK};

use crate::{
    limit,
    maps::{SERVICE_PORTS, SERVICE_STATS, SERVICES},
    parse::{IPPROTO_TCP, IPPROTO_UDP, Packet},
};

/// The service a packet is for, as this run of the program sees it.
#[derive(Clone, Copy)]
pub struct Svc {
    pub slot: u32,
    /// Under attack (and the daemon's lease on that still runs).
    pub attack: bool,
    /// A TCP service (its handshakes make sources known).
    pub tcp: bool,
    /// SYNs of sources that are not known get a SYN cookie from the XDP stage.
    pub cookies: bool,
    pub newcomer_interval_ns: u64,
    pub newcomer_tolerance_ns: u64,
}

/// Finds the packet's service (slot 0 when none matches) and counts the packet in it.
#[inline(always)]
pub fn classify(pkt: &Packet, cfg: &Config, len: u64, now: u64) -> Svc {
    let mut slot = 0;
    if cfg.flags & FLAG_SERVICES != 0 && pkt.dport != 0 {
        let proto = match pkt.proto {
            IPPROTO_TCP => Some(0u32),
            IPPROTO_UDP => Some(1u32),
            _ => None,
        };
        if let Some(p) = proto
            && let Some(s) = SERVICE_PORTS.get((p << 16) | u32::from(pkt.dport))
        {
            slot = *s;
        }
    }
    if let Some(st) = SERVICE_STATS.get_ptr_mut(slot) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        let st = unsafe { &mut *st };
        st.packets += 1;
        st.bytes += len;
        if pkt.syn {
            st.syns += 1;
        }
    }
    match SERVICES.get(slot) {
        Some(s) => Svc {
            slot,
            attack: s.flags & SERVICE_UNDER_ATTACK != 0 && s.attack_until_ns > now,
            tcp: s.flags & SERVICE_TCP != 0,
            cookies: s.flags & SERVICE_COOKIES != 0,
            newcomer_interval_ns: s.newcomer_interval_ns,
            newcomer_tolerance_ns: s.newcomer_tolerance_ns,
        },
        None => Svc {
            slot,
            attack: false,
            tcp: false,
            cookies: false,
            newcomer_interval_ns: 0,
            newcomer_tolerance_ns: 0,
        },
    }
}

/// Charges one packet of an unknown source to the service's newcomer budget on this CPU: true
/// if it is within it. A budget of interval 0 admits nobody.
#[inline(always)]
pub fn newcomer_conforms(svc: &Svc, now: u64) -> bool {
    let Some(st) = SERVICE_STATS.get_ptr_mut(svc.slot) else {
        return true;
    };
    // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
    let st = unsafe { &mut *st };
    let ok = svc.newcomer_interval_ns != 0
        && limit::conforms_local(
            &mut st.newcomer_tat,
            now,
            svc.newcomer_interval_ns,
            svc.newcomer_tolerance_ns,
        );
    if ok {
        st.newcomer_passed += 1;
    } else {
        st.newcomer_dropped += 1;
    }
    ok
}
