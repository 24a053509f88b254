//! libxdp's multi-program dispatcher (`[datapath] attach = "dispatcher"`, or `auto` on an
//! interface that already runs one): the guard as one component of the dispatcher that
//! xdp-loader, xdp-filter and other libxdp users share, in the order of its run priority.
//!
//! The protocol is xdp-tools' `lib/libxdp/protocol.org`, dispatcher version 2 (libxdp 1.2+):
//! - the dispatcher is libxdp's own precompiled `xdp-dispatcher.o` (so libxdp recognises and
//!   extends it), loaded with its `.rodata` `conf` filled in: how many programs, each one's
//!   run priority, chain-call actions and flags;
//! - each component is an freplace (`BPF_PROG_TYPE_EXT`) program attached to the dispatcher's
//!   slot function `prog<i>`, its link and program pinned as `prog<i>-link` and `prog<i>-prog`
//!   under `/sys/fs/bpf/xdp/dispatch-<ifindex>-<dispatcher id>/`;
//! - every change builds a new dispatcher (the old components re-linked into it, a new one
//!   loaded against it), swaps it onto the interface atomically over netlink
//!   (`XDP_FLAGS_REPLACE` with the old one as the expected program), then unpins the old one;
//! - all of it under libxdp's lock, `flock(LOCK_EX)` on `/sys/fs/bpf/xdp`.
//!
//! Implemented here on aya's `Extension` rather than by linking libxdp: libxdp 1.3 (Debian 12)
//! loads its components itself from an ELF object and cannot take a program aya loaded, with
//! the guard's pinned maps, as a component (it falls back to replacing the interface's
//! program); and a C library under the daemon would be the one piece not built by cargo.
//! What we share with libxdp is the protocol on bpffs and the dispatcher object itself.
//!
//! The guard's component is `guard_ext` (the pipeline without tail calls): it passes on only
//! what it passes (chain-call action `XDP_PASS`), so a program after it sees only traffic the
//! guard let through.
use std::{
    cmp::Ordering,
    fs::{self, File},
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::DirBuilderExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader, Pod,
    maps::{Array, Map, MapData, MapInfo},
    programs::{Extension, ProgramFd, ProgramInfo, Xdp, links::FdLink, loaded_programs},
};

use super::netlink::{self, XdpMode};

/// Where libxdp looks for `xdp-dispatcher.o`: `$LIBXDP_OBJECT_PATH`, then the distributions'
/// `BPF_OBJECT_PATH`s (Debian's multiarch one first).
const OBJECT_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/bpf",
    "/usr/lib/aarch64-linux-gnu/bpf",
    "/usr/lib64/bpf",
    "/usr/lib/bpf",
    "/usr/local/lib/bpf",
];
const OBJECT_NAME: &str = "xdp-dispatcher.o";
/// The dispatcher's program name, which libxdp checks.
const DISPATCHER_PROGRAM: &str = "xdp_dispatcher";
pub const MAX_PROGRAMS: usize = 10;
const MAGIC: u8 = 236;
const VERSION: u8 = 2;
/// The chain-call bit that makes the dispatcher go on when a component was not replaced (an
/// empty slot's stub returns `XDP_DISPATCHER_RETVAL`).
const DISPATCHER_RETVAL: u32 = 31;
const BPF_F_XDP_HAS_FRAGS: u32 = 1 << 5;
const BPF_F_RDONLY_PROG: u32 = 1 << 7;
/// The guard goes on to the next program only for what it passes.
pub const CHAIN_ON_PASS: u32 = 1 << 2;
/// The run priority of the guard by default: before xdp-filter's programs (10) and libxdp's
/// default (50), so floods are dropped before any other program spends time on them.
pub const DEFAULT_PRIORITY: u32 = 5;

/// `struct xdp_dispatcher_config` (libxdp's `xdp/prog_dispatcher.h`): the `conf` in the
/// dispatcher's `.rodata`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct DispatcherConfig {
    magic: u8,
    dispatcher_version: u8,
    num_progs_enabled: u8,
    is_xdp_frags: u8,
    chain_call_actions: [u32; MAX_PROGRAMS],
    run_prios: [u32; MAX_PROGRAMS],
    program_flags: [u32; MAX_PROGRAMS],
}
// SAFETY: plain integers with no padding (4 + 3 * 40 = 124 bytes, the C layout).
unsafe impl Pod for DispatcherConfig {}
const _: () = assert!(std::mem::size_of::<DispatcherConfig>() == 124);

