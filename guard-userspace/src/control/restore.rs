//! Restore at start: lists, bans, prefix bans and known sources from the state store and the
//! pinned maps, times moved between the store's wall clock and the program's monotonic one.
//!
//! A clock at boot may be wrong (a real-time clock ahead, before time sync): a stored record
//! that looks expired then is not loaded into the maps, but is not deleted from the store
//! either. It is parked: if the wall clock jumps (it moves apart from the monotonic clock)
//! the parked records are checked again and those still in force go back into the maps; once
//! the daemon has run [`PARK_GRACE`] with a steady clock they are deleted from the store.
use super::*;

/// Stored records that looked expired at restore (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Parked {
    lists: Vec<(List, ListRecord)>,
    bans: Vec<BanRecord>,
    prefix_bans: Vec<PrefixBanRecord>,
    /// Both clocks (Unix seconds, monotonic ns) when the wall clock was last found steady.
    since: (u64, u64),
}

impl Parked {
    fn is_empty(&self) -> bool {
        self.lists.is_empty() && self.bans.is_empty() && self.prefix_bans.is_empty()
    }

    fn len(&self) -> usize {
        self.lists.len() + self.bans.len() + self.prefix_bans.len()
    }
}

impl<D: Datapath> Control<D> {
    /// Brings the maps in line with the state store at start: `Some(state)` is the truth for
    /// the lists (stale map entries of a previous run are removed); `None` (nothing stored)
    /// takes the lists from the maps, so pinned protection survives a lost store. Bans are
    /// merged: the map's (made while the daemon was down, too) and the store's that are not
    /// in the map (after a reboot). Times are converted between the wall clock of the store
    /// and the data plane's monotonic clock; stored records whose time ran out are parked,
    /// not deleted (module docs).
    ///
    /// # Errors
    ///
    /// A full list or a map error. A store that cannot save is not one: the daemon comes up
    /// and saves once it can.
    pub fn restore(&mut self, state: Option<State>) -> Result<RestoreReport, ControlError> {
        let now_ns = self.dp.now_ns();
        let now_unix = (self.wall)();
        let mut report = RestoreReport {
            from_maps: state.is_none(),
            ..RestoreReport::default()
        };
        let mut parked = Parked {
            since: (now_unix, now_ns),
            ..Parked::default()
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
                            Some(t) if t <= now_unix => {
                                report.expired += 1;
                                parked.lists.push((list, rec.clone()));
                            }
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
            // Whatever the restored entries hold: the next sweep looks.
            self.next_list_expiry_ns = 0;
        }

        let in_map: HashSet<SourceKey> = self.dp.bans()?.into_iter().map(|(k, _)| k).collect();
        for rec in state_bans {
            let key = addr_key(rec.source);
            if rec.expires <= now_unix {
                report.expired += 1;
                parked.bans.push(rec);
                continue;
            }
            if in_map.contains(&key) {
                continue;
            }
            self.insert_stored_ban(&rec, now_unix, now_ns)?;
        }
        let from_maps = state_prefix_bans.is_none();
        let (expired_prefixes, parked_prefixes) =
            self.restore_prefix_bans(state_prefix_bans, now_unix, now_ns)?;
        report.expired += expired_prefixes;
        parked.prefix_bans = parked_prefixes;
        if !parked.is_empty() {
            tracing::info!(
                "{} stored records had expired by the wall clock ({}): not loaded, but kept in the store until the daemon has run {} with a steady clock",
                parked.len(),
                state::format_unix(now_unix),
                crate::duration::Human(PARK_GRACE)
            );
        }
        self.parked = parked;
        self.bans.clear();
        // What the store lacks after this: every ban in the map (the sweep below marks them,
        // as their mirror was cleared), the override (it may have lapsed), and, taken from
        // the maps, everything.
        self.unsaved.operator = true;
        self.unsaved.all |= from_maps;
        self.sweep()?;
        report.bans = self.bans.len() + self.prefix_bans.len();
        self.flush();
        Ok(report)
    }

