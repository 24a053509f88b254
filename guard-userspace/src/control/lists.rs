//! The allow and deny lists: add (with TTL and reason), delete, list and import, each change
//! in the map and the state store together (a failed save undoes the map change).
use super::*;

impl<D: Datapath> Control<D> {
    /// Adds (or replaces) a list entry, in the map and the state file.
    ///
    /// # Errors
    ///
    /// Bad TTL or reason, a full list, a map error; a state file that cannot be saved undoes
    /// the change.
    pub fn list_add(
        &mut self,
        list: List,
        cidr: Cidr,
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<AddOutcome, ControlError> {
        Self::check_ttl_reason(ttl, reason.as_deref())?;
        self.check_capacity(list, std::iter::once(&cidr))?;
        let entry = self.new_entry(cidr, ttl, reason);
        self.dp
            .list_insert(list, &cidr, ListEntry::expiring(entry.expires_ns))?;
        let record = entry.record.clone();
        self.note_list_expiry(entry.expires_ns);
        let old = self.list_mut(list).insert(cidr, entry);
        if let Err(e) = self.save_now(|w| w.put_list(list, &record)) {
            self.undo(list, cidr, old);
            return Err(e);
        }
        Ok(AddOutcome {
            replaced: old.is_some(),
        })
    }

    /// Puts back `old` for `cidr` (or removes it), in memory and the map: undoing a change.
    pub(super) fn undo(&mut self, list: List, cidr: Cidr, old: Option<Entry>) {
        let result = match &old {
            Some(e) => self
                .dp
                .list_insert(list, &cidr, ListEntry::expiring(e.expires_ns)),
            None => self.dp.list_remove(list, &cidr).map(|_| ()),
        };
        if let Err(e) = result {
            tracing::error!(
                "undoing the change to {cidr} in the {} list failed: the map and the state file disagree until the next restart: {e}",
                list.name()
            );
        }
        match old {
            Some(e) => {
                self.note_list_expiry(e.expires_ns);
                self.list_mut(list).insert(cidr, e);
            }
            None => {
                self.list_mut(list).remove(&cidr);
            }
        }
    }

    /// Removes a list entry from the map and the state file.
    ///
    /// # Errors
    ///
    /// [`ControlError::NotListed`] if it is not there; a map error; a state file that cannot be
    /// saved undoes the change.
    pub fn list_del(&mut self, list: List, cidr: Cidr) -> Result<(), ControlError> {
        if !self.list(list).contains_key(&cidr) {
            return Err(ControlError::NotListed { list, cidr });
        }
        self.dp.list_remove(list, &cidr)?;
        let old = self.list_mut(list).remove(&cidr);
        if let Err(e) = self.save_now(|w| w.del_list(list, &cidr)) {
            self.undo(list, cidr, old);
            return Err(e);
        }
        Ok(())
    }

    /// The entries of a list, in address order.
    pub fn list_entries(&self, list: List) -> Vec<ListRecord> {
        self.list(list).values().map(|e| e.record.clone()).collect()
    }

    /// Adds (or replaces) many entries at once, all or nothing: one store transaction, so a
    /// crash during it leaves the store with the old list or the new one, never a mix.
    ///
    /// # Errors
    ///
    /// As [`Control::list_add`]; on any error, every entry is as it was.
    pub fn list_import(
        &mut self,
        list: List,
        cidrs: &[Cidr],
        ttl: Option<Duration>,
        reason: Option<String>,
    ) -> Result<ImportOutcome, ControlError> {
        Self::check_ttl_reason(ttl, reason.as_deref())?;
        let mut unique: Vec<Cidr> = cidrs.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let duplicates = cidrs.len() - unique.len();
        self.check_capacity(list, unique.iter())?;

        // One stamp for the whole import: every entry gets the same times.
        let template = self.new_entry(Cidr::host(IpAddr::from([0u8; 4])), ttl, reason);
        let value = ListEntry::expiring(template.expires_ns);
        self.note_list_expiry(template.expires_ns);
        let mut previous: Vec<(Cidr, Option<Entry>)> = Vec::with_capacity(unique.len());
        let mut failure = None;
        let inserted = match self.dp.list_insert_many(list, &unique, value) {
            Ok(()) => unique.len(),
            Err((done, e)) => {
                failure = Some(ControlError::from(e));
                done
            }
        };
        for cidr in &unique[..inserted] {
            let mut entry = template.clone();
            entry.record.cidr = *cidr;
            let old = self.list_mut(list).insert(*cidr, entry);
            previous.push((*cidr, old));
        }
        if failure.is_none() {
            let mut record = template.record.clone();
            let saved = self.save_now(|w| {
                for cidr in &unique {
                    record.cidr = *cidr;
                    w.put_list(list, &record)?;
                }
                Ok(())
            });
            if let Err(e) = saved {
                failure = Some(e);
            }
        }
        if let Some(e) = failure {
            for (cidr, old) in previous.into_iter().rev() {
                self.undo(list, cidr, old);
            }
            return Err(e);
        }
        let replaced = previous.iter().filter(|(_, old)| old.is_some()).count();
        Ok(ImportOutcome {
            added: previous.len() - replaced,
            replaced,
            duplicates,
        })
    }
}
