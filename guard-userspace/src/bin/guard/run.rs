//! `guard run`, `guard config default|check` and `guard detach`: the daemon's lifecycle and
//! its configuration, as the operator drives them.
use std::path::PathBuf;

use guard::dataplane::AttachMode;

use anyhow::Context;

use super::ClientArgs;
use guard::{
    config::{self, ConfigSource, DEFAULT_TOML, Overrides, Settings, mode_name},
    daemon::{self, RunOptions},
    duration::Human,
    ebpf,
    rpc::{ApiError, Reply, Request},
};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML config file (default: the built-in config, `guard config default`).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// If the state store is damaged, move it aside and start without it (from the pinned
    /// maps if any survived, else empty); health warns until the moved file is deleted.
    /// Without this flag a damaged store stops the start.
    #[arg(long)]
    start_empty: bool,
    #[command(flatten)]
    overrides: RunFlags,
    /// Run even when the pins' bpffs is private to this mount namespace (as under `ip netns
    /// exec`): the program and its lists then vanish with the daemon.
    #[arg(long)]
    allow_private_bpffs: bool,
}

/// `guard run` flags that override the config file (the library's [`Overrides`], with clap). Unset flags leave the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct RunFlags {
    /// Attach to this interface (repeat for several); replaces [datapath] interfaces.
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// How to attach: auto (native, else generic), native or generic.
    #[arg(long, value_name = "MODE", value_parser = config::parse_mode)]
    pub mode: Option<AttachMode>,
    /// Decide and count, but pass every packet.
    #[arg(long)]
    pub dry_run: bool,
    /// Packets per second per source (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub pps: Option<u64>,
    /// Packets a source may send at once above --pps.
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// TCP SYNs per second per source (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub syn_pps: Option<u64>,
    /// SYNs a source may send at once above --syn-pps.
    #[arg(long, value_name = "N")]
    pub syn_burst: Option<u64>,
    /// Seconds a source over a limit stays banned (0 = no bans).
    #[arg(long, value_name = "N")]
    pub ban_seconds: Option<u64>,
    /// Control socket path.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// bpffs directory for the pins (the layout version, v2/, is appended).
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory of the state store (guard.db).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where the health HTTP server listens (/livez, /readyz, /readyz/haproxy, /metrics);
    /// "" turns it off. Replaces [health] listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub health_listen: Option<String>,
    /// Where the HAProxy agent-check server listens; "" turns it off. Replaces
    /// [health] agent_listen.
    #[arg(long, value_name = "ADDR:PORT")]
    pub agent_listen: Option<String>,
}

