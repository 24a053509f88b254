//! Test programs for the chains (`[datapath] chain` and `next`): a root that tail-calls a
//! pinned program array, as katran's `xdp_root` does, and a next program that counts.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::{PerCpuArray, ProgramArray},
        programs::XdpContext,
    };

    // The names are spelled again in guard-userspace's tests/live_chains.rs: this test-only
    // object has no place in guard-common.

    /// `0 -> the program the root hands every packet to` (the guard, in the tests). Written
    /// by the guard's loader (`[datapath] chain`); pinned by the test.
    #[map(name = "TESTROOT_PROGS")]
    static TESTROOT_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

    /// `0 -> packets the root passed itself` (its slot was empty), per CPU. Read by the test.
    #[map(name = "TESTROOT_FALLS")]
    static TESTROOT_FALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    /// `0 -> packets the next program received`, per CPU. Read by the test.
    #[map(name = "TESTNEXT_SEEN")]
    static TESTNEXT_SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[xdp]
    pub fn guard_testroot(ctx: XdpContext) -> u32 {
        // SAFETY: a tail call with this program's own context; returns if the slot is empty.
        unsafe { TESTROOT_PROGS.tail_call(&ctx, 0) };
        count(&TESTROOT_FALLS)
    }

    #[xdp]
    pub fn guard_testnext(_ctx: XdpContext) -> u32 {
        count(&TESTNEXT_SEEN)
    }

    #[inline(always)]
    fn count(map: &PerCpuArray<u64>) -> u32 {
        if let Some(n) = map.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
            unsafe { *n += 1 };
        }
        xdp_action::XDP_PASS
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "guard-testroot builds only for the bpfel-unknown-none target: use `cargo xtask build`"
    );
}
