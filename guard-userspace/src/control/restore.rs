//! Restore at start: lists, bans, prefix bans and known sources from the state file and the
//! pinned maps, times moved between the file's wall clock and the program's monotonic one.
use super::*;

impl<D: Datapath> Control<D> {
    /// Brings the maps in line with the state file at start: `Some(state)` is the truth for
    /// the lists (stale map entries of a previous run are removed); `None` (no usable file)
    /// takes the lists from the maps, so pinned protection survives a lost state file. Bans
    /// are merged: the map's (made while the daemon was down, too) and the file's that are
    /// not in the map (after a reboot). Times are converted between the wall clock of the file
    /// and the data plane's monotonic clock; entries whose time ran out are dropped.
    ///
    /// # Errors
    ///
    /// A full list, a map error, or the state file cannot be saved.
    pub fn restore(&mut self, state: Option<State>) -> Result<RestoreReport, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut report = RestoreReport {
            from_maps: state.is_none(),
            ..RestoreReport::default()
        };
        let (state_lists, state_bans, state_prefix_bans) = match state {
            Some(State {
                version: _,
                allow,
                deny,
                bans,
                operator,
                prefix_bans,
                learned,
            }) => {
                // An override whose time ran out while the daemon was down has lapsed.
                self.operator = operator.filter(|o| o.is_active(now_unix));
                self.learned = learned;
                (Some([allow, deny]), bans, Some(prefix_bans))
            }
            None => (None, Vec::new(), None),
        };

        for (i, list) in [List::Allow, List::Deny].into_iter().enumerate() {
            let in_map = self.dp.list_entries(list)?;
            let mut entries = BTreeMap::new();
            match &state_lists {
                Some(lists) => {
                    for rec in &lists[i] {
                        match rec.expires {
                            Some(t) if t <= now_unix => report.expired += 1,
                            _ => {
                                let expires_ns = rec
                                    .expires
                                    .map_or(0, |t| self.wall_to_mono(t, now_unix, now_ns));
                                entries.insert(
                                    rec.cidr,
                                    Entry {
                                        record: rec.clone(),
                                        expires_ns,
                                    },
                                );
                            }
                        }
                    }
                }
                None => {
                    for (cidr, e) in &in_map {
                        if e.expires_ns != 0 && e.expires_ns <= now_ns {
                            continue;
                        }
                        let expires = (e.expires_ns != 0)
                            .then(|| self.mono_to_wall(e.expires_ns, now_unix, now_ns));
                        entries.insert(
                            *cidr,
                            Entry {
                                record: ListRecord {
                                    cidr: *cidr,
                                    reason: None,
                                    added: now_unix,
                                    expires,
                                },
                                expires_ns: e.expires_ns,
                            },
                        );
                    }
                }
            }
            *self.list_mut(list) = BTreeMap::new();
            self.check_capacity(list, entries.keys())?;
            for (cidr, _) in &in_map {
                if !entries.contains_key(cidr) {
                    self.dp.list_remove(list, cidr)?;
                    if state_lists.is_some() {
                        report.stale_removed += 1;
                    }
                }
            }
            for (cidr, e) in &entries {
                self.dp
                    .list_insert(list, cidr, ListEntry::expiring(e.expires_ns))?;
            }
            match list {
                List::Allow => report.allow = entries.len(),
                List::Deny => report.deny = entries.len(),
            }
            *self.list_mut(list) = entries;
        }

        let in_map: HashSet<SourceKey> = self.dp.bans()?.into_iter().map(|(k, _)| k).collect();
        for rec in state_bans {
            let key = addr_key(rec.source);
            if rec.expires <= now_unix {
                report.expired += 1;
                continue;
            }
            if in_map.contains(&key) {
                continue;
            }
            let ban = Ban {
                expires_ns: self.wall_to_mono(rec.expires, now_unix, now_ns),
                since_ns: self.wall_to_mono(rec.since, now_unix, now_ns),
                reason: reason_index(&rec.reason),
                _pad: 0,
            };
            self.dp.ban_insert(&key, &ban)?;
        }
        report.expired += self.restore_prefix_bans(state_prefix_bans, now_unix, now_ns)?;
        self.bans.clear();
        self.sweep()?;
        report.bans = self.bans.len() + self.prefix_bans.len();
        self.persist()?;
        Ok(report)
    }
}
