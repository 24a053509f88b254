//! Tests of the local checks: URLs, targets, tcp and http against loopback servers, the runner.
use std::{
    io::{Read, Write},
    net::TcpListener,
};

use super::*;

fn spec(kind: &str, target: &str) -> CheckSpec {
    CheckSpec {
        name: None,
        kind: kind.into(),
        target: target.into(),
        timeout_ms: Some(1000),
    }
}

#[test]
fn http_url_parts_are_split_for_the_request() {
    let u = HttpUrl::parse("http://127.0.0.1:8080/health?full=1").expect("valid");
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("127.0.0.1", 8080, "/health?full=1")
    );
    let u = HttpUrl::parse("HTTP://[::1]/").expect("valid");
    assert_eq!(
        (u.host.as_str(), u.port, u.authority()),
        ("::1", 80, "[::1]:80".into())
    );
    assert_eq!(HttpUrl::parse("http://localhost").expect("valid").path, "/");
    assert_eq!(HttpUrl::parse("http://h?x").expect("valid").path, "/?x");
}

#[test]
fn http_url_rejects_https_credentials_bad_ports_and_injection() {
    for bad in [
        "https://127.0.0.1/",
        "ftp://x/",
        "http://u:p@127.0.0.1/",
        "http://127.0.0.1:0/",
        "http://127.0.0.1:99999/",
        "http:///path",
        "http://127.0.0.1/a b",
        "http://127.0.0.1/a\r\nX: y",
        "http://[::1/",
    ] {
        assert!(HttpUrl::parse(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn unknown_check_type_names_the_field_and_value() {
    let err = LocalCheck::from_spec(2, &spec("icmp", "127.0.0.1:1")).expect_err("rejected");
    assert_eq!(
        err.to_string(),
        "health.checks[2].type = \"icmp\": expected \"tcp\" or \"http\""
    );
}

#[test]
fn bad_targets_and_timeouts_are_rejected() {
    assert!(LocalCheck::from_spec(0, &spec("tcp", "127.0.0.1")).is_err());
    assert!(LocalCheck::from_spec(0, &spec("tcp", "::1:80")).is_err());
    assert!(LocalCheck::from_spec(0, &spec("tcp", "[::1]:80")).is_ok());
    assert!(LocalCheck::from_spec(0, &spec("tcp", "localhost:80")).is_ok());
    let mut s = spec("tcp", "127.0.0.1:80");
    s.timeout_ms = Some(0);
    let err = LocalCheck::from_spec(1, &s).expect_err("zero timeout");
    assert!(err.to_string().contains("timeout_ms = 0"), "{err}");
}

#[test]
fn tcp_check_passes_on_a_listener_and_fails_when_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr").to_string();
    let check = LocalCheck::from_spec(0, &spec("tcp", &addr)).expect("valid");
    let r = check.run();
    assert!(r.ok, "{r:?}");
    drop(listener);
    let r = check.run();
    assert!(!r.ok, "{r:?}");
    assert!(r.detail.contains("refused"), "{}", r.detail);
}

fn one_shot_http(response: &'static str) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(2))).ok();
        let mut req = vec![0u8; 1024];
        let n = s.read(&mut req).unwrap_or(0);
        req.truncate(n);
        s.write_all(response.as_bytes()).ok();
        req
    });
    (format!("http://{addr}/healthz"), t)
}

#[test]
fn http_check_passes_on_2xx_and_sends_a_proper_request() {
    let (url, t) = one_shot_http("HTTP/1.1 204 No Content\r\n\r\n");
    let r = LocalCheck::from_spec(0, &spec("http", &url))
        .expect("valid")
        .run();
    assert!(r.ok, "{r:?}");
    assert_eq!(r.detail, "HTTP 204");
    let req = String::from_utf8(t.join().expect("server")).expect("ascii");
    assert!(
        req.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"),
        "{req}"
    );
    assert!(req.ends_with("Connection: close\r\n\r\n"), "{req}");
}

#[test]
fn http_check_fails_on_5xx_and_on_garbage() {
    let (url, t) = one_shot_http("HTTP/1.0 503 Service Unavailable\r\n\r\n");
    let r = LocalCheck::from_spec(0, &spec("http", &url))
        .expect("valid")
        .run();
    t.join().ok();
    assert!(!r.ok);
    assert_eq!(r.detail, "HTTP 503 (expected 2xx or 3xx)");
    let (url, t) = one_shot_http("SSH-2.0-OpenSSH\r\n");
    let r = LocalCheck::from_spec(0, &spec("http", &url))
        .expect("valid")
        .run();
    t.join().ok();
    assert!(!r.ok);
    assert!(r.detail.starts_with("not an HTTP response"), "{}", r.detail);
}

#[test]
fn http_check_times_out_on_a_silent_server() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let mut s = spec("http", &url);
    s.timeout_ms = Some(200);
    let start = Instant::now();
    // The kernel completes the handshake from the backlog; nobody ever answers.
    let r = LocalCheck::from_spec(0, &s).expect("valid").run();
    assert!(!r.ok);
    assert!(r.detail.contains("timed out"), "{}", r.detail);
    assert!(start.elapsed() < Duration::from_secs(2));
    drop(listener);
}

#[test]
fn runner_reports_none_before_the_first_round_then_results() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr").to_string();
    let check = LocalCheck::from_spec(0, &spec("tcp", &addr)).expect("valid");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();
    let runner = CheckRunner::spawn(vec![check], Duration::from_millis(50)).expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut results = None;
    while Instant::now() < deadline {
        results = runner.results();
        if results.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let results = results.expect("a round within 5 s");
    assert_eq!(results.len(), 1);
    assert!(results[0].ok, "{results:?}");
    runner.set_checks(Vec::new());
    drop(runner);
}

#[test]
fn a_round_that_never_finishes_turns_its_last_results_failed_after_a_few_intervals() {
    // A listener that takes the connection and never answers: the http check waits out its
    // 10 s timeout, far past three rounds of 50 ms.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let answering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = std::sync::Arc::clone(&answering);
    std::thread::spawn(move || {
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
    let check = LocalCheck::from_spec(
        0,
        &CheckSpec {
            name: None,
            kind: "http".into(),
            target: format!("http://{addr}/"),
            timeout_ms: Some(10_000),
        },
    )
    .expect("valid");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();
    let runner = CheckRunner::spawn(vec![check], Duration::from_millis(50)).expect("spawn");
    let wait = |want: bool| {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(r) = runner.results()
                && r[0].ok == want
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "no ok={want} within 3 s: {:?}",
                runner.results()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait(true);
    answering.store(false, std::sync::atomic::Ordering::SeqCst);
    let r = wait(false);
    assert!(r[0].detail.contains("no result for"), "{r:?}");
    drop(runner);
}

#[test]
fn fresh_results_stand_and_old_ones_fail_naming_their_age() {
    let r = vec![CheckResult {
        kind: CheckKind::Tcp,
        target: "x:1".into(),
        ok: true,
        elapsed: Duration::from_millis(3),
        detail: "connected to 127.0.0.1:1".into(),
    }];
    let s = Duration::from_secs(3);
    assert!(stale(r.clone(), Duration::from_secs(2), s)[0].ok);
    let old = stale(r, Duration::from_secs(5), s);
    assert!(!old[0].ok);
    assert!(
        old[0].detail.starts_with("no result for 5.0 s"),
        "{}",
        old[0].detail
    );
    assert!(old[0].detail.contains("connected to"), "{}", old[0].detail);
}
