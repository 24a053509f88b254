//! The seen filter: a source the tracker, `BANS` and `KNOWN` do not hold skips their lookups,
//! so what is written into those maps must set its bits first; a rebuild picks up whatever
//! the maps hold, and a second load on the same pins adopts the half the program reads.
mod support;

use std::path::{Path, PathBuf};

use aya::maps::{HashMap, Map, MapData};
use guard::datapath::Datapath;
use guard_common::{Ban, SourceKey, map_names, reason, source_key_v4};
use support::{is_root, limits, packet::Builder, required, skip, totals};

/// A pin directory of the test's own, removed again on drop, also on failure.
struct Pins(PathBuf);

impl Pins {
    fn new() -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/guard-test-seen-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GUARD_BANS` under `dir`, opened behind the datapath's back (no bits set).
fn raw_bans(dir: &Path) -> HashMap<MapData, SourceKey, Ban> {
    let data = MapData::from_pin(dir.join("maps").join(map_names::BANS)).expect("bans pin");
    HashMap::try_from(Map::HashMap(data)).expect("bans map")
}

fn dns(src: &str) -> Vec<u8> {
    Builder::v4(src).ports(40_000, 53).build()
}

#[test]
fn the_seen_filter_skips_only_what_the_maps_do_not_hold() {
    if !is_root() {
        assert!(!required(), "needs root to load the XDP program");
        skip("the_seen_filter", "needs root to load the XDP program");
        return;
    }
    let pins = Pins::new();
    let mut k = guard::ebpf::load(Some(&pins.0)).expect("load on pins");
    // Sources are tracked only after 100 packets, so the few below never are (a tracker
    // entry would hold its own copy of the ban).
    let mut cfg = limits(0, 0, 0, 0, 60);
    cfg.admit_packets = 100;
    k.set_config(&cfg).unwrap();
    let far = k.now_ns() + 3_600_000_000_000;
    let ban = Ban {
        expires_ns: far,
        since_ns: k.now_ns(),
        reason: reason::RATE_LIMITED as u32,
        _pad: 0,
    };

    // Through the datapath: the ban sets its bits first, and holds from the first packet.
    let a = "198.18.40.1";
    let key_a = source_key_v4([198, 18, 40, 1], 32);
    k.ban_insert(&key_a, &ban).unwrap();
    assert_eq!(
        k.test_run(&dns(a)).unwrap(),
        1,
        "a banned source is dropped"
    );
    assert_eq!(totals(&k).packets[reason::BANNED], 1);

    // Behind its back: the filter has never seen the source, so the program skips BANS and
    // passes it. This is what the filter is for (never-seen sources skip the lookups), and
    // why every writer marks first.
    let b = "198.18.40.2";
    let key_b = source_key_v4([198, 18, 40, 2], 32);
    raw_bans(&pins.0).insert(key_b, ban, 0).unwrap();
    assert_eq!(
        k.test_run(&dns(b)).unwrap(),
        2,
        "a source the filter never saw skips the bans lookup"
    );
    assert_eq!(totals(&k).packets[reason::BANNED], 1);

    // A rebuild walks the maps: now the ban holds.
    k.refresh_seen().unwrap();
    assert_eq!(k.test_run(&dns(b)).unwrap(), 1, "found after the rebuild");
    assert_eq!(totals(&k).packets[reason::BANNED], 2);

    // A second load on the same pins adopts the half in use and rebuilds the other: the bans
    // written so far hold throughout, and a ban written behind its back after that is skipped
    // again until the next rebuild (so the adopted filter is in use, not switched off).
    let mut k2 = guard::ebpf::load(Some(&pins.0)).expect("second load on pins");
    for (src, why) in [(a, 1), (b, 1)] {
        assert_eq!(k2.test_run(&dns(src)).unwrap(), why, "{src} after adoption");
    }
    let c = "198.18.40.3";
    raw_bans(&pins.0)
        .insert(source_key_v4([198, 18, 40, 3], 32), ban, 0)
        .unwrap();
    assert_eq!(k2.test_run(&dns(c)).unwrap(), 2);
    k2.refresh_seen().unwrap();
    assert_eq!(k2.test_run(&dns(c)).unwrap(), 1);

    // Sources the program tracks itself set their own bits: a rate-limited source is banned
    // by the program and stays banned across rebuilds.
    k2.set_config(&limits(1, 1, 0, 0, 60)).unwrap();
    let d = "198.18.40.4";
    let mut verdicts = Vec::new();
    for _ in 0..4 {
        verdicts.push(k2.test_run(&dns(d)).unwrap());
    }
    k2.refresh_seen().unwrap();
    k2.refresh_seen().unwrap();
    verdicts.push(k2.test_run(&dns(d)).unwrap());
    assert_eq!(verdicts.first(), Some(&2), "{verdicts:?}");
    assert_eq!(verdicts.last(), Some(&1), "{verdicts:?}");
    assert!(
        k2.bans()
            .unwrap()
            .iter()
            .any(|(key, _)| *key == source_key_v4([198, 18, 40, 4], 32))
    );
    drop(k2);
    drop(k);
}
