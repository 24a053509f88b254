//! The attacker: prebuilt Ethernet frames sent as fast as one thread can through an
//! AF_PACKET socket (qdisc bypassed, batches of `sendmmsg`), bounded in packets and seconds;
//! and the spoofed source addresses those frames come from.

use std::{
    ffi::CString,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::packet::{L3, Udp};

const BATCH: usize = 256;

/// Where the frames go and what they look like.
pub struct Frames {
    pub frames: Vec<Vec<u8>>,
}

impl Frames {
    pub fn new(frames: Vec<Vec<u8>>) -> Self {
        Self { frames }
    }

    /// UDP to port 9 (nothing listens) of `dst`, one frame per source in `sources`.
    pub fn udp(
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        dst: Ipv4Addr,
        sources: impl Iterator<Item = Ipv4Addr>,
    ) -> Self {
        let frames = sources
            .map(|src| {
                let mut u = Udp::v4(src);
                u.src_mac = src_mac;
                u.dst_mac = dst_mac;
                u.l3 = L3::V4 { src, dst };
                u.dst_port = 9;
                u.build()
            })
            .collect();
        Self { frames }
    }
}

/// `count` distinct addresses of 198.18.0.0/15 outside 198.18.0.0/22 (the bench's own
/// links), in a scrambled order so that consecutive packets hit unrelated sources.
pub fn spoofed_sources(count: usize) -> impl Iterator<Item = Ipv4Addr> {
    const SPACE: u32 = 1 << 17;
    // An odd multiplier is a bijection modulo a power of two.
    (0..SPACE)
        .map(|i| i.wrapping_mul(0x9e37_79b1) % SPACE)
        .filter(|off| *off >= 1 << 10)
        .take(count)
        .map(|off| Ipv4Addr::from(0xc612_0000 | off))
}

/// Addresses `spoofed_sources` can yield at most.
pub const MAX_SPOOFED: usize = (1 << 17) - (1 << 10);

/// /64 networks `spoofed_sources_v6` spreads over: every one of its /48.
pub const SPOOFED_V6_NETS: usize = 1 << 16;

/// One address in each of the 65,536 /64s of the /48 `prefix` (its first three 16-bit
/// groups), in a scrambled order, each with a different interface identifier.
pub fn spoofed_sources_v6(prefix: [u16; 3]) -> impl Iterator<Item = Ipv6Addr> {
    (0..SPOOFED_V6_NETS as u32).map(move |i| {
        // An odd multiplier is a bijection modulo 2^16: every /64 once.
        let net = (i.wrapping_mul(0x9e37_79b1) & 0xffff) as u16;
        let iid = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let [a, b, c] = prefix;
        Ipv6Addr::new(
            a,
            b,
            c,
            net,
            (iid >> 48) as u16,
            (iid >> 32) as u16,
            (iid >> 16) as u16,
            iid as u16,
        )
    })
}

/// How much a flood may send, and how fast.
#[derive(Clone, Copy)]
pub struct Budget {
    pub max_packets: u64,
    pub max_time: Duration,
    /// Packets per second at most; `None`: as fast as the thread goes.
    pub pace: Option<u64>,
}

/// Sends `frames` round-robin out of `iface` (in the calling thread's network namespace)
/// until `stop` or the budget's packets or time, whichever comes first. Returns packets sent.
///
/// # Errors
/// When the socket cannot be made or bound (not root, no such interface).
pub fn flood(
    iface: &str,
    frames: &Frames,
    stop: &AtomicBool,
    sent: &AtomicU64,
    budget: Budget,
) -> Result<u64> {
    let Budget {
        max_packets,
        max_time,
        pace,
    } = budget;
    if frames.frames.is_empty() {
        bail!("no frames to send");
    }
    let sock = packet_socket(iface)?;
    let start = Instant::now();
    let mut next = 0usize;
    let mut total = 0u64;
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    // SAFETY: mmsghdr is plain data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    while !stop.load(Ordering::Relaxed) && total < max_packets && start.elapsed() < max_time {
        iov.clear();
        for _ in 0..BATCH {
            let f = &frames.frames[next];
            next = (next + 1) % frames.frames.len();
            iov.push(libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            });
        }
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_len = 0;
        }
        // SAFETY: msgs points to BATCH headers, each with one iovec into a live frame; the
        // socket is bound, so no address is needed.
        let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0) };
        if n > 0 {
            total += n as u64;
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if let Some(rate) = pace.filter(|r| *r > 0) {
                // Batch by batch on schedule: never ahead of `rate` packets/s.
                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // A full device queue: back off a little and go on.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => {
                    std::thread::yield_now();
                }
                _ => return Err(e).context("sendmmsg on the AF_PACKET socket"),
            }
        }
    }
    Ok(total)
}

/// An AF_PACKET socket that sends raw frames out of `iface`, past the qdisc, and receives
/// nothing (protocol 0).
fn packet_socket(iface: &str) -> Result<OwnedFd> {
    let name = CString::new(iface)?;
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface} in the attacker's namespace");
    }
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("AF_PACKET socket (needs CAP_NET_RAW)");
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = 0;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: addr is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("bind to {iface}"));
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn spoofed_v6_sources_cover_every_64_of_their_48_once() {
        let all: Vec<Ipv6Addr> = spoofed_sources_v6([0xfd00, 5, 5]).collect();
        assert_eq!(all.len(), SPOOFED_V6_NETS);
        let nets: HashSet<u16> = all.iter().map(|a| a.segments()[3]).collect();
        assert_eq!(nets.len(), SPOOFED_V6_NETS);
        assert!(all.iter().all(|a| a.segments()[..3] == [0xfd00, 5, 5]));
    }

    #[test]
    fn spoofed_sources_are_distinct_and_inside_the_benchmark_range() {
        let all: Vec<Ipv4Addr> = spoofed_sources(MAX_SPOOFED).collect();
        assert_eq!(all.len(), MAX_SPOOFED);
        assert!(all.len() >= 100_000);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
        for a in &all {
            let o = a.octets();
            assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19), "{a}");
            assert!(
                !(o[1] == 18 && o[2] < 4),
                "{a} is in the bench's own 198.18.0.0/22"
            );
        }
    }
}
