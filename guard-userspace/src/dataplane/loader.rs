//! Loading the embedded XDP object, attaching it (native, falling back to generic), pinning it
//! so protection survives the daemon, adopting a previous run's pins, and detaching for good.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{MapType, ProgramArray},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use aya_obj::programs::XdpAttachType;
use guard_common::{
    Ban, Config, Counters, CpuState, Known, LAYOUT_VERSION, ListEntry, PROGRAM_NAME, PrefixState,
    Service, ServiceStats, SourceState, capacity, map_names,
};

use super::{KernelDatapath, component, kernel::*, pins::*, types::*};

/// Whether `iface` (index `ifindex`) gets the guard through libxdp's dispatcher: as asked, or
/// for `auto` the way a previous run attached it (`previous`: its pin's mode), else into the
/// dispatcher the interface runs, else directly (where an interface running another program
/// is refused).
fn through_dispatcher(placement: Placement, previous: Option<&str>, ifindex: u32) -> bool {
    match placement {
        Placement::Direct => false,
        Placement::Dispatcher => true,
        Placement::Auto => match previous {
            Some(mode) => mode == component::MODE,
            // A dispatcher the guard cannot join (another version) goes that way too, to be
            // refused with the reason.
            None => matches!(
                super::dispatcher::read(ifindex),
                Ok(super::dispatcher::OnIface::Dispatcher(_)
                    | super::dispatcher::OnIface::Unusable { .. })
            ),
        },
    }
}

/// The compiled guard-ebpf object, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard.bpf.o"));

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf unless something is mounted there already. True if it did.
///
/// # Errors
/// When the mount fails (not root, or no bpffs in this kernel).
pub fn ensure_bpffs() -> Result<bool, LoadError> {
    let mounts = procfs::mounts().map_err(|e| LoadError::Io {
        op: "read",
        path: "/proc/self/mounts".into(),
        source: io::Error::other(e),
    })?;
    if mounts
        .iter()
        .any(|m| m.fs_file == BPFFS && m.fs_vfstype == "bpf")
    {
        return Ok(false);
    }
    fs::create_dir_all(BPFFS).map_err(LoadError::Mount)?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map(|()| true)
    .map_err(|e| LoadError::Mount(e.into()))
}

/// `BPF_F_MMAPABLE`, the seen filter's map flag.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// What each map must look like to be reused: type, key size, value size, capacity.
pub(super) fn expected_layout(name: &str) -> Option<(MapType, u32, u32, u32)> {
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    let trie = |v4: bool, cap| {
        (
            MapType::LpmTrie,
            if v4 { 8 } else { 20 },
            sz(size_of::<ListEntry>()),
            cap,
        )
    };
    Some(match name {
        map_names::CONFIG => (MapType::Array, 4, sz(size_of::<Config>()), 2),
        map_names::CONFIG_SLOT => (MapType::Array, 4, 4, 1),
        map_names::STATS => (
            MapType::PerCpuArray,
            4,
            sz(size_of::<Counters>()),
            capacity::STATS_SLOTS,
        ),
        map_names::ALLOW_V4 => trie(true, capacity::ALLOW_V4),
        map_names::ALLOW_V6 => trie(false, capacity::ALLOW_V6),
        map_names::DENY_V4 => trie(true, capacity::DENY_V4),
        map_names::DENY_V6 => trie(false, capacity::DENY_V6),
        map_names::PREFIX_BANS_V4 => trie(true, capacity::PREFIX_BANS_V4),
        map_names::PREFIX_BANS_V6 => trie(false, capacity::PREFIX_BANS_V6),
        map_names::SOURCES => (
            MapType::LruHash,
            16,
            sz(size_of::<SourceState>()),
            capacity::SOURCES,
        ),
        map_names::BANS => (MapType::Hash, 16, sz(size_of::<Ban>()), capacity::BANS),
        map_names::EVENTS => (MapType::RingBuf, 0, 0, capacity::EVENTS),
        map_names::KNOWN => (MapType::Hash, 16, sz(size_of::<Known>()), capacity::KNOWN),
        map_names::PREFIXES => (
            MapType::LruHash,
            16,
            sz(size_of::<PrefixState>()),
            capacity::PREFIXES,
        ),
        map_names::SERVICE_PORTS => (MapType::Array, 4, 4, capacity::SERVICE_PORTS),
        map_names::SERVICES => (
            MapType::Array,
            4,
            sz(size_of::<Service>()),
            capacity::SERVICES,
        ),
        map_names::SERVICE_STATS => (
            MapType::PerCpuArray,
            4,
            sz(size_of::<ServiceStats>()),
            capacity::SERVICES,
        ),
        map_names::CPU_STATE => (MapType::PerCpuArray, 4, sz(size_of::<CpuState>()), 1),
        map_names::COOKIE_PROGS => (MapType::ProgramArray, 4, 4, 1),
        map_names::SEEN => (MapType::Array, 4, 8, capacity::SEEN),
        map_names::NEXT_PROGS => (MapType::ProgramArray, 4, 4, 1),
        _ => return None,
    })
}

