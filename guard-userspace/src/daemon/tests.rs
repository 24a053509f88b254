//! The daemon's unit tests: reloads, overrides, the tick, detach, over the fake data plane.
use guard_common::{Ban, reason, source_key_v4};

use super::{listeners::Listeners, *};
use crate::{
    cidr::Cidr,
    control::{
        BanInfo,
        testing::{FakeClock, FakeDatapath},
    },
    dataplane::List,
    dataplane::LoadError,
    health::{OverrideMode, Status},
    rpc::{Handler, Reply, Request},
    state::{Opened, Store},
};

const SEC: u64 = 1_000_000_000;

struct Fixture {
    dir: PathBuf,
    clock: FakeClock,
    /// The daemon's tasks (the check runner, listeners) run here.
    rt: tokio::runtime::Runtime,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fixture(name: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("guard-daemon-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Fixture {
        dir,
        clock: FakeClock::new(1000 * SEC, 1_700_000_000),
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    }
}

fn no_detach(_: &Path) -> Result<Vec<String>, LoadError> {
    Ok(vec!["veth0".to_string()])
}

impl Fixture {
    /// A daemon over a fake data plane, started from `config` as `guard run --config`.
    fn daemon(&self, config: &str) -> Daemon<FakeDatapath> {
        let path = self.dir.join("guard.toml");
        std::fs::write(&path, config).unwrap();
        let opts = RunOptions {
            config: Some(path),
            overrides: Overrides {
                state_dir: Some(self.dir.join("state")),
                // No listeners: unit tests must not take fixed ports.
                health_listen: Some(String::new()),
                agent_listen: Some(String::new()),
                ..Overrides::default()
            },
            allow_private_bpffs: false,
            start_empty: false,
        };
        let settings = load_settings(&opts).unwrap();
        let saved = match Store::load(self.dir.join("state")).unwrap() {
            Opened::Found(s) => Some(s),
            _ => None,
        };
        let _in_runtime = self.rt.enter();
        let health = Health::new(settings.health.config().unwrap(), Listeners::default()).unwrap();
        let mut control = Control::new(FakeDatapath::new(self.clock.clone()), settings, vec![])
            .with_wall_clock(self.clock.wall());
        control.apply_kernel_config().unwrap();
        control.restore(saved).unwrap();
        let published = Published::new(self.clock.now_unix());
        Daemon::new(control, opts, no_detach, health, published)
    }

    /// Sends `request` to the daemon as the control socket would.
    fn call(&self, d: &Daemon<FakeDatapath>, request: Request) -> Result<Reply, String> {
        self.rt.block_on(d.handle(request))
    }

    /// Sends `request` while a task ticks, as the daemon's loop would.
    fn handle_ticking(
        &self,
        d: &Arc<Daemon<FakeDatapath>>,
        request: Request,
    ) -> Result<Reply, String> {
        self.rt.block_on(async {
            let ticker = Arc::clone(d);
            let ticking = tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(20));
                loop {
                    every.tick().await;
                    let t = Arc::clone(&ticker);
                    let _ = tokio::task::spawn_blocking(move || t.tick()).await;
                }
            });
            let reply = d.handle(request).await;
            ticking.abort();
            reply
        })
    }
}

fn drain(secs: Option<u64>, reason: &str) -> Request {
    Request::Operator {
        mode: OverrideMode::Drain,
        for_secs: secs,
        reason: Some(reason.into()),
        force: false,
    }
}

#[test]
fn drain_answers_with_a_report_that_shows_it_and_ready_clears_it() {
    let f = fixture("drain");
    let d = Arc::new(f.daemon(""));
    let Reply::Operator { operator, report } = f.handle_ticking(&d, drain(None, "deploy")).unwrap()
    else {
        panic!("wrong reply")
    };
    assert_eq!(operator.as_ref().map(|o| o.mode), Some(OverrideMode::Drain));
    assert_eq!(report.status, Status::Drain);
    assert_eq!(report.reason, "operator: deploy");
    let Reply::Health(now) = f.call(&d, Request::Health).unwrap() else {
        panic!("wrong reply")
    };
    assert_eq!(now.status, Status::Drain);

    let ready = Request::Operator {
        mode: OverrideMode::Ready,
        for_secs: None,
        reason: None,
        force: false,
    };
    let Reply::Operator { operator, report } = f.handle_ticking(&d, ready).unwrap() else {
        panic!("wrong reply")
    };
    assert_eq!(operator, None);
    // Whatever this machine's load says now; only the override is gone.
    assert_eq!(report.operator, None);
    assert!(!report.reason.starts_with("operator"), "{}", report.reason);
}