    fn insert_stored_ban(
        &mut self,
        rec: &BanRecord,
        now_unix: u64,
        now_ns: u64,
    ) -> Result<(), ControlError> {
        let ban = Ban {
            expires_ns: self.wall_to_mono(rec.expires, now_unix, now_ns),
            since_ns: self.wall_to_mono(rec.since, now_unix, now_ns),
            reason: reason_index(&rec.reason),
            _pad: 0,
        };
        Ok(self.dp.ban_insert(&addr_key(rec.source), &ban)?)
    }

    /// Records parked at restore: back into the maps if a wall-clock jump shows they are in
    /// force after all; deleted from the store after [`PARK_GRACE`] of a steady clock.
    pub(super) fn sweep_parked(&mut self, now_unix: u64, now_ns: u64) -> Result<(), ControlError> {
        if self.parked.is_empty() {
            return Ok(());
        }
        let (unix0, ns0) = self.parked.since;
        let wall_moved = i128::from(now_unix) - i128::from(unix0);
        let mono_moved = (i128::from(now_ns) - i128::from(ns0)) / i128::from(NS_PER_SEC);
        let jump = wall_moved - mono_moved;
        if jump.unsigned_abs() > u128::from(CLOCK_JUMP_SECS) {
            let parked = std::mem::take(&mut self.parked);
            let (mut back, mut still) = (0, Parked::default());
            for (list, rec) in parked.lists {
                let live = rec.expires.is_some_and(|t| t > now_unix);
                if live && !self.list(list).contains_key(&rec.cidr) {
                    let ns = rec
                        .expires
                        .map_or(0, |t| self.wall_to_mono(t, now_unix, now_ns));
                    self.dp
                        .list_insert(list, &rec.cidr, ListEntry::expiring(ns))?;
                    self.note_list_expiry(ns);
                    self.list_mut(list).insert(
                        rec.cidr,
                        Entry {
                            record: rec,
                            expires_ns: ns,
                        },
                    );
                    back += 1;
                } else if !live {
                    still.lists.push((list, rec));
                }
            }
            for rec in parked.bans {
                if rec.expires > now_unix {
                    self.insert_stored_ban(&rec, now_unix, now_ns)?;
                    back += 1;
                } else {
                    still.bans.push(rec);
                }
            }
            for rec in parked.prefix_bans {
                if rec.expires > now_unix && !self.prefix_bans.contains_key(&rec.cidr) {
                    let ns = self.wall_to_mono(rec.expires, now_unix, now_ns);
                    self.dp
                        .prefix_ban_insert(&rec.cidr, ListEntry::expiring(ns))?;
                    self.prefix_bans.insert(rec.cidr, (rec, ns));
                    back += 1;
                } else if rec.expires <= now_unix {
                    still.prefix_bans.push(rec);
                }
            }
            tracing::warn!(
                "the wall clock jumped by {jump} s since {}: {back} stored records that looked expired at start are in force after all and were restored",
                state::format_unix(unix0)
            );
            still.since = (now_unix, now_ns);
            self.parked = still;
            return Ok(());
        }
        if now_ns.saturating_sub(ns0) < PARK_GRACE.as_nanos() as u64 {
            return Ok(());
        }
        let parked = std::mem::take(&mut self.parked);
        let n = parked.len();
        for (list, rec) in parked.lists {
            self.unsaved.lists.insert((list, rec.cidr));
        }
        for rec in parked.bans {
            let key = addr_key(rec.source);
            if !self.bans.contains_key(&key) {
                self.unsaved.bans.insert(key);
            }
        }
        for rec in parked.prefix_bans {
            self.unsaved.prefix_bans.insert(rec.cidr);
        }
        tracing::info!(
            "deleting {n} stored records that had expired before the start: the wall clock has been steady for {}",
            crate::duration::Human(PARK_GRACE)
        );
        Ok(())
    }
}