/// True if every pinned map under `dir` matches the layout this binary expects.
pub(super) fn pins_compatible(dir: &Path) -> Result<bool, String> {
    for name in map_names::ALL {
        let path = dir.join("maps").join(name);
        if !path.exists() {
            continue;
        }
        let info =
            aya::maps::MapInfo::from_pin(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let Some((ty, k, v, max)) = expected_layout(name) else {
            return Ok(false);
        };
        let same = info.map_type().ok() == Some(ty)
            && info.key_size() == k
            && info.value_size() == v
            && info.max_entries() == max
            // The seen filter is memory-mapped: a pin without the flag cannot be.
            && (name != map_names::SEEN || info.map_flags() & BPF_F_MMAPABLE != 0);
        if !same {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LoadError + use<> {
    let path = path.to_path_buf();
    move |source| LoadError::Io { op, path, source }
}

/// Loads the program. With `pin_dir`, each map is adopted from `<dir>/maps/<NAME>` if pinned
/// there (keeping its contents) and pinned there if not.
///
/// # Errors
/// When the object is missing, or the kernel refuses a map or the program.
pub fn load(pin_dir: Option<&Path>) -> Result<KernelDatapath, LoadError> {
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = match pin_dir {
        Some(dir) => map_names::ALL
            .iter()
            .map(|n| (*n, dir.join("maps").join(n)))
            .collect(),
        None => Vec::new(),
    };
    if let Some(dir) = pin_dir {
        let maps = dir.join("maps");
        fs::create_dir_all(&maps).map_err(io_err("create", &maps))?;
    }
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    // The level of the program's own log lines (aya-log), fixed at load time; harmless when
    // the object has no such global.
    let level = super::events::ebpf_log_level();
    loader.override_global(aya_log::LEVEL, &level, false);
    // The dispatcher component: an freplace program, loaded only in dispatcher mode.
    loader.extension(guard_common::map_names::EXT_PROGRAM);
    let (object, kfunc) = super::cookies::patch_kfunc(OBJECT);
    let mut ebpf = loader.load(&object).map_err(LoadError::Load)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoadError::Missing("program"))?
        .try_into()
        .map_err(LoadError::Program)?;
    program.load().map_err(LoadError::Program)?;
    let cookies = super::cookies::load_stages(&mut ebpf, kfunc);
    match &cookies {
        Ok(()) => tracing::debug!("SYN cookies at the NIC: available"),
        Err(why) => tracing::info!("SYN cookies at the NIC are unavailable: {why}"),
    }
    let mut dp = KernelDatapath::new(ebpf)?;
    dp.cookies = cookies;
    Ok(dp)
}

/// Whether this kernel can run the guard in libxdp's dispatcher: loads the program (unpinned)
/// and its dispatcher component against a dispatcher, attaching nothing.
///
/// # Errors
/// Why not: no dispatcher object installed, or the kernel refuses freplace programs.
pub fn dispatcher_support() -> Result<(), String> {
    let mut datapath = load(None).map_err(|e| crate::rpc::error_chain(&e))?;
    let ext: &mut aya::programs::Extension = datapath
        .ebpf
        .program_mut(guard_common::map_names::EXT_PROGRAM)
        .ok_or_else(|| format!("the object has no {}", guard_common::map_names::EXT_PROGRAM))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    super::dispatcher::probe(ext)
}

/// Loads (or adopts) the program and maps and attaches to every interface.
///
/// Pinned state of a previous run is adopted when its layout matches: the maps (lists, bans,
/// counters) are reused and each pinned link gets the new program atomically
/// (`BPF_LINK_UPDATE`), so protection never lapses. Incompatible pins are removed first.
/// Links pinned for interfaces no longer configured are removed (detached).
///
/// # Errors
/// When bpffs cannot be mounted, the program cannot be loaded, or an interface cannot be
/// attached in the requested mode.
pub fn start(opts: &StartOptions) -> Result<Loaded, LoadError> {
    ensure_bpffs()?;
    let dir = versioned_dir(&opts.pin_dir);
    match pins_compatible(&dir) {
        Ok(true) => {}
        Ok(false) | Err(_) => {
            tracing::warn!(
                "pinned state under {} does not match this version's layout; replacing it",
                dir.display()
            );
            remove_pins(&dir)?;
        }
    }
    let mut datapath = load(Some(&dir))?;
    set_next(&mut datapath, opts.next.as_deref())?;
    let links_dir = dir.join("links");
    fs::create_dir_all(&links_dir).map_err(io_err("create", &links_dir))?;
    migrate_older_layouts(&opts.pin_dir, &links_dir)?;
    let pinned = link_pins(&links_dir);
    let mut attachments = Vec::new();
    // Chain mode: into the slot (swapping out the previous run's program in one update),
    // and onto no interface. A slot a previous run used that is no longer configured is
    // cleared (if it still holds our program).
    let chain_pins = super::chain::pins(&dir);
    if let Some(slot) = &opts.chain {
        let adopted = chain_pins.iter().any(|(s, _)| s == slot);
        super::chain::insert(datapath.program_mut()?, slot, &dir)?;
        attachments.push(Attachment {
            iface: super::chain::label(slot),
            ifindex: 0,
            mode: "chain".to_string(),
            adopted,
            reattached: 0,
        });
    }
    for (slot, pin) in &chain_pins {
        if opts.chain.as_ref() != Some(slot) {
            tracing::info!(
                "{}: no longer configured; clearing it",
                super::chain::label(slot)
            );
            super::chain::remove(slot, pin)?;
        }
    }
    let interfaces: &[String] = if opts.chain.is_some() {
        &[]
    } else {
        &opts.interfaces
    };
    datapath.priority = opts.priority;
    for iface in interfaces {
        let ifindex = if_index(iface).ok_or_else(|| LoadError::NoInterface {
            iface: iface.clone(),
        })?;
        let previous = pinned.iter().find(|(i, _, _)| i == iface);
        let was_component = previous.is_some_and(|(_, m, _)| m == component::MODE);
        if through_dispatcher(
            opts.placement,
            previous.map(|(_, m, _)| m.as_str()),
            ifindex,
        ) {
            if let Some(next) = &opts.next {
                return Err(LoadError::Dispatcher {
                    iface: iface.clone(),
                    why: format!(
                        "datapath.next ({}) is set, but in libxdp's dispatcher the guard cannot tail-call it (the dispatcher runs the programs after the guard: load the next program through libxdp with a higher priority); remove datapath.next, or set datapath.attach = \"direct\" on an interface of the guard's own",
                        next.display()
                    ),
                });
            }
            if let Some((_, mode, path)) = previous
                && mode != component::MODE
            {
                // Only once the guard can be in a dispatcher here: a refusal leaves the
                // guard on its link.
                component::can_join(&mut datapath, iface)?;
                tracing::warn!(
                    "{iface}: moving from its own link into libxdp's dispatcher; the interface is unguarded for the moment in between"
                );
                crate::dataplane::link::detach_pinned(path).map_err(io_err("detach", path))?;
            }
            attachments.push(component::join(
                &mut datapath,
                &dir,
                iface,
                ifindex,
                opts.mode,
                opts.priority,
            )?);
            continue;
        }
        if let Some((_, _, path)) = previous.filter(|_| was_component) {
            let others = component::others(&dir, iface, path);
            if !others.is_empty() {
                return Err(LoadError::Dispatcher {
                    iface: iface.clone(),
                    why: format!(
                        "datapath.attach = \"direct\" needs the interface to itself, but its dispatcher also runs {}: unload them, or set datapath.attach = \"auto\" to stay beside them",
                        others.join(", ")
                    ),
                });
            }
            tracing::warn!(
                "{iface}: leaving libxdp's dispatcher to attach directly; the interface is unguarded for the moment in between"
            );
            component::leave(&dir, iface, path)?;
        }
        let program = datapath.program_mut()?;
        if let Some((_, mode, path)) = previous.filter(|_| !was_component) {
            // Adopt only a link still on this interface (not one severed by the interface
            // going away and coming back under the same name) in the mode asked for.
            let on_iface =
                crate::dataplane::link::link_ifindex(path).ok().flatten() == Some(ifindex);
            let mode_ok = match opts.mode {
                AttachMode::Auto => true,
                AttachMode::Native => mode == "native",
                AttachMode::Generic => mode == "generic",
            };
            let adopted = if on_iface && mode_ok {
                // Swap the new program into the pinned link in place: no gap.
                PinnedLink::from_pin(path)
                    .map_err(|e| e.to_string())
                    .and_then(|pl| XdpLink::try_from(FdLink::from(pl)).map_err(|e| e.to_string()))
                    .and_then(|link| program.attach_to_link(link).map_err(|e| e.to_string()))
            } else if !on_iface {
                Err(format!("it is no longer on {iface} (ifindex {ifindex})"))
            } else {
                Err(format!("it is in {mode} mode"))
            };
            match adopted {
                Ok(_) => {
                    attachments.push(Attachment {
                        iface: iface.clone(),
                        ifindex,
                        mode: mode.clone(),
                        adopted: true,
                        reattached: 0,
                    });
                    continue;
                }
                Err(why) => {
                    tracing::warn!(
                        "not adopting the pinned link {} ({why}); attaching afresh",
                        path.display()
                    );
                    // Detached now, not when bpffs gets to free it: the new attach must not
                    // find the old link still on the interface.
                    crate::dataplane::link::detach_pinned(path)
                        .or_else(|_| fs::remove_file(path))
                        .map_err(io_err("remove", path))?;
                }
            }
        }
        let label = attach_fresh(program, iface, opts.mode, &links_dir)?;
        attachments.push(Attachment {
            iface: iface.clone(),
            ifindex,
            mode: label.to_string(),
            adopted: false,
            reattached: 0,
        });
    }
    datapath.pin_root = Some(opts.pin_dir.clone());
    // The SYN cookies' TC stage, wherever the XDP program is.
    let tc_dir = dir.join("tc");
    let components: Vec<&str> = attachments
        .iter()
        .filter(|a| a.mode == component::MODE)
        .map(|a| a.iface.as_str())
        .collect();
    datapath.tc = match &datapath.cookies {
        // The root program's interfaces are not ours to know.
        Ok(()) if opts.chain.is_some() => {
            Err("in chain mode the guard knows no interface to attach its TC stage to".to_string())
        }
        Ok(()) if !components.is_empty() => Err(format!(
            "the guard is in libxdp's dispatcher on {}, where it cannot tail-call its cookie stage",
            components.join(", ")
        )),
        Ok(()) => {
            let ifaces: Vec<(String, u32)> = attachments
                .iter()
                .map(|a| (a.iface.clone(), a.ifindex))
                .collect();
            super::cookies::attach_tc(&mut datapath.ebpf, &ifaces, &tc_dir)
        }
        Err(why) => Err(why.clone()),
    };
    if let Err(why) = &datapath.tc
        && datapath.cookies.is_ok()
    {
        tracing::warn!("SYN cookies at the NIC are off: {why}");
    }
    // Interfaces a previous run attached to but that are no longer configured.
    for (iface, mode, path) in &pinned {
        if !interfaces.contains(iface) {
            tracing::info!("{iface}: no longer configured; detaching");
            if mode == component::MODE {
                component::leave(&dir, iface, path)?;
            } else {
                fs::remove_file(path).map_err(io_err("remove", path))?;
            }
        }
    }
    Ok(Loaded {
        datapath,
        attachments,
    })
}

/// Points the program's `NEXT_PROGS` at the pinned program `next` (tail-called for every
/// packet the guard passes), or empties it when there is none: the map is pinned, so a
/// previous run's next program would otherwise stay.
///
/// # Errors
/// When `next` is not a pinned XDP program, or the kernel refuses it in the array (its XDP
/// flags, e.g. `xdp.frags`, differ from the guard's).
fn set_next(datapath: &mut KernelDatapath, next: Option<&Path>) -> Result<(), LoadError> {
    let map = datapath
        .ebpf
        .map_mut(map_names::NEXT_PROGS)
        .ok_or(LoadError::Missing(map_names::NEXT_PROGS))?;
    let mut array = ProgramArray::try_from(map).map_err(|source| LoadError::Map {
        map: map_names::NEXT_PROGS,
        source,
    })?;
    let Some(path) = next else {
        // Empty already: ENOENT, which is what we want.
        // (A fresh load: `FLAG_NEXT` is not set.)
        let _ = array.clear_index(&0);
        return Ok(());
    };
    let err = |source: Box<dyn std::error::Error + Send + Sync>| LoadError::Next {
        path: path.to_path_buf(),
        source,
    };
    let program = Xdp::from_pin(path, XdpAttachType::Interface).map_err(|e| err(Box::new(e)))?;
    let fd = program.fd().map_err(|e| err(Box::new(e)))?;
    array.set(0, fd, 0).map_err(|e| err(Box::new(e)))?;
    datapath.next = true;
    datapath.write_config().map_err(|e| err(Box::new(e)))
}

/// Attaches `program` to `iface` in `mode` (auto: native, else generic) and pins the link
/// under `links_dir`; returns the mode it got.
fn attach_fresh(
    program: &mut Xdp,
    iface: &str,
    mode: AttachMode,
    links_dir: &Path,
) -> Result<&'static str, LoadError> {
    // A foreign program (a load balancer, libxdp's dispatcher) is never replaced.
    if let Some(ifindex) = if_index(iface)
        && let Ok(Some(id)) = super::occupant::xdp_prog_on(ifindex)
    {
        return Err(LoadError::Occupied {
            iface: iface.to_string(),
            id,
            program: super::occupant::prog_name(id),
        });
    }
    let tries: &[(XdpMode, &str)] = match mode {
        AttachMode::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "generic")],
        AttachMode::Native => &[(XdpMode::Driver, "native")],
        AttachMode::Generic => &[(XdpMode::Skb, "generic")],
    };
    let mut last_err = None;
    let mut done = None;
    for (mode, label) in tries {
        match program.attach(iface, *mode) {
            Ok(id) => {
                done = Some((id, *label));
                break;
            }
            Err(e) => {
                tracing::info!("{iface}: {label} XDP unavailable: {e}");
                last_err = Some((*label, e));
            }
        }
    }
    let Some((id, label)) = done else {
        let (mode, source) = last_err.expect("at least one mode was tried");
        return Err(LoadError::Attach {
            iface: iface.to_string(),
            mode,
            source,
        });
    };
    let link = program.take_link(id).map_err(LoadError::Program)?;
    let fd_link: FdLink = link.try_into().map_err(|e| {
        LoadError::Link(format!(
            "{iface}: the kernel attached without a BPF link ({e}); cannot pin it"
        ))
    })?;
    let path = links_dir.join(link_pin_name(iface, label));
    fd_link
        .pin(&path)
        .map_err(|e| LoadError::Link(format!("pinning {}: {e}", path.display())))?;
    Ok(label)
}

