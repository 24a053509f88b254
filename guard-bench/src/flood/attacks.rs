//! The floods: prebuilt frames (UDP and TCP SYN, one source or spoofed, IPv4 and IPv6) sent by
//! one AF_PACKET thread, and a connection flood from a few real sources that complete their
//! handshakes and send requests as fast as they can. All run on the peers' CPU, bounded in
//! packets (or connections) and seconds.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    services::{REQUEST, RESPONSE, TCP_PORT, UDP_PORT},
    topology::{ATTACKERS, ONE_SOURCE, PEER_CPU, SERVER_A, SERVER_A6, SPOOFED_V6_PREFIX, Topology},
};
use crate::{
    cpu::pin_current_thread,
    netns::{join, spawn_in},
    packet::{L3, Syn, Udp},
    sender::{
        self, Budget, Frames, MAX_SPOOFED, SPOOFED_V6_NETS, spoofed_sources, spoofed_sources_v6,
    },
};

/// What arrives at the server besides the legitimate clients.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Traffic {
    Quiet,
    UdpOne,
    UdpSpoofed,
    SynOne,
    SynSpoofed,
    Connections,
    UdpV6Spoofed,
}

/// Concurrent connection loops per source of the connection flood.
const CONNECTION_WORKERS: usize = 8;

impl Traffic {
    pub const ALL: [Traffic; 7] = [
        Traffic::Quiet,
        Traffic::UdpOne,
        Traffic::UdpSpoofed,
        Traffic::SynOne,
        Traffic::SynSpoofed,
        Traffic::Connections,
        Traffic::UdpV6Spoofed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Quiet => "no flood",
            Self::UdpOne => "UDP, 1 source",
            Self::UdpSpoofed => "UDP, spoofed IPv4",
            Self::SynOne => "SYN, 1 source",
            Self::SynSpoofed => "SYN, spoofed IPv4",
            Self::Connections => "connections, 4 real sources",
            Self::UdpV6Spoofed => "UDP, spoofed IPv6",
        }
    }

    /// Distinct sources as the guard tracks them (IPv6 per /64).
    pub fn sources(self) -> usize {
        match self {
            Self::Quiet => 0,
            Self::UdpOne | Self::SynOne => 1,
            Self::UdpSpoofed | Self::SynSpoofed => MAX_SPOOFED,
            Self::Connections => ATTACKERS.len(),
            Self::UdpV6Spoofed => SPOOFED_V6_NETS,
        }
    }

    pub fn spoofed(self) -> bool {
        matches!(
            self,
            Self::UdpSpoofed | Self::SynSpoofed | Self::UdpV6Spoofed
        )
    }

    pub fn syn(self) -> bool {
        matches!(self, Self::SynOne | Self::SynSpoofed | Self::Connections)
    }

    /// The frames the AF_PACKET sender cycles through; `None` for no flood and for the
    /// connection flood (real sockets).
    pub fn frames(self, top: &Topology) -> Option<Frames> {
        let (src_mac, dst_mac) = (top.attack_mac, top.server_attack_mac);
        let udp = |l3: L3| {
            Udp {
                src_mac,
                dst_mac,
                l3,
                dst_port: UDP_PORT,
                ..Udp::v4(Ipv4Addr::UNSPECIFIED)
            }
            .build()
        };
        // Each SYN from its own source port, so that no two are the same connection.
        let syn = |i: usize, src: Ipv4Addr| {
            Syn {
                src_mac,
                dst_mac,
                l3: L3::V4 { src, dst: SERVER_A },
                src_port: 1024 + (i % 64_000) as u16,
                dst_port: TCP_PORT,
                seq: (i as u32).wrapping_mul(0x9e37_79b1),
            }
            .build()
        };
        let v4 = |src| L3::V4 { src, dst: SERVER_A };
        let frames = match self {
            Self::Quiet | Self::Connections => return None,
            Self::UdpOne => vec![udp(v4(ONE_SOURCE))],
            Self::UdpSpoofed => spoofed_sources(MAX_SPOOFED).map(|s| udp(v4(s))).collect(),
            Self::SynOne => (0..64_000).map(|i| syn(i, ONE_SOURCE)).collect(),
            Self::SynSpoofed => spoofed_sources(MAX_SPOOFED)
                .enumerate()
                .map(|(i, s)| syn(i, s))
                .collect(),
            Self::UdpV6Spoofed => spoofed_sources_v6(SPOOFED_V6_PREFIX)
                .map(|src| {
                    udp(L3::V6 {
                        src,
                        dst: SERVER_A6,
                    })
                })
                .collect(),
        };
        Some(Frames::new(frames))
    }
}

