//! SYN cookies at the NIC, userspace's part: the kfunc the TC stage calls is patched into the
//! object with its BTF id in the running kernel (aya 0.14 relocates no kfunc calls), and the
//! two stages (the tail-called XDP `guard_cookie`, the TC `guard_tc`) are loaded when the
//! kernel has what they need: the syncookie helpers (Linux 6.0) and `bpf_sk_assign_tcp_reqsk`
//! (Linux 6.11).
use std::borrow::Cow;

use aya::{
    Ebpf,
    maps::ProgramArray,
    programs::{SchedClassifier, Xdp},
};
use guard_common::{KFUNC_CALL_PLACEHOLDER, map_names};

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
