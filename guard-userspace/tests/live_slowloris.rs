//! The health port under slow and idle clients (slowloris), live: ten sources holding
//! connections on the health HTTP port (under the default SYN limit, so the guard lets them
//! in), some trickling a request head a byte at a time, some sending nothing, each
//! reconnecting when the server cuts it off: first the 30 each, then more than the
//! port's ordinary pool holds. Meanwhile the allow-listed load balancer probes `/readyz` every
//! 100 ms, and every probe must be answered 200, quickly.
mod support;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use support::netns::{Testbed, in_netns, live_or_skip, sh};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};

/// The numbers: ten sources, 30 connections each; then 110 each, more than the
/// ordinary pool (`serve::http::MAX_CONNECTIONS`, 1,024).
const SOURCES: u8 = 10;
const PER_SOURCE: [usize; 2] = [30, 110];
/// A holder refused (closed without a word: the pool was full) tries again after this, which
/// keeps each source's SYN rate under the guard's default limit.
const REFUSED_BACKOFF: Duration = Duration::from_secs(1);
/// How long the attack lasts, and the probes with it.
const ATTACK: Duration = Duration::from_secs(6);
/// A probe's deadline from connect to the last byte of the answer, as the issue asks. On this
/// 2-core machine shared with builds and floods, a lone probe now and then waits seconds for
/// the CPU, so 95% of them are held to it (a probe queued behind the slow clients would wait
/// for the 2 s header timeout, every one of them); every probe must still be answered 200.
const PROBE_DEADLINE: Duration = Duration::from_millis(100);
/// The share of probes that must meet [`PROBE_DEADLINE`].
const ON_TIME: f64 = 0.95;

async fn connect_from(source: &str, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{source}:0").parse().expect("source address"))?;
    s.connect(to).await
}

/// One attacker connection slot until `until`: connect, trickle (or idle) until cut off,
/// again. Returns how many connections it made.
async fn hold(
    source: String,
    to: SocketAddr,
    trickle: bool,
    until: Instant,
    made_all: Arc<AtomicUsize>,
) -> usize {
    let mut made = 0;
    while Instant::now() < until {
        let Ok(mut s) = connect_from(&source, to).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        made += 1;
        made_all.fetch_add(1, Ordering::Relaxed);
        if trickle {
            let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n").await;
        }
        let mut buf = [0u8; 512];
        let mut answered = false;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return made;
            }
            let step = left.min(Duration::from_millis(300));
            if trickle && s.write_all(b"X").await.is_err() {
                break;
            }
            match tokio::time::timeout(step, s.read(&mut buf)).await {
                // Cut off (the 408, then the close): connect again.
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => answered = true,
                Err(_) => {}
            }
        }
        if !answered {
            tokio::time::sleep(REFUSED_BACKOFF).await;
        }
    }
    made
}

/// One probe: (status line, time from connect to the end of the answer).
async fn probe(source: &str, to: SocketAddr) -> (String, Duration) {
    let start = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut s = connect_from(source, to).await?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: guard\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    })
    .await;
    let line = match answer {
        Ok(Ok(out)) => String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("(nothing)")
            .to_string(),
        Ok(Err(e)) => format!("error: {e}"),
        Err(_) => "timed out after 5s".to_string(),
    };
    (line, start.elapsed())
}

