//! The `guard` command: `guard run` (the daemon) and the client subcommands that talk to it
//! over the control socket, one module per subcommand group; the clap definitions live here,
//! the library has none. Errors end as one line.
mod bans;
mod fleet;
mod health;
mod lists;
mod run;
mod stats;
mod version;
mod watch;
mod watchdog;

use std::{fmt, path::PathBuf, process::ExitCode};

use clap::{FromArgMatches, Parser, Subcommand};

use guard::rpc::{self, Reply, Request};

/// The control socket clients use unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/guard/guard.sock";

/// guard: an eBPF/XDP DoS guard. `guard run` is the daemon; the other subcommands talk to it.
#[derive(Debug, Parser)]
#[command(name = "guard", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: attach the XDP program and serve the control socket.
    Run(run::RunArgs),
    /// Print the default config or check a config file.
    #[command(subcommand)]
    Config(run::ConfigCmd),
    /// The deny list: sources whose packets are always dropped.
    #[command(subcommand)]
    Deny(lists::ListCmd),
    /// The allow list: sources that are never limited or banned.
    #[command(subcommand)]
    Allow(lists::ListCmd),
    /// List the current bans (source, reason, since, expires).
    Bans(ClientArgs),
    /// Lift every ban of an address or inside a CIDR.
    Unban(bans::UnbanArgs),
    /// Packet and byte counters by verdict, per interface and in total, and map fill.
    Stats(stats::StatsArgs),
    /// The heaviest sources right now, with their rates.
    Top(stats::TopArgs),
    /// Attached interfaces and modes, dry-run or not, config, uptime.
    Status(ClientArgs),
    /// Re-read the daemon's config file (as SIGHUP does).
    Reload(ClientArgs),
    /// Remove the program from every interface and delete its pins, for good.
    Detach(run::DetachArgs),
    /// The host's health state for load balancers, with every input and its observed value.
    Health(health::HealthArgs),
    /// Ask the load balancers to drain this host: no new connections, current ones finish.
    Drain(health::OverrideArgs),
    /// Put this host in maintenance: out of service, whatever its health.
    Maint(health::OverrideArgs),
    /// Cancel `guard drain` or `guard maint`: the computed health state applies again.
    Ready(ClientArgs),
    /// The watchdogs: drain, restart and readmit a failing service (`[[watchdog]]`).
    #[command(subcommand)]
    Watchdog(watchdog::WatchdogCmd),
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    Completions(version::CompletionsArgs),
    /// The fleet of guards this host is in ([fleet]): servers, pool, shared entries.
    #[command(subcommand)]
    Fleet(fleet::FleetCmd),
}

/// What every client subcommand takes.
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", env = "GUARD_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ClientArgs {
    /// Sends `request` to the daemon.
    fn call(&self, request: &Request) -> anyhow::Result<Reply> {
        Ok(rpc::call(&self.socket, request)?)
    }
}

/// Parses the command line, runs the subcommand, and turns any error into one line on stderr
/// (`guard: <error: cause: cause>`) and a non-zero exit code.
fn main() -> ExitCode {
    let cli = match version::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    // `guard health` has exit codes of its own (those of `guard health check`).
    if let Command::Health(args) = &cli.command {
        return health::run(args).unwrap_or_else(|e| {
            eprintln!("guard: {e:#}");
            ExitCode::FAILURE
        });
    }
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("guard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go to stdout as clap renders them; a usage error becomes one line.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        };
    }
    let rendered = e.render().to_string();
    let text: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let text = text.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    eprintln!("guard: {text} (see guard --help)");
    ExitCode::from(2)
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run(args) => run::run(args),
        Command::Config(cmd) => run::config(cmd),
        Command::Deny(cmd) => lists::run(guard::dataplane::List::Deny, cmd),
        Command::Allow(cmd) => lists::run(guard::dataplane::List::Allow, cmd),
        Command::Bans(client) => bans::bans(&client),
        Command::Unban(args) => bans::unban(&args),
        Command::Stats(args) => stats::stats(&args),
        Command::Top(args) => stats::top(&args),
        Command::Status(client) => stats::status(&client),
        Command::Reload(client) => stats::reload(&client),
        Command::Detach(args) => run::detach(&args),
        Command::Health(args) => health::run(&args).map(|_| ()),
        Command::Drain(args) => health::set(guard::health::OverrideMode::Drain, &args),
        Command::Maint(args) => health::set(guard::health::OverrideMode::Maint, &args),
        Command::Ready(client) => health::ready(&client),
        Command::Watchdog(cmd) => watchdog::run(&cmd),
        Command::Completions(args) => version::completions(&args),
        Command::Fleet(cmd) => fleet::run(&cmd),
    }
}

