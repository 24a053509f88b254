//! The control plane's part in attack mitigation: services and their monitors (rates, attack
//! state, the newcomer budget written to the program each second), known sources (counted and
//! expired), and prefix bans (escalated from source bans, listed, lifted, expired, persisted).
use std::{collections::BTreeMap, time::Instant};

use guard_common::{Ban, Known, ListEntry, ServiceStats, SourceKey};

use super::{BanInfo, Control, ControlError, NS_PER_SEC, key_addr, key_cidr};
use crate::{
    cidr::Cidr,
    control::attack::{Monitor, ServiceReport, Transition},
    dataplane::Datapath,
    state::{LearnedRecord, PrefixBanRecord},
};

/// How often the known sources are walked to expire the silent ones (a walk of up to
/// `capacity::KNOWN` entries, so not every second).
pub const KNOWN_SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// The reason a prefix ban shows in `guard bans`.
pub const PREFIX_REASON: &str = "prefix";

impl<D: Datapath> Control<D> {
    /// Sets the services up in the data plane from the settings: one slot each (in order),
    /// their ports mapped, their monitors kept across a reload when the (protocol, port) stays
    /// (with what they learned), and learned rates from the state file applied at start.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn apply_services(&mut self) -> Result<(), ControlError> {
        let old = std::mem::take(&mut self.monitors);
        let mut monitors = vec![old.first().cloned().unwrap_or_else(Monitor::other)];
        for service in &self.settings.services {
            let mut m = Monitor::new(service.clone());
            if let Some(prev) = old
                .iter()
                .skip(1)
                .find(|o| o.service.protocol == service.protocol && o.service.port == service.port)
            {
                m.inherit(prev);
            } else if let Some(rec) = self
                .learned
                .iter()
                .find(|r| r.protocol == service.protocol && r.port == service.port)
            {
                m.set_learned(rec.pps, rec.syn_pps);
            }
            monitors.push(m);
        }
        let ports: Vec<_> = self
            .settings
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.protocol, s.port, i as u32 + 1))
            .collect();
        self.monitors = monitors;
        self.dp.set_service_ports(&ports)?;
        self.write_services()?;
        let wanted = self.settings.services.iter().any(|s| {
            s.protocol == crate::dataplane::ServiceProto::Tcp
                && s.syn_cookies != crate::config::SynCookies::Off
        });
        match self.dp.kernel_syncookies(wanted) {
            Ok(Some(done)) => tracing::info!("{done}"),
            Ok(None) => {}
            // Cookies still go out; the kernel then takes no connection they bring.
            Err(e) => tracing::warn!("SYN cookies: {e}"),
        }
        // Slots no service uses any more: no attack mode, no budget.
        for slot in self.monitors.len() as u32..guard_common::capacity::SERVICES {
            self.dp
                .set_service(slot, &guard_common::Service::default())?;
        }
        Ok(())
    }

    /// Writes each slot's attack mode (renewing its lease) and newcomer budget.
    fn write_services(&mut self) -> Result<(), ControlError> {
        let now_ns = self.dp.now_ns();
        let cpus = self.cpus();
        let cookies = self.dp.cookie_support().is_ok();
        for (slot, m) in self.monitors.iter().enumerate() {
            let service = m.kernel_service(&self.settings.attack, now_ns, cpus, cookies);
            self.dp.set_service(slot as u32, &service)?;
        }
        Ok(())
    }

    /// The CPUs packets can run on, among which the per-CPU budgets are shared out.
    fn cpus(&self) -> u32 {
        aya::util::online_cpus().map_or(1, |c| c.len().max(1) as u32)
    }

    /// One second of attack detection: reads the program's per-service counts, feeds each
    /// monitor, and writes the attack modes back. Returns the changes of attack state.
    ///
    /// # Errors
    ///
    /// A map error (the monitors are then not fed this second).
    pub fn attack_tick(&mut self) -> Result<Vec<Transition>, ControlError> {
        let stats = self.dp.service_stats()?;
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut out = Vec::new();
        for (slot, m) in self.monitors.iter_mut().enumerate() {
            let s = stats.get(slot).copied().unwrap_or(ServiceStats::default());
            if let Some(t) = m.sample(s, now_ns, now_unix, &self.settings.attack) {
                out.push(t);
            }
        }
        self.write_services()?;
        Ok(out)
    }

    /// Every service's figures, then "other".
    pub fn service_reports(&self) -> Vec<ServiceReport> {
        let cookies = self.dp.cookie_support().is_ok();
        let mut out: Vec<ServiceReport> = self
            .monitors
            .iter()
            .skip(1)
            .map(|m| m.report(&self.settings.attack, cookies))
            .collect();
        if let Some(other) = self.monitors.first() {
            out.push(other.report(&self.settings.attack, cookies));
        }
        out
    }

    /// The learned rates to persist: the current monitors', and the restored ones not yet
    /// claimed by a service (a service removed for a while keeps what it learned).
    pub(super) fn learned_records(&self) -> Vec<LearnedRecord> {
        let mut out: Vec<LearnedRecord> = self
            .monitors
            .iter()
            .skip(1)
            .filter(|m| m.learned().0.samples > 0)
            .map(|m| {
                let (pps, syn_pps) = m.learned();
                LearnedRecord {
                    protocol: m.service.protocol,
                    port: m.service.port,
                    pps,
                    syn_pps,
                }
            })
            .collect();
        for r in &self.learned {
            if !out
                .iter()
                .any(|o| o.protocol == r.protocol && o.port == r.port)
            {
                out.push(r.clone());
            }
        }
        out
    }

    /// Saves the learned rates (the daemon calls this now and then, not every second).
    ///
    /// # Errors
    ///
    /// None today: what the store cannot save now is retried at each tick's flush.
    pub fn save_learned(&mut self) -> Result<(), ControlError> {
        self.unsaved.learned = true;
        self.flush();
        Ok(())
    }

    /// Prefix bans in force.
    pub fn prefix_ban_count(&self) -> usize {
        self.prefix_bans.len()
    }

    /// Known sources as of the last walk.
    pub fn known_count(&self) -> usize {
        self.known_swept.map_or(0, |(_, n)| n)
    }

    /// Forgets known sources silent for `known_ttl_secs`, walking `KNOWN` at most every
    /// `KNOWN_SWEEP_EVERY`. Returns how many were forgotten.
    pub(super) fn sweep_known(&mut self, now_ns: u64) -> Result<usize, ControlError> {
        if self
            .known_swept
            .is_some_and(|(at, _)| at.elapsed() < KNOWN_SWEEP_EVERY)
        {
            return Ok(0);
        }
        let ttl_ns = self.settings.attack.known_ttl_secs * NS_PER_SEC;
        let all = self.dp.known()?;
        let mut expired = 0;
        for (key, k) in &all {
            if now_ns.saturating_sub(k.last_ns) >= ttl_ns && self.dp.known_remove(key)? {
                expired += 1;
            }
        }
        self.known_swept = Some((Instant::now(), all.len() - expired));
        // On the same period: the seen filter forgets the sources the maps no longer hold.
        self.dp.refresh_seen()?;
        Ok(expired)
    }

    /// Makes `key` known by the operator's or the daemon's hand.
    ///
    /// # Errors
    ///
    /// A full `KNOWN` map, or a map error.
    pub fn make_known(&mut self, key: &SourceKey) -> Result<(), ControlError> {
        let now = self.dp.now_ns();
        self.dp.known_insert(
            key,
            &Known {
                since_ns: now,
                last_ns: now,
                how: guard_common::known_by::DAEMON,
                _pad: 0,
            },
        )?;
        Ok(())
    }

    /// The known sources, for `guard top`-like views and tests.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn known_sources(&self) -> Result<Vec<(Cidr, Known)>, ControlError> {
        let limits = self.settings.limits;
        Ok(self
            .dp
            .known()?
            .into_iter()
            .map(|(k, v)| (key_cidr(&k, &limits), v))
            .collect())
    }

    /// The prefix a source ban escalates to.
    fn prefix_of(&self, key: &SourceKey) -> Option<Cidr> {
        let addr = key_addr(key);
        let len = if addr.is_ipv4() {
            self.settings.prefixes.ipv4
        } else {
            self.settings.prefixes.ipv6
        };
        Cidr::new(addr, len)
    }

    /// Counts a ban the sweep saw for the first time towards its prefix's escalation.
    pub(super) fn note_ban_for_escalation(
        &mut self,
        key: &SourceKey,
        ban: &Ban,
        now_unix: u64,
        now_ns: u64,
    ) {
        let p = self.settings.prefixes;
        let Some(prefix) = self.prefix_of(key) else {
            return;
        };
        if self.prefix_bans.contains_key(&prefix) {
            return;
        }
        let since = self.mono_to_wall(ban.since_ns, now_unix, now_ns);
        if self
            .escalator
            .ban(prefix, since, p.escalate_after, p.escalate_window_secs)
        {
            self.pending_prefixes.push(prefix);
        }
    }

    /// Bans the prefixes that escalation asked for (never one that holds or overlaps an
    /// allow-listed entry), and expires prefix bans whose time ran out. Returns the new
    /// prefix bans and the expired ones.
    pub(super) fn sweep_prefix_bans(
        &mut self,
        now_unix: u64,
        now_ns: u64,
    ) -> Result<(Vec<BanInfo>, Vec<Cidr>), ControlError> {
        let p = self.settings.prefixes;
        let mut escalated = Vec::new();
        for prefix in std::mem::take(&mut self.pending_prefixes) {
            if let Some(allowed) = self
                .allow
                .keys()
                .find(|a| a.contains(prefix.addr()) || prefix.contains(a.addr()))
            {
                tracing::warn!(
                    "not escalating to a ban of {prefix}: it overlaps the allow-listed {allowed}"
                );
                continue;
            }
            let expires_ns = now_ns.saturating_add(p.ban_seconds * NS_PER_SEC);
            match self
                .dp
                .prefix_ban_insert(&prefix, ListEntry::expiring(expires_ns))
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(
                        "cannot ban the prefix {prefix}: {}",
                        crate::rpc::error_chain(&e)
                    );
                    continue;
                }
            }
            let record = PrefixBanRecord {
                cidr: prefix,
                since: now_unix,
                expires: now_unix + p.ban_seconds,
                sources: p.escalate_after,
            };
            escalated.push(prefix_info(&record));
            self.prefix_bans.insert(prefix, (record, expires_ns));
        }
        let expired: Vec<Cidr> = self
            .prefix_bans
            .iter()
            .filter(|(_, (_, ns))| *ns <= now_ns)
            .map(|(c, _)| *c)
            .collect();
        for c in &expired {
            self.dp.prefix_ban_remove(c)?;
            self.prefix_bans.remove(c);
        }
        self.escalator.prune(now_unix, p.escalate_window_secs);
        Ok((escalated, expired))
    }

    /// The prefix bans in force, as `guard bans` shows them.
    pub(super) fn prefix_ban_infos(&self, now_ns: u64) -> Vec<BanInfo> {
        self.prefix_bans
            .values()
            .filter(|(_, ns)| *ns > now_ns)
            .map(|(r, _)| prefix_info(r))
            .collect()
    }

    /// Lifts the prefix bans that overlap `cidr`.
    pub(super) fn unban_prefixes(
        &mut self,
        cidr: &Cidr,
        now_ns: u64,
    ) -> Result<Vec<BanInfo>, ControlError> {
        let hit: Vec<Cidr> = self
            .prefix_bans
            .keys()
            .filter(|p| p.contains(cidr.addr()) || cidr.contains(p.addr()))
            .copied()
            .collect();
        let mut out = Vec::new();
        for p in hit {
            self.dp.prefix_ban_remove(&p)?;
            self.unsaved.prefix_bans.insert(p);
            if let Some((rec, ns)) = self.prefix_bans.remove(&p)
                && ns > now_ns
            {
                out.push(prefix_info(&rec));
            }
        }
        Ok(out)
    }

    /// Brings the prefix-ban tries in line with the state store at start (`None`: nothing
    /// stored, so the tries' entries are adopted). Returns how many had expired meanwhile,
    /// and those stored ones (parked, not deleted: see `restore.rs`).
    pub(super) fn restore_prefix_bans(
        &mut self,
        saved: Option<Vec<PrefixBanRecord>>,
        now_unix: u64,
        now_ns: u64,
    ) -> Result<(usize, Vec<PrefixBanRecord>), ControlError> {
        let in_map = self.dp.prefix_bans()?;
        let mut expired = 0;
        let mut parked = Vec::new();
        let mut wanted: BTreeMap<Cidr, (PrefixBanRecord, u64)> = BTreeMap::new();
        match saved {
            Some(records) => {
                for r in records {
                    if r.expires <= now_unix {
                        expired += 1;
                        parked.push(r);
                        continue;
                    }
                    let ns = self.wall_to_mono(r.expires, now_unix, now_ns);
                    wanted.insert(r.cidr, (r, ns));
                }
            }
            None => {
                for (cidr, e) in &in_map {
                    if e.expires_ns != 0 && e.expires_ns <= now_ns {
                        continue;
                    }
                    let record = PrefixBanRecord {
                        cidr: *cidr,
                        since: now_unix,
                        expires: self.mono_to_wall(e.expires_ns, now_unix, now_ns),
                        sources: 0,
                    };
                    wanted.insert(*cidr, (record, e.expires_ns));
                }
            }
        }
        for (cidr, _) in &in_map {
            if !wanted.contains_key(cidr) {
                self.dp.prefix_ban_remove(cidr)?;
            }
        }
        for (cidr, (_, ns)) in &wanted {
            self.dp.prefix_ban_insert(cidr, ListEntry::expiring(*ns))?;
        }
        self.prefix_bans = wanted;
        Ok((expired, parked))
    }
}

fn prefix_info(r: &PrefixBanRecord) -> BanInfo {
    BanInfo {
        source: r.cidr,
        reason: PREFIX_REASON.to_string(),
        since: r.since,
        expires: r.expires,
    }
}

#[cfg(test)]
mod tests;
