//! Live fleet test: a real `nats-server -js` and three guard daemons (hosts a, b and c), each in
//! its own network namespace, all on one bridge with an attacker; bans made on one host are
//! dropped on the others, lifted everywhere, caught up after a restart and after an outage of
//! the server, and the pool's drain budget holds, also against two drains at once.
mod support;

use std::{
    fs::File,
    net::{IpAddr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    WAIT,
    netns::{Testbed, big_rcvbuf, blast, drain_counts, live_or_skip, sh, udp_in},
    wait_for,
};

const NATS: &str = "198.18.150.1";
const NATS_PORT: &str = "14222";
const ATK: &str = "198.18.150.2";
const HOSTS: [&str; 3] = ["198.18.150.11", "198.18.150.12", "198.18.150.13"];
const NAMES: [&str; 3] = ["a", "b", "c"];
/// A deny entry made during the server's outage, to see it converge afterwards.
const DENIED: &str = "198.18.151.5";

/// The namespaces, the bridge's veths (deleted with them), nats-server and one testbed per
/// host (its own socket, pins and state); all removed on drop, also when the test fails.
struct Bed {
    namespaces: Vec<String>,
    /// The server's namespace (and the bridge's).
    nats_ns: String,
    nats: Option<Child>,
    nats_dir: PathBuf,
    atk_ns: String,
    host_ns: Vec<String>,
    host_if: Vec<String>,
    hosts: Vec<Testbed>,
    configs: Vec<PathBuf>,
    sinks: Vec<UdpSocket>,
    atk: UdpSocket,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The daemons and their pins first (the testbeds), then the server, then the namespaces.
        self.hosts.clear();
        self.stop_nats();
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.nats_dir);
    }
}

fn nsenter(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"));
    c
}

fn bed() -> Bed {
    let tag = format!("{}", std::process::id() % 100_000);
    let mut namespaces = Vec::new();
    let mut mk = |role: &str| {
        let name = format!("n15{tag}{role}");
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        namespaces.push(name.clone());
        name
    };
    let nats_ns = mk("n");
    let atk_ns = mk("x");
    let host_ns: Vec<String> = NAMES.iter().map(|n| mk(n)).collect();
    let br = format!("n15{tag}br");
    sh(&["ip", "-n", &nats_ns, "link", "add", &br, "type", "bridge"]);
    sh(&[
        "ip",
        "-n",
        &nats_ns,
        "addr",
        "add",
        &format!("{NATS}/24"),
        "dev",
        &br,
    ]);
    sh(&["ip", "-n", &nats_ns, "link", "set", &br, "up"]);
    let plug = |ns: &str, addr: &str, role: &str| {
        let inner = format!("n15{tag}{role}");
        let outer = format!("n15{tag}p{role}");
        assert!(outer.len() <= 15, "{outer} is too long for IFNAMSIZ");
        sh(&[
            "ip", "link", "add", &inner, "netns", ns, "type", "veth", "peer", "name", &outer,
            "netns", &nats_ns,
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inner,
        ]);
        sh(&["ip", "-n", ns, "link", "set", &inner, "up"]);
        sh(&["ip", "-n", &nats_ns, "link", "set", &outer, "master", &br]);
        sh(&["ip", "-n", &nats_ns, "link", "set", &outer, "up"]);
        inner
    };
    let _ = plug(&atk_ns, ATK, "x");
    let host_if: Vec<String> = (0..3)
        .map(|i| plug(&host_ns[i], HOSTS[i], NAMES[i]))
        .collect();
    let nats_dir = std::env::temp_dir().join(format!("n15-nats-{tag}"));
    std::fs::create_dir_all(&nats_dir).unwrap();
    let sinks: Vec<UdpSocket> = (0..3)
        .map(|i| {
            let s = udp_in(&host_ns[i], &format!("{}:9000", HOSTS[i]));
            big_rcvbuf(&s);
            s
        })
        .collect();
    let atk = udp_in(&atk_ns, &format!("{ATK}:0"));
    let mut bed = Bed {
        namespaces,
        nats_ns,
        nats: None,
        nats_dir,
        atk_ns,
        host_ns,
        host_if,
        hosts: Vec::new(),
        configs: Vec::new(),
        sinks,
        atk,
    };
    for name in NAMES {
        let tb = Testbed::new();
        let config = tb.tmp.join("guard.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[limits]
pps = 200
burst = 400
ban_seconds = 300

[health]
# Far from this busy machine's load: only the fleet may move the state.
warn_at = 99.5
drain_at = 100
psi_warn_at = 99
psi_drain_at = 100
# Better at once, worse only after 100 samples: this machine's load cannot drain a host
# during the test (the fleet's warn is not held back: it bypasses the hysteresis).
rise = 1
fall = 100

[fleet]
servers = ["nats://{NATS}:{NATS_PORT}"]
bucket = "n15"
host = "{name}"
pool = "web"
max_drained = 0.34
"#
            ),
        )
        .unwrap();
        bed.configs.push(config);
        bed.hosts.push(tb);
    }
    for i in 0..3 {
        bed.ping(i);
    }
    bed
}

