//! Throwaway network namespaces and veth pairs with unique names, all deleted on drop (also
//! when a section fails), and threads that run inside a namespace. Adapted from
//! guard-userspace's live-test support. Addresses come from 198.18.0.0/15 and fd00::/8 only.

use std::{
    fs::File,
    io,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion; fails with its standard error if it fails.
pub fn sh(args: &[&str]) -> Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("could not start `{}`: is it installed?", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Like `sh`, returning standard output as text.
pub fn sh_out(args: &[&str]) -> Result<String> {
    Ok(String::from_utf8_lossy(&sh(args)?.stdout).into_owned())
}

/// A set of namespaces (and the veth pairs inside them), deleted on drop.
pub struct Testbed {
    /// Unique in this machine's namespace and interface names while the bench runs.
    pub tag: String,
    namespaces: Vec<String>,
}

impl Testbed {
    pub fn new() -> Self {
        Self {
            tag: format!(
                "{}{}",
                std::process::id() % 100_000,
                SEQ.fetch_add(1, Ordering::Relaxed)
            ),
            namespaces: Vec::new(),
        }
    }

    /// Creates namespace `gb<tag><role>` with loopback up and returns its name.
    pub fn netns(&mut self, role: &str) -> Result<String> {
        let name = format!("gb{}{role}", self.tag);
        sh(&["ip", "netns", "add", &name])?;
        self.namespaces.push(name.clone());
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// A veth pair from `a_ns` to `b_ns`, up, with the given addresses (`None`: no address).
    /// Returns the interface names (a side, b side).
    pub fn link(
        &mut self,
        a_ns: &str,
        a_addr: Option<&str>,
        b_ns: &str,
        b_addr: Option<&str>,
    ) -> Result<(String, String)> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let a = format!("gb{}v{n}a", self.tag);
        let b = format!("gb{}v{n}b", self.tag);
        if a.len() > 15 {
            bail!("interface name {a} is longer than IFNAMSIZ allows");
        }
        sh(&[
            "ip", "link", "add", &a, "netns", a_ns, "type", "veth", "peer", "name", &b, "netns",
            b_ns,
        ])?;
        for (ns, dev, addr) in [(a_ns, &a, a_addr), (b_ns, &b, b_addr)] {
            if let Some(addr) = addr {
                sh(&["ip", "-n", ns, "addr", "add", addr, "dev", dev])?;
            }
            sh(&["ip", "-n", ns, "link", "set", dev, "up"])?;
        }
        Ok((a, b))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veths, and with them any XDP program attached.
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Enters `ns`'s network namespace on the calling thread only.
fn enter(ns: &str) -> Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns on a valid netns fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {path}: {}", io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `f` on a new thread inside `ns`'s network namespace: sockets and netlink requests
/// made there (and by threads it spawns) belong to that namespace.
pub fn spawn_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> JoinHandle<Result<T>> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns)?;
        f()
    })
}

/// Runs `f` inside `ns`'s network namespace and waits for it.
pub fn run_in<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    join(spawn_in(ns, f))
}

/// Joins a thread from `spawn_in`, turning a panic into an error.
pub fn join<T>(handle: JoinHandle<Result<T>>) -> Result<T> {
    match handle.join() {
        Ok(r) => r,
        Err(_) => bail!("a benchmark thread panicked (see its message above)"),
    }
}

/// Runs `args` with only the network namespace switched (`nsenter --net`), so the tool sees
/// the host's bpffs at /sys/fs/bpf (`ip netns exec` would give it a mount namespace of its own).
pub fn sh_net(ns: &str, args: &[&str]) -> Result<Output> {
    let net = format!("--net=/run/netns/{ns}");
    let mut all = vec!["nsenter", net.as_str()];
    all.extend_from_slice(args);
    sh(&all)
}

/// The MAC address of `iface` in `ns`.
pub fn mac_of(ns: &str, iface: &str) -> Result<[u8; 6]> {
    let text = sh_out(&["ip", "-n", ns, "-j", "link", "show", "dev", iface])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    let s = json
        .pointer("/0/address")
        .and_then(serde_json::Value::as_str)
        .with_context(|| format!("no MAC address for {iface}"))?;
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The id of the XDP program attached to `iface` in `ns`, from `ip -j link show`.
pub fn xdp_prog_id(ns: &str, iface: &str) -> Result<u32> {
    let text = sh_out(&["ip", "-n", ns, "-j", "link", "show", "dev", iface])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    json.pointer("/0/xdp/prog/id")
        .and_then(serde_json::Value::as_u64)
        .map(|id| id as u32)
        .with_context(|| format!("no XDP program on {iface} in {ns}: {text}"))
}
