//! The guard XDP program: parse, count the packet in its service, then decide once per packet
//! (allow, deny, ban, known sources and newcomers, limits), then record the verdict in one place.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// compare-and-swap: the BPF target has no `AtomicU64::compare_exchange` (see limit.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
// The kfunc call of the TC stage is one hand-written instruction (see tc.rs).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod cookie;
#[cfg(target_arch = "bpf")]
mod front;
#[cfg(target_arch = "bpf")]
mod known;
#[cfg(target_arch = "bpf")]
mod limit;
#[cfg(target_arch = "bpf")]
mod lists;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod seen;
#[cfg(target_arch = "bpf")]
mod service;
#[cfg(target_arch = "bpf")]
mod tc;

#[cfg(target_arch = "bpf")]
pub mod program {
    use aya_ebpf::{
        bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
    };
    use guard_common::{
        Config, FLAG_CACHE_V4, FLAG_CACHE_V6, FLAG_DRY_RUN, FLAG_NEXT, SourceKey, SourceState,
        capacity, known_by, reason, source_key_v4, source_key_v6,
    };

    use crate::seen;

    use crate::{
        front, known, limit, lists,
        maps::{CONFIG, CONFIG_SLOT, COOKIE_PROGS, NEXT_PROGS, SCRATCH, STATS},
        parse::{self, Packet, Parsed},
        service::{self, Svc},
    };

    /// Used when no config slot can be read (never expected: array slots always exist): no
    /// limits, not dry-run, no services. The lists still apply.
    static NO_CONFIG: Config = Config {
        pps: 0,
        burst: 0,
        syn_pps: 0,
        syn_burst: 0,
        ban_ns: 0,
        flags: 0,
        v4_prefix_len: 0,
        v6_prefix_len: 0,
        admit_packets: 0,
        lists_gen: 0,
        known_after_ns: 0,
        prefix_v4_len: 0,
        prefix_v6_len: 0,
        prefix_pps: 0,
        prefix_burst: 0,
        malformed_pps: 0,
        malformed_burst: 0,
        pkt_interval_ns: 0,
        pkt_tolerance_ns: 0,
        syn_interval_ns: 0,
        syn_tolerance_ns: 0,
        prefix_interval_ns: 0,
        prefix_tolerance_ns: 0,
        malformed_interval_ns: 0,
        malformed_tolerance_ns: 0,
    };

    /// `judge`'s answers for the SYN-cookie stage, never counter reasons: answer this SYN
    /// with a cookie; check this ACK's cookie.
    const COOKIE_SYN: usize = 1000;
    const COOKIE_ACK: usize = 1001;

    #[xdp]
    pub fn guard(ctx: XdpContext) -> u32 {
        run::<true>(&ctx)
    }

    /// The guard as a component of libxdp's multi-program dispatcher (`[datapath] attach =
    /// "dispatcher"`), loaded as an freplace extension of one of the dispatcher's slots. The
    /// same pipeline without tail calls: the dispatcher runs the next program itself (for what
    /// this one passes), and a tail call from an extension is refused by Linux 6.12+ in
    /// libxdp's stock slots. So no SYN-cookie stage here: cookie services pass their SYNs to
    /// the kernel (the daemon never sets their flag in this mode).
    #[xdp]
    pub fn guard_ext(ctx: XdpContext) -> u32 {
        run::<false>(&ctx)
    }

    /// The pipeline; `TAILS`: may tail-call (the cookie stage, the next program).
    #[inline(always)]
    fn run<const TAILS: bool>(ctx: &XdpContext) -> u32 {
        let len = (ctx.data_end() - ctx.data()) as u64;
        let cfg = config();
        let mut why = judge(ctx, cfg, len);
        if why == COOKIE_SYN || why == COOKIE_ACK {
            if cfg.flags & FLAG_DRY_RUN == 0 {
                if TAILS {
                    // The cookie stage counts its own verdict; it returns only if it is
                    // missing (the kernel lacks the helpers), and then the packet goes to
                    // the kernel.
                    // SAFETY: a tail call with this program's own context.
                    unsafe { COOKIE_PROGS.tail_call(ctx, 0) };
                }
                why = reason::PASSED;
            } else if why == COOKIE_SYN {
                // Dry-run: counted as a cookie (and would-drop: it would not reach the
                // stack), and passed.
                return record_dry_cookie::<TAILS>(ctx, cfg, len);
            } else {
                why = reason::PASSED;
            }
        }
        record::<TAILS>(ctx, cfg, why, len)
    }

