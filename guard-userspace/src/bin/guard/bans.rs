//! `guard bans` and `guard unban`: the sources the data plane banned for going over a limit,
//! and lifting those bans by address or CIDR.
use super::{ClientArgs, Table, print_json, relative, unexpected};
use guard::{
    cidr::Cidr,
    control::BanInfo,
    rpc::{Reply, Request},
    state::{format_unix, unix_now},
};

#[derive(Debug, clap::Args)]
pub struct UnbanArgs {
    /// An address (lifts the ban of the network it is tracked in) or a CIDR (lifts every ban
    /// inside it).
    #[arg(value_name = "IP|CIDR")]
    target: String,
    /// Lift it on every host of the fleet too (the shared ban is deleted).
    #[arg(long)]
    fleet: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn table(bans: &[BanInfo]) -> Table {
    let now = unix_now();
    let mut t = Table::new(&["SOURCE", "REASON", "SINCE", "EXPIRES"]);
    for b in bans {
        t.row(vec![
            b.source.to_string(),
            b.reason.clone(),
            format_unix(b.since),
            format!("{} ({})", relative(b.expires, now), format_unix(b.expires)),
        ]);
    }
    t
}

pub fn bans(client: &ClientArgs) -> anyhow::Result<()> {
    let reply = client.call(&Request::Bans)?;
    let Reply::Bans(bans) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&bans);
    }
    if bans.is_empty() {
        println!("no bans");
    } else {
        print!("{}", table(&bans));
    }
    Ok(())
}

pub fn unban(args: &UnbanArgs) -> anyhow::Result<()> {
    let UnbanArgs {
        target,
        fleet,
        client,
    } = args;
    let cidr: Cidr = target.parse()?;
    let reply = client.call(&if *fleet {
        Request::FleetUnban { cidr }
    } else {
        Request::Unban { cidr }
    })?;
    let Reply::Unbanned(lifted) = reply else {
        return Err(unexpected(&reply));
    };
    if client.json {
        return print_json(&lifted);
    }
    let n = lifted.len();
    println!("lifted {n} ban{}:", if n == 1 { "" } else { "s" });
    print!("{}", table(&lifted));
    Ok(())
}
