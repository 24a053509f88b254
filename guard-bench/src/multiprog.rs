//! Section 5: what running through libxdp's multi-program dispatcher costs per packet, against
//! attaching directly; and the guard in front of xdp-filter in one dispatcher.
//!
//! A kernel that refuses freplace programs (the dispatcher's components) cannot measure it:
//! `cargo xtask bench` then runs this section in the test VM (`--only dispatcher
//! --section-out`), and the host's run takes the section from there (`--include-section`).

use std::{fs, net::Ipv4Addr, path::PathBuf};

use anyhow::{Context, Result, bail};
use guard::{
    cidr::Cidr,
    datapath::{Datapath, List},
    ebpf::{self, AttachMode, Loaded, Placement, StartOptions},
};
use guard_common::ListEntry;

use crate::{
    cost::prog_run,
    netns::{Testbed, run_in, sh_net, xdp_prog_id},
    packet::Udp,
    report::{Section, Table, ratio},
};

pub const TITLE: &str = "5. Through libxdp's dispatcher (BPF_PROG_TEST_RUN)";

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const CLEAN: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const DENIED: Ipv4Addr = Ipv4Addr::new(198, 19, 77, 9);

pub struct Options {
    pub repeat: u32,
    pub rounds: usize,
}

pub fn run(opts: &Options) -> Section {
    let mut section = Section::new(
        TITLE,
        &format!(
            "The guard attached directly and the guard as the only component of libxdp's \
             dispatcher (libxdp's own `xdp-dispatcher.o`, as `[datapath] attach = \
             \"dispatcher\"` builds it), each on its own veth in a throwaway namespace; then \
             the guard (priority 5) in front of xdp-filter (10) in one dispatcher. Each figure \
             is the median over {} rounds of the kernel's mean ns per run of the program on \
             the interface (`bpftool prog run ... repeat {}`), rounds interleaved; the \
             verdict is checked. The denied source is in the guard's deny list (one entry).",
            opts.rounds, opts.repeat
        ),
    );
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    section.intro += &format!(" Measured on kernel {}", release.trim());
    section.intro += &match std::env::var("GUARD_BENCH_VM") {
        // `cargo xtask bench` ran it in the test VM: the host's kernel refuses freplace.
        Ok(accel) => format!(
            ", in the test VM (qemu, {accel}), because the host's kernel refuses freplace \
             programs. Under tcg the CPU is emulated: compare the columns with each other, \
             not with the other sections' figures."
        ),
        Err(_) => ".".to_owned(),
    };
    match measure(opts) {
        Ok(t) => section.tables.push(t),
        Err(e) => section.failure = Some(format!("{e:#}")),
    }
    section
}

/// One guard started on `iface` in `ns`, with its own pins.
struct Guard {
    loaded: Option<Loaded>,
    pin_dir: PathBuf,
    ns: String,
    iface: String,
}

impl Guard {
    fn start(ns: &str, iface: &str, placement: Placement, tag: &str) -> Result<Self> {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/guard-bench-{tag}-{iface}"));
        let opts = StartOptions {
            interfaces: vec![iface.to_owned()],
            mode: AttachMode::Generic,
            placement,
            priority: 5,
            pin_dir: pin_dir.clone(),
            chain: None,
            next: None,
        };
        let mut loaded = run_in(ns, move || ebpf::start(&opts).map_err(anyhow::Error::from))
            .with_context(|| format!("starting the guard on {iface}"))?;
        let cidr: Cidr = format!("{DENIED}/32").parse().map_err(anyhow::Error::msg)?;
        loaded
            .datapath
            .list_insert(List::Deny, &cidr, ListEntry::default())?;
        Ok(Self {
            loaded: Some(loaded),
            pin_dir,
            ns: ns.to_owned(),
            iface: iface.to_owned(),
        })
    }

    fn prog_id(&self) -> Result<u32> {
        xdp_prog_id(&self.ns, &self.iface)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pin_dir = self.pin_dir.clone();
        let _ = run_in(&self.ns, move || {
            ebpf::detach(&pin_dir).map_err(anyhow::Error::from)
        });
        drop(self.loaded.take());
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn measure(opts: &Options) -> Result<Table> {
    if let Err(why) = ebpf::dispatcher_support() {
        bail!("{why}");
    }
    let mut bed = Testbed::new();
    let ns = bed.netns("mp")?;
    let (direct_if, _) = bed.link(&ns, None, &ns, None)?;
    let (disp_if, _) = bed.link(&ns, None, &ns, None)?;
    let (both_if, _) = bed.link(&ns, None, &ns, None)?;
    let direct = Guard::start(&ns, &direct_if, Placement::Direct, &bed.tag)?;
    let dispatched = Guard::start(&ns, &disp_if, Placement::Dispatcher, &bed.tag)?;
    let both = Guard::start(&ns, &both_if, Placement::Dispatcher, &bed.tag)?;
    // xdp-filter joins the third guard's dispatcher after it, denying nothing.
    sh_net(&ns, &["xdp-filter", "load", "-m", "skb", &both_if])
        .context("xdp-filter load (Debian package xdp-tools)")?;
    let unload = scopeguard(|| {
        let _ = sh_net(&ns, &["xdp-filter", "unload", &both_if, "--all"]);
    });
    let programs = [direct.prog_id()?, dispatched.prog_id()?, both.prog_id()?];
    let file = std::env::temp_dir().join(format!("guard-bench-mp-{}.pkt", bed.tag));
    let paths = [
        ("pass (a clean source)", Udp::v4(CLEAN).build(), XDP_PASS),
        ("drop (a denied source)", Udp::v4(DENIED).build(), XDP_DROP),
    ];
    let mut t = Table::new(
        "Cost per packet, directly and through the dispatcher (ns, lower is better)",
        &[
            "path",
            "direct",
            "dispatcher (guard alone)",
            "dispatcher / direct",
            "dispatcher: guard, then xdp-filter",
        ],
    );
    for (name, packet, want) in &paths {
        let mut ns_of: [Vec<f64>; 3] = Default::default();
        for _ in 0..opts.rounds {
            crate::signal::check()?;
            for (i, id) in programs.iter().enumerate() {
                let (action, ns) = prog_run(&id.to_string(), packet, opts.repeat, &file)?;
                if action != *want {
                    bail!("{name}: program {id} returned {action}, expected {want}");
                }
                ns_of[i].push(ns);
            }
        }
        let [d, s, b] = ns_of.map(median);
        let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        t.row(vec![
            (*name).to_owned(),
            cell(d),
            cell(s),
            ratio(s, d),
            cell(b),
        ]);
    }
    t.note(
        "Alone in a dispatcher the guard replaces the dispatcher's own function (libxdp's \
         layout for one program), so the difference to direct is the freplace trampoline. \
         With two programs the dispatcher calls each slot in turn and checks the chain-call \
         action in between; the last column also runs xdp-filter (all features, empty lists) \
         for what the guard passes, and not for what it drops.",
    );
    let _ = fs::remove_file(&file);
    drop(unload);
    drop((direct, dispatched, both));
    Ok(t)
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
