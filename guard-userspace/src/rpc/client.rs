//! The client: one request, one answer, over a blocking Unix stream (the CLI has no runtime).
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use super::{ApiError, Reply, Request, Response};

/// How long either side waits for the other before giving up on a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

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
