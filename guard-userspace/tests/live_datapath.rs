//! Live data-plane tests: the loader attaches the real program to a veth inside a namespace,
//! real UDP packets flow, and what arrives is counted. Also pinning, adoption and detach.
mod support;

use guard::{
    datapath::{Datapath, List},
    ebpf::{self, AttachMode, Loaded, Placement, StartOptions},
};
use guard_common::reason;
use support::netns::{in_netns, live_or_skip};
use support::twolinks::{ATK, Bed, SRV_ATK, bed, deny, exchange, exchange2};

fn start_in(b: &Bed, mode: AttachMode) -> Loaded {
    let opts = StartOptions {
        interfaces: b.ifaces.clone(),
        mode,
        placement: Placement::Direct,
        priority: 5,
        pin_dir: b.tb.pin_dir.clone(),
        chain: None,
        next: None,
    };
    in_netns(&b.srv, move || {
        ebpf::start(&opts).expect("start the guard data plane")
    })
}

#[test]
fn a_denied_source_stops_arriving_while_another_keeps_getting_through() {
    if !live_or_skip("live deny") {
        return;
    }
    let b = bed("g");
    let mut loaded = start_in(&b, AttachMode::Auto);
    assert_eq!(
        loaded.attachments.len(),
        2,
        "two interfaces attached at once"
    );
    // Sockets fill up ARP first; a clean exchange shows both get through.
    assert_eq!(exchange(&b, 200), (200, 200));
    deny(&mut loaded.datapath, "198.18.1.0/24");
    let (a, l) = exchange(&b, 500);
    assert_eq!(a, 0, "denied source still arrived");
    assert_eq!(l, 500, "legitimate client lost packets");
    let mut total = guard_common::Counters::default();
    for (_, c) in loaded.datapath.counters().unwrap() {
        total.add(&c);
    }
    assert!(total.packets[reason::DENIED] >= 500);
}

#[test]
fn a_flooding_source_is_banned_and_the_ban_expires() {
    if !live_or_skip("live ban") {
        return;
    }
    let b = bed("g");
    let mut loaded = start_in(&b, AttachMode::Auto);
    loaded
        .datapath
        .set_config(&guard_common::Config {
            pps: 100,
            burst: 300,
            // Long enough to outlast the checks below on a busy machine; its end is waited for.
            ban_ns: 5_000_000_000,
            ..Default::default()
        })
        .unwrap();
    let (a, l) = exchange(&b, 250);
    assert_eq!((a, l), (250, 250), "under the burst both pass");
    // The attacker goes far over its limit (about 30,000 packets/s against 100); the
    // legitimate client keeps to a trickle.
    let (a, l) = exchange2(&b, 5000, 40);
    assert!(a < 400, "flood mostly dropped, {a} of 5000 arrived");
    assert_eq!(l, 40, "the other source is untouched");
    let bans = loaded.datapath.bans().unwrap();
    assert_eq!(bans.len(), 1, "one ban: {bans:?}");
    assert_eq!(bans[0].0.as_v4(), Some([198, 18, 1, 2]));
    assert!(
        !loaded.datapath.take_events().is_empty(),
        "the ban was reported"
    );
    let (a, _) = exchange2(&b, 50, 0);
    assert_eq!(a, 0, "banned");
    // The bucket has refilled by then: 100 pps for the 5 s since the drop that banned it.
    support::wait_for_program_clock(bans[0].1.expires_ns);
    let (a, _) = exchange2(&b, 50, 0);
    assert_eq!(a, 50, "the ban expired and the bucket refilled");
}

#[test]
fn pins_keep_protection_when_the_loader_dies_and_a_new_start_adopts_them() {
    if !live_or_skip("live pins") {
        return;
    }
    let b = bed("g");
    let mut first = start_in(&b, AttachMode::Generic);
    assert!(
        first
            .attachments
            .iter()
            .all(|a| a.mode == "generic" && !a.adopted)
    );
    deny(&mut first.datapath, "198.18.1.2");
    let denied_by = |d: &ebpf::KernelDatapath| -> u64 {
        d.counters()
            .unwrap()
            .iter()
            .map(|(_, c)| c.packets[reason::DENIED])
            .sum()
    };
    drop(first);
    // Nothing in this process holds the program now: only the pins.
    assert_eq!(
        exchange(&b, 300),
        (0, 300),
        "protection survives the loader"
    );

    let second = start_in(&b, AttachMode::Generic);
    assert!(
        second.attachments.iter().all(|a| a.adopted),
        "{:?}",
        second.attachments
    );
    assert!(second.attachments.iter().all(|a| a.mode == "generic"));
    let denied = second.datapath.list_entries(List::Deny).unwrap();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].0.to_string(), "198.18.1.2/32");
    // The counters carried over: the drops made while no loader ran are there (the link may
    // lose a datagram or two on a busy machine, so not an exact 300).
    let carried = denied_by(&second.datapath);
    assert!(carried > 250, "counters carried over: {carried}");
    assert_eq!(exchange(&b, 300), (0, 300));
    // The adopted program writes the adopted maps: its counters keep growing.
    let grown = denied_by(&second.datapath);
    assert!(
        grown > carried + 250,
        "counters grow: {carried} then {grown}"
    );

    let detached = ebpf::detach(&b.tb.pin_dir).unwrap();
    assert_eq!(detached.len(), 2);
    drop(second);
    assert_eq!(exchange(&b, 300), (300, 300), "detached: everything flows");
    assert!(!b.tb.pin_dir.exists(), "pins removed");
}

