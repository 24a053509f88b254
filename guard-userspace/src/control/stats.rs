//! What the control plane reports: map fill, counters, stats, top-source samples, status, and
//! reloads of the settings into the data plane.
use super::*;

impl<D: Datapath> Control<D> {
    /// The interfaces the program was attached to at start.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Bans in the map as of the last [`Control::sweep`].
    pub fn bans_active(&self) -> usize {
        self.bans.len()
    }

    /// The fill of every map for health and metrics, short-named (`deny_v4`, `bans`, ...).
    /// The lists come from the control plane's copy and the bans from the last sweep, so this
    /// costs no map walk; the source tracker's count is the caller's (walking the LRU is the
    /// one expensive read, so the daemon does it less often).
    pub fn map_fill(&self, sources: usize) -> Vec<health::MapFill> {
        let count =
            |m: &BTreeMap<Cidr, Entry>, v4: bool| m.keys().filter(|c| c.is_ipv4() == v4).count();
        let fill = |name: &str, entries: usize, capacity: u32| health::MapFill {
            name: name.to_string(),
            entries: entries as u64,
            capacity: u64::from(capacity),
        };
        vec![
            fill("allow_v4", count(&self.allow, true), capacity::ALLOW_V4),
            fill("allow_v6", count(&self.allow, false), capacity::ALLOW_V6),
            fill("deny_v4", count(&self.deny, true), capacity::DENY_V4),
            fill("deny_v6", count(&self.deny, false), capacity::DENY_V6),
            fill("sources", sources, capacity::SOURCES),
            fill("bans", self.bans.len(), capacity::BANS),
            fill("known", self.known_count(), capacity::KNOWN),
            fill(
                "prefix_bans",
                self.prefix_bans.len(),
                capacity::PREFIX_BANS_V4.min(capacity::PREFIX_BANS_V6),
            ),
        ]
    }

    /// Entries in the source tracker now (a walk of the LRU map).
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn source_count(&self) -> Result<usize, ControlError> {
        Ok(self.dp.sources()?.len())
    }

