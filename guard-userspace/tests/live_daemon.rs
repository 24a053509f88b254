//! Live daemon tests: `guard run` in a server namespace with two veth links (an attacker and a
//! legitimate client), the CLI over the control socket, real UDP packets counted on arrival.
mod support;

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    WAIT,
    netns::{Testbed, big_rcvbuf, blast, drain_counts, live_or_skip, udp_in, warm_up},
    wait_for,
};

const SRV_ATK: &str = "198.18.11.1";
const ATK: &str = "198.18.11.2";
const SRV_LEG: &str = "198.18.12.1";
const LEG: &str = "198.18.12.2";

struct Bed {
    tb: Testbed,
    srv: String,
    ifaces: [String; 2],
    sink_a: UdpSocket,
    sink_l: UdpSocket,
    atk: UdpSocket,
    leg: UdpSocket,
}

fn bed() -> Bed {
    let mut tb = Testbed::new();
    let srv = tb.netns("s");
    let a = tb.netns("a");
    let l = tb.netns("l");
    let (s1, _) = tb.link(&srv, &format!("{SRV_ATK}/24"), &a, &format!("{ATK}/24"));
    let (s2, _) = tb.link(&srv, &format!("{SRV_LEG}/24"), &l, &format!("{LEG}/24"));
    warm_up(&a, SRV_ATK);
    warm_up(&l, SRV_LEG);
    let sink_a = udp_in(&srv, &format!("{SRV_ATK}:9000"));
    let sink_l = udp_in(&srv, &format!("{SRV_LEG}:9000"));
    big_rcvbuf(&sink_a);
    big_rcvbuf(&sink_l);
    Bed {
        atk: udp_in(&a, &format!("{ATK}:0")),
        leg: udp_in(&l, &format!("{LEG}:0")),
        tb,
        srv,
        ifaces: [s1, s2],
        sink_a,
        sink_l,
    }
}

impl Bed {
    fn start(&mut self, extra: &[&str]) -> usize {
        let mut args = vec!["--iface", &self.ifaces[0], "--iface", &self.ifaces[1]];
        args.extend_from_slice(extra);
        let srv = self.srv.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tb.start_guard(&srv, &refs)
    }

    /// Sends `na` datagrams from the attacker then `nl` from the client; returns arrivals.
    fn exchange(&self, na: u32, nl: u32) -> (u32, u32) {
        blast(
            &self.atk,
            &format!("{SRV_ATK}:9000"),
            na,
            Duration::from_secs(5),
        );
        blast(
            &self.leg,
            &format!("{SRV_LEG}:9000"),
            nl,
            Duration::from_secs(5),
        );
        let q = Duration::from_millis(300);
        let a = drain_counts(&self.sink_a, q);
        let l = drain_counts(&self.sink_l, q);
        (
            a.get(&ATK.parse().unwrap()).copied().unwrap_or(0),
            l.get(&LEG.parse().unwrap()).copied().unwrap_or(0),
        )
    }

    /// Waits until the attacker's datagrams arrive again (its ban or deny entry ran out on the
    /// program's clock), sending one at a time; then drains what arrived.
    fn wait_until_the_attacker_gets_through(&self, what: &str) {
        let to = format!("{SRV_ATK}:9000");
        let from: std::net::IpAddr = ATK.parse().unwrap();
        self.sink_a
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        wait_for(WAIT, || {
            self.atk.send_to(b"probe", &to).ok()?;
            let (_, src) = self.sink_a.recv_from(&mut buf).ok()?;
            (src.ip() == from).then_some(())
        })
        .unwrap_or_else(|| panic!("{what}: the attacker never got through\n{}", self.tb.logs()));
        // A probe still in flight would count in the next exchange.
        drain_counts(&self.sink_a, Duration::from_millis(100));
    }

    /// Sends SIGHUP to daemon `i` and waits until its log shows the reload it started, followed
    /// by every `want`.
    fn sighup(&self, i: usize, want: &[&str]) {
        const MARK: &str = "SIGHUP: reloading the configuration";
        let before = self.tb.logs().len();
        // SAFETY: kill with the pid of our child.
        unsafe { libc::kill(self.tb.pid(i) as i32, libc::SIGHUP) };
        wait_for(WAIT, || {
            let logs = self.tb.logs();
            let (_, after) = logs.get(before..)?.split_once(MARK)?;
            want.iter().all(|w| after.contains(w)).then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "no {MARK:?} followed by {want:?} in the log:\n{}",
                self.tb.logs()
            )
        })
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.tb.guard_ok(&a)).expect("--json output is JSON")
    }
}

