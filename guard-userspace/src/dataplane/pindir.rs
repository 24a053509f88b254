//! The pin directory's guards at start: one daemon per pin directory (an exclusive `flock` on
//! the directory itself, held for the daemon's life), and whether its bpffs is the host's.
//!
//! bpffs holds no regular files (it has no `create` operation: only directories and pins), so
//! the lock is taken on the directory's own descriptor, which any file system allows; the
//! holder's pid comes from `/proc/locks`. A lock file beside the state directory would bind
//! the daemons that share a state directory, not the ones that share pins, which is what two
//! daemons fight over (one deletes the other's entries as stale).
use std::{
    fs::File,
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use super::LoadError;

/// The pin directory, locked for this process's life: dropped (or the process gone), the next
/// daemon may take it.
#[derive(Debug)]
pub struct PinDirLock {
    _dir: File,
    pub path: PathBuf,
}

/// Creates the pin directory if need be and takes its lock without waiting.
///
/// # Errors
///
/// [`LoadError::Locked`] naming the holder's pid when another process holds it; an I/O error
/// when the directory cannot be made or opened.
pub fn lock_pin_dir(pin_dir: &Path) -> Result<PinDirLock, LoadError> {
    std::fs::create_dir_all(pin_dir).map_err(super::loader::io_err("create", pin_dir))?;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(pin_dir)
        .map_err(super::loader::io_err("open", pin_dir))?;
    // SAFETY: flock on a descriptor we own; it has no memory effects.
    let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holder = dir.metadata().ok().and_then(|m| {
                let locks = std::fs::read_to_string("/proc/locks").ok()?;
                flock_holder(&locks, m.dev(), m.ino())
            });
            return Err(LoadError::Locked {
                pin_dir: pin_dir.to_path_buf(),
                holder,
            });
        }
        return Err(LoadError::Io {
            op: "lock",
            path: pin_dir.to_path_buf(),
            source: e,
        });
    }
    Ok(PinDirLock {
        _dir: dir,
        path: pin_dir.to_path_buf(),
    })
}

/// The pid holding an exclusive `flock` on the inode `(dev, ino)`, from `/proc/locks` lines
/// such as `1: FLOCK  ADVISORY  WRITE 4242 00:1f:12345 0 EOF` (device as `major:minor` in hex,
/// inode in decimal; see proc(5)). Lines of waiters (`->`) are skipped.
pub fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (kind, pid, id) = (f.get(1)?, f.get(4)?, f.get(5)?);
        if *kind != "FLOCK" {
            return None;
        }
        let mut parts = id.split(':');
        let maj = u32::from_str_radix(parts.next()?, 16).ok()?;
        let min = u32::from_str_radix(parts.next()?, 16).ok()?;
        let i: u64 = parts.next()?.parse().ok()?;
        (maj == major && min == minor && i == ino)
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// Whether the pins under a directory outlive this process's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BpffsScope {
    /// pid 1 sees the same directory: the host's bpffs (or one shared with it).
    Host,
    /// pid 1 does not see it: a bpffs of this mount namespace alone, whose pins (and so the
    /// program and its maps) go when the namespace's last process does.
    Private(String),
    /// pid 1's view cannot be read (no access to `/proc/1/root`).
    Unknown(String),
}

/// Compares `pin_dir` here with `pin_dir` as pid 1 sees it (`/proc/1/root/<pin_dir>`): the same
/// device and inode means one bpffs, which outlives us. A mount-namespace comparison would not
/// do: systemd's sandboxing gives the unit a namespace of its own over the host's bpffs.
///
/// Where pid 1's view is closed to us (a sandbox's init of another user), a bpffs this daemon
/// had to mount itself (`mounted_here`) counts as private: nothing shows the host sees it, and
/// the usual cause is a mount namespace of the daemon's own (`ip netns exec`). One that was
/// there already is `Unknown`.
pub fn bpffs_scope(pin_dir: &Path, mounted_here: bool) -> BpffsScope {
    let here = match std::fs::metadata(pin_dir) {
        Ok(m) => m,
        Err(e) => return BpffsScope::Unknown(format!("{}: {e}", pin_dir.display())),
    };
    let rel = pin_dir.strip_prefix("/").unwrap_or(pin_dir);
    let init_view = Path::new("/proc/1/root").join(rel);
    match std::fs::metadata(&init_view) {
        Ok(m) if m.dev() == here.dev() && m.ino() == here.ino() => BpffsScope::Host,
        Ok(_) => BpffsScope::Private(format!(
            "{} is another directory for pid 1 (its /sys/fs/bpf is another bpffs)",
            pin_dir.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => BpffsScope::Private(format!(
            "pid 1 does not see {} (this mount namespace has a bpffs of its own)",
            pin_dir.display()
        )),
        Err(e) if mounted_here => BpffsScope::Private(format!(
            "this daemon mounted the bpffs at {} itself, and pid 1's view ({}: {e}) cannot show that the host sees it",
            super::BPFFS,
            init_view.display()
        )),
        Err(e) => BpffsScope::Unknown(format!("{}: {e}", init_view.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let dev = libc::makedev(0, 0x1f);
        let locks = "1: POSIX  ADVISORY  WRITE 11 00:1f:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:1f:77 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 00:1f:77 0 EOF\n";
        assert_eq!(flock_holder(locks, dev, 77), Some(4242));
        assert_eq!(flock_holder(locks, dev, 78), None);
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_with_the_holders_pid() {
        let dir = std::env::temp_dir().join(format!("guard-pinlock-{}", std::process::id()));
        let first = lock_pin_dir(&dir).unwrap();
        match lock_pin_dir(&dir) {
            Err(LoadError::Locked { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        drop(lock_pin_dir(&dir).unwrap());
        let _ = std::fs::remove_dir(&dir);
    }
}