/// libxdp's bpffs directory: `$LIBXDP_BPFFS/xdp`, by default `/sys/fs/bpf/xdp`.
pub fn xdp_dir() -> PathBuf {
    std::env::var_os("LIBXDP_BPFFS")
        .map_or_else(|| PathBuf::from(super::BPFFS), PathBuf::from)
        .join("xdp")
}

fn dispatch_dir(ifindex: u32, id: u32) -> PathBuf {
    xdp_dir().join(format!("dispatch-{ifindex}-{id}"))
}

/// The dispatcher object libxdp would use.
///
/// # Errors
/// When none is installed (Debian: the libxdp1 package, which xdp-tools brings).
pub fn object_path() -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LIBXDP_OBJECT_PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(OBJECT_DIRS.iter().map(PathBuf::from));
    dirs.iter()
        .map(|d| d.join(OBJECT_NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "libxdp's {OBJECT_NAME} is not installed (looked in $LIBXDP_OBJECT_PATH and {}): install libxdp (Debian: apt install libxdp1, which xdp-tools brings)",
                OBJECT_DIRS.join(", ")
            )
        })
}

/// libxdp's lock, held while it lives: `flock(LOCK_EX)` on the `xdp` directory.
struct Lock(#[allow(dead_code)] File);

impl Lock {
    fn acquire() -> Result<Self, String> {
        let dir = xdp_dir();
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
        let f = File::open(&dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "locking {}: {}",
                dir.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self(f))
    }
}

/// A program already in a dispatcher, from its pins.
pub struct Component {
    ext: Extension,
    pub name: String,
    pub id: u32,
    tag: u64,
    pub priority: u32,
    /// Chain-call actions, without the `DISPATCHER_RETVAL` bit.
    chain: u32,
    flags: u32,
    /// The maps it uses: how the guard knows its own component of a previous run.
    pub map_ids: Vec<u32>,
}

/// A dispatcher on an interface.
pub struct Dispatcher {
    pub id: u32,
    pub mode: XdpMode,
    fd: ProgramFd,
    pub components: Vec<Component>,
}

/// What an interface runs, as libxdp sees it.
pub enum OnIface {
    Nothing,
    /// An XDP program that is not a libxdp dispatcher of version 2 (`xdp-loader status`
    /// calls it "legacy"), and why not.
    Other {
        id: u32,
        name: String,
        why: String,
    },
    Dispatcher(Dispatcher),
}

fn program_info(id: u32) -> Result<ProgramInfo, String> {
    loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .ok_or_else(|| format!("program {id} is gone"))
}

/// Reads what runs on `ifindex` the way libxdp does (`xdp_multiprog__get_from_ifindex`): a
/// dispatcher is named `xdp_dispatcher`, has BTF and one map, its read-only config of version
/// 2; its components are the `prog<i>-prog` pins of its directory.
///
/// # Errors
/// When the kernel cannot be asked, or a dispatcher's pins are missing.
pub fn read(ifindex: u32) -> Result<OnIface, String> {
    let state = netlink::query(ifindex).map_err(|e| format!("asking for its XDP program: {e}"))?;
    let Some((id, mode)) = state.main() else {
        return Ok(OnIface::Nothing);
    };
    let info = program_info(id)?;
    let name = info.name_as_str().unwrap_or("").to_string();
    let other = |why: &str| {
        Ok(OnIface::Other {
            id,
            name: name.clone(),
            why: why.to_string(),
        })
    };
    if name != DISPATCHER_PROGRAM {
        return other("it is not libxdp's dispatcher");
    }
    if info.btf_id().is_none() {
        return other("a dispatcher without BTF");
    }
    let maps = info
        .map_ids()
        .map_err(|e| e.to_string())?
        .unwrap_or_default();
    let [map_id] = maps[..] else {
        return other("a dispatcher with other than one map");
    };
    let minfo = MapInfo::from_id(map_id).map_err(|e| e.to_string())?;
    if minfo.key_size() != 4
        || minfo.max_entries() != 1
        || minfo.map_flags() & BPF_F_RDONLY_PROG == 0
        || minfo.value_size() != std::mem::size_of::<DispatcherConfig>() as u32
    {
        return other("a dispatcher of another version");
    }
    let map = MapData::from_id(map_id).map_err(|e| e.to_string())?;
    let array: Array<MapData, DispatcherConfig> =
        Array::try_from(Map::Array(map)).map_err(|e| e.to_string())?;
    let config = array.get(&0, 0).map_err(|e| e.to_string())?;
    if config.magic != MAGIC || config.dispatcher_version != VERSION {
        return other("a dispatcher of another version");
    }
    let dir = dispatch_dir(ifindex, id);
    let mut components = Vec::new();
    for i in 0..usize::from(config.num_progs_enabled).min(MAX_PROGRAMS) {
        let pin = dir.join(format!("prog{i}-prog"));
        let ext = Extension::from_pin(&pin)
            .map_err(|e| format!("the dispatcher's component {}: {e}", pin.display()))?;
        let pinfo = ext.info().map_err(|e| e.to_string())?;
        components.push(Component {
            name: pinfo.name_as_str().unwrap_or("").to_string(),
            id: pinfo.id(),
            tag: pinfo.tag(),
            priority: config.run_prios[i],
            chain: config.chain_call_actions[i] & !(1 << DISPATCHER_RETVAL),
            flags: config.program_flags[i],
            map_ids: pinfo.map_ids().ok().flatten().unwrap_or_default(),
            ext,
        });
    }
    Ok(OnIface::Dispatcher(Dispatcher {
        id,
        mode,
        fd: info.fd().map_err(|e| e.to_string())?,
        components,
    }))
}

/// The guard's component to add.
pub struct Ours<'a> {
    /// `guard_ext`, loaded (against an earlier dispatcher) or not yet.
    pub ext: &'a mut Extension,
    pub name: &'a str,
    pub priority: u32,
}

