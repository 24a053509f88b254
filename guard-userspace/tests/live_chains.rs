//! Live chain tests (`[datapath] chain` and `next`): a root program standing in for katran's
//! `xdp_root` (guard-ebpf/src/testroot.rs) tail-calls the guard from a pinned program array,
//! and the guard tail-calls a next program that counts what it receives. Real UDP through
//! veths in namespaces.
mod support;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, ProgramArray},
    programs::{Xdp, XdpMode},
};
use guard::{
    datapath::{Datapath, List},
    dataplane::link,
    ebpf::{self, AttachMode, ChainSlot, Loaded, Placement, StartOptions},
};
use guard_common::reason;
use support::netns::{Testbed, in_netns, live_or_skip};
use support::twolinks::{Bed, bed, deny, exchange};

/// The names in guard-ebpf/src/testroot.rs.
const ROOT_PROGRAM: &str = "guard_testroot";
const NEXT_PROGRAM: &str = "guard_testnext";
const ROOT_PROGS: &str = "TESTROOT_PROGS";
const ROOT_FALLS: &str = "TESTROOT_FALLS";
const NEXT_SEEN: &str = "TESTNEXT_SEEN";

/// The root and next programs, loaded from guard-ebpf's `guard-testroot` object: the root's
/// program array pinned at `<dir>/progs`, the next program pinned at `<dir>/next`. Dropping
/// it detaches the root and removes the pins.
struct Root {
    /// `None` only while `attach` lends it to a thread.
    ebpf: Option<Ebpf>,
    dir: PathBuf,
}

