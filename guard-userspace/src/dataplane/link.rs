//! Whether the XDP program is still attached where the daemon attached it, asked of the kernel
//! each health tick: the pinned link's info (`BPF_OBJ_GET_INFO_BY_FD`) names its interface.
//!
//! A link whose interface was deleted, or that someone detached (`bpftool link detach`), stays
//! pinned but reports interface 0; an interface deleted and made anew under the same name has
//! a new index. Either way the program no longer sees that interface's packets.
//!
//! Hand-written here: the two bpf(2) calls (`BPF_OBJ_GET`, `BPF_OBJ_GET_INFO_BY_FD`), because
//! aya 0.14's `LinkInfo` has no XDP ifindex and its `FdLink` does not lend its descriptor.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use crate::dataplane::versioned_dir;

/// `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD` from `<linux/bpf.h>`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_DETACH` (Linux 5.9).
const BPF_LINK_DETACH: libc::c_long = 34;
/// `BPF_LINK_TYPE_XDP` and `BPF_LINK_TYPE_TCX`.
const BPF_LINK_TYPE_XDP: u32 = 6;
const BPF_LINK_TYPE_TCX: u32 = 11;
/// `struct bpf_link_info`: `type`, `id`, `prog_id` (u32 each), then a union aligned to 8
/// bytes whose `xdp` member starts with `ifindex`.
const LINK_INFO_TYPE: usize = 0;
const LINK_INFO_XDP_IFINDEX: usize = 16;

/// The outcome of one check, with what was found for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub attached: bool,
    pub detail: String,
}

impl LinkState {
    pub(crate) fn no(detail: String) -> Self {
        Self {
            attached: false,
            detail,
        }
    }
}

/// The pin of `iface`'s link under `pin_dir` (`<pin_dir>/v<N>/links/<iface>@<mode>`).
pub fn link_pin(pin_dir: &Path, iface: &str) -> Option<PathBuf> {
    crate::dataplane::link_pins(&versioned_dir(pin_dir).join("links"))
        .into_iter()
        .find_map(|(i, _, path)| (i == iface).then_some(path))
}

/// Is the program attached to `iface` (in this network namespace) through its pinned link?
/// For a chain slot (`chain:<array>[<index>]`, chain mode), is it still in the slot?
pub fn check(pin_dir: &Path, iface: &str) -> LinkState {
    if iface.starts_with("chain:") {
        return super::chain::check(pin_dir, iface);
    }
    let Some(pin) = link_pin(pin_dir, iface) else {
        return LinkState::no(format!(
            "no pinned link for {iface} under {}",
            versioned_dir(pin_dir).join("links").display()
        ));
    };
    if crate::dataplane::parse_link_pin_name(&pin.file_name().unwrap_or_default().to_string_lossy())
        .is_some_and(|(_, mode)| mode == super::component::MODE)
    {
        return super::component::check(iface, &pin);
    }
    let Some(ifindex) = if_index(iface) else {
        return LinkState::no(format!("interface {iface} does not exist"));
    };
    match link_ifindex(&pin) {
        Ok(Some(0)) => LinkState::no(format!(
            "the link {} is detached (its interface went away or it was detached)",
            pin.display()
        )),
        Ok(Some(i)) if i == ifindex => LinkState {
            attached: true,
            detail: format!("link {} on ifindex {i}", pin.display()),
        },
        Ok(Some(i)) => LinkState::no(format!(
            "the link {} is on ifindex {i}, but {iface} is now ifindex {ifindex}",
            pin.display()
        )),
        Ok(None) => LinkState::no(format!("{} is not an XDP link", pin.display())),
        Err(e) => LinkState::no(format!("cannot read the link {}: {e}", pin.display())),
    }
}

/// What the attachment `label` is on now, for the daemon's one re-attachment per change: an
/// interface's index (None if it does not exist), or for a chain slot (`chain:...`) the id of
/// the program in it, 0 when it is empty.
pub fn target_now(label: &str) -> Option<u32> {
    match super::chain::parse_label(label) {
        Some(slot) => super::chain::slot_prog_id(&slot)
            .ok()
            .map(|id| id.unwrap_or(0)),
        None => if_index(label),
    }
}

/// The index of `iface` in this network namespace, if it exists.
pub fn if_index(iface: &str) -> Option<u32> {
    super::kernel::if_index(iface)
}

/// The interface index of the XDP link pinned at `pin`; `None` if it is another kind of link.
pub(crate) fn link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    link_ifindex_of(pin, BPF_LINK_TYPE_XDP)
}

/// The interface index of the tcx link (the TC stage's) pinned at `pin`; `None` if it is
/// another kind of link. (Its `tcx` member also starts with `ifindex`.)
pub(crate) fn tcx_link_ifindex(pin: &Path) -> io::Result<Option<u32>> {
    link_ifindex_of(pin, BPF_LINK_TYPE_TCX)
}

fn link_ifindex_of(pin: &Path, link_type: u32) -> io::Result<Option<u32>> {
    let fd = obj_get(pin)?;

    let mut info = [0u8; 256];
    // union bpf_attr for BPF_OBJ_GET_INFO_BY_FD: bpf_fd (u32), info_len (u32), info (u64).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32) | (info.len() as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |at: usize| u32::from_ne_bytes([info[at], info[at + 1], info[at + 2], info[at + 3]]);
    if word(LINK_INFO_TYPE) != link_type {
        return Ok(None);
    }
    Ok(Some(word(LINK_INFO_XDP_IFINDEX)))
}

/// Detaches the link pinned at `pin` now (`BPF_LINK_DETACH`) and removes the pin. Removing the
/// pin alone frees the link only later (after an RCU grace period and a work queue), so the
/// program would still be on the interface for a moment.
///
/// # Errors
/// When the pin cannot be opened or removed, or the kernel refuses the detach.
pub(crate) fn detach_pinned(pin: &Path) -> io::Result<()> {
    let fd = obj_get(pin)?;
    // union bpf_attr for BPF_LINK_DETACH: link_fd (u32).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(fd.as_raw_fd() as u32);
    bpf(BPF_LINK_DETACH, &mut attr)?;
    std::fs::remove_file(pin)
}

/// Opens the BPF object pinned at `pin` (`BPF_OBJ_GET`).
fn obj_get(pin: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(pin.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the pin path"))?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd, file_flags. The rest stays zero,
    // as the kernel requires of the bytes it does not use.
    let mut attr = [0u64; 16];
    attr[0] = path.as_ptr() as u64;
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The bpf(2) system call with an attribute block of 128 bytes.
pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<RawFd> {
    // SAFETY: `attr` is a valid, writable block of the size passed; the pointers inside it
    // (a path, an info buffer) are valid for the call's duration, as the callers ensure.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as RawFd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pin_is_not_attached_and_says_where_it_looked() {
        let s = check(Path::new("/nonexistent/guard"), "eth0");
        assert!(!s.attached);
        assert!(s.detail.contains("/nonexistent/guard/v"), "{}", s.detail);
    }

    #[test]
    fn a_pin_that_is_not_a_bpf_object_is_not_attached() {
        let dir = std::env::temp_dir().join(format!("guard-xdp-link-{}", std::process::id()));
        let links = versioned_dir(&dir).join("links");
        std::fs::create_dir_all(&links).unwrap();
        std::fs::write(links.join("lo@generic"), b"").unwrap();
        let s = check(&dir, "lo");
        assert!(!s.attached);
        assert!(s.detail.starts_with("cannot read the link"), "{}", s.detail);
        assert!(!check(&dir, "nosuchif0").attached);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
