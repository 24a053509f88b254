//! Tests of attack detection: learning, ceilings, entering and leaving, escalation.
use super::*;
use crate::config::Settings;

fn settings() -> AttackSettings {
    Settings::builtin().attack
}

fn dns(max_pps: Option<u64>) -> Monitor {
    Monitor::new(ServiceSettings {
        name: "dns".into(),
        protocol: ServiceProto::Udp,
        port: 53,
        max_pps,
        max_syn_pps: None,
        syn_cookies: crate::config::SynCookies::Off,
    })
}

/// Feeds `secs` one-second samples at `pps`, starting after `t` seconds; returns the
/// transitions and the next second.
fn run(m: &mut Monitor, a: &AttackSettings, t: u64, secs: u64, pps: u64) -> (Vec<Transition>, u64) {
    let mut out = Vec::new();
    let mut packets = m.last.map_or(0, |(_, s)| s.packets);
    for i in 0..secs {
        packets += pps;
        let stats = ServiceStats {
            packets,
            ..ServiceStats::default()
        };
        if let Some(tr) = m.sample(stats, (t + i) * NS_PER_SEC, 1_000 + t + i, a) {
            out.push(tr);
        }
    }
    (out, t + secs)
}

#[test]
fn learned_rate_is_the_mean_of_the_first_samples_not_a_fraction() {
    let mut l = Learned::default();
    assert_eq!(l.rate(), None);
    for _ in 0..5 {
        l.add(10_000.0);
    }
    let r = l.rate().unwrap();
    assert!((r - 10_000.0).abs() < 1.0, "{r}");
}

#[test]
fn a_flood_over_the_learned_ceiling_enters_after_enter_secs_and_leaves_after_leave_secs() {
    let a = settings();
    let mut m = dns(None);
    let (t, next) = run(&mut m, &a, 0, 30, 5_000);
    assert!(t.is_empty());
    let (ceiling, learned) = m.ceiling(&a);
    assert!(learned);
    assert!((ceiling - 15_000.0).abs() < 100.0, "{ceiling}");
    // One second over the ceiling is not an attack; enter_secs (2) are.
    let (t, next) = run(&mut m, &a, next, 1, 600_000);
    assert!(t.is_empty() && !m.under_attack());
    let (t, next) = run(&mut m, &a, next, 1, 600_000);
    assert!(matches!(&t[..], [Transition::Entered { name, .. }] if name == "dns"));
    assert!(m.under_attack());
    // The attack does not teach the monitor: the ceiling stays.
    let (_, next) = run(&mut m, &a, next, 20, 600_000);
    assert!((m.ceiling(&a).0 - ceiling).abs() < 1.0);
    // Below the ceiling for leave_secs - 1: still under attack; then over.
    let (t, next) = run(&mut m, &a, next, u64::from(a.leave_secs) - 1, 5_000);
    assert!(t.is_empty() && m.under_attack());
    let (t, _) = run(&mut m, &a, next, 1, 5_000);
    assert!(matches!(&t[..], [Transition::Left { .. }]), "{t:?}");
    assert!(!m.under_attack());
}

#[test]
fn a_new_service_learns_its_first_seconds_instead_of_calling_them_an_attack() {
    let a = settings();
    let mut m = dns(None);
    // 50,000 packets/s from the start: far over the floor, but the first LEARN_WARMUP
    // seconds are learned, not judged.
    let (t, next) = run(&mut m, &a, 0, 60, 50_000);
    assert!(t.is_empty() && !m.under_attack(), "{t:?}");
    assert!((m.ceiling(&a).0 - 150_000.0).abs() < 500.0);
    let (t, _) = run(&mut m, &a, next, 3, 1_000_000);
    assert!(matches!(&t[..], [Transition::Entered { .. }]), "{t:?}");
}

#[test]
fn a_configured_ceiling_wins_and_a_learned_one_has_a_floor() {
    let a = settings();
    let m = dns(Some(50_000));
    assert_eq!(m.ceiling(&a), (50_000.0, false));
    let quiet = dns(None);
    assert_eq!(quiet.ceiling(&a), (a.floor_pps as f64, true));
}

