//! Local checks of the service behind the host: a TCP connect or an HTTP GET (http:// only),
//! each with a timeout, run off the daemon's tick by [`CheckRunner`] so a slow check never stalls it.
//!
//! The runner is a task on the daemon's runtime; each round runs every check at once, tcp with
//! tokio's connect and http with hyper-util's client (URLs parsed as hyper's `Uri`), each
//! under its timeout.
use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpStream, sync::watch, task::JoinHandle};

use super::HealthError;

/// Timeout of a check that does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted timeout, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Most checks a configuration may hold (each round runs them all at once, a thread each).
pub const MAX_CHECKS: usize = 32;

/// A check as configured (`[[health.checks]]`), before validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// A name for the check, by which a `[[watchdog]]` names the check of its service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `tcp` or `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `HOST:PORT` for tcp, `http://HOST[:PORT]/PATH` for http.
    pub target: String,
    /// Defaults to [`DEFAULT_TIMEOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Which kind of check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
        }
    }
}

/// An `http://` URL split for a request. Only what a health check needs: no userinfo, no TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PATH][?QUERY]`.
    ///
    /// # Errors
    ///
    /// A static description of what is wrong, for [`HealthError::CheckTarget`].
    pub fn parse(url: &str) -> Result<Self, &'static str> {
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err("https is not supported: use a tcp check on the TLS port");
        }
        if !lower.starts_with("http://") {
            return Err("expected a URL starting with http://");
        }
        if url.contains('@') {
            return Err("credentials in the URL are not supported");
        }
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| "not a valid URL: expected http://HOST[:PORT]/PATH, ASCII, no spaces")?;
        let authority = uri.authority().ok_or("the URL has no host")?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err("the URL has no host");
        }
        // The port as written (hyper's `port_u16` cannot tell a bad port from none).
        let text = authority.as_str();
        let after_host = &text[text.rfind(']').map_or(0, |i| i + 1)..];
        let port = match after_host.rsplit_once(':') {
            None => 80,
            Some((_, p)) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
                Ok(p) => p,
            },
        };
        let path = match uri.query() {
            Some(q) => format!("{}?{q}", uri.path()),
            None => uri.path().to_string(),
        };
        Ok(Self {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// `host:port` for connecting and for the `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A validated local check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalCheck {
    /// Connect to `HOST:PORT`.
    Tcp { target: String, timeout: Duration },
    /// GET the URL; 2xx and 3xx pass.
    Http {
        target: String,
        url: HttpUrl,
        timeout: Duration,
    },
}

impl LocalCheck {
    /// Validates the `index`th configured check.
    ///
    /// # Errors
    ///
    /// [`HealthError::UnknownCheckType`], [`HealthError::CheckTarget`] or
    /// [`HealthError::CheckTimeout`], naming the field and the value.
    pub fn from_spec(index: usize, spec: &CheckSpec) -> Result<Self, HealthError> {
        let CheckSpec {
            name: _,
            kind,
            target,
            timeout_ms,
        } = spec;
        let timeout = match *timeout_ms {
            None => DEFAULT_TIMEOUT,
            Some(ms @ 1..=MAX_TIMEOUT_MS) => Duration::from_millis(ms),
            Some(value) => return Err(HealthError::CheckTimeout { index, value }),
        };
        let bad_target = |reason: &'static str| HealthError::CheckTarget {
            index,
            target: target.clone(),
            reason,
        };
        match kind.to_ascii_lowercase().as_str() {
            "tcp" => {
                validate_host_port(target).map_err(bad_target)?;
                Ok(Self::Tcp {
                    target: target.clone(),
                    timeout,
                })
            }
            "http" => Ok(Self::Http {
                url: HttpUrl::parse(target).map_err(bad_target)?,
                target: target.clone(),
                timeout,
            }),
            _ => Err(HealthError::UnknownCheckType {
                index,
                kind: kind.clone(),
            }),
        }
    }

    pub fn kind(&self) -> CheckKind {
        match self {
            Self::Tcp { .. } => CheckKind::Tcp,
            Self::Http { .. } => CheckKind::Http,
        }
    }

    /// The target as configured.
    pub fn target(&self) -> &str {
        match self {
            Self::Tcp { target, .. } | Self::Http { target, .. } => target,
        }
    }

    pub fn timeout(&self) -> Duration {
        match self {
            Self::Tcp { timeout, .. } | Self::Http { timeout, .. } => *timeout,
        }
    }

    /// Runs the check once, on a runtime of its own (for callers without one).
    pub fn run(&self) -> CheckResult {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(self.run_async()),
            Err(e) => self.failed(Duration::ZERO, format!("cannot start a runtime: {e}")),
        }
    }

    fn failed(&self, elapsed: Duration, detail: String) -> CheckResult {
        CheckResult {
            kind: self.kind(),
            target: self.target().to_string(),
            ok: false,
            elapsed,
            detail,
        }
    }

    /// Runs the check once; returns within about the timeout (name resolution of a host name
    /// is the system resolver's, on a blocking thread: prefer addresses or /etc/hosts names).
    pub async fn run_async(&self) -> CheckResult {
        let start = Instant::now();
        let deadline = start + self.timeout();
        let outcome = match self {
            Self::Tcp { target, .. } => connect(target, deadline)
                .await
                .map(|(addr, _)| format!("connected to {addr}")),
            Self::Http { url, .. } => http_get(url, deadline).await,
        };
        let (ok, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        CheckResult {
            kind: self.kind(),
            target: self.target().to_string(),
            ok,
            elapsed: start.elapsed(),
            detail,
        }
    }
}

