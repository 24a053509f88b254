//! The agent-check lines against a real HAProxy (Debian's 2.6), all on loopback: each health
//! state moves the server as the agent module documents, read back through the stats socket.
//! Skips, saying why, when no `haproxy` binary is installed (fails instead under `cargo xtask
//! test`, which installs it).
mod support;
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard::{
    health::{HealthReport, Status},
    serve::agent::AgentServer,
    serve::http::{Handlers, HttpServer},
};

/// HAProxy in the foreground, killed (by its own pid) on drop.
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
    fn start(backend: SocketAddr, agent: SocketAddr, http: SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!("guard-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = format!(
            "global\n\
             \x20   stats socket {sock} level admin\n\
             defaults\n\
             \x20   mode tcp\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             backend be\n\
             \x20   server s1 {backend} weight 100 check inter 100ms agent-check agent-addr 127.0.0.1 agent-port {port} agent-inter 100ms\n\
             backend be_http\n\
             \x20   option httpchk GET /readyz/haproxy\n\
             \x20   http-check disable-on-404\n\
             \x20   server s1 {http} check inter 100ms rise 1 fall 1\n",
            sock = dir.join("stats.sock").display(),
            port = agent.port(),
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write config");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Self { child, dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("stats.sock")
    }
}

fn command(sock: &Path, cmd: &str) -> Option<String> {
    let mut s = UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{cmd}\n").as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The `status`, `weight` and `last_agt` columns of server `s1` of `backend`.
fn backend_stat(sock: &Path, backend: &str) -> Option<(String, String, String)> {
    let row = server_row(sock, backend)?;
    let col = |name: &str| row.get(name).cloned();
    Some((col("status")?, col("weight")?, col("last_agt")?))
}

/// Server `s1` of `backend` in `show stat`, by column name.
fn server_row(sock: &Path, backend: &str) -> Option<HashMap<String, String>> {
    let csv = command(sock, "show stat")?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
    let prefix = format!("{backend},s1,");
    let row = lines.find(|l| l.starts_with(&prefix))?;
    Some(
        header
            .iter()
            .zip(row.split(','))
            .map(|(h, v)| (h.to_string(), v.to_string()))
            .collect(),
    )
}

/// Sets the report and waits (up to `support::WAIT`) until HAProxy shows what `expect` accepts.
fn drive(
    sock: &Path,
    report: &Mutex<HealthReport>,
    status: Status,
    reason: &str,
    expect: impl Fn(&str, &str, &str) -> bool,
) -> (String, String, String) {
    drive_backend(sock, "be", report, status, reason, expect)
}

fn drive_backend(
    sock: &Path,
    backend: &str,
    report: &Mutex<HealthReport>,
    status: Status,
    reason: &str,
    expect: impl Fn(&str, &str, &str) -> bool,
) -> (String, String, String) {
    {
        let mut r = report.lock().expect("lock");
        r.status = status;
        r.reason = reason.to_string();
    }
    let deadline = Instant::now() + support::WAIT;
    let mut last = None;
    while Instant::now() < deadline {
        if let Some((s, w, a)) = backend_stat(sock, backend) {
            if expect(&s, &w, &a) {
                return (s, w, a);
            }
            last = Some((s, w, a));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("HAProxy {backend} did not follow {status:?}: last seen {last:?}");
}

#[test]
fn haproxy_follows_every_agent_line() {
    if !support::haproxy_or_skip("haproxy_follows_every_agent_line") {
        return;
    }
    let mut initial = HealthReport::starting(0);
    initial.status = Status::Pass;
    initial.reason = "healthy".into();
    let report = Arc::new(Mutex::new(initial));
    let for_agent = Arc::clone(&report);
    let agent = AgentServer::bind(
        "127.0.0.1:0".parse().expect("loopback"),
        Arc::new(move || for_agent.lock().expect("lock").clone()),
    )
    .expect("bind agent");
    let for_http = Arc::clone(&report);
    let http = HttpServer::bind(
        "127.0.0.1:0".parse().expect("loopback"),
        Handlers {
            report: Arc::new(move || for_http.lock().expect("lock").clone()),
            metrics: Arc::new(String::new),
        },
    )
    .expect("bind http");
    let backend = support::Acceptor::spawn(
        TcpListener::bind("127.0.0.1:0").expect("bind loopback"),
        Duration::from_secs(120),
    );
    let haproxy = Haproxy::start(backend.addr, agent.local_addr(), http.local_addr());
    let sock = haproxy.socket();

    drive(&sock, &report, Status::Pass, "healthy", |s, w, _| {
        s == "UP" && w == "100"
    });
    // The weight form NN% is relative to the configured weight (100 here).
    drive(
        &sock,
        &report,
        Status::Warn { weight: 62 },
        "cpu 78%",
        |s, w, _| s == "UP" && w == "62",
    );
    let (s, _, _) = drive(
        &sock,
        &report,
        Status::Drain,
        "operator: deploy",
        |s, _, _| s.starts_with("DRAIN"),
    );
    assert!(s.starts_with("DRAIN"), "{s}");
    // ready and 100% undo the drain and the lowered weight.
    drive(&sock, &report, Status::Pass, "healthy", |s, w, _| {
        s == "UP" && w == "100"
    });
    drive(
        &sock,
        &report,
        Status::Maint,
        "operator: maint",
        |s, _, _| s.starts_with("MAINT"),
    );
    drive(&sock, &report, Status::Pass, "healthy", |s, w, _| {
        s == "UP" && w == "100"
    });
    let (_, _, agent_said) = drive(
        &sock,
        &report,
        Status::Fail,
        "http check http://127.0.0.1:8080/ failed: HTTP 503",
        |s, _, _| s.starts_with("DOWN"),
    );
    assert!(
        agent_said.contains("failed: HTTP 503"),
        "agent description: {agent_said}"
    );
    drive(&sock, &report, Status::Pass, "healthy", |s, w, _| {
        s == "UP" && w == "100"
    });

    // `starting` changes nothing: after warn at 50%, a restarted guard keeps the server as it was.
    drive(
        &sock,
        &report,
        Status::Warn { weight: 50 },
        "cpu 80%",
        |s, w, _| s == "UP" && w == "50",
    );
    report.lock().expect("lock").status = Status::Starting;
    // Wait for HAProxy to have read a `starting` line: an agent check that finds no words ends
    // CHECKED ("No status change"), where the last one, "up ready 50%", ended L7OK. Then look.
    let row = support::wait_for(support::WAIT, || {
        server_row(&sock, "be")
            .filter(|r| r.get("agent_status").map(String::as_str) == Some("CHECKED"))
    })
    .unwrap_or_else(|| {
        let row = server_row(&sock, "be").unwrap_or_default();
        let seen: Vec<_> = ["status", "weight", "agent_status", "agent_desc", "last_agt"]
            .iter()
            .map(|c| (*c, row.get(*c)))
            .collect();
        panic!("HAProxy never found the agent's starting line changed nothing: {seen:?}")
    });
    assert_eq!(
        (row["status"].as_str(), row["weight"].as_str()),
        ("UP", "50")
    );

    // The HTTP path: `option httpchk` on /readyz/haproxy with `http-check disable-on-404`.
    let http_be = |status, expect: fn(&str) -> bool| {
        drive_backend(&sock, "be_http", &report, status, "x", |s, _, _| expect(s))
    };
    http_be(Status::Warn { weight: 50 }, |s| s == "UP");
    // A 404 under disable-on-404 is NOLB: no new traffic, but not DOWN.
    http_be(Status::Drain, |s| s == "NOLB");
    http_be(Status::Pass, |s| s == "UP");
    http_be(Status::Fail, |s| s.starts_with("DOWN"));
    http_be(Status::Pass, |s| s == "UP");
    http_be(Status::Maint, |s| s.starts_with("DOWN"));
    drop(haproxy);
}
