//! The control socket: one JSON request line in, one JSON response line out, over a Unix
//! stream socket (mode 0600). The server dispatches to [`Control`]; [`call`] is the client.
//!
//! ```text
//! -> {"cmd":"list_add","list":"deny","cidr":"203.0.113.0/24","ttl_secs":600,"reason":"abuse"}
//! <- {"ok":{"added":{"replaced":false}}}
//! -> {"cmd":"unban","cidr":"192.0.2.1/32"}
//! <- {"error":{"message":"no ban matches 192.0.2.1/32"}}
//! ```
use std::{
    fs,
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cidr::Cidr,
    control::{
        AddOutcome, BanInfo, Control, ImportOutcome, ReloadReport, StatsReport, StatusReport,
        TopSource, top_sources,
    },
    dataplane::{Datapath, List},
    health::{HealthReport, Override, OverrideMode},
    state::ListRecord,
};

/// The largest request accepted: room for a netset of a few million entries.
pub const MAX_REQUEST: u64 = 256 << 20;

/// How long either side waits for the other before giving up on a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// `guard top`'s sampling interval bounds.
pub const TOP_INTERVAL_MS: std::ops::RangeInclusive<u64> = 100..=10_000;

/// A request: `{"cmd": "<name>", ...fields}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    ListAdd {
        list: List,
        cidr: Cidr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    ListDel {
        list: List,
        cidr: Cidr,
    },
    ListShow {
        list: List,
    },
    /// All or nothing; the client parses the netset file (see `control::parse_netset`).
    ListImport {
        list: List,
        entries: Vec<Cidr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Bans,
    Unban {
        cidr: Cidr,
    },
    Stats,
    /// The `n` heaviest sources over `interval_ms` (100 to 10,000).
    Top {
        n: usize,
        interval_ms: u64,
    },
    Status,
    /// Re-read the config file the daemon was started with.
    Reload,
    /// Detach from every interface, remove the pins, and stop the daemon.
    Detach,
    /// The current health report.
    Health,
    /// `guard drain|maint [--for D] [--reason R]`, `guard ready`.
    Operator {
        mode: OverrideMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        for_secs: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

/// A response: `{"ok": <reply>}` or `{"error": {"message": "..."}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error { message: String },
}

/// What a request returns when it succeeds, one variant per kind of answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Added(AddOutcome),
    Deleted,
    Entries(Vec<ListRecord>),
    Imported(ImportOutcome),
    Bans(Vec<BanInfo>),
    Unbanned(Vec<BanInfo>),
    Stats(StatsReport),
    Top {
        interval_ms: u64,
        sources: Vec<TopSource>,
    },
    Status(Box<StatusReport>),
    Reloaded(ReloadReport),
    Detached {
        interfaces: Vec<String>,
    },
    Health(Box<HealthReport>),
    /// The override now in force (`None` after `guard ready`) and the first health report
    /// that took it into account (or the latest, if none came within a few seconds).
    Operator {
        operator: Option<Override>,
        report: Box<HealthReport>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "cannot reach the guard daemon at {}: is `guard run` running? ({error})",
        path.display()
    )]
    Connect { path: PathBuf, error: io::Error },
    #[error("lost the connection to the guard daemon at {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the guard daemon at {} sent an answer this guard cannot read: is it another version?", path.display())]
    BadResponse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the guard daemon at {} closed the connection without answering", path.display())]
    NoResponse { path: PathBuf },
    /// The daemon understood the request and refused it.
    #[error("{message}")]
    Refused { message: String },
    #[error("cannot create the socket directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another guard daemon is already serving {}: stop it first", path.display())]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket: remove it or choose another --socket", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot bind the control socket {}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Sends one request to the daemon at `socket` and returns its reply.
///
/// # Errors
///
/// [`ApiError::Connect`] if no daemon listens there (with the OS error),
/// [`ApiError::Refused`] with the daemon's message if it refused the request, and I/O or
/// protocol errors.
pub fn call(socket: &Path, request: &Request) -> Result<Reply, ApiError> {
    call_timeout(socket, request, IO_TIMEOUT)
}

