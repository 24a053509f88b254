//! A server namespace with two links, one to an attacker and one to a legitimate client, and
//! UDP across both: the bed of the data-plane and chain tests.
use std::time::Duration;

use guard::{
    cidr::Cidr,
    datapath::{Datapath, List},
};
use guard_common::ListEntry;

use super::netns::{Testbed, big_rcvbuf, blast, drain_counts, udp_in, warm_up};

pub const SRV_ATK: &str = "198.18.1.1";
pub const ATK: &str = "198.18.1.2";
pub const SRV_LEG: &str = "198.18.2.1";
pub const LEG: &str = "198.18.2.2";

pub struct Bed {
    pub tb: Testbed,
    pub srv: String,
    pub atk: String,
    pub leg: String,
    /// The server's side of the attacker's link, then of the client's.
    pub ifaces: Vec<String>,
}

/// The bed, its namespaces and interfaces named with `prefix`.
pub fn bed(prefix: &'static str) -> Bed {
    let mut tb = Testbed::with_prefix(prefix);
    let srv = tb.netns("s");
    let atk = tb.netns("a");
    let leg = tb.netns("l");
    let (s1, _) = tb.link(&srv, &format!("{SRV_ATK}/24"), &atk, &format!("{ATK}/24"));
    let (s2, _) = tb.link(&srv, &format!("{SRV_LEG}/24"), &leg, &format!("{LEG}/24"));
    warm_up(&atk, SRV_ATK);
    warm_up(&leg, SRV_LEG);
    Bed {
        tb,
        srv,
        atk,
        leg,
        ifaces: vec![s1, s2],
    }
}

/// Sends `n` datagrams from each client; returns how many arrived from (attacker, legit).
pub fn exchange(b: &Bed, n: u32) -> (u32, u32) {
    exchange2(b, n, n)
}

/// Sends `na` datagrams from the attacker, then `nl` from the legitimate client.
pub fn exchange2(b: &Bed, na: u32, nl: u32) -> (u32, u32) {
    let sink1 = udp_in(&b.srv, &format!("{SRV_ATK}:9000"));
    let sink2 = udp_in(&b.srv, &format!("{SRV_LEG}:9000"));
    big_rcvbuf(&sink1);
    big_rcvbuf(&sink2);
    let a = udp_in(&b.atk, &format!("{ATK}:0"));
    let l = udp_in(&b.leg, &format!("{LEG}:0"));
    let sent_a = blast(&a, &format!("{SRV_ATK}:9000"), na, Duration::from_secs(5));
    let sent_l = blast(&l, &format!("{SRV_LEG}:9000"), nl, Duration::from_secs(5));
    assert_eq!((sent_a, sent_l), (na, nl), "the senders could not send");
    let got_a = drain_counts(&sink1, Duration::from_millis(300));
    let got_l = drain_counts(&sink2, Duration::from_millis(300));
    (
        got_a.get(&ATK.parse().unwrap()).copied().unwrap_or(0),
        got_l.get(&LEG.parse().unwrap()).copied().unwrap_or(0),
    )
}

pub fn deny(d: &mut impl Datapath, cidr: &str) {
    d.list_insert(
        List::Deny,
        &cidr.parse::<Cidr>().unwrap(),
        ListEntry::default(),
    )
    .unwrap();
}
