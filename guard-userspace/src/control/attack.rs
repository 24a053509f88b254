//! Attack detection, per service: rates from the program's per-CPU counts, a learned normal
//! rate (learned only while the service is not under attack), a ceiling, hysteresis, and the
//! newcomer budget the program enforces; and the escalation of source bans to prefix bans.
//!
//! Learn, detect, mitigate (as F5 AFM does): the ceiling is the configured `max_pps`, or the
//! learned rate times `factor`, never below `floor_pps`.
use std::collections::{BTreeMap, VecDeque};

use guard_common::{
    Gcra, SERVICE_COOKIES, SERVICE_TCP, SERVICE_UNDER_ATTACK, Service, ServiceStats,
};
use serde::{Deserialize, Serialize};

use crate::{
    cidr::Cidr,
    config::{AttackSettings, ServiceSettings},
    dataplane::ServiceProto,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The daemon renews a service's attack mode every second; the program drops it this long
/// after the last renewal, so a daemon that dies cannot leave a service in attack mode.
pub const ATTACK_LEASE_NS: u64 = 10 * NS_PER_SEC;

/// Time constant of the learned rate: an exponentially weighted average over about this many
/// seconds of normal traffic.
pub const LEARN_SECS: f64 = 300.0;

/// A learned ceiling needs this many seconds of traffic first: until then every second is
/// learned, and the service is put under attack only above a configured `max_pps`.
pub const LEARN_WARMUP: u64 = 10;

/// The newcomer budget's burst on each CPU: this share of a second of its rate (at least one
/// packet).
const NEWCOMER_BURST_SECS: f64 = 0.1;

/// A rate learned from the seconds a service was not under attack: an exponentially weighted
/// average, corrected for its start at zero (so that after a few samples it is their mean,
/// not a fraction of it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Learned {
    /// The raw average (biased towards 0 until `samples` is large).
    pub raw: f64,
    pub samples: u64,
}

impl Learned {
    fn alpha() -> f64 {
        1.0 - (-1.0 / LEARN_SECS).exp()
    }

    pub fn add(&mut self, rate: f64) {
        self.raw += Self::alpha() * (rate - self.raw);
        self.samples += 1;
    }

    /// The learned rate, or `None` before the first sample.
    pub fn rate(&self) -> Option<f64> {
        if self.samples == 0 {
            return None;
        }
        let weight = 1.0 - (1.0 - Self::alpha()).powf(self.samples as f64);
        Some(self.raw / weight)
    }
}

/// What a service's monitor knows; shown by `guard status` and `guard health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceReport {
    pub name: String,
    /// `None` for the traffic of no configured service ("other").
    pub protocol: Option<ServiceProto>,
    pub port: u16,
    pub pps: f64,
    pub syn_pps: f64,
    /// The ceiling in force (packets/s), and where it comes from.
    pub ceiling_pps: f64,
    pub ceiling_syn_pps: Option<f64>,
    pub ceiling_learned: bool,
    /// The learned normal rates, once there is one.
    pub learned_pps: Option<f64>,
    pub learned_syn_pps: Option<f64>,
    pub under_attack: bool,
    /// Unix seconds the attack began.
    pub attack_since: Option<u64>,
    /// Newcomer budget while under attack, packets/s for the host.
    pub newcomer_budget_pps: f64,
    pub newcomer_passed_pps: f64,
    pub newcomer_dropped_pps: f64,
    /// `syn_cookies` ("auto", "on", "off"; "off" for UDP and "other").
    #[serde(default)]
    pub syn_cookies: String,
    /// Whether the program answers this service's unknown SYNs with cookies now.
    #[serde(default)]
    pub cookies_active: bool,
}

/// A change of attack state, for the log.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    Entered {
        name: String,
        pps: f64,
        syn_pps: f64,
        ceiling_pps: f64,
        ceiling_syn_pps: Option<f64>,
    },
    Left {
        name: String,
        secs: u64,
        pps: f64,
        newcomers_dropped: u64,
    },
}

/// One service's monitor.
#[derive(Clone, Debug)]
pub struct Monitor {
    pub service: ServiceSettings,
    /// Slot 0, the traffic of no service: counted and shown, never put under attack (the
    /// replies to the host's own connections are unknown sources too).
    other: bool,
    pps: Learned,
    syn: Learned,
    last: Option<(u64, ServiceStats)>,
    rate: f64,
    syn_rate: f64,
    newcomer_passed_rate: f64,
    newcomer_dropped_rate: f64,
    under_attack: bool,
    attack_since_unix: Option<u64>,
    attack_started_ns: u64,
    dropped_at_start: u64,
    above: u32,
    below: u32,
}

impl Monitor {
    pub fn new(service: ServiceSettings) -> Self {
        Self {
            service,
            other: false,
            pps: Learned::default(),
            syn: Learned::default(),
            last: None,
            rate: 0.0,
            syn_rate: 0.0,
            newcomer_passed_rate: 0.0,
            newcomer_dropped_rate: 0.0,
            under_attack: false,
            attack_since_unix: None,
            attack_started_ns: 0,
            dropped_at_start: 0,
            above: 0,
            below: 0,
        }
    }

