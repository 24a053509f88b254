//! Chain mode (`[datapath] chain`): the program goes into a slot of a program array another
//! XDP program (a root such as katran's `xdp_root`) tail-calls, instead of onto interfaces.
//!
//! The slot is the attachment: putting the new program in replaces the old one atomically
//! (one `BPF_MAP_UPDATE_ELEM`), so a restart or an upgrade has no gap. The program is also
//! pinned under `<pin_dir>/v<N>/chain/<index>@<array path>`, which is how `guard detach` and
//! the health check know which slot is ours and which program should be in it.
use std::{
    fs, io,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Map, MapData, ProgramArray},
    programs::{ProgramInfo, Xdp},
};

use super::{ChainSlot, LoadError, link::LinkState, versioned_dir};

/// The sub-directory of the versioned pin directory that holds the chain pins.
pub(super) const CHAIN_DIR: &str = "chain";

/// `BPF_MAP_LOOKUP_ELEM` from `<linux/bpf.h>`.
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;

/// How an attachment in chain mode is named (in `guard status` and the health report).
pub fn label(slot: &ChainSlot) -> String {
    format!("chain:{}[{}]", slot.prog_array.display(), slot.index)
}

/// The slot a `label` names, if it is a chain label.
pub fn parse_label(label: &str) -> Option<ChainSlot> {
    let rest = label.strip_prefix("chain:")?;
    let (path, index) = rest.strip_suffix(']')?.rsplit_once('[')?;
    Some(ChainSlot {
        prog_array: PathBuf::from(path),
        index: index.parse().ok()?,
    })
}

/// The pin file name of the program in `slot`: `<index>@<array path>`, with `/`, `.`, `%` and
/// `@` percent-encoded (bpffs refuses a dot, and a file name cannot hold a slash).
pub fn pin_name(slot: &ChainSlot) -> String {
    let mut name = format!("{}@", slot.index);
    for c in slot.prog_array.to_string_lossy().chars() {
        match c {
            '/' => name.push_str("%2F"),
            '.' => name.push_str("%2E"),
            '%' => name.push_str("%25"),
            '@' => name.push_str("%40"),
            c => name.push(c),
        }
    }
    name
}

/// The slot a pin file name holds (the inverse of `pin_name`).
pub fn parse_pin_name(name: &str) -> Option<ChainSlot> {
    let (index, encoded) = name.split_once('@')?;
    let mut path = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        path.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        path.push(char::from(u8::from_str_radix(code, 16).ok()?));
        rest = &rest[i + 3..];
    }
    path.push_str(rest);
    Some(ChainSlot {
        prog_array: PathBuf::from(path),
        index: index.parse().ok()?,
    })
}

/// The chain pins under `dir` (a versioned pin directory): (slot, pin path).
pub fn pins(dir: &Path) -> Vec<(ChainSlot, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir.join(CHAIN_DIR)) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| Some((parse_pin_name(e.file_name().to_str()?)?, e.path())))
        .collect()
}

fn open_array(slot: &ChainSlot) -> Result<ProgramArray<MapData>, String> {
    let data = MapData::from_pin(&slot.prog_array).map_err(|e| {
        format!(
            "cannot open the program array {}: {e} (is the root program loaded, and its array pinned there?)",
            slot.prog_array.display()
        )
    })?;
    ProgramArray::try_from(Map::ProgramArray(data))
        .map_err(|e| format!("{} is not a program array: {e}", slot.prog_array.display()))
}

/// Puts `program` into `slot` (replacing what was there in one update) and pins it under
/// `dir/chain/`, replacing the pin of the program it displaced.
///
/// # Errors
/// When the array cannot be opened, the kernel refuses the program in it (a root loaded with
/// other XDP flags, e.g. `xdp.frags`), or the pin cannot be written.
pub(super) fn insert(program: &mut Xdp, slot: &ChainSlot, dir: &Path) -> Result<(), LoadError> {
    let mut array = open_array(slot).map_err(LoadError::Link)?;
    let fd = program.fd().map_err(LoadError::Program)?;
    array.set(slot.index, fd, 0).map_err(|e| {
        LoadError::Link(format!(
            "putting the guard into {}: {e} (the kernel refuses a program whose type or XDP flags differ from the root's, or an index past the array's end)",
            label(slot)
        ))
    })?;
    let chain_dir = dir.join(CHAIN_DIR);
    fs::create_dir_all(&chain_dir).map_err(super::loader::io_err("create", &chain_dir))?;
    let pin = chain_dir.join(pin_name(slot));
    if pin.exists() {
        fs::remove_file(&pin).map_err(super::loader::io_err("remove", &pin))?;
    }
    program
        .pin(&pin)
        .map_err(|e| LoadError::Link(format!("pinning {}: {e}", pin.display())))
}

