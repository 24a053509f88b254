//! Raw frames out of a veth: the MAC of an interface in a namespace, and a bounded, paced
//! AF_PACKET sender (spoofed floods for the live tests).
#![allow(dead_code)]

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::netns::{in_netns, sh};

/// The MAC address of `dev` in namespace `ns`.
pub fn mac_of(ns: &str, dev: &str) -> [u8; 6] {
    let out = sh(&["ip", "-n", ns, "-j", "link", "show", "dev", dev]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        mac[i] = u8::from_str_radix(part, 16).unwrap();
    }
    mac
}

/// Sends `frames` round-robin out of `dev` (in the calling thread's namespace) at about
/// `pps`, until `stop`, `max_packets` or `max_time`. Returns packets sent.
pub fn flood(
    dev: &str,
    frames: &[Vec<u8>],
    pps: u64,
    stop: &AtomicBool,
    sent: &AtomicU64,
    max_packets: u64,
    max_time: Duration,
) -> u64 {
    let name = CString::new(dev).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(ifindex, 0, "no {dev}");
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "AF_PACKET: {}", io::Error::last_os_error());
    // SAFETY: a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid sockaddr_ll and its size.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", io::Error::last_os_error());
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < max_packets && start.elapsed() < max_time {
        let f = &frames[n as usize % frames.len()];
        // SAFETY: a bound socket and a live buffer of the given length.
        let rc = unsafe { libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        if rc > 0 {
            n += 1;
            sent.fetch_add(1, Ordering::Relaxed);
        }
        // Pace: about `pps`, in bursts of 100.
        if n.is_multiple_of(100) {
            let due = Duration::from_secs_f64(n as f64 / pps as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    n
}

/// [`flood`] on a thread of its own in namespace `ns`: returns the thread (its result is the
/// packets sent) and the running count.
pub fn spawn_flood(
    ns: &str,
    dev: &str,
    frames: Vec<Vec<u8>>,
    pps: u64,
    stop: &Arc<AtomicBool>,
    max_packets: u64,
    max_time: Duration,
) -> (JoinHandle<u64>, Arc<AtomicU64>) {
    let sent = Arc::new(AtomicU64::new(0));
    let (stop, count) = (Arc::clone(stop), Arc::clone(&sent));
    let (ns, dev) = (ns.to_string(), dev.to_string());
    let thread = std::thread::spawn(move || {
        in_netns(&ns, move || {
            flood(&dev, &frames, pps, &stop, &count, max_packets, max_time)
        })
    });
    (thread, sent)
}

/// Sets `stop` when dropped, so a failing test's threads end with it.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Turns reverse-path filtering off in `ns` (all, default and `dev`): a spoofed flood's
/// sources have no route back, and the test is of the guard, not of rp_filter.
pub fn no_rp_filter(ns: &str, dev: &str) {
    for conf in ["all", "default", dev] {
        sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.rp_filter=0"),
        ]);
    }
}