impl Bed {
    fn start_nats(&mut self) {
        let log = File::create(self.nats_dir.join("nats.log")).unwrap();
        let child = nsenter(&self.nats_ns)
            .args(["nats-server", "-js", "-a", NATS, "-p", NATS_PORT, "-sd"])
            .arg(self.nats_dir.join("js"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect(
                "spawn nats-server (Debian package nats-server; `cargo xtask test` installs it)",
            );
        self.nats = Some(child);
        let ns = self.nats_ns.clone();
        wait_for(WAIT, || {
            let ok = std::fs::read_to_string(self.nats_dir.join("nats.log"))
                .unwrap_or_default()
                .contains("Server is ready");
            ok.then_some(())
        })
        .unwrap_or_else(|| panic!("nats-server in {ns} never became ready"));
    }

    fn stop_nats(&mut self) {
        if let Some(mut c) = self.nats.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(&mut self, i: usize) {
        let ns = self.host_ns[i].clone();
        let config = self.configs[i].to_str().unwrap().to_string();
        let iface = self.host_if[i].clone();
        self.hosts[i].start_guard(&ns, &["--config", &config, "--iface", &iface]);
    }

    fn ping(&self, i: usize) {
        let out = nsenter(&self.atk_ns)
            .args(["ping", "-c", "1", "-W", "2", HOSTS[i]])
            .output()
            .unwrap();
        assert!(out.status.success(), "ping {}: {out:?}", HOSTS[i]);
    }

    fn guard(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.hosts[i].guard(args)
    }

    fn json(&self, i: usize, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.hosts[i].guard_ok(&a)).expect("JSON")
    }

    /// The reason host `i` records for its ban of the attacker, if banned.
    fn ban_reason(&self, i: usize) -> Option<String> {
        let bans = self.json(i, &["bans"]);
        bans.as_array()?
            .iter()
            .find(|b| b["source"].as_str() == Some(&format!("{ATK}/32")))
            .map(|b| b["reason"].as_str().unwrap_or_default().to_string())
    }

    /// How many of `n` datagrams from the attacker reach host `i`.
    fn arrivals(&self, i: usize, n: u32) -> u32 {
        drain_counts(&self.sinks[i], Duration::from_millis(50));
        blast(
            &self.atk,
            &format!("{}:9000", HOSTS[i]),
            n,
            Duration::from_secs(2),
        );
        let got = drain_counts(&self.sinks[i], Duration::from_millis(300));
        got.get(&ATK.parse::<IpAddr>().unwrap())
            .copied()
            .unwrap_or(0)
    }

    /// Floods host `i` until it bans the attacker; returns when its `guard bans` shows it.
    fn flood_until_banned(&self, i: usize) -> Instant {
        wait_for(WAIT, || {
            blast(
                &self.atk,
                &format!("{}:9000", HOSTS[i]),
                2_000,
                Duration::from_secs(1),
            );
            self.ban_reason(i).map(|_| Instant::now())
        })
        .unwrap_or_else(|| panic!("host {} never banned the flood\n{}", NAMES[i], self.logs()))
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for (i, tb) in self.hosts.iter().enumerate() {
            s.push_str(&format!("=== host {}\n{}\n", NAMES[i], tb.logs()));
        }
        s.push_str(&format!(
            "=== nats\n{}",
            std::fs::read_to_string(self.nats_dir.join("nats.log")).unwrap_or_default()
        ));
        s
    }

    fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        wait_for(WAIT, || ok().then_some(()))
            .unwrap_or_else(|| panic!("{what}: never\n{}", self.logs()));
    }

    fn fleet(&self, i: usize) -> Value {
        self.json(i, &["fleet", "status"])
    }

    fn health(&self, i: usize) -> Value {
        self.json(i, &["health"])
    }
}

#[test]
fn fleet_shares_bans_catches_up_rides_out_the_server_and_keeps_the_drain_budget() {
    if !live_or_skip("fleet") {
        return;
    }
    let mut bed = bed();
    bed.start_nats();
    for i in 0..3 {
        bed.start(i);
    }
    bed.wait("every host connected and in the pool", || {
        (0..3).all(|i| {
            let f = bed.fleet(i);
            f["connected"] == true && f["members"].as_array().is_some_and(|m| m.len() == 3)
        })
    });
    // Before any ban the attacker reaches b and c: what follows is the fleet's doing.
    assert!(bed.arrivals(1, 20) >= 15, "b before the ban");
    assert!(bed.arrivals(2, 20) >= 15, "c before the ban");

    // A flood banned on a is dropped on b and c within a second.
    let banned_at = bed.flood_until_banned(0);
    for i in [1, 2] {
        let seen = wait_for(WAIT, || {
            (bed.ban_reason(i).as_deref() == Some("fleet:a")).then(Instant::now)
        })
        .unwrap_or_else(|| panic!("host {} never applied a's ban\n{}", NAMES[i], bed.logs()));
        let lag = seen.saturating_duration_since(banned_at);
        assert!(lag < Duration::from_secs(1), "host {}: {lag:?}", NAMES[i]);
        assert_eq!(
            bed.arrivals(i, 50),
            0,
            "host {} lets the banned source in",
            NAMES[i]
        );
    }

    // `guard unban --fleet` on b lifts it everywhere.
    bed.hosts[1].guard_ok(&["unban", "--fleet", ATK]);
    bed.wait("the ban lifted on every host", || {
        (0..3).all(|i| bed.ban_reason(i).is_none())
    });
    assert!(bed.arrivals(2, 20) >= 15, "c after the fleet's unban");

    // c stopped, a ban made, c restarted: it has the ban (catch-up before watching).
    bed.hosts[2].stop(0);
    bed.flood_until_banned(0);
    bed.wait("b applied the new ban", || bed.ban_reason(1).is_some());
    bed.start(2);
    bed.wait("c caught up with the ban made while it was down", || {
        bed.ban_reason(2).as_deref() == Some("fleet:a")
    });
    assert_eq!(bed.arrivals(2, 50), 0, "c after its restart");

    // The server stopped: every host keeps dropping, says warn (never fail) and why.
    bed.stop_nats();
    bed.wait("every host warns that the fleet is unreachable", || {
        (0..3).all(|i| {
            let h = bed.health(i);
            // warn, never fail (the host's own load may add to the reason, never the state here).
            h["status"] == "warn"
                && h["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("fleet servers unreachable"))
        })
    });
    let status = bed.hosts[1].guard_ok(&["status"]);
    assert!(status.contains("NOT CONNECTED"), "{status}");
    for (i, name) in NAMES.iter().enumerate() {
        assert_eq!(bed.arrivals(i, 50), 0, "host {name} during the outage");
    }
    // A deny entry made during the outage waits for the server, then reaches everyone.
    bed.hosts[0].guard_ok(&[
        "deny", "add", DENIED, "--ttl", "10m", "--fleet", "--reason", "outage",
    ]);
    bed.start_nats();
    bed.wait("the hosts converge once the server is back", || {
        (0..3).all(|i| {
            let deny = bed.json(i, &["deny", "list"]);
            let listed = deny.as_array().is_some_and(|d| {
                d.iter()
                    .any(|e| e["cidr"].as_str() == Some(&format!("{DENIED}/32")))
            });
            // Back to whatever the host's own load says: no longer the fleet's warn.
            let h = bed.health(i);
            let fleet_warn = h["reason"].as_str().is_some_and(|r| r.contains("fleet"));
            listed && !fleet_warn && bed.ban_reason(i).is_some()
        })
    });
    let deny_b = bed.json(1, &["deny", "list"]);
    assert!(deny_b.to_string().contains("fleet:a"), "{deny_b}");

    // The drain budget: 0.34 of 3 hosts is one.
    bed.wait("all three back in the pool", || {
        bed.fleet(0)["members"]
            .as_array()
            .is_some_and(|m| m.len() == 3)
    });
    bed.hosts[0].guard_ok(&["drain", "--reason", "deploy"]);
    let refused = bed.guard(1, &["drain"]);
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        !refused.status.success(),
        "b's drain went through past the budget"
    );
    assert!(err.contains("refused") && err.contains(": a;"), "{err}");
    assert_ne!(bed.health(1)["status"], "drain");
    // a ready again: its slot is freed.
    bed.hosts[0].guard_ok(&["ready"]);
    bed.wait("a's slot freed", || {
        bed.fleet(1)["slots"]["held"]
            .as_object()
            .is_some_and(|h| h.is_empty())
            && bed.fleet(1)["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["state"] != "drain"))
    });
    // Two drains at the same instant: at most one takes the last slot.
    let socks: Vec<PathBuf> = [1, 2].iter().map(|&i| bed.hosts[i].socket()).collect();
    let threads: Vec<_> = socks
        .into_iter()
        .map(|sock| {
            std::thread::spawn(move || {
                Command::new(env!("CARGO_BIN_EXE_guard"))
                    .args(["drain", "--reason", "race"])
                    .env("GUARD_SOCKET", sock)
                    .output()
                    .unwrap()
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let won = results.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won,
        1,
        "two simultaneous drains: {:?}\n{}",
        results
            .iter()
            .map(|o| String::from_utf8_lossy(&o.stderr).to_string())
            .collect::<Vec<_>>(),
        bed.logs()
    );
    let slots = bed.fleet(0)["slots"]["held"].clone();
    assert_eq!(slots.as_object().map(|h| h.len()), Some(1), "{slots}");
}
