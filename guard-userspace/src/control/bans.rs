//! Bans: listing them, describing the program's new-ban events for the log, and unban (by
//! address or CIDR, also of bans held only in tracker entries, and of prefix bans).
use super::*;

impl<D: Datapath> Control<D> {
    /// The bans in the map now, by source.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn bans(&self) -> Result<Vec<BanInfo>, ControlError> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        let mut out: Vec<BanInfo> = self
            .dp
            .bans()?
            .iter()
            .filter(|(_, b)| b.expires_ns > now_ns)
            .map(|(k, b)| self.ban_info(k, b, now_unix, now_ns))
            .collect();
        out.extend(self.prefix_ban_infos(now_ns));
        out.sort_by_key(|b| b.source);
        Ok(out)
    }

    pub(super) fn ban_info(
        &self,
        key: &SourceKey,
        ban: &Ban,
        now_unix: u64,
        now_ns: u64,
    ) -> BanInfo {
        BanInfo {
            source: key_cidr(key, &self.settings.limits),
            reason: match self.fleet_origins.get(key) {
                Some((origin, expires_ns)) if *expires_ns == ban.expires_ns => {
                    format!("fleet:{origin}")
                }
                _ => reason_name(ban.reason),
            },
            since: self.mono_to_wall(ban.since_ns, now_unix, now_ns),
            expires: self.mono_to_wall(ban.expires_ns, now_unix, now_ns),
        }
    }

    /// Describes the data plane's new-ban events for the log.
    pub fn describe_events(&self, events: &[BanEvent]) -> Vec<NewBan> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        events
            .iter()
            .map(|ev| {
                let ban = Ban {
                    expires_ns: ev.expires_ns,
                    since_ns: ev.since_ns,
                    reason: ev.reason,
                    _pad: 0,
                };
                let iface = self
                    .attachments
                    .iter()
                    .find(|a| a.ifindex == ev.ifindex)
                    .map_or_else(|| format!("ifindex {}", ev.ifindex), |a| a.iface.clone());
                NewBan {
                    ban: self.ban_info(&ev.source, &ban, now_unix, now_ns),
                    iface,
                }
            })
            .collect()
    }

    /// Lifts every ban that overlaps `cidr` (a ban of a network inside it, or the network a
    /// single address is tracked in).
    ///
    /// # Errors
    ///
    /// [`ControlError::NotBanned`] if none matches; a map error. Not refused when the store
    /// cannot save (the ban is lifted in the kernel already): the removal stays unsaved and
    /// is retried each tick; a restart before then brings the ban back until it expires.
    pub fn unban(&mut self, cidr: Cidr) -> Result<Vec<BanInfo>, ControlError> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        let limits = self.settings.limits;
        let mut removed = Vec::new();
        let overlaps = |key: &SourceKey| {
            let ban_net = key_cidr(key, &limits);
            cidr.contains(ban_net.addr()) || ban_net.contains(cidr.addr())
        };
        let mut lifted = HashSet::new();
        for (key, ban) in self.dp.bans()? {
            if overlaps(&key) && self.dp.ban_remove(&key)? {
                lifted.insert(key);
                if self.bans.remove(&key).is_some() {
                    self.unsaved.bans.insert(key);
                }
                if ban.expires_ns > now_ns {
                    removed.push(self.ban_info(&key, &ban, now_unix, now_ns));
                }
            }
        }
        // A ban the data plane could not record in its full bans map lives only in the
        // source's tracker entry: lift those too (ban_remove forgets the entry).
        for (key, state) in self.dp.sources()? {
            if state.banned_until_ns > now_ns && !lifted.contains(&key) && overlaps(&key) {
                self.dp.ban_remove(&key)?;
                let ban = Ban {
                    expires_ns: state.banned_until_ns,
                    since_ns: now_ns,
                    reason: guard_common::reason::RATE_LIMITED as u32,
                    _pad: 0,
                };
                let mut info = self.ban_info(&key, &ban, now_unix, now_ns);
                info.reason = "tracker only (bans map full)".into();
                removed.push(info);
            }
        }
        removed.extend(self.unban_prefixes(&cidr, now_ns)?);
        if removed.is_empty() {
            return Err(ControlError::NotBanned { cidr });
        }
        removed.sort_by_key(|b| b.source);
        self.flush();
        Ok(removed)
    }
}

/// What [`Control::ban_l7`] did with a source the load balancer reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Ban {
    /// Banned until then (Unix seconds).
    Banned(BanInfo),
    /// Allow-listed: never banned (the allow-list entry is named).
    Allowed(Cidr),
    /// Banned already, until then (Unix seconds): left as it is.
    AlreadyBanned(u64),
}

impl<D: Datapath> Control<D> {
    /// Bans `ip` (the network it is tracked in) for `secs` with reason `l7:haproxy`, unless it
    /// is allow-listed or banned already. The state file follows at the next sweep.
    ///
    /// # Errors
    ///
    /// A map error (the bans map is full, or the kernel refused).
    pub fn ban_l7(&mut self, ip: IpAddr, secs: u64) -> Result<L7Ban, ControlError> {
        if let Some(allowed) = self.allow.keys().find(|a| a.contains(ip)) {
            return Ok(L7Ban::Allowed(*allowed));
        }
        let limits = self.settings.limits;
        let key = match ip {
            IpAddr::V4(v4) => {
                guard_common::source_key_v4(v4.octets(), u32::from(limits.ipv4_prefix))
            }
            IpAddr::V6(v6) => {
                guard_common::source_key_v6(v6.octets(), u32::from(limits.ipv6_prefix))
            }
        };
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        if let Some((_, b)) = self
            .dp
            .bans()?
            .into_iter()
            .find(|(k, b)| *k == key && b.expires_ns > now_ns)
        {
            return Ok(L7Ban::AlreadyBanned(self.mono_to_wall(
                b.expires_ns,
                now_unix,
                now_ns,
            )));
        }
        let ban = Ban {
            expires_ns: now_ns.saturating_add(secs.saturating_mul(NS_PER_SEC)),
            since_ns: now_ns,
            reason: reason::BAN_L7_HAPROXY,
            _pad: 0,
        };
        self.dp.ban_insert(&key, &ban)?;
        Ok(L7Ban::Banned(self.ban_info(&key, &ban, now_unix, now_ns)))
    }
}