enum Member<'a, 'b> {
    Old(Component),
    New(&'b mut Ours<'a>),
}

impl Member<'_, '_> {
    /// libxdp's order (`cmp_xdp_programs`): run priority, then name, then a loaded program
    /// before one not yet loaded, then tag.
    fn key(&self) -> (u32, &str, bool, u64) {
        match self {
            Self::Old(c) => (c.priority, &c.name, false, c.tag),
            Self::New(n) => (n.priority, n.name, true, 0),
        }
    }
}

fn order(a: &Member, b: &Member) -> Ordering {
    a.key().cmp(&b.key())
}

fn unpin_dir(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}

/// What a change left on the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    pub dispatcher: u32,
    pub mode: XdpMode,
    /// The components in run order: (name, priority).
    pub order: Vec<(String, u32)>,
}

impl Joined {
    pub fn describe(&self) -> String {
        self.order
            .iter()
            .map(|(n, p)| format!("{n} ({p})"))
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// Puts `ours` into the dispatcher on `ifindex` (building one if the interface runs nothing,
/// in the first of `modes` the driver takes), in place of every component `is_ours` names (a
/// previous run's guard): one atomic swap, so there is no moment without the guard and the
/// other programs. With `ours` None, only takes out what `is_ours` names (and detaches the
/// dispatcher if nothing is left). Returns what runs there now; None if nothing does, or
/// (without `ours`) if nothing there was ours.
///
/// # Errors
/// When the interface runs a program that is not a dispatcher, the dispatcher is full, the
/// kernel refuses an freplace program (some kernels do, e.g. under lockdown), or another
/// loader swapped the dispatcher meanwhile.
pub fn change(
    ifindex: u32,
    ours: Option<&mut Ours>,
    is_ours: &dyn Fn(&Component) -> bool,
    modes: &[XdpMode],
) -> Result<Option<Joined>, String> {
    let _lock = Lock::acquire()?;
    let old = match read(ifindex)? {
        OnIface::Nothing => None,
        OnIface::Other { id, name, why } => {
            return Err(format!(
                "it runs XDP program {id} ({name:?}), not libxdp's dispatcher ({why}): the guard does not replace it"
            ));
        }
        OnIface::Dispatcher(d) => Some(d),
    };
    let mut members: Vec<Member> = Vec::new();
    let mut kept_of = 0;
    let (old_fd, old_id, old_mode) = match old {
        Some(d) => {
            kept_of = d.components.len();
            members.extend(
                d.components
                    .into_iter()
                    .filter(|c| !is_ours(c))
                    .map(Member::Old),
            );
            (Some(d.fd), d.id, Some(d.mode))
        }
        None => (None, 0, None),
    };
    let adding = ours.is_some();
    if let Some(n) = ours {
        members.push(Member::New(n));
    }
    if members.len() > MAX_PROGRAMS {
        return Err(format!(
            "its dispatcher already runs {} programs, the most it holds",
            MAX_PROGRAMS
        ));
    }
    members.sort_by(order);

    if members.is_empty() {
        let (Some(old_fd), Some(mode)) = (old_fd, old_mode) else {
            return Ok(None);
        };
        netlink::set_xdp(
            ifindex,
            -1,
            mode.flag() | netlink::XDP_FLAGS_REPLACE,
            Some(old_fd.as_fd().as_raw_fd()),
        )
        .map_err(|e| format!("detaching its dispatcher {old_id}: {e}"))?;
        unpin_dir(&dispatch_dir(ifindex, old_id));
        return Ok(None);
    }
    if !adding && members.len() == kept_of {
        // Nothing of ours there: nothing to change.
        return Ok(None);
    }

    // The config, as libxdp's `xdp_multiprog__generate` fills it.
    let n = members.len();
    let mut config = DispatcherConfig {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: n as u8,
        // aya loads `xdp-dispatcher.o`'s `SEC("xdp")` without BPF_F_XDP_HAS_FRAGS.
        is_xdp_frags: 0,
        ..Default::default()
    };
    for (i, m) in members.iter().enumerate() {
        let (priority, chain, flags) = match m {
            Member::Old(c) => (c.priority, c.chain, c.flags & BPF_F_XDP_HAS_FRAGS),
            Member::New(o) => (o.priority, CHAIN_ON_PASS, 0),
        };
        config.chain_call_actions[i] = chain | (1 << DISPATCHER_RETVAL);
        config.run_prios[i] = priority;
        config.program_flags[i] = flags;
    }
    let object = object_path()?;
    let mut loaded = EbpfLoader::new()
        .override_global("conf", &config, true)
        .load_file(&object)
        .map_err(|e| format!("loading {}: {e}", object.display()))?;
    let dispatcher: &mut Xdp = loaded
        .program_mut(DISPATCHER_PROGRAM)
        .ok_or_else(|| format!("{} has no {DISPATCHER_PROGRAM}", object.display()))?
        .try_into()
        .map_err(|e| format!("{DISPATCHER_PROGRAM}: {e}"))?;
    dispatcher.load().map_err(|e| {
        format!(
            "loading {DISPATCHER_PROGRAM}: {}",
            crate::rpc::error_chain(&e)
        )
    })?;
    let fd = dispatcher.fd().map_err(|e| e.to_string())?;
    let fd = fd.try_clone().map_err(|e| e.to_string())?;
    let id = dispatcher.info().map_err(|e| e.to_string())?.id();
    let dir = dispatch_dir(ifindex, id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;

    let linked = (|| -> Result<(), String> {
        for (i, m) in members.iter_mut().enumerate() {
            let slot = format!("prog{i}");
            let (ext, name): (&mut Extension, String) = match m {
                Member::Old(c) => (&mut c.ext, c.name.clone()),
                Member::New(o) => {
                    if o.ext.fd().is_err() {
                        let target = fd.try_clone().map_err(|e| e.to_string())?;
                        o.ext.load(target, &slot).map_err(|e| {
                            format!(
                                "loading {} as an freplace program of the dispatcher: {}",
                                o.name,
                                crate::rpc::error_chain(&e)
                            )
                        })?;
                    }
                    (&mut *o.ext, o.name.to_string())
                }
            };
            let link = ext.attach_to_program(&fd, &slot).map_err(|e| {
                format!(
                    "linking {name} into {slot}: {}",
                    crate::rpc::error_chain(&e)
                )
            })?;
            let link = ext.take_link(link).map_err(|e| e.to_string())?;
            let pin = dir.join(format!("prog{i}-link"));
            FdLink::from(link)
                .pin(&pin)
                .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
            let pin = dir.join(format!("prog{i}-prog"));
            ext.pin(&pin)
                .map_err(|e| format!("pinning {}: {e}", pin.display()))?;
        }
        Ok(())
    })();
    if let Err(e) = linked {
        unpin_dir(&dir);
        return Err(e);
    }

    let raw = fd.as_fd().as_raw_fd();
    let mode = match (&old_fd, old_mode) {
        (Some(old), Some(mode)) => netlink::set_xdp(
            ifindex,
            raw,
            mode.flag() | netlink::XDP_FLAGS_REPLACE,
            Some(old.as_fd().as_raw_fd()),
        )
        .map(|()| mode)
        .map_err(|e| format!("swapping in dispatcher {id} for {old_id}: {e}")),
        _ => {
            let mut errors = Vec::new();
            let mut done = None;
            for m in modes {
                match netlink::set_xdp(
                    ifindex,
                    raw,
                    m.flag() | netlink::XDP_FLAGS_UPDATE_IF_NOEXIST,
                    None,
                ) {
                    Ok(()) => {
                        done = Some(*m);
                        break;
                    }
                    Err(e) => errors.push(format!("{} mode: {e}", m.name())),
                }
            }
            done.ok_or_else(|| format!("attaching dispatcher {id}: {}", errors.join("; ")))
        }
    };
    let mode = match mode {
        Ok(m) => m,
        Err(e) => {
            unpin_dir(&dir);
            return Err(e);
        }
    };
    if old_fd.is_some() {
        unpin_dir(&dispatch_dir(ifindex, old_id));
    }
    Ok(Some(Joined {
        dispatcher: id,
        mode,
        order: members
            .iter()
            .map(|m| match m {
                Member::Old(c) => (c.name.clone(), c.priority),
                Member::New(o) => (o.name.to_string(), o.priority),
            })
            .collect(),
    }))
}

/// Removes the pins of dispatchers that no interface runs any more (their interface was deleted:
/// the kernel detached them, and their pinned links keep them and their components loaded)
/// but that hold one of our components (`is_ours(id, map ids)`). Another loader's dispatchers
/// are not touched. Returns the directories removed.
pub fn sweep_stale(is_ours: &dyn Fn(u32, &[u32]) -> bool) -> Vec<PathBuf> {
    let Ok(_lock) = Lock::acquire() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in fs::read_dir(xdp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((ifindex, id)) = name
            .strip_prefix("dispatch-")
            .and_then(|r| r.split_once('-'))
            .and_then(|(i, d)| Some((i.parse::<u32>().ok()?, d.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let running = netlink::query(ifindex)
            .ok()
            .and_then(|s| s.main())
            .is_some_and(|(on, _)| on == id);
        if running {
            continue;
        }
        let ours = fs::read_dir(e.path())
            .into_iter()
            .flatten()
            .flatten()
            .filter(|p| p.file_name().to_string_lossy().ends_with("-prog"))
            .filter_map(|p| ProgramInfo::from_pin(p.path()).ok())
            .any(|i| is_ours(i.id(), &i.map_ids().ok().flatten().unwrap_or_default()));
        if ours {
            unpin_dir(&e.path());
            removed.push(e.path());
        }
    }
    removed
}

/// Does the dispatcher on `ifindex` run program `prog_id`? The health check's "attached" in
/// dispatcher mode. Returns the dispatcher's id, mode and the components' order.
///
/// # Errors
/// Why not, for the log.
pub fn holds(ifindex: u32, prog_id: u32) -> Result<Joined, String> {
    match read(ifindex)? {
        OnIface::Nothing => Err("the interface runs no XDP program".to_string()),
        OnIface::Other { id, name, .. } => Err(format!(
            "the interface runs program {id} ({name:?}) instead of a dispatcher"
        )),
        OnIface::Dispatcher(d) => {
            let joined = Joined {
                dispatcher: d.id,
                mode: d.mode,
                order: d
                    .components
                    .iter()
                    .map(|c| (c.name.clone(), c.priority))
                    .collect(),
            };
            if d.components.iter().any(|c| c.id == prog_id) {
                Ok(joined)
            } else {
                Err(format!(
                    "its dispatcher {} runs {} but not the guard's program {prog_id}",
                    d.id,
                    joined.describe()
                ))
            }
        }
    }
}

/// Can this kernel run the guard in a dispatcher? Loads a dispatcher and the guard's
/// component against it (nothing is attached or pinned).
///
/// # Errors
/// Why not: no dispatcher object, or the kernel refuses freplace programs.
pub fn probe(ext: &mut Extension) -> Result<(), String> {
    let object = object_path()?;
    let config = DispatcherConfig {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: 1,
        ..Default::default()
    };
    let mut loaded = EbpfLoader::new()
        .override_global("conf", &config, true)
        .load_file(&object)
        .map_err(|e| format!("loading {}: {e}", object.display()))?;
    let dispatcher: &mut Xdp = loaded
        .program_mut(DISPATCHER_PROGRAM)
        .ok_or_else(|| format!("{} has no {DISPATCHER_PROGRAM}", object.display()))?
        .try_into()
        .map_err(|e| format!("{DISPATCHER_PROGRAM}: {e}"))?;
    dispatcher.load().map_err(|e| {
        format!(
            "loading {DISPATCHER_PROGRAM}: {}",
            crate::rpc::error_chain(&e)
        )
    })?;
    let fd = dispatcher
        .fd()
        .and_then(|f| f.try_clone().map_err(Into::into))
        .map_err(|e| e.to_string())?;
    ext.load(fd, "prog0").map_err(|e| {
        format!(
            "this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs, which libxdp's dispatcher needs: {}",
            crate::rpc::error_chain(&e)
        )
    })
}
