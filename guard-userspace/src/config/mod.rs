//! The daemon's configuration: a TOML file (or the embedded default) parsed raw, then validated
//! into [`Settings`], with `guard run` flags applied on top; errors name line, field and range.
mod overrides;
mod routes;
mod schema;
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
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DatapathSettings {
    /// Empty: the default-route interfaces (see [`default_route_interfaces`]).
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    pub dry_run: bool,
    pub pin_dir: PathBuf,
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

impl Settings {
    /// The built-in values, which `default.toml` spells out (a test keeps the two equal).
    pub fn builtin() -> Self {
        Self {
            source: ConfigSource::Embedded,
            datapath: DatapathSettings {
                interfaces: Vec::new(),
                mode: AttachMode::Auto,
                dry_run: false,
                pin_dir: PathBuf::from("/sys/fs/bpf/guard"),
            },
            limits: Limits {
                pps: 20_000,
                burst: 40_000,
                syn_pps: 200,
                syn_burst: 400,
                ban_seconds: 60,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                malformed_pps: 1_000,
                malformed_burst: 2_000,
            },
            attack: AttackSettings {
                learn: true,
                known_after_secs: 10,
                known_ttl_secs: 86_400,
                newcomer_share: 0.1,
                enter_secs: 2,
                leave_secs: 10,
                factor: 3.0,
                floor_pps: 1_000,
                floor_syn_pps: 100,
                admit_packets: 4,
            },
            services: Vec::new(),
            prefixes: PrefixSettings {
                ipv4: 24,
                ipv6: 48,
                pps: 100_000,
                burst: 200_000,
                escalate_after: 8,
                escalate_window_secs: 60,
                ban_seconds: 600,
            },
            control: ControlSettings {
                socket: PathBuf::from("/run/guard/guard.sock"),
            },
            state: StateSettings {
                dir: PathBuf::from("/var/lib/guard"),
            },
            health: HealthSection {
                listen: parse_listen(DEFAULT_HEALTH_LISTEN).expect("a valid default"),
                agent_listen: parse_listen(DEFAULT_AGENT_LISTEN).expect("a valid default"),
                settings: HealthSettings::default(),
            },
        }
    }

    /// Reads and validates `path`, or the embedded default if `None`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read; otherwise as [`Settings::parse`].
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(DEFAULT_TOML, ConfigSource::Embedded),
            Some(p) => {
                let text = fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, ConfigSource::File(p.to_path_buf()))
            }
        }
    }

    /// Parses and validates TOML text; keys it leaves out take their [`Settings::builtin`] value.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad TOML, unknown keys or wrong types;
    /// [`ConfigError::Invalid`] for values out of range. Both carry the line.
    pub fn parse(text: &str, source: ConfigSource) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: Origin::Config {
                source: source.clone(),
                line: e.span().map(|s| line_of(text, &s)),
            },
            message: e.message().trim_end().to_string(),
        })?;
        let v = Validator {
            text,
            source: &source,
        };
        let RawConfig {
            datapath,
            limits,
            attack,
            services,
            prefixes,
            control,
            state,
            health,
        } = raw;
        let mut out = Self::builtin();
        out.source = source.clone();

        let RawDatapath {
            interfaces,
            mode,
            dry_run,
            pin_dir,
        } = datapath;
        if let Some(list) = interfaces {
            let mut names: Vec<String> = Vec::with_capacity(list.len());
            for name in list {
                let span = name.span();
                let name = name.into_inner();
                if let Err(expected) = check_iface(&name, &names) {
                    return Err(v.invalid(
                        &span,
                        "datapath.interfaces",
                        format!("{name:?}"),
                        expected,
                    ));
                }
                names.push(name);
            }
            out.datapath.interfaces = names;
        }
        if let Some(mode) = mode {
            out.datapath.mode = mode.into_inner();
        }
        if let Some(dry_run) = dry_run {
            out.datapath.dry_run = dry_run;
        }
        if let Some(dir) = pin_dir {
            out.datapath.pin_dir = v.path(dir, "datapath.pin_dir", true)?;
        }

        let RawLimits {
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            ipv4_prefix,
            ipv6_prefix,
            malformed_pps,
            malformed_burst,
        } = limits;
        let l = &mut out.limits;
        v.set(
            &mut l.malformed_pps,
            malformed_pps,
            "limits.malformed_pps",
            0,
            MAX_RATE,
        )?;
        v.set(
            &mut l.malformed_burst,
            malformed_burst,
            "limits.malformed_burst",
            0,
            MAX_RATE,
        )?;
        v.set(&mut l.pps, pps, "limits.pps", 0, MAX_RATE)?;
        v.set(&mut l.burst, burst, "limits.burst", 0, MAX_RATE)?;
        v.set(&mut l.syn_pps, syn_pps, "limits.syn_pps", 0, MAX_RATE)?;
        v.set(&mut l.syn_burst, syn_burst, "limits.syn_burst", 0, MAX_RATE)?;
        v.set(
            &mut l.ban_seconds,
            ban_seconds,
            "limits.ban_seconds",
            0,
            MAX_BAN_SECONDS,
        )?;
        let mut p4 = u64::from(l.ipv4_prefix);
        v.set(&mut p4, ipv4_prefix, "limits.ipv4_prefix", 1, 32)?;
        l.ipv4_prefix = p4 as u8;
        let mut p6 = u64::from(l.ipv6_prefix);
        v.set(&mut p6, ipv6_prefix, "limits.ipv6_prefix", 1, 128)?;
        l.ipv6_prefix = p6 as u8;

        out.attack = v.attack(attack)?;
        out.prefixes = v.prefixes(prefixes, &out.limits)?;
        out.services = v.services(services.unwrap_or_default(), out.attack.learn)?;

        let RawControl { socket } = control;
        if let Some(socket) = socket {
            out.control.socket = v.path(socket, "control.socket", false)?;
        }
        let RawState { dir } = state;
        if let Some(dir) = dir {
            out.state.dir = v.path(dir, "state.dir", false)?;
        }
        out.health = v.health(health)?;
        Ok(out)
    }

    /// Applies `guard run` flags on top.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the flag, for a value out of range.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let Overrides {
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
        } = o;
        let flag = |field: &str, value: String, expected: String| ConfigError::Invalid {
            origin: Origin::Flag,
            field: format!("--{field}"),
            value,
            expected,
        };
        if !interfaces.is_empty() {
            let mut names: Vec<String> = Vec::with_capacity(interfaces.len());
            for name in interfaces {
                check_iface(name, &names).map_err(|e| flag("iface", format!("{name:?}"), e))?;
                names.push(name.clone());
            }
            self.datapath.interfaces = names;
        }
        if let Some(mode) = mode {
            self.datapath.mode = *mode;
        }
        if *dry_run {
            self.datapath.dry_run = true;
        }
        let l = &mut self.limits;
        for (slot, value, name, max) in [
            (&mut l.pps, pps, "pps", MAX_RATE),
            (&mut l.burst, burst, "burst", MAX_RATE),
            (&mut l.syn_pps, syn_pps, "syn-pps", MAX_RATE),
            (&mut l.syn_burst, syn_burst, "syn-burst", MAX_RATE),
            (
                &mut l.ban_seconds,
                ban_seconds,
                "ban-seconds",
                MAX_BAN_SECONDS,
            ),
        ] {
            if let Some(value) = *value {
                if value > max {
                    return Err(flag(name, value.to_string(), range_text(0, max)));
                }
                *slot = value;
            }
        }
        for (slot, value, name, absolute) in [
            (&mut self.control.socket, socket, "socket", false),
            (&mut self.datapath.pin_dir, pin_dir, "pin-dir", true),
            (&mut self.state.dir, state_dir, "state-dir", false),
        ] {
            if let Some(p) = value {
                check_path(p, absolute)
                    .map_err(|e| flag(name, format!("{:?}", p.display().to_string()), e))?;
                *slot = p.clone();
            }
        }
        for (slot, value, name) in [
            (&mut self.health.listen, health_listen, "health-listen"),
            (&mut self.health.agent_listen, agent_listen, "agent-listen"),
        ] {
            if let Some(v) = value {
                *slot = parse_listen(v).map_err(|e| flag(name, format!("{v:?}"), e))?;
            }
        }
        Ok(())
    }

    /// The kernel's view of these settings, for `GUARD_CONFIG[0]`.
    pub fn kernel_config(&self) -> Config {
        let Limits {
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            ipv4_prefix,
            ipv6_prefix,
            malformed_pps,
            malformed_burst,
        } = self.limits;
        let PrefixSettings {
            ipv4: prefix_v4,
            ipv6: prefix_v6,
            pps: prefix_pps,
            burst: prefix_burst,
            ..
        } = self.prefixes;
        Config {
            pps,
            burst,
            syn_pps,
            syn_burst,
            // MAX_BAN_SECONDS keeps this far from overflow.
            ban_ns: ban_seconds * 1_000_000_000,
            flags: if self.datapath.dry_run {
                FLAG_DRY_RUN
            } else {
                0
            },
            v4_prefix_len: u32::from(ipv4_prefix),
            v6_prefix_len: u32::from(ipv6_prefix),
            admit_packets: self.attack.admit_packets,
            known_after_ns: self.attack.known_after_secs * 1_000_000_000,
            prefix_v4_len: u32::from(prefix_v4),
            prefix_v6_len: u32::from(prefix_v6),
            prefix_pps,
            prefix_burst,
            malformed_pps,
            malformed_burst,
            // Derived by the datapath when it writes the config.
            ..Config::default()
        }
    }

    /// The state file path.
    pub fn state_file(&self) -> PathBuf {
        self.state.dir.join(crate::state::FILE_NAME)
    }

    /// The settings that a reload cannot change without a restart and that differ in `new`,
    /// as `section.key` names.
    pub fn restart_needed_for(&self, new: &Settings) -> Vec<&'static str> {
        let Settings {
            source: _,
            datapath:
                DatapathSettings {
                    interfaces,
                    mode,
                    dry_run: _,
                    pin_dir,
                },
            limits:
                Limits {
                    ipv4_prefix,
                    ipv6_prefix,
                    ..
                },
            control: ControlSettings { socket },
            state: StateSettings { dir },
            // Applied by a reload: new listeners are bound before the old ones close.
            health: _,
            // Applied by a reload: the services are re-mapped, monitors of unchanged ones
            // keep what they learned.
            attack: _,
            services: _,
            prefixes: _,
        } = self;
        let mut out = Vec::new();
        if *interfaces != new.datapath.interfaces {
            out.push("datapath.interfaces");
        }
        if *mode != new.datapath.mode {
            out.push("datapath.mode");
        }
        if *pin_dir != new.datapath.pin_dir {
            out.push("datapath.pin_dir");
        }
        if *socket != new.control.socket {
            out.push("control.socket");
        }
        if *dir != new.state.dir {
            out.push("state.dir");
        }
        if *ipv4_prefix != new.limits.ipv4_prefix {
            out.push("limits.ipv4_prefix");
        }
        if *ipv6_prefix != new.limits.ipv6_prefix {
            out.push("limits.ipv6_prefix");
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Default-route interfaces.

#[cfg(test)]
mod tests;
