//! Live tests of the faults that lose protection without a word (issue 12): a second daemon on
//! the running one's pins, pins on a bpffs that dies with the daemon, and an interface deleted
//! and made anew under the daemon. A server namespace, a peer, real UDP, the real daemon.
mod support;

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    WAIT,
    netns::{Testbed, blast, drain_counts, live_or_skip, sh, udp_in, warm_up},
    wait_for,
};

struct Bed {
    tb: Testbed,
    srv: String,
    peer: String,
    iface: String,
    peer_iface: String,
    srv_addr: String,
    peer_addr: String,
    sink: UdpSocket,
    sender: UdpSocket,
}

/// The server 198.18.<net>.1 with the guard's link to a peer at .2.
fn bed(net: u8) -> Bed {
    let mut tb = Testbed::with_prefix("f12b");
    let srv = tb.netns("s");
    let peer = tb.netns("p");
    let srv_addr = format!("198.18.{net}.1");
    let peer_addr = format!("198.18.{net}.2");
    let (iface, peer_iface) = tb.link(
        &srv,
        &format!("{srv_addr}/24"),
        &peer,
        &format!("{peer_addr}/24"),
    );
    warm_up(&peer, &srv_addr);
    let sink = udp_in(&srv, &format!("{srv_addr}:9000"));
    let sender = udp_in(&peer, &format!("{peer_addr}:0"));
    Bed {
        tb,
        srv,
        peer,
        iface,
        peer_iface,
        srv_addr,
        peer_addr,
        sink,
        sender,
    }
}

impl Bed {
    fn start(&mut self, wrapper: &[&str], extra: &[&str]) -> usize {
        let mut args = vec!["--iface", self.iface.as_str()];
        args.extend_from_slice(extra);
        let srv = self.srv.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.tb.start_guard_in(&srv, wrapper, &refs)
    }

    /// Datagrams from the peer that arrived, of `n` sent.
    fn arrivals(&self, n: u32) -> u32 {
        let to = format!("{}:9000", self.srv_addr);
        blast(&self.sender, &to, n, Duration::from_secs(5));
        let got = drain_counts(&self.sink, Duration::from_millis(300));
        got.get(&self.peer_addr.parse().unwrap())
            .copied()
            .unwrap_or(0)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.tb.guard_ok(&a)).expect("--json output is JSON")
    }

    fn deny_peer(&self) {
        self.tb
            .guard_ok(&["deny", "add", &format!("{}/32", self.peer_addr)]);
    }
}

#[test]
fn a_second_daemon_on_the_same_pins_is_refused_naming_the_first_and_the_first_keeps_its_entries() {
    if !live_or_skip("second daemon") {
        return;
    }
    let mut b = bed(41);
    let first = b.start(&[], &[]);
    b.deny_peer();
    assert_eq!(b.arrivals(100), 0, "denied");

    // Another socket, the same pins: today it would start, adopt them and rewrite the lists.
    let other = b.tb.tmp.join("other.sock");
    let srv = b.srv.clone();
    let iface = b.iface.clone();
    let (status, log) = b.tb.run_guard_to_exit_in(
        &srv,
        &[],
        &other,
        &["--iface", &iface],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "the second daemon started: {log}");
    let pid = b.tb.pid(first);
    assert!(
        log.contains(&format!(
            "another guard daemon (pid {pid}) holds the pin directory"
        )),
        "the refusal names the first daemon's pid {pid}: {log}"
    );
    assert!(!other.exists(), "the second daemon bound its socket");

    // The first still holds its deny entry, in its list and in the program.
    let list = b.json(&["deny", "list"]);
    assert_eq!(
        list[0]["cidr"],
        format!("{}/32", b.peer_addr).as_str(),
        "{list}"
    );
    assert_eq!(b.arrivals(100), 0, "still denied");
}

/// Runs the daemon in a mount namespace of its own whose /sys/fs/bpf is unmounted, as under
/// `ip netns exec`: the daemon mounts a bpffs only it can see.
const PRIVATE_BPFFS: &[&str] = &[
    "unshare",
    "-m",
    "--propagation",
    "private",
    "sh",
    "-c",
    "while mountpoint -q /sys/fs/bpf; do umount -l /sys/fs/bpf || exit 97; done; exec \"$@\"",
    "sh",
];

#[test]
fn pins_on_a_bpffs_private_to_the_daemon_are_refused_unless_allowed_and_then_shown_in_status() {
    if !live_or_skip("private bpffs") {
        return;
    }
    let mut b = bed(42);
    let srv = b.srv.clone();
    let iface = b.iface.clone();
    let socket = b.tb.socket();
    let (status, log) = b.tb.run_guard_to_exit_in(
        &srv,
        PRIVATE_BPFFS,
        &socket,
        &["--iface", &iface],
        Duration::from_secs(20),
    );
    assert!(!status.success(), "started on a private bpffs: {log}");
    assert!(
        log.contains("private to this mount namespace") && log.contains("--allow-private-bpffs"),
        "the refusal says why and how to run anyway: {log}"
    );
    assert!(!b.tb.pin_dir.exists(), "pins on the host's bpffs");

    // Allowed: it runs, and says so in its status.
    let i = b.start(PRIVATE_BPFFS, &["--allow-private-bpffs"]);
    let s = b.json(&["status"]);
    let warnings = s["warnings"].as_array().cloned().unwrap_or_default();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("private"))),
        "no private-bpffs warning in the status: {s}"
    );
    let text = b.tb.guard_ok(&["status"]);
    assert!(text.contains("WARNING"), "{text}");
    b.deny_peer();
    assert_eq!(b.arrivals(100), 0, "denied while the daemon runs");
    // And it is as said: the daemon gone, its pins and the program are gone too.
    b.tb.kill9(i);
    let back = wait_for(WAIT, || (b.arrivals(20) == 20).then_some(()));
    assert!(
        back.is_some(),
        "the program outlived its private bpffs?\n{}",
        b.tb.logs()
    );
}

