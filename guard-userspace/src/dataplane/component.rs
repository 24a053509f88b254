//! The guard as a component of libxdp's dispatcher (see `dispatcher`), tied to the pin
//! directory: joining (in place of a previous run's component, so an upgrade has no gap),
//! leaving, and the health check's "attached".
//!
//! The program is pinned as `<pin_dir>/v<N>/links/<iface>@dispatcher` besides the
//! dispatcher's own `prog<i>-prog` pin: that is how `guard detach` and the health check find
//! the guard's component. The component of a previous run is the one that uses the guard's
//! pinned maps (its `GUARD_CONFIG`).
use std::{fs, path::Path};

use aya::{
    maps::MapInfo,
    programs::{Extension, ProgramInfo},
};
use guard_common::map_names;

use super::{
    AttachMode, Attachment, KernelDatapath, LoadError,
    dispatcher::{self, Component, Ours},
    link::LinkState,
    link_pin_name,
    netlink::XdpMode,
};

/// The mode of a dispatcher component, in its pin's name and in `guard status`.
pub const MODE: &str = "dispatcher";

fn modes(mode: AttachMode) -> &'static [XdpMode] {
    match mode {
        AttachMode::Auto => &[XdpMode::Native, XdpMode::Generic],
        AttachMode::Native => &[XdpMode::Native],
        AttachMode::Generic => &[XdpMode::Generic],
    }
}

/// The id of the guard's pinned config map under `dir` (a versioned pin directory).
fn config_map_id(dir: &Path) -> Option<u32> {
    MapInfo::from_pin(dir.join("maps").join(map_names::CONFIG))
        .ok()
        .map(|m| m.id())
}

/// Whether a component is the guard's: it uses the guard's config map, or it is the program
/// pinned for the interface.
fn ours(config: Option<u32>, pinned: Option<u32>) -> impl Fn(&Component) -> bool {
    move |c: &Component| config.is_some_and(|id| c.map_ids.contains(&id)) || pinned == Some(c.id)
}

/// Puts the loaded guard into the dispatcher on `iface` (building one if it runs nothing),
/// replacing a previous run's component in the same swap, and pins the program for it.
///
/// # Errors
/// Why the guard cannot join there (see `dispatcher::change`), or the pin failed.
pub(super) fn join(
    datapath: &mut KernelDatapath,
    dir: &Path,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    priority: u32,
) -> Result<Attachment, LoadError> {
    let links = dir.join("links");
    let pin = links.join(link_pin_name(iface, MODE));
    let adopted = pin.exists();
    let pinned = ProgramInfo::from_pin(&pin).ok().map(|i| i.id());
    let is_ours = ours(config_map_id(dir), pinned);
    let err = |why: String| LoadError::Dispatcher {
        iface: iface.to_string(),
        why,
    };
    let ext: &mut Extension = datapath
        .ebpf
        .program_mut(map_names::EXT_PROGRAM)
        .ok_or(LoadError::Missing(map_names::EXT_PROGRAM))?
        .try_into()
        .map_err(LoadError::Program)?;
    let mut component = Ours {
        ext,
        name: map_names::EXT_PROGRAM,
        priority,
    };
    let joined = dispatcher::change(ifindex, Some(&mut component), &is_ours, modes(mode))
        .map_err(err)?
        .ok_or_else(|| err("the dispatcher came out empty".to_string()))?;
    fs::create_dir_all(&links).map_err(super::loader::io_err("create", &links))?;
    if pin.exists() {
        fs::remove_file(&pin).map_err(super::loader::io_err("remove", &pin))?;
    }
    component
        .ext
        .pin(&pin)
        .map_err(|e| LoadError::Link(format!("pinning {}: {e}", pin.display())))?;
    // A dispatcher of an interface that went away (this is a re-attach) holds the guard's
    // component still: its pins go.
    let config = config_map_id(dir);
    let ext_id = component.ext.info().ok().map(|i| i.id());
    for gone in dispatcher::sweep_stale(&|id, maps| {
        Some(id) == ext_id || config.is_some_and(|c| maps.contains(&c))
    }) {
        tracing::info!(
            "removed {}: the dispatcher of an interface that went away",
            gone.display()
        );
    }
    tracing::info!(
        "{iface}: in libxdp's dispatcher (program {}, {} mode), run order {}",
        joined.dispatcher,
        joined.mode.name(),
        joined.describe()
    );
    Ok(Attachment {
        iface: iface.to_string(),
        ifindex,
        mode: MODE.to_string(),
        adopted,
        reattached: 0,
    })
}

/// Takes the guard's component out of the dispatcher on `iface` (the dispatcher goes if
/// nothing else is left in it; the other programs keep running) and removes its pin. Returns
/// whether a component was taken out. An interface that is gone takes its dispatcher along.
///
/// # Errors
/// When the dispatcher cannot be rebuilt without the guard (the guard stays, and says why),
/// or the pin cannot be removed.
pub(super) fn leave(dir: &Path, iface: &str, pin: &Path) -> Result<bool, LoadError> {
    let pinned = ProgramInfo::from_pin(pin).ok().map(|i| i.id());
    let mut left = false;
    if let Some(ifindex) = super::kernel::if_index(iface) {
        let is_ours = ours(config_map_id(dir), pinned);
        let before = dispatcher::holds(ifindex, pinned.unwrap_or(0)).is_ok();
        dispatcher::change(ifindex, None, &is_ours, &[]).map_err(|why| LoadError::Dispatcher {
            iface: iface.to_string(),
            why: format!("leaving it: {why}"),
        })?;
        left = before;
    }
    fs::remove_file(pin).map_err(super::loader::io_err("remove", pin))?;
    Ok(left)
}

/// Is the guard in the dispatcher on `iface`? The health check's "attached".
pub fn check(pin_dir: &Path, iface: &str, pin: &Path) -> LinkState {
    let Some(ifindex) = super::kernel::if_index(iface) else {
        return LinkState::no(format!("interface {iface} does not exist"));
    };
    let id = match ProgramInfo::from_pin(pin) {
        Ok(info) => info.id(),
        Err(e) => return LinkState::no(format!("cannot read {}: {e}", pin.display())),
    };
    let _ = pin_dir;
    match dispatcher::holds(ifindex, id) {
        Ok(j) => LinkState {
            attached: true,
            detail: format!(
                "program {id} in libxdp's dispatcher {} on ifindex {ifindex} ({}), run order {}",
                j.dispatcher,
                j.mode.name(),
                j.describe()
            ),
        },
        Err(why) => LinkState::no(why),
    }
}
