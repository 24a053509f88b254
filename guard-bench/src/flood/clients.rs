//! The legitimate clients, each at a steady rate on one thread pinned to the peers' CPU and
//! started before the flood: UDP requests, TCP requests on one kept-alive connection, and new
//! TCP connections (connect, request, response, close). Each records every request; what
//! counts is summarised afterwards over the measurement window.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    services::{REQUEST, RESPONSE, TCP_PORT, UDP_PORT},
    topology::{PEER_CPU, SERVER_C},
};
use crate::{
    cpu::pin_current_thread,
    netns::{join, spawn_in},
};

/// Requests per second of each client. The three together stay well inside the guard's
/// default per-source budgets (packets and SYNs), as an ordinary client does.
pub const UDP_RATE: u32 = 2000;
pub const KEEPALIVE_RATE: u32 = 1000;
pub const CONNECT_RATE: u32 = 100;
/// A UDP or keep-alive request not answered within this is lost.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection not established within this failed: a client whose first SYN went unanswered
/// waits out the initial retransmission timeout of 1 s (RFC 6298 section 2.1), which is the
/// harm a SYN flood does, so a connection counts only if it needed no retransmission.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Udp,
    KeepAlive,
    NewConnections,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Udp, Kind::KeepAlive, Kind::NewConnections];

    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "UDP requests",
            Self::KeepAlive => "TCP keep-alive",
            Self::NewConnections => "new TCP connections",
        }
    }

    pub fn rate(self) -> u32 {
        match self {
            Self::Udp => UDP_RATE,
            Self::KeepAlive => KEEPALIVE_RATE,
            Self::NewConnections => CONNECT_RATE,
        }
    }
}

/// One request (or connection attempt), in ns since the scenario's epoch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Record {
    /// When it was sent (for a connection: when the attempt started).
    pub sent: u64,
    /// When the connection was established (new connections only).
    pub connected: Option<u64>,
    /// When the answer arrived.
    pub answered: Option<u64>,
}

/// A client's figures over a window.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Requests the client's rate schedules in the window.
    pub scheduled: u64,
    /// Answered in time (for new connections: connected in time), sent in the window.
    pub ok: u64,
    /// Request-to-answer latencies of those, in µs, sorted.
    pub latency_us: Vec<u64>,
    /// Attempt-to-established latencies, in µs, sorted (new connections only).
    pub connect_us: Vec<u64>,
}

impl Summary {
    /// Share of the scheduled requests that were answered (or connected) in time, in percent.
    pub fn ok_pct(&self) -> f64 {
        100.0 * self.ok as f64 / self.scheduled.max(1) as f64
    }
}

/// The `p` quantile (0 to 1) of `sorted`, by the nearest rank; `None` if it is empty.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Summarises `records` of a client running at `rate` per second over `[start, end)` (ns):
/// what it scheduled, and which of the requests sent in the window were answered within
/// `timeout` (new connections: established within it).
pub fn summarize(
    kind: Kind,
    records: &[Record],
    start: u64,
    end: u64,
    timeout: Duration,
) -> Summary {
    let timeout = timeout.as_nanos() as u64;
    let scheduled =
        (end.saturating_sub(start) as u128 * u128::from(kind.rate()) / 1_000_000_000) as u64;
    let mut s = Summary {
        scheduled,
        ..Summary::default()
    };
    for r in records.iter().filter(|r| (start..end).contains(&r.sent)) {
        let in_time = |t: Option<u64>| t.filter(|t| t.saturating_sub(r.sent) <= timeout);
        let ok = match kind {
            Kind::NewConnections => in_time(r.connected),
            Kind::Udp | Kind::KeepAlive => in_time(r.answered),
        };
        if ok.is_none() {
            continue;
        }
        s.ok += 1;
        if let Some(c) = r.connected {
            s.connect_us.push((c - r.sent) / 1000);
        }
        if let Some(a) = r.answered {
            s.latency_us.push((a - r.sent) / 1000);
        }
    }
    s.ok = s.ok.min(s.scheduled);
    s.latency_us.sort_unstable();
    s.connect_us.sort_unstable();
    s
}

/// The three clients, running in the client namespace until `stop`.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<(Kind, JoinHandle<Result<Vec<Record>>>)>,
}

