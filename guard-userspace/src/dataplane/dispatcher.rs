//! libxdp's multi-program dispatcher (`[datapath] attach = "dispatcher"`, or `auto` on an
//! interface that already runs one): the guard as one component of the dispatcher that
//! xdp-loader, xdp-filter and other libxdp users share, in the order of its run priority.
//!
//! The protocol is xdp-tools' `lib/libxdp/protocol.org`, dispatcher version 2 (libxdp 1.3 to
//! 1.5: Debian 12, Ubuntu 24.04; libxdp 1.6 made version 3, which the guard refuses by name):
//! - the dispatcher is libxdp's own precompiled `xdp-dispatcher.o` (so libxdp recognises and
//!   extends it), loaded with its `.rodata` `conf` filled in: how many programs, each one's
//!   run priority, chain-call actions and flags;
//! - each component is an freplace (`BPF_PROG_TYPE_EXT`) program attached to the dispatcher's
//!   slot function `prog<i>` (a lone program replaces the dispatcher's own function, as libxdp
//!   does since 1.2), its link and program pinned as `prog<i>-link` and `prog<i>-prog`
//!   under `/sys/fs/bpf/xdp/dispatch-<ifindex>-<dispatcher id>/`;
//! - every change builds a new dispatcher (the old components re-linked into it, a new one
//!   loaded against it), swaps it onto the interface atomically over netlink
//!   (`XDP_FLAGS_REPLACE` with the old one as the expected program), then unpins the old one;
//!   a swap refused because another loader changed the dispatcher meanwhile starts over;
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
    /// Waits at most `patience` for the lock: a loader that hangs holding it must not hang the
    /// daemon (its health tick reads under it).
    fn acquire(patience: std::time::Duration) -> Result<Self, String> {
        let dir = xdp_dir();
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
        let f = File::open(&dir).map_err(|e| format!("opening {}: {e}", dir.display()))?;
        let deadline = std::time::Instant::now() + patience;
        loop {
            // SAFETY: flock(2) on a descriptor this function owns.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self(f));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(format!("locking {}: {e}", dir.display()));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "another loader has held libxdp's lock on {} for over {patience:?} (a hung xdp-loader?)",
                    dir.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// How long a change waits for libxdp's lock, and the health check.
const CHANGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
const CHECK_PATIENCE: std::time::Duration = std::time::Duration::from_millis(300);

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
    /// An XDP program that is not libxdp's dispatcher (`xdp-loader status` calls it
    /// "legacy").
    Other {
        id: u32,
        name: String,
    },
    /// libxdp's dispatcher, of a version (or in a state) the guard cannot join, and why.
    Unusable {
        id: u32,
        why: String,
    },
    Dispatcher(Dispatcher),
}

/// The dispatcher version a config map of `size` bytes is: 1 (no magic, libxdp 1.0 to 1.2),
/// 2 (124 bytes), 3 (128: device binding, libxdp 1.6).
fn version_of_size(size: u32) -> &'static str {
    match size {
        124 => "2 (libxdp 1.3 to 1.5)",
        128 => "3 (libxdp 1.6 or later)",
        _ => "1 or unknown (libxdp 1.2 or earlier)",
    }
}

/// What to say about a dispatcher of another version than 2.
fn other_version(what: &str, version: &str) -> String {
    format!(
        "{what} is libxdp's dispatcher version {version}; the guard speaks version 2, that of libxdp 1.3 to 1.5 (Debian 12, Ubuntu 24.04). Use that libxdp, or attach the guard directly to an interface of its own"
    )
}

