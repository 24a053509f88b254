//! The `guard run` flags that override the file: a plain struct here (the binary owns the clap
//! definition), and the attach-mode names.
use super::*;

/// `guard run` flags that override the config file. Unset flags leave the file's value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Attach to this interface (repeat for several); replaces [datapath] interfaces.
    pub interfaces: Vec<String>,
    /// How to attach: auto (native, else generic), native or generic.
    pub mode: Option<AttachMode>,
    /// Decide and count, but pass every packet.
    pub dry_run: bool,
    /// Packets per second per source (0 = unlimited).
    pub pps: Option<u64>,
    /// Packets a source may send at once above --pps.
    pub burst: Option<u64>,
    /// TCP SYNs per second per source (0 = unlimited).
    pub syn_pps: Option<u64>,
    /// SYNs a source may send at once above --syn-pps.
    pub syn_burst: Option<u64>,
    /// Seconds a source over a limit stays banned (0 = no bans).
    pub ban_seconds: Option<u64>,
    /// Control socket path.
    pub socket: Option<PathBuf>,
    /// bpffs directory for the pins (the layout version, v2/, is appended).
    pub pin_dir: Option<PathBuf>,
    /// Directory of the state store (guard.db).
    pub state_dir: Option<PathBuf>,
    /// Where the health HTTP server listens (/livez, /readyz, /readyz/haproxy, /metrics);
    /// "" turns it off. Replaces [health] listen.
    pub health_listen: Option<String>,
    /// Where the HAProxy agent-check server listens; "" turns it off. Replaces
    /// [health] agent_listen.
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
