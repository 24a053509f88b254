//! "403, then block", live: HAProxy (Debian's 2.6) counts requests per source in a stick table
//! and answers 403 above 10 in 10 s; the guard polls the table and bans in XDP a source over
//! the condition for `for_secs`. The abuser's packets then stop reaching HAProxy (its
//! connections time out), an allow-listed abuser keeps getting its 403s, and another client is
//! served throughout. A condition on a column the table lacks, or an unreachable socket, stops
//! the start with the field named.
mod support;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::netns::{Testbed, in_netns, live_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SRV: &str = "198.18.15.1";
const ABUSER: &str = "198.18.15.2";
const CLIENT: &str = "198.18.15.3";
const ALLOWED: &str = "198.18.15.4";
const FOR_SECS: u64 = 3;

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Status(u16),
    /// No answer to the SYN within the timeout: dropped.
    Timeout,
    Error(String),
}

/// One request from `from` to HAProxy, with a 500 ms connect timeout.
fn request(from: &str, rt: &tokio::runtime::Runtime) -> Outcome {
    let from: SocketAddr = format!("{from}:0").parse().unwrap();
    let to: SocketAddr = format!("{SRV}:80").parse().unwrap();
    rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(from).unwrap();
        let mut s = match tokio::time::timeout(Duration::from_millis(500), sock.connect(to)).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(e)) => return Outcome::Error(format!("connect: {e}")),
            Ok(Ok(s)) => s,
        };
        if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await {
            return Outcome::Error(format!("write: {e}"));
        }
        let mut out = Vec::new();
        match tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await {
            Ok(Ok(_)) => {}
            other => return Outcome::Error(format!("read: {other:?}")),
        }
        let text = String::from_utf8_lossy(&out);
        text.split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .map_or_else(
                || Outcome::Error(format!("answer {text:?}")),
                Outcome::Status,
            )
    })
}

type Log = Arc<Mutex<Vec<(Instant, Outcome)>>>;

/// Sends a request from `from` every `every` until `stop`.
fn sender(
    ns: &str,
    from: &'static str,
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> (Log, std::thread::JoinHandle<()>) {
    let log: Log = Arc::default();
    let (l, stop, ns) = (Arc::clone(&log), Arc::clone(stop), ns.to_string());
    let t = std::thread::spawn(move || {
        in_netns(&ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            while !stop.load(Ordering::Relaxed) {
                let o = request(from, &rt);
                l.lock().unwrap().push((Instant::now(), o));
                std::thread::sleep(every);
            }
        })
    });
    (log, t)
}