#[test]
fn over_limit_source_is_banned_and_stops_arriving_while_another_gets_through_until_it_expires() {
    if !live_or_skip("daemon ban") {
        return;
    }
    let mut b = bed();
    // Bans long enough to outlast the checks below on a busy machine; the expiry is waited for.
    b.start(&["--pps", "100", "--burst", "300", "--ban-seconds", "5"]);
    let status = b.json(&["status"]);
    assert_eq!(
        status["attachments"].as_array().unwrap().len(),
        2,
        "{status}"
    );

    let (a, l) = b.exchange(5000, 40);
    assert!(a <= 400, "the flood was cut: {a} of 5000 arrived");
    assert_eq!(l, 40, "the legitimate client got through");
    let bans = b.json(&["bans"]);
    let bans = bans.as_array().unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["source"], "198.18.11.2/32");
    assert_eq!(bans[0]["reason"], "rate_limited");
    assert_eq!(b.exchange(100, 0).0, 0, "banned");

    // The daemon logged the ban it read from the ring buffer.
    wait_for(WAIT, || b.tb.logs().contains("198.18.11.2").then_some(()))
        .unwrap_or_else(|| panic!("no ban log line: {}", b.tb.logs()));

    b.wait_until_the_attacker_gets_through("the 5 s ban");
    assert_eq!(b.exchange(50, 0).0, 50, "the ban expired");
    wait_for(WAIT, || {
        b.json(&["bans"])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .expect("the expired ban stayed listed");
}

#[test]
fn deny_add_stops_a_cidr_within_a_second_and_deny_del_restores_it() {
    if !live_or_skip("daemon deny") {
        return;
    }
    let mut b = bed();
    b.start(&[]);
    assert_eq!(b.exchange(100, 100), (100, 100));
    let t = Instant::now();
    b.tb.guard_ok(&["deny", "add", "198.18.11.0/24", "--reason", "test"]);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "deny add took {:?}",
        t.elapsed()
    );
    assert_eq!(b.exchange(200, 200), (0, 200));
    let list = b.json(&["deny", "list"]);
    assert_eq!(list[0]["cidr"], "198.18.11.0/24");
    b.tb.guard_ok(&["deny", "del", "198.18.11.0/24"]);
    assert_eq!(b.exchange(200, 200), (200, 200));
}

