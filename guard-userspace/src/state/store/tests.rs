//! The store on a real file system: creation, incremental writes, damage, migration.
use std::fs;

use super::*;
use crate::state::{BanRecord, ListRecord};

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "guard-store-test-{name}-{}-{}",
        std::process::id(),
        unix_now()
    ));
    let _ = fs::remove_dir_all(&d);
    d
}

fn entry(cidr: &str) -> ListRecord {
    ListRecord {
        cidr: cidr.parse().unwrap(),
        reason: Some("test".into()),
        added: 100,
        expires: None,
    }
}

fn sample() -> State {
    State {
        version: VERSION,
        allow: vec![entry("198.18.0.0/15")],
        deny: vec![ListRecord {
            cidr: "2001:db8::/32".parse().unwrap(),
            reason: None,
            added: 100,
            expires: Some(700),
        }],
        bans: vec![BanRecord {
            source: "203.0.113.9".parse().unwrap(),
            reason: "rate_limited".into(),
            since: 100,
            expires: 160,
        }],
        operator: Some(Override::new(
            crate::health::OverrideMode::Drain,
            Some("deploy".into()),
            100,
            Some(std::time::Duration::from_secs(600)),
        )),
        prefix_bans: vec![PrefixBanRecord {
            cidr: "198.18.7.0/24".parse().unwrap(),
            since: 100,
            expires: 700,
            sources: 8,
        }],
        learned: vec![LearnedRecord {
            protocol: crate::dataplane::ServiceProto::Udp,
            port: 53,
            pps: crate::control::attack::Learned {
                raw: 5_000.0,
                samples: 60,
            },
            syn_pps: crate::control::attack::Learned::default(),
        }],
    }
}

fn found(dir: &Path) -> State {
    match Store::open(dir).unwrap() {
        (_, Opened::Found(s)) => s,
        (_, other) => panic!("{other:?}"),
    }
}

