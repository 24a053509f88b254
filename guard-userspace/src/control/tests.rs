//! The control plane's unit tests, over the fake data plane.
use std::{
    path::PathBuf,
    sync::{Arc, atomic::AtomicUsize},
};

use super::{testing::*, *};

const SEC: u64 = NS_PER_SEC;
const T0_UNIX: u64 = 1_700_000_000;

struct Fixture {
    clock: FakeClock,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture() -> Fixture {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "guard-control-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Fixture {
        clock: FakeClock::new(1000 * SEC, T0_UNIX),
        dir,
    }
}

impl Fixture {
    fn settings(&self) -> Settings {
        let mut s = Settings::builtin();
        s.state.dir = self.dir.clone();
        s
    }

    fn control_with(&self, dp: FakeDatapath) -> Control<FakeDatapath> {
        Control::new(dp, self.settings(), vec![]).with_wall_clock(self.clock.wall())
    }

    fn control(&self) -> Control<FakeDatapath> {
        self.control_with(FakeDatapath::new(self.clock.clone()))
    }

    fn saved(&self) -> State {
        match Store::load(&self.dir).unwrap() {
            state::Opened::Found(s) => s,
            other => panic!("no state file: {other:?}"),
        }
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn v4key(a: [u8; 4]) -> SourceKey {
    source_key_v4(a, 32)
}

fn ban_for(now_ns: u64, secs: u64) -> Ban {
    Ban {
        expires_ns: now_ns + secs * SEC,
        since_ns: now_ns,
        reason: reason::RATE_LIMITED as u32,
        _pad: 0,
    }
}

#[test]
fn deny_add_writes_map_and_state_file() {
    let f = fixture();
    let mut c = f.control();
    let out = c
        .list_add(
            List::Deny,
            cidr("203.0.113.0/24"),
            None,
            Some("abuse".into()),
        )
        .unwrap();
    assert!(!out.replaced);
    assert_eq!(
        c.datapath().entry(List::Deny, "203.0.113.0/24"),
        Some(ListEntry::expiring(0))
    );
    let saved = f.saved();
    assert_eq!(saved.deny.len(), 1);
    assert_eq!(saved.deny[0].reason.as_deref(), Some("abuse"));
    assert_eq!(saved.deny[0].added, T0_UNIX);
    assert_eq!(saved.deny[0].expires, None);
    assert!(saved.allow.is_empty());
}

#[test]
fn re_adding_an_entry_replaces_its_ttl_and_reason() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(List::Allow, cidr("10.0.0.0/8"), None, None)
        .unwrap();
    let out = c
        .list_add(
            List::Allow,
            cidr("10.0.0.0/8"),
            Some(Duration::from_secs(60)),
            Some("tmp".into()),
        )
        .unwrap();
    assert!(out.replaced);
    let list = c.list_entries(List::Allow);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].expires, Some(T0_UNIX + 60));
    assert_eq!(
        c.datapath()
            .entry(List::Allow, "10.0.0.0/8")
            .unwrap()
            .expires_ns,
        f.clock.now_ns() + 60 * SEC
    );
}

#[test]
fn deny_entry_expires_and_leaves_map_and_state() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(
        List::Deny,
        cidr("198.51.100.7"),
        Some(Duration::from_secs(600)),
        None,
    )
    .unwrap();
    c.list_add(List::Deny, cidr("198.51.100.8"), None, None)
        .unwrap();
    f.clock.advance(Duration::from_secs(599));
    assert_eq!(c.sweep().unwrap().expired_deny, 0);
    assert!(c.datapath().entry(List::Deny, "198.51.100.7").is_some());
    f.clock.advance(Duration::from_secs(1));
    assert_eq!(c.sweep().unwrap().expired_deny, 1);
    assert!(c.datapath().entry(List::Deny, "198.51.100.7").is_none());
    assert!(c.datapath().entry(List::Deny, "198.51.100.8").is_some());
    let saved = f.saved();
    assert_eq!(saved.deny.len(), 1);
    assert_eq!(saved.deny[0].cidr, cidr("198.51.100.8"));
}

