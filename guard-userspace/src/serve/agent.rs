//! The HAProxy agent-check protocol (HAProxy configuration manual, section 5.2, "agent-check"):
//! on every connection, one ASCII line with the host's state and weight, then close.
//!
//! HAProxy reads a line ended by the first CR or LF, made of words separated by spaces, tabs
//! or commas, in any order, the last of each kind winning: a weight `NN%` (relative to the
//! server's configured weight), `maxconn:N`, an admin state `ready`|`drain`|`maint`, and a
//! health state `up`|`down`|`fail`|`stopped`. A `#` ends the words; what follows is a
//! description that HAProxy shows only when a health state was given (`tcpcheck.c`,
//! `tcpcheck_agent_expect_reply`, 2.6). Words left out leave that setting as it was, and only
//! the agent reverts what the agent set, so each line states everything it means:
//!
//! | state      | line                           | effect in HAProxy                          |
//! |------------|--------------------------------|--------------------------------------------|
//! | pass       | `up ready 100% #reason`        | UP, READY, full weight                     |
//! | warn(w)    | `up ready w% #reason`          | UP, READY, w% of the configured weight     |
//! | drain      | `up drain #reason`             | DRAIN; `up` undoes an earlier `down`       |
//! | maint      | `maint #reason`                | MAINT                                      |
//! | fail       | `down #reason`                 | DOWN, the reason in the check status       |
//! | starting   | `#reason`                      | nothing changes                            |
//!
//! `starting` lasts about a second after the daemon (re)starts, before the first full
//! evaluation. Answering `down` then would take a healthy host out on every daemon restart;
//! a line with no words leaves HAProxy's view as it was (UP for a server it has never asked).
//!
//! Each connection is a task on the daemon's runtime that writes the line at once and closes;
//! over [`MAX_CONNECTIONS`] (or [`MAX_PREFERRED_CONNECTIONS`] for the allow-listed load
//! balancers) the line is still written, without waiting, by the accept loop itself.
use std::{net::SocketAddr, time::Duration};

use tokio::{io::AsyncWriteExt, net::TcpListener};
use tokio_util::sync::CancellationToken;

use super::{Pools, PriorityFn, Running, accept_loop, http::ReportFn, linger};
use crate::health::{HealthReport, Status};

/// Connections handled at once; more are answered inline without waiting, then closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections handled at once from the preferred peers.
pub const MAX_PREFERRED_CONNECTIONS: usize = 64;
/// Time a client has to take the reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest description after `#`, in bytes; HAProxy shows it in its check status.
pub const MAX_COMMENT: usize = 160;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {addr} for the HAProxy agent-check server")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The reply line for `report`, ending in `\n`. See the module docs for the mapping.
pub fn agent_line(report: &HealthReport) -> String {
    let words = match report.status {
        Status::Pass => "up ready 100%".to_string(),
        // 0% would read as drain; warn always carries at least 1%.
        Status::Warn { weight } => format!("up ready {}%", weight.clamp(1, 100)),
        Status::Drain => "up drain".to_string(),
        Status::Maint => "maint".to_string(),
        Status::Fail => "down".to_string(),
        Status::Starting => String::new(),
    };
    let comment = sanitise(&report.reason);
    match (words.is_empty(), comment.is_empty()) {
        (_, true) if !words.is_empty() => format!("{words}\n"),
        (true, _) => format!("#{comment}\n"),
        (false, _) => format!("{words} #{comment}\n"),
    }
}

/// The reason as a description HAProxy can take: printable ASCII only (anything else, CR
/// and LF included, becomes a space or `?`), trimmed, at most [`MAX_COMMENT`] bytes.
fn sanitise(reason: &str) -> String {
    let mut out: String = reason
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_whitespace() || c.is_control() => ' ',
            _ => '?',
        })
        .collect();
    out = out.trim().to_string();
    if out.len() > MAX_COMMENT {
        // All ASCII, so any byte index is a char boundary.
        out.truncate(MAX_COMMENT - 3);
        out.push_str("...");
    }
    out
}

