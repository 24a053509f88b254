//! The allow and deny lists and the prefix bans: longest-prefix lookups of a source in the
//! CIDR tries, skipping lists that userspace says are empty, and looking past expired entries.
use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use guard_common::{
    FLAG_HAS_ALLOW_V4, FLAG_HAS_ALLOW_V6, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6, FLAG_HAS_PBAN_V4,
    FLAG_HAS_PBAN_V6, ListEntry, list_may_match, reason,
};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, DENY_V4, DENY_V6, PREFIX_BANS_V4, PREFIX_BANS_V6},
    parse::Source,
};

/// Expired entries looked past before giving up: an expired /32 inside an expired /24 inside
/// a live /16 still finds the /16. Deeper nests wait for the daemon's sweep (within a second).
const MAX_EXPIRED_HOPS: usize = 3;

/// The list verdict for `src` at `now`: `ALLOWED` (the allow list wins), `DENIED`, `BANNED`
/// (a prefix ban), or `PASSED` for none; with the expiry of the entry that decided it (0 =
/// none).
///
/// Not inlined, on purpose (nor is each trie's walk): the walk past expired entries is a
/// loop, and inlined, the exits of three such loops in a row would multiply the states the
/// verifier explores. As BPF-to-BPF calls, only their results reach the caller.
#[inline(never)]
pub fn verdict(src: &Source, flags: u32, now: u64) -> (usize, u64) {
    let mut expires = 0;
    let tries = [
        (reason::ALLOWED, FLAG_HAS_ALLOW_V4, FLAG_HAS_ALLOW_V6),
        (reason::DENIED, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6),
        (reason::BANNED, FLAG_HAS_PBAN_V4, FLAG_HAS_PBAN_V6),
    ];
    for (i, (why, hint4, hint6)) in tries.into_iter().enumerate() {
        let found = if src.v6 {
            let trie = match i {
                0 => &ALLOW_V6,
                1 => &DENY_V6,
                _ => &PREFIX_BANS_V6,
            };
            let a = src.bytes();
            live_v6(trie, &a, hints(flags, hint6), now, &mut expires)
        } else {
            let trie = match i {
                0 => &ALLOW_V4,
                1 => &DENY_V4,
                _ => &PREFIX_BANS_V4,
            };
            let a = src.v4_bytes();
            live_v4(trie, &a, hints(flags, hint4), now, &mut expires)
        };
        if found {
            return (why, expires);
        }
    }
    (reason::PASSED, 0)
}

/// `flags` and the hint bit of one list, in one argument (a BPF call takes five).
#[inline(always)]
fn hints(flags: u32, hint: u32) -> u64 {
    (u64::from(flags) << 32) | u64::from(hint)
}

#[inline(never)]
fn live_v4(
    trie: &LpmTrie<[u8; 4], ListEntry>,
    addr: &[u8; 4],
    hints: u64,
    now: u64,
    expires: &mut u64,
) -> bool {
    live(trie, *addr, 32, hints, now, expires)
}

#[inline(never)]
fn live_v6(
    trie: &LpmTrie<[u8; 16], ListEntry>,
    addr: &[u8; 16],
    hints: u64,
    now: u64,
    expires: &mut u64,
) -> bool {
    live(trie, *addr, 128, hints, now, expires)
}

/// The longest live entry of `trie` covering `addr` (`bits` long), unless the hints say the
/// list is empty: true, with its expiry in `expires`. An expired longest match is looked
/// past: the next lookup starts just above its prefix (the trie matches only prefixes no
/// longer than the key's length).
#[inline(always)]
fn live<K: Copy>(
    trie: &LpmTrie<K, ListEntry>,
    addr: K,
    bits: u32,
    hints: u64,
    now: u64,
    expires: &mut u64,
) -> bool {
    if !list_may_match((hints >> 32) as u32, hints as u32) {
        return false;
    }
    let mut len = bits;
    for _ in 0..=MAX_EXPIRED_HOPS {
        let Some(e) = trie.get(Key::new(len, addr)) else {
            return false;
        };
        let e = *e;
        if e.expires_ns == 0 || e.expires_ns > now {
            *expires = e.expires_ns;
            return true;
        }
        if e.prefix_len == 0 || e.prefix_len > len {
            return false;
        }
        len = e.prefix_len - 1;
    }
    false
}