#[test]
fn del_removes_entry_and_missing_entry_is_an_error() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(List::Deny, cidr("fd00::/8"), None, None)
        .unwrap();
    c.list_del(List::Deny, cidr("fd00::/8")).unwrap();
    assert!(c.datapath().lists.is_empty());
    assert!(f.saved().deny.is_empty());
    let e = c.list_del(List::Deny, cidr("fd00::/8")).unwrap_err();
    assert_eq!(e.to_string(), "fd00::/8 is not in the deny list");
    // The same CIDR in the other list is another entry.
    c.list_add(List::Allow, cidr("fd00::/8"), None, None)
        .unwrap();
    assert!(c.list_del(List::Deny, cidr("fd00::/8")).is_err());
}

#[test]
fn bad_reason_and_ttl_change_nothing() {
    let f = fixture();
    let mut c = f.control();
    let e = c
        .list_add(List::Deny, cidr("10.0.0.1"), None, Some("a\nb".into()))
        .unwrap_err();
    assert!(matches!(e, ControlError::BadReason { .. }), "{e}");
    let e = c
        .list_add(List::Deny, cidr("10.0.0.1"), Some(Duration::ZERO), None)
        .unwrap_err();
    assert!(matches!(e, ControlError::BadTtl { secs: 0 }), "{e}");
    assert!(c.datapath().lists.is_empty());
    assert!(c.list_entries(List::Deny).is_empty());
}

#[test]
fn state_file_failure_undoes_the_map_change() {
    let f = fixture();
    let mut s = f.settings();
    // A state "directory" under a regular file cannot be created.
    std::fs::create_dir_all(&f.dir).unwrap();
    std::fs::write(f.dir.join("file"), b"").unwrap();
    s.state.dir = f.dir.join("file/sub");
    let mut c =
        Control::new(FakeDatapath::new(f.clock.clone()), s, vec![]).with_wall_clock(f.clock.wall());
    let e = c
        .list_add(List::Deny, cidr("10.0.0.1"), None, None)
        .unwrap_err();
    assert!(matches!(e, ControlError::State(_)), "{e}");
    assert!(c.datapath().lists.is_empty());
    assert!(c.list_entries(List::Deny).is_empty());
}

#[test]
fn netset_parsing_skips_comments_and_blank_lines() {
    let text = "# FireHOL level1\n\n198.18.0.0/15\n  203.0.113.5 # one host\n2001:db8::/32\n";
    let got = parse_netset(text).unwrap();
    assert_eq!(
        got,
        [
            cidr("198.18.0.0/15"),
            cidr("203.0.113.5"),
            cidr("2001:db8::/32")
        ]
    );
    assert!(parse_netset("").unwrap().is_empty());
}

#[test]
fn netset_bad_line_names_the_line_and_imports_nothing() {
    let text = "10.0.0.0/8\n# ok\n300.1.2.3\n10.0.0.0/33\n192.0.2.1\n";
    let e = parse_netset(text).unwrap_err();
    let ControlError::BadNetsetLine { line, more, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!((*line, *more), (3, 1));
    assert!(e.to_string().starts_with("line 3: \"300.1.2.3\""), "{e}");
    assert!(e.to_string().contains("nothing was imported"), "{e}");
}

#[test]
fn import_adds_replaces_and_collapses_duplicates() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(List::Deny, cidr("192.0.2.0/24"), None, None)
        .unwrap();
    let entries =
        parse_netset("192.0.2.0/24\n198.51.100.0/24\n198.51.100.0/24\nfd00::1\n").unwrap();
    let out = c
        .list_import(
            List::Deny,
            &entries,
            Some(Duration::from_secs(3600)),
            Some("feed".into()),
        )
        .unwrap();
    assert_eq!(
        out,
        ImportOutcome {
            added: 2,
            replaced: 1,
            duplicates: 1
        }
    );
    assert_eq!(c.datapath().lists.len(), 3);
    let saved = f.saved();
    assert_eq!(saved.deny.len(), 3);
    assert!(
        saved
            .deny
            .iter()
            .all(|r| r.reason.as_deref() == Some("feed") && r.expires == Some(T0_UNIX + 3600))
    );
}

#[test]
fn import_failing_midway_leaves_everything_as_it_was() {
    let f = fixture();
    let mut dp = FakeDatapath::new(f.clock.clone());
    dp.inserts_before_failure = Some(3);
    let mut c = f.control_with(dp);
    c.list_add(List::Deny, cidr("10.0.0.2"), None, Some("keep".into()))
        .unwrap();
    let entries: Vec<Cidr> = (1..=5).map(|i| cidr(&format!("10.0.0.{i}"))).collect();
    let e = c
        .list_import(List::Deny, &entries, Some(Duration::from_secs(5)), None)
        .unwrap_err();
    assert!(matches!(e, ControlError::Datapath(_)), "{e}");
    let list = c.list_entries(List::Deny);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].reason.as_deref(), Some("keep"));
    assert_eq!(c.datapath().lists.len(), 1);
    assert_eq!(
        c.datapath().entry(List::Deny, "10.0.0.2"),
        Some(ListEntry::expiring(0))
    );
    assert_eq!(f.saved().deny.len(), 1);
}

