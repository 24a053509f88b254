//! The daemon's configuration: a TOML file (or the embedded default) parsed raw, then validated
//! into [`Settings`], with `guard run` flags applied on top; errors name line, field and range.
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
    datapath::ServiceProto,
    ebpf::AttachMode,
    health::{CheckSpec, HealthConfig, HealthError, HealthSettings},
};

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
// Raw: what the file says, with spans, before validation. Integers are read as i64 (TOML's
// integer type) so that a negative value gets our range message, not serde's type message.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    datapath: RawDatapath,
    limits: RawLimits,
    attack: RawAttack,
    services: Option<Vec<Spanned<RawService>>>,
    prefixes: RawPrefixes,
    control: RawControl,
    state: RawState,
    health: RawHealth,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAttack {
    learn: Option<bool>,
    known_after_secs: Option<Spanned<i64>>,
    known_ttl_secs: Option<Spanned<i64>>,
    newcomer_share: Option<Spanned<f64>>,
    enter_secs: Option<Spanned<i64>>,
    leave_secs: Option<Spanned<i64>>,
    factor: Option<Spanned<f64>>,
    floor_pps: Option<Spanned<i64>>,
    floor_syn_pps: Option<Spanned<i64>>,
    admit_packets: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    protocol: Spanned<String>,
    port: Spanned<i64>,
    max_pps: Option<Spanned<i64>>,
    max_syn_pps: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPrefixes {
    ipv4: Option<Spanned<i64>>,
    ipv6: Option<Spanned<i64>>,
    pps: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    escalate_after: Option<Spanned<i64>>,
    escalate_window: Option<Spanned<i64>>,
    ban_seconds: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatapath {
    interfaces: Option<Vec<Spanned<String>>>,
    mode: Option<Spanned<AttachMode>>,
    dry_run: Option<bool>,
    pin_dir: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    pps: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
    syn_pps: Option<Spanned<i64>>,
    syn_burst: Option<Spanned<i64>>,
    ban_seconds: Option<Spanned<i64>>,
    ipv4_prefix: Option<Spanned<i64>>,
    ipv6_prefix: Option<Spanned<i64>>,
    malformed_pps: Option<Spanned<i64>>,
    malformed_burst: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawControl {
    socket: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawState {
    dir: Option<Spanned<String>>,
}

/// `[health]`: the listeners, then [`HealthSettings`] key for key (with spans, so that a value
/// the health settings refuse is reported with its line).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    listen: Option<Spanned<String>>,
    agent_listen: Option<Spanned<String>>,
    warn_at: Option<Spanned<f64>>,
    drain_at: Option<Spanned<f64>>,
    weight_floor: Option<Spanned<i64>>,
    psi_warn_at: Option<Spanned<f64>>,
    psi_drain_at: Option<Spanned<f64>>,
    map_warn_at: Option<Spanned<f64>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    checks: Option<Vec<Spanned<CheckSpec>>>,
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

/// `guard run` flags that override the config file. Unset flags leave the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct Overrides {
    /// Attach to this interface (repeat for several); replaces [datapath] interfaces.
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// How to attach: auto (native, else generic), native or generic.
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
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
    /// Directory of the state file.
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

/// Parses an attach mode as the config file spells it.
///
/// # Errors
///
/// A message naming the value and the accepted modes.
pub fn parse_mode(s: &str) -> Result<AttachMode, String> {
    match s {
        "auto" => Ok(AttachMode::Auto),
        "native" => Ok(AttachMode::Native),
        "generic" => Ok(AttachMode::Generic),
        _ => Err(format!(
            "{s:?} is not an attach mode: expected auto, native or generic"
        )),
    }
}

/// The name [`parse_mode`] accepts for `mode`.
pub fn mode_name(mode: AttachMode) -> &'static str {
    match mode {
        AttachMode::Auto => "auto",
        AttachMode::Native => "native",
        AttachMode::Generic => "generic",
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

struct Validator<'a> {
    text: &'a str,
    source: &'a ConfigSource,
}

impl Validator<'_> {
    fn invalid(
        &self,
        span: &Range<usize>,
        field: &str,
        value: String,
        expected: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: Origin::Config {
                source: self.source.clone(),
                line: Some(line_of(self.text, span)),
            },
            field: field.to_string(),
            value,
            expected,
        }
    }

    fn set(
        &self,
        slot: &mut u64,
        raw: Option<Spanned<i64>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        let Some(raw) = raw else { return Ok(()) };
        let span = raw.span();
        let value = raw.into_inner();
        match u64::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => {
                *slot = v;
                Ok(())
            }
            _ => Err(self.invalid(&span, field, value.to_string(), range_text(min, max))),
        }
    }

    fn path(
        &self,
        raw: Spanned<String>,
        field: &str,
        absolute: bool,
    ) -> Result<PathBuf, ConfigError> {
        let span = raw.span();
        let value = raw.into_inner();
        let p = PathBuf::from(&value);
        check_path(&p, absolute)
            .map_err(|e| self.invalid(&span, field, format!("{value:?}"), e))?;
        Ok(p)
    }
}

impl Validator<'_> {
    fn set_f64(
        &self,
        slot: &mut f64,
        raw: Option<Spanned<f64>>,
        field: &str,
        ok: impl Fn(f64) -> bool,
        expected: &str,
    ) -> Result<(), ConfigError> {
        let Some(raw) = raw else { return Ok(()) };
        let span = raw.span();
        let value = raw.into_inner();
        if !value.is_finite() || !ok(value) {
            return Err(self.invalid(&span, field, value.to_string(), expected.to_string()));
        }
        *slot = value;
        Ok(())
    }

    fn set_u32(
        &self,
        slot: &mut u32,
        raw: Option<Spanned<i64>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        let mut wide = u64::from(*slot);
        self.set(&mut wide, raw, field, min, max)?;
        *slot = wide as u32;
        Ok(())
    }

    /// `[attack]`: keys left out keep their defaults.
    fn attack(&self, raw: RawAttack) -> Result<AttackSettings, ConfigError> {
        let RawAttack {
            learn,
            known_after_secs,
            known_ttl_secs,
            newcomer_share,
            enter_secs,
            leave_secs,
            factor,
            floor_pps,
            floor_syn_pps,
            admit_packets,
        } = raw;
        let mut a = Settings::builtin().attack;
        if let Some(learn) = learn {
            a.learn = learn;
        }
        self.set(
            &mut a.known_after_secs,
            known_after_secs,
            "attack.known_after_secs",
            0,
            86_400,
        )?;
        self.set(
            &mut a.known_ttl_secs,
            known_ttl_secs,
            "attack.known_ttl_secs",
            60,
            MAX_BAN_SECONDS,
        )?;
        self.set_f64(
            &mut a.newcomer_share,
            newcomer_share,
            "attack.newcomer_share",
            |v| (0.0..=1.0).contains(&v),
            "out of range: accepts 0 to 1 (a share of the service's ceiling, such as 0.1)",
        )?;
        self.set_u32(&mut a.enter_secs, enter_secs, "attack.enter_secs", 1, 3_600)?;
        self.set_u32(
            &mut a.leave_secs,
            leave_secs,
            "attack.leave_secs",
            1,
            86_400,
        )?;
        self.set_f64(
            &mut a.factor,
            factor,
            "attack.factor",
            |v| v > 1.0 && v <= 100.0,
            "out of range: accepts more than 1, up to 100 (the learned rate times this)",
        )?;
        self.set(&mut a.floor_pps, floor_pps, "attack.floor_pps", 1, MAX_RATE)?;
        self.set(
            &mut a.floor_syn_pps,
            floor_syn_pps,
            "attack.floor_syn_pps",
            1,
            MAX_RATE,
        )?;
        self.set_u32(
            &mut a.admit_packets,
            admit_packets,
            "attack.admit_packets",
            0,
            1_000,
        )?;
        Ok(a)
    }

    /// `[prefixes]`: keys left out keep their defaults (each length capped by the tracking
    /// prefix).
    fn prefixes(&self, raw: RawPrefixes, limits: &Limits) -> Result<PrefixSettings, ConfigError> {
        let RawPrefixes {
            ipv4,
            ipv6,
            pps,
            burst,
            escalate_after,
            escalate_window,
            ban_seconds,
        } = raw;
        let mut p = Settings::builtin().prefixes;
        // A prefix holds whole tracked sources (and their bans), so it is at most as long as
        // the tracking prefix.
        let mut v4 = u64::from(p.ipv4.min(limits.ipv4_prefix));
        self.set(
            &mut v4,
            ipv4,
            "prefixes.ipv4",
            8,
            u64::from(limits.ipv4_prefix),
        )?;
        p.ipv4 = v4 as u8;
        let mut v6 = u64::from(p.ipv6.min(limits.ipv6_prefix));
        self.set(
            &mut v6,
            ipv6,
            "prefixes.ipv6",
            16,
            u64::from(limits.ipv6_prefix),
        )?;
        p.ipv6 = v6 as u8;
        self.set(&mut p.pps, pps, "prefixes.pps", 0, MAX_RATE)?;
        self.set(&mut p.burst, burst, "prefixes.burst", 0, MAX_RATE)?;
        self.set_u32(
            &mut p.escalate_after,
            escalate_after,
            "prefixes.escalate_after",
            0,
            65_536,
        )?;
        self.set(
            &mut p.escalate_window_secs,
            escalate_window,
            "prefixes.escalate_window",
            1,
            86_400,
        )?;
        self.set(
            &mut p.ban_seconds,
            ban_seconds,
            "prefixes.ban_seconds",
            1,
            MAX_BAN_SECONDS,
        )?;
        Ok(p)
    }

    /// `[[services]]`: unique names and (protocol, port) pairs, ceilings where not learned.
    fn services(
        &self,
        raw: Vec<Spanned<RawService>>,
        learn: bool,
    ) -> Result<Vec<ServiceSettings>, ConfigError> {
        let mut out: Vec<ServiceSettings> = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let whole = item.span();
            let RawService {
                name,
                protocol,
                port,
                max_pps,
                max_syn_pps,
            } = item.into_inner();
            let field = |key: &str| format!("services[{i}].{key}");
            if i >= MAX_SERVICES {
                return Err(self.invalid(
                    &whole,
                    "services",
                    format!("{} entries", i + 1),
                    format!("at most {MAX_SERVICES} services"),
                ));
            }
            let (name_span, name) = (name.span(), name.into_inner());
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    "1 to 32 letters, digits, '-', '_' or '.', such as \"dns\"".to_string(),
                ));
            }
            if out.iter().any(|s| s.name == name) {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    "used twice: give each service its own name".to_string(),
                ));
            }
            let (proto_span, proto) = (protocol.span(), protocol.into_inner());
            let protocol = match proto.as_str() {
                "udp" => ServiceProto::Udp,
                "tcp" => ServiceProto::Tcp,
                _ => {
                    return Err(self.invalid(
                        &proto_span,
                        &field("protocol"),
                        format!("{proto:?}"),
                        "expected \"udp\" or \"tcp\"".to_string(),
                    ));
                }
            };
            let port_span = port.span();
            let mut p = 0;
            self.set(&mut p, Some(port), &field("port"), 1, 65_535)?;
            let port = p as u16;
            if let Some(other) = out
                .iter()
                .find(|s| s.protocol == protocol && s.port == port)
            {
                return Err(self.invalid(
                    &port_span,
                    &field("port"),
                    port.to_string(),
                    format!(
                        "{} port {port} is already service {:?}: one service per protocol and port",
                        protocol.name(),
                        other.name
                    ),
                ));
            }
            let ceiling =
                |raw: Option<Spanned<i64>>, key: &str| -> Result<Option<u64>, ConfigError> {
                    match raw {
                        None => Ok(None),
                        Some(r) => {
                            let mut v = 0;
                            self.set(&mut v, Some(r), &field(key), 1, MAX_RATE)?;
                            Ok(Some(v))
                        }
                    }
                };
            let max_pps_span = max_pps.as_ref().map(Spanned::span);
            let max_pps = ceiling(max_pps, "max_pps")?;
            let syn_span = max_syn_pps.as_ref().map(Spanned::span);
            let max_syn_pps = ceiling(max_syn_pps, "max_syn_pps")?;
            if let (Some(span), ServiceProto::Udp) = (&syn_span, protocol) {
                return Err(self.invalid(
                    span,
                    &field("max_syn_pps"),
                    max_syn_pps.unwrap_or_default().to_string(),
                    "only a tcp service has SYNs: remove it or set protocol = \"tcp\"".to_string(),
                ));
            }
            if !learn && max_pps.is_none() {
                return Err(self.invalid(
                    max_pps_span.as_ref().unwrap_or(&whole),
                    &field("max_pps"),
                    "(none)".to_string(),
                    "required when [attack] learn = false: the packets per second above which the service is under attack".to_string(),
                ));
            }
            out.push(ServiceSettings {
                name,
                protocol,
                port,
                max_pps,
                max_syn_pps,
            });
        }
        Ok(out)
    }

    /// Builds and validates the `[health]` section: keys left out keep their defaults.
    fn health(&self, raw: RawHealth) -> Result<HealthSection, ConfigError> {
        let RawHealth {
            listen,
            agent_listen,
            warn_at,
            drain_at,
            weight_floor,
            psi_warn_at,
            psi_drain_at,
            map_warn_at,
            rise,
            fall,
            checks,
        } = raw;
        let mut out = Settings::builtin().health;
        for (slot, raw, field) in [
            (&mut out.listen, listen, "health.listen"),
            (&mut out.agent_listen, agent_listen, "health.agent_listen"),
        ] {
            if let Some(raw) = raw {
                let span = raw.span();
                let value = raw.into_inner();
                *slot = parse_listen(&value)
                    .map_err(|e| self.invalid(&span, field, format!("{value:?}"), e))?;
            }
        }
        // Where each key was written, for the line of an error.
        let mut spans: Vec<(&'static str, Range<usize>)> = Vec::new();
        let HealthSettings {
            warn_at: s_warn_at,
            drain_at: s_drain_at,
            weight_floor: s_weight_floor,
            psi_warn_at: s_psi_warn_at,
            psi_drain_at: s_psi_drain_at,
            map_warn_at: s_map_warn_at,
            rise: s_rise,
            fall: s_fall,
            checks: s_checks,
        } = &mut out.settings;
        for (slot, raw, field) in [
            (s_warn_at, warn_at, "health.warn_at"),
            (s_drain_at, drain_at, "health.drain_at"),
            (s_psi_warn_at, psi_warn_at, "health.psi_warn_at"),
            (s_psi_drain_at, psi_drain_at, "health.psi_drain_at"),
            (s_map_warn_at, map_warn_at, "health.map_warn_at"),
        ] {
            if let Some(raw) = raw {
                spans.push((field, raw.span()));
                *slot = raw.into_inner();
            }
        }
        for (slot, raw, field, min, max) in [
            (s_weight_floor, weight_floor, "health.weight_floor", 0, 100),
            (s_rise, rise, "health.rise", 1, 100),
            (s_fall, fall, "health.fall", 1, 100),
        ] {
            if let Some(raw) = raw {
                let span = raw.span();
                let value = raw.into_inner();
                // Out of u32: the health settings would never see it, so say the range here.
                *slot = u32::try_from(value).map_err(|_| {
                    self.invalid(&span, field, value.to_string(), range_text(min, max))
                })?;
                spans.push((field, span));
            }
        }
        let mut check_spans = Vec::new();
        if let Some(list) = checks {
            *s_checks = list
                .into_iter()
                .map(|c| {
                    check_spans.push(c.span());
                    c.into_inner()
                })
                .collect();
        }
        if let Err(error) = HealthConfig::from_settings(&out.settings) {
            let span_of = |field: &str| spans.iter().find(|(f, _)| *f == field).map(|(_, s)| s);
            let span = match &error {
                HealthError::Threshold { field, .. } | HealthError::Range { field, .. } => {
                    span_of(field)
                }
                HealthError::ThresholdOrder {
                    warn_field,
                    drain_field,
                    ..
                } => span_of(warn_field).or_else(|| span_of(drain_field)),
                HealthError::UnknownCheckType { index, .. }
                | HealthError::CheckTarget { index, .. }
                | HealthError::CheckTimeout { index, .. } => check_spans.get(*index),
                HealthError::TooManyChecks { .. } => check_spans.last(),
                HealthError::UnknownFormat { .. } => None,
            };
            return Err(ConfigError::Health {
                origin: Origin::Config {
                    source: self.source.clone(),
                    line: span.map(|s| line_of(self.text, s)),
                },
                error,
            });
        }
        Ok(out)
    }
}

