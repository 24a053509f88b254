//! The embedded XDP object: loading it, attaching it (native, falling back to generic), pinning
//! it so protection survives the daemon, adopting a previous run's pins, and the map access.
use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, LpmTrie, MapData, MapError, MapType, PerCpuArray, RingBuf, lpm_trie::Key,
    },
    programs::{
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use guard_common::{
    Ban, BanEvent, Config, Counters, CpuState, FLAG_CACHE_V4, FLAG_CACHE_V6, FLAG_HAS_ALLOW_V4,
    FLAG_HAS_ALLOW_V6, FLAG_HAS_DENY_V4, FLAG_HAS_DENY_V6, FLAG_HAS_PBAN_V4, FLAG_HAS_PBAN_V6,
    FLAG_LIST_HINTS, FLAG_SEEN_FILTER, FLAG_SEEN_HALF, FLAG_SERVICES, Gcra, Known, LAYOUT_VERSION,
    LIST_HINT_BITS, ListEntry, PROGRAM_NAME, PrefixState, Service, ServiceStats, SourceKey,
    SourceState, capacity, map_names,
};

use crate::{
    cidr::Cidr,
    datapath::{Datapath, DatapathError, List, ServiceProto},
    seen::SeenFilter,
};

/// The compiled guard-ebpf object, embedded at build time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard.bpf.o"));

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) XDP, falling back to generic where the driver has none.
    Auto,
    Native,
    Generic,
}

pub struct StartOptions {
    pub interfaces: Vec<String>,
    pub mode: AttachMode,
    /// Pin directory root, e.g. /sys/fs/bpf/guard; state lives in its `v<LAYOUT_VERSION>/`.
    pub pin_dir: PathBuf,
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "native" or "generic".
    pub mode: String,
    /// True if the attachment was adopted from a previous run's pins (and its program
    /// replaced in place, with no gap in protection).
    pub adopted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this guard binary was built without its XDP program: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("loading the XDP object failed")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {PROGRAM_NAME:?} or map {0:?}")]
    Missing(&'static str),
    #[error("the kernel rejected the XDP program (verifier or permissions; are you root?)")]
    Program(#[source] ProgramError),
    #[error("interface {iface:?} does not exist")]
    NoInterface { iface: String },
    #[error("attaching to {iface} in {mode} mode failed")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting bpffs at {BPFFS} failed")]
    Mount(#[source] io::Error),
    #[error("{0}")]
    Link(String),
}

/// The loaded program with its maps.
pub struct Loaded {
    pub datapath: KernelDatapath,
    pub attachments: Vec<Attachment>,
}

/// The versioned directory that holds this layout's pins.
pub fn versioned_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join(format!("v{LAYOUT_VERSION}"))
}

/// Mounts bpffs at /sys/fs/bpf unless something is mounted there already.
///
/// # Errors
/// When the mount fails (not root, or no bpffs in this kernel).
pub fn ensure_bpffs() -> Result<(), LoadError> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| LoadError::Io {
        op: "read",
        path: "/proc/self/mounts".into(),
        source,
    })?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some(BPFFS) && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(LoadError::Mount)?;
    let src = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::Mount(io::Error::last_os_error()));
    }
    Ok(())
}

/// `BPF_F_MMAPABLE`, the seen filter's map flag.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// What each map must look like to be reused: type, key size, value size, capacity.
fn expected_layout(name: &str) -> Option<(MapType, u32, u32, u32)> {
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
        _ => return None,
    })
}

/// True if every pinned map under `dir` matches the layout this binary expects.
fn pins_compatible(dir: &Path) -> Result<bool, String> {
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

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LoadError + use<> {
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
    let (object, kfunc) = crate::cookies::patch_kfunc(OBJECT);
    let mut ebpf = loader.load(&object).map_err(LoadError::Load)?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoadError::Missing("program"))?
        .try_into()
        .map_err(LoadError::Program)?;
    program.load().map_err(LoadError::Program)?;
    let cookies = crate::cookies::load_stages(&mut ebpf, kfunc);
    match &cookies {
        Ok(()) => log::debug!("SYN cookies at the NIC: available"),
        Err(why) => log::info!("SYN cookies at the NIC are unavailable: {why}"),
    }
    let mut dp = KernelDatapath::new(ebpf)?;
    dp.cookies = cookies;
    Ok(dp)
}