#[test]
fn import_of_100k_entries_adds_them_all_in_the_store() {
    let f = fixture();
    let mut c = f.control();
    let text: String = (0..100_000u32)
        .map(|i| {
            let [_, b, c, d] = i.to_be_bytes();
            format!("10.{b}.{c}.{d}\n")
        })
        .collect();
    let entries = parse_netset(&text).unwrap();
    let out = c.list_import(List::Deny, &entries, None, None).unwrap();
    assert_eq!(out.added, 100_000);
    assert_eq!(f.saved().deny.len(), 100_000);
}

#[test]
fn import_over_capacity_is_refused_whole() {
    let f = fixture();
    let mut c = f.control();
    let entries: Vec<Cidr> = (0..=capacity::ALLOW_V6)
        .map(|i| Cidr::host(IpAddr::V6(Ipv6Addr::from(u128::from(i) + 1))))
        .collect();
    let e = c
        .list_import(List::Allow, &entries, None, None)
        .unwrap_err();
    assert!(matches!(e, ControlError::Full { .. }), "{e}");
    assert!(c.datapath().lists.is_empty());
}

#[test]
fn each_family_is_held_to_its_own_capacity() {
    let f = fixture();
    let mut c = f.control();
    let v6: Vec<Cidr> = (0..capacity::ALLOW_V6)
        .map(|i| Cidr::host(IpAddr::V6(Ipv6Addr::from(u128::from(i) + 1))))
        .collect();
    c.list_import(List::Allow, &v6, None, None).unwrap();
    // The IPv6 half is full; IPv4 still has room, and replacing an IPv6 entry takes none.
    c.list_add(List::Allow, cidr("198.18.0.0/24"), None, None)
        .unwrap();
    c.list_add(List::Allow, v6[7], None, None).unwrap();
    let e = c
        .list_add(List::Allow, cidr("fd00::/64"), None, None)
        .unwrap_err();
    assert!(
        matches!(e, ControlError::Full { family: "IPv6", .. }),
        "{e}"
    );
}

#[test]
fn restart_restores_entries_with_remaining_ttl_on_a_new_monotonic_clock() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(
        List::Deny,
        cidr("192.0.2.9"),
        Some(Duration::from_secs(600)),
        None,
    )
    .unwrap();
    c.list_add(List::Allow, cidr("198.18.0.0/15"), None, Some("lab".into()))
        .unwrap();
    drop(c);

    // A reboot: 100 s of wall time pass, the monotonic clock starts again near zero, and
    // the maps are empty.
    let rebooted = FakeClock::new(5 * SEC, f.clock.now_unix() + 100);
    let mut c = Control::new(FakeDatapath::new(rebooted.clone()), f.settings(), vec![])
        .with_wall_clock(rebooted.wall());
    let report = c.restore(Some(f.saved())).unwrap();
    assert_eq!((report.allow, report.deny, report.expired), (1, 1, 0));
    assert_eq!(
        c.datapath().entry(List::Deny, "192.0.2.9"),
        Some(ListEntry::expiring(5 * SEC + 500 * SEC))
    );
    assert_eq!(
        c.datapath().entry(List::Allow, "198.18.0.0/15"),
        Some(ListEntry::expiring(0))
    );
    assert_eq!(
        c.list_entries(List::Allow)[0].reason.as_deref(),
        Some("lab")
    );
    rebooted.advance(Duration::from_secs(500));
    assert_eq!(c.sweep().unwrap().expired_deny, 1);
}

