//! The schema: what the file says, with spans, before validation. Integers are read as i64
//! (TOML's integer type) so that a negative value gets our range message, not serde's.
use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) datapath: RawDatapath,
    pub(super) limits: RawLimits,
    pub(super) attack: RawAttack,
    pub(super) services: Option<Vec<Spanned<RawService>>>,
    pub(super) prefixes: RawPrefixes,
    pub(super) control: RawControl,
    pub(super) state: RawState,
    pub(super) health: RawHealth,
    pub(super) watchdog: Option<Vec<Spanned<RawWatchdog>>>,
    pub(super) escalate: RawEscalate,
    pub(super) fleet: Option<Spanned<super::fleet::RawFleet>>,
}

/// `[[watchdog]]`: a service restarted when it breaks its limits (see [`crate::watchdog`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWatchdog {
    pub(super) name: Spanned<String>,
    pub(super) check: Spanned<String>,
    pub(super) unit: Option<Spanned<String>>,
    pub(super) restart_command: Option<Spanned<Vec<String>>>,
    pub(super) pid_file: Option<Spanned<String>>,
    pub(super) max_memory: Option<Spanned<String>>,
    pub(super) max_latency_ms: Option<Spanned<i64>>,
    pub(super) fail_after: Option<Spanned<i64>>,
    pub(super) drain_secs: Option<Spanned<i64>>,
    pub(super) min_interval: Option<Spanned<String>>,
    pub(super) restart_timeout: Option<Spanned<String>>,
}

/// `[escalate]`: the load balancers' verdicts enforced at the NIC.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEscalate {
    pub(super) haproxy: Option<Vec<Spanned<RawHaproxy>>>,
}

/// `[[escalate.haproxy]]` (see [`crate::escalate`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHaproxy {
    pub(super) socket: Spanned<String>,
    pub(super) table: Spanned<String>,
    pub(super) when: Spanned<String>,
    pub(super) for_secs: Option<Spanned<i64>>,
    pub(super) ban: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAttack {
    pub(super) learn: Option<bool>,
    pub(super) known_after_secs: Option<Spanned<i64>>,
    pub(super) known_ttl_secs: Option<Spanned<i64>>,
    pub(super) newcomer_share: Option<Spanned<f64>>,
    pub(super) enter_secs: Option<Spanned<i64>>,
    pub(super) leave_secs: Option<Spanned<i64>>,
    pub(super) factor: Option<Spanned<f64>>,
    pub(super) floor_pps: Option<Spanned<i64>>,
    pub(super) floor_syn_pps: Option<Spanned<i64>>,
    pub(super) admit_packets: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: Spanned<String>,
    pub(super) protocol: Spanned<String>,
    pub(super) port: Spanned<i64>,
    pub(super) max_pps: Option<Spanned<i64>>,
    pub(super) max_syn_pps: Option<Spanned<i64>>,
    pub(super) syn_cookies: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPrefixes {
    pub(super) ipv4: Option<Spanned<i64>>,
    pub(super) ipv6: Option<Spanned<i64>>,
    pub(super) pps: Option<Spanned<i64>>,
    pub(super) burst: Option<Spanned<i64>>,
    pub(super) escalate_after: Option<Spanned<i64>>,
    pub(super) escalate_window: Option<Spanned<i64>>,
    pub(super) ban_seconds: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDatapath {
    pub(super) interfaces: Option<Vec<Spanned<String>>>,
    pub(super) mode: Option<Spanned<AttachMode>>,
    pub(super) attach: Option<Spanned<String>>,
    pub(super) priority: Option<Spanned<i64>>,
    pub(super) dry_run: Option<bool>,
    pub(super) pin_dir: Option<Spanned<String>>,
    pub(super) chain: Option<Spanned<RawChain>>,
    pub(super) next: Option<Spanned<String>>,
}

/// `[datapath] chain = { prog_array = "...", index = N }`: chain mode.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChain {
    pub(super) prog_array: Spanned<String>,
    pub(super) index: Spanned<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) pps: Option<Spanned<i64>>,
    pub(super) burst: Option<Spanned<i64>>,
    pub(super) syn_pps: Option<Spanned<i64>>,
    pub(super) syn_burst: Option<Spanned<i64>>,
    pub(super) ban_seconds: Option<Spanned<i64>>,
    pub(super) ipv4_prefix: Option<Spanned<i64>>,
    pub(super) ipv6_prefix: Option<Spanned<i64>>,
    pub(super) malformed_pps: Option<Spanned<i64>>,
    pub(super) malformed_burst: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawControl {
    pub(super) socket: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawState {
    pub(super) dir: Option<Spanned<String>>,
}

/// `[health]`: the listeners, then [`HealthSettings`] key for key (with spans, so that a value
/// the health settings refuse is reported with its line).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawHealth {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) agent_listen: Option<Spanned<String>>,
    pub(super) warn_at: Option<Spanned<f64>>,
    pub(super) drain_at: Option<Spanned<f64>>,
    pub(super) weight_floor: Option<Spanned<i64>>,
    pub(super) psi_warn_at: Option<Spanned<f64>>,
    pub(super) psi_drain_at: Option<Spanned<f64>>,
    pub(super) map_warn_at: Option<Spanned<f64>>,
    pub(super) rise: Option<Spanned<i64>>,
    pub(super) fall: Option<Spanned<i64>>,
    pub(super) checks: Option<Vec<Spanned<CheckSpec>>>,
}
