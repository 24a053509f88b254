//! Per-source state: the packet and SYN token buckets, and the bans they lead to.
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{
    Ban, BanEvent, Config, SourceKey, SourceState, fill_ns, full_bucket, reason, take_token,
};

use crate::maps::{BANS, EVENTS, SOURCES};

/// The ban expiry `BANS` holds for `key`, or 0. An expired ban is removed here, so the
/// source passes at once rather than waiting for the daemon's sweep.
#[inline(always)]
pub fn ban_expiry(key: &SourceKey, now: u64) -> u64 {
    match BANS.get_ptr(key) {
        // SAFETY: a pointer from a map lookup is valid for this program run; Ban is Copy.
        Some(ban) => {
            let expires = unsafe { (*ban).expires_ns };
            if expires > now {
                expires
            } else {
                let _ = BANS.remove(key);
                0
            }
        }
        None => 0,
    }
}

/// The tracker entry of `key`, if the source is tracked.
#[inline(always)]
pub fn lookup(key: &SourceKey) -> Option<*mut SourceState> {
    SOURCES.get_ptr_mut(key)
}

/// Starts tracking `key` (its first packet, or its first since the LRU evicted it): a full
/// bucket, any ban `BANS` holds for it (unless it is listed), and its list verdict `listed` (cached under
/// `cfg.lists_gen` until `list_expires`). `Err` only if the tracker cannot hold it even
/// after an insert; the error says whether `BANS` bans it.
#[inline(always)]
pub fn track(
    key: &SourceKey,
    cfg: &Config,
    now: u64,
    listed: usize,
    list_expires: u64,
) -> Result<*mut SourceState, bool> {
    let fresh = SourceState {
        pkt: full_bucket(now, cfg.burst),
        syn: full_bucket(now, cfg.syn_burst),
        // A listed source's ban does not matter (the lists win); it is read if it leaves them.
        banned_until_ns: if listed == reason::PASSED {
            ban_expiry(key, now)
        } else {
            0
        },
        list_gen: cfg.lists_gen,
        list_expires_ns: list_expires,
        list_verdict: listed as u32,
        ..SourceState::default()
    };
    // NOEXIST: another CPU may have inserted it meanwhile; then use theirs.
    let _ = SOURCES.insert(key, fresh, BPF_NOEXIST as u64);
    SOURCES.get_ptr_mut(key).ok_or(fresh.banned_until_ns != 0)
}

/// Judges one packet of a tracked source that is in neither list: ban, then packet bucket,
/// then SYN bucket. Returns `PASSED`, `BANNED`, `RATE_LIMITED` or `SYN_LIMITED`; a source
/// that goes over a limit is banned here.
#[inline(always)]
pub fn judge(
    state: &mut SourceState,
    key: &SourceKey,
    cfg: &Config,
    now: u64,
    syn: bool,
    ifindex: u32,
) -> usize {
    if state.banned_until_ns > now {
        state.dropped += 1;
        return reason::BANNED;
    }
    let mut verdict = reason::PASSED;
    if cfg.pps != 0 && !take_token(&mut state.pkt, now, cfg.pps, cfg.burst, pkt_fill(cfg)) {
        verdict = reason::RATE_LIMITED;
    } else if syn {
        state.syns += 1;
        if cfg.syn_pps != 0
            && !take_token(
                &mut state.syn,
                now,
                cfg.syn_pps,
                cfg.syn_burst,
                syn_fill(cfg),
            )
        {
            verdict = reason::SYN_LIMITED;
        }
    }
    if verdict != reason::PASSED {
        state.dropped += 1;
        if cfg.ban_ns != 0 {
            state.banned_until_ns = now + cfg.ban_ns;
            ban(key, state.banned_until_ns, now, verdict, ifindex);
        }
    }
    verdict
}

/// The packet bucket's fill time: precomputed by userspace, computed here only if it is not.
#[inline(always)]
fn pkt_fill(cfg: &Config) -> u64 {
    if cfg.pkt_fill_ns != 0 {
        cfg.pkt_fill_ns
    } else {
        fill_ns(cfg.pps, cfg.burst)
    }
}

#[inline(always)]
fn syn_fill(cfg: &Config) -> u64 {
    if cfg.syn_fill_ns != 0 {
        cfg.syn_fill_ns
    } else {
        fill_ns(cfg.syn_pps, cfg.syn_burst)
    }
}

/// Records a new ban in `BANS` and reports it through the ring buffer.
#[inline(always)]
fn ban(key: &SourceKey, expires_ns: u64, now: u64, why: usize, ifindex: u32) {
    let ban = Ban {
        expires_ns,
        since_ns: now,
        reason: why as u32,
        _pad: 0,
    };
    // NOEXIST: if another CPU banned it first, keep that ban and report only once. An
    // expired ban still in the map (the daemon's sweep runs each second, and not at all while
    // it is down) is replaced. A full BANS keeps the ban only in the tracker entry (lost if
    // the LRU evicts it).
    let new = BANS.insert(key, ban, BPF_NOEXIST as u64).is_ok()
        || match BANS.get_ptr(key) {
            // SAFETY: a pointer from a map lookup is valid for this program run.
            Some(old) if unsafe { (*old).expires_ns } <= now => BANS.insert(key, ban, 0).is_ok(),
            _ => false,
        };
    if new {
        let event = BanEvent {
            source: *key,
            since_ns: now,
            expires_ns,
            reason: why as u32,
            ifindex,
        };
        // A full ring loses the event, not the ban.
        let _ = EVENTS.output::<BanEvent>(&event, 0);
    }
}
