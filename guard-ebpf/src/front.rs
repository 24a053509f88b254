//! The front stage for sources the tracker does not hold: a per-CPU count-min sketch admits a
//! source to the tracker only once it has sent more than `admit_packets` in about a second (as
//! Cloudflare's rakelimit does), so never-seen sources cost little and churn nothing; and the
//! global budget for frames with no readable source.
use guard_common::{
    Config, SKETCH_COLS, SKETCH_ROWS, SourceKey, sketch_bump, sketch_slots, sketch_window,
};

use crate::{limit, maps::CPU_STATE};

/// Counts a packet of an untracked source on this CPU: true once it has sent more than
/// `cfg.admit_packets` packets in this sketch window above the noise of the sketch (the
/// count-min estimate: the smaller of its two cells, which collisions can only raise). The
/// noise is twice a cell's average load this window, so that a flood of many sources, which
/// fills every cell, admits none of them, while a heavy source still stands out. Not inlined:
/// see `limit::track`.
#[inline(never)]
pub fn admitted(key: &SourceKey, cfg: &Config, now: u64) -> bool {
    if cfg.admit_packets == 0 {
        return true;
    }
    let Some(st) = CPU_STATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
    let st = unsafe { &mut *st };
    let window = sketch_window(now);
    let (total, seen) = sketch_bump(st.total, window);
    st.total = total;
    let mut estimate = u32::MAX;
    for slot in sketch_slots(key) {
        // The mask keeps the index provably inside the array for the verifier (and Rust).
        let cell = &mut st.sketch[slot & (SKETCH_ROWS * SKETCH_COLS - 1)];
        let (next, count) = sketch_bump(*cell, window);
        *cell = next;
        if count < estimate {
            estimate = count;
        }
    }
    // Each packet adds one to a cell of each row: a row's average cell holds seen / COLS.
    let noise = 2 * seen / SKETCH_COLS as u32;
    estimate > cfg.admit_packets + noise
}

/// Charges a frame with no readable source to this CPU's budget: true if within it.
#[inline(always)]
pub fn malformed_conforms(cfg: &Config, now: u64) -> bool {
    match CPU_STATE.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
        Some(st) => limit::conforms_local(
            unsafe { &mut (*st).malformed_tat },
            now,
            cfg.malformed_interval_ns,
            cfg.malformed_tolerance_ns,
        ),
        None => true,
    }
}