impl Clients {
    /// Starts every client in `ns`; ns timestamps count from `epoch`.
    pub fn start(ns: &str, epoch: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = Kind::ALL
            .iter()
            .map(|&kind| {
                let stop = stop.clone();
                let handle = spawn_in(ns, move || {
                    pin_current_thread(PEER_CPU)?;
                    match kind {
                        Kind::Udp => udp(&stop, epoch),
                        Kind::KeepAlive => keepalive(&stop, epoch),
                        Kind::NewConnections => new_connections(&stop, epoch),
                    }
                });
                (kind, handle)
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops sending, waits for the answers still due, and returns each client's records.
    ///
    /// # Errors
    /// A client that could not run (its socket failed) fails the scenario.
    pub fn finish(mut self) -> Result<Vec<(Kind, Vec<Record>)>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .drain(..)
            .map(|(k, t)| join(t).with_context(|| k.name()).map(|r| (k, r)))
            .collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (_, t) in self.threads.drain(..) {
            let _ = join(t);
        }
    }
}

fn ns_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

/// Paces a loop at `rate` per second: sleeps until the next tick; when late by more than a
/// tick, skips what was missed instead of sending a burst.
struct Pacer {
    epoch: Instant,
    period: Duration,
    next: Duration,
}

impl Pacer {
    fn new(epoch: Instant, rate: u32) -> Self {
        Self {
            epoch,
            period: Duration::from_secs(1) / rate,
            next: epoch.elapsed(),
        }
    }

    fn wait(&mut self) {
        let now = self.epoch.elapsed();
        if now < self.next {
            std::thread::sleep(self.next - now);
        } else if now > self.next + self.period {
            self.next = now;
        }
        self.next += self.period;
    }
}

fn request(seq: u64, sent: u64) -> [u8; REQUEST] {
    let mut r = [0u8; REQUEST];
    r[..8].copy_from_slice(&seq.to_le_bytes());
    r[8..16].copy_from_slice(&sent.to_le_bytes());
    r
}

fn server(port: u16) -> SocketAddr {
    SocketAddr::from((SERVER_C, port))
}

/// UDP requests at `UDP_RATE`, answers read by a second thread.
fn udp(stop: &AtomicBool, epoch: Instant) -> Result<Vec<Record>> {
    let sock = UdpSocket::bind("0.0.0.0:0").context("bind the UDP client")?;
    sock.connect(server(UDP_PORT))?;
    let rx = sock.try_clone()?;
    rx.set_read_timeout(Some(Duration::from_millis(50)))?;
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    // The receiver inherits this thread's namespace and CPU.
    let receiver = std::thread::spawn(move || {
        let mut answers = Vec::new();
        let mut buf = [0u8; 64];
        while !d.load(Ordering::Relaxed) {
            if let Ok(n) = rx.recv(&mut buf)
                && n >= 16
            {
                let seq = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
                answers.push((seq, ns_since(epoch)));
            }
        }
        answers
    });
    let mut sent = Vec::new();
    let mut pacer = Pacer::new(epoch, UDP_RATE);
    while !stop.load(Ordering::Relaxed) {
        pacer.wait();
        let t = ns_since(epoch);
        // A send that fails (a full queue) is a request that was not answered.
        let _ = sock.send(&request(sent.len() as u64, t));
        sent.push(t);
    }
    std::thread::sleep(ANSWER_TIMEOUT);
    done.store(true, Ordering::Relaxed);
    let answers = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("the UDP client's receiver panicked"))?;
    let mut records: Vec<Record> = sent
        .iter()
        .map(|&t| Record {
            sent: t,
            ..Record::default()
        })
        .collect();
    for (seq, at) in answers {
        if let Some(r) = records.get_mut(seq as usize) {
            r.answered.get_or_insert(at);
        }
    }
    Ok(records)
}

/// One connection with the timeouts a client uses.
fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    c.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(c)
}

/// One request and its answer on `conn`.
fn transact(conn: &mut TcpStream, seq: u64, sent: u64) -> std::io::Result<()> {
    conn.write_all(&request(seq, sent))?;
    let mut answer = [0u8; RESPONSE];
    conn.read_exact(&mut answer)
}