    /// Counts a SYN that would have been answered with a cookie, in dry-run.
    #[inline(always)]
    fn record_dry_cookie<const TAILS: bool>(ctx: &XdpContext, cfg: &Config, len: u64) -> u32 {
        let slot = (ctx.ingress_ifindex() as u32) % capacity::STATS_SLOTS;
        if let Some(c) = STATS.get_ptr_mut(slot) {
            // SAFETY: a per-CPU slot is only touched by this CPU while the program runs.
            let c = unsafe { &mut *c };
            for why in [reason::COOKIE_SENT, reason::WOULD_DROP] {
                c.packets[why] += 1;
                c.bytes[why] += len;
            }
        }
        pass::<TAILS>(ctx, cfg)
    }

    /// Hands a packet the guard passes on: to the operator's next program if one is set
    /// (`NEXT_PROGS`, a tail call that does not return), else to the kernel.
    #[inline(always)]
    fn pass<const TAILS: bool>(ctx: &XdpContext, cfg: &Config) -> u32 {
        if TAILS && cfg.flags & FLAG_NEXT != 0 {
            // SAFETY: a tail call with this program's own context; it returns only if the
            // slot is empty (or the chain of tail calls is at its limit), and then the kernel
            // has it.
            unsafe { NEXT_PROGS.tail_call(ctx, 0) };
        }
        xdp_action::XDP_PASS
    }

