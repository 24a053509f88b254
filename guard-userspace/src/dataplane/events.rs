//! What the program tells userspace as it happens: new bans on the `GUARD_EVENTS` ring buffer,
//! and its rare diagnostics through aya-log (never per packet). Each is read by a task of its
//! own through tokio's `AsyncFd`, woken by the kernel only when something arrived.
//!
//! The program has no aya-log map today: [`logger`] then gives `None` and no log task runs;
//! an object built with aya-log's macros is read with no change here, at the level set at
//! load time from `GUARD_EBPF_LOG` (error, warn, info, debug, trace; default warn).
use aya::maps::{MapData, RingBuf};
use bytes::Bytes;
use guard_common::BanEvent;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tokio_util::sync::CancellationToken;

/// The program's log level for aya-log's `AYA_LOG_LEVEL` global (aya-log-common's `Level`:
/// 1 error to 5 trace).
pub fn ebpf_log_level() -> u8 {
    match std::env::var("GUARD_EBPF_LOG").as_deref() {
        Ok("error") => 1,
        Ok("info") => 3,
        Ok("debug") => 4,
        Ok("trace") => 5,
        _ => 2,
    }
}

/// aya-log's reader for `ebpf`, if the object has its map; records go to the `log` facade,
/// which the daemon's tracing subscriber takes in.
pub(super) fn logger(ebpf: &mut aya::Ebpf) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
    match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => Some(l),
        Err(aya_log::Error::MapNotFound) => None,
        Err(e) => {
            tracing::warn!("the XDP program's log cannot be read: {e}");
            None
        }
    }
}

/// One event off the ring, if it is a whole [`BanEvent`].
pub fn parse(item: &[u8]) -> Option<BanEvent> {
    (item.len() >= std::mem::size_of::<BanEvent>()).then(|| {
        // SAFETY: the program writes a whole BanEvent (checked above); read_unaligned copes
        // with the ring's 8-byte alignment and BanEvent is Pod.
        unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<BanEvent>()) }
    })
}

/// Reads new-ban events off `ring` as they arrive, until `cancel`, each copied out as
/// [`Bytes`] and sent on `tx` (bounded: when the tick falls behind, an event is dropped and
/// counted, never the ban, which is in the map).
///
/// # Errors
///
/// The ring cannot be registered with the runtime.
pub async fn read_bans(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Bytes>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map's descriptor, open and the same for as long as
    // the RingBuf lives, and the AsyncFd owns the RingBuf.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let mut dropped: u64 = 0;
    loop {
        let mut ready = tokio::select! {
            () = cancel.cancelled() => break,
            r = fd.readable_mut() => r?,
        };
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if tx.try_send(Bytes::copy_from_slice(&item)).is_err() {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!("{dropped} ban events not logged: the daemon fell behind");
                }
            }
        }
        ready.clear_ready();
    }
    Ok(())
}

/// Forwards the program's aya-log records to the log as they arrive, until `cancel`.
///
/// # Errors
///
/// The log ring cannot be registered with the runtime.
pub async fn read_logs(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer's descriptor, open and the same for as long as
    // it lives, and the AsyncFd owns the logger.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    loop {
        let mut ready = tokio::select! {
            () = cancel.cancelled() => break,
            r = fd.readable_mut() => r?,
        };
        ready.get_inner_mut().flush();
        ready.clear_ready();
    }
    Ok(())
}