#[test]
fn a_first_open_creates_an_empty_store_and_a_write_survives_a_reopen() {
    let dir = tempdir("first");
    let (mut store, opened) = Store::open(dir.join("nested")).unwrap();
    assert!(matches!(opened, Opened::Missing), "{opened:?}");
    assert!(store.is_open());
    store
        .write(|w| w.replace_all(&sample()))
        .expect("write the sample");
    drop(store);
    assert_eq!(found(&dir.join("nested")), sample());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn one_entry_added_or_deleted_is_one_row_the_rest_untouched() {
    let dir = tempdir("rows");
    let (mut store, _) = Store::open(&dir).unwrap();
    store.write(|w| w.replace_all(&sample())).unwrap();
    store
        .write(|w| w.put_list(List::Deny, &entry("198.51.100.0/24")))
        .unwrap();
    store
        .write(|w| w.del_list(List::Allow, &"198.18.0.0/15".parse().unwrap()))
        .unwrap();
    drop(store);
    let s = found(&dir);
    let mut want = sample();
    want.allow.clear();
    want.deny.insert(0, entry("198.51.100.0/24"));
    want.deny.sort_by_key(|r| r.cidr);
    assert_eq!(s, want);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_failed_transaction_leaves_the_old_list_not_a_mix() {
    let dir = tempdir("atomic");
    let (mut store, _) = Store::open(&dir).unwrap();
    store
        .write(|w| w.put_list(List::Deny, &entry("192.0.2.1/32")))
        .unwrap();
    let e = store
        .write(|w| {
            for i in 0..10_000u32 {
                let c = format!("10.{}.{}.0/24", i / 256, i % 256);
                w.put_list(List::Deny, &entry(&c))?;
            }
            // A failure after thousands of rows, as a full disk or a kill would be.
            Err(rusqlite::Error::InvalidQuery)
        })
        .unwrap_err();
    assert!(e.to_string().contains("guard.db"), "{e}");
    assert_eq!(store.read().unwrap().deny, [entry("192.0.2.1/32")]);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_truncated_store_is_damaged_named_and_left_alone() {
    let dir = tempdir("truncated");
    let (mut store, _) = Store::open(&dir).unwrap();
    store
        .write(|w| {
            for i in 0..2_000u32 {
                w.put_list(
                    List::Deny,
                    &entry(&format!("10.0.{}.{}/32", i / 256, i % 256)),
                )?;
            }
            Ok(())
        })
        .unwrap();
    let path = store.path();
    drop(store);
    let len = fs::metadata(&path).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (store, opened) = Store::open(&dir).unwrap();
    let Opened::Damaged {
        path: named,
        problem,
    } = opened
    else {
        panic!("not reported damaged: {opened:?}")
    };
    assert_eq!(named, path, "{problem}");
    assert!(!store.is_open());
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        len / 2,
        "left as it was"
    );
    let moved = Store::set_aside(&path).unwrap();
    assert!(moved.to_string_lossy().contains("guard.db.damaged-"));
    assert!(!path.exists());
    assert!(matches!(Store::open(&dir).unwrap().1, Opened::Missing));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn an_empty_or_foreign_file_is_damaged_not_an_empty_store() {
    let dir = tempdir("empty");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(DB_FILE_NAME), b"").unwrap();
    assert!(matches!(
        Store::open(&dir).unwrap().1,
        Opened::Damaged { .. }
    ));
    fs::write(dir.join(DB_FILE_NAME), b"not sqlite at all, just some text").unwrap();
    assert!(matches!(
        Store::open(&dir).unwrap().1,
        Opened::Damaged { .. }
    ));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_newer_schema_is_refused_not_damaged() {
    let dir = tempdir("newer");
    let (store, _) = Store::open(&dir).unwrap();
    drop(store);
    let conn = Connection::open(dir.join(DB_FILE_NAME)).unwrap();
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema'", [])
        .unwrap();
    drop(conn);
    let e = Store::open(&dir).unwrap_err();
    assert!(matches!(e, StateError::Version { found: 99, .. }), "{e}");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_second_opener_is_refused_while_the_first_holds_the_store() {
    let dir = tempdir("busy");
    let (first, _) = Store::open(&dir).unwrap();
    let e = Store::open(&dir).unwrap_err();
    assert!(matches!(e, StateError::Busy { .. }), "{e}");
    drop(first);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_state_json_is_migrated_once_then_renamed() {
    let dir = tempdir("migrate");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(LEGACY_FILE_NAME),
        serde_json::to_vec(&sample()).unwrap(),
    )
    .unwrap();
    assert_eq!(found(&dir), sample());
    assert!(!dir.join(LEGACY_FILE_NAME).exists());
    assert!(dir.join("state.json.migrated").exists());
    // The second start reads the store.
    assert_eq!(found(&dir), sample());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_newer_guards_extra_fields_are_not_damage() {
    let dir = tempdir("extra");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(LEGACY_FILE_NAME),
        br#"{"version":1,"allow":[],"future":{"a":1},"deny":[{"cidr":"192.0.2.0/24","added":5,"expires":null,"note":"x"}],"bans":[],"operator":{"mode":"drain","since":1,"by":"ops"}}"#,
    )
    .unwrap();
    let s = found(&dir);
    assert_eq!(s.deny.len(), 1);
    assert_eq!(s.operator.unwrap().mode, crate::health::OverrideMode::Drain);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_damaged_state_json_is_named_and_not_migrated() {
    let dir = tempdir("bad-json");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(LEGACY_FILE_NAME),
        b"{\"version\": 1, \"allow\": [tru",
    )
    .unwrap();
    let (store, opened) = Store::open(&dir).unwrap();
    let Opened::Damaged { path, .. } = opened else {
        panic!("{opened:?}")
    };
    assert_eq!(path, dir.join(LEGACY_FILE_NAME));
    assert!(!store.is_open());
    assert!(!dir.join(DB_FILE_NAME).exists(), "no empty store made");
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_newer_state_json_is_refused_and_left_in_place() {
    let dir = tempdir("newer-json");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join(LEGACY_FILE_NAME),
        b"{\"version\": 2, \"future\": true}",
    )
    .unwrap();
    let e = Store::open(&dir).unwrap_err();
    assert!(matches!(e, StateError::Version { found: 2, .. }), "{e}");
    assert!(dir.join(LEGACY_FILE_NAME).exists());
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn an_unwritable_state_dir_is_an_error_naming_the_path() {
    let e = Store::open("/proc/self/guard-no-such-dir").unwrap_err();
    assert!(
        e.to_string().contains("/proc/self/guard-no-such-dir"),
        "{e}"
    );
}
