//! The flood testbed: a server, a client and an attacker namespace joined by veth pairs, set
//! up so that the server's CPU pays for what reaches its stack, as behind a NIC.
//!
//! On veth the receive work of a packet runs on the sending CPU, and veth delivers through
//! NAPI only while an XDP program is attached. So every veth end carries an XDP program (the
//! pass-all floor on the client's and attacker's ends here; the protection under test, or the
//! floor, on the server's), and receive packet steering sends what passes XDP to the CPU of the
//! namespace it arrived in: CPU 1 for the server, CPU 0 for the client and the attacker.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use crate::{
    floor::Floor,
    netns::{Testbed, mac_of, sh, sh_out},
};

/// The server's CPU: its services, and the stack behind its veths (RPS).
pub const SERVER_CPU: usize = 1;
/// The attacker's sender and the legitimate clients (and the XDP programs of the server's
/// veths, which run on the sending CPU).
pub const PEER_CPU: usize = 0;

/// The server on the client's link, and the client.
pub const SERVER_C: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
/// The server on the attacker's link, and the attacker's real addresses (the connection
/// flood's sources).
pub const SERVER_A: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
pub const ATTACKERS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 2, 2),
    Ipv4Addr::new(198, 18, 2, 3),
    Ipv4Addr::new(198, 18, 2, 4),
    Ipv4Addr::new(198, 18, 2, 5),
];
pub const SERVER_A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 2, 0, 0, 0, 0, 1);
const ATTACKER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 2, 0, 0, 0, 0, 2);
/// The one-source floods' source: on no link, so the server's answers go to the sink.
pub const ONE_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 66);
/// The /48 the spoofed IPv6 sources come from.
pub const SPOOFED_V6_PREFIX: [u16; 3] = [0xfd00, 5, 5];
/// The load balancer's health-check source, allow-listed as the operator guide advises.
pub const LOAD_BALANCER: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);

/// The namespaces and their links; deleted (with everything in them) on drop.
pub struct Topology {
    /// The pass-all programs on the client's and attacker's veth ends. Declared before `bed`,
    /// so they are detached before the namespaces go.
    _peer_floors: Vec<Floor>,
    pub bed: Testbed,
    pub server: String,
    pub client: String,
    pub attacker: String,
    /// The server's veths: towards the client, towards the attacker.
    pub server_ifaces: [String; 2],
    pub attack_iface: String,
    pub attack_mac: [u8; 6],
    pub server_attack_mac: [u8; 6],
}

