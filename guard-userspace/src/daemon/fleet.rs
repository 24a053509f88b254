//! The daemon in a fleet: the control plane as the fleet's [`Apply`], this host's new bans
//! published as the ring buffer brings them (not a tick later), and the fleet's requests on
//! the control socket (`guard fleet status`, `unban --fleet`, `deny add --fleet`, the drain
//! budget).
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{BanEvents, Daemon};
use crate::{
    cidr::Cidr,
    config::Share,
    control::{Control, ControlError},
    dataplane::{Datapath, List, events},
    fleet::{Applied, Apply, Fleet, SharedEntry, now_ms},
    rpc::{self, Reply, error_chain},
    state,
};

/// The control plane, as the fleet applies entries to it.
pub(super) struct Applier<D: Datapath>(pub(super) Arc<Mutex<Control<D>>>);

impl<D: Datapath + Send + 'static> Apply for Applier<D> {
    fn put(&self, what: Share, e: &SharedEntry) -> Result<Applied, String> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match what {
            Share::Bans => c.fleet_ban(e.source, e.expires, &e.origin),
            Share::Deny => c.fleet_list_add(List::Deny, e.source, e.expires, &e.origin),
            Share::Allow => c.fleet_list_add(List::Allow, e.source, e.expires, &e.origin),
        }
        .map_err(|err| error_chain(&err))
    }

    fn remove(&self, what: Share, cidr: Cidr) -> Result<Applied, String> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match what {
            Share::Bans => c.fleet_unban(cidr),
            Share::Deny => c.fleet_list_del(List::Deny, cidr),
            Share::Allow => c.fleet_list_del(List::Allow, cidr),
        }
        .map_err(|err| error_chain(&err))
    }
}

fn share_of(list: List) -> Share {
    match list {
        List::Deny => Share::Deny,
        List::Allow => Share::Allow,
    }
}

/// Publishes the bans in the ring buffer's events as they come.
pub(super) async fn publish_bans<D: Datapath + Send + 'static>(
    control: Arc<Mutex<Control<D>>>,
    fleet: Fleet,
    mut rx: mpsc::Receiver<Bytes>,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while let Ok(more) = rx.try_recv() {
            items.push(more);
        }
        let evs: Vec<_> = items.iter().flat_map(|i| events::parse(i)).collect();
        let Ok(bans) = rpc::blocking(&control, move |c| c.describe_events(&evs)).await else {
            continue;
        };
        let host = fleet.settings().host.clone();
        for b in bans {
            fleet.publish(
                Share::Bans,
                &SharedEntry {
                    source: b.ban.source,
                    reason: b.ban.reason,
                    origin: host.clone(),
                    expires: b.ban.expires,
                    at_ms: now_ms(),
                },
            );
        }
    }
}

impl<D: Datapath + BanEvents + Send + 'static> Daemon<D> {
    fn fleet(&self) -> Result<&Fleet, String> {
        self.fleet.as_ref().ok_or_else(|| {
            "this host is in no fleet: add a [fleet] table to its config".to_string()
        })
    }

    /// `guard fleet status`.
    pub(super) fn fleet_status(&self) -> Result<Reply, String> {
        Ok(Reply::Fleet(Box::new(self.fleet()?.status())))
    }

    /// `guard unban --fleet`: here, and the key deleted so that every host lifts it.
    pub(super) async fn fleet_unban(&self, cidr: Cidr) -> Result<Reply, String> {
        let fleet = self.fleet()?.clone();
        if !fleet.settings().shares(Share::Bans) {
            return Err("this host does not share bans (fleet.share)".to_string());
        }
        let local = rpc::blocking(&self.control, move |c| c.unban(cidr)).await?;
        fleet.remove(Share::Bans, &cidr);
        tracing::warn!("unban --fleet {cidr}: lifted here and asked the fleet to lift it");
        match local {
            Ok(lifted) => Ok(Reply::Unbanned(lifted)),
            Err(ControlError::NotBanned { .. }) => Ok(Reply::Unbanned(Vec::new())),
            Err(e) => Err(error_chain(&e)),
        }
    }

    /// `guard deny|allow add --fleet`: here, then published with its absolute expiry.
    pub(super) async fn fleet_list_add(
        &self,
        list: List,
        cidr: Cidr,
        ttl_secs: Option<u64>,
        reason: Option<String>,
    ) -> Result<Reply, String> {
        let fleet = self.fleet()?.clone();
        let what = share_of(list);
        if !fleet.settings().shares(what) {
            return Err(format!(
                "this host does not share {} entries (fleet.share = [{}])",
                list.name(),
                fleet
                    .settings()
                    .share
                    .iter()
                    .map(|s| format!("{:?}", s.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let why = reason.clone();
        let added = rpc::blocking(&self.control, move |c| {
            c.list_add(
                list,
                cidr,
                ttl_secs.map(std::time::Duration::from_secs),
                why,
            )
        })
        .await?
        .map_err(|e| error_chain(&e))?;
        let now = state::unix_now();
        fleet.publish(
            what,
            &SharedEntry {
                source: cidr,
                reason: reason.unwrap_or_else(|| "operator".to_string()),
                origin: fleet.settings().host.clone(),
                expires: ttl_secs.map_or(0, |t| now + t),
                at_ms: now_ms(),
            },
        );
        Ok(Reply::Added(added))
    }

    /// `guard deny|allow del --fleet`.
    pub(super) async fn fleet_list_del(&self, list: List, cidr: Cidr) -> Result<Reply, String> {
        let fleet = self.fleet()?.clone();
        let local = rpc::blocking(&self.control, move |c| c.list_del(list, cidr)).await?;
        fleet.remove(share_of(list), &cidr);
        match local {
            Ok(()) | Err(ControlError::NotListed { .. }) => Ok(Reply::Deleted),
            Err(e) => Err(error_chain(&e)),
        }
    }

    /// Before a drain or maintenance: a slot in the pool's budget, unless `force` or no fleet.
    pub(super) async fn drain_slot(
        &self,
        for_secs: Option<u64>,
        force: bool,
    ) -> Result<(), String> {
        let Some(fleet) = &self.fleet else {
            return Ok(());
        };
        if force {
            tracing::warn!("drain --force: past the pool's drain budget check");
            return Ok(());
        }
        let until = for_secs.map_or(0, |s| state::unix_now() + s);
        fleet.take_slot(until).await
    }
}
