//! The map access of [`KernelDatapath`]: the [`Datapath`] trait over the real maps.

use guard_common::{
    Ban, Config, Counters, Known, ListEntry, Service, ServiceStats, SourceKey, SourceState,
    capacity, map_names,
};

use super::*;
use crate::{
    cidr::Cidr,
    dataplane::{Datapath, DatapathError, List, ServiceProto},
};

impl Datapath for KernelDatapath {
    fn cookie_support(&self) -> Result<(), String> {
        self.cookies.clone()?;
        self.tc.clone()
    }

    fn kernel_syncookies(&mut self, wanted: bool) -> Result<Option<String>, String> {
        use crate::dataplane::cookies::{SYNCOOKIES_SYSCTL, enable_syncookies, restore_syncookies};
        let Some(pin_dir) = self.pin_root.clone() else {
            return Ok(None);
        };
        if wanted && self.cookie_support().is_ok() {
            Ok(enable_syncookies(&pin_dir)?.map(|old| {
                format!("set {SYNCOOKIES_SYSCTL} to 1 (was {old}) for the SYN cookies at the NIC; guard detach puts it back")
            }))
        } else {
            Ok(restore_syncookies(&pin_dir)?.map(|old| {
                format!("put {SYNCOOKIES_SYSCTL} back to {old} (no service sends SYN cookies)")
            }))
        }
    }

