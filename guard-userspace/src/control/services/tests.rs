//! Tests of the services, their monitors, known sources and prefix bans, over the fake data plane.
use std::{path::PathBuf, sync::atomic::AtomicUsize, time::Duration};

use guard_common::{SERVICE_TCP, SERVICE_UNDER_ATTACK, reason, source_key_v4};

use super::*;
use crate::{
    config::{ServiceSettings, Settings},
    control::testing::{FakeClock, FakeDatapath},
    dataplane::{List, ServiceProto},
    state::{self, Store},
};

const SEC: u64 = NS_PER_SEC;
const T0_UNIX: u64 = 1_700_000_000;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn setup(services: Vec<ServiceSettings>) -> (Control<FakeDatapath>, FakeClock, Dir) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "guard-services-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let clock = FakeClock::new(1000 * SEC, T0_UNIX);
    let mut s = Settings::builtin();
    s.state.dir = dir.clone();
    s.services = services;
    let mut c =
        Control::new(FakeDatapath::new(clock.clone()), s, vec![]).with_wall_clock(clock.wall());
    c.restore(None).unwrap();
    c.apply_services().unwrap();
    (c, clock, Dir(dir))
}

fn dns(max_pps: Option<u64>) -> ServiceSettings {
    ServiceSettings {
        name: "dns".into(),
        protocol: ServiceProto::Udp,
        port: 53,
        max_pps,
        max_syn_pps: None,
        syn_cookies: crate::config::SynCookies::Off,
    }
}

fn web() -> ServiceSettings {
    ServiceSettings {
        name: "web".into(),
        protocol: ServiceProto::Tcp,
        port: 443,
        max_pps: Some(1_000),
        max_syn_pps: Some(100),
        syn_cookies: crate::config::SynCookies::Auto,
    }
}

fn ban(c: &mut Control<FakeDatapath>, a: [u8; 4]) {
    let now = c.dp.now_ns();
    c.dp.bans.insert(
        source_key_v4(a, 32),
        Ban {
            expires_ns: now + 60 * SEC,
            since_ns: now,
            reason: reason::RATE_LIMITED as u32,
            _pad: 0,
        },
    );
}

#[test]
fn services_get_their_slots_and_ports_in_the_data_plane() {
    let (c, _, _d) = setup(vec![dns(None), web()]);
    assert_eq!(c.dp.service_ports.get(&(ServiceProto::Udp, 53)), Some(&1));
    assert_eq!(c.dp.service_ports.get(&(ServiceProto::Tcp, 443)), Some(&2));
    assert_eq!(c.dp.services[&2].flags, SERVICE_TCP);
    assert_eq!(c.dp.services[&1].flags & SERVICE_UNDER_ATTACK, 0);
    // Every other slot is cleared.
    assert_eq!(c.dp.services[&5], guard_common::Service::default());
    let r = c.service_reports();
    assert_eq!(r.len(), 3, "two services and other");
    assert_eq!(r[2].name, "other");
}

#[test]
fn a_flood_puts_a_service_under_attack_with_a_lease_and_its_end_lifts_it() {
    let (mut c, clock, _d) = setup(vec![dns(None), web()]);
    let mut packets = 0;
    let mut step = |c: &mut Control<FakeDatapath>, pps: u64| {
        packets += pps;
        c.dp.service_stats[2].packets = packets;
        clock.advance(Duration::from_secs(1));
        c.attack_tick().unwrap()
    };
    for _ in 0..5 {
        assert!(step(&mut c, 500).is_empty());
    }
    assert!(
        step(&mut c, 50_000).is_empty(),
        "one second is not an attack"
    );
    let t = step(&mut c, 50_000);
    assert!(
        matches!(&t[..], [crate::control::attack::Transition::Entered { name, .. }] if name == "web"),
        "{t:?}"
    );
    let s = c.dp.services[&2];
    assert_eq!(s.flags & SERVICE_UNDER_ATTACK, SERVICE_UNDER_ATTACK);
    assert!(s.attack_until_ns > c.dp.now_ns(), "the lease runs");
    // A tenth of the configured ceiling (1,000 pps), shared among the CPUs.
    let cpus = aya::util::online_cpus().map_or(1, |c| c.len()) as f64;
    let per_cpu = 100.0 / cpus;
    assert_eq!(s.newcomer_interval_ns, (1e9 / per_cpu) as u64);
    let r = &c.status().services[1];
    assert!(r.under_attack && r.attack_since.is_some());
    for _ in 0..9 {
        assert!(step(&mut c, 500).is_empty());
    }
    let t = step(&mut c, 500);
    assert!(
        matches!(&t[..], [crate::control::attack::Transition::Left { .. }]),
        "{t:?}"
    );
    assert_eq!(c.dp.services[&2].flags & SERVICE_UNDER_ATTACK, 0);
}

