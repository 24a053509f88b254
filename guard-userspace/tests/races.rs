//! The program on several CPUs at once (BPF_PROG_TEST_RUN runs an XDP program on the calling
//! thread's CPU, so threads pinned to different CPUs race it against itself): the per-source
//! limit is never stricter than configured, and a config written meanwhile is never read
//! half-written. One test binary, one test, run in order: each race needs the CPUs to itself.
mod support;

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use guard::datapath::Datapath;
use guard_common::{Config, FLAG_DRY_RUN, reason};
use support::{kernel_or_skip, limits, packet::Builder, totals};

fn dns(src: &str) -> Vec<u8> {
    Builder::v4(src).ports(40_000, 53).build()
}

#[test]
fn races_on_several_cpus() {
    let Some(_) = kernel_or_skip("races_on_several_cpus") else {
        return;
    };
    let cpus: Vec<usize> = aya::util::online_cpus()
        .expect("online cpus")
        .into_iter()
        .map(|c| c as usize)
        .collect();
    assert!(
        cpus.len() >= 2,
        "these races need two CPUs and the machine has {}",
        cpus.len()
    );
    gcra_on_several_cpus_at_once_is_never_stricter_than_configured(&cpus);
    a_config_written_while_packets_run_is_never_read_half_written(&cpus);
}

fn gcra_on_several_cpus_at_once_is_never_stricter_than_configured(cpus: &[usize]) {
    // 1,000,000 packets/s (one every microsecond) with a burst of 20,000 (20 ms, more than a
    // jiffy of the coarse clock), no bans, and both CPUs offering packets without pause, so
    // they contend for the source's one GCRA word (its theoretical arrival time, TAT) all the
    // time. Each packet that passes moves the TAT on by exactly one interval from where the
    // last one left it (the flood never lets it fall behind the clock), so the final TAT is the
    // first packet's time plus one interval per pass. A lost update (two CPUs passing on one
    // old TAT: more passes than moves) or an erased refill (fewer) breaks that.
    //
    // That holds while both CPUs keep the source saturated; a thread descheduled mid-run (a
    // busy machine) lets the TAT fall behind, which is no error. So up to three attempts, on
    // fresh maps each, and every one must at least never pass more than it moved.
    const INTERVAL: u64 = 1_000;
    let p = dns("198.18.8.8");
    let on = [cpus[0], cpus[1]];
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let mut k = kernel_or_skip("gcra_cpus").expect("loaded before");
        k.set_config(&limits(1_000_000, 20_000, 0, 0, 0)).unwrap();
        k.test_run_on_cpus(&p, &on, 300_000).expect("test runs");
        let c = totals(&k);
        let passed = c.packets[reason::PASSED];
        assert_eq!(passed + c.packets[reason::RATE_LIMITED], 600_000);
        assert!(
            passed > 20_000,
            "the burst and some refill passed: {passed}"
        );
        let (_, state) = k.sources().unwrap()[0];
        // The entry was made by the first packet, at its time (known_seen_ns starts there
        // and nothing in this test moves it).
        let moves = (state.pkt_tat - state.known_seen_ns) / INTERVAL;
        // A pass after five lost compare-and-swaps in a row lets its packet through without
        // a move (fail open, never stricter): rare, and the only way to pass more. Seen at
        // 0.11% of the passes on this machine when other work loads both CPUs; the bound is
        // 0.5%. (The lost updates this guards against, a refill written over by another CPU,
        // lose several percent.)
        assert!(
            passed <= moves + passed / 200,
            "{passed} passes but the TAT moved only {moves} intervals: updates were lost"
        );
        if moves <= passed {
            return;
        }
        outcomes.push((passed, moves));
    }
    panic!("the TAT moved more than one interval per pass in every attempt: {outcomes:?}");
}

fn a_config_written_while_packets_run_is_never_read_half_written(cpus: &[usize]) {
    // Two loads on one set of pinned maps: `runner`'s program reads the config that `writer`
    // writes, from another thread, at the same time. (The runner is loaded first: a load
    // writes the config once, and the writer must start from the slot in force.)
    let dir = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/guard-test-race-{}",
        std::process::id()
    ));
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    let runner = guard::ebpf::load(Some(&dir)).expect("load the runner");
    let mut writer = guard::ebpf::load(Some(&dir)).expect("load the writer");
    // Two configs whose mix is visible: A limits the source (1 pps, burst 1); B passes it in
    // dry-run with no limits. A packet that read A's limits with B's dry-run flag would be
    // counted as would_drop, which neither A nor B alone ever produces.
    let a = limits(1, 1, 0, 0, 0);
    let b = Config {
        flags: FLAG_DRY_RUN,
        ..Config::default()
    };
    writer.set_config(&a).unwrap();
    let p = dns("198.18.9.1");
    let on = cpus.to_vec();
    let stop = AtomicBool::new(false);
    let mut flips = 0u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = std::time::Instant::now() + Duration::from_millis(1500);
            let mut flip = false;
            while std::time::Instant::now() < deadline {
                writer.set_config(if flip { &a } else { &b }).unwrap();
                flip = !flip;
                flips += 1;
            }
            stop.store(true, Ordering::Relaxed);
        });
        while !stop.load(Ordering::Relaxed) {
            runner.test_run_on_cpus(&p, &on, 2_000).expect("test runs");
        }
    });
    assert!(flips > 100, "only {flips} config writes");
    let c = totals(&runner);
    assert!(
        c.packets[reason::RATE_LIMITED] > 0,
        "config A was in force at times"
    );
    assert!(
        c.packets[reason::PASSED] > 1,
        "config B was in force at times"
    );
    assert_eq!(
        c.packets[reason::WOULD_DROP],
        0,
        "a packet read a config mixed from two writes"
    );
}