impl From<RunFlags> for Overrides {
    fn from(f: RunFlags) -> Self {
        let RunFlags {
            interfaces,
            mode,
            dry_run,
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            socket,
            pin_dir,
            state_dir,
            health_listen,
            agent_listen,
        } = f;
        Self {
            interfaces,
            mode,
            dry_run,
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            socket,
            pin_dir,
            state_dir,
            health_listen,
            agent_listen,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Print the built-in default config, every key commented.
    Default,
    /// Validate a config file (without PATH: the built-in default) and exit 0, or name the
    /// problem with its line and field.
    Check {
        #[arg(value_name = "PATH")]
        path: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Where the pins are, if no daemon answers on the socket.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/guard")]
    pin_dir: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        config,
        start_empty,
        overrides,
        allow_private_bpffs,
    } = args;
    daemon::init_logging();
    daemon::run(RunOptions {
        config,
        overrides: overrides.into(),
        allow_private_bpffs,
        start_empty,
    })
    .context("cannot start the guard daemon")
}

pub fn config(cmd: ConfigCmd) -> anyhow::Result<()> {
    match cmd {
        ConfigCmd::Default => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        ConfigCmd::Check { path } => {
            let s = Settings::load(path.as_deref())?;
            let Settings {
                source,
                datapath,
                limits: l,
                attack,
                services,
                prefixes,
                control,
                state,
                health,
                watchdogs,
                escalate,
                fleet,
            } = &s;
            let what = match source {
                ConfigSource::Embedded => "the built-in default config".to_string(),
                ConfigSource::File(p) => p.display().to_string(),
            };
            println!("{what} is valid:");
            let interfaces = if datapath.interfaces.is_empty() {
                match config::default_route_interfaces() {
                    Ok(found) => format!("(default route) {}", found.join(", ")),
                    Err(e) => format!("(default route) none found: {e}"),
                }
            } else {
                datapath.interfaces.join(", ")
            };
            println!("  interfaces   {interfaces}");
            println!(
                "  mode         {}{}",
                mode_name(datapath.mode),
                if datapath.dry_run { ", dry run" } else { "" }
            );
            println!(
                "  limits       {} pps (burst {}), {} SYN/s (burst {}), bans {}",
                l.pps,
                l.burst,
                l.syn_pps,
                l.syn_burst,
                Human(std::time::Duration::from_secs(l.ban_seconds))
            );
            println!(
                "  sources      per /{} (IPv4), per /{} (IPv6)",
                l.ipv4_prefix, l.ipv6_prefix
            );
            println!(
                "  attack       {}, known after {} s of good standing, newcomers get {}% of a ceiling",
                if attack.learn {
                    format!(
                        "ceilings learned (x{}, at least {} pps)",
                        attack.factor, attack.floor_pps
                    )
                } else {
                    "ceilings configured".to_string()
                },
                attack.known_after_secs,
                attack.newcomer_share * 100.0
            );
            for svc in services {
                println!(
                    "  service      {} {}/{}, ceiling {}",
                    svc.name,
                    svc.protocol.name(),
                    svc.port,
                    svc.max_pps
                        .map_or_else(|| "learned".to_string(), |c| format!("{c} pps"))
                );
            }
            println!(
                "  prefixes     /{} and /{}: {}, escalate after {} bans in {} s to a {} ban",
                prefixes.ipv4,
                prefixes.ipv6,
                if prefixes.pps == 0 {
                    "no aggregate limit".to_string()
                } else {
                    format!("{} pps (burst {})", prefixes.pps, prefixes.burst)
                },
                prefixes.escalate_after,
                prefixes.escalate_window_secs,
                Human(std::time::Duration::from_secs(prefixes.ban_seconds))
            );
            println!("  pins         {}", datapath.pin_dir.display());
            println!("  socket       {}", control.socket.display());
            println!("  state        {}", state.dir.display());
            match fleet {
                Some(f) => println!(
                    "  fleet        host {} of pool {} via {}, sharing {}, at most {}% drained",
                    f.host,
                    f.pool,
                    f.servers.join(", "),
                    f.share
                        .iter()
                        .map(|s| s.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                    f.max_drained * 100.0
                ),
                None => println!("  fleet        off (this host stands alone)"),
            }
            let listener = |a: &Option<std::net::SocketAddr>| {
                a.map_or_else(|| "off".to_string(), |a| a.to_string())
            };
            println!(
                "  health       http {}, agent {}",
                listener(&health.listen),
                listener(&health.agent_listen)
            );
            let h = &health.settings;
            println!(
                "  headroom     warn at {}%, drain at {}% (PSI warn at {}%, drain at {}%), weight floor {}%, rise {}, fall {}",
                h.warn_at,
                h.drain_at,
                h.psi_warn_at,
                h.psi_drain_at,
                h.weight_floor,
                h.rise,
                h.fall
            );
            if h.checks.is_empty() {
                println!("  checks       none");
            }
            for c in &h.checks {
                println!(
                    "  checks       {} {}{}",
                    c.kind,
                    c.target,
                    c.name
                        .as_ref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
            }
            for w in watchdogs {
                println!(
                    "  watchdog     {}: check {}, restart by {}, after {} bad samples, drain {} s, at most once per {}",
                    w.name,
                    w.check,
                    match &w.restart {
                        guard::watchdog::Restart::Unit(u) => format!("systemd unit {u}"),
                        guard::watchdog::Restart::Command(c) => format!("{:?}", c.join(" ")),
                    },
                    w.fail_after,
                    w.drain_secs,
                    Human(std::time::Duration::from_secs(w.min_interval_secs))
                );
            }
            for e in escalate {
                println!(
                    "  escalate     HAProxy table {} on {}: {} for {} s bans for {} (l7:haproxy)",
                    e.table,
                    e.socket.display(),
                    e.when,
                    e.for_secs,
                    Human(std::time::Duration::from_secs(e.ban_secs))
                );
            }
            Ok(())
        }
    }
}

pub fn detach(args: &DetachArgs) -> anyhow::Result<()> {
    let DetachArgs { client, pin_dir } = args;
    let interfaces = match client.call(&Request::Detach) {
        Ok(Reply::Detached { interfaces }) => interfaces,
        Ok(other) => return Err(super::unexpected(&other)),
        Err(e) => match e.downcast_ref::<ApiError>() {
            // No daemon: detach here, from the pins.
            Some(ApiError::Connect { .. }) => ebpf::detach(pin_dir).with_context(|| {
                format!(
                    "no daemon answered on {}, and detaching from the pins under {} failed",
                    client.socket.display(),
                    pin_dir.display()
                )
            })?,
            _ => return Err(e),
        },
    };
    if client.json {
        return super::print_json(&serde_json::json!({ "detached": interfaces }));
    }
    if interfaces.is_empty() {
        println!("nothing was attached; the pins are gone");
    } else {
        println!(
            "detached from {}; the pins are removed and the daemon has stopped",
            interfaces.join(", ")
        );
    }
    Ok(())
}
