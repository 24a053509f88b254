//! `guard allow|deny add|del|list|import`: the CIDR lists. Arguments are validated here, before
//! the daemon is contacted, so a bad argument changes nothing.
use std::{fs, path::PathBuf};

use anyhow::Context;

use super::{ClientArgs, Table, print_json, relative, unexpected};
use guard::{
    cidr::Cidr,
    control::{check_reason, parse_netset},
    dataplane::List,
    duration::{Human, Ttl},
    rpc::{Reply, Request},
    state::{format_unix, unix_now},
};

#[derive(Debug, clap::Subcommand)]
pub enum ListCmd {
    /// Add an address or CIDR (or replace its TTL and reason).
    Add {
        #[arg(value_name = "CIDR")]
        cidr: String,
        #[command(flatten)]
        opts: EntryOpts,
        /// Also publish it to the fleet ([fleet] share), with its expiry, for every host.
        #[arg(long)]
        fleet: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an address or CIDR.
    Del {
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Also remove it from the fleet, on every host that applied it.
        #[arg(long)]
        fleet: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the entries.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Add every address or CIDR of a netset file (one a line, `#` comments). All or nothing:
    /// one bad line imports nothing and names the line.
    Import {
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        opts: EntryOpts,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct EntryOpts {
    /// Remove the entry after this long: 90s, 10m, 1h30m, 2d (default: never).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    ttl: Option<String>,
    /// Why, for the operators after you.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

impl EntryOpts {
    fn validate(&self) -> anyhow::Result<(Option<u64>, Option<String>)> {
        let ttl = match &self.ttl {
            Some(t) => Some(t.parse::<Ttl>().context("--ttl")?.0.as_secs()),
            None => None,
        };
        if let Some(r) = &self.reason {
            check_reason(r).context("--reason")?;
        }
        Ok((ttl, self.reason.clone()))
    }
}

fn ttl_text(ttl_secs: Option<u64>) -> String {
    ttl_secs.map_or_else(
        || "never expires".to_string(),
        |s| format!("expires in {}", Human(std::time::Duration::from_secs(s))),
    )
}

pub fn run(list: List, cmd: ListCmd) -> anyhow::Result<()> {
    let name = list.name();
    match cmd {
        ListCmd::Add {
            cidr,
            opts,
            fleet,
            client,
        } => {
            let cidr: Cidr = cidr.parse()?;
            let (ttl_secs, reason) = opts.validate()?;
            let reply = client.call(&if fleet {
                Request::FleetListAdd {
                    list,
                    cidr,
                    ttl_secs,
                    reason,
                }
            } else {
                Request::ListAdd {
                    list,
                    cidr,
                    ttl_secs,
                    reason,
                }
            })?;
            let Reply::Added(out) = reply else {
                return Err(unexpected(&reply));
            };
            if client.json {
                return print_json(&out);
            }
            let verb = if out.replaced { "replaced" } else { "added" };
            let prep = if out.replaced { "in" } else { "to" };
            println!(
                "{verb} {cidr} {prep} the {name} list ({})",
                ttl_text(ttl_secs)
            );
        }
        ListCmd::Del {
            cidr,
            fleet,
            client,
        } => {
            let cidr: Cidr = cidr.parse()?;
            let reply = client.call(&if fleet {
                Request::FleetListDel { list, cidr }
            } else {
                Request::ListDel { list, cidr }
            })?;
            if reply != Reply::Deleted {
                return Err(unexpected(&reply));
            }
            if client.json {
                return print_json(&serde_json::json!({ "deleted": cidr }));
            }
            println!("removed {cidr} from the {name} list");
        }
        ListCmd::List { client } => {
            let reply = client.call(&Request::ListShow { list })?;
            let Reply::Entries(entries) = reply else {
                return Err(unexpected(&reply));
            };
            if client.json {
                return print_json(&entries);
            }
            if entries.is_empty() {
                println!("the {name} list is empty");
                return Ok(());
            }
            let now = unix_now();
            let mut t = Table::new(&["CIDR", "EXPIRES", "ADDED", "REASON"]);
            for e in &entries {
                t.row(vec![
                    e.cidr.to_string(),
                    e.expires.map_or_else(
                        || "never".to_string(),
                        |x| format!("{} ({})", relative(x, now), format_unix(x)),
                    ),
                    format_unix(e.added),
                    e.reason.clone().unwrap_or_default(),
                ]);
            }
            print!("{t}");
        }
        ListCmd::Import { file, opts, client } => {
            let (ttl_secs, reason) = opts.validate()?;
            let text = fs::read_to_string(&file)
                .with_context(|| format!("cannot read the netset file {}", file.display()))?;
            let entries =
                parse_netset(&text).with_context(|| format!("cannot import {}", file.display()))?;
            let count = entries.len();
            let reply = client.call(&Request::ListImport {
                list,
                entries,
                ttl_secs,
                reason,
            })?;
            let Reply::Imported(out) = reply else {
                return Err(unexpected(&reply));
            };
            if client.json {
                return print_json(&out);
            }
            println!(
                "imported {count} entries from {} into the {name} list: {} new, {} replaced, {} duplicate lines ({})",
                file.display(),
                out.added,
                out.replaced,
                out.duplicates,
                ttl_text(ttl_secs)
            );
        }
    }
    Ok(())
}
