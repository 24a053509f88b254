//! Slow and idle clients on the health port (slowloris): many connections from several
//! sources, each either trickling a request head a byte at a time or sending nothing, and
//! connecting again whenever the server cuts it off, for a bounded time.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the slow clients did.
pub struct Held {
    /// Connections made over the run (each cut-off one is made again).
    pub connections: usize,
    /// Connection slots held at once (sources x per source).
    pub slots: usize,
}

/// Holds `per_source` connections from each of `sources` to `to` for `secs`: half of them
/// trickle a request head (one byte every 300 ms), half stay silent. To be run on a thread in
/// the clients' network namespace (its own single-threaded runtime).
///
/// # Errors
/// When the runtime cannot be built.
pub fn hold(sources: &[Ipv4Addr], per_source: usize, to: SocketAddr, secs: u64) -> Result<Held> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let made = Arc::new(AtomicUsize::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, src) in sources.iter().enumerate() {
            for j in 0..per_source {
                let made = made.clone();
                let src = *src;
                tasks.push(tokio::spawn(slot(src, to, (i + j) % 2 == 0, until, made)));
                // Spread the opening SYNs (well under the guard's default SYN limit).
                if j % 20 == 19 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(Held {
        connections: made.load(Ordering::Relaxed),
        slots: sources.len() * per_source,
    })
}

async fn slot(
    src: Ipv4Addr,
    to: SocketAddr,
    trickle: bool,
    until: Instant,
    made: Arc<AtomicUsize>,
) {
    while Instant::now() < until {
        let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
            return;
        };
        if sock.bind(SocketAddr::new(src.into(), 0)).is_err() {
            return;
        }
        let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(3), sock.connect(to)).await
        else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        made.fetch_add(1, Ordering::Relaxed);
        if trickle {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n").await;
        }
        let mut buf = [0u8; 512];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if trickle && s.write_all(b"X").await.is_err() {
                break;
            }
            let step = left.min(Duration::from_millis(300));
            // Cut off (the 408, then the close, or a refusal): connect again.
            if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(step, s.read(&mut buf)).await {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