/// [`call`], giving up after `timeout` for each read and write (health checks run under
/// their caller's own timeout, and a hung daemon must not hang them).
///
/// # Errors
///
/// As [`call`].
pub fn call_timeout(
    socket: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Reply, ApiError> {
    let path = socket.to_path_buf();
    let mut stream = UnixStream::connect(socket).map_err(|error| ApiError::Connect {
        path: path.clone(),
        error,
    })?;
    let io_err = |source| ApiError::Io {
        path: path.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    stream.flush().map_err(io_err)?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    if answer.trim().is_empty() {
        return Err(ApiError::NoResponse { path });
    }
    match serde_json::from_str(&answer) {
        Ok(Response::Ok(reply)) => Ok(reply),
        Ok(Response::Error { message }) => Err(ApiError::Refused { message }),
        Err(source) => Err(ApiError::BadResponse { path, source }),
    }
}

/// Creates the control socket at `path`: its parent directory if missing, a stale socket file
/// of a dead daemon replaced, mode 0600.
///
/// # Errors
///
/// [`ApiError::InUse`] if a daemon answers there, [`ApiError::NotASocket`] if another kind
/// of file is in the way, and directory or bind errors.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| ApiError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
    }
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse {
                    path: path.to_path_buf(),
                });
            }
            // A stale socket of a dead daemon: the rename below replaces it.
        }
        Ok(_) => {
            return Err(ApiError::NotASocket {
                path: path.to_path_buf(),
            });
        }
        Err(_) => {}
    }
    // Bound in a private directory, made 0600 there and renamed into place, so the socket is
    // never reachable with wider permissions (no process-wide umask games).
    let bind_err = |source| ApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let private = path.with_file_name(format!(".{name}.bind-{}", std::process::id()));
    let _ = fs::remove_dir_all(&private);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(bind_err)?;
    let tmp = private.join("s");
    let bound = UnixListener::bind(&tmp).and_then(|l| {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)?;
        Ok(l)
    });
    let _ = fs::remove_dir_all(&private);
    let listener = bound.map_err(bind_err)?;
    Ok(listener)
}

/// What serves requests: the daemon's handler, or a test's.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request; an error is a message for the operator.
    fn handle(&self, request: Request) -> Result<Reply, String>;
}

/// Accepts connections on `listener` in a thread, each served in its own thread (so a slow
/// `top` does not hold up others), until the process exits.
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("guard-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let handler = Arc::clone(&handler);
                        let spawned = thread::Builder::new()
                            .name("guard-api-conn".into())
                            .spawn(move || serve_one(stream, handler.as_ref()));
                        if let Err(e) = spawned {
                            log::error!("control socket: cannot start a thread for a client: {e}");
                        }
                    }
                    Err(e) => {
                        log::warn!("control socket: accept failed: {e}");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .expect("spawning the control socket thread")
}

fn serve_one(stream: UnixStream, handler: &dyn Handler) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut line = String::new();
    let read = match stream.try_clone() {
        Ok(s) => BufReader::new(s.take(MAX_REQUEST)).read_line(&mut line),
        Err(e) => Err(e),
    };
    let response = match read {
        Err(e) => Response::Error {
            message: format!("cannot read the request: {e}"),
        },
        Ok(_) if !line.ends_with('\n') => Response::Error {
            message: format!(
                "the request is not one complete line (at most {MAX_REQUEST} bytes, ending in a newline)"
            ),
        },
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(request) => match handler.handle(request) {
                Ok(reply) => Response::Ok(reply),
                Err(message) => Response::Error { message },
            },
        },
    };
    let mut out = serde_json::to_vec(&response).expect("responses always serialize");
    out.push(b'\n');
    let mut stream = stream;
    if let Err(e) = stream.write_all(&out) {
        log::debug!("control socket: the client left before the answer: {e}");
    }
}

/// An error and its sources, `: `-separated, like anyhow's `{:#}`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

fn lock<D: Datapath>(control: &Mutex<Control<D>>) -> MutexGuard<'_, Control<D>> {
    // A panic in one request must not take the control socket down; the control plane's
    // own state is updated only after each map change succeeds.
    control.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves every request but `Reload`, `Detach`, `Health` and `Operator`, which need the daemon
