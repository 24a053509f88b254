//! The server's services, each on one thread pinned to the server's CPU and doing a little
//! real work per request (a keyed hash, a small response): a UDP request/response service and
//! a TCP one (an epoll loop: accept, read a request, write a response, keep-alive or not).

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hasher},
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::topology::SERVER_CPU;
use crate::{
    cpu::pin_current_thread,
    daemon::Service,
    netns::{join, spawn_in},
};

pub const UDP_PORT: u16 = 7001;
pub const TCP_PORT: u16 = 7000;
/// A request: sequence number, send time (ns), padding.
pub const REQUEST: usize = 32;
/// A response: the request's first 16 bytes and the 8-byte hash.
pub const RESPONSE: usize = 24;
/// Hash rounds per request: the "little real work", a few µs (a cache lookup, a DNS answer).
/// Far less, and the socket calls dominate: the service then answers most of a one-CPU flood
/// and the flood cannot hurt it.
pub const WORK_ROUNDS: u32 = 96;
/// Connections the TCP service holds at most; more are closed at once.
const MAX_CONNECTIONS: usize = 16_384;
/// The TCP service's accept backlog.
const BACKLOG: i32 = 4096;

/// The services as the daemon's config will name them.
pub const SERVICES: [Service; 2] = [
    Service {
        name: "bench-udp",
        protocol: "udp",
        port: UDP_PORT,
        syn_cookies: None,
    },
    Service {
        name: "bench-tcp",
        protocol: "tcp",
        port: TCP_PORT,
        syn_cookies: None,
    },
];

/// The same services with the guard's SYN cookies off (the kernel's own cookies only).
pub const SERVICES_NO_COOKIES: [Service; 2] = [
    Service {
        name: "bench-udp",
        protocol: "udp",
        port: UDP_PORT,
        syn_cookies: None,
    },
    Service {
        name: "bench-tcp",
        protocol: "tcp",
        port: TCP_PORT,
        syn_cookies: Some("off"),
    },
];

/// The work done for one request: `WORK_ROUNDS` rounds of SipHash over it.
pub fn work(request: &[u8]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..WORK_ROUNDS {
        let mut s = DefaultHasher::new();
        s.write_u64(h);
        s.write(request);
        h = s.finish();
    }
    h
}

/// The response to `request`: its first 16 bytes (zero-padded), then `work(request)`.
pub fn respond(request: &[u8]) -> [u8; RESPONSE] {
    let mut out = [0u8; RESPONSE];
    let n = request.len().min(16);
    out[..n].copy_from_slice(&request[..n]);
    out[16..].copy_from_slice(&work(request).to_le_bytes());
    out
}

/// What one request's work costs on the calling thread, in ns (the mean of many).
pub fn work_ns() -> f64 {
    const N: u32 = 200_000;
    let request = [0x42u8; REQUEST];
    let start = Instant::now();
    let mut acc = 0u64;
    for i in 0..N {
        acc ^= work(&request[..REQUEST - (i as usize & 1)]);
    }
    std::hint::black_box(acc);
    start.elapsed().as_nanos() as f64 / f64::from(N)
}

/// Both services, running in the server namespace until dropped.
pub struct Services {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<()>>>,
}

impl Services {
    /// Starts both services in `ns` and waits until they listen.
    ///
    /// # Errors
    /// When a service cannot bind or pin itself (its error is returned).
    pub fn start(ns: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut me = Self {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for service in [
            udp_service as fn(&AtomicBool, mpsc::Sender<()>) -> Result<()>,
            tcp_service,
        ] {
            let (stop, ready) = (stop.clone(), ready_tx.clone());
            me.threads.push(spawn_in(ns, move || {
                pin_current_thread(SERVER_CPU)?;
                service(&stop, ready)
            }));
        }
        drop(ready_tx);
        for _ in 0..me.threads.len() {
            if ready_rx.recv_timeout(Duration::from_secs(5)).is_err() {
                me.stop.store(true, Ordering::Relaxed);
                for t in me.threads.drain(..) {
                    join(t).context("starting the server's services")?;
                }
                bail!("a service did not start within 5 s");
            }
        }
        Ok(me)
    }

    /// Stops both services and returns the first error either met.
    ///
    /// # Errors
    /// A service's error while it ran.
    pub fn stop(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).try_for_each(join)
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = join(t);
        }
    }
}