/// Attaches the loaded program afresh to `iface`, which came back (deleted and made anew: a
/// new index) or lost its link: the dead link's pin is removed and the new link pinned in its
/// place. Returns the interface's index and the mode it got.
///
/// # Errors
/// When the interface is gone, or the kernel refuses the attachment or the pin.
pub(super) fn reattach(
    datapath: &mut KernelDatapath,
    pin_dir: &Path,
    iface: &str,
    mode: AttachMode,
) -> Result<(u32, &'static str), LoadError> {
    if let Some(slot) = super::chain::parse_label(iface) {
        // Chain mode: only an empty slot is filled again; a slot another program took is
        // left to it (the operator, or the root's own loader, put it there).
        return match super::chain::slot_prog_id(&slot) {
            Ok(None) => {
                super::chain::insert(datapath.program_mut()?, &slot, &versioned_dir(pin_dir))?;
                Ok((0, "chain"))
            }
            Ok(Some(id)) => Err(LoadError::Link(format!(
                "{iface} holds program {id} ({}), not the guard's: left to it",
                super::occupant::prog_name(id)
            ))),
            Err(e) => Err(LoadError::Link(format!("cannot read {iface}: {e}"))),
        };
    }
    let ifindex = if_index(iface).ok_or_else(|| LoadError::NoInterface {
        iface: iface.to_string(),
    })?;
    let links_dir = versioned_dir(pin_dir).join("links");
    let mut was_component = false;
    for (i, m, path) in link_pins(&links_dir) {
        if i == iface {
            was_component |= m == component::MODE;
            if m != component::MODE {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
            }
        }
    }
    if was_component {
        // Back into a dispatcher (the old one went with the old interface).
        let priority = datapath.priority;
        let a = component::join(
            datapath,
            &versioned_dir(pin_dir),
            iface,
            ifindex,
            mode,
            priority,
        )?;
        return Ok((a.ifindex, component::MODE));
    }
    let label = attach_fresh(datapath.program_mut()?, iface, mode, &links_dir)?;
    // The SYN cookies' TC stage follows the XDP program onto the new interface; where it
    // cannot, no service sends cookies (the next tick clears their flag).
    if datapath.cookies.is_ok() {
        let tc_dir = versioned_dir(pin_dir).join("tc");
        datapath.tc = super::cookies::attach_tc_on(&mut datapath.ebpf, iface, ifindex, &tc_dir);
        if let Err(why) = &datapath.tc {
            tracing::warn!("SYN cookies at the NIC are off: {why}");
        }
    }
    Ok((ifindex, label))
}