#[test]
fn restore_drops_entries_that_expired_while_down() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(
        List::Deny,
        cidr("192.0.2.9"),
        Some(Duration::from_secs(60)),
        None,
    )
    .unwrap();
    c.datapath_mut()
        .bans
        .insert(v4key([203, 0, 113, 1]), ban_for(f.clock.now_ns(), 30));
    c.sweep().unwrap();
    assert_eq!(f.saved().bans.len(), 1);
    let saved = f.saved();
    drop(c);
    f.clock.advance(Duration::from_secs(61));
    let mut c = f.control();
    let report = c.restore(Some(saved)).unwrap();
    assert_eq!((report.deny, report.bans, report.expired), (0, 0, 2));
    assert!(c.datapath().lists.is_empty());
    assert!(c.datapath().bans.is_empty());
    // Not deleted from the store at restore (the clock may be wrong at boot: fault 8 of
    // issue #12), only after the daemon ran PARK_GRACE with a steady clock.
    let saved = f.saved();
    assert_eq!((saved.deny.len(), saved.bans.len()), (1, 1));
    f.clock.advance(PARK_GRACE - Duration::from_secs(1));
    c.sweep().unwrap();
    assert_eq!(f.saved().deny.len(), 1);
    f.clock.advance(Duration::from_secs(2));
    c.sweep().unwrap();
    let saved = f.saved();
    assert!(saved.deny.is_empty() && saved.bans.is_empty(), "{saved:?}");
}

/// A wall clock `offset` seconds off `clock`'s (a real-time clock wrong at boot).
fn skewed_wall(clock: &FakeClock, offset: &Arc<std::sync::atomic::AtomicI64>) -> WallClock {
    let (clock, offset) = (clock.clone(), Arc::clone(offset));
    Box::new(move || {
        clock
            .now_unix()
            .saturating_add_signed(offset.load(std::sync::atomic::Ordering::SeqCst))
    })
}

#[test]
fn a_clock_ahead_at_boot_expires_nothing_for_good_and_its_correction_restores_it() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(
        List::Deny,
        cidr("192.0.2.9"),
        Some(Duration::from_secs(3600)),
        Some("abuse".into()),
    )
    .unwrap();
    c.datapath_mut()
        .bans
        .insert(v4key([203, 0, 113, 1]), ban_for(f.clock.now_ns(), 1800));
    c.sweep().unwrap();
    drop(c);

    // A reboot 10 s later with the real-time clock two hours ahead.
    let rebooted = FakeClock::new(5 * SEC, f.clock.now_unix() + 10);
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(7200));
    let mut c = Control::new(FakeDatapath::new(rebooted.clone()), f.settings(), vec![])
        .with_wall_clock(skewed_wall(&rebooted, &offset));
    let report = c.restore(Some(f.saved())).unwrap();
    assert_eq!(report.expired, 2, "both look expired on the wrong clock");
    assert!(c.datapath().lists.is_empty());
    let saved = f.saved();
    assert_eq!(
        (saved.deny.len(), saved.bans.len()),
        (1, 1),
        "a clock jump must not delete stored records"
    );

    // Time sync steps the clock back: the entry and the ban are in force after all.
    rebooted.advance(Duration::from_secs(30));
    offset.store(0, std::sync::atomic::Ordering::SeqCst);
    c.sweep().unwrap();
    assert!(c.datapath().entry(List::Deny, "192.0.2.9").is_some());
    assert!(c.datapath().bans.contains_key(&v4key([203, 0, 113, 1])));
    assert_eq!(
        c.list_entries(List::Deny)[0].reason.as_deref(),
        Some("abuse")
    );
    // And they keep their stored expiry, not one the wrong clock made.
    rebooted.advance(PARK_GRACE);
    c.sweep().unwrap();
    assert_eq!(f.saved().deny.len(), 1);
}

#[test]
fn a_store_that_cannot_save_keeps_bans_in_memory_refuses_changes_and_catches_up() {
    let f = fixture();
    let mut c = f.control();
    c.restore(None).unwrap();
    c.list_add(List::Deny, cidr("192.0.2.1"), None, None)
        .unwrap();
    c.store_mut().simulate_full_disk(true);

    let e = c
        .list_add(List::Deny, cidr("192.0.2.2"), None, None)
        .unwrap_err();
    let text = crate::rpc::error_chain(&e);
    assert!(
        text.contains("could not be saved") && text.contains("full"),
        "{text}"
    );
    assert!(
        c.datapath().entry(List::Deny, "192.0.2.2").is_none(),
        "undone"
    );
    assert!(c.list_del(List::Deny, cidr("192.0.2.1")).is_err());
    assert!(
        c.datapath().entry(List::Deny, "192.0.2.1").is_some(),
        "undone"
    );

    // A ban the program made: the sweep (the watchdog's soundness) does not fail on it.
    c.datapath_mut()
        .bans
        .insert(v4key([203, 0, 113, 7]), ban_for(f.clock.now_ns(), 600));
    f.clock.advance(Duration::from_secs(1));
    c.sweep()
        .expect("a store that cannot save does not fail the sweep");
    assert_eq!(c.bans().unwrap().len(), 1, "the ban is kept");
    let warning = c.store_warning().expect("health warns");
    assert!(warning.contains("1 change(s) held in memory"), "{warning}");
    assert!(f.saved().bans.is_empty());

    // Room again: the next tick's flush saves it and the warning goes.
    c.store_mut().simulate_full_disk(false);
    f.clock.advance(Duration::from_secs(1));
    c.sweep().unwrap();
    assert_eq!(c.store_warning(), None);
    assert_eq!(f.saved().bans.len(), 1);
    c.list_add(List::Deny, cidr("192.0.2.2"), None, None)
        .unwrap();
    assert_eq!(f.saved().deny.len(), 2);
}