fn if_index(iface: &str) -> Option<u32> {
    let c = std::ffi::CString::new(iface).ok()?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// The pin file name of `iface`'s link: `<iface>@<mode>`, with `.`, `%` and `@` in the
/// interface name percent-encoded (bpffs refuses names with a dot, and `eth0.100` is the
/// usual name of a VLAN interface).
pub fn link_pin_name(iface: &str, mode: &str) -> String {
    let mut name = String::with_capacity(iface.len() + mode.len() + 1);
    for c in iface.chars() {
        match c {
            '.' => name.push_str("%2E"),
            '%' => name.push_str("%25"),
            '@' => name.push_str("%40"),
            c => name.push(c),
        }
    }
    name.push('@');
    name.push_str(mode);
    name
}

/// The interface and mode a link pin file name holds (the inverse of `link_pin_name`).
pub fn parse_link_pin_name(name: &str) -> Option<(String, String)> {
    let (encoded, mode) = name.rsplit_once('@')?;
    let mut iface = String::with_capacity(encoded.len());
    let mut rest = encoded;
    while let Some(i) = rest.find('%') {
        iface.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        iface.push(char::from(u8::from_str_radix(code, 16).ok()?));
        rest = &rest[i + 3..];
    }
    iface.push_str(rest);
    Some((iface, mode.to_string()))
}

/// The pinned links under `links_dir`: (interface, mode, pin path).
pub fn link_pins(links_dir: &Path) -> Vec<(String, String, PathBuf)> {
    let Ok(rd) = fs::read_dir(links_dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| {
            let (iface, mode) = parse_link_pin_name(e.file_name().to_str()?)?;
            Some((iface, mode, e.path()))
        })
        .collect()
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
            log::warn!(
                "pinned state under {} does not match this version's layout; replacing it",
                dir.display()
            );
            remove_pins(&dir)?;
        }
    }
    let mut datapath = load(Some(&dir))?;
    let links_dir = dir.join("links");
    fs::create_dir_all(&links_dir).map_err(io_err("create", &links_dir))?;
    migrate_older_layouts(&opts.pin_dir, &links_dir)?;
    let pinned = link_pins(&links_dir);
    let mut attachments = Vec::new();
    for iface in &opts.interfaces {
        let ifindex = if_index(iface).ok_or_else(|| LoadError::NoInterface {
            iface: iface.clone(),
        })?;
        let program = datapath.program_mut()?;
        if let Some((_, mode, path)) = pinned.iter().find(|(i, _, _)| i == iface) {
            // Adopt only a link still on this interface (not one severed by the interface
            // going away and coming back under the same name) in the mode asked for.
            let on_iface = crate::xdp_link::link_ifindex(path).ok().flatten() == Some(ifindex);
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
                    });
                    continue;
                }
                Err(why) => {
                    log::warn!(
                        "not adopting the pinned link {} ({why}); attaching afresh",
                        path.display()
                    );
                    fs::remove_file(path).map_err(io_err("remove", path))?;
                }
            }
        }
        let tries: &[(XdpMode, &str)] = match opts.mode {
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
                    log::info!("{iface}: {label} XDP unavailable: {e}");
                    last_err = Some((*label, e));
                }
            }
        }
        let Some((id, label)) = done else {
            let (mode, source) = last_err.expect("at least one mode was tried");
            return Err(LoadError::Attach {
                iface: iface.clone(),
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
        attachments.push(Attachment {
            iface: iface.clone(),
            ifindex,
            mode: label.to_string(),
            adopted: false,
        });
    }
    // Interfaces a previous run attached to but that are no longer configured.
    for (iface, _, path) in &pinned {
        if !opts.interfaces.contains(iface) {
            log::info!("{iface}: no longer configured; detaching");
            fs::remove_file(path).map_err(io_err("remove", path))?;
        }
    }
    Ok(Loaded {
        datapath,
        attachments,
    })
}

/// An upgrade from an older layout (`<pin_dir>/v<N>` with N below this one): its pinned links
/// move into this layout's `links/`, where `start` adopts them like its own and swaps the new
/// program in (`BPF_LINK_UPDATE`), so no interface is ever left without the guard; its maps are
/// unpinned (the daemon restores the lists and bans from the state file). Returns the
/// interfaces whose links moved.
fn migrate_older_layouts(pin_dir: &Path, links_dir: &Path) -> Result<Vec<String>, LoadError> {
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
        log::warn!(
            "upgraded the pins of layout v{version} under {}: {} link(s) adopted, its maps removed (lists and bans come from the state file)",
            old.display(),
            moved.len()
        );
    }
    Ok(moved)
}

