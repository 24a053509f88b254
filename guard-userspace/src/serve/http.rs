//! A minimal HTTP/1.1 server for health and metrics (`/livez`, `/readyz`, `/readyz/haproxy`,
//! `/metrics`): std::net, a thread per connection up to a bound, GET/HEAD only, `Connection: close`.
//!
//! It also holds the accept loop the agent-check server shares: a listener polled so that
//! shutdown is prompt, connections handed to at most `max` worker threads, and the overflow
//! answered at once without blocking (so slow clients cannot pile up threads).
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::{Map, Value, json};

use crate::health::{HealthReport, Observed, Status};

/// Connections handled at once; more are answered `503` at once and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Request line plus headers, in bytes; more is `431`.
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time a client has to take the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `/readyz` content type (draft-inadarei-api-health-check, section 3).
pub const HEALTH_JSON: &str = "application/health+json";
/// The Prometheus text exposition format, version 0.0.4.
pub const METRICS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The current health report, cheap to call (read a shared copy the daemon updates).
pub type ReportFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;
/// The `/metrics` body, in the Prometheus text format.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// What the endpoints serve.
#[derive(Clone)]
pub struct Handlers {
    pub report: ReportFn,
    pub metrics: MetricsFn,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpServerError {
    #[error("cannot listen on {addr} for the health HTTP server")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the health HTTP server on {addr}")]
    Start {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A running HTTP server. Dropping it (or [`HttpServer::shutdown`]) stops accepting; requests
/// in progress finish on their own threads.
pub struct HttpServer {
    inner: Server,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one; see [`HttpServer::local_addr`]) and starts serving.
    ///
    /// # Errors
    ///
    /// [`HttpServerError::Bind`] naming the address when it cannot be bound (in use, not
    /// local, no permission), [`HttpServerError::Start`] if the thread cannot start.
    pub fn bind(addr: SocketAddr, handlers: Handlers) -> Result<Self, HttpServerError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| HttpServerError::Bind { addr, source })?;
        let handlers = Arc::new(handlers);
        let worker: Handler = Arc::new(move |s| serve_connection(s, &handlers));
        let inner = Server::start(
            listener,
            "guard-http",
            MAX_CONNECTIONS,
            worker,
            Arc::new(busy_503),
        )
        .map_err(|source| HttpServerError::Start { addr, source })?;
        Ok(Self { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stops accepting and waits for the accept loop (not for requests in progress).
    pub fn shutdown(self) {}
}

/// An HTTP response, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    /// The bytes on the wire; `head_only` for HEAD (same headers, no body).
    pub fn to_bytes(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut bytes = out.into_bytes();
        if !head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Routes one request. `target` may carry a query, which is ignored.
pub fn route(method: &str, target: &str, handlers: &Handlers) -> Response {
    if method != "GET" && method != "HEAD" {
        let mut r = Response::text(405, "method not allowed: use GET or HEAD\n");
        r.headers.push(("Allow", "GET, HEAD".to_string()));
        return r;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    match path {
        // The daemon answering at all is its liveness.
        "/livez" => Response::text(200, "ok"),
        "/readyz" => readyz(&(handlers.report)()),
        "/readyz/haproxy" => readyz_haproxy(&(handlers.report)()),
        "/metrics" => Response::new(200, METRICS_TEXT, (handlers.metrics)()),
        _ => Response::text(404, "not found\n"),
    }
}

/// `/readyz`: 200 for pass and warn, 503 otherwise; `x-envoy-degraded` on warn, which makes
/// Envoy's active health checking mark the host degraded rather than healthy.
pub fn readyz(report: &HealthReport) -> Response {
    let body = health_json(report).to_string();
    let mut r = Response::new(
        if report.status.serves() { 200 } else { 503 },
        HEALTH_JSON,
        body,
    );
    if matches!(report.status, Status::Warn { .. }) {
        r.headers.push(("x-envoy-degraded", "true".to_string()));
    }
    r
}

/// `/readyz/haproxy`: 200 for pass and warn, 404 for drain (so that `http-check
/// disable-on-404` drains rather than downs the server), 503 for fail, maint and starting.
pub fn readyz_haproxy(report: &HealthReport) -> Response {
    let status = match report.status {
        Status::Pass | Status::Warn { .. } => 200,
        Status::Drain => 404,
        Status::Maint | Status::Fail | Status::Starting => 503,
    };
    Response::text(
        status,
        format!(
            "{} {}%: {}\n",
            report.status.name(),
            report.weight(),
            report.reason
        ),
    )
}

/// The report in the format of draft-inadarei-api-health-check ("Health Check Response
/// Format for HTTP APIs"): `status` pass|warn|fail (drain, maint and starting are fail,
/// since the host wants no new traffic), `output` the reason (omitted for pass, as the draft
/// says it should be), `notes` the guard's own state and weight, `checks` keyed
/// `component:measurement`.
pub fn health_json(report: &HealthReport) -> Value {
    let status = match report.status {
        Status::Pass => "pass",
        Status::Warn { .. } => "warn",
        _ => "fail",
    };
    let time = crate::state::format_unix(report.time);
    let mut checks: Map<String, Value> = Map::new();
    for o in &report.observations {
        let mut c = Map::new();
        if let Some(id) = &o.component_id {
            c.insert("componentId".into(), json!(id));
        }
        let kind = match o.component.as_str() {
            "cpu" | "memory" | "io" => "system",
            _ => "component",
        };
        c.insert("componentType".into(), json!(kind));
        match &o.observed {
            Some(Observed::Bool(b)) => c.insert("observedValue".into(), json!(b)),
            Some(Observed::Number(n)) => c.insert("observedValue".into(), json!(n)),
            Some(Observed::Text(t)) => c.insert("observedValue".into(), json!(t)),
            None => None,
        };
        if let Some(unit) = &o.unit {
            c.insert("observedUnit".into(), json!(unit));
        }
        c.insert("status".into(), json!(o.status));
        c.insert("time".into(), json!(time));
        if let Some(out) = &o.output {
            c.insert("output".into(), json!(out));
        }
        let key = format!("{}:{}", o.component, o.measurement);
        if let Value::Array(list) = checks.entry(key).or_insert_with(|| json!([])) {
            list.push(Value::Object(c));
        }
    }
    let mut body = Map::new();
    body.insert("status".into(), json!(status));
    if status != "pass" {
        body.insert("output".into(), json!(report.reason));
    }
    body.insert("releaseId".into(), json!(env!("CARGO_PKG_VERSION")));
    body.insert(
        "notes".into(),
        json!([format!(
            "guard state {}, weight {}%: {}",
            report.status.name(),
            report.weight(),
            report.reason
        )]),
    );
    body.insert("description".into(), json!("guard host health"));
    body.insert("checks".into(), Value::Object(checks));
    Value::Object(body)
}

fn serve_connection(mut stream: TcpStream, handlers: &Handlers) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let (response, head_only) = match read_head(&mut stream) {
        Ok(head) => match parse_request_line(&head) {
            Some((method, target)) => (route(method, target, handlers), method == "HEAD"),
            None => (Response::text(400, "bad request\n"), false),
        },
        Err(HeadError::TooLarge) => (Response::text(431, "request head too large\n"), false),
        Err(HeadError::TimedOut) => (Response::text(408, "request timeout\n"), false),
        // The client went away: nobody to answer.
        Err(HeadError::Closed) => return,
    };
    if stream.write_all(&response.to_bytes(head_only)).is_ok() {
        finish(stream);
    }
}

enum HeadError {
    TooLarge,
    TimedOut,
    Closed,
}

/// Reads up to the blank line ending the head, within [`READ_TIMEOUT`] and [`MAX_HEAD`].
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    // Bounded: each pass reads at least one byte or returns, and MAX_HEAD caps the bytes.
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TimedOut);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Closed)?;
        let want = (MAX_HEAD - head.len()).min(buf.len());
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::TimedOut);
            }
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// Where the head ends: after CRLF CRLF, or LF LF from lenient clients (RFC 9112 §2.2).
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// `METHOD SP request-target SP HTTP/1.x` (RFC 9112 §3).
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !version.starts_with("HTTP/1.")
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !target.starts_with('/')
    {
        return None;
    }
    Some((method, target))
}

