//! The floor: the least an XDP program that records its verdict can do (count the packet in a
//! per-CPU array, return XDP_PASS). `guard-bench` measures it beside the guard as the baseline.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action,
        macros::{map, xdp},
        maps::PerCpuArray,
        programs::XdpContext,
    };

    /// `0 -> packets seen`, per CPU. Written per packet, read by `guard-bench`. The names
    /// (`FLOOR_PACKETS`, program `floor`) are spelled again in guard-bench's `cost.rs`: this
    /// benchmark-only object has no place in guard-common.
    #[map(name = "FLOOR_PACKETS")]
    static FLOOR_PACKETS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

    #[xdp]
    pub fn floor(_ctx: XdpContext) -> u32 {
        if let Some(n) = FLOOR_PACKETS.get_ptr_mut(0) {
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
    eprintln!("guard-floor builds only for the bpfel-unknown-none target: use `cargo xtask build`");
}
