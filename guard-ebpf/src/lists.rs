//! The allow and deny lists: longest-prefix lookups of a source in the CIDR tries, skipping
//! lists that userspace says are empty.
use aya_ebpf::maps::lpm_trie::Key;
use guard_common::{
    FLAG_HAS_ALLOW_V4, FLAG_HAS_ALLOW_V6, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6, ListEntry,
    list_may_match, reason,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6},
    parse::Source,
};

/// The list verdict for `src` at `now`: `ALLOWED` (the allow list wins), `DENIED`, or
/// `PASSED` for neither; with the expiry of the entry that decided it (0 = none).
#[inline(always)]
pub fn verdict(src: &Source, flags: u32, now: u64) -> (usize, u64) {
    match src {
        Source::V4(a) => {
            let k = Key::new(32, *a);
            if list_may_match(flags, FLAG_HAS_ALLOW_V4)
                && let Some(e) = live(ALLOW_V4.get(&k), now)
            {
                return (reason::ALLOWED, e.expires_ns);
            }
            if list_may_match(flags, FLAG_HAS_DENY_V4)
                && let Some(e) = live(DENY_V4.get(&k), now)
            {
                return (reason::DENIED, e.expires_ns);
            }
        }
        Source::V6(a) => {
            let k = Key::new(128, *a);
            if list_may_match(flags, FLAG_HAS_ALLOW_V6)
                && let Some(e) = live(ALLOW_V6.get(&k), now)
            {
                return (reason::ALLOWED, e.expires_ns);
            }
            if list_may_match(flags, FLAG_HAS_DENY_V6)
                && let Some(e) = live(DENY_V6.get(&k), now)
            {
                return (reason::DENIED, e.expires_ns);
            }
        }
    }
    (reason::PASSED, 0)
}

/// A list entry matches until it expires (0 = never).
#[inline(always)]
fn live(entry: Option<&ListEntry>, now: u64) -> Option<ListEntry> {
    entry
        .copied()
        .filter(|e| e.expires_ns == 0 || e.expires_ns > now)
}
