//! The protections compared, each raised on the server for one scenario and lowered after:
//! none (the pass-all floor on the server's veths), nftables (the floor, and per-source meters
//! in the netdev ingress hook doing what the guard's defaults do), and the real guard daemon
//! on its defaults with the load balancer allow-listed.

use std::{
    fs,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use super::{
    services::{SERVICES, SERVICES_NO_COOKIES},
    topology::{LOAD_BALANCER, Topology},
};
use crate::{
    daemon::{Daemon, HealthListen},
    floor::Floor,
    netns::{sh, sh_out},
};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protection {
    None,
    Nftables,
    Guard,
    /// The guard with `syn_cookies = "off"`: run under the SYN floods only, beside the guard
    /// (whose TCP service has the default, "auto").
    GuardNoCookies,
}

impl Protection {
    pub const ALL: [Protection; 3] = [Protection::None, Protection::Nftables, Protection::Guard];

    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Nftables => "nftables",
            Self::Guard => "guard",
            Self::GuardNoCookies => "guard, cookies off",
        }
    }

    /// The real daemon, either way.
    pub fn is_guard(self) -> bool {
        matches!(self, Self::Guard | Self::GuardNoCookies)
    }
}

/// The guard's default per-source limits, as `guard config default` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub pps: u64,
    pub burst: u64,
    pub syn_pps: u64,
    pub syn_burst: u64,
    pub ban_seconds: u64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
}

