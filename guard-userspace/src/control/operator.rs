//! The operator's health override (`guard drain|maint|ready`): set, expired, persisted, and
//! a sequence number the daemon uses to answer once the health outputs show the change.
use super::*;

impl<D: Datapath> Control<D> {
    /// Unix seconds now, on the control plane's wall clock.
    pub fn now_unix(&self) -> u64 {
        (self.wall)()
    }

    /// The operator's override in force, if any (it may have expired since the last
    /// [`Control::expire_operator`]; the health evaluator checks).
    pub fn operator(&self) -> Option<&Override> {
        self.operator.as_ref()
    }

    /// How many times the override changed; see [`Control::set_operator`].
    pub fn operator_seq(&self) -> u64 {
        self.operator_seq
    }

    /// `guard drain|maint [--for D] [--reason R]` and `guard ready`: sets the override (ready
    /// clears it) and saves it in the state file, so that it survives a restart. Returns the
    /// override now in force and the new [`Control::operator_seq`].
    ///
    /// # Errors
    ///
    /// Bad reason or duration; a state file that cannot be saved undoes the change.
    pub fn set_operator(
        &mut self,
        mode: OverrideMode,
        lasts: Option<Duration>,
        reason: Option<String>,
    ) -> Result<(Option<Override>, u64), ControlError> {
        Self::check_ttl_reason(lasts, reason.as_deref())?;
        let next = match mode {
            OverrideMode::Ready => None,
            OverrideMode::Drain | OverrideMode::Maint => {
                Some(Override::new(mode, reason, (self.wall)(), lasts))
            }
        };
        let before = std::mem::replace(&mut self.operator, next.clone());
        if let Err(e) = self.save_now(|w| w.set_operator(next.as_ref())) {
            self.operator = before;
            return Err(e);
        }
        self.operator_seq += 1;
        Ok((self.operator.clone(), self.operator_seq))
    }

    /// Drops an override whose time has run out, from memory and the state file; true if it
    /// did. (The evaluator ignores it already: this only keeps the file tidy.)
    ///
    /// # Errors
    ///
    /// None today: a store that cannot save it now saves it at a later flush.
    pub fn expire_operator(&mut self) -> Result<bool, ControlError> {
        let now = (self.wall)();
        if self.operator.as_ref().is_none_or(|o| o.is_active(now)) {
            return Ok(false);
        }
        self.operator = None;
        self.operator_seq += 1;
        self.unsaved.operator = true;
        self.flush();
        Ok(true)
    }
}