impl Topology {
    /// Builds the testbed; `floor` is the pass-all object for the peers' veth ends.
    ///
    /// # Errors
    /// When a namespace, link, address, route or sysctl cannot be set up, or a ping across a
    /// link fails.
    pub fn new(floor: &std::path::Path) -> Result<Self> {
        let mut bed = Testbed::new();
        let server = bed.netns("srv")?;
        let client = bed.netns("cli")?;
        let attacker = bed.netns("att")?;
        let (sc, cs) = bed.link(
            &server,
            Some(&format!("{SERVER_C}/24")),
            &client,
            Some(&format!("{CLIENT}/24")),
        )?;
        let (sa, att) = bed.link(
            &server,
            Some(&format!("{SERVER_A}/24")),
            &attacker,
            Some(&format!("{}/24", ATTACKERS[0])),
        )?;
        for a in &ATTACKERS[1..] {
            sh(&[
                "ip",
                "-n",
                &attacker,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                &att,
            ])?;
        }
        for (ns, dev, addr) in [(&server, &sa, SERVER_A6), (&attacker, &att, ATTACKER6)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
        }
        // Spoofed sources arrive on the attacker's link: no reverse-path filter may drop them
        // before the protection under test sees them.
        for conf in ["all", "default", sc.as_str(), sa.as_str()] {
            sysctl(&server, &format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
        }
        sink(&server, &bed.tag)?;
        // The connection flood opens connections as fast as it can from four addresses.
        sysctl(&attacker, "net.ipv4.ip_local_port_range", "1024 65535")?;
        for (ns, dev, cpu) in [
            (&server, &sc, SERVER_CPU),
            (&server, &sa, SERVER_CPU),
            (&client, &cs, PEER_CPU),
            (&attacker, &att, PEER_CPU),
        ] {
            steer(ns, dev, cpu)?;
        }
        let peer_floors = vec![
            Floor::load(floor)?.attach_in(&client, std::slice::from_ref(&cs))?,
            Floor::load(floor)?.attach_in(&attacker, std::slice::from_ref(&att))?,
        ];
        let ping = |ns: &str, to: String| {
            sh(&["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", &to])
                .with_context(|| format!("the testbed does not carry traffic from {ns} to {to}"))
        };
        ping(&client, SERVER_C.to_string())?;
        ping(&attacker, SERVER_A.to_string())?;
        ping(&attacker, SERVER_A6.to_string())?;
        Ok(Self {
            _peer_floors: peer_floors,
            attack_mac: mac_of(&attacker, &att)?,
            server_attack_mac: mac_of(&server, &sa)?,
            server_ifaces: [sc, sa],
            attack_iface: att,
            bed,
            server,
            client,
            attacker,
        })
    }

    /// Packets dropped on the attacker's link so far: refused by its veth because the
    /// server side's ring was full (the attacker side's tx drops). The server side's rx drops
    /// are not added: they are the kernel's core count of packets its backlog refused, which
    /// CPU 1's backlog drops already hold.
    ///
    /// # Errors
    /// When `ip -s link` cannot be read.
    pub fn link_drops(&self) -> Result<u64> {
        link_counter(&self.attacker, &self.attack_iface, "tx", "dropped")
    }

    /// Packets the attacker's veth has sent so far.
    ///
    /// # Errors
    /// When `ip -s link` cannot be read.
    pub fn attack_tx_packets(&self) -> Result<u64> {
        link_counter(&self.attacker, &self.attack_iface, "tx", "packets")
    }
}

/// Where the server's answers to sources on no link (the spoofed ones) go: a veth whose peer
/// stays down, so they take the whole transmit path down to the driver and are dropped there,
/// as if sent out of a NIC towards nobody. Routed back over a live veth, their reception would
/// be charged to the server's CPU (veth receives on the sending CPU). One gateway with a
/// permanent neighbour entry carries them all: no neighbour entry per spoofed address.
fn sink(server: &str, tag: &str) -> Result<()> {
    let (dev, peer) = (format!("gb{tag}sk"), format!("gb{tag}sp"));
    let ip = |args: &[&str]| {
        let mut all = vec!["ip", "-n", server];
        all.extend_from_slice(args);
        sh(&all).map(drop)
    };
    ip(&["link", "add", &dev, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &dev, "up"])?;
    ip(&["addr", "add", "198.18.0.253/30", "dev", &dev])?;
    ip(&["addr", "add", "fd00:18:9::1/64", "dev", &dev, "nodad"])?;
    let [a, b, c] = SPOOFED_V6_PREFIX;
    let v6_spoofed = format!("{a:x}:{b:x}:{c:x}::/48");
    for (family, gateway, to) in [
        ("-4", "198.18.0.254", "198.18.0.0/15"),
        ("-6", "fd00:18:9::2", v6_spoofed.as_str()),
    ] {
        ip(&[
            family,
            "neigh",
            "add",
            gateway,
            "lladdr",
            "02:00:00:00:00:fe",
            "dev",
            &dev,
            "nud",
            "permanent",
        ])?;
        ip(&[
            family, "route", "add", to, "via", gateway, "dev", &dev, "onlink",
        ])?;
    }
    Ok(())
}

/// `ip -s link` counter `dir`.`what` (rx or tx; packets, dropped...) of `dev` in `ns`.
fn link_counter(ns: &str, dev: &str, dir: &str, what: &str) -> Result<u64> {
    let text = sh_out(&["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    let json: serde_json::Value = serde_json::from_str(&text)?;
    Ok(json
        .pointer(&format!("/0/stats64/{dir}/{what}"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0))
}

/// Sets sysctl `key` inside `ns` (its own copy of the per-namespace network sysctls).
fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sysctl",
        "-qw",
        &format!("{key}={value}"),
    ])?;
    Ok(())
}

/// Receive packet steering: what `dev` receives (past XDP) is processed on `cpu`. The write
/// goes through `ip netns exec`, whose private /sys shows the namespace's own interfaces.
fn steer(ns: &str, dev: &str, cpu: usize) -> Result<()> {
    let mask = format!("{:x}", 1u64 << cpu);
    sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "sh",
        "-c",
        &format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
    ])
    .with_context(|| format!("steering {dev}'s receive work to CPU {cpu} (RPS)"))?;
    Ok(())
}