    /// The monitor of slot 0: everything that matches no service.
    pub fn other() -> Self {
        let mut m = Self::new(ServiceSettings {
            name: "other".to_string(),
            protocol: ServiceProto::Udp,
            port: 0,
            max_pps: None,
            max_syn_pps: None,
            syn_cookies: crate::config::SynCookies::Off,
        });
        m.other = true;
        m
    }

    /// Takes over what `old` learned (a reload that kept the service).
    pub fn inherit(&mut self, old: &Monitor) {
        self.pps = old.pps;
        self.syn = old.syn;
        self.last = old.last;
        self.rate = old.rate;
        self.syn_rate = old.syn_rate;
        self.under_attack = old.under_attack;
        self.attack_since_unix = old.attack_since_unix;
        self.attack_started_ns = old.attack_started_ns;
        self.dropped_at_start = old.dropped_at_start;
        self.above = old.above;
        self.below = old.below;
    }

    pub fn learned(&self) -> (Learned, Learned) {
        (self.pps, self.syn)
    }

    pub fn set_learned(&mut self, pps: Learned, syn: Learned) {
        self.pps = pps;
        self.syn = syn;
    }

    pub fn under_attack(&self) -> bool {
        self.under_attack
    }

    fn is_tcp(&self) -> bool {
        !self.other && self.service.protocol == ServiceProto::Tcp
    }

    /// The packet ceiling in force, and whether it is learned.
    pub fn ceiling(&self, a: &AttackSettings) -> (f64, bool) {
        match self.service.max_pps {
            Some(c) => (c as f64, false),
            None => {
                let learned = self.pps.rate().unwrap_or(0.0) * a.factor;
                (learned.max(a.floor_pps as f64), true)
            }
        }
    }

    /// The SYN ceiling (TCP services): configured, or learned when learning.
    pub fn syn_ceiling(&self, a: &AttackSettings) -> Option<f64> {
        if !self.is_tcp() {
            return None;
        }
        match self.service.max_syn_pps {
            Some(c) => Some(c as f64),
            None if a.learn => {
                Some((self.syn.rate().unwrap_or(0.0) * a.factor).max(a.floor_syn_pps as f64))
            }
            None => None,
        }
    }

    /// Takes one sample of the program's counts at `now_ns`; returns a change of attack state.
    pub fn sample(
        &mut self,
        stats: ServiceStats,
        now_ns: u64,
        now_unix: u64,
        a: &AttackSettings,
    ) -> Option<Transition> {
        let (then, before) = self.last.replace((now_ns, stats))?;
        let secs = now_ns.saturating_sub(then) as f64 / NS_PER_SEC as f64;
        if secs <= 0.0 {
            return None;
        }
        // Counters only grow; a smaller one (the maps were replaced) restarts from zero.
        let delta = |now: u64, was: u64| now.checked_sub(was).unwrap_or(now) as f64 / secs;
        self.rate = delta(stats.packets, before.packets);
        self.syn_rate = delta(stats.syns, before.syns);
        self.newcomer_passed_rate = delta(stats.newcomer_passed, before.newcomer_passed);
        self.newcomer_dropped_rate = delta(stats.newcomer_dropped, before.newcomer_dropped);
        let (ceiling, learned) = self.ceiling(a);
        let syn_ceiling = self.syn_ceiling(a);
        let warming_up = a.learn && self.pps.samples < LEARN_WARMUP;
        let over_pps = self.rate > ceiling && !(learned && warming_up);
        let over_syn = syn_ceiling.is_some_and(|c| self.syn_rate > c)
            && !(self.service.max_syn_pps.is_none() && warming_up);
        if over_pps || over_syn {
            self.above += 1;
            self.below = 0;
        } else {
            self.below += 1;
            self.above = 0;
            // Learn only what looks normal: not while under attack, not above the ceiling.
            if !self.under_attack && a.learn {
                self.pps.add(self.rate);
                if self.is_tcp() {
                    self.syn.add(self.syn_rate);
                }
            }
        }
        if self.other {
            return None;
        }
        if !self.under_attack && self.above >= a.enter_secs {
            self.under_attack = true;
            self.attack_since_unix = Some(now_unix);
            self.attack_started_ns = now_ns;
            self.dropped_at_start = stats.newcomer_dropped;
            return Some(Transition::Entered {
                name: self.service.name.clone(),
                pps: self.rate,
                syn_pps: self.syn_rate,
                ceiling_pps: ceiling,
                ceiling_syn_pps: syn_ceiling,
            });
        }
        if self.under_attack && self.below >= a.leave_secs {
            self.under_attack = false;
            self.attack_since_unix = None;
            return Some(Transition::Left {
                name: self.service.name.clone(),
                secs: now_ns.saturating_sub(self.attack_started_ns) / NS_PER_SEC,
                pps: self.rate,
                newcomers_dropped: stats.newcomer_dropped.saturating_sub(self.dropped_at_start),
            });
        }
        None
    }

    /// The newcomer budget for the host, packets per second.
    pub fn newcomer_budget(&self, a: &AttackSettings) -> f64 {
        self.ceiling(a).0 * a.newcomer_share
    }

