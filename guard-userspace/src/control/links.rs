//! The attachments after start: an interface deleted and made anew under its name (a new
//! index) has lost the program, and is attached again from the tick.
use super::*;

impl<D: Datapath> Control<D> {
    /// Attaches the program again to attachment `i`'s interface and records its new index.
    ///
    /// # Errors
    ///
    /// Why the data plane could not, for the log; the attachment stays as it was.
    pub fn reattach(&mut self, i: usize) -> Result<Attachment, String> {
        let a = self
            .attachments
            .get(i)
            .ok_or_else(|| format!("no attachment {i}"))?;
        let (ifindex, mode) = self.dp.reattach(
            &self.settings.datapath.pin_dir,
            &a.iface,
            self.settings.datapath.mode,
        )?;
        let a = &mut self.attachments[i];
        a.ifindex = ifindex;
        a.mode = mode.to_string();
        a.adopted = false;
        a.reattached += 1;
        Ok(a.clone())
    }
}