#[test]
fn a_reload_keeps_what_an_unchanged_service_learned_and_a_restart_restores_it() {
    let (mut c, clock, d) = setup(vec![dns(None)]);
    let mut packets = 0;
    for _ in 0..30 {
        packets += 8_000;
        c.dp.service_stats[1].packets = packets;
        clock.advance(Duration::from_secs(1));
        c.attack_tick().unwrap();
    }
    let learned = c.service_reports()[0].learned_pps.unwrap();
    assert!((learned - 8_000.0).abs() < 10.0, "{learned}");
    // A reload that adds a service and keeps dns: dns keeps its rate, in its new slot.
    let mut s = c.settings().clone();
    s.services = vec![web(), dns(None)];
    c.apply_settings(s).unwrap();
    assert_eq!(c.dp.service_ports.get(&(ServiceProto::Udp, 53)), Some(&2));
    assert_eq!(c.service_reports()[1].learned_pps, Some(learned));
    // Saved with the state, and read back by a new daemon.
    c.save_learned().unwrap();
    let saved = match Store::load(&d.0).unwrap() {
        state::Opened::Found(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(saved.learned.len(), 1);
    let mut settings = Settings::builtin();
    settings.state.dir = d.0.clone();
    settings.services = vec![dns(None)];
    let mut again = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
        .with_wall_clock(clock.wall());
    again.restore(Some(saved)).unwrap();
    again.apply_services().unwrap();
    let r = again.service_reports()[0].learned_pps.unwrap();
    assert!((r - learned).abs() < 1e-6);
}

#[test]
fn enough_bans_in_one_prefix_ban_the_prefix_and_unban_lifts_it() {
    let (mut c, _, d) = setup(vec![]);
    for i in 1..=7 {
        ban(&mut c, [198, 18, 7, i]);
    }
    let s = c.sweep().unwrap();
    assert!(s.escalated.is_empty(), "7 of the 8 needed");
    ban(&mut c, [198, 18, 7, 8]);
    let s = c.sweep().unwrap();
    assert_eq!(s.escalated.len(), 1);
    let prefix: Cidr = "198.18.7.0/24".parse().unwrap();
    assert_eq!(s.escalated[0].source, prefix);
    assert!(c.dp.prefix_bans.contains_key(&prefix));
    let listed = c.bans().unwrap();
    assert!(
        listed
            .iter()
            .any(|b| b.source == prefix && b.reason == PREFIX_REASON),
        "{listed:?}"
    );
    let saved = match Store::load(&d.0).unwrap() {
        state::Opened::Found(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(saved.prefix_bans.len(), 1);
    // Lifting one address of it lifts the prefix ban (and that address's own ban).
    let lifted = c.unban("198.18.7.3".parse().unwrap()).unwrap();
    assert!(lifted.iter().any(|b| b.source == prefix), "{lifted:?}");
    assert!(c.dp.prefix_bans.is_empty());
    assert_eq!(c.status().prefix_bans, 0);
}

#[test]
fn escalation_never_bans_a_prefix_over_an_allow_listed_address() {
    let (mut c, _, _d) = setup(vec![]);
    c.list_add(List::Allow, "198.18.7.200/32".parse().unwrap(), None, None)
        .unwrap();
    for i in 1..=8 {
        ban(&mut c, [198, 18, 7, i]);
    }
    let s = c.sweep().unwrap();
    assert!(s.escalated.is_empty());
    assert!(c.dp.prefix_bans.is_empty());
}

#[test]
fn a_prefix_ban_expires_and_a_reboot_restores_one_that_has_not() {
    let (mut c, clock, d) = setup(vec![]);
    for i in 1..=8 {
        ban(&mut c, [198, 18, 9, i]);
    }
    c.sweep().unwrap();
    assert_eq!(c.dp.prefix_bans.len(), 1);
    let saved = match Store::load(&d.0).unwrap() {
        state::Opened::Found(s) => s,
        other => panic!("{other:?}"),
    };
    // After a reboot: empty maps, the state file has it.
    let mut settings = Settings::builtin();
    settings.state.dir = d.0.clone();
    let mut again = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
        .with_wall_clock(clock.wall());
    again.restore(Some(saved)).unwrap();
    assert_eq!(again.dp.prefix_bans.len(), 1);
    // Past the ban's ten minutes, the sweep lifts it.
    clock.advance(Duration::from_secs(601));
    again.dp.bans.clear();
    let s = again.sweep().unwrap();
    assert_eq!(s.expired_bans, 1);
    assert!(again.dp.prefix_bans.is_empty());
}

#[test]
fn known_sources_silent_for_their_ttl_are_forgotten() {
    let (mut c, clock, _d) = setup(vec![]);
    let now = c.dp.now_ns();
    let k = |a| source_key_v4(a, 32);
    c.dp.known.insert(
        k([198, 18, 1, 1]),
        Known {
            since_ns: now,
            last_ns: now,
            how: guard_common::known_by::TIME,
            _pad: 0,
        },
    );
    c.make_known(&k([198, 18, 1, 2])).unwrap();
    c.known_swept = None;
    c.sweep().unwrap();
    assert_eq!(c.known_count(), 2);
    clock.advance(Duration::from_secs(86_401));
    c.dp.known.get_mut(&k([198, 18, 1, 2])).unwrap().last_ns = c.dp.now_ns();
    c.known_swept = None;
    let s = c.sweep().unwrap();
    assert_eq!(s.expired_known, 1);
    assert_eq!(c.known_count(), 1);
    assert!(c.dp.known.contains_key(&k([198, 18, 1, 2])));
}