/// The kernel's info on program `id` (aya 0.14 has no lookup by id: a walk of the loaded
/// programs).
pub(super) fn program_info(id: u32) -> Result<ProgramInfo, String> {
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
    if name != DISPATCHER_PROGRAM {
        return Ok(OnIface::Other { id, name });
    }
    let unusable = |why: String| Ok(OnIface::Unusable { id, why });
    let what = format!("program {id} on the interface");
    if info.btf_id().is_none() {
        return unusable(format!(
            "{what} is named {DISPATCHER_PROGRAM} but has no BTF"
        ));
    }
    let maps = info
        .map_ids()
        .map_err(|e| format!("reading {what}'s maps: {e}"))?
        .unwrap_or_default();
    let [map_id] = maps[..] else {
        return unusable(format!(
            "{what} is named {DISPATCHER_PROGRAM} but has {} maps, not libxdp's one",
            maps.len()
        ));
    };
    let minfo =
        MapInfo::from_id(map_id).map_err(|e| format!("reading {what}'s config map: {e}"))?;
    if minfo.value_size() != std::mem::size_of::<DispatcherConfig>() as u32 {
        return unusable(other_version(&what, version_of_size(minfo.value_size())));
    }
    if minfo.key_size() != 4
        || minfo.max_entries() != 1
        || minfo.map_flags() & BPF_F_RDONLY_PROG == 0
    {
        return unusable(format!("{what}'s config map is not libxdp's"));
    }
    let map = MapData::from_id(map_id).map_err(|e| format!("opening {what}'s config: {e}"))?;
    let array: Array<MapData, DispatcherConfig> =
        Array::try_from(Map::Array(map)).map_err(|e| format!("{what}'s config: {e}"))?;
    let config = array
        .get(&0, 0)
        .map_err(|e| format!("reading {what}'s config: {e}"))?;
    if config.magic != MAGIC || config.dispatcher_version != VERSION {
        return unusable(other_version(
            &what,
            &format!("{} (magic {})", config.dispatcher_version, config.magic),
        ));
    }
    let dir = dispatch_dir(ifindex, id);
    let mut components = Vec::new();
    for i in 0..usize::from(config.num_progs_enabled).min(MAX_PROGRAMS) {
        let pin = dir.join(format!("prog{i}-prog"));
        let ext = match Extension::from_pin(&pin) {
            Ok(ext) => ext,
            Err(e) => {
                return unusable(format!(
                    "the pins of its dispatcher {id} are missing or unreadable ({}: {e}): it was loaded with another bpffs (LIBXDP_BPFFS) or its pins were removed; `xdp-loader unload --all` the interface's programs and load them again",
                    pin.display()
                ));
            }
        };
        let pinfo = ext
            .info()
            .map_err(|e| format!("reading {}: {e}", pin.display()))?;
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
        fd: info
            .fd()
            .map_err(|e| format!("opening dispatcher {id}: {e}"))?,
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
    // Boxed: a component carries its program's data, the new one a reference.
    Old(Box<Component>),
    New(&'b mut Ours<'a>),
}

impl Member<'_, '_> {
    /// libxdp's order (`cmp_xdp_programs`): run priority, then name, then a loaded program
    /// before one not yet loaded, then tag.
    fn key(&self) -> (u32, &str, bool, u64) {
        match self {
            Self::Old(c) => (c.priority, &c.name, false, c.tag),
            // Loaded already (into another interface's dispatcher): sorted as loaded.
            Self::New(n) => (n.priority, n.name, n.ext.fd().is_err(), 0),
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
    /// A component `is_ours` named was swapped out (a previous run's guard).
    pub replaced: bool,
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

/// How often a change starts over when another loader changed the dispatcher between our
/// read and our swap (libxdp holds its lock only while it pins, not over its swap).
const TRIES: u32 = 10;

/// Puts `ours` into the dispatcher on `ifindex` (building one if the interface runs nothing,
/// in the first of `modes` the driver takes), in place of every component `is_ours` names (a
/// previous run's guard): one atomic swap, so there is no moment without the guard and the
/// other programs. With `ours` None, only takes out what `is_ours` names (and detaches the
/// dispatcher if nothing is left). Returns what runs there now; None if nothing does, or
/// (without `ours`) if nothing there was ours.
///
/// # Errors
/// When the interface runs a program that is not a dispatcher (or one of another version),
/// the dispatcher is full, the kernel refuses an freplace program (some kernels do, e.g. under
/// lockdown), or other loaders kept changing the dispatcher; each says what to do.
pub fn change(
    ifindex: u32,
    mut ours: Option<&mut Ours>,
    is_ours: &dyn Fn(&Component) -> bool,
    modes: &[XdpMode],
) -> Result<Option<Joined>, String> {
    let mut last = String::new();
    for attempt in 0..TRIES {
        let lock = Lock::acquire(CHANGE_PATIENCE)?;
        match attempt_change(ifindex, ours.as_deref_mut(), is_ours, modes) {
            Err(Change::Raced(why)) => {
                drop(lock);
                last = why;
                std::thread::sleep(std::time::Duration::from_millis(10 << attempt.min(5)));
            }
            Err(Change::Failed(why)) => return Err(why),
            Ok(j) => return Ok(j),
        }
    }
    Err(format!(
        "another loader kept changing the interface's dispatcher ({TRIES} tries; the last: {last}): try again when it is done"
    ))
}

enum Change {
    /// Another loader swapped the dispatcher after we read it: start over.
    Raced(String),
    Failed(String),
}

impl From<String> for Change {
    fn from(s: String) -> Self {
        Self::Failed(s)
    }
}

/// The slot function of component `i` of `n`: libxdp (1.2+) has a lone program replace the
/// dispatcher's own function, which saves the call and the chain-call check.
fn slot_function(i: usize, n: usize) -> String {
    if n == 1 {
        DISPATCHER_PROGRAM.to_string()
    } else {
        format!("prog{i}")
    }
}

/// Loads libxdp's dispatcher object with `config`, and its program: the object, the
/// program's descriptor and its id.
fn load_dispatcher(config: &DispatcherConfig) -> Result<(aya::Ebpf, ProgramFd, u32), String> {
    let object = object_path()?;
    let mut loaded = EbpfLoader::new()
        .override_global("conf", config, true)
        .load_file(&object)
        .map_err(|e| {
            if format!("{e:?}").contains("InvalidGlobalData") {
                other_version(
                    &object.display().to_string(),
                    "other than 2 (its config is not the 124 bytes of version 2)",
                )
            } else {
                format!(
                    "loading {}: {}",
                    object.display(),
                    crate::rpc::error_chain(&e)
                )
            }
        })?;
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
    let id = dispatcher.info().map_err(|e| e.to_string())?.id();
    Ok((loaded, fd, id))
}

fn attempt_change(
    ifindex: u32,
    ours: Option<&mut Ours>,
    is_ours: &dyn Fn(&Component) -> bool,
    modes: &[XdpMode],
) -> Result<Option<Joined>, Change> {
    let old = match read(ifindex)? {
        OnIface::Nothing => None,
        OnIface::Other { id, name } => {
            return Err(Change::Failed(format!(
                "it runs XDP program {id} ({name:?}), which is not libxdp's dispatcher, and the guard does not replace it: load that program through libxdp (xdp-loader) so the guard can join it, put the guard into the program array it tail-calls ([datapath] chain), or unload it"
            )));
        }
        OnIface::Unusable { why, .. } => return Err(Change::Failed(why)),
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
                    .map(|c| Member::Old(Box::new(c))),
            );
            (Some(d.fd), d.id, Some(d.mode))
        }
        None => (None, 0, None),
    };
    let replaced = members.len() < kept_of;
    let adding = ours.is_some();
    if let Some(n) = ours {
        members.push(Member::New(n));
    }
    if members.len() > MAX_PROGRAMS {
        let names: Vec<String> = members
            .iter()
            .filter_map(|m| match m {
                Member::Old(c) => Some(format!("{} ({})", c.name, c.priority)),
                Member::New(_) => None,
            })
            .collect();
        return Err(Change::Failed(format!(
            "its dispatcher already runs {MAX_PROGRAMS} programs, the most one holds: {}. Unload one (`xdp-loader unload -i ID`)",
            names.join(", ")
        )));
    }
    members.sort_by(order);

    if !adding && !replaced {
        // Nothing of ours there: nothing to change.
        return Ok(None);
    }
    if members.is_empty() {
        let (Some(old_fd), Some(mode)) = (old_fd, old_mode) else {
            return Ok(None);
        };
        if let Err(e) = netlink::set_xdp(
            ifindex,
            -1,
            mode.flag() | netlink::XDP_FLAGS_REPLACE,
            Some(old_fd.as_fd().as_raw_fd()),
        ) {
            let why = format!("detaching its dispatcher {old_id}: {e}");
            return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                Change::Raced(why)
            } else {
                Change::Failed(why)
            });
        }
        unpin_dir(&dispatch_dir(ifindex, old_id));
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
    // Kept to the end: the object's maps stay with the dispatcher until it is attached.
    let (_loaded, fd, id) = load_dispatcher(&config)?;
    let dir = dispatch_dir(ifindex, id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;

    let linked = (|| -> Result<(), String> {
        for (i, m) in members.iter_mut().enumerate() {
            let slot = slot_function(i, n);
            let (ext, name): (&mut Extension, String) = match m {
                Member::Old(c) => (&mut c.ext, c.name.clone()),
                Member::New(o) => {
                    if o.ext.fd().is_err() {
                        let target = fd.try_clone().map_err(|e| e.to_string())?;
                        o.ext.load(target, &slot).map_err(|e| refused(o.name, &e))?;
                    }
                    (&mut *o.ext, o.name.to_string())
                }
            };
            let link = ext.attach_to_program(&fd, &slot).map_err(|e| {
                format!(
                    "linking {name} into the dispatcher's {slot}: {}",
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
        return Err(Change::Failed(e));
    }

    let raw = fd.as_fd().as_raw_fd();
    let swapped = match (&old_fd, old_mode) {
        (Some(old), Some(mode)) => netlink::set_xdp(
            ifindex,
            raw,
            mode.flag() | netlink::XDP_FLAGS_REPLACE,
            Some(old.as_fd().as_raw_fd()),
        )
        .map(|()| mode)
        .map_err(|e| {
            let why = format!("swapping in dispatcher {id} for {old_id}: {e}");
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Change::Raced(why)
            } else {
                Change::Failed(frags_hint(why))
            }
        }),
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
                    // Another loader attached first: start over and join it.
                    Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {
                        errors.push(format!("{} mode: {e}", m.name()));
                        break;
                    }
                    Err(e) => errors.push(format!("{} mode: {e}", m.name())),
                }
            }
            done.ok_or_else(|| {
                let why = format!("attaching dispatcher {id}: {}", errors.join("; "));
                if netlink::query(ifindex)
                    .ok()
                    .and_then(|s| s.main())
                    .is_some()
                {
                    Change::Raced(why)
                } else {
                    Change::Failed(why)
                }
            })
        }
    };
    let mode = match swapped {
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
        replaced,
        order: members
            .iter()
            .map(|m| match m {
                Member::Old(c) => (c.name.clone(), c.priority),
                Member::New(o) => (o.name.to_string(), o.priority),
            })
            .collect(),
    }))
}

/// Why the kernel would not load the guard's component, and what to do.
fn refused(name: &str, e: &aya::programs::ProgramError) -> String {
    let chain = crate::rpc::error_chain(e);
    if chain.contains("Operation not permitted") || chain.contains("os error 1)") {
        format!(
            "this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs, which libxdp's dispatcher needs ({name}: {chain}); kernels in lockdown do. Put the guard into a root program's array ([datapath] chain), or give it an interface of its own (attach = \"direct\")"
        )
    } else {
        format!("loading {name} as an freplace program of the dispatcher: {chain}")
    }
}

/// A swap the kernel refused for a reason the frags rule explains.
fn frags_hint(why: String) -> String {
    if why.contains("Invalid argument") {
        format!(
            "{why} (a dispatcher of programs that all take multi-buffer frames goes on an interface whose MTU needs them only; the guard's component does not take them)"
        )
    } else {
        why
    }
}

/// Removes the pins of dispatchers that no interface runs any more (their interface was deleted:
/// the kernel detached them, and their pinned links keep them and their components loaded)
/// but that hold one of our components (`is_ours(id, map ids)`). Another loader's dispatchers
/// are not touched. Returns the directories removed.
pub fn sweep_stale(is_ours: &dyn Fn(u32, &[u32]) -> bool) -> Vec<PathBuf> {
    let Ok(_lock) = Lock::acquire(CHANGE_PATIENCE) else {
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
/// dispatcher mode. Read under libxdp's lock, so that a swap another loader makes is not
/// seen half done (its new dispatcher attached, the old one's pins not yet removed). Returns
/// the dispatcher's id, mode and the components' order.
///
/// # Errors
/// Why not, for the log.
pub fn holds(ifindex: u32, prog_id: u32) -> Result<Joined, String> {
    // Without the lock if another loader holds it long: a read that may see a swap half
    // done beats no answer.
    let _lock = Lock::acquire(CHECK_PATIENCE).ok();
    match read(ifindex)? {
        OnIface::Nothing => Err("the interface runs no XDP program".to_string()),
        OnIface::Other { id, name } => Err(format!(
            "the interface runs program {id} ({name:?}) instead of a dispatcher"
        )),
        OnIface::Unusable { why, .. } => Err(why),
        OnIface::Dispatcher(d) => {
            let joined = Joined {
                dispatcher: d.id,
                mode: d.mode,
                replaced: false,
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
    let config = DispatcherConfig {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: 1,
        ..Default::default()
    };
    let (_loaded, fd, _) = load_dispatcher(&config)?;
    ext.load(fd, DISPATCHER_PROGRAM)
        .map_err(|e| refused(guard_common::map_names::EXT_PROGRAM, &e))
}
