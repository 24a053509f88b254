//! The cost of whole-map reads (`guard stats`, `guard top`, `guard unban`, the 10-second
//! source count), which run under the control lock: the real maps, filled, read in bounded
//! batches, each entry once.
mod support;

use std::collections::HashSet;

use guard::datapath::Datapath;
use guard_common::{Ban, source_key_v4};
use support::{XDP_PASS, kernel_or_skip, limits, packet::Builder};

/// `BPF_MAP_LOOKUP_BATCH`'s batch in the daemon (`dataplane::kernel::batch::BATCH`).
const BATCH: u64 = 4096;

#[test]
fn a_full_tracker_and_bans_map_are_read_in_a_few_batched_calls_each_entry_once() {
    let Some(mut k) = kernel_or_skip("walk_batches") else {
        return;
    };
    k.set_config(&limits(1000, 1000, 0, 0, 0)).unwrap();
    // 6,000 tracked sources, from the program itself (one packet each).
    const SOURCES: u32 = 6000;
    for i in 0..SOURCES {
        let src = format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250);
        assert_eq!(k.test_run(&Builder::v4(&src).build()).unwrap(), XDP_PASS);
    }
    // 10,000 bans, as the daemon writes them.
    const BANS: u32 = 10_000;
    let ban = Ban {
        expires_ns: u64::MAX,
        since_ns: 1,
        reason: 1,
        _pad: 0,
    };
    for i in 0..BANS {
        let ip = (0xc613_0000u32 + i).to_be_bytes();
        k.ban_insert(&source_key_v4(ip, 32), &ban).unwrap();
    }

    let before = k.walk_calls();
    let sources = k.sources().unwrap();
    let source_calls = k.walk_calls() - before;
    let distinct: HashSet<_> = sources.iter().map(|(key, _)| *key).collect();
    assert_eq!(distinct.len(), sources.len(), "an entry counted twice");
    assert_eq!(sources.len(), SOURCES as usize);
    // A key-by-key walk is two calls an entry (12,001 here).
    assert!(
        source_calls <= u64::from(SOURCES) / BATCH + 2,
        "{source_calls} bpf(2) calls to read {SOURCES} sources"
    );

    let before = k.walk_calls();
    let bans = k.bans().unwrap();
    let ban_calls = k.walk_calls() - before;
    let distinct: HashSet<_> = bans.iter().map(|(key, _)| *key).collect();
    assert_eq!((bans.len(), distinct.len()), (BANS as usize, BANS as usize));
    assert!(
        ban_calls <= u64::from(BANS) / BATCH + 2,
        "{ban_calls} bpf(2) calls to read {BANS} bans"
    );
}