#[test]
fn restore_with_state_file_removes_stale_map_entries_of_a_previous_run() {
    let f = fixture();
    let mut dp = FakeDatapath::new(f.clock.clone());
    dp.lists
        .insert((List::Deny, cidr("10.9.9.9")), ListEntry::expiring(0));
    let mut c = f.control_with(dp);
    let report = c.restore(Some(State::default())).unwrap();
    assert_eq!(report.stale_removed, 1);
    assert!(c.datapath().lists.is_empty());
}

#[test]
fn restore_without_state_file_adopts_the_pinned_maps() {
    let f = fixture();
    let mut dp = FakeDatapath::new(f.clock.clone());
    let now = f.clock.now_ns();
    dp.lists
        .insert((List::Deny, cidr("10.9.9.9")), ListEntry::expiring(0));
    dp.lists.insert(
        (List::Deny, cidr("10.9.9.10")),
        ListEntry::expiring(now + 120 * SEC),
    );
    dp.lists.insert(
        (List::Allow, cidr("10.1.1.1")),
        ListEntry::expiring(now - 1),
    );
    dp.bans.insert(v4key([192, 0, 2, 1]), ban_for(now, 60));
    let mut c = f.control_with(dp);
    let report = c.restore(None).unwrap();
    assert!(report.from_maps);
    assert_eq!((report.allow, report.deny, report.bans), (0, 2, 1));
    let saved = f.saved();
    assert_eq!(saved.deny.len(), 2);
    assert_eq!(
        saved
            .deny
            .iter()
            .find(|r| r.cidr == cidr("10.9.9.10"))
            .unwrap()
            .expires,
        Some(T0_UNIX + 120)
    );
    assert_eq!(saved.bans[0].source, "192.0.2.1".parse::<IpAddr>().unwrap());
    assert!(c.datapath().entry(List::Allow, "10.1.1.1").is_none());
}

