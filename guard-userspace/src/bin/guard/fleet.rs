//! `guard fleet status`: the servers and whether they are reached, the pool's members and
//! their states, the drain slots, the shared entries by origin, and the lag.
use super::{ClientArgs, Table, print_json, relative, unexpected};
use guard::{
    fleet::FleetStatus,
    rpc::{Reply, Request},
    state::unix_now,
};

#[derive(Debug, clap::Subcommand)]
pub enum FleetCmd {
    /// Servers, connection, pool members and their states, shared entries by origin, lag.
    Status(ClientArgs),
}

pub fn run(cmd: &FleetCmd) -> anyhow::Result<()> {
    let FleetCmd::Status(client) = cmd;
    let reply = client.call(&Request::FleetStatus)?;
    let Reply::Fleet(f) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&f);
    }
    let now = unix_now();
    println!("{}", summary(&f));
    println!("servers     {}", f.servers.join(", "));
    println!(
        "entries     {} applied here, {} skipped ({} malformed), {} published, {} queued; lag {}",
        f.applied,
        f.skipped,
        f.malformed,
        f.published,
        f.queued,
        f.lag_ms
            .map_or_else(|| "-".to_string(), |l| format!("{l} ms"))
    );
    let mut t = Table::new(&["HOST", "STATE", "DRAIN SLOT", "SEEN"]);
    for m in &f.members {
        t.row(vec![
            m.host.clone(),
            m.state.clone(),
            match f.slots.held.get(&m.host) {
                Some(0) => "until ready".to_string(),
                Some(&e) => relative(e, now),
                None => String::new(),
            },
            relative(m.at, now),
        ]);
    }
    print!("\n{t}");
    let mut t = Table::new(&["ORIGIN", "BANS", "DENY", "ALLOW"]);
    for (origin, kinds) in &f.origins {
        let n = |k: &str| kinds.get(k).copied().unwrap_or(0).to_string();
        t.row(vec![origin.clone(), n("bans"), n("deny"), n("allow")]);
    }
    print!("\n{t}");
    Ok(())
}

/// One line: connected or not, host, pool, budget.
pub fn summary(f: &FleetStatus) -> String {
    let now = unix_now();
    format!(
        "fleet       {} as {} in pool {} (at most {}% drained){}",
        if f.connected {
            "connected".to_string()
        } else {
            format!(
                "NOT CONNECTED ({}), protecting with local state",
                f.error.as_deref().unwrap_or("not connected")
            )
        },
        f.host,
        f.pool,
        f.max_drained * 100.0,
        if f.since > 0 {
            format!(", since {}", relative(f.since, now))
        } else {
            String::new()
        }
    )
}
