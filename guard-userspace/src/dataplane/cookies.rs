//! SYN cookies at the NIC, userspace's part: the kfunc the TC stage calls is patched into the
//! object with its BTF id in the running kernel (aya 0.14 relocates no kfunc calls), and the
//! two stages (the tail-called XDP `guard_cookie`, the TC `guard_tc`) are loaded when the
//! kernel has what they need: the syncookie helpers (Linux 6.0) and `bpf_sk_assign_tcp_reqsk`
//! (Linux 6.11).
use std::{
    borrow::Cow,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use guard_common::{KFUNC_CALL_PLACEHOLDER, map_names};

use super::pins::{link_pin_name, link_pins};

/// The kfunc the TC stage calls.
const KFUNC: &str = "bpf_sk_assign_tcp_reqsk";

/// The object with the TC stage's kfunc call pointed at `bpf_sk_assign_tcp_reqsk` in the
/// running kernel, and whether that worked (why not: no such kfunc, no kernel BTF). The
/// object comes back unchanged when it does not.
pub fn patch_kfunc(object: &[u8]) -> (Cow<'_, [u8]>, Result<(), String>) {
    let id = match aya::Btf::from_sys_fs() {
        Ok(btf) => match btf.id_by_type_name_kind(KFUNC, aya_obj::btf::BtfKind::Func) {
            Ok(id) => id,
            Err(_) => {
                return (
                    Cow::Borrowed(object),
                    Err(format!("the kernel has no {KFUNC} (Linux 6.11)")),
                );
            }
        },
        Err(e) => {
            return (
                Cow::Borrowed(object),
                Err(format!(
                    "the kernel's BTF (/sys/kernel/btf/vmlinux) is unreadable: {e}"
                )),
            );
        }
    };
    let (patched, n) = patch(object, id);
    if n == 0 {
        return (
            Cow::Borrowed(object),
            Err("the object has no kfunc call to patch (built without the TC stage)".into()),
        );
    }
    (Cow::Owned(patched), Ok(()))
}

/// Replaces the id of every placeholder kfunc call (8-byte aligned instructions) with `id`;
/// returns the object and how many it patched.
fn patch(object: &[u8], id: u32) -> (Vec<u8>, usize) {
    let mut out = object.to_vec();
    let mut n = 0;
    let mut i = 0;
    while i + 8 <= out.len() {
        if out[i..i + 8] == KFUNC_CALL_PLACEHOLDER {
            out[i + 4..i + 8].copy_from_slice(&id.to_le_bytes());
            n += 1;
            i += 8;
        } else {
            i += 1;
        }
    }
    (out, n)
}

/// Loads the two stages and puts the XDP one into the program's `GUARD_COOKIE` array.
/// `kfunc` is what [`patch_kfunc`] found. `Err` says why cookies are unavailable: the
/// program then runs without them, and cookie services pass their SYNs to the kernel.
pub fn load_stages(ebpf: &mut Ebpf, kfunc: Result<(), String>) -> Result<(), String> {
    kfunc?;
    let stage: &mut Xdp = ebpf
        .program_mut(map_names::COOKIE_PROGRAM)
        .ok_or("the object has no cookie stage")?
        .try_into()
        .map_err(|e| format!("the cookie stage: {e}"))?;
    stage.load().map_err(|e| {
        format!("the kernel refused the cookie stage (syncookie helpers: Linux 6.0): {e}")
    })?;
    let fd = stage
        .fd()
        .map_err(|e| format!("the cookie stage: {e}"))?
        .try_clone()
        .map_err(|e| format!("the cookie stage's fd: {e}"))?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(map_names::TC_PROGRAM)
        .ok_or("the object has no TC stage")?
        .try_into()
        .map_err(|e| format!("the TC stage: {e}"))?;
    tc.load()
        .map_err(|e| format!("the kernel refused the TC stage ({KFUNC}: Linux 6.11): {e}"))?;
    let map = ebpf
        .map_mut(map_names::COOKIE_PROGS)
        .ok_or("the object has no cookie program array")?;
    let mut progs = ProgramArray::try_from(map).map_err(|e| format!("{e}"))?;
    progs
        .set(0, &fd, 0)
        .map_err(|e| format!("putting the cookie stage in its array: {e}"))?;
    Ok(())
}

/// Attaches the TC stage at ingress of each `(interface, ifindex)` through a tcx link pinned
/// under `dir` (so it survives the daemon, like the XDP links), adopting a previous run's link
/// on the same interface by swapping the new program in (`BPF_LINK_UPDATE`: no gap). Links
/// pinned for other interfaces are removed. `Err` names the interface that failed; SYN
/// cookies are then not used (the XDP stage alone would answer SYNs whose ACKs no listener
/// takes).
pub fn attach_tc(ebpf: &mut Ebpf, ifaces: &[(String, u32)], dir: &Path) -> Result<(), String> {
    for (iface, ifindex) in ifaces {
        attach_tc_on(ebpf, iface, *ifindex, dir)?;
    }
    for (iface, _, path) in &link_pins(dir) {
        if !ifaces.iter().any(|(i, _)| i == iface) {
            fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Attaches the TC stage at ingress of `iface` (index `ifindex`), adopting the link pinned for
/// it under `dir` if that link is still on this interface, else replacing it.
pub fn attach_tc_on(ebpf: &mut Ebpf, iface: &str, ifindex: u32, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let tc: &mut SchedClassifier = ebpf
        .program_mut(map_names::TC_PROGRAM)
        .ok_or("the object has no TC stage")?
        .try_into()
        .map_err(|e| format!("the TC stage: {e}"))?;
    if let Some((_, _, path)) = link_pins(dir).into_iter().find(|(i, _, _)| i == iface) {
        let adopted = match super::link::tcx_link_ifindex(&path) {
            Ok(Some(i)) if i == ifindex => PinnedLink::from_pin(&path)
                .map_err(|e| e.to_string())
                .and_then(|pl| {
                    SchedClassifierLink::try_from(FdLink::from(pl)).map_err(|e| e.to_string())
                })
                .and_then(|link| tc.attach_to_link(link).map_err(|e| e.to_string())),
            Ok(_) => Err(format!("it is no longer on {iface} (ifindex {ifindex})")),
            Err(e) => Err(e.to_string()),
        };
        match adopted {
            Ok(_) => return Ok(()),
            Err(why) => {
                tracing::info!(
                    "not adopting the TC stage's link {} ({why}); attaching afresh",
                    path.display()
                );
                fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
            }
        }
    }
    let id = tc
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| format!("{iface}: attaching the TC stage (tcx ingress): {e}"))?;
    let link = tc
        .take_link(id)
        .map_err(|e| format!("{iface}: the TC stage's link: {e}"))?;
    let fd: FdLink = link
        .try_into()
        .map_err(|e| format!("{iface}: the TC stage's link is no BPF link: {e}"))?;
    let path = dir.join(link_pin_name(iface, "tcx"));
    fd.pin(&path)
        .map_err(|e| format!("pinning {}: {e}", path.display()))?;
    Ok(())
}

/// The kernel's SYN-cookie switch (per network namespace). The kernel takes the connection the
/// TC stage hands over only when it is 1 or 2 (`cookie_v4_check` returns at once on 0).
pub const SYNCOOKIES_SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";

/// Where the value the guard replaced is kept until `guard detach` (or a config without
/// cookies) restores it: under /run, which a reboot empties as it resets the sysctl, one file
/// per pin directory (one guard) and network namespace.
fn saved_syncookies(pin_dir: &Path) -> PathBuf {
    let ns = fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|l| {
            let l = l.to_string_lossy().into_owned();
            l.trim_start_matches("net:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    let guard = pin_dir
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "_");
    PathBuf::from(format!("/run/guard/tcp_syncookies.{guard}.{ns}"))
}

fn read_syncookies() -> Result<u8, String> {
    let text = fs::read_to_string(SYNCOOKIES_SYSCTL)
        .map_err(|e| format!("reading {SYNCOOKIES_SYSCTL}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{SYNCOOKIES_SYSCTL} holds {:?}", text.trim()))
}

/// `net.ipv4.tcp_syncookies` as it is, and the value the guard replaced if it changed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SyncookiesSysctl {
    pub value: Option<u8>,
    pub replaced: Option<u8>,
}

pub fn syncookies_sysctl(pin_dir: &Path) -> SyncookiesSysctl {
    SyncookiesSysctl {
        value: read_syncookies().ok(),
        replaced: fs::read_to_string(saved_syncookies(pin_dir))
            .ok()
            .and_then(|t| t.trim().parse().ok()),
    }
}

/// Sets `net.ipv4.tcp_syncookies` to 1 if it is 0 (a service sends cookies), keeping the old
/// value to restore. Returns the value it replaced, if it did.
pub fn enable_syncookies(pin_dir: &Path) -> Result<Option<u8>, String> {
    let now = read_syncookies()?;
    if now != 0 {
        return Ok(None);
    }
    let saved = saved_syncookies(pin_dir);
    if let Some(dir) = saved.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // The value is kept first, so that a crash between the two never loses it.
    if !saved.exists() {
        fs::write(&saved, format!("{now}\n"))
            .map_err(|e| format!("writing {}: {e}", saved.display()))?;
    }
    fs::write(SYNCOOKIES_SYSCTL, "1\n")
        .map_err(|e| format!("setting {SYNCOOKIES_SYSCTL} to 1: {e}"))?;
    Ok(Some(now))
}

/// Puts back the `net.ipv4.tcp_syncookies` the guard replaced, if it replaced one. Returns
/// the value restored.
pub fn restore_syncookies(pin_dir: &Path) -> Result<Option<u8>, String> {
    let saved = saved_syncookies(pin_dir);
    let Ok(text) = fs::read_to_string(&saved) else {
        return Ok(None);
    };
    let old: u8 = text
        .trim()
        .parse()
        .map_err(|_| format!("{} holds {:?}", saved.display(), text.trim()))?;
    fs::write(SYNCOOKIES_SYSCTL, format!("{old}\n"))
        .map_err(|e| format!("restoring {SYNCOOKIES_SYSCTL} to {old}: {e}"))?;
    fs::remove_file(&saved).map_err(|e| format!("removing {}: {e}", saved.display()))?;
    if let Some(dir) = saved.parent() {
        // Only if nothing else lives there (the control socket does, under systemd).
        let _ = fs::remove_dir(dir);
    }
    Ok(Some(old))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_call_gets_the_id_and_nothing_else_changes() {
        let mut obj = vec![0u8; 64];
        obj[8..16].copy_from_slice(&KFUNC_CALL_PLACEHOLDER);
        obj[40..48].copy_from_slice(&KFUNC_CALL_PLACEHOLDER);
        obj[20] = 0x85;
        let (out, n) = patch(&obj, 0x0102_0304);
        assert_eq!(n, 2);
        assert_eq!(&out[8..16], &[0x85, 0x20, 0, 0, 4, 3, 2, 1]);
        assert_eq!(&out[40..48], &[0x85, 0x20, 0, 0, 4, 3, 2, 1]);
        let mut rest = out.clone();
        rest[8..16].copy_from_slice(&[0; 8]);
        rest[40..48].copy_from_slice(&[0; 8]);
        rest[20] = 0;
        assert_eq!(rest, vec![0u8; 64]);
    }
}
