//! The sweep each tick: expired list entries and bans out of the maps, bans mirrored into the
//! state store (one row per changed ban), prefix-ban escalation, records parked at restore;
//! then what changed is flushed to the store, and kept for the next tick if that fails.
use super::*;

impl<D: Datapath> Control<D> {
    /// Removes expired list entries and bans from the maps, mirrors the map's bans into the
    /// state, and flushes what changed to the store.
    ///
    /// # Errors
    ///
    /// A map error. A store that cannot save is no error here (the daemon's loop is sound):
    /// the changes stay in memory, [`Control::store_warning`] says so, and the next sweep
    /// tries again.
    pub fn sweep(&mut self) -> Result<SweepOutcome, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut out = SweepOutcome::default();
        // The lists are walked only when an entry may be due: with a million entries loaded
        // a walk takes tens of milliseconds under the control lock.
        let walk_lists = now_ns >= self.next_list_expiry_ns;
        if walk_lists {
            self.next_list_expiry_ns = u64::MAX;
        }
        for list in [List::Allow, List::Deny] {
            if !walk_lists {
                break;
            }
            let mut next = u64::MAX;
            let due: Vec<(Cidr, Option<u64>)> = self
                .list(list)
                .iter()
                .filter(|(_, e)| {
                    if e.expires_ns > now_ns {
                        next = next.min(e.expires_ns);
                    }
                    e.expires_ns != 0 && e.expires_ns <= now_ns
                })
                .map(|(c, e)| (*c, e.record.expires))
                .collect();
            self.next_list_expiry_ns = self.next_list_expiry_ns.min(next);
            let mut expired = Vec::with_capacity(due.len());
            for (cidr, wall) in due {
                // Due on the monotonic clock but not on the wall clock by more than a jump's
                // slack: the wall clock was ahead when the expiry was converted (a real-time
                // clock ahead at boot, set right since). The stored time is the truth.
                if let Some(t) = wall.filter(|t| *t > now_unix + CLOCK_JUMP_SECS) {
                    let ns = self.wall_to_mono(t, now_unix, now_ns);
                    self.dp.list_insert(list, &cidr, ListEntry::expiring(ns))?;
                    self.note_list_expiry(ns);
                    if let Some(e) = self.list_mut(list).get_mut(&cidr) {
                        e.expires_ns = ns;
                    }
                    continue;
                }
                self.dp.list_remove(list, &cidr)?;
                self.list_mut(list).remove(&cidr);
                self.unsaved.lists.insert((list, cidr));
                expired.push(cidr);
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
                self.unsaved.bans.insert(key);
                out.bans_changed += 1;
            }
        }
        let gone: Vec<SourceKey> = self
            .bans
            .keys()
            .filter(|k| !seen.contains(k))
            .copied()
            .collect();
        for k in gone {
            self.bans.remove(&k);
            self.unsaved.bans.insert(k);
            out.bans_changed += 1;
        }
        let (escalated, expired_prefixes) = self.sweep_prefix_bans(now_unix, now_ns)?;
        self.unsaved
            .prefix_bans
            .extend(escalated.iter().map(|b| b.source));
        self.unsaved
            .prefix_bans
            .extend(expired_prefixes.iter().copied());
        out.escalated = escalated;
        out.expired_bans += expired_prefixes.len();
        out.bans_changed += out.escalated.len() + expired_prefixes.len();
        out.expired_known = self.sweep_known(now_ns)?;
        self.sweep_parked(now_unix, now_ns)?;
        self.flush();
        Ok(out)
    }
}
