//! The watchdog, live: HAProxy (Debian's 2.6) in front of two servers, one of them a service
//! on the guard's host that leaks memory. A client sends requests through HAProxy at a steady
//! rate while the guard drains the host (HAProxy's agent check reads the drain), restarts the
//! service with its restart_command, waits for its check and readmits the host: not one
//! request fails (HAProxy is told not to retry), and the restarted service serves again.
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::netns::{Testbed, in_netns, live_or_skip, sh};

const LB: &str = "198.18.14.1";
const SRV: &str = "198.18.14.2";

/// The service: an HTTP server answering `TAG PID`, which keeps 512 KiB per request to `/`
/// when told to leak (its `/healthz` passes regardless). It writes its pid file once it
/// listens.
const APP: &str = r#"
import http.server, os, sys
addr, port, pidfile, tag, leak = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "leak"
kept = []
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if leak and self.path == "/":
            kept.append(b"x" * (512 * 1024))
        body = ("%s %d\n" % (tag, os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
s = S((addr, port), H)
open(pidfile + ".tmp", "w").write(str(os.getpid()))
os.rename(pidfile + ".tmp", pidfile)
s.serve_forever()
"#;

/// Processes started in the background (by pid file), HAProxy, killed on drop.
struct Procs {
    pid_files: Vec<PathBuf>,
    children: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for f in &self.pid_files {
            if let Ok(pid) = std::fs::read_to_string(f)
                .unwrap_or_default()
                .trim()
                .parse::<i32>()
            {
                // SAFETY: kill(2) of a process this test started (its pid file).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Starts the app in `ns`, detached (setsid), and waits for its pid file.
fn start_app(
    ns: &str,
    script: &Path,
    addr: &str,
    port: u16,
    pid_file: &Path,
    tag: &str,
    leak: &str,
) {
    let _ = std::fs::remove_file(pid_file);
    let status = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .args(["setsid", "-f", "python3"])
        .arg(script)
        .args([addr, &port.to_string()])
        .arg(pid_file)
        .args([tag, leak])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the app");
    assert!(status.success());
    support::wait_for(support::WAIT, || pid_file.exists().then_some(()))
        .unwrap_or_else(|| panic!("the app {tag} never wrote {}", pid_file.display()));
}

fn pid_of(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// One request through HAProxy: the body (`TAG PID`) of a 200, or why not.
fn request(to: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    let status = out.lines().next().unwrap_or_default().to_string();
    if !status.contains(" 200 ") {
        return Err(format!("answered {status:?}"));
    }
    Ok(out
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_string())
}

/// Each request's time and outcome.
type Requests = Arc<Mutex<Vec<(Instant, Result<String, String>)>>>;

#[test]
fn a_leaking_service_is_drained_restarted_and_readmitted_without_one_failed_request() {
    if !live_or_skip(
        "a_leaking_service_is_drained_restarted_and_readmitted_without_one_failed_request",
    ) || !support::haproxy_or_skip(
        "a_leaking_service_is_drained_restarted_and_readmitted_without_one_failed_request",
    ) {
        return;
    }
    let mut tb = Testbed::new();
    tb.tag = format!("w14{}", tb.tag);
    let lb = tb.netns("l");
    let srv = tb.netns("s");
    let (_, srv_if) = tb.link(&lb, &format!("{LB}/24"), &srv, &format!("{SRV}/24"));
    let dir = tb.tmp.clone();
    let script = dir.join("app.py");
    std::fs::write(&script, APP).unwrap();
    let a_pid = dir.join("a.pid");
    let b_pid = dir.join("b.pid");
    let mut procs = Procs {
        pid_files: vec![a_pid.clone(), b_pid.clone()],
        children: Vec::new(),
    };
    // The restart: stop the old process, start a new one (which does not leak: the fix).
    let restart = dir.join("restart.sh");
    std::fs::write(
        &restart,
        format!(
            "#!/bin/sh\n\
             pid=$(cat {pid})\n\
             kill \"$pid\"\n\
             i=0\n\
             while [ -d /proc/$pid ] && [ \"$(cut -d' ' -f3 /proc/$pid/stat)\" != Z ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
             rm -f {pid}\n\
             setsid -f python3 {script} {SRV} 8080 {pid} A fixed </dev/null >/dev/null 2>&1\n\
             echo restart.sh: started the service again >&2\n",
            pid = a_pid.display(),
            script = script.display(),
        ),
    )
    .unwrap();
    start_app(&srv, &script, SRV, 8080, &a_pid, "A", "leak");
    start_app(&lb, &script, "127.0.0.1", 8081, &b_pid, "B", "fixed");
    let first_pid = pid_of(&a_pid).unwrap();

    // HAProxy: never retries, so a request sent to a service that is restarting fails.
    let hap_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &hap_cfg,
        format!(
            "global\n\
             \x20   stats socket {sock} level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   retries 0\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             frontend fe\n\
             \x20   bind 127.0.0.1:8000\n\
             \x20   default_backend be\n\
             backend be\n\
             \x20   balance roundrobin\n\
             \x20   server a {SRV}:8080 check inter 200ms agent-check agent-addr {SRV} agent-port 9302 agent-inter 200ms\n\
             \x20   server b 127.0.0.1:8081 check inter 200ms\n",
            sock = dir.join("lb.sock").display()
        ),
    )
    .unwrap();
    procs.children.push(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{lb}"))
            .args(["haproxy", "-db", "-f"])
            .arg(&hap_cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts"),
    );

    let config = dir.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\ninterfaces = [\"{srv_if}\"]\n\
             [health]\nlisten = \"\"\nagent_listen = \"{SRV}:9302\"\n\
             warn_at = 99\ndrain_at = 100\npsi_warn_at = 99\npsi_drain_at = 100\n\
             [[health.checks]]\nname = \"app-http\"\ntype = \"http\"\ntarget = \"http://{SRV}:8080/healthz\"\ntimeout_ms = 500\n\
             [[watchdog]]\nname = \"app\"\ncheck = \"app-http\"\n\
             restart_command = [\"/bin/sh\", \"{restart}\"]\npid_file = \"{pid}\"\n\
             max_memory = \"64MiB\"\nfail_after = 2\ndrain_secs = 2\nmin_interval = \"10m\"\nrestart_timeout = \"20s\"\n",
            restart = restart.display(),
            pid = a_pid.display(),
        ),
    )
    .unwrap();
    tb.start_guard(&srv, &["--config", config.to_str().unwrap()]);
    tb.guard_ok(&["allow", "add", LB]);

    // The client: a request every 50 ms through HAProxy, from before the leak crosses the
    // limit until after the readmit.
    let results: Requests = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (results, stop, lb) = (Arc::clone(&results), Arc::clone(&stop), lb.clone());
        std::thread::spawn(move || {
            in_netns(&lb, move || {
                let to: SocketAddr = "127.0.0.1:8000".parse().unwrap();
                // HAProxy may still be starting.
                support::wait_for(support::WAIT, || request(to).ok());
                while !stop.load(Ordering::Relaxed) {
                    let r = request(to);
                    results.lock().unwrap().push((Instant::now(), r));
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
    };

    // Meanwhile: every health output says drain with the watchdog's reason, at some point.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut drain_seen = None;
    let mut readmitted = false;
    while Instant::now() < deadline {
        let out = tb.guard(&["health", "--json"]);
        // (A machine busy with other builds may drain the host for its CPU too: HAProxy then
        // sends everything to the other server, which is no failure either.)
        if let Ok(h) = serde_json::from_slice::<Value>(&out.stdout)
            && h["status"] == "drain"
            && h["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("watchdog: "))
            && drain_seen.is_none()
        {
            drain_seen = h["reason"].as_str().map(String::from);
        }
        let st = tb.guard_ok(&["watchdog", "status", "--json"]);
        let w: Value = serde_json::from_str(&st).unwrap();
        let history = w[0]["history"].to_string();
        if history.contains("recovered: readmit") && w[0]["phase"]["phase"] == "watching" {
            readmitted = true;
            break;
        }
        assert!(
            !history.contains("failed") && !history.contains("did not recover"),
            "the watchdog failed: {st}\n{}",
            tb.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        readmitted,
        "never readmitted: {}\nlast requests: {:?}\n{}",
        tb.guard_ok(&["watchdog", "status"]),
        results
            .lock()
            .unwrap()
            .iter()
            .rev()
            .take(4)
            .collect::<Vec<_>>(),
        tb.logs()
    );
    let new_pid = pid_of(&a_pid).expect("the restarted service's pid");
    assert_ne!(new_pid, first_pid, "the service was not restarted");
    // The restarted service serves through HAProxy again (the client keeps going meanwhile).
    let served_again = support::wait_for(Duration::from_secs(30), || {
        results
            .lock()
            .unwrap()
            .iter()
            .any(|(_, r)| r.as_deref() == Ok(&format!("A {new_pid}")))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let results = results.lock().unwrap();
    let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    let by = |body: &str| {
        results
            .iter()
            .filter(|(_, r)| r.as_deref() == Ok(body))
            .count()
    };
    let (old_a, new_a) = (by(&format!("A {first_pid}")), by(&format!("A {new_pid}")));
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(5)],
        tb.logs()
    );
    assert!(results.len() > 100, "only {} requests", results.len());
    assert!(
        old_a > 0 && new_a > 0,
        "A served {old_a} before and {new_a} after the restart"
    );
    assert!(served_again.is_some());
    let reason = drain_seen.expect("the health never said drain");
    assert!(
        reason.starts_with("watchdog: app memory ") && reason.contains("MiB > 64MiB"),
        "{reason}"
    );
    let logs = tb.logs();
    for step in [
        "watchdog app: draining the host: app memory",
        "watchdog app: restarting the service by command",
        "watchdog app: restarted; waiting for its check",
        "watchdog app: the service passes its check again: readmitting the host",
    ] {
        assert!(logs.contains(step), "no {step:?} in the log:\n{logs}");
    }
    let text = tb.guard_ok(&["watchdog", "status"]);
    assert!(text.contains("app") && text.contains("64MiB"), "{text}");
    // Cleanup (also on failure, by drop): the processes, then the testbed.
    drop(procs);
    let _ = sh(&["true"]);
}
