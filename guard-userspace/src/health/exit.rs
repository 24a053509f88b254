//! `guard health check --format keepalived|consul|nagios`: the exit code and the one line of
//! output each tool expects, as pure functions of the health report.
use std::str::FromStr;

use super::{HealthError, HealthReport, Status};

/// A health-check consumer with its own exit-code convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckFormat {
    /// keepalived `vrrp_script`: 0 keeps the priority, anything else is a failure.
    Keepalived,
    /// Consul script checks: 0 passing, 1 warning, any other code critical.
    Consul,
    /// Nagios/Icinga plugins: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Nagios,
}

impl FromStr for CheckFormat {
    type Err = HealthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "keepalived" => Ok(Self::Keepalived),
            "consul" => Ok(Self::Consul),
            "nagios" => Ok(Self::Nagios),
            _ => Err(HealthError::UnknownFormat {
                value: s.to_string(),
            }),
        }
    }
}

/// The exit code for `status`.
///
/// keepalived: 0 for pass and warn (the host still serves), 1 otherwise. Consul and Nagios:
/// 0 pass, 1 warn, 2 for drain, maint, fail and starting, so that Consul removes the host
/// from discovery (Consul keeps serving hosts whose check is only warning) and Nagios
/// reports a host that takes no traffic as critical.
pub fn exit_code(format: CheckFormat, status: Status) -> u8 {
    match (format, status) {
        (CheckFormat::Keepalived, s) => u8::from(!s.serves()),
        (_, Status::Pass) => 0,
        (_, Status::Warn { .. }) => 1,
        (_, Status::Drain | Status::Maint | Status::Fail | Status::Starting) => 2,
    }
}

/// The exit code when the daemon cannot be asked: keepalived 1, Consul 2 (critical) and
/// Nagios 3 (UNKNOWN: the plugin could not determine the state).
pub fn unreachable_exit_code(format: CheckFormat) -> u8 {
    match format {
        CheckFormat::Keepalived => 1,
        CheckFormat::Consul => 2,
        CheckFormat::Nagios => 3,
    }
}

/// The one line to print: Nagios plugin output (`GUARD WARNING - reason | weight=62%;;;0;100`,
/// Nagios plugin guidelines, "Plugin Output"), otherwise `warn 62%: reason`.
pub fn check_output(format: CheckFormat, report: &HealthReport) -> String {
    let reason = report.reason.replace(['\n', '\r', '|'], " ");
    match format {
        CheckFormat::Nagios => {
            let word = match exit_code(format, report.status) {
                0 => "OK",
                1 => "WARNING",
                _ => "CRITICAL",
            };
            format!(
                "GUARD {word} - {} {reason} | weight={}%;;;0;100",
                report.status.name(),
                report.weight()
            )
        }
        _ => format!("{} {}%: {reason}", report.status.name(), report.weight()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Status; 6] = [
        Status::Starting,
        Status::Pass,
        Status::Warn { weight: 40 },
        Status::Drain,
        Status::Maint,
        Status::Fail,
    ];

    fn codes(format: CheckFormat) -> Vec<u8> {
        ALL.iter().map(|s| exit_code(format, *s)).collect()
    }

    #[test]
    fn keepalived_passes_only_hosts_that_serve() {
        assert_eq!(codes(CheckFormat::Keepalived), [1, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn consul_is_passing_warning_or_critical() {
        assert_eq!(codes(CheckFormat::Consul), [2, 0, 1, 2, 2, 2]);
    }

    #[test]
    fn nagios_is_ok_warning_or_critical() {
        assert_eq!(codes(CheckFormat::Nagios), [2, 0, 1, 2, 2, 2]);
        assert_eq!(unreachable_exit_code(CheckFormat::Nagios), 3);
    }

    #[test]
    fn format_names_parse_and_unknown_names_the_value() {
        assert_eq!("Consul".parse::<CheckFormat>(), Ok(CheckFormat::Consul));
        let err = "zabbix".parse::<CheckFormat>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown health check format \"zabbix\": expected keepalived, consul or nagios"
        );
    }

    #[test]
    fn nagios_line_carries_state_reason_and_weight_perfdata() {
        let mut r = HealthReport::starting(0);
        r.status = Status::Warn { weight: 62 };
        r.reason = "cpu 78% (warn at 70%)|x".into();
        assert_eq!(
            check_output(CheckFormat::Nagios, &r),
            "GUARD WARNING - warn cpu 78% (warn at 70%) x | weight=62%;;;0;100"
        );
        assert_eq!(
            check_output(CheckFormat::Consul, &r),
            "warn 62%: cpu 78% (warn at 70%) x"
        );
    }
}