/// An upgrade from an older layout (`<pin_dir>/v<N>` with N below this one): its pinned links
/// move into this layout's `links/`, where `start` adopts them like its own and swaps the new
/// program in (`BPF_LINK_UPDATE`), so no interface is ever left without the guard; its maps are
/// unpinned (the daemon restores the lists and bans from the state file). Returns the
/// interfaces whose links moved.
pub(super) fn migrate_older_layouts(
    pin_dir: &Path,
    links_dir: &Path,
) -> Result<Vec<String>, LoadError> {
    let mut moved = Vec::new();
    for version in 1..LAYOUT_VERSION {
        let old = pin_dir.join(format!("v{version}"));
        if !old.exists() {
            continue;
        }
        for (iface, mode, path) in link_pins(&old.join("links")) {
            let to = links_dir.join(link_pin_name(&iface, &mode));
            if to.exists() {
                // This layout pinned it already: the old pin is a second reference.
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                continue;
            }
            fs::rename(&path, &to).map_err(io_err("move", &path))?;
            moved.push(iface);
        }
        remove_pins(&old)?;
        tracing::warn!(
            "upgraded the pins of layout v{version} under {}: {} link(s) adopted, its maps removed (lists and bans come from the state file)",
            old.display(),
            moved.len()
        );
    }
    Ok(moved)
}