fn busy_503(mut stream: TcpStream) {
    let r = Response {
        status: 503,
        headers: vec![("Retry-After", "1".to_string())],
        body: Vec::new(),
    };
    // Non-blocking: a response this small fits the socket buffer; if not, the client is gone.
    let _ = stream.set_nonblocking(true);
    let _ = stream.write(&r.to_bytes(false));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Sends FIN after the response, then reads briefly what the client still sends, so that
/// closing with unread input does not reset the connection and destroy the response in
/// flight (RFC 9112 §9.6, "tear-down").
pub(crate) fn finish(mut stream: TcpStream) {
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 1024];
    for _ in 0..32 {
        if Instant::now() >= deadline {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Handles one accepted connection.
pub(crate) type Handler = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A listener's accept loop on its own thread. Dropping it stops the loop within ~100 ms.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts accepting. Each connection runs `handle` on a new thread while fewer than `max`
    /// do; beyond that `busy` runs inline on the accept thread and must not block.
    pub(crate) fn start(
        listener: TcpListener,
        name: &str,
        max: usize,
        handle: Handler,
        busy: Handler,
    ) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let worker_name = format!("{name}-conn");
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let active = Arc::new(AtomicUsize::new(0));
                while !stopping.load(Ordering::Relaxed) {
                    wait_readable(&listener, 100);
                    // Take what is queued, a bounded batch, then check for stop again.
                    for _ in 0..256 {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                dispatch(stream, &active, max, &handle, &busy, &worker_name)
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                // Out of descriptors or memory: back off rather than spin.
                                log::warn!("{addr}: accept failed: {e}");
                                std::thread::sleep(Duration::from_millis(50));
                                break;
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Decrements the active count when a worker ends, even by panic.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn dispatch(
    stream: TcpStream,
    active: &Arc<AtomicUsize>,
    max: usize,
    handle: &Handler,
    busy: &Handler,
    name: &str,
) {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure of it anyway.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    if active.fetch_add(1, Ordering::AcqRel) >= max {
        active.fetch_sub(1, Ordering::AcqRel);
        busy(stream);
        return;
    }
    let slot = Slot(Arc::clone(active));
    let handle = Arc::clone(handle);
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _slot = slot;
            handle(stream);
        });
    if let Err(e) = spawned {
        // The closure, with its stream and slot, is dropped: the connection closes.
        log::warn!("cannot start a connection thread: {e}");
    }
}

/// Waits until `listener` has a connection to accept, or `timeout_ms` passes.
fn wait_readable(listener: &TcpListener, timeout_ms: i32) {
    let mut fds = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `fds` is one valid, initialised pollfd that outlives the call, and nfds is 1.
    // The result is not needed: accept() on the non-blocking listener tells what is ready.
    unsafe { libc::poll(&mut fds, 1, timeout_ms) };
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn request_line_parsing_rejects_malformed_lines() {
        assert_eq!(
            parse_request_line(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/readyz"))
        );
        for bad in [
            &b"GET /readyz\r\n\r\n"[..],
            b"GET  /readyz HTTP/1.1\r\n\r\n",
            b"get /readyz HTTP/1.1\r\n\r\n",
            b"GET readyz HTTP/1.1\r\n\r\n",
            b"GET /readyz HTTP/2\r\n\r\n",
            b"\xff\xfe\r\n\r\n",
        ] {
            assert_eq!(parse_request_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn head_response_has_headers_but_no_body() {
        let r = Response::text(200, "ok");
        let head = String::from_utf8(r.to_bytes(true)).expect("ascii");
        assert!(head.ends_with(
            "Content-Length: 2\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
        ));
    }
}
