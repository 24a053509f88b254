//! Per-source rate state: the packet and SYN token buckets, and the bans they lead to.
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{
    Ban, BanEvent, Config, SourceKey, SourceState, full_bucket, reason, take_token,
};

use crate::maps::{BANS, EVENTS, SOURCES};

/// Is `key` banned at `now`? An expired ban is removed here, so the source passes at once
/// rather than waiting for the daemon's sweep.
#[inline(always)]
pub fn banned(key: &SourceKey, now: u64) -> bool {
    match BANS.get_ptr(key) {
        // SAFETY: a pointer from a map lookup is valid for this program run; Ban is Copy.
        Some(ban) if unsafe { (*ban).expires_ns } > now => true,
        Some(_) => {
            let _ = BANS.remove(key);
            false
        }
        None => false,
    }
}

/// Charges one packet (and one SYN if `syn`) to the source's buckets. Returns the verdict
/// reason: `PASSED`, `RATE_LIMITED` or `SYN_LIMITED`.
#[inline(always)]
pub fn charge(key: &SourceKey, cfg: &Config, now: u64, len: u64, syn: bool) -> usize {
    let state = match SOURCES.get_ptr_mut(key) {
        Some(s) => s,
        None => {
            let fresh = SourceState {
                pkt: full_bucket(now, cfg.burst),
                syn: full_bucket(now, cfg.syn_burst),
                ..SourceState::default()
            };
            // NOEXIST: another CPU may have inserted it meanwhile; then use theirs.
            let _ = SOURCES.insert(key, fresh, BPF_NOEXIST as u64);
            match SOURCES.get_ptr_mut(key) {
                Some(s) => s,
                // Cannot track it (not even after an insert): fail open, it passes unlimited.
                None => return reason::PASSED,
            }
        }
    };
    // SAFETY: a pointer from a map lookup is valid for this program run. Other CPUs may
    // update the same entry: the race loses increments, never memory safety.
    let state = unsafe { &mut *state };
    state.packets += 1;
    state.bytes += len;
    let mut verdict = reason::PASSED;
    if cfg.pps != 0 && !take_token(&mut state.pkt, now, cfg.pps, cfg.burst) {
        verdict = reason::RATE_LIMITED;
    } else if syn {
        state.syns += 1;
        if cfg.syn_pps != 0 && !take_token(&mut state.syn, now, cfg.syn_pps, cfg.syn_burst) {
            verdict = reason::SYN_LIMITED;
        }
    }
    if verdict != reason::PASSED {
        state.dropped += 1;
    }
    verdict
}

/// Bans `key` for `cfg.ban_ns` and reports the new ban through the ring buffer.
#[inline(always)]
pub fn ban(key: &SourceKey, cfg: &Config, now: u64, why: usize, ifindex: u32) {
    if cfg.ban_ns == 0 {
        return;
    }
    let ban = Ban {
        expires_ns: now + cfg.ban_ns,
        since_ns: now,
        reason: why as u32,
        _pad: 0,
    };
    // NOEXIST: if another CPU banned it first, keep that ban and report only once.
    if BANS.insert(key, ban, BPF_NOEXIST as u64).is_ok() {
        let event = BanEvent {
            source: *key,
            since_ns: now,
            expires_ns: ban.expires_ns,
            reason: why as u32,
            ifindex,
        };
        // A full ring loses the event, not the ban.
        let _ = EVENTS.output::<BanEvent>(&event, 0);
    }
}