fn range_text(min: u64, max: u64) -> String {
    format!("out of range: accepts {min} to {max}")
}

fn check_path(p: &Path, absolute: bool) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err("empty path: expected a file system path".to_string());
    }
    if absolute && !p.is_absolute() {
        return Err("expected an absolute path, such as /sys/fs/bpf/guard".to_string());
    }
    Ok(())
}

/// Checks an interface name as the kernel would accept it, and against duplicates.
fn check_iface(name: &str, seen: &[String]) -> Result<(), String> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(format!(
            "an interface name is 1 to {} bytes, such as eth0",
            IFNAMSIZ - 1
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err("not a valid interface name: expected a name such as eth0".to_string());
    }
    if seen.iter().any(|s| s == name) {
        return Err("listed twice: name each interface once".to_string());
    }
    Ok(())
}

/// The 1-based line of the start of `span` in `text`.
fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

// ---------------------------------------------------------------------------------------------
// Default-route interfaces.

/// The interfaces that carry a default route, IPv4 first, each ordered by metric, without
/// duplicates. A host with its IPv4 and IPv6 default routes on different interfaces gets both,
/// so neither path is left unprotected.
///
/// # Errors
///
/// [`ConfigError::Routes`] if `/proc/net/route` cannot be read, [`ConfigError::NoDefaultRoute`]
/// if no interface carries one. A missing `/proc/net/ipv6_route` (IPv6 disabled) is not an error.
pub fn default_route_interfaces() -> Result<Vec<String>, ConfigError> {
    const V4: &str = "/proc/net/route";
    const V6: &str = "/proc/net/ipv6_route";
    let v4 = fs::read_to_string(V4).map_err(|source| ConfigError::Routes { path: V4, source })?;
    let v6 = match fs::read_to_string(V6) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ConfigError::Routes { path: V6, source }),
    };
    let mut out: Vec<String> = Vec::new();
    for name in parse_route_v4(&v4).into_iter().chain(parse_route_v6(&v6)) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoDefaultRoute);
    }
    Ok(out)
}