#[test]
fn attaching_to_a_missing_interface_is_a_clear_error() {
    if !live_or_skip("live missing iface") {
        return;
    }
    let b = bed("g");
    let opts = StartOptions {
        interfaces: vec!["gnone0".into()],
        mode: AttachMode::Auto,
        placement: Placement::Direct,
        priority: 5,
        pin_dir: b.tb.pin_dir.clone(),
        chain: None,
        next: None,
    };
    let err = in_netns(&b.srv, move || {
        ebpf::start(&opts).err().map(|e| e.to_string())
    });
    assert_eq!(err.as_deref(), Some("interface \"gnone0\" does not exist"));
    let _ = (&b.atk, &b.leg);
}

#[test]
fn an_interface_with_a_dot_in_its_name_is_protected_and_adopted() {
    if !live_or_skip("live dotted iface") {
        return;
    }
    let mut b = bed("g");
    // VLAN interfaces are usually named like eth0.100; bpffs refuses dots in pin names.
    let dotted = format!("{}.9", &b.ifaces[0][..b.ifaces[0].len().min(12)]);
    support::netns::sh(&[
        "ip",
        "-n",
        &b.srv,
        "link",
        "set",
        &b.ifaces[0],
        "name",
        &dotted,
    ]);
    b.ifaces[0] = dotted.clone();
    let mut first = start_in(&b, AttachMode::Auto);
    deny(&mut first.datapath, "198.18.1.2");
    drop(first);
    let second = start_in(&b, AttachMode::Auto);
    let a = second
        .attachments
        .iter()
        .find(|a| a.iface == dotted)
        .unwrap();
    assert!(a.adopted, "{:?}", second.attachments);
    assert_eq!(exchange(&b, 100), (0, 100));
}

#[test]
fn a_pinned_link_on_a_recreated_interface_is_replaced_not_adopted() {
    if !live_or_skip("live recreated iface") {
        return;
    }
    let b = bed("g");
    let mut first = start_in(&b, AttachMode::Generic);
    deny(&mut first.datapath, "198.18.1.2");
    drop(first);
    // The attacker-facing interface goes away and comes back under the same name.
    support::netns::sh(&["ip", "-n", &b.srv, "link", "del", &b.ifaces[0]]);
    let peer = format!("{}b", &b.ifaces[0][..b.ifaces[0].len() - 1]);
    support::netns::veth(
        (&b.srv, &b.ifaces[0], &format!("{SRV_ATK}/24")),
        (&b.atk, &peer, &format!("{ATK}/24")),
    );
    support::netns::warm_up(&b.atk, SRV_ATK);
    let second = start_in(&b, AttachMode::Generic);
    let a = second
        .attachments
        .iter()
        .find(|a| a.iface == b.ifaces[0])
        .unwrap();
    assert!(
        !a.adopted,
        "a severed link is not adopted: {:?}",
        second.attachments
    );
    let other = second
        .attachments
        .iter()
        .find(|a| a.iface == b.ifaces[1])
        .unwrap();
    assert!(other.adopted);
    assert_eq!(
        exchange(&b, 100),
        (0, 100),
        "the deny list still applies on the new interface"
    );
}

#[test]
fn pinned_state_of_an_incompatible_layout_is_replaced_cleanly() {
    if !live_or_skip("live incompatible pins") {
        return;
    }
    let b = bed("g");
    // A map pinned where the config map goes, with another value size (as an older layout).
    let maps = guard::ebpf::versioned_dir(&b.tb.pin_dir).join("maps");
    std::fs::create_dir_all(&maps).unwrap();
    let stale = maps.join("GUARD_CONFIG");
    support::netns::sh(&[
        "bpftool",
        "map",
        "create",
        stale.to_str().unwrap(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "8",
        "entries",
        "1",
        "name",
        "GUARD_CONFIG",
    ]);
    let mut loaded = start_in(&b, AttachMode::Auto);
    deny(&mut loaded.datapath, "198.18.1.2");
    assert_eq!(exchange(&b, 100), (0, 100));
    let info = support::netns::sh(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        stale.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&info.stdout);
    let want = format!(
        "\"bytes_value\":{}",
        std::mem::size_of::<guard_common::Config>()
    );
    assert!(text.contains(&want), "the pin holds the new layout: {text}");
}
