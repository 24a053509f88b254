//! The control socket: one JSON request line in, one JSON response line out, over a Unix
//! stream socket (mode 0600). The server ([`server`]) hands parsed requests to a [`Handler`]
//! (the daemon's, or [`dispatch`] over a bare control plane); [`call`] is the client.
//!
//! ```text
//! -> {"cmd":"list_add","list":"deny","cidr":"203.0.113.0/24","ttl_secs":600,"reason":"abuse"}
//! <- {"ok":{"added":{"replaced":false}}}
//! -> {"cmd":"unban","cidr":"192.0.2.1/32"}
//! <- {"error":{"message":"no ban matches 192.0.2.1/32"}}
//! ```
mod client;
mod dispatch;
mod protocol;
pub mod server;
#[cfg(test)]
mod tests;

use std::{io, path::PathBuf};

pub use client::{call, call_timeout};
pub use dispatch::{blocking, dispatch, error_chain};
pub use protocol::{Reply, Request, Response, TOP_INTERVAL_MS};
pub use server::{Handler, MAX_CLIENTS, MAX_REQUEST, bind, serve, serve_async};

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
