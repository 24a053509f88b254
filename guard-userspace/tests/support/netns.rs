//! Live testbeds: network namespaces joined by veth pairs, made with unique names and removed
//! on drop (also when a test fails), addresses from 198.18.0.0/15 only; sockets opened inside
//! a namespace; and a guard daemon run in the server's network namespace.
#![allow(dead_code)]

use std::{
    fs::File,
    io,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Live tests run under `cargo xtask test` (GUARD_TEST_LIVE=1) as root; elsewhere (and
/// under `cargo xtask test --skip-live`, which asks for it) they skip, saying why.
pub fn live_or_skip(test: &str) -> bool {
    let wanted = std::env::var("GUARD_TEST_LIVE").as_deref() == Ok("1");
    if !wanted {
        super::skip(
            test,
            "live namespace tests need GUARD_TEST_LIVE=1 and root; run `cargo xtask test`",
        );
        return false;
    }
    assert!(
        super::is_root(),
        "{test}: live tests need root (netns, veth, XDP)"
    );
    true
}

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A set of namespaces and veth pairs, all deleted on drop.
pub struct Testbed {
    /// Unique tag in every name this testbed creates.
    pub tag: String,
    /// The first letters of every namespace and interface name.
    prefix: &'static str,
    namespaces: Vec<String>,
    daemons: Vec<Child>,
    pub pin_dir: PathBuf,
    pub tmp: PathBuf,
}

impl Testbed {
    pub fn new() -> Self {
        Self::with_prefix("g")
    }

    /// A testbed whose namespaces and interfaces are named `<prefix><tag>...` (a test suite
    /// run beside others on one machine picks its own).
    pub fn with_prefix(prefix: &'static str) -> Self {
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = std::env::temp_dir().join(format!("guard-test-{tag}"));
        std::fs::create_dir_all(&tmp).unwrap();
        Self {
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/guard-test-{tag}")),
            tag,
            prefix,
            namespaces: Vec::new(),
            daemons: Vec::new(),
            tmp,
        }
    }

    /// Creates a namespace named `g<tag><role>` with loopback up; returns its name.
    pub fn netns(&mut self, role: &str) -> String {
        let name = format!("{}{}{role}", self.prefix, self.tag);
        sh(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between two namespaces, with /24 addresses from 198.18.0.0/15.
    /// Returns the interface names (a side, b side). Names fit IFNAMSIZ.
    pub fn link(&mut self, a_ns: &str, a_addr: &str, b_ns: &str, b_addr: &str) -> (String, String) {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let v = if self.prefix == "g" {
            "gv"
        } else {
            self.prefix
        };
        let a = format!("{v}{}{n}a", self.tag);
        let b = format!("{v}{}{n}b", self.tag);
        assert!(a.len() <= 15, "interface name {a} too long");
        veth((a_ns, &a, a_addr), (b_ns, &b, b_addr));
        (a, b)
    }

    /// Starts `guard run` inside `ns`'s network namespace (only the network namespace: the
    /// daemon shares bpffs, so its pins outlive it). Socket, pins and state are private to
    /// this testbed.
    pub fn start_guard(&mut self, ns: &str, args: &[&str]) -> usize {
        self.start_guard_in(ns, &[], args)
    }

    /// Like `start_guard`, with `wrapper` run between nsenter and guard (`unshare -m ...`).
    pub fn start_guard_in(&mut self, ns: &str, wrapper: &[&str], args: &[&str]) -> usize {
        let log = File::create(self.tmp.join(format!("guard-{}.log", self.daemons.len()))).unwrap();
        let child = self
            .guard_run(ns, wrapper, &self.socket(), args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn guard run");
        self.daemons.push(child);
        self.wait_ready();
        self.daemons.len() - 1
    }

    /// `guard run` in `ns` (through `wrapper`, if any) with `socket` and this testbed's pins
    /// and state.
    fn guard_run(&self, ns: &str, wrapper: &[&str], socket: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .args(wrapper)
            .arg(env!("CARGO_BIN_EXE_guard"))
            .arg("run")
            .args(["--socket", socket.to_str().unwrap()])
            .args(["--pin-dir", self.pin_dir.to_str().unwrap()])
            .args(["--state-dir", self.tmp.join("state").to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.tmp.join("guard.sock")
    }

    /// Runs `guard run` in `ns` with this testbed's socket, pins and state, expecting it to
    /// stop on its own (a failure to start) within `timeout`; returns its exit status and log.
    /// Killed (and the test failed) if it is still running then.
    pub fn run_guard_to_exit(
        &mut self,
        ns: &str,
        args: &[&str],
        timeout: Duration,
    ) -> (std::process::ExitStatus, String) {
        let socket = self.socket();
        self.run_guard_to_exit_in(ns, &[], &socket, args, timeout)
    }

    /// Like `run_guard_to_exit`, through `wrapper` and on `socket`.
    pub fn run_guard_to_exit_in(
        &mut self,
        ns: &str,
        wrapper: &[&str],
        socket: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> (std::process::ExitStatus, String) {
        let n = self.daemons.len();
        let path = self.tmp.join(format!("guard-{n}.log"));
        let log = File::create(&path).unwrap();
        let child = self
            .guard_run(ns, wrapper, socket, args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn guard run");
        // Held with the others, so that the drop kills it whatever happens below.
        self.daemons.push(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.daemons[n].try_wait() {
                return (status, std::fs::read_to_string(&path).unwrap_or_default());
            }
            assert!(
                Instant::now() < deadline,
                "guard run {args:?} was expected to stop but still runs after {timeout:?}: {}",
                std::fs::read_to_string(&path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `guard status` answers, failing if the newest daemon exits first.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.guard(&["status"]).status.success() {
                return;
            }
            if let Some(d) = self.daemons.last_mut()
                && let Ok(Some(st)) = d.try_wait()
            {
                panic!("guard run exited early ({st}): {}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "guard run never became ready: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The daemons' logs so far, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.daemons.len())
            .map(|i| {
                std::fs::read_to_string(self.tmp.join(format!("guard-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// Runs a `guard` CLI command against this testbed's daemon.
    pub fn guard(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_guard"))
            .args(args)
            .env("GUARD_SOCKET", self.socket())
            .output()
            .expect("run guard")
    }

    /// Like `guard` but asserts success and returns stdout.
    pub fn guard_ok(&self, args: &[&str]) -> String {
        let out = self.guard(args);
        assert!(
            out.status.success(),
            "guard {args:?} failed: {}{}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// SIGKILLs daemon `i` (the pins keep the program attached).
    pub fn kill9(&mut self, i: usize) {
        let d = &mut self.daemons[i];
        let _ = d.kill();
        let _ = d.wait();
    }

    /// SIGTERMs daemon `i` and waits for it.
    pub fn stop(&mut self, i: usize) {
        let d = &mut self.daemons[i];
        // SAFETY: kill with a valid pid of our child.
        unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
        let _ = d.wait();
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.daemons[i].id()
    }
}

/// A veth pair named `a` in `a_ns` and `b` in `b_ns`, with those addresses (CIDR), up: what
/// `Testbed::link` makes, and how a test makes a deleted pair anew under the same names.
pub fn veth((a_ns, a, a_addr): (&str, &str, &str), (b_ns, b, b_addr): (&str, &str, &str)) {
    sh(&[
        "ip", "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns", b_ns,
    ]);
    for (ns, dev, addr) in [(a_ns, a, a_addr), (b_ns, b, b_addr)] {
        sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.kill();
            let _ = d.wait();
        }
        // Unpinning the links detaches the program; deleting the namespaces removes the veths.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
        // The tcp_syncookies value a daemon of this testbed replaced and did not get to put
        // back (a test that failed before `guard detach`): its namespace is gone, and so is
        // what the file was for.
        let key = format!(
            "tcp_syncookies.{}.",
            self.pin_dir
                .to_string_lossy()
                .trim_matches('/')
                .replace('/', "_")
        );
        if let Ok(rd) = std::fs::read_dir("/run/guard") {
            for e in rd.filter_map(Result::ok) {
                if e.file_name().to_string_lossy().starts_with(&key) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir("/run/guard");
    }
}

/// Runs `f` on a thread that has entered `ns`'s network namespace: sockets made there stay
/// in that namespace.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a valid netns fd only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

pub fn udp_in(ns: &str, bind: &str) -> UdpSocket {
    let bind: SocketAddr = bind.parse().unwrap();
    in_netns(ns, move || UdpSocket::bind(bind).expect("bind udp"))
}

/// Sends `count` datagrams in bursts of 32 with a millisecond between bursts (about 30,000
/// packets/s: a flood for the limits under test, yet within what a veth ring holds, so a loss
/// is the guard's doing), stopping after `max` whatever the count.
pub fn blast(sock: &UdpSocket, to: &str, count: u32, max: Duration) -> u32 {
    let to: SocketAddr = to.parse().unwrap();
    let start = Instant::now();
    let mut sent = 0;
    let payload = [0x5au8; 64];
    while sent < count && start.elapsed() < max {
        if sock.send_to(&payload, to).is_ok() {
            sent += 1;
        }
        if sent % 32 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sent
}

/// Gives `sock` a receive buffer that holds a whole test's datagrams, so that the socket
/// never drops what the guard let through.
pub fn big_rcvbuf(sock: &UdpSocket) {
    let size: libc::c_int = 32 << 20;
    // SAFETY: a valid socket fd and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", io::Error::last_os_error());
}

/// Counts datagrams arriving at `sock` per source address until `quiet` passes with none.
pub fn drain_counts(
    sock: &UdpSocket,
    quiet: Duration,
) -> std::collections::HashMap<std::net::IpAddr, u32> {
    sock.set_read_timeout(Some(quiet)).unwrap();
    let mut counts = std::collections::HashMap::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((_, from)) => *counts.entry(from.ip()).or_insert(0) += 1,
            Err(_) => break,
        }
    }
    counts
}

/// Resolves the neighbour entries both ways, so that no test packet waits on ARP.
pub fn warm_up(from_ns: &str, to_addr: &str) {
    sh(&[
        "ip", "netns", "exec", from_ns, "ping", "-c", "1", "-W", "2", to_addr,
    ]);
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}