impl Limits {
    /// The `[limits]` table of the embedded default config of `guard`.
    ///
    /// # Errors
    /// When `guard config default` fails or prints no complete `[limits]` table.
    pub fn of_defaults(guard: &Path) -> Result<Self> {
        let out = Command::new(guard)
            .args(["config", "default"])
            .output()
            .with_context(|| format!("run {} config default", guard.display()))?;
        if !out.status.success() {
            bail!(
                "guard config default: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self::parse(&String::from_utf8_lossy(&out.stdout))
    }

    fn parse(toml_text: &str) -> Result<Self> {
        let v: toml::Table = toml_text
            .parse()
            .context("guard config default is not TOML")?;
        let get = |key: &str| -> Result<u64> {
            v.get("limits")
                .and_then(|l| l.get(key))
                .and_then(toml::Value::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .with_context(|| format!("no [limits] {key} in guard config default"))
        };
        Ok(Self {
            pps: get("pps")?,
            burst: get("burst")?,
            syn_pps: get("syn_pps")?,
            syn_burst: get("syn_burst")?,
            ban_seconds: get("ban_seconds")?,
            ipv4_prefix: u8::try_from(get("ipv4_prefix")?)?,
            ipv6_prefix: u8::try_from(get("ipv6_prefix")?)?,
        })
    }
}

/// The netmask of a /`len` (an IPv4 dotted quad or an IPv6 address).
fn mask(v6: bool, len: u8) -> String {
    if v6 {
        let m = u128::MAX
            .checked_shl(128 - u32::from(len.min(128)))
            .unwrap_or(0);
        std::net::Ipv6Addr::from(m).to_string()
    } else {
        let m = u32::MAX
            .checked_shl(32 - u32::from(len.min(32)))
            .unwrap_or(0);
        Ipv4Addr::from(m).to_string()
    }
}

/// The nftables ruleset doing what the guard's defaults do, per source (an IPv4 address or
/// network of `ipv4_prefix`, an IPv6 network of `ipv6_prefix`): the allow-listed load balancer
/// passes; a banned source is dropped; a source over its SYN or packet budget (a token bucket
/// of `rate`/s holding `burst`) is banned for `ban_seconds` and dropped. It hooks netdev
/// ingress on the server's veths, the earliest hook nftables has. A limit of 0 is off, as in
/// the guard.
fn nft_ruleset(l: &Limits, devices: &[String]) -> String {
    let key4 = format!("ip saddr & {}", mask(false, l.ipv4_prefix));
    let key6 = format!("ip6 saddr & {}", mask(true, l.ipv6_prefix));
    let ban = |key: &str, fam: &str| {
        if l.ban_seconds > 0 {
            format!("add @banned_{fam} {{ {key} }} ")
        } else {
            String::new()
        }
    };
    let mut rules = vec![
        format!("ip saddr @allow_v4 accept"),
        format!("{key4} @banned_v4 drop"),
        format!("{key6} @banned_v6 drop"),
    ];
    for (fam, key, tcp) in [
        ("v4", &key4, "ip protocol tcp"),
        ("v6", &key6, "ip6 nexthdr tcp"),
    ] {
        if l.syn_pps > 0 {
            rules.push(format!(
                "{tcp} tcp flags & (syn | ack) == syn update @syn_{fam} {{ {key} limit rate over \
                 {}/second burst {} packets }} {}drop",
                l.syn_pps,
                l.syn_burst,
                ban(key, fam)
            ));
        }
    }
    for (fam, key, proto) in [("v4", &key4, "ip"), ("v6", &key6, "ip6")] {
        if l.pps > 0 {
            rules.push(format!(
                "meta protocol {proto} update @pkt_{fam} {{ {key} limit rate over {}/second \
                 burst {} packets }} {}drop",
                l.pps,
                l.burst,
                ban(key, fam)
            ));
        }
    }
    let set = |name: &str, ty: &str, timeout: u64| {
        format!(
            "    set {name} {{ type {ty}; size 262144; flags dynamic,timeout; timeout {timeout}s; }}\n"
        )
    };
    let mut out = String::from("table netdev guard_bench {\n");
    out += &format!("    set allow_v4 {{ type ipv4_addr; elements = {{ {LOAD_BALANCER} }} }}\n");
    for fam in ["v4", "v6"] {
        let ty = if fam == "v4" {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        out += &set(&format!("banned_{fam}"), ty, l.ban_seconds.max(1));
        // A meter entry is forgotten 10 s after its source goes quiet.
        out += &set(&format!("syn_{fam}"), ty, 10);
        out += &set(&format!("pkt_{fam}"), ty, 10);
    }
    let devices: Vec<String> = devices.iter().map(|d| format!("{d:?}")).collect();
    out += &format!(
        "    chain ingress {{\n        type filter hook ingress devices = {{ {} }} priority -500; policy accept;\n",
        devices.join(", ")
    );
    for r in rules {
        out += &format!("        {r}\n");
    }
    out += "    }\n}\n";
    // What the meters drop, counted in a table of its own, just before and just after them:
    // nft reads a table's sets whole before it lists anything of it, and with every spoofed
    // source in the meters that takes seconds (the count table lists in milliseconds). The two
    // counters cost nftables a little per packet.
    let devices = devices.join(", ");
    out += &format!(
        "table netdev {COUNT_TABLE} {{\n    counter seen {{ }}\n    counter passed {{ }}\n"
    );
    for (chain, priority, counter) in [("before", -501, "seen"), ("after", -499, "passed")] {
        out += &format!(
            "    chain {chain} {{\n        type filter hook ingress devices = {{ {devices} }} \
             priority {priority}; policy accept;\n        counter name {counter}\n    }}\n"
        );
    }
    out += "}\n";
    out
}

/// The table that counts what enters and leaves the meters' chain.
const COUNT_TABLE: &str = "guard_bench_count";

/// A protection in place on the server; lowered on drop.
pub enum Shield {
    None {
        _floor: Floor,
    },
    Nftables {
        server: String,
        // Dropped after the table is deleted (see Drop).
        _floor: Floor,
    },
    Guard(Box<Daemon>),
}

/// What raising a shield needs.
pub struct Setup<'a> {
    pub floor_object: &'a Path,
    pub guard: &'a Path,
    pub limits: &'a Limits,
}

impl Shield {
    /// Raises `p` on the server's veths. `run` makes the guard's paths unique per scenario, so
    /// every scenario meets a guard with no state, as nftables' meters start empty.
    ///
    /// # Errors
    /// When the program, ruleset or daemon cannot be put in place.
    pub fn raise(p: Protection, top: &Topology, setup: &Setup, run: usize) -> Result<Self> {
        let ifaces = top.server_ifaces.to_vec();
        match p {
            Protection::None => Ok(Self::None {
                _floor: Floor::load(setup.floor_object)?.attach_in(&top.server, &ifaces)?,
            }),
            Protection::Nftables => {
                let floor = Floor::load(setup.floor_object)?.attach_in(&top.server, &ifaces)?;
                let file: PathBuf =
                    std::env::temp_dir().join(format!("guard-bench-{}.nft", top.bed.tag));
                fs::write(&file, nft_ruleset(setup.limits, &ifaces))?;
                let r = sh(&[
                    "ip",
                    "netns",
                    "exec",
                    &top.server,
                    "nft",
                    "-f",
                    &file.to_string_lossy(),
                ]);
                let _ = fs::remove_file(&file);
                r.context("loading the nftables ruleset in the server namespace")?;
                Ok(Self::Nftables {
                    server: top.server.clone(),
                    _floor: floor,
                })
            }
            Protection::Guard | Protection::GuardNoCookies => {
                let names: Vec<&str> = ifaces.iter().map(String::as_str).collect();
                let daemon = Daemon::start(
                    setup.guard,
                    &top.server,
                    &names,
                    &format!("{}-{run}", top.bed.tag),
                    &HealthListen::default(),
                    if p == Protection::GuardNoCookies {
                        &SERVICES_NO_COOKIES
                    } else {
                        &SERVICES
                    },
                )?;
                // As the operator guide says: the load balancer's checks are never limited.
                daemon.cli_ok(&["allow", "add", &LOAD_BALANCER.to_string()])?;
                Ok(Self::Guard(Box::new(daemon)))
            }
        }
    }

    /// Packets the protection dropped so far; `None` for no protection.
    ///
    /// # Errors
    /// When the counters cannot be read.
    pub fn dropped(&self) -> Result<Option<u64>> {
        match self {
            Self::None { .. } => Ok(None),
            Self::Nftables { server, .. } => {
                let text = sh_out(&[
                    "ip",
                    "netns",
                    "exec",
                    server,
                    "nft",
                    "-j",
                    "list",
                    "table",
                    "netdev",
                    COUNT_TABLE,
                ])?;
                let json: serde_json::Value = serde_json::from_str(&text)?;
                let counter = |name: &str| {
                    json["nftables"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|item| item.get("counter"))
                        .find(|c| c["name"] == name)
                        .and_then(|c| c["packets"].as_u64())
                        .with_context(|| format!("no counter {name} in nft's answer"))
                };
                Ok(Some(counter("seen")?.saturating_sub(counter("passed")?)))
            }
            Self::Guard(d) => d.dropped().map(Some),
        }
    }
}

impl Drop for Shield {
    fn drop(&mut self) {
        if let Self::Nftables { server, .. } = self {
            for table in ["guard_bench", COUNT_TABLE] {
                let _ = sh(&[
                    "ip", "netns", "exec", server, "nft", "delete", "table", "netdev", table,
                ]);
            }
        }
        // The floor detaches as its links drop; the daemon detaches itself (Daemon's Drop).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Limits = Limits {
        pps: 20_000,
        burst: 40_000,
        syn_pps: 200,
        syn_burst: 400,
        ban_seconds: 60,
        ipv4_prefix: 32,
        ipv6_prefix: 64,
    };

    #[test]
    fn limits_are_read_from_the_default_config_text() {
        let text = "[datapath]\nmode = \"auto\"\n[limits]\npps = 20000\nburst = 40000\n\
                    syn_pps = 200\nsyn_burst = 400\nban_seconds = 60\nipv4_prefix = 32\n\
                    ipv6_prefix = 64\n";
        assert_eq!(Limits::parse(text).unwrap(), DEFAULTS);
        assert!(Limits::parse("[limits]\npps = 1\n").is_err());
    }

    #[test]
    fn masks_match_prefix_lengths() {
        assert_eq!(mask(false, 32), "255.255.255.255");
        assert_eq!(mask(false, 24), "255.255.255.0");
        assert_eq!(mask(true, 64), "ffff:ffff:ffff:ffff::");
        assert_eq!(mask(true, 128), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn ruleset_bans_over_budget_sources_with_the_guards_numbers() {
        let r = nft_ruleset(&DEFAULTS, &["gbv0".into(), "gbv1".into()]);
        assert!(r.contains("devices = { \"gbv0\", \"gbv1\" }"));
        assert!(r.contains("limit rate over 200/second burst 400 packets"));
        assert!(r.contains("limit rate over 20000/second burst 40000 packets"));
        assert!(r.contains("add @banned_v6 { ip6 saddr & ffff:ffff:ffff:ffff:: }"));
        assert!(r.contains("timeout 60s"));
        // What the meters drop is counted around them, not by them.
        assert!(r.contains("priority -501; policy accept;\n        counter name seen"));
        assert!(r.contains("priority -499; policy accept;\n        counter name passed"));
        let off = nft_ruleset(
            &Limits {
                syn_pps: 0,
                ban_seconds: 0,
                ..DEFAULTS
            },
            &["gbv0".into()],
        );
        assert!(!off.contains("@syn_v4 {"));
        assert!(!off.contains("add @banned"));
    }
}
