//! The guard XDP program: parse, then decide once per packet (allow, deny, ban, rate limit),
//! then record the verdict in one place.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod limit;
#[cfg(target_arch = "bpf")]
mod lists;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
    };
    use guard_common::{
        Config, FLAG_CACHE_V4, FLAG_CACHE_V6, FLAG_DRY_RUN, capacity, reason, source_key_v4,
        source_key_v6,
    };

    use crate::{
        limit, lists,
        maps::{CONFIG, STATS},
        parse::{self, Parsed, Source},
    };

    #[xdp]
    pub fn guard(ctx: XdpContext) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // An unreadable config (never expected: an array slot always exists) reads as zero:
        // no rate limits, not dry-run. The lists still apply.
        let cfg = match CONFIG.get(0) {
            Some(c) => *c,
            None => Config::default(),
        };
        let why = judge(&ctx, &cfg, len);
        record(&ctx, &cfg, why, len)
    }

    /// The one exit: counts the verdict per interface and CPU, and turns it into an action.
    #[inline(always)]
    fn record(ctx: &XdpContext, cfg: &Config, why: usize, len: u64) -> u32 {
        let drop = reason::drops(why);
        let dry_run = cfg.flags & FLAG_DRY_RUN != 0;
        let slot = (ctx.ingress_ifindex() as u32) % capacity::STATS_SLOTS;
        if let Some(c) = STATS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
            let c = unsafe { &mut *c };
            if why < reason::COUNT {
                c.packets[why] += 1;
                c.bytes[why] += len;
            }
            if drop && dry_run {
                c.packets[reason::WOULD_DROP] += 1;
                c.bytes[reason::WOULD_DROP] += len;
            }
        }
        if drop && !dry_run {
            xdp_action::XDP_DROP
        } else {
            xdp_action::XDP_PASS
        }
    }

    /// Decides the verdict reason, in the documented order: allow, deny, ban, limits, pass.
    #[inline(always)]
    fn judge(ctx: &XdpContext, cfg: &Config, len: u64) -> usize {
        let pkt = match parse::parse(ctx) {
            Parsed::NotIp => return reason::PASSED,
            Parsed::Malformed => return reason::MALFORMED,
            Parsed::Ip(p) => p,
        };
        if pkt.neighbour_discovery {
            return reason::PASSED;
        }
        // CLOCK_MONOTONIC at jiffy resolution: a fraction of bpf_ktime_get_ns's cost on
        // kvm-clock hosts, and a tick is fine grain for buckets in packets per second and bans
        // in seconds. Userspace compares against the same clock.
        // SAFETY: bpf_ktime_get_coarse_ns (Linux 5.11) has no preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let (key, cacheable) = match pkt.src {
            Source::V4(a) => (
                source_key_v4(a, cfg.v4_prefix_len),
                cfg.flags & FLAG_CACHE_V4 != 0,
            ),
            Source::V6(a) => (
                source_key_v6(a, cfg.v6_prefix_len),
                cfg.flags & FLAG_CACHE_V6 != 0,
            ),
        };
        let (state, listed) = match limit::lookup(&key) {
            Some(s) => {
                // SAFETY: a pointer from a map lookup is valid for this program run. Other
                // CPUs may update the same entry: the race loses increments, never safety.
                let s = unsafe { &mut *s };
                // One tracker lookup instead of two trie lookups while the lists are unchanged
                // (same generation; 0 is never current) and the deciding entry has not
                // expired. Without the cache the lists are looked up every time.
                let fresh = cacheable
                    && s.list_gen != 0
                    && s.list_gen == cfg.lists_gen
                    && (s.list_expires_ns == 0 || s.list_expires_ns > now);
                if !fresh {
                    let (listed, expires) = lists::verdict(&pkt.src, cfg.flags, now);
                    if listed == reason::PASSED && s.list_verdict as usize != reason::PASSED {
                        // Tracked while listed, so its ban was never read: read it now.
                        s.banned_until_ns = limit::ban_expiry(&key, now);
                    }
                    s.list_verdict = listed as u32;
                    s.list_expires_ns = expires;
                    s.list_gen = cfg.lists_gen;
                }
                let listed = s.list_verdict as usize;
                (s, listed)
            }
            None => {
                // Not tracked yet: look the lists up once and track the source with its
                // verdict, so that its later packets cost one lookup whatever the verdict.
                // (A flood of spoofed sources from a denied range churns the tracker: evicted
                // sources restart with full buckets, and bans live on in BANS.)
                let (listed, expires) = lists::verdict(&pkt.src, cfg.flags, now);
                match limit::track(&key, cfg, now, listed, expires) {
                    // SAFETY: as above.
                    Ok(s) => (unsafe { &mut *s }, listed),
                    // Untrackable (never expected of an LRU): the lists, then any ban, hold.
                    Err(_) if listed != reason::PASSED => return listed,
                    Err(true) => return reason::BANNED,
                    Err(false) => return reason::PASSED,
                }
            }
        };
        state.packets += 1;
        state.bytes += len;
        if listed != reason::PASSED {
            if listed == reason::DENIED {
                state.dropped += 1;
            }
            return listed;
        }
        let why = limit::judge(state, &key, cfg, now, pkt.syn, ctx.ingress_ifindex() as u32);
        if why != reason::PASSED {
            return why;
        }
        if pkt.truncated {
            reason::MALFORMED
        } else {
            reason::PASSED
        }
    }

    /// The program's license, as the kernel reads it from the object: the project's MIT or
    /// Apache-2.0, declared GPL-compatible ("Dual MIT/GPL") for the helpers it calls.
    #[unsafe(no_mangle)]
    #[unsafe(link_section = "license")]
    pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("guard-ebpf builds only for the bpfel-unknown-none target: use `cargo xtask build`");
}
