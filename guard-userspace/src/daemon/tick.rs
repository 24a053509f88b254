//! One second's work, on a blocking thread of its own (map walks and fsync stay off the
//! runtime): log new bans, run the services' monitors, expire entries, bans and overrides,
//! mirror bans to disk, then evaluate health and publish it with the metrics.
use std::time::Instant;

use guard_common::BanEvent;

use super::{
    BAN_LINES_PER_TICK, BanEvents, Daemon, LEARNED_SAVE_EVERY, SOURCE_COUNT_EVERY, ban_log_lines,
};
use crate::{
    control::Control,
    dataplane::{Attachment, Datapath, events, link::LinkState},
    health::{
        CheckRunner, DropRate, Evaluator, Inputs, InterfaceInput, MapFill, OverrideMode,
        ProcSource, StatusKind, SystemSample, dropped_packets,
    },
    rpc::error_chain,
    serve::metrics::{self, Snapshot},
    state,
};

/// The health evaluation's state, held between ticks.
pub(super) struct Health {
    pub(super) eval: Evaluator,
    pub(super) runner: CheckRunner,
    drop_rate: DropRate,
    pub(super) listeners: super::listeners::Listeners,
    /// Per attachment, whether it was attached at the last tick (to log changes once).
    attached: Vec<bool>,
    last_status: Option<StatusKind>,
}

impl Health {
    /// Starts the local checks' runner.
    pub(super) fn new(
        config: crate::health::HealthConfig,
        listeners: super::listeners::Listeners,
    ) -> std::io::Result<Self> {
        Ok(Self {
            runner: CheckRunner::spawn(config.checks().to_vec(), super::CHECK_INTERVAL)?,
            eval: Evaluator::new(config),
            drop_rate: DropRate::default(),
            listeners,
            attached: Vec::new(),
            last_status: None,
        })
    }
}

/// What one tick read from the control plane for the health evaluation.
pub(super) struct HealthInputs {
    /// The expiry sweep read and wrote the maps: the daemon's loop is sound (the watchdog).
    loop_sound: bool,
    now_unix: u64,
    counters: Result<Vec<(u32, guard_common::Counters)>, String>,
    attachments: Vec<Attachment>,
    /// Each attachment's link, as checked (and re-attached where it had been lost) this tick.
    links: Vec<LinkState>,
    maps: Vec<MapFill>,
    bans_active: usize,
    operator: Option<crate::health::Override>,
    seq: u64,
    services: Vec<crate::control::attack::ServiceReport>,
    known_sources: usize,
    prefix_bans: usize,
    store: Option<String>,
}

impl<D: Datapath + BanEvents> Daemon<D> {
    /// One second's work. True if the daemon's own loop is sound: the maps answered the
    /// expiry sweep. (Not the host's health: a busy or draining host's daemon is fine.)
    pub(super) fn tick(&self) -> bool {
        let inputs = self.housekeeping();
        let sound = inputs.loop_sound;
        self.evaluate(inputs);
        sound
    }

    /// The new bans the ring-buffer reader sent since the last tick.
    fn take_ring_events(&self) -> Vec<BanEvent> {
        let mut rx = self.ban_events.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        if let Some(rx) = rx.as_mut() {
            while let Ok(item) = rx.try_recv() {
                out.extend(events::parse(&item));
            }
        }
        out
    }

