//! Live: the real daemon with a UDP service in a server namespace, a client that talked to it
//! before the attack, and a flood of the service's port from spoofed sources (raw frames from
//! an attacker namespace). The service goes under attack, the flood is held to the newcomer
//! budget, and the earlier client keeps being answered.
mod support;

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    WAIT,
    netns::{Testbed, live_or_skip, udp_in, warm_up},
    raw::{StopOnDrop, mac_of, no_rp_filter, spawn_flood},
    wait_for,
};

const SRV_ATK: &str = "198.18.13.1";
const ATK: &str = "198.18.13.2";
const SRV_CLI: &str = "198.18.14.1";
const CLI: &str = "198.18.14.2";
const PORT: u16 = 5353;

/// An Ethernet/IPv4/UDP frame from `src` to the service (checksums as the stack wants them:
/// the IPv4 header's, and none for UDP).
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(20u16 + 8 + 18).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40_000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&(8u16 + 18).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&[0x5a; 18]);
    f
}

/// The echo service: answers each datagram to PORT, until `stop`.
fn echo(sock: UdpSocket, stop: Arc<AtomicBool>) {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    }
}

/// The client: `n` requests, one every `gap`, each waiting up to 200 ms for its answer;
/// returns how many were answered.
fn client(sock: &UdpSocket, n: u32, gap: Duration) -> u32 {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = format!("{SRV_CLI}:{PORT}");
    let mut buf = [0u8; 64];
    let mut answered = 0;
    for i in 0..n {
        let req = i.to_be_bytes();
        if sock.send_to(&req, &to).is_err() {
            continue;
        }
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((4, _)) if buf[..4] == req => {
                    answered += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(gap);
    }
    answered
}

fn service(tb: &Testbed) -> Value {
    let out = tb.guard_ok(&["status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "echo")
        .cloned()
        .expect("the echo service in guard status")
}

#[test]
fn a_spoofed_flood_is_held_to_the_newcomer_budget_while_the_earlier_client_is_answered() {
    if !live_or_skip("live spoofed flood") {
        return;
    }
    let mut tb = Testbed::new();
    let srv = tb.netns("s");
    let atk = tb.netns("a");
    let cli = tb.netns("c");
    let (s_atk, a_dev) = tb.link(&srv, &format!("{SRV_ATK}/24"), &atk, &format!("{ATK}/24"));
    let (s_cli, _) = tb.link(&srv, &format!("{SRV_CLI}/24"), &cli, &format!("{CLI}/24"));
    warm_up(&atk, SRV_ATK);
    warm_up(&cli, SRV_CLI);
    // Replies to spoofed sources would go nowhere; don't let rp_filter drop the flood first.
    no_rp_filter(&srv, &s_atk);
    let stop = Arc::new(AtomicBool::new(false));
    let svc = udp_in(&srv, &format!("0.0.0.0:{PORT}"));
    let echo_stop = stop.clone();
    let echo_thread = std::thread::spawn(move || echo(svc, echo_stop));
    let _stop = StopOnDrop(stop.clone());

    // A configured ceiling (no learning needed in a test), quick entry, known after 1 s.
    let config = tb.tmp.join("guard.toml");
    std::fs::write(
        &config,
        format!(
            "[attack]\nknown_after_secs = 1\nenter_secs = 1\nleave_secs = 3\nnewcomer_share = 0.1\n\
             [[services]]\nname = \"echo\"\nprotocol = \"udp\"\nport = {PORT}\nmax_pps = 2000\n"
        ),
    )
    .unwrap();
    tb.start_guard(
        &srv,
        &[
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &s_atk,
            "--iface",
            &s_cli,
            "--health-listen",
            "",
            "--agent-listen",
            "",
        ],
    );

    // The client talks first: 3 s of requests make it known (known_after_secs = 1).
    let sock = udp_in(&cli, &format!("{CLI}:0"));
    let before = client(&sock, 60, Duration::from_millis(50));
    assert!(before >= 57, "without a flood {before} of 60 were answered");
    let status: Value = serde_json::from_str(&tb.guard_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["known_sources"], 1, "the client is known: {status}");

    // 16,384 spoofed sources of 198.19.0.0/16 at ~40,000 packets/s for at most 8 s.
    let dst_mac = mac_of(&srv, &s_atk);
    let src_mac = mac_of(&atk, &a_dev);
    let dst: Ipv4Addr = SRV_ATK.parse().unwrap();
    let frames: Vec<Vec<u8>> = (0..16_384u32)
        .map(|i| {
            let b = i.to_be_bytes();
            frame(dst_mac, src_mac, Ipv4Addr::new(198, 19, b[2], b[3]), dst)
        })
        .collect();
    let (flooder, _sent) = spawn_flood(
        &atk,
        &a_dev,
        frames,
        40_000,
        &stop,
        400_000,
        Duration::from_secs(8),
    );

    // The service goes under attack within a few seconds.
    let under = wait_for(WAIT, || {
        let s = service(&tb);
        s["under_attack"].as_bool().filter(|a| *a).map(|_| s)
    })
    .unwrap_or_else(|| panic!("the service never went under attack\n{}", tb.logs()));
    assert!(under["pps"].as_f64().unwrap() > 2_000.0, "{under}");

    // Meanwhile the earlier client keeps being answered.
    let during = client(&sock, 40, Duration::from_millis(50));
    let s = service(&tb);
    stop.store(true, Ordering::Relaxed);
    let flooded = flooder.join().expect("flood thread");
    let _ = echo_thread.join();
    assert!(flooded > 20_000, "the flood sent only {flooded} packets");
    assert!(
        during >= 38,
        "under the spoofed flood the earlier client got {during} of 40 answers\n{}",
        tb.logs()
    );
    // The flood was held: newcomers beyond the budget (a tenth of 2,000 packets/s) dropped.
    assert!(
        s["newcomer_dropped_pps"].as_f64().unwrap() > 1_000.0,
        "the flood was not held to the newcomer budget: {s}"
    );
    let stats: Value = serde_json::from_str(&tb.guard_ok(&["stats", "--json"])).unwrap();
    let limited = stats["total"]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == "newcomer_limited")
        .and_then(|r| r["packets"].as_u64())
        .unwrap();
    assert!(limited > 10_000, "newcomer_limited: {limited}");
    assert!(
        tb.logs().contains("service echo is UNDER ATTACK"),
        "the daemon logs the attack\n{}",
        tb.logs()
    );
    // When the flood stops, the attack is over after leave_secs.
    wait_for(WAIT, || {
        (!service(&tb)["under_attack"].as_bool()?).then_some(())
    })
    .unwrap_or_else(|| panic!("the attack never ended\n{}", tb.logs()));
    assert!(tb.logs().contains("service echo: the attack is over"));
    let _ = s_cli;
}
