//! The daemon's configuration: a TOML file (or the embedded default) parsed raw, then validated
//! into [`Settings`], with `guard run` flags applied on top; errors name line, field and range.
mod controls;
mod fleet;
mod overrides;
mod routes;
mod schema;
mod settings;
mod validate;

use std::{
    fmt, fs,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use guard_common::{Config, FLAG_DRY_RUN, MAX_RATE};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    dataplane::AttachMode,
    dataplane::ServiceProto,
    health::{CheckSpec, HealthConfig, HealthError, HealthSettings},
};

pub use controls::{MAX_ESCALATIONS, MAX_WATCHDOGS};
pub use fleet::{FleetSettings, Share, check_name};
pub use overrides::{Overrides, mode_name, parse_mode};
pub use routes::default_route_interfaces;
#[cfg(test)]
use routes::{parse_route_v4, parse_route_v6};
use schema::*;
use validate::*;

/// Services at most: slot 0 of the program's service table is everything else.
pub const MAX_SERVICES: usize = guard_common::capacity::SERVICES as usize - 1;

/// The embedded default configuration, every key commented (`guard config default`).
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The longest ban accepted: a year.
pub const MAX_BAN_SECONDS: u64 = 365 * 86_400;

/// Linux's IFNAMSIZ, including the terminating NUL.
const IFNAMSIZ: usize = 16;

/// Where a configuration came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigSource {
    /// The embedded default (no `--config`).
    Embedded,
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("the built-in default config"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where a bad value was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// In a config file (or the embedded default), at a 1-based line if known.
    Config {
        source: ConfigSource,
        line: Option<usize>,
    },
    /// On the command line.
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config {
                source,
                line: Some(line),
            } => write!(f, "{source} line {line}"),
            Self::Config { source, line: None } => write!(f, "{source}"),
            Self::Flag => f.write_str("command line"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{origin}: {message}")]
    Parse { origin: Origin, message: String },
    /// A value of the right type but outside what is accepted.
    #[error("{origin}: {field} = {value}: {expected}")]
    Invalid {
        origin: Origin,
        /// `section.key` in the file, `--flag` on the command line.
        field: String,
        value: String,
        expected: String,
    },
    /// A `[health]` value the health settings refuse; the error names field, value and range.
    #[error("{origin}: {error}")]
    Health { origin: Origin, error: HealthError },
    #[error("cannot read the routing table {path} to find the default-route interface")]
    Routes {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no interface carries a default route: name the interfaces to protect with [datapath] interfaces in the config or --iface"
    )]
    NoDefaultRoute,
}

impl ConfigError {
    /// The 1-based line of the problem in the config file, if known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse {
                origin: Origin::Config { line, .. },
                ..
            }
            | Self::Invalid {
                origin: Origin::Config { line, .. },
                ..
            }
            | Self::Health {
                origin: Origin::Config { line, .. },
                ..
            } => *line,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub source: ConfigSource,
    pub datapath: DatapathSettings,
    pub limits: Limits,
    pub attack: AttackSettings,
    pub services: Vec<ServiceSettings>,
    pub prefixes: PrefixSettings,
    pub control: ControlSettings,
    pub state: StateSettings,
    pub health: HealthSection,
    /// `[[watchdog]]`: services drained, restarted and readmitted when they break a limit.
    pub watchdogs: Vec<crate::watchdog::WatchdogSettings>,
    /// `[[escalate.haproxy]]`: HAProxy's stick tables polled, persistent offenders banned.
    pub escalate: Vec<crate::escalate::HaproxySettings>,
    /// `[fleet]`: shared bans, deny entries and drain state; `None`: this host stands alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetSettings>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatapathSettings {
    /// Empty: the default-route interfaces (see [`default_route_interfaces`]).
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    /// Directly, or as a component of libxdp's dispatcher.
    pub attach: crate::dataplane::Placement,
    /// The run priority in libxdp's dispatcher (lower runs first).
    pub priority: u32,
    pub dry_run: bool,
    pub pin_dir: PathBuf,
    /// Chain mode: the program goes into this slot of another program's array, onto no
    /// interface.
    pub chain: Option<crate::dataplane::ChainSlot>,
    /// A pinned XDP program the guard tail-calls for every packet it passes.
    pub next: Option<PathBuf>,
}

/// Per-source limits: what goes into the kernel's `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub pps: u64,
    pub burst: u64,
    pub syn_pps: u64,
    pub syn_burst: u64,
    pub ban_seconds: u64,
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Frames with no readable source, per second for the host (0 = unlimited).
    pub malformed_pps: u64,
    pub malformed_burst: u64,
}

