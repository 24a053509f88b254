//! The control plane's part in attack mitigation: services and their monitors (rates, attack
//! state, the newcomer budget written to the program each second), known sources (counted and
//! expired), and prefix bans (escalated from source bans, listed, lifted, expired, persisted).
use std::{collections::BTreeMap, time::Instant};

use guard_common::{Ban, Known, ListEntry, ServiceStats, SourceKey};

use super::{BanInfo, Control, ControlError, NS_PER_SEC, key_addr, key_cidr};
use crate::{
    attack::{Monitor, ServiceReport, Transition},
    cidr::Cidr,
    datapath::Datapath,
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
        for (slot, m) in self.monitors.iter().enumerate() {
            let service = m.kernel_service(&self.settings.attack, now_ns, cpus);
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
        let mut out: Vec<ServiceReport> = self
            .monitors
            .iter()
            .skip(1)
            .map(|m| m.report(&self.settings.attack))
            .collect();
        if let Some(other) = self.monitors.first() {
            out.push(other.report(&self.settings.attack));
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
    /// The state file cannot be saved.
    pub fn save_learned(&mut self) -> Result<(), ControlError> {
        self.persist()
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
                log::warn!(
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
                    log::error!(
                        "cannot ban the prefix {prefix}: {}",
                        crate::api::error_chain(&e)
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
            if let Some((rec, ns)) = self.prefix_bans.remove(&p)
                && ns > now_ns
            {
                out.push(prefix_info(&rec));
            }
        }
        Ok(out)
    }

    /// Brings the prefix-ban tries in line with the state file at start (`None`: no usable
    /// file, so the tries' entries are adopted). Returns how many had expired meanwhile.
    pub(super) fn restore_prefix_bans(
        &mut self,
        saved: Option<Vec<PrefixBanRecord>>,
        now_unix: u64,
        now_ns: u64,
    ) -> Result<usize, ControlError> {
        let in_map = self.dp.prefix_bans()?;
        let mut expired = 0;
        let mut wanted: BTreeMap<Cidr, (PrefixBanRecord, u64)> = BTreeMap::new();
        match saved {
            Some(records) => {
                for r in records {
                    if r.expires <= now_unix {
                        expired += 1;
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
        Ok(expired)
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
mod tests {
    use std::{path::PathBuf, sync::atomic::AtomicUsize, time::Duration};

    use guard_common::{SERVICE_TCP, SERVICE_UNDER_ATTACK, reason, source_key_v4};

    use super::*;
    use crate::{
        config::{ServiceSettings, Settings},
        control::testing::{FakeClock, FakeDatapath},
        datapath::{List, ServiceProto},
        state::{self, Store},
    };

    const SEC: u64 = NS_PER_SEC;
    const T0_UNIX: u64 = 1_700_000_000;

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn setup(services: Vec<ServiceSettings>) -> (Control<FakeDatapath>, FakeClock, Dir) {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "guard-services-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let clock = FakeClock::new(1000 * SEC, T0_UNIX);
        let mut s = Settings::builtin();
        s.state.dir = dir.clone();
        s.services = services;
        let mut c =
            Control::new(FakeDatapath::new(clock.clone()), s, vec![]).with_wall_clock(clock.wall());
        c.restore(None).unwrap();
        c.apply_services().unwrap();
        (c, clock, Dir(dir))
    }

    fn dns(max_pps: Option<u64>) -> ServiceSettings {
        ServiceSettings {
            name: "dns".into(),
            protocol: ServiceProto::Udp,
            port: 53,
            max_pps,
            max_syn_pps: None,
        }
    }

    fn web() -> ServiceSettings {
        ServiceSettings {
            name: "web".into(),
            protocol: ServiceProto::Tcp,
            port: 443,
            max_pps: Some(1_000),
            max_syn_pps: Some(100),
        }
    }

    fn ban(c: &mut Control<FakeDatapath>, a: [u8; 4]) {
        let now = c.dp.now_ns();
        c.dp.bans.insert(
            source_key_v4(a, 32),
            Ban {
                expires_ns: now + 60 * SEC,
                since_ns: now,
                reason: reason::RATE_LIMITED as u32,
                _pad: 0,
            },
        );
    }

    #[test]
    fn services_get_their_slots_and_ports_in_the_data_plane() {
        let (c, _, _d) = setup(vec![dns(None), web()]);
        assert_eq!(c.dp.service_ports.get(&(ServiceProto::Udp, 53)), Some(&1));
        assert_eq!(c.dp.service_ports.get(&(ServiceProto::Tcp, 443)), Some(&2));
        assert_eq!(c.dp.services[&2].flags, SERVICE_TCP);
        assert_eq!(c.dp.services[&1].flags & SERVICE_UNDER_ATTACK, 0);
        // Every other slot is cleared.
        assert_eq!(c.dp.services[&5], guard_common::Service::default());
        let r = c.service_reports();
        assert_eq!(r.len(), 3, "two services and other");
        assert_eq!(r[2].name, "other");
    }

    #[test]
    fn a_flood_puts_a_service_under_attack_with_a_lease_and_its_end_lifts_it() {
        let (mut c, clock, _d) = setup(vec![dns(None), web()]);
        let mut packets = 0;
        let mut step = |c: &mut Control<FakeDatapath>, pps: u64| {
            packets += pps;
            c.dp.service_stats[2].packets = packets;
            clock.advance(Duration::from_secs(1));
            c.attack_tick().unwrap()
        };
        for _ in 0..5 {
            assert!(step(&mut c, 500).is_empty());
        }
        assert!(
            step(&mut c, 50_000).is_empty(),
            "one second is not an attack"
        );
        let t = step(&mut c, 50_000);
        assert!(
            matches!(&t[..], [crate::attack::Transition::Entered { name, .. }] if name == "web"),
            "{t:?}"
        );
        let s = c.dp.services[&2];
        assert_eq!(s.flags & SERVICE_UNDER_ATTACK, SERVICE_UNDER_ATTACK);
        assert!(s.attack_until_ns > c.dp.now_ns(), "the lease runs");
        // A tenth of the configured ceiling (1,000 pps), shared among the CPUs.
        let cpus = aya::util::online_cpus().map_or(1, |c| c.len()) as f64;
        let per_cpu = 100.0 / cpus;
        assert_eq!(s.newcomer_interval_ns, (1e9 / per_cpu) as u64);
        let r = &c.status().services[1];
        assert!(r.under_attack && r.attack_since.is_some());
        for _ in 0..9 {
            assert!(step(&mut c, 500).is_empty());
        }
        let t = step(&mut c, 500);
        assert!(
            matches!(&t[..], [crate::attack::Transition::Left { .. }]),
            "{t:?}"
        );
        assert_eq!(c.dp.services[&2].flags & SERVICE_UNDER_ATTACK, 0);
    }

    #[test]
    fn a_reload_keeps_what_an_unchanged_service_learned_and_a_restart_restores_it() {
        let (mut c, clock, d) = setup(vec![dns(None)]);
        let mut packets = 0;
        for _ in 0..30 {
            packets += 8_000;
            c.dp.service_stats[1].packets = packets;
            clock.advance(Duration::from_secs(1));
            c.attack_tick().unwrap();
        }
        let learned = c.service_reports()[0].learned_pps.unwrap();
        assert!((learned - 8_000.0).abs() < 10.0, "{learned}");
        // A reload that adds a service and keeps dns: dns keeps its rate, in its new slot.
        let mut s = c.settings().clone();
        s.services = vec![web(), dns(None)];
        c.apply_settings(s).unwrap();
        assert_eq!(c.dp.service_ports.get(&(ServiceProto::Udp, 53)), Some(&2));
        assert_eq!(c.service_reports()[1].learned_pps, Some(learned));
        // Saved with the state, and read back by a new daemon.
        c.save_learned().unwrap();
        let saved = match Store::new(&d.0).load().unwrap() {
            state::Loaded::Found(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(saved.learned.len(), 1);
        let mut settings = Settings::builtin();
        settings.state.dir = d.0.clone();
        settings.services = vec![dns(None)];
        let mut again = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
            .with_wall_clock(clock.wall());
        again.restore(Some(saved)).unwrap();
        again.apply_services().unwrap();
        let r = again.service_reports()[0].learned_pps.unwrap();
        assert!((r - learned).abs() < 1e-6);
    }

    #[test]
    fn enough_bans_in_one_prefix_ban_the_prefix_and_unban_lifts_it() {
        let (mut c, _, d) = setup(vec![]);
        for i in 1..=7 {
            ban(&mut c, [198, 18, 7, i]);
        }
        let s = c.sweep().unwrap();
        assert!(s.escalated.is_empty(), "7 of the 8 needed");
        ban(&mut c, [198, 18, 7, 8]);
        let s = c.sweep().unwrap();
        assert_eq!(s.escalated.len(), 1);
        let prefix: Cidr = "198.18.7.0/24".parse().unwrap();
        assert_eq!(s.escalated[0].source, prefix);
        assert!(c.dp.prefix_bans.contains_key(&prefix));
        let listed = c.bans().unwrap();
        assert!(
            listed
                .iter()
                .any(|b| b.source == prefix && b.reason == PREFIX_REASON),
            "{listed:?}"
        );
        let saved = match Store::new(&d.0).load().unwrap() {
            state::Loaded::Found(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(saved.prefix_bans.len(), 1);
        // Lifting one address of it lifts the prefix ban (and that address's own ban).
        let lifted = c.unban("198.18.7.3".parse().unwrap()).unwrap();
        assert!(lifted.iter().any(|b| b.source == prefix), "{lifted:?}");
        assert!(c.dp.prefix_bans.is_empty());
        assert_eq!(c.status().prefix_bans, 0);
    }

    #[test]
    fn escalation_never_bans_a_prefix_over_an_allow_listed_address() {
        let (mut c, _, _d) = setup(vec![]);
        c.list_add(List::Allow, "198.18.7.200/32".parse().unwrap(), None, None)
            .unwrap();
        for i in 1..=8 {
            ban(&mut c, [198, 18, 7, i]);
        }
        let s = c.sweep().unwrap();
        assert!(s.escalated.is_empty());
        assert!(c.dp.prefix_bans.is_empty());
    }

    #[test]
    fn a_prefix_ban_expires_and_a_reboot_restores_one_that_has_not() {
        let (mut c, clock, d) = setup(vec![]);
        for i in 1..=8 {
            ban(&mut c, [198, 18, 9, i]);
        }
        c.sweep().unwrap();
        assert_eq!(c.dp.prefix_bans.len(), 1);
        let saved = match Store::new(&d.0).load().unwrap() {
            state::Loaded::Found(s) => s,
            other => panic!("{other:?}"),
        };
        // After a reboot: empty maps, the state file has it.
        let mut settings = Settings::builtin();
        settings.state.dir = d.0.clone();
        let mut again = Control::new(FakeDatapath::new(clock.clone()), settings, vec![])
            .with_wall_clock(clock.wall());
        again.restore(Some(saved)).unwrap();
        assert_eq!(again.dp.prefix_bans.len(), 1);
        // Past the ban's ten minutes, the sweep lifts it.
        clock.advance(Duration::from_secs(601));
        again.dp.bans.clear();
        let s = again.sweep().unwrap();
        assert_eq!(s.expired_bans, 1);
        assert!(again.dp.prefix_bans.is_empty());
    }

    #[test]
    fn known_sources_silent_for_their_ttl_are_forgotten() {
        let (mut c, clock, _d) = setup(vec![]);
        let now = c.dp.now_ns();
        let k = |a| source_key_v4(a, 32);
        c.dp.known.insert(
            k([198, 18, 1, 1]),
            Known {
                since_ns: now,
                last_ns: now,
                how: guard_common::known_by::TIME,
                _pad: 0,
            },
        );
        c.make_known(&k([198, 18, 1, 2])).unwrap();
        c.known_swept = None;
        c.sweep().unwrap();
        assert_eq!(c.known_count(), 2);
        clock.advance(Duration::from_secs(86_401));
        c.dp.known.get_mut(&k([198, 18, 1, 2])).unwrap().last_ns = c.dp.now_ns();
        c.known_swept = None;
        let s = c.sweep().unwrap();
        assert_eq!(s.expired_known, 1);
        assert_eq!(c.known_count(), 1);
        assert!(c.dp.known.contains_key(&k([198, 18, 1, 2])));
    }
}
