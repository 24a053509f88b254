//! The server: a listener task that admits at most [`MAX_CLIENTS`] connections at once (the
//! permit taken before `accept`, so the rest wait in the backlog), and a task per connection
//! that reads one line of at most [`MAX_REQUEST`] bytes within [`READ_TIMEOUT`] (tokio-util's
//! `LinesCodec`), hands the parsed request to a [`Handler`] that knows nothing of sockets, and
//! writes the answer within [`WRITE_TIMEOUT`].
use std::{
    fs,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    sync::Arc,
    thread,
    time::Duration,
};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt, future::BoxFuture};
use tokio::sync::Semaphore;
use tokio_util::{
    codec::{Decoder, Encoder, Framed, LinesCodec, LinesCodecError},
    sync::CancellationToken,
};

use super::{ApiError, Reply, Request, Response};

/// The largest request accepted: room for a netset of about three million entries.
pub const MAX_REQUEST: usize = 64 << 20;
/// Clients served at once; more wait in the listen backlog.
pub const MAX_CLIENTS: usize = 16;
/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
    fn handle(&self, request: Request) -> BoxFuture<'_, Result<Reply, String>>;
}

/// [`serve_async`] on a thread of its own with a one-thread runtime, until the process exits
/// (for tests and callers without a runtime).
pub fn serve(listener: UnixListener, handler: Arc<dyn Handler>) -> thread::JoinHandle<()> {
    thread::Builder::new()
        .name("guard-api".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the control socket");
            runtime.block_on(serve_async(listener, handler, CancellationToken::new()));
        })
        .expect("spawning the control socket thread")
}

/// Serves `listener` until `cancel`: a task per connection, at most [`MAX_CLIENTS`] at once.
pub async fn serve_async(
    listener: UnixListener,
    handler: Arc<dyn Handler>,
    cancel: CancellationToken,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket: cannot serve: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        // The slot first, as in mini-redis: a client over the bound waits in the backlog.
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _)) => {
                let handler = Arc::clone(&handler);
                let cancel = cancel.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = serve_one(stream, handler.as_ref()) => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One request line: tokio-util's `LinesCodec` with a maximum length, except that a stream
/// ending in the middle of a line is an error, not a request (the client was cut off).
struct RequestCodec(LinesCodec);

impl Decoder for RequestCodec {
    type Item = String;
    type Error = LinesCodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, LinesCodecError> {
        self.0.decode(buf)
    }
    // `decode_eof` is the trait's: bytes left at the end of the stream are an error.
}

impl Encoder<String> for RequestCodec {
    type Error = LinesCodecError;

    fn encode(&mut self, line: String, buf: &mut BytesMut) -> Result<(), LinesCodecError> {
        self.0.encode(line, buf)
    }
}

async fn serve_one(stream: tokio::net::UnixStream, handler: &dyn Handler) {
    let mut framed = Framed::new(
        stream,
        RequestCodec(LinesCodec::new_with_max_length(MAX_REQUEST)),
    );
    let incomplete = || Response::Error {
        message: format!(
            "the request is not one complete line (at most {MAX_REQUEST} bytes, ending in a newline)"
        ),
    };
    let response = match tokio::time::timeout(READ_TIMEOUT, framed.next()).await {
        Err(_) => Response::Error {
            message: format!(
                "cannot read the request: it did not arrive within {}s",
                READ_TIMEOUT.as_secs()
            ),
        },
        // The client went away before a line: nobody to answer.
        Ok(None) => return,
        Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
            tracing::warn!("control socket: a request longer than {MAX_REQUEST} bytes was cut off");
            incomplete()
        }
        Ok(Some(Err(LinesCodecError::Io(e)))) if e.kind() == std::io::ErrorKind::Other => {
            incomplete()
        }
        Ok(Some(Err(LinesCodecError::Io(e)))) => Response::Error {
            message: format!("cannot read the request: {e}"),
        },
        Ok(Some(Ok(line))) => match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(request) => match handler.handle(request).await {
                Ok(reply) => Response::Ok(reply),
                Err(message) => Response::Error { message },
            },
        },
    };
    let out = serde_json::to_string(&response).expect("responses always serialize");
    match tokio::time::timeout(WRITE_TIMEOUT, framed.send(out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!("control socket: the client left before the answer: {e}"),
        Err(_) => tracing::debug!("control socket: the client did not take the answer in time"),
    }
}