#[test]
fn slow_and_idle_clients_from_ten_sources_never_keep_the_load_balancer_from_a_200() {
    if !live_or_skip(
        "slow_and_idle_clients_from_ten_sources_never_keep_the_load_balancer_from_a_200",
    ) {
        return;
    }
    let mut tb = Testbed::new();
    let srv = tb.netns("s");
    let cli = tb.netns("c");
    let (iface, peer_if) = tb.link(&srv, "198.18.71.1/24", &cli, "198.18.71.2/24");
    let lb = "198.18.71.50";
    let sources: Vec<String> = (1..=SOURCES)
        .map(|i| format!("198.18.71.{}", 10 + i))
        .collect();
    for a in sources.iter().map(String::as_str).chain([lb]) {
        sh(&[
            "ip",
            "-n",
            &cli,
            "addr",
            "add",
            &format!("{a}/24"),
            "dev",
            &peer_if,
        ]);
    }
    let config = tb.tmp.join("guard.toml");
    // The state is pass throughout: the test is of the server, not of the state machine. The
    // attack itself can saturate this machine's two cores, which would (rightly) drain the
    // host at drain_at = 100%; `fall = 100` asks for 100 worse seconds in a row first.
    std::fs::write(
        &config,
        "[health]\nwarn_at = 99\ndrain_at = 100\npsi_warn_at = 99\npsi_drain_at = 100\nrise = 1\nfall = 100\n",
    )
    .unwrap();
    tb.start_guard(
        &srv,
        &[
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &iface,
            "--health-listen",
            "198.18.71.1:9301",
            "--agent-listen",
            "",
        ],
    );
    tb.guard_ok(&["allow", "add", lb, "--reason", "load balancer"]);
    let to: SocketAddr = "198.18.71.1:9301".parse().unwrap();
    let lb = lb.to_string();
    let (probes, made) = in_netns(&cli, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            // Past `starting`, and the allow list in the server's hands (the next tick).
            let ready = Instant::now() + Duration::from_secs(15);
            loop {
                let (line, _) = probe(&lb, to).await;
                if line == "HTTP/1.1 200 OK" {
                    break;
                }
                assert!(Instant::now() < ready, "the host never served: {line}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut probes = Vec::new();
            let mut made = 0;
            for per_source in PER_SOURCE {
                // The holders' own bound; they are stopped when the probes are done.
                let until = Instant::now() + ATTACK + Duration::from_secs(20);
                let connected = Arc::new(AtomicUsize::new(0));
                let mut holders = tokio::task::JoinSet::new();
                for (i, src) in sources.iter().enumerate() {
                    for j in 0..per_source {
                        // Half trickle a head, half idle.
                        holders.spawn(hold(
                            src.clone(),
                            to,
                            (i + j) % 2 == 0,
                            until,
                            Arc::clone(&connected),
                        ));
                    }
                }
                // The first probe once every holder has connected (bounded by the attack).
                let want = usize::from(SOURCES) * per_source;
                let mut poll = tokio::time::interval(Duration::from_millis(10));
                while connected.load(Ordering::Relaxed) < want && Instant::now() < until {
                    poll.tick().await;
                }
                let mut every = tokio::time::interval(Duration::from_millis(100));
                let probing = Instant::now() + ATTACK;
                while Instant::now() < probing {
                    every.tick().await;
                    probes.push(probe(&lb, to).await);
                }
                holders.abort_all();
                while holders.join_next().await.is_some() {}
                made += connected.load(Ordering::Relaxed);
            }
            (probes, made)
        })
    });
    let held: usize = PER_SOURCE.iter().map(|n| usize::from(SOURCES) * n).sum();
    assert!(made >= held, "the attackers made only {made} connections");
    assert!(
        probes.len() >= 40,
        "only {} probes: {probes:?}",
        probes.len()
    );
    let not_200: Vec<_> = probes
        .iter()
        .filter(|(line, _)| line != "HTTP/1.1 200 OK")
        .collect();
    let slowest = probes.iter().map(|(_, t)| *t).max().unwrap_or_default();
    assert!(
        not_200.is_empty(),
        "{} of {} probes not answered 200: {not_200:?}\n{}",
        not_200.len(),
        probes.len(),
        tb.logs()
    );
    let on_time = probes.iter().filter(|(_, t)| *t <= PROBE_DEADLINE).count();
    assert!(
        on_time as f64 >= ON_TIME * probes.len() as f64,
        "only {on_time} of {} probes answered within {PROBE_DEADLINE:?} (slowest {slowest:?}): {probes:?}",
        probes.len()
    );
    println!(
        "{} probes, all 200, slowest {slowest:?}; the attackers made {made} connections",
        probes.len()
    );
}