#[test]
fn restore_after_reboot_reinserts_bans_from_the_state_file() {
    let f = fixture();
    let state = State {
        version: state::VERSION,
        bans: vec![BanRecord {
            source: "2001:db8:1:2::".parse().unwrap(),
            reason: "syn_limited".into(),
            since: T0_UNIX - 10,
            expires: T0_UNIX + 50,
        }],
        ..State::default()
    };
    let mut c = f.control();
    let report = c.restore(Some(state)).unwrap();
    assert_eq!(report.bans, 1);
    let (key, ban) = c.datapath().bans.iter().next().unwrap();
    assert_eq!(key_addr(key), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    assert_eq!(ban.reason, reason::SYN_LIMITED as u32);
    assert_eq!(ban.expires_ns, f.clock.now_ns() + 50 * SEC);
    assert_eq!(ban.since_ns, f.clock.now_ns() - 10 * SEC);
    let bans = c.bans().unwrap();
    assert_eq!(bans[0].source.to_string(), "2001:db8:1:2::/64");
    assert_eq!(bans[0].expires, T0_UNIX + 50);
}

#[test]
fn ban_expires_and_leaves_map_and_state() {
    let f = fixture();
    let mut c = f.control();
    let now = f.clock.now_ns();
    c.datapath_mut()
        .bans
        .insert(v4key([192, 0, 2, 1]), ban_for(now, 60));
    let out = c.sweep().unwrap();
    assert_eq!(out.bans_changed, 1);
    assert_eq!(f.saved().bans.len(), 1);
    assert_eq!(f.saved().bans[0].expires, T0_UNIX + 60);
    // A second sweep with nothing new changes nothing.
    assert_eq!(c.sweep().unwrap(), SweepOutcome::default());
    f.clock.advance(Duration::from_secs(60));
    let out = c.sweep().unwrap();
    assert_eq!((out.expired_bans, out.bans_changed), (1, 1));
    assert!(c.datapath().bans.is_empty());
    assert!(f.saved().bans.is_empty());
}

#[test]
fn unban_of_a_cidr_removes_every_ban_inside_it() {
    let f = fixture();
    let mut c = f.control();
    let now = f.clock.now_ns();
    for a in [[192, 0, 2, 1], [192, 0, 2, 200], [198, 51, 100, 1]] {
        c.datapath_mut().bans.insert(v4key(a), ban_for(now, 60));
    }
    c.sweep().unwrap();
    let removed = c.unban(cidr("192.0.2.0/24")).unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(removed[0].source, cidr("192.0.2.1"));
    assert_eq!(c.datapath().bans.len(), 1);
    assert_eq!(f.saved().bans.len(), 1);
    let e = c.unban(cidr("192.0.2.1")).unwrap_err();
    assert_eq!(e.to_string(), "no ban matches 192.0.2.1/32");
}

#[test]
fn unban_lifts_a_ban_held_only_in_the_tracker() {
    let f = fixture();
    let mut c = f.control();
    let now = f.clock.now_ns();
    // The data plane banned it but its bans map was full.
    let state = SourceState {
        banned_until_ns: now + 60_000_000_000,
        ..SourceState::default()
    };
    c.datapath_mut()
        .sources
        .insert(v4key([192, 0, 2, 7]), state);
    c.datapath_mut()
        .sources
        .insert(v4key([192, 0, 2, 8]), SourceState::default());
    let removed = c.unban(cidr("192.0.2.0/24")).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].source, cidr("192.0.2.7"));
    assert!(removed[0].reason.contains("tracker only"));
    assert!(!c.datapath().sources.contains_key(&v4key([192, 0, 2, 7])));
    assert!(c.datapath().sources.contains_key(&v4key([192, 0, 2, 8])));
}

#[test]
fn unban_of_an_ipv6_host_lifts_the_ban_on_its_tracked_network() {
    let f = fixture();
    let mut c = f.control();
    let net: IpAddr = "2001:db8:0:7::".parse().unwrap();
    c.datapath_mut()
        .bans
        .insert(addr_key(net), ban_for(f.clock.now_ns(), 60));
    let removed = c.unban(cidr("2001:db8:0:7::1234")).unwrap();
    assert_eq!(removed[0].source, cidr("2001:db8:0:7::/64"));
    assert!(c.datapath().bans.is_empty());
}

#[test]
fn ban_events_are_described_with_interface_and_wall_clock_expiry() {
    let f = fixture();
    let attachments = vec![Attachment {
        iface: "eth0".into(),
        ifindex: 2,
        mode: "native".into(),
        adopted: false,
        reattached: 0,
    }];
    let c = Control::new(
        FakeDatapath::new(f.clock.clone()),
        f.settings(),
        attachments,
    )
    .with_wall_clock(f.clock.wall());
    let now = f.clock.now_ns();
    let ev = BanEvent {
        source: v4key([203, 0, 113, 50]),
        since_ns: now,
        expires_ns: now + 60 * SEC,
        reason: reason::SYN_LIMITED as u32,
        ifindex: 2,
    };
    let got = c.describe_events(&[ev]);
    assert_eq!(got[0].iface, "eth0");
    assert_eq!(got[0].ban.source, cidr("203.0.113.50"));
    assert_eq!(got[0].ban.reason, "syn_limited");
    assert_eq!(got[0].ban.expires, T0_UNIX + 60);
}

#[test]
fn reload_applies_limits_and_keeps_restart_only_settings() {
    let f = fixture();
    let mut c = f.control();
    c.apply_kernel_config().unwrap();
    assert_eq!(c.datapath().config.pps, 20_000);
    let mut new = f.settings();
    new.limits.pps = 5;
    new.datapath.dry_run = true;
    new.datapath.interfaces = vec!["eth7".into()];
    let report = c.apply_settings(new).unwrap();
    assert_eq!(report.restart_needed, ["datapath.interfaces"]);
    let mut narrower = c.settings.clone();
    narrower.limits.ipv6_prefix = 56;
    let report = c.apply_settings(narrower).unwrap();
    assert_eq!(report.restart_needed, ["limits.ipv6_prefix"]);
    assert_eq!(c.settings.limits.ipv6_prefix, 64, "kept until a restart");
    assert_eq!(c.datapath().config.pps, 5);
    assert_eq!(c.datapath().config.flags, guard_common::FLAG_DRY_RUN);
    assert!(c.settings().datapath.interfaces.is_empty());
}