    /// The program's view: attack mode (with its lease) and the newcomer budget, shared out
    /// among `cpus` CPUs (each CPU enforces its share, so the host passes at most the budget
    /// plus one burst per CPU).
    /// Whether the program is to answer this service's SYNs from unknown sources with
    /// cookies now: a TCP service whose `syn_cookies` says so (now under attack, for
    /// "auto"), on a data plane that can (`cookies`).
    pub fn cookies_active(&self, cookies: bool) -> bool {
        cookies && self.is_tcp() && self.service.syn_cookies.active(self.under_attack)
    }

    pub fn kernel_service(
        &self,
        a: &AttackSettings,
        now_ns: u64,
        cpus: u32,
        cookies: bool,
    ) -> Service {
        let per_cpu = self.newcomer_budget(a) / f64::from(cpus.max(1));
        let burst = (per_cpu * NEWCOMER_BURST_SECS).ceil().max(1.0) as u64;
        let gcra = Gcra::from_f64(per_cpu, burst);
        let mut flags = 0;
        if self.is_tcp() {
            flags |= SERVICE_TCP;
        }
        if self.under_attack {
            flags |= SERVICE_UNDER_ATTACK;
        }
        if self.cookies_active(cookies) {
            flags |= SERVICE_COOKIES;
        }
        Service {
            flags,
            _pad: 0,
            attack_until_ns: if self.under_attack {
                now_ns + ATTACK_LEASE_NS
            } else {
                0
            },
            newcomer_interval_ns: gcra.interval_ns,
            newcomer_tolerance_ns: gcra.tolerance_ns,
        }
    }

    pub fn report(&self, a: &AttackSettings, cookies: bool) -> ServiceReport {
        let (ceiling, learned) = self.ceiling(a);
        ServiceReport {
            name: self.service.name.clone(),
            protocol: (!self.other).then_some(self.service.protocol),
            port: self.service.port,
            pps: self.rate,
            syn_pps: self.syn_rate,
            ceiling_pps: ceiling,
            ceiling_syn_pps: self.syn_ceiling(a),
            ceiling_learned: learned,
            learned_pps: self.pps.rate(),
            learned_syn_pps: self.syn.rate(),
            under_attack: self.under_attack,
            attack_since: self.attack_since_unix,
            newcomer_budget_pps: self.newcomer_budget(a),
            newcomer_passed_pps: self.newcomer_passed_rate,
            newcomer_dropped_pps: self.newcomer_dropped_rate,
            syn_cookies: if self.is_tcp() {
                self.service.syn_cookies.name().to_string()
            } else {
                "off".to_string()
            },
            cookies_active: self.cookies_active(cookies),
        }
    }
}

/// The log line for a change of attack state.
pub fn describe(t: &Transition) -> String {
    match t {
        Transition::Entered {
            name,
            pps,
            syn_pps,
            ceiling_pps,
            ceiling_syn_pps,
        } => format!(
            "service {name} is UNDER ATTACK: {pps:.0} packets/s (ceiling {ceiling_pps:.0}){}; known sources first, newcomers share the budget",
            match ceiling_syn_pps {
                Some(c) => format!(", {syn_pps:.0} SYNs/s (ceiling {c:.0})"),
                None => String::new(),
            }
        ),
        Transition::Left {
            name,
            secs,
            pps,
            newcomers_dropped,
        } => format!(
            "service {name}: the attack is over after {secs} s ({pps:.0} packets/s now); {newcomers_dropped} newcomer packets were dropped"
        ),
    }
}

/// Counts source bans per prefix and says when a prefix has earned a ban of its own:
/// `after` bans of its sources within `window_secs`.
#[derive(Clone, Debug, Default)]
pub struct Escalator {
    recent: BTreeMap<Cidr, VecDeque<u64>>,
}

/// Prefixes remembered at most, so a flood of bans from everywhere costs bounded memory.
const ESCALATOR_PREFIXES: usize = 65_536;

impl Escalator {
    /// Notes a ban of a source in `prefix` at `unix`; true if the prefix now has `after` bans
    /// within `window_secs` (its count then starts again). `after` of 0 never escalates.
    pub fn ban(&mut self, prefix: Cidr, unix: u64, after: u32, window_secs: u64) -> bool {
        if after == 0 {
            return false;
        }
        if !self.recent.contains_key(&prefix) && self.recent.len() >= ESCALATOR_PREFIXES {
            self.prune(unix, window_secs);
            if self.recent.len() >= ESCALATOR_PREFIXES {
                return false;
            }
        }
        let times = self.recent.entry(prefix).or_default();
        times.push_back(unix);
        while times
            .front()
            .is_some_and(|t| unix.saturating_sub(*t) >= window_secs)
        {
            times.pop_front();
        }
        if times.len() >= after as usize {
            self.recent.remove(&prefix);
            return true;
        }
        false
    }

    /// Forgets bans older than the window.
    pub fn prune(&mut self, unix: u64, window_secs: u64) {
        self.recent.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| unix.saturating_sub(*t) >= window_secs)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
    }
}

#[cfg(test)]
mod tests;
