//! Validation of the automatic controls' sections: `[[watchdog]]` (each names a
//! `[[health.checks]]` entry and one way to restart its service) and `[[escalate.haproxy]]`.
use super::*;
use crate::{
    escalate::{Condition, HaproxySettings},
    watchdog::{Restart, WatchdogSettings, parse_size},
};

/// Watchdogs at most (each is a task sampling every second).
pub const MAX_WATCHDOGS: usize = 16;
/// HAProxy tables polled at most.
pub const MAX_ESCALATIONS: usize = 16;

/// What a name accepts, for error messages.
const NAME_EXPECTED: &str = "1 to 32 letters, digits, '-', '_' or '.', such as \"app\"";

fn good_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

impl Validator<'_> {
    /// A duration key (`"10m"`) within `min..=max` seconds, or `default`.
    fn duration_secs(
        &self,
        raw: Option<Spanned<String>>,
        field: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        let span = raw.span();
        let value = raw.into_inner();
        let bad = |e: String| self.invalid(&span, field, format!("{value:?}"), e);
        let secs = crate::duration::parse(&value)
            .map_err(|e| bad(e.to_string()))?
            .as_secs();
        if !(min..=max).contains(&secs) {
            return Err(bad(format!(
                "out of range: accepts {} to {}",
                crate::duration::Human(std::time::Duration::from_secs(min)),
                crate::duration::Human(std::time::Duration::from_secs(max))
            )));
        }
        Ok(secs)
    }

    /// `[[watchdog]]`: unique names, a named check of `checks`, a unit or a restart command.
    pub(super) fn watchdogs(
        &self,
        raw: Vec<Spanned<RawWatchdog>>,
        checks: &[CheckSpec],
    ) -> Result<Vec<WatchdogSettings>, ConfigError> {
        let mut out: Vec<WatchdogSettings> = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let whole = item.span();
            let RawWatchdog {
                name,
                check,
                unit,
                restart_command,
                pid_file,
                max_memory,
                max_latency_ms,
                fail_after,
                drain_secs,
                min_interval,
                restart_timeout,
            } = item.into_inner();
            let field = |key: &str| format!("watchdog[{i}].{key}");
            if i >= MAX_WATCHDOGS {
                return Err(self.invalid(
                    &whole,
                    "watchdog",
                    format!("{} entries", i + 1),
                    format!("at most {MAX_WATCHDOGS} watchdogs"),
                ));
            }
            let (name_span, name) = (name.span(), name.into_inner());
            if !good_name(&name) {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    NAME_EXPECTED.to_string(),
                ));
            }
            if out.iter().any(|w| w.name == name) {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    "used twice: give each watchdog its own name".to_string(),
                ));
            }
            let (check_span, check) = (check.span(), check.into_inner());
            if !checks
                .iter()
                .any(|c| c.name.as_deref() == Some(check.as_str()))
            {
                let known: Vec<String> = checks
                    .iter()
                    .filter_map(|c| c.name.as_ref().map(|n| format!("{n:?}")))
                    .collect();
                return Err(self.invalid(
                    &check_span,
                    &field("check"),
                    format!("{check:?}"),
                    format!(
                        "no [[health.checks]] entry has this name: give the check that probes the service name = {check:?}{}",
                        if known.is_empty() {
                            " (no check has a name yet)".to_string()
                        } else {
                            format!(" (named checks: {})", known.join(", "))
                        }
                    ),
                ));
            }
            let restart = match (unit, restart_command) {
                (Some(_), Some(cmd)) => {
                    return Err(self.invalid(
                        &cmd.span(),
                        &field("restart_command"),
                        format!("{:?}", cmd.get_ref()),
                        "give either unit (a systemd unit, restarted through D-Bus) or restart_command, not both".to_string(),
                    ));
                }
                (None, None) => {
                    return Err(self.invalid(
                        &whole,
                        &field("unit"),
                        "(none)".to_string(),
                        "required, or restart_command: how to restart the service (unit = \"app.service\" through systemd's D-Bus, or restart_command = [\"/usr/local/bin/restart-app\"])".to_string(),
                    ));
                }
                (Some(unit), None) => {
                    let (span, unit) = (unit.span(), unit.into_inner());
                    let suffix_ok = unit
                        .rsplit_once('.')
                        .is_some_and(|(stem, suffix)| !stem.is_empty() && !suffix.is_empty());
                    if !suffix_ok
                        || unit.len() > 255
                        || unit
                            .chars()
                            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
                    {
                        return Err(self.invalid(
                            &span,
                            &field("unit"),
                            format!("{unit:?}"),
                            "a systemd unit name with its suffix, such as \"app.service\""
                                .to_string(),
                        ));
                    }
                    Restart::Unit(unit)
                }
                (None, Some(cmd)) => {
                    let (span, cmd) = (cmd.span(), cmd.into_inner());
                    if cmd.first().is_none_or(|p| p.trim().is_empty()) {
                        return Err(self.invalid(
                            &span,
                            &field("restart_command"),
                            format!("{cmd:?}"),
                            "a program and its arguments, such as [\"/usr/local/bin/restart-app\"]"
                                .to_string(),
                        ));
                    }
                    Restart::Command(cmd)
                }
            };
            let pid_file = match pid_file {
                None => None,
                Some(p) if matches!(restart, Restart::Unit(_)) => {
                    return Err(self.invalid(
                        &p.span(),
                        &field("pid_file"),
                        format!("{:?}", p.get_ref()),
                        "only with restart_command: in unit mode the memory is the unit's cgroup's"
                            .to_string(),
                    ));
                }
                Some(p) => Some(self.path(p, &field("pid_file"), true)?),
            };
            let max_memory = match max_memory {
                None => None,
                Some(raw) => {
                    let (span, value) = (raw.span(), raw.into_inner());
                    let bytes = parse_size(&value).map_err(|e| {
                        self.invalid(&span, &field("max_memory"), format!("{value:?}"), e)
                    })?;
                    if matches!(restart, Restart::Command(_)) && pid_file.is_none() {
                        return Err(self.invalid(
                            &span,
                            &field("max_memory"),
                            format!("{value:?}"),
                            "needs pid_file with restart_command: the process whose resident memory is watched".to_string(),
                        ));
                    }
                    Some(bytes)
                }
            };
            let max_latency_ms = match max_latency_ms {
                None => None,
                Some(raw) => {
                    let mut v = 0;
                    self.set(
                        &mut v,
                        Some(raw),
                        &field("max_latency_ms"),
                        1,
                        crate::health::checks::MAX_TIMEOUT_MS,
                    )?;
                    Some(v)
                }
            };
            let mut fail = 3;
            self.set(&mut fail, fail_after, &field("fail_after"), 1, 100)?;
            let mut drain = 30;
            self.set(&mut drain, drain_secs, &field("drain_secs"), 0, 3_600)?;
            out.push(WatchdogSettings {
                name,
                check,
                restart,
                pid_file,
                max_memory,
                max_latency_ms,
                fail_after: fail as u32,
                drain_secs: drain,
                min_interval_secs: self.duration_secs(
                    min_interval,
                    &field("min_interval"),
                    600,
                    0,
                    7 * 86_400,
                )?,
                restart_timeout_secs: self.duration_secs(
                    restart_timeout,
                    &field("restart_timeout"),
                    60,
                    1,
                    3_600,
                )?,
            });
        }
        Ok(out)
    }

    /// `[[escalate.haproxy]]`: a runtime API socket, a table, a condition on its columns.
    pub(super) fn escalate(
        &self,
        raw: Vec<Spanned<RawHaproxy>>,
    ) -> Result<Vec<HaproxySettings>, ConfigError> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let whole = item.span();
            let RawHaproxy {
                socket,
                table,
                when,
                for_secs,
                ban,
            } = item.into_inner();
            let field = |key: &str| format!("escalate.haproxy[{i}].{key}");
            if i >= MAX_ESCALATIONS {
                return Err(self.invalid(
                    &whole,
                    "escalate.haproxy",
                    format!("{} entries", i + 1),
                    format!("at most {MAX_ESCALATIONS} tables"),
                ));
            }
            let socket = self.path(socket, &field("socket"), true)?;
            let (table_span, table) = (table.span(), table.into_inner());
            if table.is_empty()
                || table.len() > 128
                || table.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(self.invalid(
                    &table_span,
                    &field("table"),
                    format!("{table:?}"),
                    "the name of a stick table (the frontend or backend that declares it), such as \"per_ip_rates\"".to_string(),
                ));
            }
            let (when_span, when_text) = (when.span(), when.into_inner());
            let when: Condition = when_text.parse().map_err(|e| {
                self.invalid(&when_span, &field("when"), format!("{when_text:?}"), e)
            })?;
            let mut secs = 30;
            self.set(&mut secs, for_secs, &field("for_secs"), 0, 3_600)?;
            let ban_secs = self.duration_secs(ban, &field("ban"), 600, 1, MAX_BAN_SECONDS)?;
            out.push(HaproxySettings {
                socket,
                table,
                when,
                for_secs: secs,
                ban_secs,
            });
        }
        Ok(out)
    }
}
