//! `guard health [--json]`, `guard health check --format keepalived|consul|nagios`, and the
//! operator's overrides `guard drain|maint [--for D] [--reason R]` and `guard ready`.
use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;

use super::{ClientArgs, DEFAULT_SOCKET, Table, print_json, relative, unexpected};
use guard::{
    control::check_reason,
    duration::{Human, Ttl},
    health::{
        CheckFormat, HealthReport, Observation, Observed, OverrideMode, check_output, exit_code,
        unreachable_exit_code,
    },
    rpc::{self, Reply, Request},
    state,
};

/// How long `guard health check` waits for the daemon: well within the script timeouts of
/// keepalived, Consul and Nagios, so that they see our code and reason, not their timeout.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct HealthArgs {
    #[command(subcommand)]
    command: Option<HealthCmd>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Subcommand)]
enum HealthCmd {
    /// Print one line and exit with the code a health-check tool expects: keepalived (0
    /// serving, 1 not), Consul (0 passing, 1 warning, 2 critical) or Nagios (0 OK,
    /// 1 WARNING, 2 CRITICAL, 3 UNKNOWN when the daemon cannot be asked).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Which tool's exit codes and output.
    #[arg(long, value_enum)]
    format: FormatArg,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", env = "GUARD_SOCKET", default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
}

/// [`CheckFormat`] as a clap value (the library has no clap).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum FormatArg {
    /// keepalived `vrrp_script`: 0 keeps the priority, anything else is a failure.
    Keepalived,
    /// Consul script checks: 0 passing, 1 warning, any other code critical.
    Consul,
    /// Nagios/Icinga plugins: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    Nagios,
}

impl From<FormatArg> for CheckFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Keepalived => Self::Keepalived,
            FormatArg::Consul => Self::Consul,
            FormatArg::Nagios => Self::Nagios,
        }
    }
}

/// `guard drain` and `guard maint`.
#[derive(Debug, clap::Args)]
pub struct OverrideArgs {
    /// Return to the computed state after this long: 90s, 10m, 1h30m, 2d (default: until
    /// `guard ready`).
    #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
    lasts: Option<String>,
    /// Why: shown to the load balancers (the agent line, /readyz) and in `guard health`.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
    /// In a fleet: go even past the pool's drain budget ([fleet] max_drained).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `guard health` and `guard health check`: an exit code of its own for the check.
pub fn run(args: &HealthArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        Some(HealthCmd::Check(check)) => Ok(run_check(check)),
        None => show(&args.client).map(|()| ExitCode::SUCCESS),
    }
}

fn show(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Health)?;
    let Reply::Health(report) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&report);
    }
    print!("{}", render(&report, state::unix_now()));
    Ok(())
}

/// The human view: the state, its reason, then every input with its observed value.
fn render(report: &HealthReport, now: u64) -> String {
    let mut out = String::new();
    out.push_str(&format!("state     {}\n", report.status));
    out.push_str(&format!("reason    {}\n", report.reason));
    if let Some(o) = &report.operator {
        let until = o.expires.map_or_else(
            || "until `guard ready`".to_string(),
            |e| format!("until {} ({})", state::format_unix(e), relative(e, now)),
        );
        out.push_str(&format!(
            "override  {} since {}, {until}\n",
            o.mode.name(),
            state::format_unix(o.since)
        ));
    }
    out.push_str(&format!(
        "dropping  {} packets/s\n",
        format_rate(report.drop_rate_pps)
    ));
    out.push_str(&format!(
        "as of     {} ({})\n\n",
        state::format_unix(report.time),
        relative(report.time, now)
    ));
    let mut t = Table::new(&["INPUT", "OF", "OBSERVED", "THRESHOLD", "STATUS", "DETAIL"]);
    for o in &report.observations {
        t.row(observation_row(o));
    }
    if report.observations.is_empty() {
        out.push_str("no inputs yet: the first evaluation comes within two seconds of the start\n");
    } else {
        out.push_str(&t.to_string());
    }
    out
}