    /// The control plane's part of a tick, under its lock; returns what health needs.
    fn housekeeping(&self) -> HealthInputs {
        let mut control = self.lock();
        let mut events = control.datapath_mut().take_events();
        events.extend(self.take_ring_events());
        if !events.is_empty() {
            for line in ban_log_lines(&control.describe_events(&events), BAN_LINES_PER_TICK) {
                tracing::warn!("{line}");
            }
        }
        match control.attack_tick() {
            Ok(changes) => {
                for t in &changes {
                    tracing::warn!("{}", crate::control::attack::describe(t));
                }
            }
            Err(e) => tracing::error!("reading the services' rates: {}", error_chain(&e)),
        }
        let sweep = control.sweep();
        let loop_sound = sweep.is_ok();
        match sweep {
            Ok(s) => {
                if s.expired_allow + s.expired_deny + s.expired_bans > 0 {
                    tracing::info!(
                        "expired: {} allow entries, {} deny entries, {} bans",
                        s.expired_allow,
                        s.expired_deny,
                        s.expired_bans
                    );
                }
                for b in &s.escalated {
                    tracing::warn!(
                        "banned the prefix {} until {}: its sources kept getting banned (escalation)",
                        b.source,
                        state::format_unix(b.expires)
                    );
                }
                if s.expired_known > 0 {
                    tracing::info!(
                        "forgot {} known sources that had been silent too long",
                        s.expired_known
                    );
                }
            }
            Err(e) => tracing::error!("expiry sweep: {}", error_chain(&e)),
        }
        {
            let mut saved = self.learned_saved.lock().unwrap_or_else(|p| p.into_inner());
            if saved.elapsed() >= LEARNED_SAVE_EVERY {
                if let Err(e) = control.save_learned() {
                    tracing::warn!("saving the learned rates: {}", error_chain(&e));
                }
                *saved = Instant::now();
            }
        }
        match control.expire_operator() {
            Ok(true) => tracing::info!("the operator's health override expired"),
            Ok(false) => {}
            Err(e) => tracing::error!("expiring the health override: {}", error_chain(&e)),
        }
        let sources = {
            let mut cached = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            match cached.filter(|(_, at)| at.elapsed() < SOURCE_COUNT_EVERY) {
                Some((n, _)) => n,
                None => {
                    let n = control.source_count().unwrap_or_else(|e| {
                        tracing::warn!("counting the source tracker: {}", error_chain(&e));
                        cached.map_or(0, |(n, _)| n)
                    });
                    *cached = Some((n, Instant::now()));
                    n
                }
            }
        };
        let links = self.check_links(&mut control);
        HealthInputs {
            loop_sound,
            now_unix: control.now_unix(),
            counters: control.counters().map_err(|e| error_chain(&e)),
            attachments: control.attachments().to_vec(),
            links,
            maps: control.map_fill(sources),
            bans_active: control.bans_active(),
            operator: control.operator().cloned(),
            seq: control.operator_seq(),
            services: control.service_reports(),
            known_sources: control.known_count(),
            prefix_bans: control.prefix_ban_count(),
            store: control.store_warning(),
        }
    }

    /// Asks the kernel whether each attachment's link is still on its interface; one whose
    /// interface exists but lost the program (deleted and made anew under its name: a new
    /// index) is attached again. A failed attempt is retried only once the interface's index
    /// changes again, so a refusal is logged once, not every second.
    fn check_links(&self, control: &mut Control<D>) -> Vec<LinkState> {
        let pin_dir = control.settings().datapath.pin_dir.clone();
        let mut failed = self
            .reattach_failed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut links = Vec::with_capacity(control.attachments().len());
        for i in 0..control.attachments().len() {
            let a = control.attachments()[i].clone();
            let mut state = (self.link_check)(&pin_dir, &a.iface);
            let chain = a.mode == "chain";
            if !state.attached
                && let Some(now) = (self.target_now)(&a.iface)
                && failed.get(&a.iface) != Some(&now)
            {
                match control.reattach(i) {
                    Ok(_) if chain => {
                        failed.remove(&a.iface);
                        tracing::warn!(
                            "{}: the slot was emptied ({}); put the guard back in",
                            a.iface,
                            state.detail
                        );
                        state = (self.link_check)(&pin_dir, &a.iface);
                    }
                    Ok(b) => {
                        failed.remove(&a.iface);
                        tracing::warn!(
                            "{}: re-attached the XDP program in {} mode (the interface came back as ifindex {}, was {}: {})",
                            a.iface,
                            b.mode,
                            b.ifindex,
                            a.ifindex,
                            state.detail
                        );
                        state = (self.link_check)(&pin_dir, &a.iface);
                    }
                    Err(e) if chain => {
                        failed.insert(a.iface.clone(), now);
                        tracing::error!(
                            "{}: THE GUARD IS NOT IN ITS SLOT: {e}; retried when the slot changes (empty it to have the guard put back), or restart the daemon",
                            a.iface
                        );
                    }
                    Err(e) => {
                        failed.insert(a.iface.clone(), now);
                        tracing::error!(
                            "{}: CANNOT RE-ATTACH THE XDP PROGRAM (ifindex {now}): {e}; retried when the interface changes again, or restart the daemon",
                            a.iface
                        );
                    }
                }
            }
            links.push(state);
        }
        links
    }