#[test]
fn stats_name_interfaces_by_slot_and_sum_totals() {
    let f = fixture();
    let attachments = vec![
        Attachment {
            iface: "eth0".into(),
            ifindex: 2,
            mode: "native".into(),
            adopted: false,
            reattached: 0,
        },
        Attachment {
            iface: "eth1".into(),
            ifindex: 3,
            mode: "generic".into(),
            adopted: false,
            reattached: 0,
        },
    ];
    let mut dp = FakeDatapath::new(f.clock.clone());
    let mut a = Counters::default();
    a.packets[reason::PASSED] = 10;
    a.bytes[reason::PASSED] = 1000;
    let mut b = Counters::default();
    b.packets[reason::DENIED] = 5;
    b.bytes[reason::DENIED] = 300;
    dp.counters = vec![(2, a), (7, b)];
    let mut c = Control::new(dp, f.settings(), attachments).with_wall_clock(f.clock.wall());
    c.list_add(List::Deny, cidr("10.0.0.0/8"), None, None)
        .unwrap();
    let s = c.stats().unwrap();
    let names: Vec<&str> = s.interfaces.iter().map(|i| i.iface.as_str()).collect();
    assert_eq!(names, ["eth0", "eth1", "slot 7"]);
    assert_eq!(s.interfaces[0].packets, 10);
    assert_eq!(s.interfaces[1].packets, 0);
    assert_eq!((s.total.packets, s.total.bytes), (15, 1300));
    let denied = s
        .total
        .reasons
        .iter()
        .find(|r| r.reason == "denied")
        .unwrap();
    assert_eq!(denied.packets, 5);
    let deny_v4 = s.maps.iter().find(|m| m.map == map_names::DENY_V4).unwrap();
    assert_eq!((deny_v4.entries, deny_v4.capacity), (1, capacity::DENY_V4));
}

#[test]
fn top_ranks_sources_by_rate_between_two_samples() {
    let f = fixture();
    let mut dp = FakeDatapath::new(f.clock.clone());
    let heavy = v4key([203, 0, 113, 1]);
    let light = v4key([203, 0, 113, 2]);
    let idle = v4key([203, 0, 113, 3]);
    let st = |packets: u64| SourceState {
        packets,
        bytes: packets * 100,
        ..SourceState::default()
    };
    dp.sources.insert(heavy, st(1_000_000));
    dp.sources.insert(light, st(5));
    dp.sources.insert(idle, st(77));
    let mut c = f.control_with(dp);
    let before = c.sample_sources().unwrap();
    f.clock.advance(Duration::from_secs(2));
    let now = f.clock.now_ns();
    let dp = c.datapath_mut();
    dp.sources.insert(heavy, st(1_020_000));
    dp.sources.insert(light, st(25));
    dp.sources.insert(v4key([203, 0, 113, 4]), st(100));
    dp.bans.insert(heavy, ban_for(now, 60));
    let after = c.sample_sources().unwrap();
    let top = top_sources(&before, &after, 10, &c.settings().limits);
    let got: Vec<(String, u64, bool)> = top
        .iter()
        .map(|t| (t.source.to_string(), t.pps, t.banned))
        .collect();
    assert_eq!(
        got,
        [
            ("203.0.113.1/32".to_string(), 10_000, true),
            ("203.0.113.4/32".to_string(), 50, false),
            ("203.0.113.2/32".to_string(), 10, false),
        ]
    );
    assert_eq!(top[0].bps, 1_000_000);
    assert_eq!(
        top_sources(&before, &after, 1, &c.settings().limits).len(),
        1
    );
}

#[test]
fn key_conversions_round_trip() {
    for ip in ["192.0.2.1", "2001:db8::1"] {
        let ip: IpAddr = ip.parse().unwrap();
        assert_eq!(key_addr(&addr_key(ip)), ip);
    }
}

