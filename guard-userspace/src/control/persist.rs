//! Saving to the state store: an operator's change in one small transaction before it is
//! acknowledged (undone if it cannot be saved); what the data plane changes (bans, expiry)
//! kept as unsaved keys and written once a tick in one transaction, retried until it works.
use super::*;
use crate::state::Writer;

/// The keys whose records the store may not hold as the control plane does; each is written
/// as it is in memory when flushed (present: upsert; gone: delete), so writing one twice is
/// harmless and a failed flush is simply tried again.
#[derive(Debug, Default)]
pub(super) struct Unsaved {
    pub(super) lists: HashSet<(List, Cidr)>,
    pub(super) bans: HashSet<SourceKey>,
    pub(super) prefix_bans: HashSet<Cidr>,
    pub(super) operator: bool,
    pub(super) learned: bool,
    /// Everything: the store is to be rebuilt from the control plane (at start, from the
    /// pinned maps).
    pub(super) all: bool,
}

impl Unsaved {
    fn is_empty(&self) -> bool {
        let Self {
            lists,
            bans,
            prefix_bans,
            operator,
            learned,
            all,
        } = self;
        lists.is_empty()
            && bans.is_empty()
            && prefix_bans.is_empty()
            && !operator
            && !learned
            && !all
    }

    fn len(&self) -> usize {
        self.lists.len()
            + self.bans.len()
            + self.prefix_bans.len()
            + usize::from(self.operator)
            + usize::from(self.learned)
    }
}

impl<D: Datapath> Control<D> {
    /// Opens the store if it is not (lazily, or after a start on a full disk); a store
    /// created now holds the whole state, so nothing is unsaved then.
    fn open_store(&mut self) -> Result<(), StateError> {
        if self.store.is_open() {
            return Ok(());
        }
        let state = (!self.store.path().exists()).then(|| self.state());
        if self.store.ensure_open(|| state.unwrap_or_default())? {
            self.unsaved = Unsaved::default();
        }
        Ok(())
    }

    /// Saves one operator change now, in one transaction.
    ///
    /// # Errors
    ///
    /// [`ControlError::State`] if it cannot be saved: the caller undoes the change.
    pub(super) fn save_now(
        &mut self,
        f: impl FnOnce(&Writer<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), ControlError> {
        let result = self.open_store().and_then(|()| self.store.write(f));
        if let Err(e) = &result {
            self.note_store_failure(e);
        }
        Ok(result?)
    }

    /// Writes what is unsaved, in one transaction. False if it failed: it stays unsaved,
    /// health warns, and the next tick tries again.
    pub fn flush(&mut self) -> bool {
        if self.unsaved.is_empty() {
            return true;
        }
        let all = self.unsaved.all.then(|| self.state());
        let learned = self.unsaved.learned.then(|| self.learned_records());
        let result = self.open_store().and_then(|()| {
            if self.unsaved.is_empty() {
                return Ok(());
            }
            let Self {
                store,
                unsaved,
                allow,
                deny,
                bans,
                prefix_bans,
                operator,
                ..
            } = self;
            store.write(|w| {
                if let Some(s) = &all {
                    return w.replace_all(s);
                }
                for (list, cidr) in &unsaved.lists {
                    let entries = match list {
                        List::Allow => &*allow,
                        List::Deny => &*deny,
                    };
                    match entries.get(cidr) {
                        Some(e) => w.put_list(*list, &e.record)?,
                        None => w.del_list(*list, cidr)?,
                    }
                }
                for key in &unsaved.bans {
                    match bans.get(key) {
                        Some(b) => w.put_ban(&b.record)?,
                        None => w.del_ban(key_addr(key))?,
                    }
                }
                for cidr in &unsaved.prefix_bans {
                    match prefix_bans.get(cidr) {
                        Some((r, _)) => w.put_prefix_ban(r)?,
                        None => w.del_prefix_ban(cidr)?,
                    }
                }
                if unsaved.operator {
                    w.set_operator(operator.as_ref())?;
                }
                if let Some(l) = &learned {
                    w.set_learned(l)?;
                }
                Ok(())
            })
        });
        match result {
            Ok(()) => {
                self.unsaved = Unsaved::default();
                if let Some(was) = self.store_problem.take() {
                    tracing::info!(
                        "the state store {} saves again; everything held in memory is saved (it failed with: {was})",
                        self.store.path().display()
                    );
                }
                true
            }
            Err(e) => {
                self.note_store_failure(&e);
                false
            }
        }
    }

    fn note_store_failure(&mut self, e: &StateError) {
        let text = crate::rpc::error_chain(e);
        if self.store_problem.as_deref() != Some(text.as_str()) {
            tracing::error!(
                "CANNOT SAVE TO THE STATE STORE: {text}; protection goes on, the bans and expiries it cannot save are held in memory and saved once it can, operator changes are refused until then"
            );
        }
        self.store_problem = Some(text);
    }

    /// What is wrong with the state store, for health (warn) and `guard status`: changes it
    /// could not save, or a damaged store moved aside at start that is still there.
    pub fn store_warning(&self) -> Option<String> {
        let mut out = Vec::new();
        if let Some(p) = &self.store_problem {
            out.push(format!(
                "cannot save to the state store ({p}): {} change(s) held in memory, operator changes refused",
                self.unsaved.len()
            ));
        }
        if let Some(aside) = self.damaged_aside.as_ref().filter(|p| p.exists()) {
            out.push(format!(
                "the damaged state store was moved aside to {} at start (--start-empty): recover what you need from it, then delete it to clear this warning",
                aside.display()
            ));
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    /// Records that start-up moved a damaged store aside to `path` (health warns until the
    /// operator deletes it).
    pub fn set_damaged_aside(&mut self, path: std::path::PathBuf) {
        self.damaged_aside = Some(path);
    }
}