    /// The health part of a tick, off the control plane's lock: evaluate and publish.
    fn evaluate(&self, inputs: HealthInputs) {
        let HealthInputs {
            loop_sound: _,
            now_unix,
            counters,
            attachments,
            links,
            maps,
            bans_active,
            operator,
            seq,
            services,
            known_sources,
            prefix_bans,
            store,
        } = inputs;
        let mut health = self.lock_health();
        let mut sum = guard_common::Counters::default();
        if let Ok(slots) = &counters {
            for (_, c) in slots {
                sum.add(c);
            }
        }
        let drop_rate_pps = health
            .drop_rate
            .update(dropped_packets(&sum), Instant::now());
        let mut interfaces = Vec::with_capacity(attachments.len());
        health.attached.resize(attachments.len(), true);
        for (i, (a, state)) in attachments.iter().zip(&links).enumerate() {
            if state.attached != health.attached[i] {
                if state.attached {
                    tracing::info!(
                        "{}: the XDP program is attached again ({})",
                        a.iface,
                        state.detail
                    );
                } else {
                    tracing::error!(
                        "{}: THE XDP PROGRAM IS NOT ATTACHED: {}",
                        a.iface,
                        state.detail
                    );
                }
                health.attached[i] = state.attached;
            }
            interfaces.push(InterfaceInput {
                name: a.iface.clone(),
                attached: state.attached,
            });
        }
        let checks = health.runner.results();
        let report = health.eval.evaluate(&Inputs {
            now_unix,
            system: SystemSample::read(&ProcSource::default()),
            interfaces,
            maps: maps.clone(),
            checks,
            operator: operator.clone(),
            drop_rate_pps,
            services: services.clone(),
            store,
            watchdog: self.controls.drains(),
            fleet: self.fleet.as_ref().and_then(|f| f.warning()),
        });
        if let Some(f) = &self.fleet {
            // Out of the pool, holding its drain slot: the operator's drain or maintenance,
            // or a watchdog's drain (which took the slot before draining).
            let out = operator.as_ref().is_some_and(|o| {
                o.is_active(now_unix) && matches!(o.mode, OverrideMode::Drain | OverrideMode::Maint)
            }) || !self.controls.drains().is_empty();
            f.set_local(report.status.kind().name(), out);
        }
        let kind = report.status.kind();
        if health.last_status != Some(kind) {
            if health.last_status.is_some() || kind != StatusKind::Starting {
                tracing::info!("health: {}: {}", report.status, report.reason);
            }
            health.last_status = Some(kind);
        }
        if let Err(e) = &counters {
            tracing::warn!("reading the counters for metrics: {e}");
        }
        let slots = counters.as_deref().unwrap_or_default();
        let mut text = metrics::render(&Snapshot {
            up: counters.is_ok(),
            interfaces: &metrics::interface_counters(slots, &attachments),
            bans_active: bans_active as u64,
            maps: &maps,
            health: Some(&report),
            services: &services,
            known_sources: known_sources as u64,
            prefix_bans: prefix_bans as u64,
        });
        if let Some(f) = &self.fleet {
            text.push_str(&metrics::render_fleet(&f.status()));
        }
        self.published.publish(report, text, seq);
    }
}