    fn now_ns(&self) -> u64 {
        // CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |ts| {
            ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
        })
    }

    fn config(&self) -> Result<Config, DatapathError> {
        let cfg = self
            .config
            .get(&self.slot, 0)
            .map_err(map_err(map_names::CONFIG, "read"))?;
        // What set_config was given: no hints, no derived fields.
        Ok(user_view(&cfg))
    }

    fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError> {
        self.base = user_view(cfg);
        self.write_config()
    }

    fn list_insert(
        &mut self,
        list: List,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        self.insert_raw(list.into(), cidr, entry)?;
        self.publish_list_change()
    }

    fn list_insert_many(
        &mut self,
        list: List,
        cidrs: &[Cidr],
        entry: ListEntry,
    ) -> Result<(), (usize, DatapathError)> {
        let mut result = Ok(());
        for (i, cidr) in cidrs.iter().enumerate() {
            if let Err(e) = self.insert_raw(list.into(), cidr, entry) {
                result = Err((i, e));
                break;
            }
        }
        // Whatever went in is published, even if the batch stopped early.
        let done = result.as_ref().err().map_or(cidrs.len(), |(i, _)| *i);
        self.publish_list_change().map_err(|e| (done, e))?;
        result
    }

    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool, DatapathError> {
        self.remove_raw(list.into(), cidr)
    }

    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        self.entries_raw(list.into())
    }

    fn bans(&self) -> Result<Vec<(SourceKey, Ban)>, DatapathError> {
        super::batch::read_all(&self.bans, &self.walk_calls)
            .map_err(map_err(map_names::BANS, "read"))
    }

    fn ban_insert(&mut self, key: &SourceKey, ban: &Ban) -> Result<(), DatapathError> {
        self.seen.mark(key);
        self.bans
            .insert(key, ban, 0)
            .map_err(insert_err(map_names::BANS, capacity::BANS))?;
        self.forget_source(key)
    }

    fn ban_expire(&mut self, key: &SourceKey, now_ns: u64) -> Result<bool, DatapathError> {
        // The program replaces an expired ban when it bans again, so check it still is one.
        match self.bans.get(key, 0) {
            Ok(ban) if ban.expires_ns <= now_ns => {
                absent_ok(self.bans.remove(key), map_names::BANS)
            }
            _ => Ok(false),
        }
    }

    fn ban_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        let removed = absent_ok(self.bans.remove(key), map_names::BANS)?;
        self.forget_source(key)?;
        Ok(removed)
    }

    fn counters(&self) -> Result<Vec<(u32, Counters)>, DatapathError> {
        let mut out = Vec::new();
        for slot in 0..capacity::STATS_SLOTS {
            let per_cpu = self
                .stats
                .get(&slot, 0)
                .map_err(map_err(map_names::STATS, "read"))?;
            let mut sum = Counters::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            if sum != Counters::default() {
                out.push((slot, sum));
            }
        }
        Ok(out)
    }

    fn sources(&self) -> Result<Vec<(SourceKey, SourceState)>, DatapathError> {
        // In batches, each key once: the LRU evicting entries mid-walk neither restarts the
        // walk nor counts an entry twice.
        super::batch::read_all(&self.sources, &self.walk_calls)
            .map_err(map_err(map_names::SOURCES, "read"))
    }

    fn prefix_ban_insert(&mut self, cidr: &Cidr, entry: ListEntry) -> Result<(), DatapathError> {
        self.insert_raw(Trie::PrefixBan, cidr, entry)?;
        self.publish_list_change()
    }

    fn prefix_ban_remove(&mut self, cidr: &Cidr) -> Result<bool, DatapathError> {
        self.remove_raw(Trie::PrefixBan, cidr)
    }

    fn prefix_bans(&self) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        self.entries_raw(Trie::PrefixBan)
    }

    fn set_service_ports(
        &mut self,
        ports: &[(ServiceProto, u16, u32)],
    ) -> Result<(), DatapathError> {
        let had = !self.mapped_ports.is_empty();
        let wanted: Vec<u32> = ports
            .iter()
            .map(|(p, port, _)| p.port_slot(*port))
            .collect();
        // New ones first, then the stale ones cleared: a port that stays mapped never reads 0.
        for (proto, port, slot) in ports {
            self.service_ports
                .set(proto.port_slot(*port), *slot, 0)
                .map_err(map_err(map_names::SERVICE_PORTS, "write"))?;
        }
        for old in std::mem::take(&mut self.mapped_ports) {
            if !wanted.contains(&old) {
                self.service_ports
                    .set(old, 0, 0)
                    .map_err(map_err(map_names::SERVICE_PORTS, "write"))?;
            }
        }
        self.mapped_ports = wanted;
        // FLAG_SERVICES follows whether any port is mapped.
        if had == self.mapped_ports.is_empty() {
            self.write_config()?;
        }
        Ok(())
    }

    fn set_service(&mut self, slot: u32, service: &Service) -> Result<(), DatapathError> {
        self.services
            .set(slot, *service, 0)
            .map_err(map_err(map_names::SERVICES, "write"))
    }

    fn service_stats(&self) -> Result<Vec<ServiceStats>, DatapathError> {
        let mut out = Vec::with_capacity(capacity::SERVICES as usize);
        for slot in 0..capacity::SERVICES {
            let per_cpu = self
                .service_stats
                .get(&slot, 0)
                .map_err(map_err(map_names::SERVICE_STATS, "read"))?;
            let mut sum = ServiceStats::default();
            for s in per_cpu.iter() {
                sum.packets += s.packets;
                sum.bytes += s.bytes;
                sum.syns += s.syns;
                sum.newcomer_passed += s.newcomer_passed;
                sum.newcomer_dropped += s.newcomer_dropped;
            }
            out.push(sum);
        }
        Ok(out)
    }

    fn known(&self) -> Result<Vec<(SourceKey, Known)>, DatapathError> {
        super::batch::read_all(&self.known, &self.walk_calls)
            .map_err(map_err(map_names::KNOWN, "read"))
    }

    fn known_insert(&mut self, key: &SourceKey, known: &Known) -> Result<(), DatapathError> {
        self.seen.mark(key);
        self.known
            .insert(key, known, 0)
            .map_err(insert_err(map_names::KNOWN, capacity::KNOWN))?;
        self.forget_source(key)
    }

    /// Rebuilds the seen filter's half not in use from the sources the tracker, `BANS` and
    /// `KNOWN` hold now, and makes it the one the program reads (see `seen`): sources they
    /// have dropped since the last rebuild no longer cost a never-seen source its lookups.
    ///
    /// # Errors
    /// When the config cannot be written; the half in use stays so.
    fn refresh_seen(&mut self) -> Result<(), DatapathError> {
        let flags = self.seen.rebuild(|| {
            // The program inserts while we walk; a vanished key is simply skipped.
            self.sources
                .keys()
                .chain(self.bans.keys())
                .chain(self.known.keys())
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        });
        let before = self.seen.flags();
        self.seen.flipped(flags);
        if let Err(e) = self.write_config() {
            self.seen.flipped(before);
            return Err(e);
        }
        Ok(())
    }

    fn reattach(
        &mut self,
        pin_dir: &std::path::Path,
        iface: &str,
        mode: crate::dataplane::AttachMode,
    ) -> Result<(u32, &'static str), String> {
        crate::dataplane::loader::reattach(self, pin_dir, iface, mode)
            .map_err(|e| crate::rpc::error_chain(&e))
    }

    fn known_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        let removed = absent_ok(self.known.remove(key), map_names::KNOWN)?;
        self.forget_source(key)?;
        Ok(removed)
    }
}