/// The outcome of one run of a [`LocalCheck`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub kind: CheckKind,
    pub target: String,
    pub ok: bool,
    pub elapsed: Duration,
    /// What happened: `connected to ...`, `HTTP 200`, or why it failed.
    pub detail: String,
}

fn validate_host_port(target: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(v6) = target.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the address")?;
        (host, after.strip_prefix(':').ok_or("expected HOST:PORT")?)
    } else {
        target.rsplit_once(':').ok_or("expected HOST:PORT")?
    };
    if host.is_empty() || host.contains(':') && !target.starts_with('[') {
        return Err("expected HOST:PORT, with an IPv6 address in brackets ([::1]:8080)");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("the port must be a number from 1 to 65535"),
        Ok(_) => Ok(()),
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

async fn connect(target: &str, deadline: Instant) -> Result<(SocketAddr, TcpStream), String> {
    let timed_out = || format!("timed out connecting to {target}");
    let left = remaining(deadline).ok_or_else(timed_out)?;
    let addrs: Vec<SocketAddr> = tokio::time::timeout(left, tokio::net::lookup_host(target))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| format!("cannot resolve {target}: {e}"))?
        .collect();
    let mut last = format!("{target} resolved to no address");
    // A name may resolve to several addresses; try a few, within the one deadline.
    for addr in addrs.into_iter().take(4) {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        match tokio::time::timeout(left, TcpStream::connect(addr)).await {
            Err(_) => return Err(timed_out()),
            Ok(Ok(s)) => return Ok((addr, s)),
            Ok(Err(e)) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// The checks' HTTP client: hyper-util's, one request per connection, headers as written.
fn client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http1_title_case_headers(true)
        .build(connector)
}

async fn http_get(url: &HttpUrl, deadline: Instant) -> Result<String, String> {
    let authority = url.authority();
    let timed_out = || format!("timed out waiting for {authority}");
    let uri: hyper::Uri = format!("http://{authority}{}", url.path)
        .parse()
        .map_err(|e| format!("bad URL: {e}"))?;
    let request = hyper::Request::get(uri)
        .header("Host", authority.as_str())
        .header("User-Agent", "guard-health")
        .header("Accept", "*/*")
        .header("Connection", "close")
        .body(Empty::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let left = remaining(deadline).ok_or_else(timed_out)?;
    let response = match tokio::time::timeout(left, client().request(request)).await {
        Err(_) => return Err(timed_out()),
        Ok(Ok(r)) => r,
        Ok(Err(e)) if e.is_connect() => {
            return Err(format!("connect to {authority}: {}", source_text(&e)));
        }
        Ok(Err(e)) => {
            return Err(
                match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
                    Some(h) if h.is_parse() || h.is_parse_status() => {
                        format!("not an HTTP response from {authority}")
                    }
                    _ => format!("reading the response from {authority}: {}", source_text(&e)),
                },
            );
        }
    };
    let code = response.status().as_u16();
    if (200..400).contains(&code) {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code} (expected 2xx or 3xx)"))
    }
}

/// The innermost cause of an error, for a one-line detail.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(s) = cur.source() {
        cur = s;
    }
    cur.to_string()
}

