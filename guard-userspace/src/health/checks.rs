//! Local checks of the service behind the host: a TCP connect or an HTTP GET (http:// only),
//! each with a timeout, run off the daemon's tick by [`CheckRunner`] so a slow check never stalls it.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::HealthError;

/// Timeout of a check that does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest accepted timeout, in milliseconds.
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// Most checks a configuration may hold (each round runs them all at once, a thread each).
pub const MAX_CHECKS: usize = 32;
/// Bytes of an HTTP response read while looking for the status line.
const STATUS_LINE_LIMIT: usize = 4096;

/// A check as configured (`[[health.checks]]`), before validation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
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
        let rest = &url[7..];
        if rest
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii())
        {
            return Err("the URL must be ASCII without spaces or control characters");
        }
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported");
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or("expected :PORT after ]")?),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("the URL has no host");
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err("the port must be a number from 1 to 65535"),
                Ok(p) => p,
            },
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

    /// Runs the check once; returns within about the timeout (name resolution of a host name
    /// is the system resolver's and is not bounded here: prefer addresses or /etc/hosts names).
    pub fn run(&self) -> CheckResult {
        let start = Instant::now();
        let deadline = start + self.timeout();
        let outcome = match self {
            Self::Tcp { target, .. } => {
                connect(target, deadline).map(|(addr, _)| format!("connected to {addr}"))
            }
            Self::Http { url, .. } => http_get(url, deadline),
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

fn connect(target: &str, deadline: Instant) -> Result<(SocketAddr, TcpStream), String> {
    let addrs = target
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {target}: {e}"))?;
    let mut last = format!("{target} resolved to no address");
    // A name may resolve to several addresses; try a few, within the one deadline.
    for addr in addrs.take(4) {
        let Some(left) = remaining(deadline) else {
            return Err(format!("timed out connecting to {target}"));
        };
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok((addr, s)),
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

fn http_get(url: &HttpUrl, deadline: Instant) -> Result<String, String> {
    let authority = url.authority();
    let (_, mut stream) = connect(&authority, deadline)?;
    let timed_out = || format!("timed out waiting for {authority}");
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: guard-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path
    );
    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .and_then(|()| stream.write_all(request.as_bytes()))
        .map_err(|e| format!("sending the request to {authority}: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    // Bounded by bytes (STATUS_LINE_LIMIT / at least 1 per read) and by the deadline.
    while !buf.windows(2).any(|w| w == b"\r\n") {
        if buf.len() >= STATUS_LINE_LIMIT {
            return Err(format!(
                "no HTTP status line in the first {STATUS_LINE_LIMIT} bytes"
            ));
        }
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(e) => return Err(format!("reading the response from {authority}: {e}")),
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let code =
        parse_status_line(line).ok_or_else(|| format!("not an HTTP response from {authority}"))?;
    if (200..400).contains(&code) {
        Ok(format!("HTTP {code}"))
    } else {
        Err(format!("HTTP {code} (expected 2xx or 3xx)"))
    }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

/// Runs every check at once, a scoped thread each; returns when the slowest has finished.
pub fn run_all(checks: &[LocalCheck]) -> Vec<CheckResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks.iter().map(|c| s.spawn(|| c.run())).collect();
        handles
            .into_iter()
            .zip(checks)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| CheckResult {
                    kind: c.kind(),
                    target: c.target().to_string(),
                    ok: false,
                    elapsed: Duration::ZERO,
                    detail: "the check panicked".to_string(),
                })
            })
            .collect()
    })
}

struct Shared {
    checks: Mutex<Arc<Vec<LocalCheck>>>,
    results: Mutex<Option<Vec<CheckResult>>>,
}

/// Runs the configured checks every `interval` on its own thread and keeps the latest results.
/// Dropping it stops the thread (after the round in progress, at most the longest timeout).
pub struct CheckRunner {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CheckRunner {
    /// Starts the runner; the first round starts at once.
    ///
    /// # Errors
    ///
    /// The I/O error if the thread cannot be spawned.
    pub fn spawn(checks: Vec<LocalCheck>, interval: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            checks: Mutex::new(Arc::new(checks)),
            results: Mutex::new(None),
        });
        let (stop, stopped) = mpsc::channel::<()>();
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("guard-health-checks".into())
            .spawn(move || {
                loop {
                    let checks =
                        Arc::clone(&worker.checks.lock().unwrap_or_else(PoisonError::into_inner));
                    let results = run_all(&checks);
                    *worker
                        .results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(results);
                    match stopped.recv_timeout(interval) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        // A message or a dropped sender: stop.
                        Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        Ok(Self {
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The latest round's results; `None` until the first round has finished.
    pub fn results(&self) -> Option<Vec<CheckResult>> {
        self.shared
            .results
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the checks (a reload); the next round uses them. Results of the old checks stay
    /// until then, so a reload does not send the host back to `starting`.
    pub fn set_checks(&self, checks: Vec<LocalCheck>) {
        *self
            .shared
            .checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(checks);
    }
}

impl Drop for CheckRunner {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn spec(kind: &str, target: &str) -> CheckSpec {
        CheckSpec {
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
}
