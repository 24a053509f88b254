//! The floor (`guard-floor`, guard-ebpf/src/floor.rs): an XDP program that counts every packet
//! in a per-CPU array and passes it. Section 1 test-runs it as the cheapest possible program;
//! section 2 attaches it as the pass-all program that puts every mode on veth's NAPI path.

use std::path::Path;

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{TestRun, TestRunOptions, Xdp, XdpMode},
};

use crate::netns::run_in;

/// Program and map of the floor object.
const FLOOR_PROGRAM: &str = "floor";
const FLOOR_MAP: &str = "FLOOR_PACKETS";
const XDP_PASS: u32 = 2;

/// The floor program, loaded from its object file. Dropping it detaches it from every
/// interface it was attached to (its links are owned here, never pinned).
pub struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    /// Loads the floor object.
    ///
    /// # Errors
    /// When the object cannot be read or the kernel refuses the program.
    pub fn load(object: &Path) -> Result<Self> {
        let mut ebpf = Ebpf::load_file(object).with_context(|| {
            format!(
                "loading the floor object {} (built by `cargo xtask build` as guard-floor)",
                object.display()
            )
        })?;
        let prog: &mut Xdp = ebpf
            .program_mut(FLOOR_PROGRAM)
            .context("the floor object has no program `floor`")?
            .try_into()?;
        prog.load()?;
        Ok(Self { ebpf })
    }

    /// Attaches the program in native (driver) mode to `ifaces` of namespace `ns`, from a
    /// thread inside it (interface names and the link request resolve there).
    ///
    /// # Errors
    /// When an interface is missing or refuses native XDP; what was attached is detached again.
    pub fn attach_in(mut self, ns: &str, ifaces: &[String]) -> Result<Self> {
        let ifaces = ifaces.to_vec();
        let ns_name = ns.to_owned();
        run_in(ns, move || {
            let prog: &mut Xdp = self
                .ebpf
                .program_mut(FLOOR_PROGRAM)
                .context("no program `floor`")?
                .try_into()?;
            for iface in &ifaces {
                prog.attach(iface, XdpMode::Driver).with_context(|| {
                    format!("attaching the floor to {iface} in {ns_name} (native XDP)")
                })?;
            }
            Ok(self)
        })
    }

    /// Mean ns per run over `repeat` runs; checks it passed and counted every packet.
    ///
    /// # Errors
    /// When the test run fails or the program did not pass and count every packet.
    pub fn run(&mut self, packet: &[u8], repeat: u32) -> Result<f64> {
        let before = self.packets()?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(FLOOR_PROGRAM)
            .context("no program `floor`")?
            .try_into()?;
        let out = prog.test_run(TestRunOptions {
            data_in: Some(packet),
            repeat,
            ..TestRunOptions::default()
        })?;
        let counted = self.packets()? - before;
        if out.return_value != XDP_PASS || counted != u64::from(repeat) {
            bail!(
                "the floor returned {} and counted {counted} of {repeat} packets",
                out.return_value
            );
        }
        Ok(out.duration.as_nanos() as f64)
    }

    fn packets(&self) -> Result<u64> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(FLOOR_MAP)
                .context("the floor object has no map FLOOR_PACKETS")?,
        )?;
        Ok(map.get(&0, 0)?.iter().sum())
    }
}
