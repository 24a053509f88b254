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

/// The guard's component, from the loaded object.
fn extension(datapath: &mut KernelDatapath) -> Result<&mut Extension, LoadError> {
    datapath
        .ebpf
        .program_mut(map_names::EXT_PROGRAM)
        .ok_or(LoadError::Missing(map_names::EXT_PROGRAM))?
        .try_into()
        .map_err(LoadError::Program)
}

/// Checks, before anything is changed, that the guard can go into a dispatcher here: libxdp's
/// object is installed and the kernel loads the guard's component (against a dispatcher of
/// its own, attached nowhere). Used before the guard leaves its own link for a dispatcher.
///
/// # Errors
/// Why it cannot.
pub(super) fn can_join(datapath: &mut KernelDatapath, iface: &str) -> Result<(), LoadError> {
    let ext = extension(datapath)?;
    if ext.fd().is_ok() {
        return Ok(());
    }
    dispatcher::probe(ext).map_err(|why| LoadError::Dispatcher {
        iface: iface.to_string(),
        why,
    })
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
    let pinned = ProgramInfo::from_pin(&pin).ok().map(|i| i.id());
    let config = config_map_id(dir);
    let is_ours = ours(config, pinned);
    let err = |why: String| LoadError::Dispatcher {
        iface: iface.to_string(),
        why,
    };
    let mut component = Ours {
        ext: extension(datapath)?,
        name: map_names::EXT_PROGRAM,
        priority,
    };
    let joined = dispatcher::change(ifindex, Some(&mut component), &is_ours, modes(mode))
        .map_err(err)?
        .ok_or_else(|| err("the dispatcher came out empty".to_string()))?;
    if mode != AttachMode::Auto && modes(mode) != [joined.mode] {
        tracing::warn!(
            "{iface}: the dispatcher the guard joined runs in {} mode, not the {} mode asked for ([datapath] mode): a dispatcher runs all its programs in one mode",
            joined.mode.name(),
            modes(mode)[0].name()
        );
    }
    // The new pin first, under another name, then moved over the old one: there is no moment
    // without a pin that names the guard's component.
    fs::create_dir_all(&links).map_err(super::loader::io_err("create", &links))?;
    // (No `@` in it: `link_pins` never takes it for an attachment.)
    let fresh = links.join(format!(
        "new-{}",
        link_pin_name(iface, MODE).replace('@', "%40")
    ));
    let _ = fs::remove_file(&fresh);
    component
        .ext
        .pin(&fresh)
        .map_err(|e| LoadError::Link(format!("pinning {}: {e}", fresh.display())))?;
    fs::rename(&fresh, &pin).map_err(super::loader::io_err("rename", &fresh))?;
    // A dispatcher of an interface that went away (this is a re-attach) holds the guard's
    // component still: its pins go.
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
        adopted: joined.replaced,
        reattached: 0,
    })
}

/// The other programs in the dispatcher on `iface` besides the guard's component pinned at
/// `pin`: what would keep the interface from the guard's own link.
pub(super) fn others(dir: &Path, iface: &str, pin: &Path) -> Vec<String> {
    let Some(ifindex) = super::kernel::if_index(iface) else {
        return Vec::new();
    };
    let is_ours = ours(
        config_map_id(dir),
        ProgramInfo::from_pin(pin).ok().map(|i| i.id()),
    );
    match dispatcher::read(ifindex) {
        Ok(dispatcher::OnIface::Dispatcher(d)) => d
            .components
            .iter()
            .filter(|c| !is_ours(c))
            .map(|c| format!("{} ({})", c.name, c.id))
            .collect(),
        _ => Vec::new(),
    }
}

/// Takes the guard's component out of the dispatcher on `iface` (the dispatcher goes if
/// nothing else is left in it; the other programs keep running) and removes its pin. Returns
/// whether a component was taken out. Where the interface is gone, or runs no dispatcher the
/// guard is in, only the pins go (and those of the gone interface's dispatcher).
///
/// # Errors
/// When the dispatcher cannot be rebuilt without the guard (the guard stays, and says why),
/// or the pin cannot be removed.
pub(super) fn leave(dir: &Path, iface: &str, pin: &Path) -> Result<bool, LoadError> {
    let pinned = ProgramInfo::from_pin(pin).ok().map(|i| i.id());
    let config = config_map_id(dir);
    let is_ours = ours(config, pinned);
    let mut left = false;
    if let Some(ifindex) = super::kernel::if_index(iface) {
        match dispatcher::read(ifindex) {
            Ok(dispatcher::OnIface::Dispatcher(d)) => {
                left = d.components.iter().any(&is_ours);
                dispatcher::change(ifindex, None, &is_ours, &[]).map_err(|why| {
                    LoadError::Link(format!(
                        "{iface}: taking the guard out of libxdp's dispatcher: {why}; the guard stays there"
                    ))
                })?;
            }
            Ok(_) => tracing::warn!(
                "{iface}: runs no libxdp dispatcher the guard could be in; removing its pin only"
            ),
            Err(why) => tracing::warn!("{iface}: {why}; removing the guard's pin only"),
        }
    }
    for gone in dispatcher::sweep_stale(&|id, maps| {
        Some(id) == pinned || config.is_some_and(|c| maps.contains(&c))
    }) {
        tracing::info!(
            "removed {}: the dispatcher of an interface that went away",
            gone.display()
        );
    }
    fs::remove_file(pin).map_err(super::loader::io_err("remove", pin))?;
    Ok(left)
}

/// Is the guard in the dispatcher on `iface`? The health check's "attached".
pub fn check(iface: &str, pin: &Path) -> LinkState {
    let Some(ifindex) = super::kernel::if_index(iface) else {
        return LinkState::no(format!("interface {iface} does not exist"));
    };
    let id = match ProgramInfo::from_pin(pin) {
        Ok(info) => info.id(),
        Err(e) => return LinkState::no(format!("cannot read {}: {e}", pin.display())),
    };
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
