//! Tests of the health HTTP routes and of the server's answers to bad requests.
use super::*;
use crate::health::{CheckStatus, HealthReport, Observation};

fn report(status: Status) -> HealthReport {
    let mut r = HealthReport::starting(1_700_000_000);
    r.status = status;
    r.reason = "cpu 78% (warn at 70%)".into();
    r.observations = vec![Observation {
        component: "cpu".into(),
        measurement: "utilization".into(),
        component_id: None,
        observed: Some(Observed::Number(78.0)),
        unit: Some("percent".into()),
        threshold: Some("warn 70%, drain 90%".into()),
        status: CheckStatus::Warn,
        output: None,
    }];
    r
}

fn handlers(status: Status) -> Handlers {
    Handlers {
        report: Arc::new(move || report(status)),
        metrics: Arc::new(|| "guard_up 1\n".to_string()),
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[test]
fn readyz_is_200_for_pass_and_warn_and_503_otherwise() {
    for (status, code) in [
        (Status::Pass, 200),
        (Status::Warn { weight: 50 }, 200),
        (Status::Drain, 503),
        (Status::Maint, 503),
        (Status::Fail, 503),
        (Status::Starting, 503),
    ] {
        let r = route("GET", "/readyz", &handlers(status));
        assert_eq!(r.status, code, "{status:?}");
        assert_eq!(header(&r, "Content-Type"), Some(HEALTH_JSON));
    }
}

#[test]
fn readyz_warn_sets_envoy_degraded_and_pass_does_not() {
    let warn = route("GET", "/readyz", &handlers(Status::Warn { weight: 50 }));
    assert_eq!(header(&warn, "x-envoy-degraded"), Some("true"));
    let pass = route("GET", "/readyz", &handlers(Status::Pass));
    assert_eq!(header(&pass, "x-envoy-degraded"), None);
}

#[test]
fn readyz_body_follows_the_health_check_draft() {
    let r = route("GET", "/readyz", &handlers(Status::Drain));
    let v: Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(v["status"], "fail", "drain is fail in the draft's terms");
    assert_eq!(v["output"], "cpu 78% (warn at 70%)");
    let cpu = &v["checks"]["cpu:utilization"][0];
    assert_eq!(cpu["observedValue"], 78.0);
    assert_eq!(cpu["observedUnit"], "percent");
    assert_eq!(cpu["status"], "warn");
    assert_eq!(cpu["componentType"], "system");
    assert_eq!(cpu["time"], "2023-11-14T22:13:20Z");
    let pass = health_json(&report(Status::Pass));
    assert_eq!(pass["status"], "pass");
    assert!(pass.get("output").is_none(), "output is omitted on pass");
    assert_eq!(
        pass["notes"][0],
        "guard state pass, weight 100%: cpu 78% (warn at 70%)"
    );
}

#[test]
fn readyz_haproxy_is_404_on_drain_for_disable_on_404() {
    for (status, code) in [
        (Status::Pass, 200),
        (Status::Warn { weight: 5 }, 200),
        (Status::Drain, 404),
        (Status::Maint, 503),
        (Status::Fail, 503),
        (Status::Starting, 503),
    ] {
        assert_eq!(
            route("GET", "/readyz/haproxy", &handlers(status)).status,
            code
        );
    }
}

#[test]
fn other_methods_are_405_and_unknown_paths_404() {
    let r = route("POST", "/readyz", &handlers(Status::Pass));
    assert_eq!((r.status, header(&r, "Allow")), (405, Some("GET, HEAD")));
    assert_eq!(route("GET", "/nope", &handlers(Status::Pass)).status, 404);
    assert_eq!(
        route("GET", "/livez?verbose", &handlers(Status::Fail)).status,
        200
    );
}

/// Sends `request` to `addr` and returns the status line of the answer.
fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(request).expect("send");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    text.lines().next().unwrap_or_default().to_string()
}

#[test]
fn malformed_request_lines_are_400_and_other_methods_405() {
    let srv =
        HttpServer::bind("127.0.0.1:0".parse().unwrap(), handlers(Status::Pass)).expect("bind");
    let addr = srv.local_addr();
    assert_eq!(
        status_line(addr, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
        "HTTP/1.1 200 OK"
    );
    for bad in [
        &b"GET /readyz\r\n\r\n"[..],
        b"GET  /readyz HTTP/1.1\r\n\r\n",
        b"GET readyz HTTP/1.1\r\n\r\n",
        b"GET /readyz HTTP/2\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
    ] {
        assert_eq!(
            status_line(addr, bad),
            "HTTP/1.1 400 Bad Request",
            "{bad:?}"
        );
    }
    // A method is a token, case-sensitive (RFC 9110 9.1): `get` is not GET.
    assert_eq!(
        status_line(addr, b"get /readyz HTTP/1.1\r\n\r\n"),
        "HTTP/1.1 405 Method Not Allowed"
    );
}

#[test]
fn head_response_has_headers_but_no_body() {
    let r = Response::text(200, "ok");
    let head = String::from_utf8(r.to_bytes(true)).expect("ascii");
    assert!(
        head.ends_with("Content-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    );
}