    /// The config in force: the slot `CONFIG_SLOT` names, read through one pointer. Userspace
    /// writes only the other slot and flips the index after, so no packet reads a half-written
    /// config.
    #[inline(always)]
    fn config() -> &'static Config {
        let slot = CONFIG_SLOT.get(0).map_or(0, |s| *s & 1);
        CONFIG.get(slot).unwrap_or(&NO_CONFIG)
    }

    /// The one exit: counts the verdict per interface and CPU, and turns it into an action.
    #[inline(always)]
    fn record<const TAILS: bool>(ctx: &XdpContext, cfg: &Config, why: usize, len: u64) -> u32 {
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
            pass::<TAILS>(ctx, cfg)
        }
    }

    /// Decides the verdict reason, in the documented order: allow, deny, ban, then (for a
    /// source in neither list) known sources and newcomers, the limits, and pass.
    #[inline(always)]
    fn judge(ctx: &XdpContext, cfg: &Config, len: u64) -> usize {
        // CLOCK_MONOTONIC at jiffy resolution: a fraction of bpf_ktime_get_ns's cost on
        // kvm-clock hosts, and a tick is fine grain for limits in packets per second and bans
        // in seconds. Userspace compares against the same clock.
        // SAFETY: bpf_ktime_get_coarse_ns (Linux 5.11) has no preconditions.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
            // Never expected: an array slot always exists. Nothing to judge with.
            return reason::PASSED;
        };
        // SAFETY: this CPU's scratch, which only this run of the program touches.
        let scratch = unsafe { &mut *scratch };
        let pkt = &mut scratch.pkt;
        match parse::parse(&parse::Frame::of(ctx), pkt) {
            Parsed::NotIp => return reason::PASSED,
            Parsed::BadSource => return reason::BAD_SOURCE,
            // Nothing to judge it by: a global budget (per CPU), so they cannot flood past.
            Parsed::NoSource => {
                return if front::malformed_conforms(cfg, now) {
                    reason::MALFORMED
                } else {
                    reason::MALFORMED_LIMITED
                };
            }
            Parsed::Ip => {}
        }
        if pkt.neighbour_discovery {
            return reason::PASSED;
        }
        scratch.job.now = now;
        scratch.job.len = len;
        decide(ctx, &scratch.pkt, cfg, &mut scratch.job)
    }

    /// The program's per-CPU scratch (see `maps::SCRATCH`); the cookie stage reads it too.
    pub struct Scratch {
        pub pkt: Packet,
        pub job: Job,
    }

    /// What the pipeline found out about a packet besides its headers.
    pub struct Job {
        pub svc: Svc,
        pub key: SourceKey,
        pub now: u64,
        pub len: u64,
    }

    /// The verdict for a source: from its tracker entry, or from the front stage.
    ///
    /// This and the stages below are BPF-to-BPF calls (`inline(never)`), on purpose: each gets
    /// a stack frame of its own (the verifier allows 512 bytes for a chain of calls) and only
    /// its result reaches the caller, which keeps the states the verifier explores from
    /// multiplying across stages. Four arguments each: a call takes five.
    #[inline(never)]
    fn decide(ctx: &XdpContext, pkt: &Packet, cfg: &Config, job: &mut Job) -> usize {
        job.svc = service::classify(pkt, cfg, job.len, job.now);
        job.key = if pkt.src.v6 {
            source_key_v6(pkt.src.bytes(), cfg.v6_prefix_len)
        } else {
            source_key_v4(pkt.src.v4_bytes(), cfg.v4_prefix_len)
        };
        let job = &*job;
        let (now, key) = (job.now, &job.key);
        let cacheable = if pkt.src.v6 {
            cfg.flags & FLAG_CACHE_V6 != 0
        } else {
            cfg.flags & FLAG_CACHE_V4 != 0
        };
        // The seen filter first: a source in none of the tracker, BANS and KNOWN (every
        // packet of a spoofed flood) skips their lookups.
        let unseen = !seen::maybe(cfg, key);
        let tracked_now = if unseen { None } else { limit::lookup(key) };
        let state = match tracked_now {
            Some(s) => {
                // SAFETY: a pointer from a map lookup is valid for this program run. Other
                // CPUs may update the same entry: its limits use compare-and-swap, its counts
                // may lose an increment.
                let s = unsafe { &mut *s };
                // One tracker lookup instead of the trie lookups while the lists are unchanged
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
                        s.banned_until_ns = limit::ban_expiry(key, now);
                    }
                    s.list_verdict = listed as u32;
                    s.list_expires_ns = expires;
                    s.list_gen = cfg.lists_gen;
                }
                s
            }
            None => {
                let mut start = limit::Start {
                    listed: reason::PASSED,
                    list_expires: 0,
                    banned: 0,
                    known: false,
                    unseen,
                };
                let why = front_stage(ctx, pkt, cfg, job, &mut start);
                if why != TRACK {
                    return why;
                }
                match limit::track(key, cfg, now, &start) {
                    // SAFETY: as above.
                    Some(s) => unsafe { &mut *s },
                    // Untrackable (never expected of an LRU): the lists, then any ban, hold.
                    None if start.listed != reason::PASSED => return start.listed,
                    None if start.banned > now => return reason::BANNED,
                    None => return passed(pkt),
                }
            }
        };
        tracked(ctx, pkt, cfg, job, state)
    }

    /// `front_stage`'s answer for "track it (with what `start` now holds)", never a reason.
    const TRACK: usize = usize::MAX;

    /// A source the tracker does not hold: never seen, evicted, or not yet admitted. The lists
    /// and bans are exact (a denied source is dropped on its first packet); a known source is
    /// tracked at once; while its service is under attack an unknown source is held to the
    /// newcomer budget and never tracked; otherwise it is tracked once the sketch admits it.
    /// Returns the verdict, or `TRACK` with `start` filled in.
    #[inline(never)]
    fn front_stage(
        ctx: &XdpContext,
        pkt: &Packet,
        cfg: &Config,
        job: &Job,
        start: &mut limit::Start,
    ) -> usize {
        let (now, key, svc) = (job.now, &job.key, &job.svc);
        let (listed, expires) = lists::verdict(&pkt.src, cfg.flags, now);
        start.listed = listed;
        start.list_expires = expires;
        if listed == reason::ALLOWED {
            // One tracker lookup for its later packets, whatever else happens.
            return TRACK;
        }
        if listed != reason::PASSED {
            // Denied or prefix-banned: tracked (so later drops cost one lookup) only once the
            // sketch admits it, so a flood from a denied range does not churn the tracker.
            return if front::admitted(key, cfg, now) {
                TRACK
            } else {
                listed
            };
        }
        let banned = if start.unseen {
            0
        } else {
            limit::ban_expiry(key, now)
        };
        if banned > now {
            start.banned = banned;
            return if front::admitted(key, cfg, now) {
                TRACK
            } else {
                reason::BANNED
            };
        }
        if !start.unseen && known::is_known(key) {
            start.known = true;
            return TRACK;
        }
        if let Some(why) = cookie_stage(ctx, pkt, svc) {
            return why;
        }
        let handshake = known::may_show_handshake(pkt, svc.tcp);
        if svc.attack {
            if !service::newcomer_conforms(svc, now) {
                return reason::NEWCOMER_LIMITED;
            }
            if handshake
                && known::established(ctx, pkt)
                && known::promote(key, now, known_by::HANDSHAKE)
            {
                start.known = true;
                return TRACK;
            }
            if !limit::prefix_conforms(&pkt.src, cfg, now) {
                return reason::PREFIX_LIMITED;
            }
            return passed(pkt);
        }
        if handshake
            && known::established(ctx, pkt)
            && known::promote(key, now, known_by::HANDSHAKE)
        {
            start.known = true;
            return TRACK;
        }
        if front::admitted(key, cfg, now) {
            // Its prefix is charged as a tracked source's.
            return TRACK;
        }
        if !limit::prefix_conforms(&pkt.src, cfg, now) {
            return reason::PREFIX_LIMITED;
        }
        passed(pkt)
    }

    /// A tracked source: its cached list verdict, then (in neither list) its ban, the
    /// newcomer budget and prefix bucket if it is not known, its own limits, and promotion.
    #[inline(never)]
    fn tracked(
        ctx: &XdpContext,
        pkt: &Packet,
        cfg: &Config,
        job: &Job,
        state: &mut SourceState,
    ) -> usize {
        state.packets += 1;
        state.bytes += job.len;
        let listed = state.list_verdict as usize;
        let why = if listed != reason::PASSED {
            listed
        } else {
            unlisted(ctx, pkt, cfg, job, state)
        };
        if reason::drops(why) {
            state.dropped += 1;
            state.good_since_ns = job.now;
        }
        why
    }

    #[inline(always)]
    fn unlisted(
        ctx: &XdpContext,
        pkt: &Packet,
        cfg: &Config,
        job: &Job,
        state: &mut SourceState,
    ) -> usize {
        let (now, key, svc) = (job.now, &job.key, &job.svc);
        if state.banned_until_ns > now {
            return reason::BANNED;
        }
        let known = state.known != 0;
        if !known {
            if let Some(why) = cookie_stage(ctx, pkt, svc) {
                return why;
            }
            if svc.attack && !service::newcomer_conforms(svc, now) {
                return reason::NEWCOMER_LIMITED;
            }
            if !limit::prefix_conforms(&pkt.src, cfg, now) {
                return reason::PREFIX_LIMITED;
            }
        }
        let why = limit::judge(state, key, cfg, now, pkt.syn, ctx.ingress_ifindex() as u32);
        if why != reason::PASSED {
            return why;
        }
        if known {
            known::refresh(state, key, now);
        } else if cfg.known_after_ns != 0
            && now.saturating_sub(state.good_since_ns) >= cfg.known_after_ns
        {
            if known::promote(key, now, known_by::TIME) {
                state.known = 1;
                state.known_seen_ns = now;
            } else {
                // KNOWN is full: try again after another period in good standing.
                state.good_since_ns = now;
            }
        } else if known::may_show_handshake(pkt, svc.tcp) {
            known::promote_on_handshake(ctx, pkt, state, key, now);
        }
        passed(pkt)
    }

    /// For a source that is not known, on a cookie service: a SYN is answered with a cookie, and
    /// an ACK that belongs to no connection the host holds must carry one. (`None`: neither.)
    #[inline(always)]
    fn cookie_stage(ctx: &XdpContext, pkt: &Packet, svc: &Svc) -> Option<usize> {
        if !svc.cookies || pkt.proto != parse::IPPROTO_TCP || pkt.l4_off == 0 || pkt.truncated {
            return None;
        }
        if pkt.syn {
            return Some(COOKIE_SYN);
        }
        let f = pkt.tcp_flags;
        if f & parse::TCP_FLAG_ACK != 0
            && f & (parse::TCP_FLAG_SYN | parse::TCP_FLAG_RST) == 0
            && !known::established(ctx, pkt)
        {
            return Some(COOKIE_ACK);
        }
        None
    }

    /// A passing packet's reason: malformed (judged by its source) or passed.
    #[inline(always)]
    fn passed(pkt: &Packet) -> usize {
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