/// Runs every check at once; returns when the slowest has finished.
pub async fn run_all(checks: &[LocalCheck]) -> Vec<CheckResult> {
    futures_util::future::join_all(checks.iter().map(LocalCheck::run_async)).await
}

/// Rounds without a new result after which the last one counts as failed: a round that hangs
/// (a resolver that never answers, a check waiting out a long timeout, a runner that died)
/// must not leave a `pass` standing.
pub const STALE_ROUNDS: u32 = 3;

/// Runs the configured checks every `interval` as a task on the current runtime and keeps the
/// latest results. Dropping it stops the task.
pub struct CheckRunner {
    checks: watch::Sender<Arc<Vec<LocalCheck>>>,
    /// The latest round's results and when it finished.
    results: watch::Receiver<Option<(Instant, Vec<CheckResult>)>>,
    /// Results older than this count as failed.
    stale_after: Duration,
    task: JoinHandle<()>,
}

impl CheckRunner {
    /// Starts the runner on the current tokio runtime; the first round starts at once.
    ///
    /// # Errors
    ///
    /// An I/O error if called outside a runtime.
    pub fn spawn(checks: Vec<LocalCheck>, interval: Duration) -> std::io::Result<Self> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("the check runner needs a runtime: {e}")))?;
        let (checks_tx, mut checks_rx) = watch::channel(Arc::new(checks));
        let (results_tx, results) = watch::channel(None);
        let task = handle.spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let checks = Arc::clone(&checks_rx.borrow_and_update());
                let round = run_all(&checks).await;
                if results_tx.send(Some((Instant::now(), round))).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            checks: checks_tx,
            results,
            stale_after: interval * STALE_ROUNDS,
            task,
        })
    }

    /// The latest round's results; `None` until the first round has finished. Results older
    /// than [`STALE_ROUNDS`] intervals come back failed, saying how old they are: a check
    /// whose answer takes longer than that counts as failed while it waits, whatever its
    /// timeout (which bounds how long one attempt may hold a connection).
    pub fn results(&self) -> Option<Vec<CheckResult>> {
        let (at, results) = self.results.borrow().clone()?;
        Some(stale(results, at.elapsed(), self.stale_after))
    }

    /// A reader of the rounds, each as it finishes and when (the watchdogs').
    pub fn subscribe(&self) -> watch::Receiver<Option<(Instant, Vec<CheckResult>)>> {
        self.results.clone()
    }

    /// How old a round's results may be before they count as failed.
    pub fn stale_after(&self) -> Duration {
        self.stale_after
    }

    /// Replaces the checks (a reload); the next round uses them. Results of the old checks stay
    /// until then, so a reload does not send the host back to `starting`.
    pub fn set_checks(&self, checks: Vec<LocalCheck>) {
        self.checks.send_replace(Arc::new(checks));
    }
}

/// `results`, failed with a reason if they are `age` old and that is past `stale_after`.
pub fn stale(results: Vec<CheckResult>, age: Duration, stale_after: Duration) -> Vec<CheckResult> {
    if age <= stale_after {
        return results;
    }
    results
        .into_iter()
        .map(|r| CheckResult {
            ok: false,
            elapsed: age,
            detail: format!(
                "no result for {:.1} s (the check round has not finished; last: {})",
                age.as_secs_f64(),
                r.detail
            ),
            ..r
        })
        .collect()
}

impl Drop for CheckRunner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests;