/// A running flood; stopped (and joined) on drop.
pub struct Attack {
    stop: Arc<AtomicBool>,
    /// Frames sent (AF_PACKET) or requests answered (connection flood).
    count: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<u64>>>,
    connections: bool,
}

impl Attack {
    /// Starts `traffic` from the attacker's namespace within `budget` (for the connection
    /// flood: connections, never paced).
    pub fn start(
        traffic: Traffic,
        top: &Topology,
        frames: Option<Arc<Frames>>,
        budget: Budget,
    ) -> Option<Self> {
        let Budget {
            max_packets,
            max_time,
            ..
        } = budget;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads = match (traffic, frames) {
            (Traffic::Connections, _) => ATTACKERS
                .iter()
                .flat_map(|&src| std::iter::repeat_n(src, CONNECTION_WORKERS))
                .map(|src| {
                    let (s, n) = (stop.clone(), count.clone());
                    spawn_in(&top.attacker, move || {
                        pin_current_thread(PEER_CPU)?;
                        connection_loop(src, &s, &n, max_packets, max_time)
                    })
                })
                .collect(),
            (_, Some(frames)) => {
                let (s, n) = (stop.clone(), count.clone());
                let iface = top.attack_iface.clone();
                vec![spawn_in(&top.attacker, move || {
                    pin_current_thread(PEER_CPU)?;
                    sender::flood(&iface, &frames, &s, &n, budget)
                })]
            }
            (_, None) => return None,
        };
        Some(Self {
            stop,
            count,
            threads,
            connections: traffic == Traffic::Connections,
        })
    }

    /// Packets the flood has put on the attacker's link so far.
    ///
    /// # Errors
    /// When the link's counters cannot be read.
    pub fn packets(&self, top: &Topology) -> Result<u64> {
        if self.connections {
            // Real connections: every packet of them (handshakes, requests, resets) counts.
            top.attack_tx_packets()
        } else {
            Ok(self.count.load(Ordering::Relaxed))
        }
    }

    /// Requests the connection flood had answered so far (0 for the other floods).
    pub fn answered(&self) -> u64 {
        if self.connections {
            self.count.load(Ordering::Relaxed)
        } else {
            0
        }
    }

    /// Stops the flood and waits for its threads.
    ///
    /// # Errors
    /// A sender that failed (its socket could not be made).
    pub fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.drain(..).try_for_each(|t| join(t).map(drop))
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One loop of the connection flood: connect from `src`, send a request, read the answer,
/// reset the connection (no TIME_WAIT on either side), again, as fast as it goes.
fn connection_loop(
    src: Ipv4Addr,
    stop: &AtomicBool,
    answered: &AtomicU64,
    max: u64,
    max_time: Duration,
) -> Result<u64> {
    let start = Instant::now();
    let to = SocketAddr::V4(SocketAddrV4::new(SERVER_A, TCP_PORT));
    let mut mine = 0;
    let request = [0x5au8; REQUEST];
    let mut answer = [0u8; RESPONSE];
    while !stop.load(Ordering::Relaxed)
        && start.elapsed() < max_time
        && answered.load(Ordering::Relaxed) < max
    {
        let Ok(mut c) = connect_from(src, to) else {
            continue;
        };
        if c.write_all(&request)
            .and_then(|()| c.read_exact(&mut answer))
            .is_ok()
        {
            answered.fetch_add(1, Ordering::Relaxed);
            mine += 1;
        }
    }
    Ok(mine)
}

/// A TCP connection from `src` (any port) to `to`, with 1 s timeouts on connect and I/O,
/// reset on close (SO_LINGER 0).
fn connect_from(src: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    let one: libc::c_int = 1;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    // SO_SNDTIMEO also bounds a blocking connect (socket(7)).
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &timeout)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)?;
    // The port is chosen at connect, for this destination: 64,000 per source and peer.
    setsockopt(&fd, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, &one)?;
    let sa = sockaddr_in(SocketAddrV4::new(src, 0));
    // SAFETY: sa is a valid sockaddr_in and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::other("the connection flood is IPv4"));
    };
    let da = sockaddr_in(to);
    // SAFETY: da is a valid sockaddr_in and its size is passed.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&da as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(fd))
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T whose size is passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
