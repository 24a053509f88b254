//! Per-source state: tracking, the packet and SYN limits (GCRA, one word each, updated with
//! compare-and-swap), the bans they lead to, and the aggregate prefix buckets.
use aya_ebpf::bindings::BPF_NOEXIST;
use guard_common::{
    Ban, BanEvent, Config, PrefixState, SourceKey, SourceState, gcra_next, reason, source_key_v4,
    source_key_v6,
};

use crate::{
    maps::{BANS, EVENTS, PREFIXES, SOURCES},
    parse::Source,
};

/// Compare-and-swap attempts before a contended GCRA step gives up and lets the packet pass.
const CAS_TRIES: usize = 5;

/// One GCRA step on the word at `tat`, shared with other CPUs: true if the packet conforms.
/// Lock-free: a CPU that loses the race reads the winner's TAT and tries again, so no refill
/// is ever erased; after `CAS_TRIES` lost races in a row the packet passes (the limit may be a
/// packet late, never stricter than configured).
#[inline(always)]
pub fn conforms(tat: *mut u64, now: u64, interval: u64, tolerance: u64) -> bool {
    if interval == 0 {
        return true;
    }
    for _ in 0..CAS_TRIES {
        // SAFETY: `tat` points into a map value that stays valid for this program run.
        let old = unsafe { core::ptr::read_volatile(tat) };
        let Some(new) = gcra_next(old, now, interval, tolerance) else {
            return false;
        };
        // SAFETY: as above; BPF_CMPXCHG (Linux 5.12) on an aligned u64 of a map value.
        let (_, swapped) = unsafe {
            core::intrinsics::atomic_cxchg::<
                u64,
                { core::intrinsics::AtomicOrdering::Relaxed },
                { core::intrinsics::AtomicOrdering::Relaxed },
            >(tat, old, new)
        };
        if swapped {
            return true;
        }
    }
    true
}

/// A zero the optimiser cannot see through (a volatile read of a stack slot), so that a run of
/// zero fields is stored field by field rather than merged into a `memset` call, a byte loop
/// the verifier would walk on every path.
#[inline(always)]
pub fn opaque_zero() -> u64 {
    let z = 0u64;
    // SAFETY: a read of a live, initialised local.
    unsafe { core::ptr::read_volatile(&z) }
}

/// One GCRA step on a word only this CPU touches (per-CPU maps).
#[inline(always)]
pub fn conforms_local(tat: &mut u64, now: u64, interval: u64, tolerance: u64) -> bool {
    if interval == 0 {
        return true;
    }
    match gcra_next(*tat, now, interval, tolerance) {
        Some(t) => {
            *tat = t;
            true
        }
        None => false,
    }
}

/// The ban expiry `BANS` holds for `key`, or 0. An expired ban is removed here, so the
/// source passes at once rather than waiting for the daemon's sweep. (Not inlined: see
/// `track`.)
#[inline(never)]
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

/// What a source starts its tracker entry with.
pub struct Start {
    /// Its list verdict, cached under `Config::lists_gen` until `list_expires`.
    pub listed: usize,
    pub list_expires: u64,
    /// Its ban expiry, as the caller read it from `BANS` (0: none).
    pub banned: u64,
    pub known: bool,
    /// The seen filter says the source is in none of the tracker, `BANS` and `KNOWN`: their
    /// lookups are skipped (its ban is 0, it is not known).
    pub unseen: bool,
}