fn remove_pins(dir: &Path) -> Result<Vec<String>, LoadError> {
    let mut detached = Vec::new();
    for (iface, _, path) in link_pins(&dir.join("links")) {
        fs::remove_file(&path).map_err(io_err("remove", &path))?;
        detached.push(iface);
    }
    for sub in ["links", "maps"] {
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

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |e| DatapathError::Map {
        map,
        op,
        source: Box::new(e),
    }
}

/// The data plane through its maps.
pub struct KernelDatapath {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    config_slot: Array<MapData, u32>,
    stats: PerCpuArray<MapData, Counters>,
    allow_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    allow_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    deny_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    deny_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    pbans_v4: LpmTrie<MapData, [u8; 4], ListEntry>,
    pbans_v6: LpmTrie<MapData, [u8; 16], ListEntry>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    bans: HashMap<MapData, SourceKey, Ban>,
    events: RingBuf<MapData>,
    known: HashMap<MapData, SourceKey, Known>,
    service_ports: Array<MapData, u32>,
    services: Array<MapData, Service>,
    service_stats: PerCpuArray<MapData, ServiceStats>,
    /// The config as last set, without the list hints and derived fields.
    base: Config,
    /// `FLAG_HAS_*` bits of the lists known to have entries (see `guard_common::LIST_HINT_BITS`).
    hints: u32,
    /// The longest IPv4 and IPv6 list prefixes ever inserted since load (never lowered on a
    /// removal: a stale high value only turns the verdict cache off, never on wrongly).
    max_prefix: [u8; 2],
    /// `Config::lists_gen`, bumped on every list change.
    lists_gen: u64,
    /// The `CONFIG` slot in force, and when it was made so.
    slot: u32,
    flipped: Option<std::time::Instant>,
    /// `SERVICE_PORTS` indexes set to a service (to clear on the next mapping).
    mapped_ports: Vec<u32>,
    /// Possible CPUs: budgets enforced per CPU are shared out among them.
    cpus: u32,
    /// Whether the SYN-cookie stages loaded (and why not).
    cookies: Result<(), String>,
    /// `GUARD_SEEN`, mapped: bits set before every insert into the tracker, `BANS` or
    /// `KNOWN` from here, and rebuilt by `refresh_seen`.
    seen: SeenFilter,
}

type V4Trie = LpmTrie<MapData, [u8; 4], ListEntry>;
type V6Trie = LpmTrie<MapData, [u8; 16], ListEntry>;
type Tries<'a> = (&'a V4Trie, &'a V6Trie, &'static str, &'static str);
type TriesMut<'a> = (
    &'a mut V4Trie,
    &'a mut V6Trie,
    (&'static str, u32),
    (&'static str, u32),
);

/// Which LPM trie pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trie {
    Allow,
    Deny,
    PrefixBan,
}

impl From<List> for Trie {
    fn from(l: List) -> Self {
        match l {
            List::Allow => Self::Allow,
            List::Deny => Self::Deny,
        }
    }
}

/// A program run can last at most microseconds (XDP runs with preemption off), so once the
/// config slot index has flipped and this much time passed, no run still reads the old slot.
const SLOT_GRACE: std::time::Duration = std::time::Duration::from_millis(2);

impl KernelDatapath {
    fn new(mut ebpf: Ebpf) -> Result<Self, LoadError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, LoadError> {
            let map = ebpf.take_map(name).ok_or(LoadError::Missing(name))?;
            T::try_from(map).map_err(|source| LoadError::Map { map: name, source })
        }
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| LoadError::Io {
            op: "read",
            path: path.into(),
            source,
        })? as u32;
        Ok(Self {
            config: take(&mut ebpf, map_names::CONFIG)?,
            config_slot: take(&mut ebpf, map_names::CONFIG_SLOT)?,
            stats: take(&mut ebpf, map_names::STATS)?,
            allow_v4: take(&mut ebpf, map_names::ALLOW_V4)?,
            allow_v6: take(&mut ebpf, map_names::ALLOW_V6)?,
            deny_v4: take(&mut ebpf, map_names::DENY_V4)?,
            deny_v6: take(&mut ebpf, map_names::DENY_V6)?,
            pbans_v4: take(&mut ebpf, map_names::PREFIX_BANS_V4)?,
            pbans_v6: take(&mut ebpf, map_names::PREFIX_BANS_V6)?,
            sources: take(&mut ebpf, map_names::SOURCES)?,
            bans: take(&mut ebpf, map_names::BANS)?,
            events: take(&mut ebpf, map_names::EVENTS)?,
            known: take(&mut ebpf, map_names::KNOWN)?,
            service_ports: take(&mut ebpf, map_names::SERVICE_PORTS)?,
            services: take(&mut ebpf, map_names::SERVICES)?,
            service_stats: take(&mut ebpf, map_names::SERVICE_STATS)?,
            seen: {
                let map = ebpf
                    .take_map(map_names::SEEN)
                    .ok_or(LoadError::Missing(map_names::SEEN))?;
                let aya::maps::Map::Array(data) = map else {
                    return Err(LoadError::Link(format!(
                        "{} is not an array map",
                        map_names::SEEN
                    )));
                };
                SeenFilter::new(data).map_err(|source| LoadError::Io {
                    op: "mmap",
                    path: map_names::SEEN.into(),
                    source,
                })?
            },
            ebpf,
            base: Config::default(),
            hints: 0,
            max_prefix: [0, 0],
            lists_gen: 0,
            slot: 0,
            flipped: None,
            mapped_ports: Vec::new(),
            cpus: cpus.max(1),
            cookies: Err("not loaded".to_string()),
        })
        .and_then(|mut dp| {
            // Adopted maps keep their config and entries: start from them.
            let slot = dp.config_slot.get(&0, 0).map_err(|source| LoadError::Map {
                map: map_names::CONFIG_SLOT,
                source,
            })? & 1;
            let current = dp.config.get(&slot, 0).map_err(|source| LoadError::Map {
                map: map_names::CONFIG,
                source,
            })?;
            dp.slot = slot;
            dp.base = user_view(&current);
            // An adopted filter half stays the one the program reads until the other is
            // rebuilt below.
            dp.seen
                .flipped(current.flags & (FLAG_SEEN_FILTER | FLAG_SEEN_HALF));
            // Continue the adopted generation: the pinned tracker holds verdicts cached under
            // every generation up to it.
            dp.lists_gen = current.lists_gen + 1;
            for bit in [
                FLAG_HAS_ALLOW_V4,
                FLAG_HAS_ALLOW_V6,
                FLAG_HAS_DENY_V4,
                FLAG_HAS_DENY_V6,
                FLAG_HAS_PBAN_V4,
                FLAG_HAS_PBAN_V6,
            ] {
                if dp.trie_has_entries(bit) {
                    dp.hints |= bit;
                }
            }
            // The ports an adopted mapping points at a service.
            dp.mapped_ports = dp
                .service_ports
                .iter()
                .filter_map(Result::ok)
                .enumerate()
                .filter(|(_, slot)| *slot != 0)
                .map(|(i, _)| i as u32)
                .collect();
            // The adopted entries' longest prefixes decide whether the verdict cache may be on.
            let longest = |keys: &mut dyn Iterator<Item = u32>| keys.max().unwrap_or(0) as u8;
            dp.max_prefix = [
                longest(
                    &mut dp
                        .allow_v4
                        .keys()
                        .chain(dp.deny_v4.keys())
                        .chain(dp.pbans_v4.keys())
                        .filter_map(Result::ok)
                        .map(|k| k.prefix_len()),
                ),
                longest(
                    &mut dp
                        .allow_v6
                        .keys()
                        .chain(dp.deny_v6.keys())
                        .chain(dp.pbans_v6.keys())
                        .filter_map(Result::ok)
                        .map(|k| k.prefix_len()),
                ),
            ];
            dp.write_config()
                .map_err(|e| LoadError::Link(e.to_string()))?;
            Datapath::refresh_seen(&mut dp).map_err(|e| LoadError::Link(e.to_string()))?;
            Ok(dp)
        })
    }

    /// How full the seen filter's half in use is (bits set, of all), and whether it is in use.
    pub fn seen_fill(&self) -> Option<f64> {
        (self.seen.flags() != 0).then(|| self.seen.fill())
    }

    /// Possible CPUs, among which the per-CPU budgets are shared out.
    pub fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Whether SYN cookies at the NIC can be used: both stages loaded, or why not.
    pub fn cookie_support(&self) -> Result<(), &str> {
        self.cookies.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Runs the program once on `packet` and returns its action and the frame as the program
    /// left it (a SYN-ACK it built, say).
    ///
    /// # Errors
    /// When the kernel refuses the test run.
    pub fn test_run_out(&mut self, packet: &[u8]) -> Result<(u32, Vec<u8>), ProgramError> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let result = self.program()?.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Does the trie behind hint `bit` hold any entry? (One BPF_MAP_GET_NEXT_KEY.)
    fn trie_has_entries(&self, bit: u32) -> bool {
        match bit {
            FLAG_HAS_ALLOW_V4 => self.allow_v4.keys().next().is_some(),
            FLAG_HAS_ALLOW_V6 => self.allow_v6.keys().next().is_some(),
            FLAG_HAS_DENY_V4 => self.deny_v4.keys().next().is_some(),
            FLAG_HAS_DENY_V6 => self.deny_v6.keys().next().is_some(),
            FLAG_HAS_PBAN_V4 => self.pbans_v4.keys().next().is_some(),
            FLAG_HAS_PBAN_V6 => self.pbans_v6.keys().next().is_some(),
            _ => true,
        }
    }

    /// Writes the config with the list hints (which let the program skip lookups of empty
    /// lists) and the derived GCRA parameters. The hint for a list is set after its first
    /// entry is in, and cleared after its last is out, so the program never skips a list that
    /// has entries.
    ///
    /// The write goes to the slot not in use, and the slot index flips after it, so a packet
    /// reads either the whole old config or the whole new one (never a mix, such as a new
    /// lists generation with old cache flags). Before a slot is written again, `SLOT_GRACE`
    /// has passed since it was last in use.
    fn write_config(&mut self) -> Result<(), DatapathError> {
        let b = &self.base;
        // The verdict cache is sound only if every list entry covers whole tracked sources.
        let v4_track = if b.v4_prefix_len == 0 {
            32
        } else {
            b.v4_prefix_len
        };
        let v6_track = if b.v6_prefix_len == 0 {
            64
        } else {
            b.v6_prefix_len
        };
        let mut cache = 0;
        if u32::from(self.max_prefix[0]) <= v4_track {
            cache |= FLAG_CACHE_V4;
        }
        if u32::from(self.max_prefix[1]) <= v6_track {
            cache |= FLAG_CACHE_V6;
        }
        let services = if self.mapped_ports.is_empty() {
            0
        } else {
            FLAG_SERVICES
        };
        let pkt = Gcra::new(b.pps, b.burst);
        let syn = Gcra::new(b.syn_pps, b.syn_burst);
        let prefix = Gcra::new(b.prefix_pps, b.prefix_burst);
        // Enforced per CPU: each CPU gets its share of the rate (and the whole burst).
        let malformed = if b.malformed_pps == 0 {
            Gcra::default()
        } else {
            Gcra::from_f64(
                b.malformed_pps as f64 / f64::from(self.cpus),
                b.malformed_burst,
            )
        };
        let cfg = Config {
            flags: b.flags | FLAG_LIST_HINTS | self.hints | cache | services | self.seen.flags(),
            lists_gen: self.lists_gen,
            pkt_interval_ns: pkt.interval_ns,
            pkt_tolerance_ns: pkt.tolerance_ns,
            syn_interval_ns: syn.interval_ns,
            syn_tolerance_ns: syn.tolerance_ns,
            prefix_interval_ns: prefix.interval_ns,
            prefix_tolerance_ns: prefix.tolerance_ns,
            malformed_interval_ns: malformed.interval_ns,
            malformed_tolerance_ns: malformed.tolerance_ns,
            ..*b
        };
        if let Some(at) = self.flipped {
            let since = at.elapsed();
            if since < SLOT_GRACE {
                std::thread::sleep(SLOT_GRACE - since);
            }
        }
        let next = self.slot ^ 1;
        self.config
            .set(next, cfg, 0)
            .map_err(map_err(map_names::CONFIG, "write"))?;
        self.config_slot
            .set(0, next, 0)
            .map_err(map_err(map_names::CONFIG_SLOT, "write"))?;
        self.slot = next;
        self.flipped = Some(std::time::Instant::now());
        Ok(())
    }

    fn hint_bit(trie: Trie, cidr: &Cidr) -> u32 {
        match (trie, cidr.is_ipv4()) {
            (Trie::Allow, true) => FLAG_HAS_ALLOW_V4,
            (Trie::Allow, false) => FLAG_HAS_ALLOW_V6,
            (Trie::Deny, true) => FLAG_HAS_DENY_V4,
            (Trie::Deny, false) => FLAG_HAS_DENY_V6,
            (Trie::PrefixBan, true) => FLAG_HAS_PBAN_V4,
            (Trie::PrefixBan, false) => FLAG_HAS_PBAN_V6,
        }
    }

    /// A trie pair with the maps' names.
    fn tries(&self, trie: Trie) -> Tries<'_> {
        match trie {
            Trie::Allow => (
                &self.allow_v4,
                &self.allow_v6,
                map_names::ALLOW_V4,
                map_names::ALLOW_V6,
            ),
            Trie::Deny => (
                &self.deny_v4,
                &self.deny_v6,
                map_names::DENY_V4,
                map_names::DENY_V6,
            ),
            Trie::PrefixBan => (
                &self.pbans_v4,
                &self.pbans_v6,
                map_names::PREFIX_BANS_V4,
                map_names::PREFIX_BANS_V6,
            ),
        }
    }

    /// A trie pair with the maps' names and capacities.
    fn tries_mut(&mut self, trie: Trie) -> TriesMut<'_> {
        match trie {
            Trie::Allow => (
                &mut self.allow_v4,
                &mut self.allow_v6,
                (map_names::ALLOW_V4, capacity::ALLOW_V4),
                (map_names::ALLOW_V6, capacity::ALLOW_V6),
            ),
            Trie::Deny => (
                &mut self.deny_v4,
                &mut self.deny_v6,
                (map_names::DENY_V4, capacity::DENY_V4),
                (map_names::DENY_V6, capacity::DENY_V6),
            ),
            Trie::PrefixBan => (
                &mut self.pbans_v4,
                &mut self.pbans_v6,
                (map_names::PREFIX_BANS_V4, capacity::PREFIX_BANS_V4),
                (map_names::PREFIX_BANS_V6, capacity::PREFIX_BANS_V6),
            ),
        }
    }

    /// Inserts a trie entry and notes what the program's hints need to know; the change is
    /// published by `publish_list_change`.
    fn insert_raw(
        &mut self,
        trie: Trie,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        // The program needs each entry's own prefix to look past it once it expires.
        let entry = ListEntry {
            prefix_len: u32::from(cidr.prefix()),
            ..entry
        };
        let (v4, v6, n4, n6) = self.tries_mut(trie);
        match (v4_key(cidr), v6_key(cidr)) {
            (Some(k), _) => v4.insert(&k, entry, 0).map_err(insert_err(n4.0, n4.1)),
            (_, Some(k)) => v6.insert(&k, entry, 0).map_err(insert_err(n6.0, n6.1)),
            (None, None) => unreachable!("a CIDR is IPv4 or IPv6"),
        }?;
        self.hints |= Self::hint_bit(trie, cidr);
        let family = usize::from(!cidr.is_ipv4());
        self.max_prefix[family] = self.max_prefix[family].max(cidr.prefix());
        Ok(())
    }

    fn remove_raw(&mut self, trie: Trie, cidr: &Cidr) -> Result<bool, DatapathError> {
        let (v4, v6, n4, n6) = self.tries_mut(trie);
        let removed = match (v4_key(cidr), v6_key(cidr)) {
            (Some(k), _) => absent_ok(v4.remove(&k), n4.0),
            (_, Some(k)) => absent_ok(v6.remove(&k), n6.0),
            (None, None) => unreachable!("a CIDR is IPv4 or IPv6"),
        }?;
        if removed {
            let bit = Self::hint_bit(trie, cidr);
            if !self.trie_has_entries(bit) {
                self.hints &= !bit;
            }
            self.publish_list_change()?;
        }
        Ok(removed)
    }

    fn entries_raw(&self, trie: Trie) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        let (v4, v6, n4, n6) = self.tries(trie);
        let mut out = Vec::new();
        for item in v4.iter() {
            let (k, v) = item.map_err(map_err(n4, "read"))?;
            let addr = IpAddr::V4(Ipv4Addr::from(k.data()));
            if let Some(c) = Cidr::new(addr, k.prefix_len() as u8) {
                out.push((c, v));
            }
        }
        for item in v6.iter() {
            let (k, v) = item.map_err(map_err(n6, "read"))?;
            let addr = IpAddr::V6(Ipv6Addr::from(k.data()));
            if let Some(c) = Cidr::new(addr, k.prefix_len() as u8) {
                out.push((c, v));
            }
        }
        Ok(out)
    }

    /// Bumps the lists generation, which invalidates every verdict the tracker cached, and
    /// writes the config with the new hints.
    fn publish_list_change(&mut self) -> Result<(), DatapathError> {
        self.lists_gen += 1;
        self.write_config()
    }

    /// Forgets `key`'s tracker entry, so that its next packet reads its ban (and known
    /// status) afresh (the entry caches them).
    fn forget_source(&mut self, key: &SourceKey) -> Result<(), DatapathError> {
        absent_ok(self.sources.remove(key), map_names::SOURCES).map(|_| ())
    }

    fn program_mut(&mut self) -> Result<&mut Xdp, LoadError> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(LoadError::Missing("program"))?
            .try_into()
            .map_err(LoadError::Program)
    }

    fn program(&self) -> Result<&Xdp, ProgramError> {
        self.ebpf
            .program(PROGRAM_NAME)
            .ok_or(ProgramError::NotLoaded)?
            .try_into()
    }

    /// Runs the program once on `packet` (BPF_PROG_TEST_RUN) and returns its XDP action.
    ///
    /// # Errors
    /// When the kernel refuses the test run.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<u32, ProgramError> {
        self.test_run_repeat(packet, 1).map(|(action, _)| action)
    }

    /// Runs the program `repeat` times on `packet`; returns the action and the mean run time.
    ///
    /// # Errors
    /// When the kernel refuses the test run.
    pub fn test_run_repeat(
        &mut self,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(u32, std::time::Duration), ProgramError> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        };
        let result = self.program()?.test_run(opts)?;
        Ok((result.return_value, result.duration))
    }

    /// Runs the program on `packet` from one thread per CPU in `cpus` at once (each pinned to
    /// its CPU), `repeat` times each. BPF_PROG_TEST_RUN runs an XDP program on the calling
    /// thread's CPU, so this races the program against itself on real CPUs. Returns, per
    /// thread, the last action and when its runs began and ended on the program's clock
    /// (CLOCK_MONOTONIC at jiffy grain).
    ///
    /// # Errors
    /// When a thread cannot be pinned or the kernel refuses a test run.
    pub fn test_run_on_cpus(
        &self,
        packet: &[u8],
        cpus: &[usize],
        repeat: u32,
    ) -> Result<Vec<CpuRun>, ProgramError> {
        let program = self.program()?;
        let barrier = std::sync::Barrier::new(cpus.len());
        std::thread::scope(|scope| {
            let runs: Vec<_> = cpus
                .iter()
                .map(|&cpu| {
                    let barrier = &barrier;
                    scope.spawn(move || {
                        pin_to_cpu(cpu).map_err(|e| {
                            ProgramError::SyscallError(aya::sys::SyscallError {
                                call: "sched_setaffinity",
                                io_error: e,
                            })
                        })?;
                        barrier.wait();
                        let opts = TestRunOptions {
                            data_in: Some(packet),
                            repeat,
                            ..TestRunOptions::default()
                        };
                        let started_ns = coarse_now();
                        let action = program.test_run(opts)?.return_value;
                        Ok(CpuRun {
                            action,
                            started_ns,
                            ended_ns: coarse_now(),
                        })
                    })
                })
                .collect();
            runs.into_iter()
                .map(|h| h.join().expect("a test-run thread panicked"))
                .collect()
        })
    }

    /// New bans reported by the program since the last call (non-blocking).
    pub fn take_events(&mut self) -> Vec<BanEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<BanEvent>() {
                // SAFETY: the program writes a whole BanEvent; read_unaligned copes with the
                // ring's 8-byte alignment and BanEvent is Pod.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<BanEvent>()) });
            }
        }
        out
    }
}