/// Binds `addr` for [`serve`].
///
/// # Errors
///
/// [`AgentError::Bind`] naming the address when it cannot be bound.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, AgentError> {
    super::listen(addr).map_err(|source| AgentError::Bind { addr, source })
}

/// Answers every connection on `listener` with [`agent_line`] of `report()`, at once, until
/// `cancel`: HAProxy may send an `agent-send` string first, and a client may send garbage or
/// nothing; none of it is waited for or parsed. `report` must be cheap (a shared copy).
pub async fn serve(
    listener: TcpListener,
    report: ReportFn,
    priority: Option<PriorityFn>,
    cancel: CancellationToken,
) {
    let pools = Pools::new(MAX_CONNECTIONS, MAX_PREFERRED_CONNECTIONS, priority);
    let for_overflow = report.clone();
    accept_loop(
        listener,
        pools,
        cancel,
        move |mut stream, _peer, permit| {
            let line = agent_line(&report());
            async move {
                let _permit = permit;
                let sent =
                    tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(line.as_bytes())).await;
                if matches!(sent, Ok(Ok(()))) {
                    linger(stream).await;
                }
            }
        },
        // Over the bound: still one valid line, written without waiting (a line this small
        // fits the socket buffer; if not, the client is gone).
        move |stream| {
            let line = agent_line(&for_overflow());
            let _ = stream.try_write(line.as_bytes());
            if let Ok(std) = stream.into_std() {
                let _ = std.shutdown(std::net::Shutdown::Write);
            }
        },
    )
    .await;
}

/// An agent-check server on a thread of its own (for callers without a runtime). Dropping
/// it (or [`AgentServer::shutdown`]) stops accepting and closes the listener.
pub struct AgentServer {
    inner: Running,
}

impl AgentServer {
    /// Binds `addr` and answers every connection as [`serve`] does.
    ///
    /// # Errors
    ///
    /// [`AgentError::Bind`] naming the address when it cannot be bound.
    pub fn bind(addr: SocketAddr, report: ReportFn) -> Result<Self, AgentError> {
        let listener = bind(addr)?;
        let inner = Running::start("guard-agent", listener, move |l, cancel| {
            serve(l, report, None, cancel)
        })
        .map_err(|source| AgentError::Bind { addr, source })?;
        Ok(Self { inner })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// Stops accepting and waits until the listener is closed.
    pub fn shutdown(self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(status: Status, reason: &str) -> HealthReport {
        let mut r = HealthReport::starting(0);
        r.status = status;
        r.reason = reason.to_string();
        r
    }

    #[test]
    fn each_state_maps_to_its_agent_line() {
        for (status, line) in [
            (Status::Pass, "up ready 100% #healthy\n"),
            (Status::Warn { weight: 62 }, "up ready 62% #healthy\n"),
            (Status::Warn { weight: 0 }, "up ready 1% #healthy\n"),
            (Status::Drain, "up drain #healthy\n"),
            (Status::Maint, "maint #healthy\n"),
            (Status::Fail, "down #healthy\n"),
            (Status::Starting, "#healthy\n"),
        ] {
            assert_eq!(agent_line(&report(status, "healthy")), line, "{status:?}");
        }
    }

    #[test]
    fn issue_examples_are_produced() {
        assert_eq!(
            agent_line(&report(Status::Warn { weight: 62 }, "cpu 78%")),
            "up ready 62% #cpu 78%\n"
        );
        assert_eq!(
            agent_line(&report(Status::Drain, "operator: deploy")),
            "up drain #operator: deploy\n"
        );
    }

    #[test]
    fn reason_is_one_ascii_line_of_bounded_length() {
        let line = agent_line(&report(Status::Fail, "dead\r\nup ready 100%\tcafé ✓"));
        assert_eq!(line, "down #dead  up ready 100% caf? ?\n");
        let long = "x".repeat(1000);
        let line = agent_line(&report(Status::Fail, &long));
        assert_eq!(line.len(), "down #".len() + MAX_COMMENT + 1);
        assert!(line.ends_with("...\n"));
        assert_eq!(agent_line(&report(Status::Pass, " \n ")), "up ready 100%\n");
    }
}
