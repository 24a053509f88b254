//! Live health tests: `guard run` in a server namespace with its health HTTP and agent-check
//! listeners on the server's 198.18.x address, driven through the CLI, and read the way the
//! peers read it: HTTP and agent clients in a client namespace, `promtool` on the live
//! /metrics, and Debian's HAProxy 2.6 in a load-balancer namespace through its stats socket.
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::netns::{Testbed, in_netns, live_or_skip, warm_up};

/// Longest wait for any one change to show; every wait in this file is bounded by it.
const WAIT: Duration = Duration::from_secs(15);

/// Health settings for tests: headroom thresholds real load cannot reach (a test must not
/// flap because the machine is busy), quick to rise, and three samples to fall (so that one
/// saturated second cannot drain the host); `extra` adds keys, `check` is the local check.
fn config(extra: &str, check: &str) -> String {
    format!(
        "[health]\nwarn_at = 99\ndrain_at = 100\npsi_warn_at = 99\npsi_drain_at = 100\n\
         rise = 1\nfall = 3\n{extra}\n\
         [[health.checks]]\ntype = \"tcp\"\ntarget = \"{check}\"\ntimeout_ms = 500\n"
    )
}

/// The same, with warn_at lowered to 1%: the real memory use is above it, so the host warns
/// with a weight below 100.
fn lowered(check: &str) -> String {
    config("", check).replace("warn_at = 99\n", "warn_at = 1\n")
}

/// A server namespace with the guard on its link to a peer namespace.
struct Bed {
    tb: Testbed,
    srv: String,
    peer: String,
    iface: String,
    srv_addr: String,
    config: PathBuf,
    _service: support::Acceptor,
}

impl Bed {
    /// `net` is the third octet: the server is 198.18.<net>.1, the peer .2.
    fn new(net: u8, peer_role: &str) -> Self {
        let mut tb = Testbed::new();
        let srv = tb.netns("s");
        let peer = tb.netns(peer_role);
        let srv_addr = format!("198.18.{net}.1");
        let peer_addr = format!("198.18.{net}.2");
        let (iface, _) = tb.link(
            &srv,
            &format!("{srv_addr}/24"),
            &peer,
            &format!("{peer_addr}/24"),
        );
        warm_up(&peer, &srv_addr);
        let service_addr: SocketAddr = format!("{srv_addr}:8080").parse().unwrap();
        let service = support::Acceptor::spawn(
            in_netns(&srv, move || {
                TcpListener::bind(service_addr).expect("bind the service")
            }),
            Duration::from_secs(300),
        );
        let config = tb.tmp.join("guard.toml");
        Self {
            tb,
            srv,
            peer,
            iface,
            srv_addr,
            config,
            _service: service,
        }
    }

    fn service(&self) -> String {
        format!("{}:8080", self.srv_addr)
    }

    /// Nothing listens there.
    fn dead_port(&self) -> String {
        format!("{}:8081", self.srv_addr)
    }

    fn http_addr(&self) -> String {
        format!("{}:9301", self.srv_addr)
    }

    fn agent_addr(&self) -> String {
        format!("{}:9302", self.srv_addr)
    }

    fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts the guard on the bed's interface with `extra` interfaces and the listeners
    /// on the server's address, from the config file.
    fn start(&mut self, extra_ifaces: &[String]) -> usize {
        let (http, agent) = (self.http_addr(), self.agent_addr());
        let config = self.config.display().to_string();
        let mut args = vec![
            "--config".to_string(),
            config,
            "--iface".into(),
            self.iface.clone(),
            "--health-listen".into(),
            http,
            "--agent-listen".into(),
            agent,
        ];
        for i in extra_ifaces {
            args.extend(["--iface".to_string(), i.clone()]);
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let srv = self.srv.clone();
        self.tb.start_guard(&srv, &refs)
    }

    fn guard(&self, args: &[&str]) -> Output {
        self.tb.guard(args)
    }

    fn guard_ok(&self, args: &[&str]) -> String {
        self.tb.guard_ok(args)
    }

    fn reload(&self, text: &str) {
        self.write_config(text);
        self.guard_ok(&["reload"]);
    }

    fn health(&self) -> Value {
        serde_json::from_str(&self.guard_ok(&["health", "--json"])).expect("JSON")
    }

    /// A GET from the peer namespace, through the link the guard is attached to.
    fn get(&self, path: &str) -> Http {
        http_get(&self.peer, &self.http_addr(), path)
    }

    /// One agent-check exchange from the peer namespace: sends `send`, reads to the close.
    fn agent(&self, send: &[u8]) -> String {
        let addr: SocketAddr = self.agent_addr().parse().unwrap();
        let mut s = in_netns(&self.peer, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to the agent")
        });
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        if !send.is_empty() {
            s.write_all(send).expect("send");
        }
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .expect("read until the agent closes");
        String::from_utf8(out).expect("ASCII")
    }