#[test]
fn a_source_haproxy_keeps_refusing_is_banned_in_xdp_while_others_are_served() {
    let name = "a_source_haproxy_keeps_refusing_is_banned_in_xdp_while_others_are_served";
    if !live_or_skip(name) || !support::haproxy_or_skip(name) {
        return;
    }
    let mut tb = Testbed::new();
    tb.tag = format!("w14{}", tb.tag);
    let srv = tb.netns("s");
    let cl = tb.netns("c");
    let (srv_if, cl_if) = tb.link(&srv, &format!("{SRV}/24"), &cl, &format!("{ABUSER}/24"));
    for a in [CLIENT, ALLOWED] {
        support::netns::sh(&[
            "ip",
            "-n",
            &cl,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &cl_if,
        ]);
    }
    let dir = tb.tmp.clone();
    let sock = dir.join("hap.sock");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n\
             \x20   stats socket {} level admin\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 1s\n\
             \x20   timeout client 5s\n\
             \x20   timeout server 5s\n\
             frontend per_ip_rates\n\
             \x20   bind {SRV}:80\n\
             \x20   stick-table type ip size 1k expire 60s store http_req_rate(10s)\n\
             \x20   http-request track-sc0 src\n\
             \x20   http-request deny deny_status 403 if {{ sc_http_req_rate(0) gt 10 }}\n\
             \x20   http-request return status 200 content-type text/plain string ok\n",
            sock.display()
        ),
    )
    .unwrap();
    let _haproxy = Haproxy(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{srv}"))
            .args(["haproxy", "-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts"),
    );
    support::wait_for(support::WAIT, || sock.exists().then_some(()))
        .expect("HAProxy's runtime API socket");
    let written = std::sync::atomic::AtomicUsize::new(0);
    let config = |when: &str, socket: &str| {
        let path = dir.join(format!(
            "guard-{}.toml",
            written.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(
            &path,
            format!(
                "[datapath]\ninterfaces = [\"{srv_if}\"]\n\
                 [health]\nlisten = \"\"\nagent_listen = \"\"\n\
                 [[escalate.haproxy]]\nsocket = \"{socket}\"\ntable = \"per_ip_rates\"\nwhen = \"{when}\"\nfor_secs = {FOR_SECS}\nban = \"10m\"\n"
            ),
        )
        .unwrap();
        path.display().to_string()
    };
    let s = sock.display().to_string();
    // Bad input stops the start, naming the entry and saying why.
    for (bad, expect) in [
        (config("gpc0 > 1", &s), "Data type not stored"),
        (
            config("http_req_rate > 10", "/nonexistent/hap.sock"),
            "cannot reach HAProxy's runtime API",
        ),
    ] {
        let (status, log) =
            tb.run_guard_to_exit(&srv, &["--config", &bad], Duration::from_secs(20));
        assert!(!status.success());
        assert!(
            log.contains("escalate.haproxy[0]") && log.contains(expect),
            "{log}"
        );
    }
    tb.start_guard(&srv, &["--config", &config("http_req_rate > 10", &s)]);
    tb.guard_ok(&["allow", "add", ALLOWED]);

    let stop = Arc::new(AtomicBool::new(false));
    let (abuser, t1) = sender(&cl, ABUSER, Duration::from_millis(50), &stop);
    let (allowed, t2) = sender(&cl, ALLOWED, Duration::from_millis(50), &stop);
    // Under HAProxy's limit: fewer than 10 requests in any 10 s.
    let (client, t3) = sender(&cl, CLIENT, Duration::from_millis(1500), &stop);
    // The abuser is refused by HAProxy first, then its SYNs go unanswered: dropped in XDP.
    let first_403 = support::wait_for(support::WAIT, || {
        abuser
            .lock()
            .unwrap()
            .iter()
            .find(|(_, o)| *o == Outcome::Status(403))
            .map(|(t, _)| *t)
    })
    .expect("HAProxy never answered the abuser 403");
    let blocked = support::wait_for(support::WAIT, || {
        let log = abuser.lock().unwrap();
        let n = log.len();
        (n >= 3 && log[n - 3..].iter().all(|(_, o)| *o == Outcome::Timeout)).then(|| log[n - 3].0)
    })
    .unwrap_or_else(|| panic!("the abuser was never blocked:\n{}", tb.logs()));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in [t1, t2, t3] {
        t.join().unwrap();
    }
    let took = blocked.duration_since(first_403);
    // for_secs from the first poll that saw it over, plus a poll and a busy machine's slack.
    assert!(
        took <= Duration::from_secs(FOR_SECS + 4),
        "blocked {took:?} after the first 403 (for_secs = {FOR_SECS})"
    );
    let abuser = abuser.lock().unwrap();
    let after: Vec<_> = abuser.iter().filter(|(t, _)| *t > blocked).collect();
    assert!(
        after.len() > 5 && after.iter().all(|(_, o)| *o == Outcome::Timeout),
        "the abuser still reached HAProxy after the ban: {after:?}"
    );
    let client = client.lock().unwrap();
    assert!(client.len() >= 4, "{}", client.len());
    assert!(
        client.iter().all(|(_, o)| *o == Outcome::Status(200)),
        "the other client was not served throughout: {:?}",
        client
            .iter()
            .filter(|(_, o)| *o != Outcome::Status(200))
            .collect::<Vec<_>>()
    );
    let allowed = allowed.lock().unwrap();
    assert!(allowed.iter().any(|(_, o)| *o == Outcome::Status(403)));
    assert!(
        !allowed.iter().any(|(_, o)| *o == Outcome::Timeout),
        "the allow-listed source was blocked"
    );
    let bans = tb.guard_ok(&["bans"]);
    assert!(
        bans.contains(&format!("{ABUSER}/32")) && bans.contains("l7:haproxy"),
        "{bans}"
    );
    assert!(!bans.contains(ALLOWED), "{bans}");
    let logs = tb.logs();
    assert!(
        logs.contains(&format!("banned {ABUSER}/32 in XDP for 10m: l7:haproxy")),
        "{logs}"
    );
    assert!(logs.contains(&format!("not banning {ALLOWED}")), "{logs}");
}