/// Starts tracking `key` (admitted by the front stage, or known). `None` only if the tracker
/// cannot hold it even after an insert (never expected of an LRU).
///
/// Not inlined, on purpose (here and in `ban`): a BPF-to-BPF call gets a stack frame of its
/// own, which keeps the main program's frame under the verifier's 512 bytes.
#[inline(never)]
pub fn track(key: &SourceKey, cfg: &Config, now: u64, start: &Start) -> Option<*mut SourceState> {
    // A run of zero fields compiles to a `memset` loop, which the verifier walks byte by
    // byte: the counts start from a zero the compiler cannot see through. (A TAT of `now` is a
    // full bucket, as 0 would be.)
    let zero = opaque_zero();
    let fresh = SourceState {
        pkt_tat: now,
        syn_tat: now,
        packets: zero,
        bytes: zero,
        syns: zero,
        dropped: zero,
        banned_until_ns: start.banned,
        list_gen: cfg.lists_gen,
        list_expires_ns: start.list_expires,
        list_verdict: start.listed as u32,
        known: start.known as u32,
        good_since_ns: now,
        known_seen_ns: now,
    };
    // NOEXIST: another CPU may have inserted it meanwhile; then use theirs. Its bits first.
    crate::seen::mark(key);
    let _ = SOURCES.insert(key, fresh, BPF_NOEXIST as u64);
    SOURCES.get_ptr_mut(key)
}

/// Judges one packet of a tracked source that is in no list: ban, then packet limit, then SYN
/// limit. Returns `PASSED`, `BANNED`, `RATE_LIMITED` or `SYN_LIMITED`; a source that goes
/// over a limit is banned here.
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
        return reason::BANNED;
    }
    let mut verdict = reason::PASSED;
    if !conforms(
        &mut state.pkt_tat,
        now,
        cfg.pkt_interval_ns,
        cfg.pkt_tolerance_ns,
    ) {
        verdict = reason::RATE_LIMITED;
    } else if syn {
        state.syns += 1;
        if !conforms(
            &mut state.syn_tat,
            now,
            cfg.syn_interval_ns,
            cfg.syn_tolerance_ns,
        ) {
            verdict = reason::SYN_LIMITED;
        }
    }
    if verdict != reason::PASSED && cfg.ban_ns != 0 {
        state.banned_until_ns = now + cfg.ban_ns;
        ban(key, state.banned_until_ns, now, verdict, ifindex);
    }
    verdict
}

/// The aggregate key of `src`'s prefix (a separate map from the tracker, so the keys of a
/// prefix and of a source never meet).
#[inline(always)]
pub fn prefix_key(src: &Source, cfg: &Config) -> SourceKey {
    if src.v6 {
        source_key_v6(
            src.bytes(),
            if cfg.prefix_v6_len == 0 {
                48
            } else {
                cfg.prefix_v6_len
            },
        )
    } else {
        source_key_v4(
            src.v4_bytes(),
            if cfg.prefix_v4_len == 0 {
                24
            } else {
                cfg.prefix_v4_len
            },
        )
    }
}

/// Charges one packet of an unknown source to its prefix's aggregate bucket: false if the
/// prefix is over its rate. Off (always true) when `prefix_pps` is 0. (Not inlined: its key
/// and fresh entry live in a frame of its own, see `track`.)
#[inline(never)]
pub fn prefix_conforms(src: &Source, cfg: &Config, now: u64) -> bool {
    if cfg.prefix_interval_ns == 0 {
        return true;
    }
    let key = prefix_key(src, cfg);
    let state = match PREFIXES.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let zero = opaque_zero();
            let fresh = PrefixState {
                tat: now,
                packets: zero,
                dropped: zero,
            };
            let _ = PREFIXES.insert(key, fresh, BPF_NOEXIST as u64);
            match PREFIXES.get_ptr_mut(key) {
                Some(p) => p,
                // Untrackable (never expected of an LRU): fail open.
                None => return true,
            }
        }
    };
    // SAFETY: a pointer from a map lookup is valid for this program run.
    let state = unsafe { &mut *state };
    state.packets += 1;
    let ok = conforms(
        &mut state.tat,
        now,
        cfg.prefix_interval_ns,
        cfg.prefix_tolerance_ns,
    );
    if !ok {
        state.dropped += 1;
    }
    ok
}

/// Records a new ban in `BANS` and reports it through the ring buffer.
#[inline(never)]
fn ban(key: &SourceKey, expires_ns: u64, now: u64, why: usize, ifindex: u32) {
    let ban = Ban {
        expires_ns,
        since_ns: now,
        reason: why as u32,
        _pad: 0,
    };
    crate::seen::mark(key);
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