    /// Waits until the guard's own report satisfies `ok`.
    fn wait_health(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let h = self.health();
            if ok(&h) {
                return h;
            }
            assert!(
                Instant::now() < deadline,
                "health never became {what}: {h}\nlogs:\n{}",
                self.tb.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `guard health check --format F`'s exit code and line.
    fn check(&self, format: &str) -> (i32, String) {
        let out = self.guard(&["health", "check", "--format", format]);
        (
            out.status.code().expect("an exit code"),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    fn codes(&self) -> [i32; 3] {
        ["keepalived", "consul", "nagios"].map(|f| self.check(f).0)
    }
}

/// An HTTP response.
struct Http {
    status: u16,
    head: String,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn http_get(ns: &str, addr: &str, path: &str) -> Http {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = in_netns(ns, move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to /health")
    });
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    Http {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

/// Runs `promtool check metrics` on `text`: its complaints, or "" when it passes.
fn promtool(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_string()
    } else {
        format!("promtool failed: {said}")
    }
}

/// An agent reply: one line, in HAProxy's agent-check grammar (section 5.2).
fn assert_agent_line(line: &str) {
    assert!(line.ends_with('\n'), "{line:?}");
    assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
    let words = line.split('#').next().unwrap();
    for w in words
        .split([' ', '\t', ','])
        .filter(|w| !w.trim().is_empty())
    {
        let w = w.trim();
        let known = ["up", "down", "fail", "stopped", "ready", "drain", "maint"].contains(&w)
            || w.strip_suffix('%')
                .is_some_and(|n| n.parse::<u8>().is_ok_and(|n| n <= 100));
        assert!(known, "word {w:?} of {line:?} is not in the agent grammar");
    }
}

#[test]
fn http_endpoints_agent_and_check_codes_follow_the_health_state() {
    if !live_or_skip("health endpoints") {
        return;
    }
    let mut b = Bed::new(31, "c");
    // A second interface, to be deleted at the end: the program must be seen to be gone.
    let extra_ns = b.tb.netns("x");
    let srv = b.srv.clone();
    let (extra_if, extra_peer) =
        b.tb.link(&srv, "198.18.32.1/24", &extra_ns, "198.18.32.2/24");
    b.write_config(&config("", &b.service()));
    let first = b.start(std::slice::from_ref(&extra_if));

    // Pass: every endpoint says so.
    let h = b.wait_health("pass", |h| h["status"] == "pass");
    assert_eq!(h["weight"], 100);
    let live = b.get("/livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok"));
    let ready = b.get("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        ready.header("content-type").as_deref(),
        Some("application/health+json")
    );
    assert_eq!(ready.header("x-envoy-degraded"), None);
    let j = ready.json();
    assert_eq!(j["status"], "pass", "{j}");
    let attached = &j["checks"]["xdp:attached"];
    assert_eq!(attached.as_array().map(Vec::len), Some(2), "{j}");
    assert!(
        attached
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["componentId"] == b.iface.as_str() && c["observedValue"] == true)
    );
    assert_eq!(
        j["checks"]["tcp:responseTime"][0]["componentId"],
        b.service()
    );
    assert_eq!(j["checks"]["tcp:responseTime"][0]["status"], "pass");
    assert!(
        j["checks"]["cpu:utilization"][0]["observedValue"].is_number(),
        "{j}"
    );
    let hp = b.get("/readyz/haproxy");
    assert_eq!(hp.status, 200);
    assert!(hp.body.starts_with("pass 100%: "), "{}", hp.body);
    assert_eq!(b.get("/nope").status, 404);
    let line = b.agent(b"");
    assert_agent_line(&line);
    assert!(line.starts_with("up ready 100% #"), "{line}");
    assert_eq!(b.codes(), [0, 0, 0]);
    let (_, nagios) = b.check("nagios");
    assert!(nagios.starts_with("GUARD OK - pass "), "{nagios}");
    assert!(nagios.ends_with("| weight=100%;;;0;100"), "{nagios}");
    let human = b.guard_ok(&["health"]);
    assert!(human.starts_with("state     pass\n"), "{human}");
    for input in [
        "cpu utilization",
        "memory utilization",
        "xdp attached",
        "tcp responseTime",
    ] {
        assert!(human.contains(input), "{input} missing from:\n{human}");
    }

    // /metrics of the live daemon: the families the issue asks for, and promtool is happy.
    let m = b.get("/metrics");
    assert_eq!(m.status, 200);
    assert_eq!(
        m.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for needle in [
        format!(
            "guard_packets_total{{interface=\"{}\",reason=\"passed\"}} ",
            b.iface
        ),
        format!(
            "guard_bytes_total{{interface=\"{}\",reason=\"passed\"}} ",
            b.iface
        ),
        "guard_packets_total{".to_string(),
        "guard_bans_active 0\n".to_string(),
        "guard_map_entries{map=\"bans\"} 0\n".to_string(),
        "guard_map_capacity{map=\"sources\"} 131072\n".to_string(),
        "guard_health_status{status=\"pass\"} 1\n".to_string(),
        "guard_health_status{status=\"drain\"} 0\n".to_string(),
        "guard_health_weight_ratio 1\n".to_string(),
        "guard_cpu_utilisation_ratio ".to_string(),
        "guard_memory_utilisation_ratio ".to_string(),
        "guard_up 1\n".to_string(),
    ] {
        assert!(
            m.body.contains(&needle),
            "{needle:?} missing from /metrics:\n{}",
            m.body
        );
    }
    assert!(!m.body.contains(&b.srv_addr), "no per-address labels");
    assert_eq!(promtool(&m.body), "", "live /metrics:\n{}", m.body);

    // Agent clients that send garbage or nothing still get one valid line each.
    for send in [
        &b""[..],
        b"garbage\r\n\x00\xff",
        b"GET / HTTP/1.1\r\n\r\n",
        &[b'x'; 4096][..],
    ] {
        let line = b.agent(send);
        assert_agent_line(&line);
        assert!(line.starts_with("up ready 100%"), "{line}");
    }

    // Drain, expiring by itself: every output follows at once, then it lapses on its own.
    let out = b.guard_ok(&["drain", "--for", "3s", "--reason", "deploy"]);
    assert!(
        out.contains("health is now drain: operator: deploy (until "),
        "{out}"
    );
    let r = b.get("/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "fail");
    assert!(
        r.json()["output"]
            .as_str()
            .unwrap()
            .starts_with("operator: deploy"),
        "{}",
        r.body
    );
    assert_eq!(
        b.get("/readyz/haproxy").status,
        404,
        "404 for http-check disable-on-404"
    );
    let line = b.agent(b"");
    assert!(
        line.starts_with("up drain #operator: deploy (until "),
        "{line}"
    );
    assert_eq!(b.codes(), [1, 2, 2]);
    let h = b.wait_health("pass after the drain lapsed", |h| h["status"] == "pass");
    assert!(h.get("operator").is_none(), "{h}");
    assert_eq!(b.get("/readyz").status, 200);
    // The lapsed override left the store too (the daemon holds the store while it runs, so
    // it is read with the daemon stopped, and the daemon started again).
    b.tb.stop(first);
    let stored = match guard::state::Store::load(b.tb.tmp.join("state")).expect("read the store") {
        guard::state::Opened::Found(s) => s,
        other => panic!("the store: {other:?}"),
    };
    assert!(
        stored.operator.is_none(),
        "the lapsed override is still stored: {:?}",
        stored.operator
    );
    let first = b.start(std::slice::from_ref(&extra_if));
    b.wait_health("pass after the restart", |h| h["status"] == "pass");

    // Maint survives a restart of the daemon.
    b.guard_ok(&["maint", "--reason", "disk swap"]);
    assert_eq!(b.get("/readyz").status, 503);
    assert_eq!(b.get("/readyz/haproxy").status, 503);
    assert!(b.agent(b"").starts_with("maint #operator: disk swap"));
    assert_eq!(b.codes(), [1, 2, 2]);
    b.tb.stop(first);
    let second = b.start(std::slice::from_ref(&extra_if));
    let h = b.health();
    assert_eq!(h["status"], "maint", "right after the restart: {h}");
    assert_eq!(h["operator"]["reason"], "disk swap");
    assert!(b.agent(b"").starts_with("maint #operator: disk swap"));
    let out = b.guard_ok(&["ready"]);
    assert!(out.starts_with("ready: the override is cleared\n"), "{out}");
    b.wait_health("pass after ready", |h| h["status"] == "pass");

    // Warn: a lowered threshold; 200 with x-envoy-degraded, Consul and Nagios warn.
    b.reload(&lowered(&b.service()));
    let h = b.wait_health("warn", |h| h["status"] == "warn");
    let w = h["weight"].as_u64().unwrap();
    assert!((1..100).contains(&w), "{h}");
    let r = b.get("/readyz");
    assert_eq!((r.status, r.json()["status"].clone()), (200, "warn".into()));
    assert_eq!(r.header("x-envoy-degraded").as_deref(), Some("true"));
    assert_eq!(b.codes(), [0, 1, 1]);
    assert!(b.agent(b"").starts_with("up ready "));

    // A threshold of 150%: the reload is refused, naming line, field, value and range, and
    // the running settings keep serving.
    b.write_config(&config("", &b.service()).replace("warn_at = 99\n", "warn_at = 150\n"));
    let out = b.guard(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2: health.warn_at = 150: expected a percentage from 0 to 100"),
        "{err}"
    );
    assert!(err.contains("the running configuration stays"), "{err}");
    // An evaluation made after the refusal (its time is in whole seconds) is still on the old
    // thresholds: a threshold of 150% would have passed at once (rise = 1).
    let refused = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let h = b.wait_health("evaluated after the refused reload", |h| {
        h["time"].as_u64().is_some_and(|t| t > refused)
    });
    assert_eq!(h["status"], "warn", "still on the old thresholds: {h}");
    assert_eq!(b.get("/readyz").status, 200);
    assert!(b.get("/livez").status == 200);

    // A failed local check: fail, 503, the agent says down, every tool critical.
    b.reload(&config("", &b.dead_port()));
    let h = b.wait_health("fail", |h| h["status"] == "fail");
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("tcp check {} failed", b.dead_port())),
        "{h}"
    );
    let r = b.get("/readyz");
    assert_eq!((r.status, r.json()["status"].clone()), (503, "fail".into()));
    assert_eq!(b.get("/readyz/haproxy").status, 503);
    let line = b.agent(b"");
    assert!(line.starts_with("down #tcp check "), "{line}");
    assert_eq!(b.codes(), [1, 2, 2]);
    let m = b.get("/metrics");
    assert!(
        m.body.contains("guard_health_status{status=\"fail\"} 1\n"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("guard_health_weight_ratio 0\n"),
        "{}",
        m.body
    );
    b.reload(&config("", &b.service()));
    b.wait_health("pass again", |h| h["status"] == "pass");

    // The program gone from an interface (the interface deleted): fail, naming it.
    support::netns::sh(&["ip", "-n", &extra_ns, "link", "del", &extra_peer]);
    let h = b.wait_health("fail without the second interface", |h| {
        h["status"] == "fail"
    });
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("XDP program not attached on {extra_if}")),
        "{h}"
    );
    assert!(
        b.tb.logs().contains("THE XDP PROGRAM IS NOT ATTACHED"),
        "{}",
        b.tb.logs()
    );
    let _ = second;
}

#[test]
fn a_health_listener_that_cannot_bind_stops_the_start_with_a_clear_error() {
    if !live_or_skip("health listener in use") {
        return;
    }
    let mut b = Bed::new(33, "c");
    b.write_config(&config("", &b.service()));
    // Someone else holds the health port on the server's address.
    let addr: SocketAddr = b.http_addr().parse().unwrap();
    let squatter = in_netns(&b.srv, move || TcpListener::bind(addr).expect("bind"));
    let config_path = b.config.display().to_string();
    let srv = b.srv.clone();
    let (http, agent, iface) = (b.http_addr(), b.agent_addr(), b.iface.clone());
    let (status, log) = b.tb.run_guard_to_exit(
        &srv,
        &[
            "--config",
            &config_path,
            "--iface",
            &iface,
            "--health-listen",
            &http,
            "--agent-listen",
            &agent,
        ],
        WAIT,
    );
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on {http} for the health HTTP server"
        )),
        "{log}"
    );
    assert!(log.contains("Address already in use"), "{log}");
    assert!(
        log.contains("--health-listen"),
        "the message says what to change: {log}"
    );
    // Refused before attaching: nothing pinned, nothing attached.
    let links = guard::ebpf::versioned_dir(&b.tb.pin_dir).join("links");
    assert!(
        std::fs::read_dir(&links).map_or(true, |mut d| d.next().is_none()),
        "{} has pins",
        links.display()
    );
    drop(squatter);

    // An unknown check type, at start: the line, the field, the value and what is accepted.
    b.write_config(&config("", &b.service()).replace("type = \"tcp\"", "type = \"icmp\""));
    let (status, log) = b.tb.run_guard_to_exit(
        &srv,
        &[
            "--config",
            &config_path,
            "--iface",
            &iface,
            "--health-listen",
            &http,
        ],
        WAIT,
    );
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("line 9: health.checks[0].type = \"icmp\": expected \"tcp\" or \"http\""),
        "{log}"
    );

    // A bad agent address on the command line.
    b.write_config(&config("", &b.service()));
    let (status, log) = b.tb.run_guard_to_exit(
        &srv,
        &[
            "--config",
            &config_path,
            "--iface",
            &iface,
            "--agent-listen",
            "localhost:9302",
        ],
        WAIT,
    );
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("--agent-listen = \"localhost:9302\": expected ADDRESS:PORT"),
        "{log}"
    );
}