/// Requests at `KEEPALIVE_RATE` on one connection, one at a time; a request not answered in
/// time closes it and the client connects again, as a client with a timeout does.
fn keepalive(stop: &AtomicBool, epoch: Instant) -> Result<Vec<Record>> {
    let mut conn = Some(connect(server(TCP_PORT)).context("the keep-alive client's connection")?);
    let mut records = Vec::new();
    let mut pacer = Pacer::new(epoch, KEEPALIVE_RATE);
    while !stop.load(Ordering::Relaxed) {
        pacer.wait();
        let sent = ns_since(epoch);
        let mut r = Record {
            sent,
            ..Record::default()
        };
        let c = match conn.take() {
            Some(c) => Some(c),
            None => connect(server(TCP_PORT)).ok(),
        };
        if let Some(mut c) = c
            && transact(&mut c, records.len() as u64, sent).is_ok()
        {
            r.answered = Some(ns_since(epoch));
            conn = Some(c);
        }
        records.push(r);
    }
    Ok(records)
}

/// New connections at `CONNECT_RATE`, each on a short-lived thread: at most rate x (connect
/// timeout + answer timeout x 2) threads live at once.
fn new_connections(stop: &AtomicBool, epoch: Instant) -> Result<Vec<Record>> {
    let (tx, rx) = mpsc::channel();
    let mut attempts = Vec::new();
    let mut pacer = Pacer::new(epoch, CONNECT_RATE);
    while !stop.load(Ordering::Relaxed) {
        pacer.wait();
        let tx = tx.clone();
        let seq = attempts.len() as u64;
        let attempt = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(move || {
                let sent = ns_since(epoch);
                let mut r = Record {
                    sent,
                    ..Record::default()
                };
                if let Ok(mut c) = connect(server(TCP_PORT)) {
                    r.connected = Some(ns_since(epoch));
                    if transact(&mut c, seq, sent).is_ok() {
                        r.answered = Some(ns_since(epoch));
                    }
                }
                let _ = tx.send(r);
            })
            .context("spawn a connection attempt")?;
        attempts.push(attempt);
    }
    drop(tx);
    for a in attempts {
        let _ = a.join();
    }
    let mut records: Vec<Record> = rx.iter().collect();
    records.sort_by_key(|r| r.sent);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.5), None);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn only_requests_sent_in_the_window_and_answered_in_time_count() {
        let r = |sent: u64, answered: Option<u64>| Record {
            sent,
            connected: None,
            answered,
        };
        let records = [
            r(0, Some(MS)),                // before the window
            r(1000 * MS, Some(1001 * MS)), // in, 1 ms
            r(1100 * MS, None),            // in, lost
            r(1200 * MS, Some(2300 * MS)), // in, 1.1 s: too late
            r(1900 * MS, Some(1903 * MS)), // in, 3 ms
            r(2000 * MS, Some(2001 * MS)), // at the end: out
        ];
        // 1 s of UDP at 2000/s schedules 2000 requests.
        let s = summarize(Kind::Udp, &records, 1000 * MS, 2000 * MS, ANSWER_TIMEOUT);
        assert_eq!(s.scheduled, 2000);
        assert_eq!(s.ok, 2);
        assert_eq!(s.latency_us, vec![1000, 3000]);
    }

    #[test]
    fn a_new_connection_counts_once_established_in_time() {
        let records = [
            Record {
                sent: 0,
                connected: Some(MS / 2),
                answered: None,
            },
            Record {
                sent: MS,
                connected: Some(MS + 900 * MS),
                answered: Some(MS + 901 * MS),
            },
            Record {
                sent: 2 * MS,
                connected: Some(2 * MS + 1500 * MS),
                answered: Some(2 * MS + 1501 * MS),
            },
        ];
        let s = summarize(
            Kind::NewConnections,
            &records,
            0,
            1_000 * MS,
            CONNECT_TIMEOUT,
        );
        assert_eq!(s.scheduled, 100);
        assert_eq!(s.ok, 2);
        assert_eq!(s.connect_us, vec![500, 900_000]);
        assert_eq!(s.latency_us, vec![901_000]);
    }
}