#[test]
fn an_interface_deleted_and_made_anew_is_attached_again_and_drops_a_denied_source() {
    if !live_or_skip("re-created interface") {
        return;
    }
    let mut b = bed(43);
    b.start(&[], &[]);
    b.deny_peer();
    assert_eq!(b.arrivals(100), 0, "denied");
    let before = b.json(&["status"])["attachments"][0].clone();

    let tc_before = guard_tc_links();
    // The veth pair deleted and made anew under the same names (a new ifindex).
    sh(&["ip", "-n", &b.srv, "link", "del", &b.iface]);
    support::netns::veth(
        (&b.srv, &b.iface, &format!("{}/24", b.srv_addr)),
        (&b.peer, &b.peer_iface, &format!("{}/24", b.peer_addr)),
    );
    let t = Instant::now();
    let after = wait_for(WAIT, || {
        let a = b.json(&["status"])["attachments"][0].clone();
        (a["reattached"] == 1).then_some(a)
    })
    .unwrap_or_else(|| panic!("never re-attached: {}", b.tb.logs()));
    assert_ne!(after["ifindex"], before["ifindex"], "{after}");
    assert!(
        b.tb.logs().contains("re-attached the XDP program"),
        "{}",
        b.tb.logs()
    );
    eprintln!("re-attached after {:?}", t.elapsed());
    // The SYN cookies' TC stage followed it onto the new interface: a tcx link of guard_tc
    // that was not there before (this kernel has the cookie helpers, so the daemon made one).
    let tc_after = guard_tc_links();
    assert!(
        tc_after.difference(&tc_before).next().is_some(),
        "no new guard_tc link after the re-attach: before {tc_before:?}, after {tc_after:?}"
    );
    // No ping to resolve the neighbours: the guard drops it. The first datagrams do (ARP
    // passes), and the count is of the ones after.
    b.arrivals(20);
    assert_eq!(b.arrivals(100), 0, "denied again on the new interface");
    let text = b.tb.guard_ok(&["status"]);
    assert!(text.contains("once"), "{text}");
    // The new link carries traffic: the 0 above was the guard's doing.
    b.tb.guard_ok(&["deny", "del", &format!("{}/32", b.peer_addr)]);
    warm_up(&b.peer, &b.srv_addr);
    assert_eq!(b.arrivals(100), 100, "after deny del");
}

#[test]
fn a_check_that_stops_answering_turns_failed_after_a_few_intervals_not_after_its_timeout() {
    if !live_or_skip("stale check") {
        return;
    }
    let mut b = bed(44);
    // The service: answers HTTP 200 until told to hold each connection without a word.
    let listener = support::netns::in_netns(&b.srv, {
        let addr = format!("{}:8080", b.srv_addr);
        move || std::net::TcpListener::bind(addr).expect("bind the service")
    });
    let answering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&answering);
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            } else {
                held.push(s);
            }
        }
    });
    // A 20 s timeout: the old result would stand that long.
    let config = b.tb.tmp.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "[health]\nwarn_at = 99\ndrain_at = 100\npsi_warn_at = 99\npsi_drain_at = 100\n\
             rise = 1\nfall = 3\n\
             [[health.checks]]\ntype = \"http\"\ntarget = \"http://{}:8080/\"\ntimeout_ms = 20000\n",
            b.srv_addr
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    b.start(
        &[],
        &[
            "--config",
            &config,
            "--health-listen",
            "",
            "--agent-listen",
            "",
        ],
    );
    // The check's own verdict (the host's follows the machine's load as well, which other
    // work on a shared machine can hold at warn).
    let http = |h: &serde_json::Value| {
        h["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|o| o["component"] == "http").cloned())
            .unwrap_or(serde_json::Value::Null)
    };
    wait_for(WAIT, || {
        (http(&b.json(&["health"]))["status"] == "pass").then_some(())
    })
    .unwrap_or_else(|| panic!("the check never passed: {}", b.tb.logs()));
    answering.store(false, std::sync::atomic::Ordering::SeqCst);
    let t = Instant::now();
    let h = wait_for(Duration::from_secs(12), || {
        let h = b.json(&["health"]);
        (http(&h)["status"] != "pass").then_some(h)
    })
    .unwrap_or_else(|| panic!("the check still passes 12 s after it stopped answering"));
    assert!(h.to_string().contains("no result for"), "{h}");
    eprintln!("failed after {:?}: {}", t.elapsed(), h["reason"]);
}

/// The ids of the tcx links (bpftool 7.1 calls the type 11) whose program is guard_tc.
fn guard_tc_links() -> std::collections::HashSet<u64> {
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_slice(&support::netns::sh(args).stdout).unwrap_or_default()
    };
    let links = json(&["bpftool", "-j", "link", "show"]);
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["type"] == "tcx" || l["type"] == 11)
        .filter(|l| {
            l["prog_id"].as_u64().is_some_and(|id| {
                json(&["bpftool", "-j", "prog", "show", "id", &id.to_string()])["name"]
                    == "guard_tc"
            })
        })
        .filter_map(|l| l["id"].as_u64())
        .collect()
}