/// `RTF_UP` from `<linux/route.h>`.
const RTF_UP: u32 = 0x0001;

/// Interfaces of the up IPv4 default routes (destination and mask 0) in `/proc/net/route`
/// text, by metric.
fn parse_route_v4(text: &str) -> Vec<String> {
    let mut routes: Vec<(u32, String)> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
            if f.len() < 8 {
                return None;
            }
            let flags = u32::from_str_radix(f[3], 16).ok()?;
            let metric: u32 = f[6].parse().ok()?;
            (f[1] == "00000000" && f[7] == "00000000" && flags & RTF_UP != 0)
                .then(|| (metric, f[0].to_string()))
        })
        .collect();
    routes.sort();
    routes.into_iter().map(|(_, name)| name).collect()
}

/// Interfaces of the up IPv6 default routes (`::/0`) in `/proc/net/ipv6_route` text, by
/// metric. The kernel's placeholder `::/0` unreachable route on `lo` is skipped.
fn parse_route_v6(text: &str) -> Vec<String> {
    let mut routes: Vec<(u32, String)> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // dest dest_plen src src_plen nexthop metric refcnt use flags iface
            if f.len() < 10 {
                return None;
            }
            let zero = "0".repeat(32);
            let metric = u32::from_str_radix(f[5], 16).ok()?;
            let flags = u32::from_str_radix(f[8], 16).ok()?;
            (f[0] == zero && f[1] == "00" && flags & RTF_UP != 0 && f[9] != "lo")
                .then(|| (metric, f[9].to_string()))
        })
        .collect();
    routes.sort();
    routes.into_iter().map(|(_, name)| name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, ConfigSource::File(PathBuf::from("/etc/guard.toml")))
    }

    #[test]
    fn embedded_default_parses_to_the_builtin_values() {
        assert_eq!(Settings::load(None).unwrap(), Settings::builtin());
    }

    #[test]
    fn every_default_key_is_commented() {
        // Each `key = value` line is preceded by a comment line (or another key's comment
        // block), so `guard config default` explains everything it shows.
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.contains(" = ") && !line.starts_with('#') {
                assert!(
                    i > 0 && lines[i - 1].starts_with('#'),
                    "default.toml line {}: {line:?} has no comment above it",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn empty_file_means_builtin_values() {
        let s = parse("").unwrap();
        assert_eq!(s.limits, Settings::builtin().limits);
        assert_eq!(
            s.source,
            ConfigSource::File(PathBuf::from("/etc/guard.toml"))
        );
    }

    #[test]
    fn file_values_override_builtin() {
        let s = parse(
            "[datapath]\ninterfaces = [\"eth0\", \"eth1\"]\nmode = \"generic\"\ndry_run = true\n\
             [limits]\npps = 100\nipv6_prefix = 56\n[control]\nsocket = \"/tmp/g.sock\"\n",
        )
        .unwrap();
        assert_eq!(s.datapath.interfaces, ["eth0", "eth1"]);
        assert_eq!(s.datapath.mode, AttachMode::Generic);
        assert!(s.datapath.dry_run);
        assert_eq!(s.limits.pps, 100);
        assert_eq!(s.limits.burst, 40_000);
        assert_eq!(s.limits.ipv6_prefix, 56);
        assert_eq!(s.control.socket, PathBuf::from("/tmp/g.sock"));
    }

    #[test]
    fn out_of_range_value_names_line_field_value_and_range() {
        let e = parse("[limits]\nburst = 5\npps = -5\n").unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert_eq!(
            e.to_string(),
            "/etc/guard.toml line 3: limits.pps = -5: out of range: accepts 0 to 4294967296"
        );
        let e = parse("[limits]\nipv4_prefix = 33\n").unwrap_err();
        assert!(e.to_string().contains("limits.ipv4_prefix = 33"), "{e}");
        assert!(e.to_string().contains("accepts 1 to 32"), "{e}");
        let e = parse("[limits]\nipv6_prefix = 0\n").unwrap_err();
        assert!(e.to_string().contains("accepts 1 to 128"), "{e}");
        let e = parse("[limits]\npps = 4294967297\n").unwrap_err();
        assert!(e.to_string().contains("4294967297"), "{e}");
        assert!(parse("[limits]\npps = 4294967296\n").is_ok());
    }

    #[test]
    fn services_attack_and_prefixes_are_read() {
        let s = parse(
            "[attack]\nknown_after_secs = 30\nnewcomer_share = 0.25\n\
             [prefixes]\nipv4 = 20\nescalate_after = 3\nescalate_window = 10\n\
             [[services]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 53\nmax_pps = 50000\n\
             [[services]]\nname = \"web\"\nprotocol = \"tcp\"\nport = 443\n",
        )
        .unwrap();
        assert_eq!(s.attack.known_after_secs, 30);
        assert_eq!(s.attack.newcomer_share, 0.25);
        assert_eq!((s.prefixes.ipv4, s.prefixes.escalate_after), (20, 3));
        assert_eq!(s.prefixes.escalate_window_secs, 10);
        assert_eq!(s.services.len(), 2);
        assert_eq!(s.services[0].max_pps, Some(50_000));
        assert_eq!(
            (
                s.services[1].protocol,
                s.services[1].port,
                s.services[1].max_pps
            ),
            (ServiceProto::Tcp, 443, None)
        );
        let k = s.kernel_config();
        assert_eq!(k.known_after_ns, 30_000_000_000);
        assert_eq!((k.prefix_v4_len, k.prefix_v6_len), (20, 48));
    }

    #[test]
    fn bad_services_and_attack_values_name_line_field_and_what_is_accepted() {
        let svc = |body: &str| format!("[[services]]\nname = \"dns\"\n{body}");
        for (text, line, field, accepted) in [
            (
                svc("protocol = \"udp\"\nport = 70000\n"),
                4,
                "services[0].port = 70000",
                "accepts 1 to 65535",
            ),
            (
                svc("protocol = \"sctp\"\nport = 53\n"),
                3,
                "services[0].protocol = \"sctp\"",
                "expected \"udp\" or \"tcp\"",
            ),
            (
                "[attack]\nnewcomer_share = 2\n".to_string(),
                2,
                "attack.newcomer_share = 2",
                "accepts 0 to 1",
            ),
            (
                "[attack]\nfactor = 1\n".to_string(),
                2,
                "attack.factor = 1",
                "more than 1",
            ),
            (
                svc("protocol = \"udp\"\nport = 53\nmax_syn_pps = 10\n"),
                5,
                "services[0].max_syn_pps = 10",
                "only a tcp service",
            ),
            (
                format!(
                    "{}[[services]]\nname = \"dns2\"\nprotocol = \"udp\"\nport = 53\n",
                    svc("protocol = \"udp\"\nport = 53\n")
                ),
                8,
                "services[1].port = 53",
                "already service \"dns\"",
            ),
            (
                "[prefixes]\nipv4 = 30\n[limits]\nipv4_prefix = 24\n".to_string(),
                2,
                "prefixes.ipv4 = 30",
                "accepts 8 to 24",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            let msg = e.to_string();
            assert_eq!(e.line(), Some(line), "{text:?}: {msg}");
            assert!(msg.contains(field), "{text:?}: {msg}");
            assert!(msg.contains(accepted), "{text:?}: {msg}");
        }
        // A ceiling is required without learning, and the message says why.
        let e = parse(&format!(
            "[attack]\nlearn = false\n{}",
            svc("protocol = \"udp\"\nport = 53\n")
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("required when [attack] learn = false"),
            "{e}"
        );
        // An unknown key in a service is refused like any other.
        let e = parse(&svc("protocol = \"udp\"\nport = 53\nmax_ppps = 1\n")).unwrap_err();
        assert!(e.to_string().contains("max_ppps"), "{e}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let e = parse("[limits]\npps = 1\nppss = 2\n").unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert!(e.to_string().contains("unknown field `ppss`"), "{e}");
        let e = parse("[limit]\npps = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `limit`"), "{e}");
    }

    #[test]
    fn wrong_type_and_bad_mode_are_rejected_with_their_line() {
        let e = parse("\n[limits]\npps = \"fast\"\n").unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        let e = parse("[datapath]\nmode = \"turbo\"\n").unwrap_err();
        assert_eq!(e.line(), Some(2), "{e}");
        assert!(e.to_string().contains("turbo"), "{e}");
        assert!(e.to_string().contains("generic"), "{e}");
        let e = parse("[limits\n").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
    }

    #[test]
    fn bad_interface_names_are_rejected() {
        let e = parse("[datapath]\ninterfaces = [\"eth0\",\n \"a/b\"]\n").unwrap_err();
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(
            e.to_string().contains("datapath.interfaces = \"a/b\""),
            "{e}"
        );
        assert!(parse("[datapath]\ninterfaces = [\"averyveryverylongname\"]").is_err());
        assert!(parse("[datapath]\ninterfaces = [\"eth0\", \"eth0\"]").is_err());
        assert!(parse("[datapath]\ninterfaces = [\"\"]").is_err());
    }

    #[test]
    fn pin_dir_must_be_absolute() {
        let e = parse("[datapath]\npin_dir = \"bpf/guard\"\n").unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_are_validated() {
        let mut s = parse("[limits]\npps = 100\n").unwrap();
        s.apply(&Overrides {
            interfaces: vec!["veth0".into()],
            mode: Some(AttachMode::Native),
            dry_run: true,
            pps: Some(7),
            ban_seconds: Some(0),
            state_dir: Some(PathBuf::from("/tmp/st")),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(s.datapath.interfaces, ["veth0"]);
        assert_eq!(s.datapath.mode, AttachMode::Native);
        assert!(s.datapath.dry_run);
        assert_eq!(s.limits.pps, 7);
        assert_eq!(s.limits.ban_seconds, 0);
        assert_eq!(s.state_file(), PathBuf::from("/tmp/st/state.json"));

        let e = s
            .apply(&Overrides {
                pps: Some(MAX_RATE + 1),
                ..Overrides::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line: --pps = 4294967297: out of range: accepts 0 to 4294967296"
        );
        assert_eq!(s.limits.pps, 7);
    }

    #[test]
    fn kernel_config_carries_every_limit() {
        let mut s = Settings::builtin();
        s.datapath.dry_run = true;
        let c = s.kernel_config();
        assert_eq!(c.pps, 20_000);
        assert_eq!(c.burst, 40_000);
        assert_eq!(c.syn_pps, 200);
        assert_eq!(c.syn_burst, 400);
        assert_eq!(c.ban_ns, 60_000_000_000);
        assert_eq!(c.flags, FLAG_DRY_RUN);
        assert_eq!((c.v4_prefix_len, c.v6_prefix_len), (32, 64));
    }

    #[test]
    fn reload_reports_settings_that_need_a_restart() {
        let old = Settings::builtin();
        let mut new = old.clone();
        new.limits.pps = 1;
        new.datapath.dry_run = true;
        assert!(old.restart_needed_for(&new).is_empty());
        new.datapath.interfaces = vec!["eth9".into()];
        new.control.socket = PathBuf::from("/x");
        assert_eq!(
            old.restart_needed_for(&new),
            ["datapath.interfaces", "control.socket"]
        );
    }

    #[test]
    fn health_section_is_read_with_its_listeners_and_checks() {
        let s = parse(
            "[health]\nlisten = \"198.18.0.1:9301\"\nagent_listen = \"\"\nwarn_at = 60\n\
             drain_at = 85.5\nrise = 1\n[[health.checks]]\ntype = \"tcp\"\ntarget = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
        assert_eq!(s.health.listen, Some("198.18.0.1:9301".parse().unwrap()));
        assert_eq!(s.health.agent_listen, None);
        assert_eq!(s.health.settings.warn_at, 60.0);
        assert_eq!(s.health.settings.drain_at, 85.5);
        assert_eq!(s.health.settings.rise, 1);
        assert_eq!(s.health.settings.fall, 3);
        assert_eq!(s.health.settings.checks.len(), 1);
        assert!(s.health.config().is_ok());
        let b = Settings::builtin();
        assert_eq!(
            b.health.listen,
            Some(DEFAULT_HEALTH_LISTEN.parse().unwrap())
        );
        assert_eq!(
            b.health.agent_listen,
            Some(DEFAULT_AGENT_LISTEN.parse().unwrap())
        );
    }

    #[test]
    fn threshold_of_150_percent_names_line_field_value_and_range() {
        let e = parse("[health]\ndrain_at = 95\nwarn_at = 150\n").unwrap_err();
        assert_eq!(e.line(), Some(3));
        assert_eq!(
            e.to_string(),
            "/etc/guard.toml line 3: health.warn_at = 150: expected a percentage from 0 to 100"
        );
        let e = parse("[health]\nwarn_at = 95\ndrain_at = 90\n").unwrap_err();
        assert_eq!(e.line(), Some(2));
        assert!(
            e.to_string().contains("must be below health.drain_at = 90"),
            "{e}"
        );
        let e = parse("[health]\nrise = -1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/guard.toml line 2: health.rise = -1: out of range: accepts 1 to 100"
        );
        let e = parse("[health]\nfall = 0\n").unwrap_err();
        assert!(e.to_string().contains("health.fall = 0"), "{e}");
    }

    #[test]
    fn unknown_check_type_names_line_field_value_and_accepted_types() {
        let e = parse(
            "[health]\n[[health.checks]]\ntype = \"tcp\"\ntarget = \"127.0.0.1:1\"\n\
             [[health.checks]]\ntype = \"icmp\"\ntarget = \"127.0.0.1\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line(), Some(5), "{e}");
        assert_eq!(
            e.to_string(),
            "/etc/guard.toml line 5: health.checks[1].type = \"icmp\": expected \"tcp\" or \"http\""
        );
        let e = parse("[health]\nchecks = [{ type = \"tcp\", target = \"x\", port = 1 }]\n")
            .unwrap_err();
        assert!(e.to_string().contains("unknown field `port`"), "{e}");
    }

    #[test]
    fn listen_addresses_are_checked_in_the_file_and_on_the_command_line() {
        for bad in [
            "localhost:9301",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            " ",
        ] {
            let e = parse(&format!("[health]\nlisten = {bad:?}\n")).unwrap_err();
            assert_eq!(e.line(), Some(2), "{bad}: {e}");
            assert!(e.to_string().contains("health.listen"), "{e}");
            assert!(e.to_string().contains("ADDRESS:PORT"), "{e}");
        }
        let mut s = parse("[health]\nlisten = \"[::]:9301\"\n").unwrap();
        assert_eq!(s.health.listen, Some("[::]:9301".parse().unwrap()));
        s.apply(&Overrides {
            health_listen: Some("".into()),
            agent_listen: Some("198.18.0.1:7777".into()),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(s.health.listen, None);
        assert_eq!(
            s.health.agent_listen,
            Some("198.18.0.1:7777".parse().unwrap())
        );
        let e = s
            .apply(&Overrides {
                agent_listen: Some("nowhere".into()),
                ..Overrides::default()
            })
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("command line: --agent-listen = \"nowhere\": expected ADDRESS:PORT"),
            "{e}"
        );
    }

    #[test]
    fn default_routes_are_found_in_proc_tables() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                  eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                  down0\t00000000\t0101A8C0\t0002\t0\t0\t1\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_v4(v4), ["eth0", "wlan0"]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    ens3\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    ens3\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(parse_route_v6(v6), ["ens3"]);
        assert!(parse_route_v4("Iface\tDestination\n").is_empty());
    }

    #[test]
    fn mode_names_round_trip() {
        for m in [AttachMode::Auto, AttachMode::Native, AttachMode::Generic] {
            assert_eq!(parse_mode(mode_name(m)), Ok(m));
        }
        assert!(
            parse_mode("turbo")
                .unwrap_err()
                .contains("auto, native or generic")
        );
    }
}