/// `[attack]`: when a service is under attack, and what known sources and newcomers get.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttackSettings {
    /// Learn each service's normal rate (its ceiling is then `factor` times it).
    pub learn: bool,
    /// Good standing this long makes a source known; 0: never by time alone.
    pub known_after_secs: u64,
    /// A known source silent this long is forgotten.
    pub known_ttl_secs: u64,
    /// Of a service's ceiling, per second, for unknown sources while it is under attack.
    pub newcomer_share: f64,
    /// Seconds above the ceiling before a service is under attack.
    pub enter_secs: u32,
    /// Seconds below it before the attack is over.
    pub leave_secs: u32,
    /// A learned ceiling is the learned rate times this.
    pub factor: f64,
    /// A learned ceiling is never below this many packets per second.
    pub floor_pps: u64,
    /// Nor a learned SYN ceiling below this many SYNs per second.
    pub floor_syn_pps: u64,
    /// The front stage: packets a never-seen source sends (in about a second, on one CPU)
    /// before it is tracked; 0 tracks every source at once.
    pub admit_packets: u32,
}

/// `[[services]]`: a destination the guard watches for attacks.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSettings {
    pub name: String,
    pub protocol: ServiceProto,
    pub port: u16,
    /// Packets per second above which it is under attack; `None`: learned.
    pub max_pps: Option<u64>,
    /// SYNs per second above which it is under attack (TCP); `None`: learned.
    pub max_syn_pps: Option<u64>,
    /// When SYNs from sources that are not known are answered with a SYN cookie in XDP (TCP;
    /// always `Off` for UDP).
    #[serde(default)]
    pub syn_cookies: SynCookies,
}

/// `[[services]] syn_cookies`: when the program answers a SYN from a source that is not known
/// with a SYN cookie of its own (XDP_TX), passing on only the ACKs that carry a valid one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// While the service is under attack (the default for TCP services).
    #[default]
    Auto,
    /// Always.
    On,
    /// Never: the kernel's own SYN cookies as it sends them.
    Off,
}

impl SynCookies {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        }
    }

    /// Whether cookies are sent now, for a service under attack or not.
    pub fn active(self, under_attack: bool) -> bool {
        match self {
            Self::Auto => under_attack,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// `[prefixes]`: aggregate buckets per prefix, and escalation of source bans to prefix bans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrefixSettings {
    pub ipv4: u8,
    pub ipv6: u8,
    /// Packets per second per prefix from sources that are not known; 0 = off.
    pub pps: u64,
    pub burst: u64,
    /// This many source bans in one prefix within `escalate_window_secs` ban the prefix; 0 =
    /// never.
    pub escalate_after: u32,
    pub escalate_window_secs: u64,
    /// How long a prefix ban lasts.
    pub ban_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControlSettings {
    pub socket: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StateSettings {
    pub dir: PathBuf,
}

/// `[health]`: where the health outputs listen, and the health settings (validated: they make
/// a [`HealthConfig`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HealthSection {
    /// The HTTP server (`/livez`, `/readyz`, `/readyz/haproxy`, `/metrics`); `None` is off.
    pub listen: Option<SocketAddr>,
    /// The HAProxy agent-check server; `None` is off.
    pub agent_listen: Option<SocketAddr>,
    pub settings: HealthSettings,
}

impl HealthSection {
    /// The validated health configuration.
    ///
    /// # Errors
    ///
    /// Only for settings that did not come through [`Settings::parse`], which validates them.
    pub fn config(&self) -> Result<HealthConfig, HealthError> {
        HealthConfig::from_settings(&self.settings)
    }
}

/// The HTTP health listener when the config does not name one: loopback, so that nothing is
/// exposed until the operator chooses the address the load balancers reach.
pub const DEFAULT_HEALTH_LISTEN: &str = "127.0.0.1:9301";
/// The agent-check listener when the config does not name one (loopback, as above).
pub const DEFAULT_AGENT_LISTEN: &str = "127.0.0.1:9302";

/// What a listen address accepts, for error messages.
const LISTEN_EXPECTED: &str = "expected ADDRESS:PORT with an IP address and a port from 1 to 65535, such as 127.0.0.1:9301 or [::]:9301, or \"\" to turn the listener off";

/// Parses a listen address: `""` is off.
fn parse_listen(value: &str) -> Result<Option<SocketAddr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(Some(a)),
        _ => Err(LISTEN_EXPECTED.to_string()),
    }
}

// ---------------------------------------------------------------------------------------------
// Default-route interfaces.

#[cfg(test)]
mod tests;
