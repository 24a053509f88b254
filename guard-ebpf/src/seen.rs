//! The seen filter (`guard_common::seen`): one word read tells whether a source may be in the
//! tracker, `BANS` or `KNOWN`; a source that is in none (every packet of a spoofed flood)
//! skips their three lookups, which on a cold cache are most of its cost.
use guard_common::{Config, FLAG_SEEN_FILTER, FLAG_SEEN_HALF, SourceKey, seen};

use crate::maps::SEEN;

/// May `key` be in the tracker, `BANS` or `KNOWN`? Always yes until userspace has built the
/// filter (`FLAG_SEEN_FILTER`).
#[inline(always)]
pub fn maybe(cfg: &Config, key: &SourceKey) -> bool {
    if cfg.flags & FLAG_SEEN_FILTER == 0 {
        return true;
    }
    let (word, bits) = seen::slot(key);
    let half = if cfg.flags & FLAG_SEEN_HALF != 0 {
        seen::WORDS
    } else {
        0
    };
    match SEEN.get(half + word) {
        Some(w) => *w & bits == bits,
        None => true,
    }
}

/// Sets `key`'s bits in both halves: called before the key is inserted into any map the filter
/// covers, so no reader ever finds the key there without its bits.
#[inline(always)]
pub fn mark(key: &SourceKey) {
    let (word, bits) = seen::slot(key);
    for half in [0, seen::WORDS] {
        if let Some(w) = SEEN.get_ptr_mut(half + word) {
            // SAFETY: a pointer from an array lookup, valid and 8-byte aligned for this run;
            // other CPUs and userspace touch the word only through atomics (BPF_OR; the
            // target's AtomicU64 has no fetch_or, as it has no compare_exchange).
            unsafe {
                core::intrinsics::atomic_or::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                    w, bits,
                )
            };
        }
    }
}