#[test]
fn bad_cli_input_is_refused_and_changes_nothing() {
    if !live_or_skip("daemon bad input") {
        return;
    }
    let mut b = bed();
    b.start(&[]);
    b.tb.guard_ok(&["deny", "add", "198.18.11.0/24"]);
    for args in [
        vec!["deny", "add", "300.1.2.3"],
        vec!["deny", "add", "10.0.0.0/33"],
        vec!["deny", "add", "::/129"],
        vec!["deny", "add", ""],
        vec!["deny", "add", "198.18.12.0/24", "--ttl", "-5s"],
        vec!["deny", "add", "198.18.12.0/24", "--ttl", "banana"],
        vec!["deny", "import", "/nonexistent/netset"],
    ] {
        let out = b.tb.guard(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{args:?}: one-line reason, got {err}"
        );
    }
    // A netset with one bad line among good ones imports nothing and names the line.
    let netset = b.tb.tmp.join("bad.netset");
    std::fs::write(
        &netset,
        "# feed\n198.18.13.0/24\n198.18.14.0/24\n198.18.15.0/99\n",
    )
    .unwrap();
    let out = b.tb.guard(&["deny", "import", netset.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 4"),
        "{out:?}"
    );
    let list = b.json(&["deny", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing changed: {list}");
    // A good netset imports whole.
    std::fs::write(
        &netset,
        "# feed\n198.18.13.0/24\n\n198.18.14.7\nfd00:14::/48\n",
    )
    .unwrap();
    b.tb.guard_ok(&["deny", "import", netset.to_str().unwrap()]);
    assert_eq!(b.json(&["deny", "list"]).as_array().unwrap().len(), 4);
    assert_eq!(b.exchange(50, 50), (0, 50), "the first entry still works");
}

#[test]
fn kill_9_under_flood_keeps_dropping_and_a_restart_adopts_the_pins_and_lists() {
    if !live_or_skip("daemon kill -9") {
        return;
    }
    let mut b = bed();
    let first = b.start(&[]);
    b.tb.guard_ok(&[
        "deny",
        "add",
        "198.18.11.2",
        "--ttl",
        "1h",
        "--reason",
        "flood",
    ]);
    b.tb.guard_ok(&["allow", "add", "198.18.12.0/24"]);
    assert_eq!(b.exchange(500, 50), (0, 50));
    b.tb.kill9(first);
    // The daemon is gone; the pinned program is not.
    assert_eq!(b.exchange(2000, 50), (0, 50), "protection survives kill -9");

    b.start(&[]);
    let status = b.json(&["status"]);
    for a in status["attachments"].as_array().unwrap() {
        assert_eq!(a["adopted"], true, "{status}");
    }
    let deny = b.json(&["deny", "list"]);
    assert_eq!(deny[0]["cidr"], "198.18.11.2/32");
    assert_eq!(deny[0]["reason"], "flood");
    let allow = b.json(&["allow", "list"]);
    assert_eq!(allow[0]["cidr"], "198.18.12.0/24");
    assert_eq!(b.exchange(500, 50), (0, 50));
}

#[test]
fn a_restart_restores_a_ttl_entry_with_its_remaining_ttl() {
    if !live_or_skip("daemon ttl restart") {
        return;
    }
    let mut b = bed();
    let first = b.start(&[]);
    // Long enough to outlast a restart on a busy machine (a restore rounds the expiry to the
    // second); the lapse below is waited for, not slept through.
    b.tb.guard_ok(&["deny", "add", "198.18.11.0/24", "--ttl", "8s"]);
    let before = b.json(&["deny", "list"]);
    let expires = before[0]["expires"]
        .as_u64()
        .expect("a TTL entry has an expiry");
    b.tb.stop(first);
    b.start(&[]);
    let after = b.json(&["deny", "list"]);
    assert_eq!(
        after[0]["expires"].as_u64(),
        Some(expires),
        "same expiry after restart"
    );
    assert_eq!(
        b.exchange(50, 50),
        (0, 50),
        "still denied after the restart"
    );
    // And it lapses, from the map and the list.
    b.wait_until_the_attacker_gets_through("the 8 s deny entry");
    assert_eq!(b.exchange(50, 50), (50, 50));
    wait_for(WAIT, || {
        b.json(&["deny", "list"])
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .expect("the expired entry stayed listed");
}

#[test]
fn a_bad_config_on_reload_is_rejected_and_the_old_limits_keep_working() {
    if !live_or_skip("daemon reload") {
        return;
    }
    let mut b = bed();
    let config = b.tb.tmp.join("guard.toml");
    std::fs::write(
        &config,
        "[limits]\npps = 100\nburst = 200\nban_seconds = 0\n",
    )
    .unwrap();
    let i = b.start(&["--config", config.to_str().unwrap()]);
    assert!(b.exchange(3000, 0).0 <= 400, "limited from the start");

    std::fs::write(
        &config,
        "[limits]\npps = 100\nburst = 200\nban_seconds = 0\nsyn_pps = -4\n",
    )
    .unwrap();
    let out = b.tb.guard(&["reload"]);
    assert!(!out.status.success(), "a bad config must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 5") && err.contains("syn_pps"),
        "names line and field: {err}"
    );
    // SIGHUP takes the same path: the daemon tries the reload, refuses it and says why.
    b.sighup(
        i,
        &[
            "reload rejected, the running configuration stays",
            "syn_pps",
        ],
    );
    let status = b.json(&["status"]);
    assert_eq!(status["limits"]["pps"], 100, "{status}");
    let (a, _) = b.exchange(3000, 0);
    assert!(a <= 500, "old limits still drop the flood: {a} arrived");

    // A good config on SIGHUP applies: the limits are lifted.
    std::fs::write(&config, "[limits]\npps = 0\nburst = 0\nban_seconds = 0\n").unwrap();
    b.sighup(i, &["reloaded "]);
    let status = b.json(&["status"]);
    assert_eq!(status["limits"]["pps"], 0, "{status}");
    assert_eq!(b.exchange(3000, 0).0, 3000, "limits lifted at run time");

    // And so does one through `guard reload`, without re-attaching: limited again.
    std::fs::write(
        &config,
        "[limits]\npps = 100\nburst = 200\nban_seconds = 0\n",
    )
    .unwrap();
    b.tb.guard_ok(&["reload"]);
    assert_eq!(b.json(&["status"])["limits"]["pps"], 100);
    assert!(b.exchange(3000, 0).0 <= 400, "limited again");
    let status = b.json(&["status"]);
    for a in status["attachments"].as_array().unwrap() {
        assert_eq!(a["adopted"], false, "still the first attachment: {status}");
    }
}