/// HAProxy in the load balancer's namespace, in the foreground, killed (by its own pid) and
/// its files removed on drop.
struct Haproxy {
    child: Child,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    /// The two backends the README shows, against the guard at `srv` (the application on
    /// port 8080, the guard's agent on 9302 and its HTTP on 9301).
    fn start(ns: &str, dir: PathBuf, srv: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global\n\
             \x20   stats socket {sock} level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             backend app_agent\n\
             \x20   server web1 {srv}:8080 weight 100 check inter 200ms rise 1 fall 1 agent-check agent-addr {srv} agent-port 9302 agent-inter 200ms\n\
             backend app_http\n\
             \x20   option httpchk GET /readyz/haproxy\n\
             \x20   http-check disable-on-404\n\
             \x20   server web1 {srv}:8080 check port 9301 inter 200ms rise 1 fall 1\n",
            sock = dir.join("stats.sock").display(),
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("haproxy starts (Debian package haproxy; cargo xtask test installs it)");
        Self { child, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("stats.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }
}

/// One command on HAProxy's stats socket (the Unix socket is reached from any namespace).
fn stats_command(sock: &Path, cmd: &str) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// `status`, `weight` and `last_agt` of server web1 of `backend`, from `show stat`.
fn server_stat(sock: &Path, backend: &str) -> Option<(String, u32, String)> {
    let csv = stats_command(sock, "show stat")?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (status, weight, agent) = (col("status")?, col("weight")?, col("last_agt")?);
    let prefix = format!("{backend},web1,");
    let row: Vec<&str> = lines.find(|l| l.starts_with(&prefix))?.split(',').collect();
    Some((
        row.get(status)?.to_string(),
        row.get(weight)?.parse().ok()?,
        row.get(agent)?.to_string(),
    ))
}

/// Waits until HAProxy shows web1 of `backend` as `ok` accepts.
fn wait_haproxy(
    h: &Haproxy,
    b: &Bed,
    backend: &str,
    what: &str,
    ok: impl Fn(&str, u32) -> bool,
) -> (String, u32, String) {
    let deadline = Instant::now() + WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((s, w, a)) = server_stat(&h.socket(), backend) {
            if ok(&s, w) {
                return (s, w, a);
            }
            last = Some((s, w, a));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "HAProxy {backend}/web1 never became {what}: last {last:?}\n`show servers state`:\n{}\nguard health:\n{}\nhaproxy log:\n{}\nguard logs:\n{}",
        stats_command(&h.socket(), "show servers state").unwrap_or_default(),
        String::from_utf8_lossy(&b.guard(&["health"]).stdout),
        h.log(),
        b.tb.logs()
    );
}

#[test]
fn haproxy_drains_restores_reweights_and_downs_the_server_as_the_guard_says() {
    if !live_or_skip("health with HAProxy") {
        return;
    }
    let mut b = Bed::new(35, "b");
    b.write_config(&config("", &b.service()));
    b.start(&[]);
    b.wait_health("pass", |h| h["status"] == "pass");
    let lb = b.peer.clone();
    let h = Haproxy::start(&lb, b.tb.tmp.join("haproxy"), &b.srv_addr);
    let up = |s: &str, w: u32| s == "UP" && w == 100;
    wait_haproxy(&h, &b, "app_agent", "UP at weight 100", up);
    wait_haproxy(&h, &b, "app_http", "UP", |s, _| s == "UP");

    // guard drain: DRAIN through the agent, NOLB (404 under disable-on-404) through HTTP.
    b.guard_ok(&["drain", "--reason", "deploy"]);
    let (_, _, said) = wait_haproxy(&h, &b, "app_agent", "DRAIN", |s, _| s.starts_with("DRAIN"));
    assert!(said.contains("operator: deploy"), "agent said {said:?}");
    wait_haproxy(&h, &b, "app_http", "NOLB", |s, _| s.starts_with("NOLB"));
    let state = stats_command(&h.socket(), "show servers state app_agent").unwrap();
    assert!(state.contains(" web1 "), "{state}");

    // guard ready: back to UP at full weight on both.
    b.guard_ok(&["ready"]);
    wait_haproxy(&h, &b, "app_agent", "UP at weight 100", up);
    wait_haproxy(&h, &b, "app_http", "UP", |s, _| s == "UP");

    // guard maint: MAINT through the agent; the HTTP check gets 503 and marks it DOWN.
    b.guard_ok(&["maint"]);
    wait_haproxy(&h, &b, "app_agent", "MAINT", |s, _| s.starts_with("MAINT"));
    wait_haproxy(&h, &b, "app_http", "DOWN", |s, _| s.starts_with("DOWN"));
    b.guard_ok(&["ready"]);
    wait_haproxy(&h, &b, "app_agent", "UP at weight 100", up);
    wait_haproxy(&h, &b, "app_http", "UP", |s, _| s == "UP");

    // A lowered headroom threshold (the real memory use is above 1%): the weight falls, and
    // HAProxy's weight is the guard's percentage of the configured 100.
    b.reload(&lowered(&b.service()));
    let (_, w, said) = wait_haproxy(&h, &b, "app_agent", "UP below weight 100", |s, w| {
        s == "UP" && (1..100).contains(&w)
    });
    assert!(
        said.contains("warn at 1%"),
        "agent said {said:?} at weight {w}"
    );
    // Warn still serves: the HTTP check stays UP.
    wait_haproxy(&h, &b, "app_http", "UP", |s, _| s == "UP");
    b.reload(&config("", &b.service()));
    wait_haproxy(&h, &b, "app_agent", "UP at weight 100", up);

    // A failed local check (nothing listens on the port): DOWN on both.
    b.reload(&config("", &b.dead_port()));
    let (_, _, said) = wait_haproxy(&h, &b, "app_agent", "DOWN", |s, _| s.starts_with("DOWN"));
    assert!(
        said.contains(&format!("tcp check {} failed", b.dead_port())),
        "agent said {said:?}"
    );
    wait_haproxy(&h, &b, "app_http", "DOWN", |s, _| s.starts_with("DOWN"));
    b.reload(&config("", &b.service()));
    wait_haproxy(&h, &b, "app_agent", "UP at weight 100", up);
    wait_haproxy(&h, &b, "app_http", "UP", |s, _| s == "UP");
    drop(h);
}
