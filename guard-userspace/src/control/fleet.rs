//! Entries from the fleet: another host's ban or list entry applied here (reason
//! `fleet:<host>`, the origin's absolute expiry), never over this host's allow list; and lifted
//! when the fleet lifts it.
use super::*;
use crate::fleet::Applied;

impl<D: Datapath> Control<D> {
    /// The allow-list entry that overlaps `cidr`, if any.
    pub fn allow_overlap(&self, cidr: &Cidr) -> Option<Cidr> {
        self.allow
            .keys()
            .find(|a| a.contains(cidr.addr()) || cidr.contains(a.addr()))
            .copied()
    }

    /// Bans `source` until `expires` (Unix seconds) as another host asked. The state file
    /// follows at the next sweep, which mirrors the bans map.
    ///
    /// # Errors
    ///
    /// A map error.
    pub fn fleet_ban(
        &mut self,
        source: Cidr,
        expires: u64,
        origin: &str,
    ) -> Result<Applied, ControlError> {
        let now_unix = (self.wall)();
        let now_ns = self.dp.now_ns();
        if expires <= now_unix {
            return Ok(Applied::Skipped("already expired".into()));
        }
        if let Some(a) = self.allow_overlap(&source) {
            return Ok(Applied::Skipped(format!(
                "{a} is in this host's allow list"
            )));
        }
        let prefix = if source.is_ipv4() {
            self.settings.limits.ipv4_prefix
        } else {
            self.settings.limits.ipv6_prefix
        };
        let masked = Cidr::new(source.addr(), prefix.min(source.prefix())).unwrap_or(source);
        let key = addr_key(masked.addr());
        let expires_ns = self.wall_to_mono(expires, now_unix, now_ns);
        self.dp.ban_insert(
            &key,
            &Ban {
                expires_ns,
                since_ns: now_ns,
                reason: reason::BANNED as u32,
                _pad: 0,
            },
        )?;
        self.fleet_origins.retain(|_, (_, e)| *e > now_ns);
        self.fleet_origins
            .insert(key, (origin.to_string(), expires_ns));
        Ok(Applied::Done)
    }

    /// Lifts the bans of `cidr`, as the fleet did.
    ///
    /// # Errors
    ///
    /// A map error, or a state file that cannot be saved.
    pub fn fleet_unban(&mut self, cidr: Cidr) -> Result<Applied, ControlError> {
        match self.unban(cidr) {
            Ok(_) => Ok(Applied::Done),
            Err(ControlError::NotBanned { .. }) => Ok(Applied::Skipped("not banned here".into())),
            Err(e) => Err(e),
        }
    }

    /// Adds another host's list entry (reason `fleet:<origin>`, until `expires`, 0 never),
    /// unless this host lists the source itself already, or (deny) allow-lists it.
    ///
    /// # Errors
    ///
    /// As [`Control::list_add`].
    pub fn fleet_list_add(
        &mut self,
        list: List,
        cidr: Cidr,
        expires: u64,
        origin: &str,
    ) -> Result<Applied, ControlError> {
        let now = (self.wall)();
        if expires != 0 && expires <= now {
            return Ok(Applied::Skipped("already expired".into()));
        }
        if list == List::Deny
            && let Some(a) = self.allow_overlap(&cidr)
        {
            return Ok(Applied::Skipped(format!(
                "{a} is in this host's allow list"
            )));
        }
        if let Some(e) = self.list(list).get(&cidr)
            && !e
                .record
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("fleet:"))
        {
            return Ok(Applied::Skipped(format!(
                "this host's own {} entry stays",
                list.name()
            )));
        }
        let ttl = (expires != 0).then(|| Duration::from_secs(expires - now));
        self.list_add(list, cidr, ttl, Some(format!("fleet:{origin}")))?;
        Ok(Applied::Done)
    }

    /// Removes a list entry the fleet gave (this host's own entries stay).
    ///
    /// # Errors
    ///
    /// As [`Control::list_del`].
    pub fn fleet_list_del(&mut self, list: List, cidr: Cidr) -> Result<Applied, ControlError> {
        match self.list(list).get(&cidr) {
            Some(e)
                if e.record
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("fleet:")) =>
            {
                self.list_del(list, cidr)?;
                Ok(Applied::Done)
            }
            Some(_) => Ok(Applied::Skipped("this host's own entry stays".into())),
            None => Ok(Applied::Skipped("not listed here".into())),
        }
    }
}
