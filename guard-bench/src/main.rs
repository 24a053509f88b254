//! `guard-bench`: measures the guard's cost per packet, how its clients fare under floods that
//! hurt, and its control plane, next to the floor, xdp-filter and nftables; writes BENCHMARKS.md.
//! Run it through `cargo xtask bench` (root; builds the objects and installs the peers).

mod control;
mod cost;
mod cpu;
mod daemon;
mod fleet;
mod flood;
mod floor;
mod multiprog;
mod netns;
mod packet;
mod report;
mod sender;
mod signal;
mod slow;

use std::{fs, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};

use crate::report::{Machine, Section};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Cost,
    Flood,
    Control,
    /// Ban propagation across a fleet (a real nats-server -js and two daemons).
    Fleet,
    /// Directly against through libxdp's dispatcher (needs a kernel that loads freplace).
    Dispatcher,
}

#[derive(Parser)]
#[command(about = "Benchmarks for guard: run through `cargo xtask bench` (needs root)")]
struct Args {
    /// BPF_PROG_TEST_RUN repeat count per path and round.
    #[arg(long, default_value_t = 2_000_000)]
    repeat: u32,
    /// Rounds of cost-per-packet runs; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Seconds of each flood scenario's measurement window.
    #[arg(long, default_value_t = 5)]
    flood_secs: u64,
    /// Attack packets (connection flood: connections) at most per flood scenario.
    #[arg(long, default_value_t = 30_000_000)]
    flood_max_packets: u64,
    /// The floor object (guard-ebpf's `guard-floor` binary for bpfel-unknown-none).
    #[arg(long, env = "GUARD_FLOOR_OBJECT")]
    floor_object: PathBuf,
    /// The `guard` binary, for the flood and control-plane sections.
    #[arg(long, env = "GUARD_BIN")]
    guard_bin: Option<PathBuf>,
    /// Sections to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cost,flood,control,fleet,dispatcher"
    )]
    only: Vec<Part>,
    /// Write only the sections measured (no machine header) to this file, for another run's
    /// `--include-section` (`cargo xtask bench` measures the dispatcher in its VM so).
    #[arg(long)]
    section_out: Option<PathBuf>,
    /// A section measured elsewhere (`--section-out`), put in place of this run's own
    /// dispatcher section.
    #[arg(long)]
    include_section: Option<PathBuf>,
    /// Where to write the report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("guard-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the sections asked for; Ok(false) if one of them could not be measured.
fn run(args: Args) -> Result<bool> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "guard-bench needs root (it loads XDP programs and creates network namespaces): run `sudo -E cargo xtask bench`"
        );
    }
    signal::install();
    let started = Instant::now();
    let machine = Machine::probe();
    println!("{}", machine.markdown());
    let mut sections: Vec<Section> = Vec::new();
    if args.only.contains(&Part::Cost) {
        sections.push(cost::run(&cost::Options {
            repeat: args.repeat,
            rounds: args.rounds,
            floor_object: args.floor_object.clone(),
        }));
    }
    if args.only.contains(&Part::Flood) && signal::check().is_ok() {
        let flood = flood::run(&flood::Options {
            secs: args.flood_secs,
            max_packets: args.flood_max_packets,
            floor_object: args.floor_object.clone(),
            guard_bin: args.guard_bin.clone(),
        });
        // The live cost per packet belongs with section 1's; without it, with section 2.
        let mut flood_section = flood.section;
        if let Some(live) = flood.live {
            match sections.iter_mut().find(|s| s.title == cost::TITLE) {
                Some(cost) => cost.tables.push(live),
                None => flood_section.tables.push(live),
            }
        }
        sections.push(flood_section);
    } else if let Some(cost) = sections.iter_mut().find(|s| s.title == cost::TITLE)
        && let Some(t) = cost.tables.first_mut()
    {
        t.note(
            "The live cost per packet under flood is measured in section 2 (run with \
             `--only cost,flood`).",
        );
    }
    if args.only.contains(&Part::Control) && signal::check().is_ok() {
        sections.push(control::run(args.guard_bin.as_deref()));
    }
    if args.only.contains(&Part::Fleet) && signal::check().is_ok() {
        sections.push(fleet::run(args.guard_bin.as_deref()));
    }
    if args.only.contains(&Part::Dispatcher) && signal::check().is_ok() {
        let section = match &args.include_section {
            Some(path) => {
                let text =
                    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
                let mut s = Section::new("", "");
                s.verbatim = Some(text);
                s
            }
            None => multiprog::run(&multiprog::Options {
                repeat: args.repeat.min(1_000_000),
                rounds: args.rounds,
            }),
        };
        sections.push(section);
    }
    let ok = sections.iter().all(|s| s.failure.is_none());
    for s in &sections {
        if let Some(f) = &s.failure {
            eprintln!("guard-bench: {}: not measured: {f}", s.title);
        }
    }
    if let Some(path) = &args.section_out {
        let text: String = sections.iter().map(Section::markdown).collect();
        fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("guard-bench: wrote {}", path.display());
        return Ok(ok);
    }
    let text = document(&machine, &sections, started.elapsed().as_secs());
    fs::write(&args.out, text).with_context(|| format!("write {}", args.out.display()))?;
    eprintln!("guard-bench: wrote {}", args.out.display());
    Ok(ok)
}

fn document(machine: &Machine, sections: &[Section], secs: u64) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench` (guard-bench); do not edit by hand, run it again. \
         Every figure below was measured in the run described here; ratios compare programs \
         run side by side in that same run, since absolute figures drift on a shared machine. \
         Targets are reported as met or missed, never asserted.\n\n",
    );
    out += &machine.markdown();
    out += &format!("- Bench run time: {secs} s\n\n");
    for s in sections {
        out += &s.markdown();
    }
    out
}
