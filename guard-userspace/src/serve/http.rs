//! The health HTTP server (`/livez`, `/readyz`, `/readyz/haproxy`, `/metrics`) on hyper:
//! GET and HEAD only, one request per connection (`Connection: close`).
//!
//! hyper bounds the request head ([`MAX_HEAD`], over it `431`) and the time to send it
//! ([`READ_TIMEOUT`]); tower-http bounds the body and the handling. Connections are bounded
//! by [`MAX_CONNECTIONS`] (and [`MAX_PREFERRED_CONNECTIONS`] for the allow-listed load
//! balancers, see [`super::Pools`]); a connection over its pool's bound is closed at once,
//! never answered `503` because the server is busy: a probe gets the real state or nothing.
//!
//! Hand-written here: the routing (four paths, a pure function), and the `408` for a head
//! that did not arrive in time, which hyper closes without answering.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use serde_json::{Map, Value, json};
use tokio::{io::AsyncWriteExt, net::TcpListener};
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, service_fn};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer};

use super::{Pools, PriorityFn, Running, accept_loop, linger};
use crate::health::{HealthReport, Observed, Status};

/// Connections handled at once from ordinary clients; more are closed at once. Each idle one
/// costs a task and hyper's read buffer (at most [`MAX_HEAD`]).
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections handled at once from the preferred peers (the allow-listed load balancers).
pub const MAX_PREFERRED_CONNECTIONS: usize = 256;
/// Request line plus headers, in bytes; more is `431` (hyper's smallest read buffer bound).
pub const MAX_HEAD: usize = 8192;
/// Time a client has to send its request head; then `408`.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Time the server has to produce and write the response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request body taken (a health probe sends none).
const MAX_BODY: usize = 1024;

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
        source: std::io::Error,
    },
}

/// Binds `addr` for [`serve`] (port 0 picks one).
///
/// # Errors
///
/// [`HttpServerError::Bind`] naming the address when it cannot be bound (in use, not local,
/// no permission).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, HttpServerError> {
    super::listen(addr).map_err(|source| HttpServerError::Bind { addr, source })
}

/// Serves `listener` until `cancel`: one task per connection, bounded as the module says.
pub async fn serve(
    listener: TcpListener,
    handlers: Handlers,
    priority: Option<PriorityFn>,
    cancel: CancellationToken,
) {
    let handlers = Arc::new(handlers);
    let pools = Pools::new(MAX_CONNECTIONS, MAX_PREFERRED_CONNECTIONS, priority);
    accept_loop(
        listener,
        pools,
        cancel,
        move |stream, _peer, permit| {
            let handlers = Arc::clone(&handlers);
            async move {
                let _permit = permit;
                serve_connection(stream, handlers).await;
            }
        },
        // Over the bound: closed, never answered 503.
        drop,
    )
    .await;
}

async fn serve_connection(stream: tokio::net::TcpStream, handlers: Arc<Handlers>) {
    let mut io = TokioIo::new(stream);
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            hyper::StatusCode::REQUEST_TIMEOUT,
            WRITE_TIMEOUT,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY))
        .service(service_fn(move |req: hyper::Request<_>| {
            let handlers = Arc::clone(&handlers);
            async move { Ok::<_, Infallible>(respond(&req, &handlers)) }
        }));
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .keep_alive(false)
        .title_case_headers(true)
        .auto_date_header(false)
        .serve_connection(&mut io, TowerToHyperService::new(service))
        .await;
    let mut stream = io.into_inner();
    if let Err(e) = served
        && e.is_timeout()
    {
        let r = Response::text(408, "request timeout\n");
        let _ = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&r.to_bytes(false))).await;
    }
    linger(stream).await;
}

/// The hyper response for `req`: [`route`]'s, with its headers in order.
fn respond<B>(req: &hyper::Request<B>, handlers: &Handlers) -> hyper::Response<Full<Bytes>> {
    let head_only = req.method() == hyper::Method::HEAD;
    // Only the origin form (`/path`) is a request target here (RFC 9112 3.2.1).
    let origin = req.uri().scheme().is_none() && req.uri().authority().is_none();
    let r = if origin {
        route(req.method().as_str(), req.uri().path(), handlers)
    } else {
        Response::text(400, "bad request\n")
    };
    let mut out = hyper::Response::builder().status(r.status);
    for (name, value) in &r.headers {
        out = out.header(*name, value.as_str());
    }
    out = out
        .header("Content-Length", r.body.len())
        .header("Cache-Control", "no-store")
        .header("Connection", "close");
    let body = if head_only {
        Bytes::new()
    } else {
        Bytes::from(r.body)
    };
    out.body(Full::new(body))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())))
}

/// A health HTTP server on a thread of its own (for callers without a runtime). Dropping it
/// (or [`HttpServer::shutdown`]) stops accepting and closes the listener.
pub struct HttpServer {
    inner: Running,
}

impl HttpServer {
    /// Binds `addr` (port 0 picks one; see [`HttpServer::local_addr`]) and starts serving.
    ///
    /// # Errors
    ///
    /// [`HttpServerError::Bind`] naming the address when it cannot be bound.
    pub fn bind(addr: SocketAddr, handlers: Handlers) -> Result<Self, HttpServerError> {
        Self::bind_with_priority(addr, handlers, None)
    }

    /// As [`HttpServer::bind`], with the peers that get the reserved pool.
    ///
    /// # Errors
    ///
    /// As [`HttpServer::bind`].
    pub fn bind_with_priority(
        addr: SocketAddr,
        handlers: Handlers,
        priority: Option<PriorityFn>,
    ) -> Result<Self, HttpServerError> {
        let listener = bind(addr)?;
        let inner = Running::start("guard-http", listener, move |l, cancel| {
            serve(l, handlers, priority, cancel)
        })
        .map_err(|source| HttpServerError::Bind { addr, source })?;
        Ok(Self { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Stops accepting and waits until the listener is closed.
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

#[cfg(test)]
mod tests;
