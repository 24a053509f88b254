//! Live tests of the guard in libxdp's multi-program dispatcher, beside xdp-filter (xdp-tools,
//! libxdp 1.3): both programs on one veth, in both orders, through real UDP in namespaces.
//!
//! The dispatcher needs freplace programs. A kernel that refuses them (this project's CI host
//! runs under lockdown) runs the tests in a VM with Debian's stock kernel instead (see
//! `support::vm`): there they run as here, against the same binaries.
mod support;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::netns::{Testbed, big_rcvbuf, blast, drain_counts, live_or_skip, sh, udp_in, warm_up};
use support::vm::{Place, here_or_in_vm};

const SRV: &str = "198.18.7.1";
/// Denied by xdp-filter.
const FILTERED: &str = "198.18.7.2";
/// Denied by the guard.
const GUARDED: &str = "198.18.7.3";
/// In neither list.
const CLEAN: &str = "198.18.7.4";
const WAIT: Duration = Duration::from_secs(15);

struct Bed {
    tb: Testbed,
    srv: String,
    cli: String,
    iface: String,
    peer: String,
    config: PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // libxdp's pins of this interface's dispatchers (the namespace's deletion detaches
        // them, the pins stay): `dispatch-<ifindex>-<id>` under /sys/fs/bpf/xdp.
        if let Some(ifindex) = self.ifindex() {
            let prefix = format!("dispatch-{ifindex}-");
            for e in std::fs::read_dir("/sys/fs/bpf/xdp")
                .into_iter()
                .flatten()
                .flatten()
            {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Bed {
    fn new() -> Self {
        let mut tb = Testbed::with_prefix("d17");
        let srv = tb.netns("s");
        let cli = tb.netns("c");
        let (iface, peer) = tb.link(&srv, &format!("{SRV}/24"), &cli, &format!("{CLEAN}/24"));
        let config = tb.tmp.join("guard.toml");
        let b = Self {
            tb,
            srv,
            cli,
            iface,
            peer,
            config,
        };
        b.addresses();
        b
    }

    /// The client's other sources, and the first packets both ways.
    fn addresses(&self) {
        for a in [FILTERED, GUARDED] {
            let a = format!("{a}/24");
            sh(&["ip", "-n", &self.cli, "addr", "add", &a, "dev", &self.peer]);
        }
        warm_up(&self.cli, SRV);
    }

    /// Deletes the veth pair and makes it anew under the same names (a new ifindex).
    fn recreate(&self) {
        sh(&["ip", "-n", &self.srv, "link", "del", &self.iface]);
        support::netns::veth(
            (&self.srv, &self.iface, &format!("{SRV}/24")),
            (&self.cli, &self.peer, &format!("{CLEAN}/24")),
        );
        self.addresses();
    }

    /// The veth's index in the server's namespace (not from /sys: nsenter keeps the host's).
    fn ifindex(&self) -> Option<u32> {
        let out = std::process::Command::new("ip")
            .args(["-n", &self.srv, "-j", "link", "show", "dev", &self.iface])
            .output()
            .ok()?;
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v[0]["ifindex"].as_u64().map(|i| i as u32)
    }

    /// A command in the server's network namespace only (`nsenter --net`: it sees the host's
    /// bpffs, where libxdp pins its dispatchers, unlike `ip netns exec`).
    fn in_srv(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "nsenter".to_string(),
            format!("--net=/run/netns/{}", self.srv),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        sh(&refs)
    }

    fn in_srv_ok(&self, args: &[&str]) -> String {
        let out = self.in_srv(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// xdp-filter on the server's veth (generic mode, like the guard's), dropping `FILTERED`.
    fn load_filter(&self) {
        self.in_srv_ok(&["xdp-filter", "load", "--mode", "skb", &self.iface]);
        self.in_srv_ok(&["xdp-filter", "ip", "--mode", "src", FILTERED]);
    }

    fn unload_filter(&self) {
        self.in_srv_ok(&["xdp-filter", "unload", &self.iface]);
    }

    /// `xdp-loader status` of the veth: the programs libxdp sees there, in run order, with
    /// their priorities.
    fn loader_status(&self) -> Vec<(String, u32)> {
        let out = self.in_srv_ok(&["xdp-loader", "status", &self.iface]);
        // Component lines: " =>  <prio>  <name>  <id>  <tag>  <actions>".
        out.lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "=>").then_some(())?;
                let prio = w.next()?.parse().ok()?;
                Some((w.next()?.to_string(), prio))
            })
            .collect()
    }

    /// The program id of component `name` in `xdp-loader status`.
    fn component_id(&self, name: &str) -> Option<u32> {
        let out = self.in_srv_ok(&["xdp-loader", "status", &self.iface]);
        out.lines().find_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.first() == Some(&"=>") && w.get(2) == Some(&name))
                .then(|| w.get(3)?.parse().ok())
                .flatten()
        })
    }

    /// libxdp's pin directories of dispatchers on this veth (`dispatch-<ifindex>-<id>`).
    fn dispatch_dirs(&self) -> Vec<String> {
        let Some(ifindex) = self.ifindex() else {
            return Vec::new();
        };
        let prefix = format!("dispatch-{ifindex}-");
        let mut v: Vec<String> = std::fs::read_dir("/sys/fs/bpf/xdp")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        v.sort();
        v
    }

    fn write_config(&self, attach: &str, priority: u32, extra: &str) {
        std::fs::write(
            &self.config,
            format!(
                "[datapath]\nmode = \"generic\"\nattach = \"{attach}\"\npriority = {priority}\n{extra}"
            ),
        )
        .unwrap();
    }

    /// `guard run` with this config, expected to refuse to start; returns its log.
    fn refused(&mut self) -> String {
        let (config, iface, srv) = (
            self.config.display().to_string(),
            self.iface.clone(),
            self.srv.clone(),
        );
        let (status, log) = self.tb.run_guard_to_exit(
            &srv,
            &["--config", &config, "--iface", &iface],
            Duration::from_secs(60),
        );
        assert!(!status.success(), "guard run started: {log}");
        log
    }

    fn start(&mut self, attach: &str, priority: u32) -> usize {
        self.write_config(attach, priority, "");
        let (config, iface) = (self.config.display().to_string(), self.iface.clone());
        let srv = self.srv.clone();
        self.tb
            .start_guard(&srv, &["--config", &config, "--iface", &iface])
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.tb.guard_ok(&a)).expect("--json output is JSON")
    }

    /// Packets the guard judged, summed over its verdicts: what reached it.
    fn guard_saw(&self) -> u64 {
        self.json(&["stats"])["total"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["packets"].as_u64())
            .sum()
    }

    /// Sends `n` datagrams from each source; returns how many of each arrived.
    fn exchange(&self, n: u32) -> HashMap<&'static str, u32> {
        let sink = udp_in(&self.srv, &format!("{SRV}:9000"));
        big_rcvbuf(&sink);
        for from in [FILTERED, GUARDED, CLEAN] {
            let s = udp_in(&self.cli, &format!("{from}:0"));
            let sent = blast(&s, &format!("{SRV}:9000"), n, Duration::from_secs(5));
            assert_eq!(sent, n, "{from} could not send");
        }
        let got = drain_counts(&sink, Duration::from_millis(300));
        [FILTERED, GUARDED, CLEAN]
            .into_iter()
            .map(|a| {
                let ip: IpAddr = a.parse().unwrap();
                (a, got.get(&ip).copied().unwrap_or(0))
            })
            .collect()
    }

    /// Asserts which sources get through, with what the interface runs for the message.
    fn expect(&self, n: u32, filtered: bool, guarded: bool, why: &str) {
        let got = self.exchange(n);
        let want = |through: bool| if through { n } else { 0 };
        let want = HashMap::from([
            (FILTERED, want(!filtered)),
            (GUARDED, want(!guarded)),
            (CLEAN, n),
        ]);
        assert_eq!(
            got,
            want,
            "{why}: xdp-loader status {:?}\n{}",
            self.loader_status(),
            self.tb.logs()
        );
    }

    fn status_mode(&self) -> String {
        let s = self.json(&["status"]);
        s["attachments"][0]["mode"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The health check's "attached" for the veth, once it has been evaluated.
    fn wait_attached(&self, want: bool) {
        let attached = |h: &Value| {
            h["checks"].as_array().and_then(|c| {
                c.iter()
                    .find(|o| o["component"] == "xdp" && o["measurement"] == "attached")
                    .map(|o| o["status"] == "pass")
            })
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let h = self.json(&["health"]);
            if attached(&h) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health never said attached = {want}: {h}\n{}",
                self.tb.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn freplace_here() -> Result<(), String> {
    guard::ebpf::dispatcher_support()
}

#[test]
fn the_guard_joins_xdp_filters_dispatcher_first_survives_kill_and_restart_and_detaches_leaving_xdp_filter()
 {
    if !live_or_skip("live dispatcher") {
        return;
    }
    let Place::Here = here_or_in_vm(
        "the_guard_joins_xdp_filters_dispatcher_first_survives_kill_and_restart_and_detaches_leaving_xdp_filter",
        freplace_here,
    ) else {
        return;
    };
    let mut b = Bed::new();
    b.load_filter();
    assert_eq!(b.loader_status(), vec![("xdpfilt_alw_all".to_string(), 10)]);
    b.expect(100, true, false, "xdp-filter alone");

    // auto: the interface runs libxdp's dispatcher, so the guard joins it, at priority 5
    // (before xdp-filter's 10).
    let first = b.start("auto", 5);
    b.tb.guard_ok(&["deny", "add", &format!("{GUARDED}/32")]);
    assert_eq!(
        b.loader_status(),
        vec![
            ("guard_ext".to_string(), 5),
            ("xdpfilt_alw_all".to_string(), 10)
        ]
    );
    assert_eq!(b.status_mode(), "dispatcher");
    assert!(
        b.tb.guard_ok(&["status"]).contains("dispatcher"),
        "guard status names the way it is attached"
    );
    b.wait_attached(true);
    // Both drop theirs; the guard runs first, so it sees every packet (also the ones
    // xdp-filter drops after it).
    let saw = b.guard_saw();
    b.expect(200, true, true, "guard (5) then xdp-filter (10)");
    let seen = b.guard_saw() - saw;
    assert!(
        (600..700).contains(&seen),
        "running first, the guard saw {seen} of the 600 packets"
    );

    // kill -9: both stay.
    let old_id = b
        .component_id("guard_ext")
        .expect("guard_ext in xdp-loader status");
    b.tb.kill9(first);
    b.expect(100, true, true, "after kill -9 of the daemon");

    // `next` cannot go with a dispatcher: refused, and nothing changes.
    let next_pin = format!("/sys/fs/bpf/d17next-{}", b.tb.tag);
    // The chain tests' next program (guard-ebpf/src/testroot.rs), pinned.
    {
        let object = std::env::var("GUARD_TESTROOT_OBJECT").expect("GUARD_TESTROOT_OBJECT");
        let mut obj = aya::Ebpf::load_file(&object).unwrap();
        let p: &mut aya::programs::Xdp = obj
            .program_mut("guard_testnext")
            .unwrap()
            .try_into()
            .unwrap();
        p.load().unwrap();
        p.pin(&next_pin).unwrap();
    }
    b.write_config("auto", 5, &format!("next = \"{next_pin}\"\n"));
    let log = b.refused();
    let _ = std::fs::remove_file(&next_pin);
    assert!(
        log.contains("datapath.next") && log.contains("libxdp's dispatcher"),
        "{log}"
    );
    assert_eq!(b.component_id("guard_ext"), Some(old_id), "untouched");

    // A restart swaps the new program in (one swap of the dispatcher): still both, still in
    // that order, and the guard's lists kept; one dispatcher's pins.
    b.start("auto", 5);
    let s = b.json(&["status"]);
    assert_eq!(s["attachments"][0]["adopted"], true, "{s}");
    assert_eq!(
        b.loader_status(),
        vec![
            ("guard_ext".to_string(), 5),
            ("xdpfilt_alw_all".to_string(), 10)
        ]
    );
    let new_id = b.component_id("guard_ext").unwrap();
    assert_ne!(
        new_id, old_id,
        "the new daemon's program is in the dispatcher"
    );
    assert_eq!(b.dispatch_dirs().len(), 1, "{:?}", b.dispatch_dirs());
    b.expect(100, true, true, "after the restart");

    // guard detach: xdp-filter keeps working, alone in its dispatcher.
    b.tb.guard_ok(&["detach"]);
    assert_eq!(b.loader_status(), vec![("xdpfilt_alw_all".to_string(), 10)]);
    assert_eq!(b.dispatch_dirs().len(), 1, "{:?}", b.dispatch_dirs());
    b.expect(100, true, false, "after guard detach");
    b.unload_filter();
    assert!(b.loader_status().is_empty());
    assert!(b.dispatch_dirs().is_empty(), "{:?}", b.dispatch_dirs());
    b.expect(100, false, false, "nothing attached");
    assert!(
        !b.tb.logs().contains("re-attached"),
        "no false 'not attached' along the way: {}",
        b.tb.logs()
    );
}

#[test]
fn xdp_filter_joins_the_guards_dispatcher_runs_first_at_a_lower_priority_and_leaves_the_guard_when_unloaded()
 {
    if !live_or_skip("live dispatcher") {
        return;
    }
    let Place::Here = here_or_in_vm(
        "xdp_filter_joins_the_guards_dispatcher_runs_first_at_a_lower_priority_and_leaves_the_guard_when_unloaded",
        freplace_here,
    ) else {
        return;
    };
    let mut b = Bed::new();
    // "dispatcher": the guard builds one on an interface that runs nothing, at priority 20.
    b.start("dispatcher", 20);
    b.tb.guard_ok(&["deny", "add", &format!("{GUARDED}/32")]);
    assert_eq!(b.loader_status(), vec![("guard_ext".to_string(), 20)]);
    b.expect(100, false, true, "the guard alone in its dispatcher");

    // libxdp extends the guard's dispatcher; xdp-filter (10) now runs first.
    b.load_filter();
    assert_eq!(
        b.loader_status(),
        vec![
            ("xdpfilt_alw_all".to_string(), 10),
            ("guard_ext".to_string(), 20)
        ]
    );
    b.wait_attached(true);
    let saw = b.guard_saw();
    b.expect(200, true, true, "xdp-filter (10) then guard (20)");
    let seen = b.guard_saw() - saw;
    // What xdp-filter drops never reaches the guard.
    assert!(
        (400..500).contains(&seen),
        "running second, the guard saw {seen} packets, expected the 400 xdp-filter passed"
    );

    // Asked to attach directly while xdp-filter shares the dispatcher: refused, and both stay.
    b.tb.stop(0);
    b.write_config("direct", 20, "");
    let log = b.refused();
    assert!(
        log.contains("xdpfilt_alw_all") && log.contains("to itself"),
        "the refusal names the other program: {log}"
    );
    assert_eq!(b.loader_status().len(), 2, "{:?}", b.loader_status());
    b.expect(100, true, true, "after the refused switch");
    b.start("dispatcher", 20);

    // xdp-filter goes: libxdp rebuilds the dispatcher with the guard alone, which keeps
    // dropping its source, and health still finds it attached.
    b.unload_filter();
    assert_eq!(b.loader_status(), vec![("guard_ext".to_string(), 20)]);
    b.expect(100, false, true, "after xdp-filter unload");
    b.wait_attached(true);

    // The guard's detach leaves nothing on the interface.
    b.tb.guard_ok(&["detach"]);
    assert!(b.loader_status().is_empty(), "{:?}", b.loader_status());
    b.expect(100, false, false, "after guard detach");
}

#[test]
fn a_re_created_interface_gets_the_guard_back_in_a_dispatcher() {
    if !live_or_skip("live dispatcher") {
        return;
    }
    let Place::Here = here_or_in_vm(
        "a_re_created_interface_gets_the_guard_back_in_a_dispatcher",
        freplace_here,
    ) else {
        return;
    };
    let mut b = Bed::new();
    b.start("dispatcher", 5);
    b.tb.guard_ok(&["deny", "add", &format!("{GUARDED}/32")]);
    b.expect(100, false, true, "in its dispatcher");
    let before = b.ifindex();
    b.recreate();
    assert_ne!(b.ifindex(), before, "a new interface");
    let deadline = Instant::now() + WAIT;
    while b.json(&["status"])["attachments"][0]["reattached"] != 1 {
        assert!(
            Instant::now() < deadline,
            "never re-attached: {}",
            b.tb.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(b.status_mode(), "dispatcher");
    assert_eq!(b.loader_status(), vec![("guard_ext".to_string(), 5)]);
    b.wait_attached(true);
    b.expect(100, false, true, "in a new dispatcher on the new interface");
    b.tb.guard_ok(&["detach"]);
    assert!(b.loader_status().is_empty());
}

#[test]
fn the_guard_moves_between_its_own_link_and_a_dispatcher_when_told() {
    if !live_or_skip("live dispatcher") {
        return;
    }
    let Place::Here = here_or_in_vm(
        "the_guard_moves_between_its_own_link_and_a_dispatcher_when_told",
        freplace_here,
    ) else {
        return;
    };
    let mut b = Bed::new();
    b.start("direct", 5);
    b.tb.guard_ok(&["deny", "add", &format!("{GUARDED}/32")]);
    assert_eq!(b.status_mode(), "generic");
    assert!(b.loader_status().is_empty());
    b.tb.stop(0);
    // Into a dispatcher: libxdp's tools can join it now.
    b.start("dispatcher", 5);
    assert_eq!(b.status_mode(), "dispatcher");
    assert_eq!(b.loader_status(), vec![("guard_ext".to_string(), 5)]);
    b.expect(100, false, true, "moved into a dispatcher, lists kept");
    b.tb.stop(1);
    // Back onto a link of its own: the dispatcher goes with the guard.
    b.start("direct", 5);
    assert_eq!(b.status_mode(), "generic");
    assert!(b.loader_status().is_empty(), "{:?}", b.loader_status());
    assert!(b.dispatch_dirs().is_empty(), "{:?}", b.dispatch_dirs());
    b.expect(100, false, true, "back on its own link");
    b.tb.guard_ok(&["detach"]);
}

#[test]
fn direct_attach_stays_the_default_where_the_interface_runs_nothing() {
    if !live_or_skip("live dispatcher") {
        return;
    }
    // No dispatcher needed: this runs on any kernel.
    let mut b = Bed::new();
    b.start("auto", 5);
    assert_eq!(b.status_mode(), "generic");
    assert!(
        b.loader_status().is_empty(),
        "no dispatcher: {:?}",
        b.loader_status()
    );
    b.tb.guard_ok(&["deny", "add", &format!("{GUARDED}/32")]);
    b.expect(100, false, true, "attached directly");
    b.tb.guard_ok(&["detach"]);
}

#[test]
fn where_the_kernel_refuses_freplace_guard_run_says_so_and_attaches_nothing() {
    if !live_or_skip("live dispatcher refused") {
        return;
    }
    if freplace_here().is_ok() {
        support::skip(
            "where_the_kernel_refuses_freplace_guard_run_says_so_and_attaches_nothing",
            "this kernel loads freplace programs: the refusal cannot be shown here",
        );
        return;
    }
    let xdp_dir_existed = std::path::Path::new("/sys/fs/bpf/xdp").exists();
    let mut b = Bed::new();
    b.write_config("dispatcher", 5, "");
    let iface = b.iface.clone();
    let log = b.refused();
    assert!(
        log.contains("libxdp's dispatcher")
            && log.contains("refuses freplace")
            && log.contains("Operation not permitted"),
        "the error says what and why: {log}"
    );
    assert!(b.dispatch_dirs().is_empty(), "{:?}", b.dispatch_dirs());
    let ip = b.in_srv_ok(&["ip", "-j", "link", "show", "dev", &iface]);
    assert!(!ip.contains("\"xdp\""), "nothing attached: {ip}");
    if !xdp_dir_existed {
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
    }
}