/// Prints `value` as one line of JSON.
fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The daemon answered with a reply of another kind than asked for: a version mismatch.
fn unexpected(reply: &Reply) -> anyhow::Error {
    anyhow::anyhow!(
        "the daemon sent an unexpected answer ({}): are the guard binary and daemon the same version?",
        serde_json::to_string(reply).unwrap_or_default()
    )
}

/// A plain text table: left-aligned columns two spaces apart.
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i < last {
                    let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A wall-clock time relative to now: `in 9m59s`, `12s ago`, `now`.
fn relative(unix: u64, now: u64) -> String {
    use guard::duration::Human;
    use std::time::Duration;
    match unix.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}", Human(Duration::from_secs(unix - now))),
        std::cmp::Ordering::Less => format!("{} ago", Human(Duration::from_secs(now - unix))),
        std::cmp::Ordering::Equal => "now".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["CIDR", "EXPIRES", "REASON"]);
        t.row(vec!["10.0.0.0/8".into(), "never".into(), String::new()]);
        t.row(vec!["fd00::/8".into(), "in 10m".into(), "abuse".into()]);
        assert_eq!(
            t.to_string(),
            "CIDR        EXPIRES  REASON\n10.0.0.0/8  never\nfd00::/8    in 10m   abuse\n"
        );
    }

    #[test]
    fn relative_times_read_naturally() {
        assert_eq!(relative(1_000 + 599, 1_000), "in 9m59s");
        assert_eq!(relative(988, 1_000), "12s ago");
        assert_eq!(relative(1_000, 1_000), "now");
    }

    #[test]
    fn command_line_parses_every_subcommand() {
        let ok = [
            "guard run --config /etc/guard.toml --iface eth0 --iface eth1 --mode generic --dry-run --pps 5 --burst 6 --syn-pps 7 --syn-burst 8 --ban-seconds 9 --socket /tmp/s --pin-dir /sys/fs/bpf/x --state-dir /tmp/st",
            "guard config default",
            "guard config check /etc/guard.toml",
            "guard config check",
            "guard deny add 10.0.0.0/8 --ttl 10m --reason abuse --socket /tmp/s --json",
            "guard deny del 10.0.0.0/8",
            "guard deny list",
            "guard deny import /tmp/list.netset --ttl 1h",
            "guard allow add fd00::/8",
            "guard allow list --json",
            "guard bans",
            "guard unban 192.0.2.1",
            "guard stats",
            "guard top -n 5",
            "guard top --watch",
            "guard stats --watch --interval 2s",
            "guard status",
            "guard reload",
            "guard detach --pin-dir /sys/fs/bpf/guard",
            "guard run --health-listen 198.18.0.1:9301 --agent-listen [fd00::1]:9302",
            "guard health",
            "guard health --json --socket /tmp/s",
            "guard health check --format keepalived",
            "guard health check --format nagios --socket /tmp/s",
            "guard drain",
            "guard drain --for 10m --reason deploy",
            "guard maint --reason disk",
            "guard ready --json",
            "guard watchdog status",
            "guard watchdog status --json",
            "guard watchdog restart app --socket /tmp/s",
            "guard completions bash",
            "guard completions zsh",
            "guard completions fish",
            "guard fleet status",
            "guard fleet status --json",
            "guard unban 192.0.2.1 --fleet",
            "guard deny add 192.0.2.0/24 --ttl 1h --fleet",
            "guard deny del 192.0.2.0/24 --fleet",
            "guard drain --force",
        ];
        for line in ok {
            let args: Vec<&str> = line.split(' ').collect();
            if let Err(e) = Cli::try_parse_from(&args) {
                panic!("{line}: {e}");
            }
        }
        assert!(Cli::try_parse_from(["guard", "run", "--mode", "turbo"]).is_err());
        assert!(Cli::try_parse_from(["guard", "deny", "add"]).is_err());
        assert!(Cli::try_parse_from(["guard", "health", "check", "--format", "zabbix"]).is_err());
        assert!(Cli::try_parse_from(["guard", "completions", "tcsh"]).is_err());
    }

    /// Runs `line` as the `guard` command would, against `socket`.
    fn guard(line: &str, socket: &std::path::Path) -> anyhow::Result<()> {
        let mut args: Vec<String> = line.split(' ').map(String::from).collect();
        args.push("--socket".into());
        args.push(socket.display().to_string());
        let cli = Cli::try_parse_from(&args).map_err(|e| anyhow::anyhow!("{e}"))?;
        dispatch(cli.command)
    }

    #[test]
    fn client_subcommands_work_against_a_daemon_over_the_socket() {
        use std::sync::{Arc, Mutex};

        use guard::{
            config::Settings,
            control::{
                Control,
                testing::{FakeClock, FakeDatapath},
            },
            rpc::{Handler, dispatch as serve_request},
        };

        struct Fake(Arc<Mutex<Control<FakeDatapath>>>);
        impl Handler for Fake {
            fn handle(
                &self,
                request: Request,
            ) -> futures_util::future::BoxFuture<'_, Result<Reply, String>> {
                Box::pin(serve_request(&self.0, request))
            }
        }

        let dir = std::env::temp_dir().join(format!("guard-cli-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let clock = FakeClock::new(1_000_000_000_000, 1_700_000_000);
        let mut settings = Settings::builtin();
        settings.state.dir = dir.join("state");
        let control = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
            .with_wall_clock(clock.wall());
        let socket = dir.join("guard.sock");
        guard::rpc::serve(
            guard::rpc::bind(&socket).unwrap(),
            Arc::new(Fake(Arc::new(Mutex::new(control)))),
        );

        guard(
            "guard deny add 203.0.113.0/24 --ttl 10m --reason abuse",
            &socket,
        )
        .unwrap();
        guard("guard deny list", &socket).unwrap();
        guard("guard deny list --json", &socket).unwrap();
        let netset = dir.join("feed.netset");
        std::fs::write(&netset, "# feed\n198.51.100.0/24\n2001:db8::/32\n").unwrap();
        guard(&format!("guard allow import {}", netset.display()), &socket).unwrap();
        guard("guard allow del 2001:db8::/32", &socket).unwrap();
        guard("guard bans", &socket).unwrap();
        guard("guard stats", &socket).unwrap();
        guard("guard status", &socket).unwrap();
        guard("guard top -n 3 --interval 1s", &socket).unwrap();

        // Refusals and bad arguments are errors, and change nothing.
        let e = guard("guard unban 192.0.2.1", &socket).unwrap_err();
        assert_eq!(format!("{e:#}"), "no ban matches 192.0.2.1/32");
        let e = guard("guard allow del 2001:db8::/32", &socket).unwrap_err();
        assert_eq!(format!("{e:#}"), "2001:db8::/32 is not in the allow list");
        std::fs::write(&netset, "192.0.2.1\nbanana\n").unwrap();
        let e = guard(&format!("guard deny import {}", netset.display()), &socket).unwrap_err();
        assert!(format!("{e:#}").contains("line 2: \"banana\""), "{e:#}");
        let e = guard("guard reload", &socket).unwrap_err();
        assert!(format!("{e:#}").contains("not the guard daemon"), "{e:#}");

        let saved = guard::state::Store::load(dir.join("state")).unwrap();
        let guard::state::Opened::Found(saved) = saved else {
            panic!("no state file")
        };
        assert_eq!(saved.deny.len(), 1);
        assert_eq!(saved.allow.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        version::command().debug_assert();
    }
}
