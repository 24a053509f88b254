//! `guard watchdog status` and `guard watchdog restart NAME`: the watchdogs' samples, limits
//! and history, and the drain, restart and readmit sequence by hand.
use super::{ClientArgs, Table, print_json, relative, unexpected};
use guard::{
    rpc::{Reply, Request},
    state::{format_unix, unix_now},
    watchdog::{Phase, Restart, WatchdogReport, human_bytes},
};

#[derive(Debug, clap::Subcommand)]
pub enum WatchdogCmd {
    /// Each watchdog: its phase, last sample against its limits, and what it did.
    Status(ClientArgs),
    /// Drain the host, restart the service and readmit the host once its check passes.
    Restart(RestartArgs),
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    /// The watchdog's name (`[[watchdog]] name`).
    name: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(cmd: &WatchdogCmd) -> anyhow::Result<()> {
    match cmd {
        WatchdogCmd::Status(client) => status(client),
        WatchdogCmd::Restart(RestartArgs { name, client }) => {
            let reply = client.call(&Request::WatchdogRestart { name: name.clone() })?;
            let Reply::WatchdogRestart { message } = reply else {
                return Err(unexpected(&reply));
            };
            if client.json {
                return print_json(&serde_json::json!({ "message": message }));
            }
            println!("{message}");
            Ok(())
        }
    }
}

fn phase_text(p: &Phase, now: u64) -> String {
    match p {
        Phase::Watching { bad: 0 } => "watching".to_string(),
        Phase::Watching { bad } => format!("watching ({bad} bad sample(s) in a row)"),
        Phase::Draining { since, .. } => format!("draining (since {})", relative(*since, now)),
        Phase::Restarting { since, .. } => format!("restarting (since {})", relative(*since, now)),
        Phase::Recovering { since, .. } => {
            format!(
                "waiting for the check (restarted {})",
                relative(*since, now)
            )
        }
        Phase::Held {
            retry_at: Some(at), ..
        } => format!("held drained: restart {}", relative(*at, now)),
        Phase::Held { retry_at: None, .. } => {
            "held drained: until `guard watchdog restart`".to_string()
        }
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

fn status(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Watchdogs)?;
    let Reply::Watchdogs(all) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&all);
    }
    if all.is_empty() {
        println!("no watchdogs ([[watchdog]] in the config)");
        return Ok(());
    }
    let now = unix_now();
    let mut t = Table::new(&["NAME", "PHASE", "CHECK", "MEMORY", "LATENCY", "CONNECTIONS"]);
    for w in &all {
        let WatchdogReport {
            settings: s,
            phase,
            memory,
            latency_ms,
            check_ok,
            connections,
            ..
        } = w;
        t.row(vec![
            s.name.clone(),
            phase_text(phase, now),
            format!("{} {}", s.check, if *check_ok { "pass" } else { "fail" }),
            format!(
                "{} / {}",
                opt(*memory, human_bytes),
                opt(s.max_memory, human_bytes)
            ),
            format!(
                "{} / {}",
                opt(*latency_ms, |l| format!("{l} ms")),
                opt(s.max_latency_ms, |l| format!("{l} ms"))
            ),
            opt(*connections, |c| c.to_string()),
        ]);
    }
    print!("{t}");
    for w in &all {
        let s = &w.settings;
        println!();
        println!(
            "{}: restart by {}, after {} bad samples, drain {}s, at most once per {}s (timeout {}s){}",
            s.name,
            match &s.restart {
                Restart::Unit(u) => format!("systemd unit {u}"),
                Restart::Command(c) => format!("command {:?}", c.join(" ")),
            },
            s.fail_after,
            s.drain_secs,
            s.min_interval_secs,
            s.restart_timeout_secs,
            w.last_restart
                .map(|t| format!("; last restart {}", format_unix(t)))
                .unwrap_or_default()
        );
        if let Some(d) = &w.drain {
            println!("  drains the host: {d}");
        }
        for (at, what) in &w.history {
            println!("  {}  {what}", format_unix(*at));
        }
    }
    Ok(())
}
