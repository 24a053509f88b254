//! Live loopback tests of the health HTTP server: real sockets on 127.0.0.1, exact status
//! lines, headers and bodies, and the bounds on slow and excess clients.
mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard::{
    health::{HealthReport, Status},
    serve::http::{Handlers, HttpServer, MAX_CONNECTIONS},
};
use support::{WAIT, tcp_accepted, wait_for};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

fn server(status: Status) -> (HttpServer, Arc<Mutex<HealthReport>>) {
    let mut report = HealthReport::starting(1_700_000_000);
    report.status = status;
    report.reason = "cpu 78% (warn at 70%)".into();
    let shared = Arc::new(Mutex::new(report));
    let for_report = Arc::clone(&shared);
    let handlers = Handlers {
        report: Arc::new(move || for_report.lock().expect("report lock").clone()),
        metrics: Arc::new(|| "# HELP guard_up Up.\n# TYPE guard_up gauge\nguard_up 1\n".into()),
    };
    (
        HttpServer::bind(loopback(), handlers).expect("bind loopback"),
        shared,
    )
}

/// Sends `request` and reads the whole response (the server closes after one).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    String::from_utf8(out).expect("ascii response")
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: guard\r\n\r\n").as_bytes(),
    )
}

fn split(response: &str) -> (&str, &str) {
    response.split_once("\r\n\r\n").expect("head and body")
}

#[test]
fn livez_answers_exactly_ok() {
    let (srv, _) = server(Status::Fail);
    assert_eq!(
        get(srv.local_addr(), "/livez"),
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\nok"
    );
}

#[test]
fn readyz_on_warn_is_200_health_json_and_envoy_degraded() {
    let (srv, _) = server(Status::Warn { weight: 62 });
    let response = get(srv.local_addr(), "/readyz");
    let (head, body) = split(&response);
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("HTTP/1.1 200 OK"));
    let headers: Vec<&str> = lines.collect();
    assert!(
        headers.contains(&"Content-Type: application/health+json"),
        "{head}"
    );
    // Field names are case-insensitive (RFC 9110 5.1); hyper writes them in title case.
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("x-envoy-degraded: true")),
        "{head}"
    );
    assert!(
        headers.contains(&format!("Content-Length: {}", body.len()).as_str()),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(json["status"], "warn");
    assert_eq!(json["output"], "cpu 78% (warn at 70%)");
}

#[test]
fn readyz_follows_the_state_as_it_changes() {
    let (srv, report) = server(Status::Pass);
    assert!(get(srv.local_addr(), "/readyz").starts_with("HTTP/1.1 200 OK\r\n"));
    report.lock().expect("lock").status = Status::Maint;
    let response = get(srv.local_addr(), "/readyz");
    assert!(
        response.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{response}"
    );
    assert!(!response.contains("x-envoy-degraded"));
    let json: serde_json::Value = serde_json::from_str(split(&response).1).expect("json");
    assert_eq!(json["status"], "fail");
}

#[test]
fn readyz_haproxy_answers_404_on_drain() {
    let (srv, _) = server(Status::Drain);
    let body = "drain 0%: cpu 78% (warn at 70%)\n";
    assert_eq!(
        get(srv.local_addr(), "/readyz/haproxy"),
        format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    );
}

#[test]
fn metrics_is_prometheus_text_from_the_callers_closure() {
    let (srv, _) = server(Status::Pass);
    let response = get(srv.local_addr(), "/metrics");
    let (head, body) = split(&response);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert!(body.ends_with("guard_up 1\n"));
}

#[test]
fn head_gets_headers_without_a_body() {
    let (srv, _) = server(Status::Pass);
    let response = exchange(srv.local_addr(), b"HEAD /livez HTTP/1.1\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(
        response
            .ends_with("Content-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"),
        "{response}"
    );
}

#[test]
fn other_methods_get_405_and_unknown_paths_404_and_garbage_400() {
    let (srv, _) = server(Status::Pass);
    let response = exchange(
        srv.local_addr(),
        b"POST /readyz HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        response.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
        "{response}"
    );
    assert!(response.contains("\r\nAllow: GET, HEAD\r\n"));
    assert!(get(srv.local_addr(), "/admin").starts_with("HTTP/1.1 404 Not Found\r\n"));
    let response = exchange(srv.local_addr(), b"\x16\x03\x01 hello tls\r\n\r\n");
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
}

#[test]
fn oversized_request_head_gets_431() {
    let (srv, _) = server(Status::Pass);
    let mut request = b"GET /livez HTTP/1.1\r\nX-Filler: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 16 * 1024));
    let response = exchange(srv.local_addr(), &request);
    assert!(
        response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{response}"
    );
}

#[test]
fn silent_client_gets_408_after_the_read_timeout() {
    let (srv, _) = server(Status::Pass);
    let start = Instant::now();
    let response = exchange(srv.local_addr(), b"GET /livez HTTP/1.1\r\n");
    assert!(
        response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    assert!(start.elapsed() < Duration::from_secs(4));
}

/// A connection to `addr` from `source` (a loopback address other than 127.0.0.1).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{source}:0").parse().expect("source address"))?;
            socket.connect(addr).await
        })
        .expect("connect from the preferred source");
    let s = s.into_std().expect("std stream");
    s.set_nonblocking(false).expect("blocking");
    s
}

#[test]
fn excess_connections_are_closed_at_once_never_503_and_a_preferred_probe_is_answered() {
    let mut report = HealthReport::starting(1_700_000_000);
    report.status = Status::Pass;
    let handlers = Handlers {
        report: Arc::new(move || report.clone()),
        metrics: Arc::new(String::new),
    };
    let preferred: std::net::IpAddr = "127.0.0.2".parse().expect("address");
    let srv = HttpServer::bind_with_priority(
        loopback(),
        handlers,
        Some(Arc::new(move |ip| ip == preferred)),
    )
    .expect("bind loopback");
    let addr = srv.local_addr();
    // Fill every ordinary slot with a client that sends nothing, and wait until the server has
    // taken them all in.
    let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect"))
        .collect();
    wait_for(WAIT, || tcp_accepted(addr, MAX_CONNECTIONS).then_some(()))
        .expect("the server never accepted every idle client");
    // One more ordinary client, sending nothing: closed without an answer (or, if an idle one
    // was cut meanwhile and freed a slot, served: a 408 for its silence), never told 503
    // because the server is busy. (That a full pool never waits is a unit test of Pools.)
    let mut excess = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    excess
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    match excess.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => out.clear(),
        Err(e) => panic!("reading the excess client's answer: {e}"),
    }
    let response = String::from_utf8(out).expect("ascii");
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{response}"
    );
    // The load balancer (a preferred peer) gets the real state at once.
    let start = Instant::now();
    let mut probe = connect_from("127.0.0.2", addr);
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: guard\r\n\r\n")
        .expect("send");
    let mut out = Vec::new();
    probe.read_to_end(&mut out).expect("read");
    let out = String::from_utf8(out).expect("ascii");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    drop(idle);
}

#[test]
fn bind_failure_names_the_address() {
    let taken = TcpListener::bind(loopback()).expect("bind loopback");
    let addr = taken.local_addr().expect("addr");
    let handlers = Handlers {
        report: Arc::new(|| HealthReport::starting(0)),
        metrics: Arc::new(String::new),
    };
    let Err(err) = HttpServer::bind(addr, handlers) else {
        panic!("bound an address in use");
    };
    assert_eq!(
        err.to_string(),
        format!("cannot listen on {addr} for the health HTTP server")
    );
    assert!(
        std::error::Error::source(&err).is_some(),
        "the OS error is kept"
    );
}