#[test]
fn an_override_survives_a_restart_and_an_expiring_one_lapses_on_its_own() {
    let f = fixture("override-restart");
    let d = Arc::new(f.daemon(""));
    f.handle_ticking(&d, drain(Some(60), "kernel update"))
        .unwrap();
    drop(d);
    let Opened::Found(saved) = Store::load(f.dir.join("state")).unwrap() else {
        panic!("no state file")
    };
    let saved = saved.operator.expect("the override is in the state file");
    assert_eq!(saved.expires, Some(f.clock.now_unix() + 60));

    // A restarted daemon picks it up from the state file.
    let d = Arc::new(f.daemon(""));
    d.tick();
    let Reply::Health(report) = f.call(&d, Request::Health).unwrap() else {
        panic!("wrong reply")
    };
    assert_eq!(report.status, Status::Drain);
    assert!(
        report.reason.starts_with("operator: kernel update (until "),
        "{}",
        report.reason
    );

    // Its time runs out: the next tick drops it, from the report and from the file.
    f.clock.advance(Duration::from_secs(61));
    d.tick();
    let Reply::Health(report) = f.call(&d, Request::Health).unwrap() else {
        panic!("wrong reply")
    };
    assert_eq!(report.operator, None);
    assert!(!report.reason.starts_with("operator"), "{}", report.reason);
    assert_eq!(d.lock().operator(), None);
    let Opened::Found(saved) = Store::load(f.dir.join("state")).unwrap() else {
        panic!("no state file")
    };
    assert_eq!(saved.operator, None);
}

#[test]
fn an_override_with_a_bad_duration_or_reason_is_refused() {
    let f = fixture("override-bad");
    let d = f.daemon("");
    let e = f.call(&d, drain(Some(0), "x")).unwrap_err();
    assert!(e.contains("TTL of 0s"), "{e}");
    let e = f.call(&d, drain(None, "a\nb")).unwrap_err();
    assert!(e.contains("reason"), "{e}");
    assert_eq!(d.lock().operator(), None);
}

#[test]
fn reload_with_a_threshold_of_150_is_rejected_and_the_old_health_settings_stay() {
    let f = fixture("reload-health");
    let d = f.daemon("[health]\nwarn_at = 50\n");
    std::fs::write(
        f.dir.join("guard.toml"),
        "[limits]\npps = 7\n[health]\nwarn_at = 150\n",
    )
    .unwrap();
    let e = f.call(&d, Request::Reload).unwrap_err();
    assert!(
        e.contains("line 4: health.warn_at = 150: expected a percentage from 0 to 100"),
        "{e}"
    );
    assert_eq!(d.lock_health().eval.config().headroom().warn_at, 50.0);
    assert_ne!(
        d.lock().datapath().config.pps,
        7,
        "nothing of it was applied"
    );

    std::fs::write(f.dir.join("guard.toml"), "[health]\nwarn_at = 60\n").unwrap();
    f.call(&d, Request::Reload).unwrap();
    assert_eq!(d.lock_health().eval.config().headroom().warn_at, 60.0);
}

#[test]
fn reload_binds_a_new_listen_address_before_closing_the_old_one() {
    let f = fixture("reload-listen");
    let d = f.daemon("");
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (a, b) = (free_port(), free_port());
    let mut opts = d.opts.clone();
    opts.overrides.health_listen = None;
    let set = |port: u16| {
        std::fs::write(
            f.dir.join("guard.toml"),
            format!("[health]\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .unwrap();
    };
    let d = Daemon { opts, ..d };
    set(a);
    f.call(&d, Request::Reload).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", a)).is_ok());
    // Port a is held by someone else now: a reload to it from b must fail and keep b.
    set(b);
    f.call(&d, Request::Reload).unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", b)).is_ok());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", a)).is_err(),
        "the old one closed"
    );
    let squatter = std::net::TcpListener::bind(("127.0.0.1", a)).unwrap();
    set(a);
    let e = f.call(&d, Request::Reload).unwrap_err();
    assert!(
        e.contains(&format!("cannot listen on 127.0.0.1:{a}")),
        "{e}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", b)).is_ok(),
        "b still serves"
    );
    drop(squatter);
}

#[test]
fn reload_with_a_bad_config_is_rejected_and_the_old_limits_stay() {
    let f = fixture("reload");
    let d = f.daemon("[limits]\npps = 100\n");
    assert_eq!(d.lock().datapath().config.pps, 100);

    std::fs::write(f.dir.join("guard.toml"), "[limits]\nburst = 10\npps = -1\n").unwrap();
    let e = f.call(&d, Request::Reload).unwrap_err();
    assert!(e.contains("line 3: limits.pps = -1"), "{e}");
    assert!(e.contains("the running configuration stays"), "{e}");
    assert_eq!(d.lock().datapath().config.pps, 100);
    assert_eq!(d.lock().settings().limits.burst, 40_000);

    std::fs::write(f.dir.join("guard.toml"), "[limits]\npps = 50\n").unwrap();
    let Reply::Reloaded(r) = f.call(&d, Request::Reload).unwrap() else {
        panic!("wrong reply")
    };
    assert_eq!(r.limits.pps, 50);
    assert_eq!(d.lock().datapath().config.pps, 50);
}

