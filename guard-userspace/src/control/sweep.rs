//! The sweep each tick: expired list entries and bans out of the maps, bans mirrored into the
//! state file, prefix-ban escalation; the state file is saved only if something changed.
use super::*;

impl<D: Datapath> Control<D> {
    /// Removes expired list entries and bans from the maps, mirrors the map's bans into the
    /// state, and saves the state file if anything changed.
    ///
    /// # Errors
    ///
    /// A map error, or the state file cannot be saved (the maps are swept all the same).
    pub fn sweep(&mut self) -> Result<SweepOutcome, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut out = SweepOutcome::default();
        for list in [List::Allow, List::Deny] {
            let expired: Vec<Cidr> = self
                .list(list)
                .iter()
                .filter(|(_, e)| e.expires_ns != 0 && e.expires_ns <= now_ns)
                .map(|(c, _)| *c)
                .collect();
            for cidr in &expired {
                self.dp.list_remove(list, cidr)?;
                self.list_mut(list).remove(cidr);
            }
            match list {
                List::Allow => out.expired_allow = expired.len(),
                List::Deny => out.expired_deny = expired.len(),
            }
        }

        let mut seen = HashSet::new();
        for (key, ban) in self.dp.bans()? {
            if ban.expires_ns <= now_ns {
                // Not ban_remove: that also forgets the tracker entry, which may by now hold
                // a new ban the program made (and failed to record over the expired one).
                self.dp.ban_expire(&key, now_ns)?;
                out.expired_bans += 1;
                continue;
            }
            seen.insert(key);
            if !self.bans.contains_key(&key) {
                self.note_ban_for_escalation(&key, &ban, now_unix, now_ns);
            }
            let unchanged = self.bans.get(&key).is_some_and(|m| m.ban == ban);
            if !unchanged {
                let info = self.ban_info(&key, &ban, now_unix, now_ns);
                let record = BanRecord {
                    source: info.source.addr(),
                    reason: info.reason,
                    since: info.since,
                    expires: info.expires,
                };
                self.bans.insert(key, MirroredBan { ban, record });
                out.bans_changed += 1;
            }
        }
        let before = self.bans.len();
        self.bans.retain(|k, _| seen.contains(k));
        out.bans_changed += before - self.bans.len();
        let (escalated, expired_prefixes) = self.sweep_prefix_bans(now_unix, now_ns)?;
        out.escalated = escalated;
        out.expired_bans += expired_prefixes.len();
        out.bans_changed += out.escalated.len() + expired_prefixes.len();
        out.expired_known = self.sweep_known(now_ns)?;

        if out.expired_allow + out.expired_deny + out.bans_changed > 0 {
            self.persist()?;
        }
        Ok(out)
    }
}