#[test]
fn the_newcomer_budget_is_a_share_of_the_ceiling_split_over_cpus() {
    let a = settings();
    let mut m = dns(Some(40_000));
    let (_, next) = run(&mut m, &a, 0, 1, 0);
    run(&mut m, &a, next, 3, 100_000);
    assert!(m.under_attack());
    assert_eq!(m.newcomer_budget(&a), 4_000.0);
    let s = m.kernel_service(&a, 7 * NS_PER_SEC, 4, true);
    assert_eq!(s.flags & SERVICE_UNDER_ATTACK, SERVICE_UNDER_ATTACK);
    assert_eq!(s.attack_until_ns, 7 * NS_PER_SEC + ATTACK_LEASE_NS);
    // 1,000 packets/s per CPU: one every millisecond, a burst of 100.
    assert_eq!(s.newcomer_interval_ns, 1_000_000);
    assert_eq!(s.newcomer_tolerance_ns, 99 * 1_000_000);
}

#[test]
fn the_other_slot_is_counted_but_never_under_attack() {
    let a = settings();
    let mut m = Monitor::other();
    let (t, _) = run(&mut m, &a, 0, 10, 1_000_000);
    assert!(t.is_empty() && !m.under_attack());
    assert_eq!(m.report(&a, true).protocol, None);
    assert!(!m.report(&a, true).cookies_active);
}

#[test]
fn escalation_needs_enough_bans_within_the_window() {
    let p: Cidr = "198.18.7.0/24".parse().unwrap();
    let mut e = Escalator::default();
    assert!(!e.ban(p, 100, 3, 60));
    assert!(!e.ban(p, 115, 3, 60));
    // The first ban fell out of the window.
    assert!(!e.ban(p, 170, 3, 60));
    assert!(e.ban(p, 171, 3, 60));
    // Counting starts again after an escalation; 0 never escalates.
    assert!(!e.ban(p, 172, 3, 60));
    assert!(!Escalator::default().ban(p, 1, 0, 60));
}

fn web(syn_cookies: crate::config::SynCookies) -> Monitor {
    Monitor::new(ServiceSettings {
        name: "web".into(),
        protocol: ServiceProto::Tcp,
        port: 80,
        max_pps: Some(40_000),
        max_syn_pps: None,
        syn_cookies,
    })
}

#[test]
fn cookies_follow_the_mode_the_attack_and_what_the_data_plane_can_do() {
    use crate::config::SynCookies::{Auto, Off, On};
    let a = settings();
    let flags = |m: &Monitor, cookies: bool| m.kernel_service(&a, 0, 2, cookies).flags;
    let (mut auto, on, off) = (web(Auto), web(On), web(Off));
    // Not under attack: only "on" sends cookies, and only where the data plane can.
    assert_eq!(flags(&auto, true) & SERVICE_COOKIES, 0);
    assert_eq!(flags(&on, true) & SERVICE_COOKIES, SERVICE_COOKIES);
    assert_eq!(flags(&on, false) & SERVICE_COOKIES, 0);
    assert_eq!(flags(&off, true) & SERVICE_COOKIES, 0);
    // Under attack: "auto" too, never "off".
    let (_, next) = run(&mut auto, &a, 0, 1, 0);
    run(&mut auto, &a, next, 3, 100_000);
    assert!(auto.under_attack());
    assert_eq!(flags(&auto, true) & SERVICE_COOKIES, SERVICE_COOKIES);
    assert_eq!(flags(&auto, false) & SERVICE_COOKIES, 0);
    let r = auto.report(&a, true);
    assert_eq!((r.syn_cookies.as_str(), r.cookies_active), ("auto", true));
    // A UDP service never does, whatever the data plane can.
    let mut udp = dns(Some(40_000));
    let (_, next) = run(&mut udp, &a, 0, 1, 0);
    run(&mut udp, &a, next, 3, 100_000);
    assert!(udp.under_attack());
    assert_eq!(flags(&udp, true) & SERVICE_COOKIES, 0);
    assert_eq!(udp.report(&a, true).syn_cookies, "off");
}