#[test]
fn reload_keeps_command_line_overrides_on_top_of_the_file() {
    let f = fixture("overrides");
    let mut d = f.daemon("[limits]\npps = 100\n");
    d.opts.overrides.syn_pps = Some(3);
    std::fs::write(f.dir.join("guard.toml"), "[limits]\nsyn_pps = 999\n").unwrap();
    f.call(&d, Request::Reload).unwrap();
    assert_eq!(d.lock().datapath().config.syn_pps, 3);
}

#[test]
fn tick_expires_entries_and_records_new_bans_in_the_state_file() {
    let f = fixture("tick");
    let d = f.daemon("");
    {
        let mut c = d.lock();
        let cidr: Cidr = "192.0.2.0/24".parse().unwrap();
        c.list_add(List::Deny, cidr, Some(Duration::from_secs(5)), None)
            .unwrap();
        let now = f.clock.now_ns();
        let key = source_key_v4([203, 0, 113, 9], 32);
        let ban = Ban {
            expires_ns: now + 60 * SEC,
            since_ns: now,
            reason: reason::RATE_LIMITED as u32,
            _pad: 0,
        };
        let dp = c.datapath_mut();
        dp.bans.insert(key, ban);
        dp.events.push(BanEvent {
            source: key,
            since_ns: ban.since_ns,
            expires_ns: ban.expires_ns,
            reason: ban.reason,
            ifindex: 2,
        });
    }
    f.clock.advance(Duration::from_secs(5));
    d.tick();
    let c = d.lock();
    assert!(c.datapath().events.is_empty());
    assert!(c.datapath().lists.is_empty());
    let Opened::Found(saved) = Store::load(c.store().dir()).unwrap() else {
        panic!("no state file")
    };
    assert!(saved.deny.is_empty());
    assert_eq!(saved.bans.len(), 1);
    assert_eq!(saved.bans[0].source.to_string(), "203.0.113.9");
}

#[test]
fn detach_request_stops_the_daemon() {
    let f = fixture("detach");
    let d = f.daemon("");
    let reply = f.call(&d, Request::Detach).unwrap();
    assert_eq!(
        reply,
        Reply::Detached {
            interfaces: vec!["veth0".into()]
        }
    );
    assert!(d.stop.is_cancelled());
}

#[test]
fn other_requests_go_to_the_control_plane() {
    let f = fixture("dispatch");
    let d = f.daemon("");
    assert!(matches!(f.call(&d, Request::Status), Ok(Reply::Status(_))));
}

fn new_ban(i: u8) -> NewBan {
    NewBan {
        ban: BanInfo {
            source: format!("203.0.113.{i}").parse().unwrap(),
            reason: "rate_limited".into(),
            since: 1_714_564_800,
            expires: 1_714_564_860,
        },
        iface: "eth0".into(),
    }
}

#[test]
fn ban_log_names_source_reason_and_expiry() {
    let lines = ban_log_lines(&[new_ban(1)], 10);
    assert_eq!(
        lines,
        ["banned 203.0.113.1/32 on eth0: rate_limited, until 2024-05-01T12:01:00Z (1m)"]
    );
}

#[test]
fn ban_log_is_rate_limited_under_a_flood() {
    let bans: Vec<NewBan> = (0..250).map(|i| new_ban(i as u8)).collect();
    let lines = ban_log_lines(&bans, BAN_LINES_PER_TICK);
    assert_eq!(lines.len(), BAN_LINES_PER_TICK + 1);
    assert!(lines[10].contains("240 more new bans"), "{}", lines[10]);
    assert!(ban_log_lines(&[], 10).is_empty());
}

#[test]
fn settings_are_the_file_then_the_flags() {
    let opts = RunOptions {
        config: None,
        overrides: Overrides {
            pps: Some(9),
            ..Overrides::default()
        },
        allow_private_bpffs: false,
        start_empty: false,
    };
    let s = load_settings(&opts).unwrap();
    assert_eq!(s.limits.pps, 9);
    assert_eq!(s.limits.burst, Settings::builtin().limits.burst);
    let bad = RunOptions {
        config: Some(PathBuf::from("/nonexistent/guard.toml")),
        overrides: Overrides::default(),
        allow_private_bpffs: false,
        start_empty: false,
    };
    let e = load_settings(&bad).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/guard.toml"), "{e}");
}