fn observation_row(o: &Observation) -> Vec<String> {
    let observed = match &o.observed {
        None => "-".to_string(),
        Some(Observed::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(Observed::Text(t)) => t.clone(),
        Some(Observed::Number(n)) => match o.unit.as_deref() {
            Some("percent") => format!("{n}%"),
            Some(unit) => format!("{n} {unit}"),
            None => n.to_string(),
        },
    };
    let status = serde_json::to_value(o.status)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    vec![
        format!("{} {}", o.component, o.measurement),
        o.component_id.clone().unwrap_or_default(),
        observed,
        o.threshold.clone().unwrap_or_default(),
        status,
        o.output.clone().unwrap_or_default(),
    ]
}

fn format_rate(pps: f64) -> String {
    if pps >= 10.0 || pps == 0.0 {
        format!("{pps:.0}")
    } else {
        format!("{pps:.1}")
    }
}

/// One line on stdout and the tool's exit code. A daemon that cannot be asked is the tool's
/// "unknown" or "critical", with the reason on the line.
fn run_check(args: &CheckArgs) -> ExitCode {
    let CheckArgs { format, socket } = args;
    let format = &CheckFormat::from(*format);
    match rpc::call_timeout(socket, &Request::Health, CHECK_TIMEOUT) {
        Ok(Reply::Health(report)) => {
            println!("{}", check_output(*format, &report));
            ExitCode::from(exit_code(*format, report.status))
        }
        Ok(other) => unreachable_line(*format, &unexpected(&other).to_string()),
        Err(e) => unreachable_line(*format, &rpc::error_chain(&e)),
    }
}

fn unreachable_line(format: CheckFormat, why: &str) -> ExitCode {
    let why = why.replace(['\n', '\r', '|'], " ");
    match format {
        CheckFormat::Nagios => println!("GUARD UNKNOWN - {why}"),
        _ => println!("unknown: {why}"),
    }
    ExitCode::from(unreachable_exit_code(format))
}

/// `guard drain` / `guard maint`.
pub fn set(mode: OverrideMode, args: &OverrideArgs) -> anyhow::Result<()> {
    let OverrideArgs {
        lasts,
        reason,
        force,
        client,
    } = args;
    let for_secs = match lasts {
        Some(d) => Some(d.parse::<Ttl>().context("--for")?.0.as_secs()),
        None => None,
    };
    if let Some(r) = reason {
        check_reason(r).context("--reason")?;
    }
    send(
        client,
        Request::Operator {
            mode,
            for_secs,
            reason: reason.clone(),
            force: *force,
        },
    )
}

/// `guard ready`.
pub fn ready(client: &ClientArgs) -> anyhow::Result<()> {
    send(
        client,
        Request::Operator {
            mode: OverrideMode::Ready,
            for_secs: None,
            reason: None,
            force: false,
        },
    )
}

fn send(client: &ClientArgs, request: Request) -> anyhow::Result<()> {
    let reply = client.call(&request)?;
    let Reply::Operator { operator, report } = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&serde_json::json!({ "operator": operator, "health": report }));
    }
    match &operator {
        Some(o) => {
            let until = o.expires.map_or_else(
                || "until `guard ready`".to_string(),
                |e| {
                    format!(
                        "for {}",
                        Human(Duration::from_secs(e.saturating_sub(o.since)))
                    )
                },
            );
            println!("{} {until}", o.mode.name());
        }
        None => println!("ready: the override is cleared"),
    }
    println!("health is now {}: {}", report.status, report.reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard::health::{CheckStatus, Override, Status};

    #[test]
    fn human_view_shows_state_override_and_every_input() {
        let mut r = HealthReport::starting(1_700_000_000);
        r.status = Status::Drain;
        r.reason = "operator: deploy".into();
        r.operator = Some(Override::new(
            OverrideMode::Drain,
            Some("deploy".into()),
            1_700_000_000,
            Some(Duration::from_secs(600)),
        ));
        r.observations = vec![
            Observation {
                component: "cpu".into(),
                measurement: "utilization".into(),
                component_id: None,
                observed: Some(Observed::Number(12.5)),
                unit: Some("percent".into()),
                threshold: Some("warn 70%, drain 90%".into()),
                status: CheckStatus::Pass,
                output: None,
            },
            Observation {
                component: "xdp".into(),
                measurement: "attached".into(),
                component_id: Some("eth0".into()),
                observed: Some(Observed::Bool(true)),
                unit: None,
                threshold: Some("attached".into()),
                status: CheckStatus::Pass,
                output: None,
            },
        ];
        let text = render(&r, 1_700_000_060);
        assert!(
            text.starts_with("state     drain\nreason    operator: deploy\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "override  drain since 2023-11-14T22:13:20Z, until 2023-11-14T22:23:20Z (in 9m)"
            ),
            "{text}"
        );
        assert!(text.contains("cpu utilization        12.5%"), "{text}");
        assert!(text.contains("xdp attached     eth0  yes"), "{text}");
    }
}