/// The UDP service, on both families (one dual-stack socket).
fn udp_service(stop: &AtomicBool, ready: mpsc::Sender<()>) -> Result<()> {
    let sock =
        UdpSocket::bind((Ipv6Addr::UNSPECIFIED, UDP_PORT)).context("bind the UDP service")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = ready.send(());
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                // An answer that cannot leave (a full queue) is lost, as it would be anywhere.
                let _ = sock.send_to(&respond(&buf[..n]), from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("the UDP service's recv_from"),
        }
    }
    Ok(())
}

/// A minimal epoll set.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> Result<Self> {
        // SAFETY: plain epoll_create1; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `fd` for input, level-triggered, reporting `fd` itself as the token.
    fn add(&self, fd: RawFd) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: both fds are open; ev is a valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ready fds into `events`, waiting at most `timeout_ms`.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
        // SAFETY: events is a writable buffer of events.len() entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

/// The TCP service: one epoll loop over the listener and every connection.
fn tcp_service(stop: &AtomicBool, ready: mpsc::Sender<()>) -> Result<()> {
    let listener =
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, TCP_PORT)).context("bind the TCP service")?;
    // std listens with a backlog of 128; a busy server asks for more (capped by somaxconn).
    // SAFETY: listen(2) again on a listening socket only changes its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new()?;
    let lfd = listener.as_raw_fd();
    epoll.add(lfd).context("epoll_ctl on the listener")?;
    let _ = ready.send(());
    let mut conns: HashMap<RawFd, Connection> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while !stop.load(Ordering::Relaxed) {
        let n = epoll.wait(&mut events, 100).context("epoll_wait")?;
        for ev in &events[..n] {
            let fd = ev.u64 as RawFd;
            if fd == lfd {
                accept_all(&listener, &epoll, &mut conns)?;
            } else if conns.get_mut(&fd).is_some_and(|c| !c.serve()) {
                // Closing the socket also takes it out of the epoll set.
                conns.remove(&fd);
            }
        }
    }
    Ok(())
}

/// Accepts every pending connection.
fn accept_all(
    listener: &TcpListener,
    epoll: &Epoll,
    conns: &mut HashMap<RawFd, Connection>,
) -> Result<()> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if conns.len() >= MAX_CONNECTIONS {
                    continue;
                }
                stream.set_nonblocking(true)?;
                stream.set_nodelay(true)?;
                let fd = stream.as_raw_fd();
                epoll.add(fd).context("epoll_ctl on a connection")?;
                conns.insert(
                    fd,
                    Connection {
                        stream,
                        buf: Vec::with_capacity(REQUEST),
                    },
                );
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            // The peer gave up (reset) before we accepted, or we are out of descriptors for
            // now: the next readiness tries again.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::EINTR)
                ) =>
            {
                return Ok(());
            }
            Err(e) => return Err(e).context("accept"),
        }
    }
}

/// One connection: a partial request, if any.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    /// Answers every complete request that has arrived; false when the connection is done
    /// (closed, reset, or a client that does not read its answers).
    fn serve(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let whole = self.buf.len() / REQUEST * REQUEST;
        for request in self.buf[..whole].chunks(REQUEST) {
            // 24 bytes to a client that waits for them: a full send buffer means it stopped
            // reading.
            if self.stream.write(&respond(request)).ok() != Some(RESPONSE) {
                return false;
            }
        }
        self.buf.drain(..whole);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_echoes_the_request_head_and_depends_on_all_of_it() {
        let mut a = [7u8; REQUEST];
        let ra = respond(&a);
        assert_eq!(&ra[..16], &a[..16]);
        a[REQUEST - 1] = 8;
        assert_ne!(respond(&a)[16..], ra[16..]);
        // Flood datagrams shorter than 16 bytes are answered too.
        assert_eq!(&respond(&[1, 2])[..3], &[1, 2, 0]);
    }
}