    /// Counters per stats slot, straight from the data plane.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn counters(&self) -> Result<Vec<(u32, Counters)>, ControlError> {
        Ok(self.dp.counters()?)
    }

    /// Writes the settings' limits into the data plane (at start).
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn apply_kernel_config(&mut self) -> Result<(), ControlError> {
        Ok(self.dp.set_config(&self.settings.kernel_config())?)
    }

    /// Applies reloaded settings: limits and dry-run at once; settings that need a restart are
    /// kept as they are and reported.
    ///
    /// # Errors
    ///
    /// A map error; the running settings then stay.
    pub fn apply_settings(&mut self, new: Settings) -> Result<ReloadReport, ControlError> {
        let restart_needed = self.settings.restart_needed_for(&new);
        let mut next = self.settings.clone();
        next.source = new.source;
        // The tracking prefixes shape the keys of every tracked source and ban: changing them
        // live would orphan the bans made under the old ones. They wait for a restart.
        next.limits = crate::config::Limits {
            ipv4_prefix: self.settings.limits.ipv4_prefix,
            ipv6_prefix: self.settings.limits.ipv6_prefix,
            ..new.limits
        };
        next.datapath.dry_run = new.datapath.dry_run;
        next.attack = new.attack;
        next.prefixes = new.prefixes;
        next.services = new.services;
        self.dp.set_config(&next.kernel_config())?;
        self.settings = next;
        self.apply_services()?;
        Ok(ReloadReport {
            config: self.settings.source.clone(),
            limits: self.settings.limits,
            dry_run: self.settings.datapath.dry_run,
            restart_needed: restart_needed.into_iter().map(String::from).collect(),
        })
    }

    /// Counters per interface and in total, and the fill of each map.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn stats(&self) -> Result<StatsReport, ControlError> {
        let mut total = Counters::default();
        let mut interfaces = Vec::new();
        for (slot, c) in self.dp.counters()? {
            total.add(&c);
            let names: Vec<&str> = self
                .attachments
                .iter()
                .filter(|a| a.ifindex % capacity::STATS_SLOTS == slot)
                .map(|a| a.iface.as_str())
                .collect();
            let iface = if names.is_empty() {
                format!("slot {slot}")
            } else {
                names.join("+")
            };
            interfaces.push(InterfaceStats {
                iface,
                slot,
                packets: c.total_packets(),
                bytes: c.total_bytes(),
                reasons: reason_counts(&c),
            });
        }
        // Attached interfaces that saw no packet yet are shown with zeros.
        for a in &self.attachments {
            let slot = a.ifindex % capacity::STATS_SLOTS;
            if !interfaces.iter().any(|i| i.slot == slot) {
                interfaces.push(InterfaceStats {
                    iface: a.iface.clone(),
                    slot,
                    packets: 0,
                    bytes: 0,
                    reasons: reason_counts(&Counters::default()),
                });
            }
        }
        interfaces.sort_by(|a, b| a.iface.cmp(&b.iface));
        let count =
            |m: &BTreeMap<Cidr, Entry>, v4: bool| m.keys().filter(|c| c.is_ipv4() == v4).count();
        let maps = vec![
            fill(
                map_names::ALLOW_V4,
                count(&self.allow, true),
                capacity::ALLOW_V4,
            ),
            fill(
                map_names::ALLOW_V6,
                count(&self.allow, false),
                capacity::ALLOW_V6,
            ),
            fill(
                map_names::DENY_V4,
                count(&self.deny, true),
                capacity::DENY_V4,
            ),
            fill(
                map_names::DENY_V6,
                count(&self.deny, false),
                capacity::DENY_V6,
            ),
            fill(
                map_names::SOURCES,
                self.dp.sources()?.len(),
                capacity::SOURCES,
            ),
            fill(map_names::BANS, self.dp.bans()?.len(), capacity::BANS),
            fill(map_names::KNOWN, self.dp.known()?.len(), capacity::KNOWN),
            fill(
                map_names::PREFIX_BANS_V4,
                self.prefix_bans.keys().filter(|c| c.is_ipv4()).count(),
                capacity::PREFIX_BANS_V4,
            ),
            fill(
                map_names::PREFIX_BANS_V6,
                self.prefix_bans.keys().filter(|c| !c.is_ipv4()).count(),
                capacity::PREFIX_BANS_V6,
            ),
        ];
        Ok(StatsReport {
            dry_run: self.settings.datapath.dry_run,
            interfaces,
            total: InterfaceStats {
                iface: "total".to_string(),
                slot: u32::MAX,
                packets: total.total_packets(),
                bytes: total.total_bytes(),
                reasons: reason_counts(&total),
            },
            maps,
        })
    }

    /// One sample of the source tracker for [`top_sources`].
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn sample_sources(&self) -> Result<SourceSample, ControlError> {
        Ok(SourceSample {
            at_ns: self.dp.now_ns(),
            sources: self.dp.sources()?.into_iter().collect(),
            banned: self.dp.bans()?.into_iter().map(|(k, _)| k).collect(),
        })
    }

    /// What `guard status` shows.
    pub fn status(&self) -> StatusReport {
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            config: self.settings.source.clone(),
            dry_run: self.settings.datapath.dry_run,
            limits: self.settings.limits,
            attachments: self.attachments.clone(),
            attach: match self.settings.datapath.attach {
                crate::dataplane::Placement::Auto => "auto",
                crate::dataplane::Placement::Direct => "direct",
                crate::dataplane::Placement::Dispatcher => "dispatcher",
            }
            .to_string(),
            priority: self.settings.datapath.priority,
            next: self
                .settings
                .datapath
                .next
                .as_ref()
                .map(|p| p.display().to_string()),
            pin_dir: self.settings.datapath.pin_dir.display().to_string(),
            state_file: self.store.path().display().to_string(),
            allow_entries: self.allow.len(),
            deny_entries: self.deny.len(),
            bans: self.bans.len(),
            prefix_bans: self.prefix_bans.len(),
            // Counted now (a walk of KNOWN), not as of the last expiry walk.
            known_sources: self
                .dp
                .known()
                .map_or_else(|_| self.known_count(), |k| k.len()),
            services: self.service_reports(),
            syn_cookies: super::reports::CookieStatus {
                unavailable: self.dp.cookie_support().err(),
                sysctl: crate::dataplane::cookies::syncookies_sysctl(
                    &self.settings.datapath.pin_dir,
                ),
            },
            warnings: Vec::new(),
            fleet: None,
        }
    }
}

pub(super) fn fill(map: &str, entries: usize, capacity: u32) -> MapFill {
    MapFill {
        map: map.to_string(),
        entries,
        capacity,
    }
}
