//! Serving requests with the control plane: every request but those that need the daemon.
use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use super::{Reply, Request, TOP_INTERVAL_MS};
use crate::{
    control::{Control, top_sources},
    dataplane::Datapath,
};

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

/// Runs `f` on the control plane off the runtime (map walks and fsync block), under its one
/// lock, taken for `f` alone.
///
/// # Errors
///
/// A message if `f` panicked.
pub async fn blocking<D, T, F>(control: &Arc<Mutex<Control<D>>>, f: F) -> Result<T, String>
where
    D: Datapath + Send + 'static,
    T: Send + 'static,
    F: FnOnce(&mut Control<D>) -> T + Send + 'static,
{
    let control = Arc::clone(control);
    tokio::task::spawn_blocking(move || f(&mut lock(&control)))
        .await
        .map_err(|e| format!("the request failed inside the daemon: {e}"))
}

/// Serves every request but `Reload`, `Detach`, `Health` and `Operator`, which need the daemon
/// (they are refused here with a message saying so).
///
/// # Errors
///
/// The control plane's refusal, as a message for the operator.
pub async fn dispatch<D: Datapath + Send + 'static>(
    control: &Arc<Mutex<Control<D>>>,
    request: Request,
) -> Result<Reply, String> {
    if let Request::Top { n, interval_ms } = request {
        if !TOP_INTERVAL_MS.contains(&interval_ms) {
            return Err(format!(
                "interval of {interval_ms} ms: expected {} to {} ms",
                TOP_INTERVAL_MS.start(),
                TOP_INTERVAL_MS.end()
            ));
        }
        let err = |e: crate::control::ControlError| error_chain(&e);
        // The lock is not held while waiting between the samples.
        let before = blocking(control, |c| c.sample_sources())
            .await?
            .map_err(err)?;
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let sources = blocking(control, move |c| {
            c.sample_sources()
                .map(|after| top_sources(&before, &after, n, &c.settings().limits))
        })
        .await?
        .map_err(err)?;
        return Ok(Reply::Top {
            interval_ms,
            sources,
        });
    }
    blocking(control, move |c| dispatch_now(c, request)).await?
}

/// The requests answered at once, under the lock.
fn dispatch_now<D: Datapath>(control: &mut Control<D>, request: Request) -> Result<Reply, String> {
    let secs = |t: Option<u64>| t.map(Duration::from_secs);
    let err = |e: crate::control::ControlError| error_chain(&e);
    match request {
        Request::ListAdd {
            list,
            cidr,
            ttl_secs,
            reason,
        } => control
            .list_add(list, cidr, secs(ttl_secs), reason)
            .map(Reply::Added)
            .map_err(err),
        Request::ListDel { list, cidr } => control
            .list_del(list, cidr)
            .map(|()| Reply::Deleted)
            .map_err(err),
        Request::ListShow { list } => Ok(Reply::Entries(control.list_entries(list))),
        Request::ListImport {
            list,
            entries,
            ttl_secs,
            reason,
        } => control
            .list_import(list, &entries, secs(ttl_secs), reason)
            .map(Reply::Imported)
            .map_err(err),
        Request::Bans => control.bans().map(Reply::Bans).map_err(err),
        Request::Unban { cidr } => control.unban(cidr).map(Reply::Unbanned).map_err(err),
        Request::Stats => control.stats().map(Reply::Stats).map_err(err),
        Request::Status => Ok(Reply::Status(Box::new(control.status()))),
        Request::Top { .. } => Err("top is answered by dispatch".to_string()),
        Request::Reload
        | Request::Detach
        | Request::Health
        | Request::Operator { .. }
        | Request::Watchdogs
        | Request::WatchdogRestart { .. }
        | Request::FleetStatus
        | Request::FleetUnban { .. }
        | Request::FleetListAdd { .. }
        | Request::FleetListDel { .. } => Err(
            "this server cannot reload, detach, report health, run watchdogs or speak for the fleet: it is not the guard daemon"

                .to_string(),
        ),
    }
}