/// Takes our program out of `slot` (only if the slot still holds the program pinned at
/// `pin`: another program an operator put there is left alone) and removes the pin. Returns
/// whether the slot was cleared.
///
/// # Errors
/// When the pin cannot be removed.
pub(super) fn remove(slot: &ChainSlot, pin: &Path) -> Result<bool, LoadError> {
    let ours = ProgramInfo::from_pin(pin).ok().map(|i| i.id());
    let mut cleared = false;
    if ours.is_some()
        && slot_prog_id(slot).ok().flatten() == ours
        && let Ok(mut array) = open_array(slot)
    {
        cleared = array.clear_index(&slot.index).is_ok();
    }
    fs::remove_file(pin).map_err(super::loader::io_err("remove", pin))?;
    Ok(cleared)
}

/// The id of the program in `slot`; `None` if the slot is empty. (A program array's lookup
/// from userspace answers program ids; aya 0.14's `ProgramArray` has no `get`.)
pub fn slot_prog_id(slot: &ChainSlot) -> io::Result<Option<u32>> {
    let map = MapData::from_pin(&slot.prog_array).map_err(io::Error::other)?;
    let key = slot.index;
    let mut value = 0u32;
    // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd (u32, padded to 8), key, value (u64).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(map.fd().as_fd().as_raw_fd() as u32);
    attr[1] = &key as *const u32 as u64;
    attr[2] = &mut value as *mut u32 as u64;
    match super::link::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Is our program still in the slot `label` names? The health check's "attached" for chain
/// mode: the slot must hold the program pinned for it under `pin_dir`.
pub fn check(pin_dir: &Path, label: &str) -> LinkState {
    let Some(slot) = parse_label(label) else {
        return LinkState::no(format!("{label:?} is not a chain slot"));
    };
    let dir = versioned_dir(pin_dir);
    let Some((_, pin)) = pins(&dir).into_iter().find(|(s, _)| *s == slot) else {
        return LinkState::no(format!(
            "no pinned program for {label} under {}",
            dir.join(CHAIN_DIR).display()
        ));
    };
    let ours = match ProgramInfo::from_pin(&pin) {
        Ok(info) => info.id(),
        Err(e) => return LinkState::no(format!("cannot read {}: {e}", pin.display())),
    };
    match slot_prog_id(&slot) {
        Ok(Some(id)) if id == ours => LinkState {
            attached: true,
            detail: format!("program {id} in {label}"),
        },
        Ok(Some(id)) => LinkState::no(format!(
            "{label} holds program {id}, not the guard's ({ours})"
        )),
        Ok(None) => LinkState::no(format!("{label} is empty")),
        Err(e) => LinkState::no(format!("cannot read {label}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_pin_names_and_labels_round_trip() {
        for (path, index) in [
            ("/sys/fs/bpf/katran/root_array", 0),
            ("/sys/fs/bpf/a.b/x@y%z", 7),
        ] {
            let slot = ChainSlot {
                prog_array: PathBuf::from(path),
                index,
            };
            let name = pin_name(&slot);
            assert!(!name.contains(['/', '.']), "{name}");
            assert_eq!(parse_pin_name(&name), Some(slot.clone()));
            assert_eq!(parse_label(&label(&slot)), Some(slot));
        }
        assert_eq!(parse_label("eth0"), None);
        assert_eq!(parse_pin_name("x@%2F"), None);
    }

    #[test]
    fn a_chain_slot_without_a_pin_is_not_attached_and_says_where_it_looked() {
        let s = check(Path::new("/nonexistent/guard"), "chain:/sys/fs/bpf/x[0]");
        assert!(!s.attached);
        assert!(s.detail.contains("/nonexistent/guard/v"), "{}", s.detail);
    }
}