/// (they are refused here with a message saying so).
pub fn dispatch<D: Datapath>(
    control: &Mutex<Control<D>>,
    request: Request,
) -> Result<Reply, String> {
    let secs = |t: Option<u64>| t.map(Duration::from_secs);
    let err = |e: crate::control::ControlError| error_chain(&e);
    match request {
        Request::ListAdd {
            list,
            cidr,
            ttl_secs,
            reason,
        } => lock(control)
            .list_add(list, cidr, secs(ttl_secs), reason)
            .map(Reply::Added)
            .map_err(err),
        Request::ListDel { list, cidr } => lock(control)
            .list_del(list, cidr)
            .map(|()| Reply::Deleted)
            .map_err(err),
        Request::ListShow { list } => Ok(Reply::Entries(lock(control).list_entries(list))),
        Request::ListImport {
            list,
            entries,
            ttl_secs,
            reason,
        } => lock(control)
            .list_import(list, &entries, secs(ttl_secs), reason)
            .map(Reply::Imported)
            .map_err(err),
        Request::Bans => lock(control).bans().map(Reply::Bans).map_err(err),
        Request::Unban { cidr } => lock(control).unban(cidr).map(Reply::Unbanned).map_err(err),
        Request::Stats => lock(control).stats().map(Reply::Stats).map_err(err),
        Request::Top { n, interval_ms } => {
            if !TOP_INTERVAL_MS.contains(&interval_ms) {
                return Err(format!(
                    "interval of {interval_ms} ms: expected {} to {} ms",
                    TOP_INTERVAL_MS.start(),
                    TOP_INTERVAL_MS.end()
                ));
            }
            // The lock is not held while waiting between the samples.
            let before = lock(control).sample_sources().map_err(err)?;
            thread::sleep(Duration::from_millis(interval_ms));
            let guard = lock(control);
            let after = guard.sample_sources().map_err(err)?;
            let sources = top_sources(&before, &after, n, &guard.settings().limits);
            Ok(Reply::Top {
                interval_ms,
                sources,
            })
        }
        Request::Status => Ok(Reply::Status(Box::new(lock(control).status()))),
        Request::Reload | Request::Detach | Request::Health | Request::Operator { .. } => Err(
            "this server cannot reload, detach or report health: it is not the guard daemon"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::{
        config::Settings,
        control::testing::{FakeClock, FakeDatapath},
    };

    struct Fixture {
        dir: PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture() -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "guard-api-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        Fixture { dir }
    }

    struct TestHandler(Mutex<Control<FakeDatapath>>);

    impl Handler for TestHandler {
        fn handle(&self, request: Request) -> Result<Reply, String> {
            dispatch(&self.0, request)
        }
    }

    fn start(f: &Fixture) -> PathBuf {
        let clock = FakeClock::new(1_000_000_000_000, 1_700_000_000);
        let mut settings = Settings::builtin();
        settings.state.dir = f.dir.join("state");
        let control = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
            .with_wall_clock(clock.wall());
        let socket = f.dir.join("run/guard.sock");
        let listener = bind(&socket).unwrap();
        serve(listener, Arc::new(TestHandler(Mutex::new(control))));
        socket
    }

    #[test]
    fn requests_round_trip_over_the_socket() {
        let f = fixture();
        let socket = start(&f);
        let cidr: Cidr = "203.0.113.0/24".parse().unwrap();
        let reply = call(
            &socket,
            &Request::ListAdd {
                list: List::Deny,
                cidr,
                ttl_secs: Some(600),
                reason: Some("abuse".into()),
            },
        )
        .unwrap();
        assert_eq!(reply, Reply::Added(AddOutcome { replaced: false }));
        let Reply::Entries(entries) =
            call(&socket, &Request::ListShow { list: List::Deny }).unwrap()
        else {
            panic!("wrong reply")
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].cidr, cidr);
        assert_eq!(entries[0].expires, Some(1_700_000_000 + 600));
        assert!(matches!(
            call(&socket, &Request::Status).unwrap(),
            Reply::Status(_)
        ));
    }

    #[test]
    fn a_refused_request_carries_the_daemons_message() {
        let f = fixture();
        let socket = start(&f);
        let e = call(
            &socket,
            &Request::Unban {
                cidr: "192.0.2.1".parse().unwrap(),
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "no ban matches 192.0.2.1/32");
        let e = call(&socket, &Request::Reload).unwrap_err();
        assert!(matches!(e, ApiError::Refused { .. }), "{e}");
    }

    #[test]
    fn a_malformed_request_gets_an_error_line() {
        let f = fixture();
        let socket = start(&f);
        let mut s = UnixStream::connect(&socket).unwrap();
        s.write_all(b"{\"cmd\":\"list_add\",\"list\":\"deny\",\"cidr\":\"300.1.2.3\"}\n")
            .unwrap();
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).unwrap();
        let Response::Error { message } = serde_json::from_str(&answer).unwrap() else {
            panic!("{answer}")
        };
        assert!(message.contains("300.1.2.3"), "{message}");
    }

    #[test]
    fn socket_is_mode_0600() {
        let f = fixture();
        let socket = start(&f);
        let mode = fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn no_daemon_is_a_clear_error() {
        let f = fixture();
        let socket = f.dir.join("nothing.sock");
        let e = call(&socket, &Request::Status).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "cannot reach the guard daemon at {}: is `guard run` running? (",
                socket.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("No such file"), "{msg}");
    }

    #[test]
    fn stale_socket_is_replaced_but_a_live_one_is_not() {
        let f = fixture();
        fs::create_dir_all(&f.dir).unwrap();
        let socket = f.dir.join("guard.sock");
        drop(UnixListener::bind(&socket).unwrap());
        assert!(socket.exists());
        let live = bind(&socket).unwrap();
        let e = bind(&socket).unwrap_err();
        assert!(matches!(e, ApiError::InUse { .. }), "{e}");
        drop(live);
        let file = f.dir.join("plain");
        fs::write(&file, b"").unwrap();
        assert!(matches!(
            bind(&file).unwrap_err(),
            ApiError::NotASocket { .. }
        ));
    }

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request::ListAdd {
            list: List::Deny,
            cidr: "10.0.0.0/8".parse().unwrap(),
            ttl_secs: None,
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"cmd":"list_add","list":"deny","cidr":"10.0.0.0/8"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Bans).unwrap(),
            r#"{"cmd":"bans"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Ok(Reply::Deleted)).unwrap(),
            r#"{"ok":"deleted"}"#
        );
        assert_eq!(
            serde_json::to_string(&Response::Error {
                message: "x".into()
            })
            .unwrap(),
            r#"{"error":{"message":"x"}}"#
        );
    }
}
