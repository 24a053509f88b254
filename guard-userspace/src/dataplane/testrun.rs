//! Running the program on a packet (`BPF_PROG_TEST_RUN`), once, repeated, or on several CPUs
//! at once: the fixtures, property tests, races and the benchmarks use it.
use std::io;

use aya::programs::{ProgramError, TestRun, TestRunOptions};

use super::KernelDatapath;

/// One thread's share of [`KernelDatapath::test_run_on_cpus`].
#[derive(Clone, Copy, Debug)]
pub struct CpuRun {
    pub action: u32,
    /// CLOCK_MONOTONIC_COARSE (the program's clock) before the first run and after the last.
    pub started_ns: u64,
    pub ended_ns: u64,
}

/// CLOCK_MONOTONIC at jiffy grain: what the program's `bpf_ktime_get_coarse_ns` reads.
pub(super) fn coarse_now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// Pins the calling thread to `cpu`.
pub(super) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}

impl KernelDatapath {
    /// Runs the program once on `packet` (BPF_PROG_TEST_RUN) and returns its XDP action.
    ///
    /// # Errors
    /// When the kernel refuses the test run.
    pub fn test_run(&mut self, packet: &[u8]) -> Result<u32, ProgramError> {
        self.test_run_repeat(packet, 1).map(|(action, _)| action)
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
}