impl Root {
    fn load(tag: &str) -> Self {
        let object = std::env::var_os("GUARD_TESTROOT_OBJECT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../target/bpfel-unknown-none/release/guard-testroot")
            });
        let mut ebpf = Ebpf::load_file(&object).unwrap_or_else(|e| {
            panic!(
                "loading {} (built by `cargo xtask build` as guard-testroot): {e}",
                object.display()
            )
        });
        let dir = PathBuf::from(format!("/sys/fs/bpf/c17-root-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        ebpf.map(ROOT_PROGS)
            .unwrap()
            .pin(dir.join("progs"))
            .unwrap();
        for name in [ROOT_PROGRAM, NEXT_PROGRAM] {
            let p: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap();
        }
        let next: &mut Xdp = ebpf.program_mut(NEXT_PROGRAM).unwrap().try_into().unwrap();
        next.pin(dir.join("next")).unwrap();
        Self {
            ebpf: Some(ebpf),
            dir,
        }
    }

    /// Attaches the root to `iface` in `ns` (generic XDP, like the guard's own tests): on a
    /// thread in that namespace, which the object visits and comes back from.
    fn attach(&mut self, ns: &str, iface: &str) {
        let mut ebpf = self.ebpf.take().unwrap();
        let iface = iface.to_string();
        self.ebpf = Some(in_netns(ns, move || {
            let p: &mut Xdp = ebpf.program_mut(ROOT_PROGRAM).unwrap().try_into().unwrap();
            p.attach(&iface, XdpMode::Skb).unwrap();
            ebpf
        }));
    }

    fn slot(&self) -> ChainSlot {
        ChainSlot {
            prog_array: self.dir.join("progs"),
            index: 0,
        }
    }

    fn next_pin(&self) -> PathBuf {
        self.dir.join("next")
    }

    fn sum(&self, map: &str) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.as_ref().unwrap().map(map).unwrap()).unwrap();
        m.get(&0, 0).unwrap().iter().sum()
    }

    fn falls(&self) -> u64 {
        self.sum(ROOT_FALLS)
    }

    fn next_seen(&self) -> u64 {
        self.sum(NEXT_SEEN)
    }

    /// Empties the root's slot, as another tool (or an operator) might.
    fn clear_slot(&self) {
        let data = MapData::from_pin(self.dir.join("progs")).unwrap();
        let mut a = ProgramArray::try_from(Map::ProgramArray(data)).unwrap();
        a.clear_index(&0).unwrap();
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_in(
    b: &Bed,
    interfaces: Vec<String>,
    chain: Option<ChainSlot>,
    next: Option<PathBuf>,
) -> Result<Loaded, String> {
    let opts = StartOptions {
        interfaces,
        mode: AttachMode::Generic,
        placement: Placement::Direct,
        priority: 5,
        pin_dir: b.tb.pin_dir.clone(),
        chain,
        next,
    };
    in_netns(&b.srv, move || {
        ebpf::start(&opts).map_err(|e| format!("{e:#}"))
    })
}

fn denied(d: &impl Datapath) -> u64 {
    d.counters()
        .unwrap()
        .iter()
        .map(|(_, c)| c.packets[reason::DENIED])
        .sum()
}

#[test]
fn in_a_root_programs_slot_the_guard_filters_passes_on_to_next_survives_restart_and_detaches_cleanly()
 {
    if !live_or_skip("live chain") {
        return;
    }
    let b = bed("c17");
    let mut root = Root::load(&b.tb.tag);
    for i in &b.ifaces {
        root.attach(&b.srv, i);
    }
    // The root alone passes everything itself.
    assert_eq!(exchange(&b, 100), (100, 100));
    assert!(root.falls() >= 200, "falls {}", root.falls());

    let mut loaded = start_in(&b, Vec::new(), Some(root.slot()), Some(root.next_pin())).unwrap();
    let label = ebpf::chain::label(&root.slot());
    assert_eq!(loaded.attachments.len(), 1, "{:?}", loaded.attachments);
    assert_eq!(loaded.attachments[0].mode, "chain");
    assert_eq!(loaded.attachments[0].iface, label);
    assert!(!loaded.attachments[0].adopted);
    assert!(link::check(&b.tb.pin_dir, &label).attached);

    // root -> guard -> next: every packet reaches next, none falls through the root.
    let falls = root.falls();
    let seen = root.next_seen();
    assert_eq!(exchange(&b, 200), (200, 200));
    assert_eq!(root.falls(), falls, "the root found its slot empty");
    assert!(
        root.next_seen() >= seen + 400,
        "next saw {} more",
        root.next_seen() - seen
    );

    // A denied source is dropped in the slot; next sees only what the guard passes.
    deny(&mut loaded.datapath, "198.18.1.2");
    let seen = root.next_seen();
    assert_eq!(exchange(&b, 300), (0, 300));
    let more = root.next_seen() - seen;
    assert!(
        (300..400).contains(&more),
        "next saw {more} more, expected the 300 passed (and a few ARP)"
    );
    assert!(denied(&loaded.datapath) >= 300);

    // The daemon goes away: the slot keeps the guard. A new start swaps its program in.
    drop(loaded);
    assert_eq!(
        exchange(&b, 200),
        (0, 200),
        "protection survives the loader"
    );
    let second = start_in(&b, Vec::new(), Some(root.slot()), Some(root.next_pin())).unwrap();
    assert!(second.attachments[0].adopted, "{:?}", second.attachments);
    assert!(link::check(&b.tb.pin_dir, &label).attached);
    assert_eq!(second.datapath.list_entries(List::Deny).unwrap().len(), 1);
    let (falls, seen) = (root.falls(), root.next_seen());
    assert_eq!(exchange(&b, 200), (0, 200));
    assert_eq!(root.falls(), falls);
    assert!(root.next_seen() >= seen + 200);

    // Someone else empties the slot: health's "attached" says so.
    root.clear_slot();
    let s = link::check(&b.tb.pin_dir, &label);
    assert!(!s.attached && s.detail.contains("is empty"), "{s:?}");
    drop(second);
    let third = start_in(&b, Vec::new(), Some(root.slot()), Some(root.next_pin())).unwrap();
    assert!(link::check(&b.tb.pin_dir, &label).attached);

    // Detach: the slot is emptied and the pins go; the root keeps running and passes all.
    let detached = ebpf::detach(&b.tb.pin_dir).unwrap();
    assert_eq!(detached, vec![label.clone()]);
    drop(third);
    let falls = root.falls();
    assert_eq!(exchange(&b, 200), (200, 200), "detached: everything flows");
    assert!(root.falls() >= falls + 400, "the root passes them itself");
    assert!(!b.tb.pin_dir.exists(), "the guard's pins removed");
    assert!(
        root.slot().prog_array.exists(),
        "the root's array is not ours to remove"
    );
}

#[test]
fn as_the_root_the_guard_tail_calls_next_for_what_it_passes_only() {
    if !live_or_skip("live next") {
        return;
    }
    let b = bed("c17");
    let root = Root::load(&b.tb.tag);
    let mut loaded = start_in(&b, b.ifaces.clone(), None, Some(root.next_pin())).unwrap();
    assert!(loaded.attachments.iter().all(|a| a.mode == "generic"));
    deny(&mut loaded.datapath, "198.18.1.2");
    let seen = root.next_seen();
    assert_eq!(exchange(&b, 300), (0, 300));
    let more = root.next_seen() - seen;
    assert!(
        (300..400).contains(&more),
        "next saw {more} more, expected the 300 passed"
    );
    // Without `next` on the next start, the pinned array is emptied: next sees nothing.
    drop(loaded);
    let _loaded = start_in(&b, b.ifaces.clone(), None, None).unwrap();
    let seen = root.next_seen();
    assert_eq!(exchange(&b, 100), (0, 100));
    assert_eq!(root.next_seen(), seen, "next is no longer called");
}

#[test]
fn an_interface_that_runs_a_foreign_xdp_program_is_refused_not_replaced() {
    if !live_or_skip("live occupied") {
        return;
    }
    let b = bed("c17");
    let mut root = Root::load(&b.tb.tag);
    root.attach(&b.srv, &b.ifaces[0]);
    let err = start_in(&b, b.ifaces.clone(), None, None)
        .err()
        .expect("refused");
    assert!(
        err.contains(&format!(
            "{} already runs an XDP program: \"{ROOT_PROGRAM}\"",
            b.ifaces[0]
        )) && err.contains("[datapath] chain"),
        "{err}"
    );
    // The foreign program still runs and sees the packets.
    let falls = root.falls();
    assert_eq!(exchange(&b, 100), (100, 100));
    assert!(root.falls() >= falls + 100);
    let links = ebpf::versioned_dir(&b.tb.pin_dir).join("links");
    assert!(
        ebpf::link_pins(&links)
            .iter()
            .all(|(i, _, _)| *i != b.ifaces[0]),
        "no link pinned for it"
    );
}

/// The health check's verdict on the slot (`xdp`, `attached`), from `guard health --json`.
fn slot_attached(tb: &Testbed) -> Option<bool> {
    let h: serde_json::Value =
        serde_json::from_str(&tb.guard_ok(&["health", "--json"])).unwrap_or_default();
    h["checks"].as_array().and_then(|c| {
        c.iter()
            .find(|o| o["component"] == "xdp" && o["measurement"] == "attached")
            .map(|o| o["status"] == "pass")
    })
}

#[test]
fn guard_run_in_chain_mode_shows_the_slot_and_next_and_puts_itself_back_into_an_emptied_slot_only()
{
    if !live_or_skip("live chain daemon") {
        return;
    }
    let mut b = bed("c17");
    let mut root = Root::load(&b.tb.tag);
    for i in &b.ifaces.clone() {
        root.attach(&b.srv, i);
    }
    let slot = root.slot();
    let config = b.tb.tmp.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "[datapath]\nmode = \"generic\"\nchain = {{ prog_array = \"{}\", index = 0 }}\nnext = \"{}\"\n",
            slot.prog_array.display(),
            root.next_pin().display()
        ),
    )
    .unwrap();
    let srv = b.srv.clone();
    b.tb.start_guard(&srv, &["--config", config.to_str().unwrap()]);
    let label = ebpf::chain::label(&slot);
    let status = b.tb.guard_ok(&["status"]);
    assert!(
        status.contains(&label) && status.contains("chain"),
        "guard status shows the slot and its mode: {status}"
    );
    assert!(
        status.contains(&format!("next        {}", root.next_pin().display())),
        "guard status shows next: {status}"
    );
    b.tb.guard_ok(&["deny", "add", "198.18.1.2/32"]);
    let seen = root.next_seen();
    assert_eq!(exchange(&b, 200), (0, 200), "{}", b.tb.logs());
    assert!(
        root.next_seen() >= seen + 200,
        "next gets what the guard passes"
    );
    let wait = |want: bool| {
        support::wait_for(Duration::from_secs(15), || {
            (slot_attached(&b.tb) == Some(want)).then_some(())
        })
        .unwrap_or_else(|| panic!("health never said attached = {want}: {}", b.tb.logs()))
    };
    wait(true);

    // Someone empties the slot: the daemon puts the guard back.
    root.clear_slot();
    support::wait_for(Duration::from_secs(15), || {
        b.tb.logs().contains("put the guard back in").then_some(())
    })
    .unwrap_or_else(|| panic!("the guard was not put back: {}", b.tb.logs()));
    wait(true);
    assert_eq!(
        exchange(&b, 100),
        (0, 100),
        "back in the slot, dropping again"
    );

    // Another program takes the slot: it is left there, and health says the guard is out.
    let next = aya::programs::ProgramInfo::from_pin(root.next_pin())
        .unwrap()
        .fd()
        .unwrap();
    {
        let data = MapData::from_pin(&slot.prog_array).unwrap();
        let mut a = ProgramArray::try_from(Map::ProgramArray(data)).unwrap();
        a.set(0, &next, 0).unwrap();
    }
    let theirs = ebpf::chain::slot_prog_id(&slot).unwrap();
    wait(false);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ebpf::chain::slot_prog_id(&slot).unwrap(),
        theirs,
        "the daemon left the other program in the slot"
    );
    assert!(
        b.tb.logs().contains("not the guard's: left to it"),
        "{}",
        b.tb.logs()
    );
    assert_eq!(
        exchange(&b, 100),
        (100, 100),
        "the other program passes all"
    );
    b.tb.guard_ok(&["detach"]);
    assert_eq!(
        ebpf::chain::slot_prog_id(&slot).unwrap(),
        theirs,
        "detach leaves a slot the guard does not hold"
    );
}