#[test]
fn an_l7_ban_is_listed_with_its_reason_never_over_an_allow_listed_source() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(List::Allow, cidr("198.18.0.0/24"), None, None)
        .unwrap();
    let allowed: IpAddr = "198.18.0.9".parse().unwrap();
    assert_eq!(
        c.ban_l7(allowed, 600).unwrap(),
        L7Ban::Allowed(cidr("198.18.0.0/24"))
    );
    let abuser: IpAddr = "198.18.1.7".parse().unwrap();
    let L7Ban::Banned(info) = c.ban_l7(abuser, 600).unwrap() else {
        panic!("not banned")
    };
    assert_eq!(info.reason, "l7:haproxy");
    assert_eq!(info.expires, T0_UNIX + 600);
    assert!(matches!(
        c.ban_l7(abuser, 600).unwrap(),
        L7Ban::AlreadyBanned(e) if e == T0_UNIX + 600
    ));
    let bans = c.bans().unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        (bans[0].source, bans[0].reason.as_str()),
        (cidr("198.18.1.7/32"), "l7:haproxy")
    );
    // The state file keeps the reason, and a restart reads it back as the same ban.
    c.sweep().unwrap();
    let saved = f.saved();
    assert_eq!(saved.bans[0].reason, "l7:haproxy");
    let mut again = f.control();
    again.restore(Some(saved)).unwrap();
    assert_eq!(again.bans().unwrap()[0].reason, "l7:haproxy");
}

#[test]
fn fleet_ban_is_applied_with_its_origin_and_absolute_expiry_never_over_the_allow_list() {
    let f = fixture();
    let mut c = f.control();
    let until = T0_UNIX + 120;
    assert_eq!(
        c.fleet_ban(cidr("198.18.0.7/32"), until, "web-1").unwrap(),
        crate::fleet::Applied::Done
    );
    let bans = c.bans().unwrap();
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].reason, "fleet:web-1");
    assert_eq!(bans[0].expires, until);
    // The allow list wins: an entry for an allow-listed source is skipped.
    c.list_add(List::Allow, cidr("198.18.1.0/24"), None, None)
        .unwrap();
    assert!(matches!(
        c.fleet_ban(cidr("198.18.1.9/32"), until, "web-1").unwrap(),
        crate::fleet::Applied::Skipped(_)
    ));
    assert!(matches!(
        c.fleet_list_add(List::Deny, cidr("198.18.1.0/25"), 0, "web-1")
            .unwrap(),
        crate::fleet::Applied::Skipped(_)
    ));
    assert_eq!(c.bans().unwrap().len(), 1);
    assert!(c.list_entries(List::Deny).is_empty());
    // Already expired where it was made: skipped.
    assert!(matches!(
        c.fleet_ban(cidr("198.18.0.8/32"), T0_UNIX - 1, "web-1")
            .unwrap(),
        crate::fleet::Applied::Skipped(_)
    ));
    // Lifted as the fleet lifts it.
    assert_eq!(
        c.fleet_unban(cidr("198.18.0.7/32")).unwrap(),
        crate::fleet::Applied::Done
    );
    assert!(c.bans().unwrap().is_empty());
}

#[test]
fn fleet_list_entries_never_replace_or_remove_this_hosts_own() {
    let f = fixture();
    let mut c = f.control();
    c.list_add(List::Deny, cidr("198.18.2.0/24"), None, Some("mine".into()))
        .unwrap();
    assert!(matches!(
        c.fleet_list_add(List::Deny, cidr("198.18.2.0/24"), T0_UNIX + 60, "web-2")
            .unwrap(),
        crate::fleet::Applied::Skipped(_)
    ));
    assert!(matches!(
        c.fleet_list_del(List::Deny, cidr("198.18.2.0/24")).unwrap(),
        crate::fleet::Applied::Skipped(_)
    ));
    assert_eq!(
        c.list_entries(List::Deny)[0].reason.as_deref(),
        Some("mine")
    );
    c.fleet_list_add(List::Deny, cidr("198.18.3.0/24"), T0_UNIX + 60, "web-2")
        .unwrap();
    let e = c
        .list_entries(List::Deny)
        .into_iter()
        .find(|e| e.cidr == cidr("198.18.3.0/24"))
        .unwrap();
    assert_eq!(e.reason.as_deref(), Some("fleet:web-2"));
    assert_eq!(e.expires, Some(T0_UNIX + 60));
    assert_eq!(
        c.fleet_list_del(List::Deny, cidr("198.18.3.0/24")).unwrap(),
        crate::fleet::Applied::Done
    );
}
