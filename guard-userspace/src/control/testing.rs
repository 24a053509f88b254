//! An in-memory [`Datapath`] with a settable clock, for tests of the control plane, the control
//! socket and the daemon (only under `cfg(test)` or the `test-support` feature).
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use guard_common::{
    Ban, BanEvent, Config, Counters, Known, ListEntry, Service, ServiceStats, SourceKey,
    SourceState, capacity,
};

use crate::{
    cidr::Cidr,
    dataplane::{Datapath, DatapathError, List, ServiceProto},
};

/// A monotonic clock (ns) and a wall clock (Unix seconds) that advance together.
#[derive(Clone, Debug)]
pub struct FakeClock {
    ns: Arc<AtomicU64>,
    unix_base: u64,
}

impl FakeClock {
    /// Monotonic time starts at `ns`, wall time at `unix`.
    pub fn new(ns: u64, unix: u64) -> Self {
        Self {
            ns: Arc::new(AtomicU64::new(ns)),
            unix_base: unix - ns / 1_000_000_000,
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.ns.load(Ordering::SeqCst)
    }

    pub fn now_unix(&self) -> u64 {
        self.unix_base + self.now_ns() / 1_000_000_000
    }

    pub fn advance(&self, d: Duration) {
        self.ns.fetch_add(d.as_nanos() as u64, Ordering::SeqCst);
    }

    /// A wall clock for `Control::with_wall_clock`.
    pub fn wall(&self) -> super::WallClock {
        let c = self.clone();
        Box::new(move || c.now_unix())
    }
}

/// The data plane in memory.
#[derive(Debug)]
pub struct FakeDatapath {
    pub clock: FakeClock,
    pub config: Config,
    pub lists: HashMap<(List, Cidr), ListEntry>,
    pub bans: HashMap<SourceKey, Ban>,
    pub counters: Vec<(u32, Counters)>,
    pub sources: HashMap<SourceKey, SourceState>,
    /// List inserts that succeed before the next one fails, once (failure injection).
    pub inserts_before_failure: Option<usize>,
    /// Every list insert so far.
    pub list_inserts: usize,
    /// New-ban events waiting to be taken (as from the ring buffer).
    pub events: Vec<BanEvent>,
    pub prefix_bans: HashMap<Cidr, ListEntry>,
    pub service_ports: HashMap<(ServiceProto, u16), u32>,
    pub services: HashMap<u32, Service>,
    /// Per-slot counts, as the program would have summed them.
    pub service_stats: Vec<ServiceStats>,
    pub known: HashMap<SourceKey, Known>,
}

impl FakeDatapath {
    pub fn new(clock: FakeClock) -> Self {
        Self {
            clock,
            config: Config::default(),
            lists: HashMap::new(),
            bans: HashMap::new(),
            counters: Vec::new(),
            sources: HashMap::new(),
            inserts_before_failure: None,
            list_inserts: 0,
            events: Vec::new(),
            prefix_bans: HashMap::new(),
            service_ports: HashMap::new(),
            services: HashMap::new(),
            service_stats: vec![ServiceStats::default(); capacity::SERVICES as usize],
            known: HashMap::new(),
        }
    }

    /// The map's entry for `cidr` in `list`.
    pub fn entry(&self, list: List, cidr: &str) -> Option<ListEntry> {
        let cidr: Cidr = cidr.parse().expect("test CIDR");
        self.lists.get(&(list, cidr)).copied()
    }
}

impl Datapath for FakeDatapath {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn config(&self) -> Result<Config, DatapathError> {
        Ok(self.config)
    }

    fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError> {
        self.config = *cfg;
        Ok(())
    }

    fn list_insert(
        &mut self,
        list: List,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        if let Some(n) = &mut self.inserts_before_failure {
            if *n == 0 {
                self.inserts_before_failure = None;
                return Err(DatapathError::Map {
                    map: "FAKE",
                    op: "insert",
                    source: "injected failure".into(),
                });
            }
            *n -= 1;
        }
        self.list_inserts += 1;
        self.lists.insert((list, *cidr), entry);
        Ok(())
    }

    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool, DatapathError> {
        Ok(self.lists.remove(&(list, *cidr)).is_some())
    }

    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        Ok(self
            .lists
            .iter()
            .filter(|((l, _), _)| *l == list)
            .map(|((_, c), e)| (*c, *e))
            .collect())
    }

    fn bans(&self) -> Result<Vec<(SourceKey, Ban)>, DatapathError> {
        Ok(self.bans.iter().map(|(k, b)| (*k, *b)).collect())
    }

    fn ban_insert(&mut self, key: &SourceKey, ban: &Ban) -> Result<(), DatapathError> {
        self.bans.insert(*key, *ban);
        Ok(())
    }

    fn ban_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        // As the kernel datapath: lifting a ban also forgets the tracker entry.
        self.sources.remove(key);
        Ok(self.bans.remove(key).is_some())
    }

    fn counters(&self) -> Result<Vec<(u32, Counters)>, DatapathError> {
        Ok(self.counters.clone())
    }

    fn sources(&self) -> Result<Vec<(SourceKey, SourceState)>, DatapathError> {
        Ok(self.sources.iter().map(|(k, s)| (*k, *s)).collect())
    }

    fn prefix_ban_insert(&mut self, cidr: &Cidr, entry: ListEntry) -> Result<(), DatapathError> {
        self.prefix_bans.insert(*cidr, entry);
        Ok(())
    }

    fn prefix_ban_remove(&mut self, cidr: &Cidr) -> Result<bool, DatapathError> {
        Ok(self.prefix_bans.remove(cidr).is_some())
    }

    fn prefix_bans(&self) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        Ok(self.prefix_bans.iter().map(|(c, e)| (*c, *e)).collect())
    }

    fn set_service_ports(
        &mut self,
        ports: &[(ServiceProto, u16, u32)],
    ) -> Result<(), DatapathError> {
        self.service_ports = ports.iter().map(|(p, port, s)| ((*p, *port), *s)).collect();
        Ok(())
    }

    fn set_service(&mut self, slot: u32, service: &Service) -> Result<(), DatapathError> {
        self.services.insert(slot, *service);
        Ok(())
    }

    fn service_stats(&self) -> Result<Vec<ServiceStats>, DatapathError> {
        Ok(self.service_stats.clone())
    }

    fn known(&self) -> Result<Vec<(SourceKey, Known)>, DatapathError> {
        Ok(self.known.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn known_insert(&mut self, key: &SourceKey, known: &Known) -> Result<(), DatapathError> {
        self.known.insert(*key, *known);
        self.sources.remove(key);
        Ok(())
    }

    fn known_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        self.sources.remove(key);
        Ok(self.known.remove(key).is_some())
    }
}

impl crate::daemon::BanEvents for FakeDatapath {
    fn take_events(&mut self) -> Vec<BanEvent> {
        std::mem::take(&mut self.events)
    }
}