pub(super) fn remove_pins(dir: &Path) -> Result<Vec<String>, LoadError> {
    let mut detached = Vec::new();
    for (iface, mode, path) in link_pins(&dir.join("links")) {
        if mode == component::MODE {
            component::leave(dir, &iface, &path)?;
        } else {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
        detached.push(iface);
    }
    // Chain slots: cleared only where they still hold our program.
    for (slot, pin) in super::chain::pins(dir) {
        super::chain::remove(&slot, &pin)?;
        detached.push(super::chain::label(&slot));
    }
    for sub in ["links", "tc", super::chain::CHAIN_DIR, "maps"] {
        let d = dir.join(sub);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.filter_map(Result::ok) {
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
            }
            fs::remove_dir(&d).map_err(io_err("remove", &d))?;
        }
    }
    if dir.exists() {
        fs::remove_dir(dir).map_err(io_err("remove", dir))?;
    }
    Ok(detached)
}

/// Detaches from every interface and removes the pins for good. Returns the interfaces it
/// detached from.
///
/// # Errors
/// When a pin cannot be removed.
pub fn detach(pin_dir: &Path) -> Result<Vec<String>, LoadError> {
    let mut detached = remove_pins(&versioned_dir(pin_dir))?;
    match super::cookies::restore_syncookies(pin_dir) {
        Ok(Some(old)) => tracing::info!("put {} back to {old}", super::cookies::SYNCOOKIES_SYSCTL),
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    // An older layout's pins too (a host that never ran the daemon since an upgrade).
    for version in 1..LAYOUT_VERSION {
        let old = pin_dir.join(format!("v{version}"));
        if old.exists() {
            detached.extend(remove_pins(&old)?);
        }
    }
    // The root too, if nothing else lives there.
    let _ = fs::remove_dir(pin_dir);
    Ok(detached)
}
