//! The allow and deny lists: longest-prefix lookups of a source in the CIDR tries, skipping
//! lists that userspace says are empty, and looking past expired entries.
use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use guard_common::{
    FLAG_HAS_ALLOW_V4, FLAG_HAS_ALLOW_V6, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6, ListEntry,
    list_may_match, reason,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6},
    parse::Source,
};

/// Expired entries looked past before giving up: an expired /32 inside an expired /24 inside
/// a live /16 still finds the /16. Deeper nests wait for the daemon's sweep (within a second).
const MAX_EXPIRED_HOPS: usize = 3;

/// The list verdict for `src` at `now`: `ALLOWED` (the allow list wins), `DENIED`, or
/// `PASSED` for neither; with the expiry of the entry that decided it (0 = none).
#[inline(always)]
pub fn verdict(src: &Source, flags: u32, now: u64) -> (usize, u64) {
    let allow = match src {
        Source::V4(a) => live(&ALLOW_V4, *a, 32, flags, FLAG_HAS_ALLOW_V4, now),
        Source::V6(a) => live(&ALLOW_V6, *a, 128, flags, FLAG_HAS_ALLOW_V6, now),
    };
    if let Some(e) = allow {
        return (reason::ALLOWED, e.expires_ns);
    }
    let deny = match src {
        Source::V4(a) => live(&DENY_V4, *a, 32, flags, FLAG_HAS_DENY_V4, now),
        Source::V6(a) => live(&DENY_V6, *a, 128, flags, FLAG_HAS_DENY_V6, now),
    };
    match deny {
        Some(e) => (reason::DENIED, e.expires_ns),
        None => (reason::PASSED, 0),
    }
}

/// The longest live entry of `trie` covering `addr` (`bits` long), unless the hints say the
/// list is empty. An expired longest match is looked past: the next lookup starts just above
/// its prefix (the trie matches only prefixes no longer than the key's length).
#[inline(always)]
fn live<K: Copy>(
    trie: &LpmTrie<K, ListEntry>,
    addr: K,
    bits: u32,
    flags: u32,
    hint: u32,
    now: u64,
) -> Option<ListEntry> {
    if !list_may_match(flags, hint) {
        return None;
    }
    let mut len = bits;
    for _ in 0..=MAX_EXPIRED_HOPS {
        let e = *trie.get(Key::new(len, addr))?;
        if e.expires_ns == 0 || e.expires_ns > now {
            return Some(e);
        }
        if e.prefix_len == 0 || e.prefix_len > len {
            return None;
        }
        len = e.prefix_len - 1;
    }
    None
}