/// One thread's share of [`KernelDatapath::test_run_on_cpus`].
#[derive(Clone, Copy, Debug)]
pub struct CpuRun {
    pub action: u32,
    /// CLOCK_MONOTONIC_COARSE (the program's clock) before the first run and after the last.
    pub started_ns: u64,
    pub ended_ns: u64,
}

/// CLOCK_MONOTONIC at jiffy grain: what the program's `bpf_ktime_get_coarse_ns` reads.
fn coarse_now() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A config as userspace set it: no hints, no derived fields.
fn user_view(cfg: &Config) -> Config {
    Config {
        flags: cfg.flags & !(LIST_HINT_BITS | FLAG_SERVICES | FLAG_SEEN_FILTER | FLAG_SEEN_HALF),
        lists_gen: 0,
        pkt_interval_ns: 0,
        pkt_tolerance_ns: 0,
        syn_interval_ns: 0,
        syn_tolerance_ns: 0,
        prefix_interval_ns: 0,
        prefix_tolerance_ns: 0,
        malformed_interval_ns: 0,
        malformed_tolerance_ns: 0,
        ..*cfg
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn v4_key(c: &Cidr) -> Option<Key<[u8; 4]>> {
    match c.addr() {
        IpAddr::V4(a) => Some(Key::new(u32::from(c.prefix()), a.octets())),
        IpAddr::V6(_) => None,
    }
}

fn v6_key(c: &Cidr) -> Option<Key<[u8; 16]>> {
    match c.addr() {
        IpAddr::V6(a) => Some(Key::new(u32::from(c.prefix()), a.octets())),
        IpAddr::V4(_) => None,
    }
}

/// Maps a full-trie insert error to `Full`.
fn insert_err(map: &'static str, capacity: u32) -> impl FnOnce(MapError) -> DatapathError {
    move |e| match &e {
        MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOSPC) => {
            DatapathError::Full { map, capacity }
        }
        _ => DatapathError::Map {
            map,
            op: "insert",
            source: Box::new(e),
        },
    }
}

fn absent_ok(r: Result<(), MapError>, map: &'static str) -> Result<bool, DatapathError> {
    match r {
        Ok(()) => Ok(true),
        Err(MapError::KeyNotFound) => Ok(false),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(map_err(map, "remove")(e)),
    }
}

impl Datapath for KernelDatapath {
    fn now_ns(&self) -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC is bpf_ktime_get_ns's clock.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn config(&self) -> Result<Config, DatapathError> {
        let cfg = self
            .config
            .get(&self.slot, 0)
            .map_err(map_err(map_names::CONFIG, "read"))?;
        // What set_config was given: no hints, no derived fields.
        Ok(user_view(&cfg))
    }

    fn set_config(&mut self, cfg: &Config) -> Result<(), DatapathError> {
        self.base = user_view(cfg);
        self.write_config()
    }

    fn list_insert(
        &mut self,
        list: List,
        cidr: &Cidr,
        entry: ListEntry,
    ) -> Result<(), DatapathError> {
        self.insert_raw(list.into(), cidr, entry)?;
        self.publish_list_change()
    }

    fn list_insert_many(
        &mut self,
        list: List,
        cidrs: &[Cidr],
        entry: ListEntry,
    ) -> Result<(), (usize, DatapathError)> {
        let mut result = Ok(());
        for (i, cidr) in cidrs.iter().enumerate() {
            if let Err(e) = self.insert_raw(list.into(), cidr, entry) {
                result = Err((i, e));
                break;
            }
        }
        // Whatever went in is published, even if the batch stopped early.
        let done = result.as_ref().err().map_or(cidrs.len(), |(i, _)| *i);
        self.publish_list_change().map_err(|e| (done, e))?;
        result
    }

    fn list_remove(&mut self, list: List, cidr: &Cidr) -> Result<bool, DatapathError> {
        self.remove_raw(list.into(), cidr)
    }

    fn list_entries(&self, list: List) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        self.entries_raw(list.into())
    }

    fn bans(&self) -> Result<Vec<(SourceKey, Ban)>, DatapathError> {
        self.bans
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::BANS, "read"))
    }

    fn ban_insert(&mut self, key: &SourceKey, ban: &Ban) -> Result<(), DatapathError> {
        self.seen.mark(key);
        self.bans
            .insert(key, ban, 0)
            .map_err(insert_err(map_names::BANS, capacity::BANS))?;
        self.forget_source(key)
    }

    fn ban_expire(&mut self, key: &SourceKey, now_ns: u64) -> Result<bool, DatapathError> {
        // The program replaces an expired ban when it bans again, so check it still is one.
        match self.bans.get(key, 0) {
            Ok(ban) if ban.expires_ns <= now_ns => {
                absent_ok(self.bans.remove(key), map_names::BANS)
            }
            _ => Ok(false),
        }
    }

    fn ban_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        let removed = absent_ok(self.bans.remove(key), map_names::BANS)?;
        self.forget_source(key)?;
        Ok(removed)
    }

    fn counters(&self) -> Result<Vec<(u32, Counters)>, DatapathError> {
        let mut out = Vec::new();
        for slot in 0..capacity::STATS_SLOTS {
            let per_cpu = self
                .stats
                .get(&slot, 0)
                .map_err(map_err(map_names::STATS, "read"))?;
            let mut sum = Counters::default();
            for c in per_cpu.iter() {
                sum.add(c);
            }
            if sum != Counters::default() {
                out.push((slot, sum));
            }
        }
        Ok(out)
    }

    fn sources(&self) -> Result<Vec<(SourceKey, SourceState)>, DatapathError> {
        // The LRU may evict entries while we walk it; a vanished key is simply skipped.
        Ok(self.sources.iter().filter_map(Result::ok).collect())
    }

    fn prefix_ban_insert(&mut self, cidr: &Cidr, entry: ListEntry) -> Result<(), DatapathError> {
        self.insert_raw(Trie::PrefixBan, cidr, entry)?;
        self.publish_list_change()
    }

    fn prefix_ban_remove(&mut self, cidr: &Cidr) -> Result<bool, DatapathError> {
        self.remove_raw(Trie::PrefixBan, cidr)
    }

    fn prefix_bans(&self) -> Result<Vec<(Cidr, ListEntry)>, DatapathError> {
        self.entries_raw(Trie::PrefixBan)
    }

    fn set_service_ports(
        &mut self,
        ports: &[(ServiceProto, u16, u32)],
    ) -> Result<(), DatapathError> {
        let had = !self.mapped_ports.is_empty();
        let wanted: Vec<u32> = ports
            .iter()
            .map(|(p, port, _)| p.port_slot(*port))
            .collect();
        // New ones first, then the stale ones cleared: a port that stays mapped never reads 0.
        for (proto, port, slot) in ports {
            self.service_ports
                .set(proto.port_slot(*port), *slot, 0)
                .map_err(map_err(map_names::SERVICE_PORTS, "write"))?;
        }
        for old in std::mem::take(&mut self.mapped_ports) {
            if !wanted.contains(&old) {
                self.service_ports
                    .set(old, 0, 0)
                    .map_err(map_err(map_names::SERVICE_PORTS, "write"))?;
            }
        }
        self.mapped_ports = wanted;
        // FLAG_SERVICES follows whether any port is mapped.
        if had == self.mapped_ports.is_empty() {
            self.write_config()?;
        }
        Ok(())
    }

    fn set_service(&mut self, slot: u32, service: &Service) -> Result<(), DatapathError> {
        self.services
            .set(slot, *service, 0)
            .map_err(map_err(map_names::SERVICES, "write"))
    }

    fn service_stats(&self) -> Result<Vec<ServiceStats>, DatapathError> {
        let mut out = Vec::with_capacity(capacity::SERVICES as usize);
        for slot in 0..capacity::SERVICES {
            let per_cpu = self
                .service_stats
                .get(&slot, 0)
                .map_err(map_err(map_names::SERVICE_STATS, "read"))?;
            let mut sum = ServiceStats::default();
            for s in per_cpu.iter() {
                sum.packets += s.packets;
                sum.bytes += s.bytes;
                sum.syns += s.syns;
                sum.newcomer_passed += s.newcomer_passed;
                sum.newcomer_dropped += s.newcomer_dropped;
            }
            out.push(sum);
        }
        Ok(out)
    }

    fn known(&self) -> Result<Vec<(SourceKey, Known)>, DatapathError> {
        // The program inserts while we walk; a vanished key is simply skipped.
        Ok(self.known.iter().filter_map(Result::ok).collect())
    }

    fn known_insert(&mut self, key: &SourceKey, known: &Known) -> Result<(), DatapathError> {
        self.seen.mark(key);
        self.known
            .insert(key, known, 0)
            .map_err(insert_err(map_names::KNOWN, capacity::KNOWN))?;
        self.forget_source(key)
    }

    /// Rebuilds the seen filter's half not in use from the sources the tracker, `BANS` and
    /// `KNOWN` hold now, and makes it the one the program reads (see `seen`): sources they
    /// have dropped since the last rebuild no longer cost a never-seen source its lookups.
    ///
    /// # Errors
    /// When the config cannot be written; the half in use stays so.
    fn refresh_seen(&mut self) -> Result<(), DatapathError> {
        let flags = self.seen.rebuild(|| {
            // The program inserts while we walk; a vanished key is simply skipped.
            self.sources
                .keys()
                .chain(self.bans.keys())
                .chain(self.known.keys())
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        });
        let before = self.seen.flags();
        self.seen.flipped(flags);
        if let Err(e) = self.write_config() {
            self.seen.flipped(before);
            return Err(e);
        }
        Ok(())
    }

    fn known_remove(&mut self, key: &SourceKey) -> Result<bool, DatapathError> {
        let removed = absent_ok(self.known.remove(key), map_names::KNOWN)?;
        self.forget_source(key)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_survive_dots_percents_and_ats() {
        for iface in ["eth0", "eth0.100", "bond0.7@x", "a%2Eb", "veth-1_2"] {
            let name = link_pin_name(iface, "native");
            assert!(
                !name[..name.rfind('@').unwrap()].contains(['.', '@']),
                "{name}"
            );
            assert_eq!(
                parse_link_pin_name(&name),
                Some((iface.to_string(), "native".to_string()))
            );
        }
        assert_eq!(parse_link_pin_name("noat"), None);
        assert_eq!(parse_link_pin_name("bad%zz@native"), None);
    }
}
