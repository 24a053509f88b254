//! Tests of the config: the embedded default, every field's validation, flags, routes.
use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Settings::parse(text, ConfigSource::File(PathBuf::from("/etc/guard.toml")))
}

#[test]
fn embedded_default_parses_to_the_builtin_values() {
    assert_eq!(Settings::load(None).unwrap(), Settings::builtin());
}

#[test]
fn every_default_key_is_commented() {
    // Each `key = value` line is preceded by a comment line (or another key's comment
    // block), so `guard config default` explains everything it shows.
    let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.starts_with('#') {
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "default.toml line {}: {line:?} has no comment above it",
                i + 1
            );
        }
    }
}

#[test]
fn empty_file_means_builtin_values() {
    let s = parse("").unwrap();
    assert_eq!(s.limits, Settings::builtin().limits);
    assert_eq!(
        s.source,
        ConfigSource::File(PathBuf::from("/etc/guard.toml"))
    );
}

#[test]
fn file_values_override_builtin() {
    let s = parse(
        "[datapath]\ninterfaces = [\"eth0\", \"eth1\"]\nmode = \"generic\"\ndry_run = true\n\
             [limits]\npps = 100\nipv6_prefix = 56\n[control]\nsocket = \"/tmp/g.sock\"\n",
    )
    .unwrap();
    assert_eq!(s.datapath.interfaces, ["eth0", "eth1"]);
    assert_eq!(s.datapath.mode, AttachMode::Generic);
    assert!(s.datapath.dry_run);
    assert_eq!(s.limits.pps, 100);
    assert_eq!(s.limits.burst, 40_000);
    assert_eq!(s.limits.ipv6_prefix, 56);
    assert_eq!(s.control.socket, PathBuf::from("/tmp/g.sock"));
}

#[test]
fn out_of_range_value_names_line_field_value_and_range() {
    let e = parse("[limits]\nburst = 5\npps = -5\n").unwrap_err();
    assert_eq!(e.line(), Some(3));
    assert_eq!(
        e.to_string(),
        "/etc/guard.toml line 3: limits.pps = -5: out of range: accepts 0 to 4294967296"
    );
    let e = parse("[limits]\nipv4_prefix = 33\n").unwrap_err();
    assert!(e.to_string().contains("limits.ipv4_prefix = 33"), "{e}");
    assert!(e.to_string().contains("accepts 1 to 32"), "{e}");
    let e = parse("[limits]\nipv6_prefix = 0\n").unwrap_err();
    assert!(e.to_string().contains("accepts 1 to 128"), "{e}");
    let e = parse("[limits]\npps = 4294967297\n").unwrap_err();
    assert!(e.to_string().contains("4294967297"), "{e}");
    assert!(parse("[limits]\npps = 4294967296\n").is_ok());
}

#[test]
fn services_attack_and_prefixes_are_read() {
    let s = parse(
        "[attack]\nknown_after_secs = 30\nnewcomer_share = 0.25\n\
             [prefixes]\nipv4 = 20\nescalate_after = 3\nescalate_window = 10\n\
             [[services]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 53\nmax_pps = 50000\n\
             [[services]]\nname = \"web\"\nprotocol = \"tcp\"\nport = 443\n",
    )
    .unwrap();
    assert_eq!(s.attack.known_after_secs, 30);
    assert_eq!(s.attack.newcomer_share, 0.25);
    assert_eq!((s.prefixes.ipv4, s.prefixes.escalate_after), (20, 3));
    assert_eq!(s.prefixes.escalate_window_secs, 10);
    assert_eq!(s.services.len(), 2);
    assert_eq!(s.services[0].max_pps, Some(50_000));
    assert_eq!(
        (
            s.services[1].protocol,
            s.services[1].port,
            s.services[1].max_pps
        ),
        (ServiceProto::Tcp, 443, None)
    );
    let k = s.kernel_config();
    assert_eq!(k.known_after_ns, 30_000_000_000);
    assert_eq!((k.prefix_v4_len, k.prefix_v6_len), (20, 48));
}

#[test]
fn bad_services_and_attack_values_name_line_field_and_what_is_accepted() {
    let svc = |body: &str| format!("[[services]]\nname = \"dns\"\n{body}");
    for (text, line, field, accepted) in [
        (
            svc("protocol = \"udp\"\nport = 70000\n"),
            4,
            "services[0].port = 70000",
            "accepts 1 to 65535",
        ),
        (
            svc("protocol = \"sctp\"\nport = 53\n"),
            3,
            "services[0].protocol = \"sctp\"",
            "expected \"udp\" or \"tcp\"",
        ),
        (
            "[attack]\nnewcomer_share = 2\n".to_string(),
            2,
            "attack.newcomer_share = 2",
            "accepts 0 to 1",
        ),
        (
            "[attack]\nfactor = 1\n".to_string(),
            2,
            "attack.factor = 1",
            "more than 1",
        ),
        (
            svc("protocol = \"udp\"\nport = 53\nmax_syn_pps = 10\n"),
            5,
            "services[0].max_syn_pps = 10",
            "only a tcp service",
        ),
        (
            svc("protocol = \"tcp\"\nport = 443\nsyn_cookies = \"always\"\n"),
            5,
            "services[0].syn_cookies = \"always\"",
            "expected \"auto\" (while the service is under attack), \"on\" or \"off\"",
        ),
        (
            svc("protocol = \"udp\"\nport = 53\nsyn_cookies = \"on\"\n"),
            5,
            "services[0].syn_cookies = \"on\"",
            "only a tcp service",
        ),
        (
            format!(
                "{}[[services]]\nname = \"dns2\"\nprotocol = \"udp\"\nport = 53\n",
                svc("protocol = \"udp\"\nport = 53\n")
            ),
            8,
            "services[1].port = 53",
            "already service \"dns\"",
        ),
        (
            "[prefixes]\nipv4 = 30\n[limits]\nipv4_prefix = 24\n".to_string(),
            2,
            "prefixes.ipv4 = 30",
            "accepts 8 to 24",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.line(), Some(line), "{text:?}: {msg}");
        assert!(msg.contains(field), "{text:?}: {msg}");
        assert!(msg.contains(accepted), "{text:?}: {msg}");
    }
    // A ceiling is required without learning, and the message says why.
    let e = parse(&format!(
        "[attack]\nlearn = false\n{}",
        svc("protocol = \"udp\"\nport = 53\n")
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("required when [attack] learn = false"),
        "{e}"
    );
    // An unknown key in a service is refused like any other.
    let e = parse(&svc("protocol = \"udp\"\nport = 53\nmax_ppps = 1\n")).unwrap_err();
    assert!(e.to_string().contains("max_ppps"), "{e}");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let e = parse("[limits]\npps = 1\nppss = 2\n").unwrap_err();
    assert_eq!(e.line(), Some(3));
    assert!(e.to_string().contains("unknown field `ppss`"), "{e}");
    let e = parse("[limit]\npps = 1\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `limit`"), "{e}");
}

#[test]
fn wrong_type_and_bad_mode_are_rejected_with_their_line() {
    let e = parse("\n[limits]\npps = \"fast\"\n").unwrap_err();
    assert_eq!(e.line(), Some(3), "{e}");
    let e = parse("[datapath]\nmode = \"turbo\"\n").unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
    assert!(e.to_string().contains("turbo"), "{e}");
    assert!(e.to_string().contains("generic"), "{e}");
    let e = parse("[limits\n").unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }), "{e}");
}

#[test]
fn bad_interface_names_are_rejected() {
    let e = parse("[datapath]\ninterfaces = [\"eth0\",\n \"a/b\"]\n").unwrap_err();
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(
        e.to_string().contains("datapath.interfaces = \"a/b\""),
        "{e}"
    );
    assert!(parse("[datapath]\ninterfaces = [\"averyveryverylongname\"]").is_err());
    assert!(parse("[datapath]\ninterfaces = [\"eth0\", \"eth0\"]").is_err());
    assert!(parse("[datapath]\ninterfaces = [\"\"]").is_err());
}

#[test]
fn pin_dir_must_be_absolute() {
    let e = parse("[datapath]\npin_dir = \"bpf/guard\"\n").unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");
}

#[test]
fn flags_override_the_file_and_are_validated() {
    let mut s = parse("[limits]\npps = 100\n").unwrap();
    s.apply(&Overrides {
        interfaces: vec!["veth0".into()],
        mode: Some(AttachMode::Native),
        dry_run: true,
        pps: Some(7),
        ban_seconds: Some(0),
        state_dir: Some(PathBuf::from("/tmp/st")),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(s.datapath.interfaces, ["veth0"]);
    assert_eq!(s.datapath.mode, AttachMode::Native);
    assert!(s.datapath.dry_run);
    assert_eq!(s.limits.pps, 7);
    assert_eq!(s.limits.ban_seconds, 0);
    assert_eq!(s.state_file(), PathBuf::from("/tmp/st/guard.db"));

    let e = s
        .apply(&Overrides {
            pps: Some(MAX_RATE + 1),
            ..Overrides::default()
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "command line: --pps = 4294967297: out of range: accepts 0 to 4294967296"
    );
    assert_eq!(s.limits.pps, 7);
}

#[test]
fn kernel_config_carries_every_limit() {
    let mut s = Settings::builtin();
    s.datapath.dry_run = true;
    let c = s.kernel_config();
    assert_eq!(c.pps, 20_000);
    assert_eq!(c.burst, 40_000);
    assert_eq!(c.syn_pps, 200);
    assert_eq!(c.syn_burst, 400);
    assert_eq!(c.ban_ns, 60_000_000_000);
    assert_eq!(c.flags, FLAG_DRY_RUN);
    assert_eq!((c.v4_prefix_len, c.v6_prefix_len), (32, 64));
}

#[test]
fn reload_reports_settings_that_need_a_restart() {
    let old = Settings::builtin();
    let mut new = old.clone();
    new.limits.pps = 1;
    new.datapath.dry_run = true;
    assert!(old.restart_needed_for(&new).is_empty());
    new.datapath.interfaces = vec!["eth9".into()];
    new.control.socket = PathBuf::from("/x");
    assert_eq!(
        old.restart_needed_for(&new),
        ["datapath.interfaces", "control.socket"]
    );
}

#[test]
fn health_section_is_read_with_its_listeners_and_checks() {
    let s = parse(
            "[health]\nlisten = \"198.18.0.1:9301\"\nagent_listen = \"\"\nwarn_at = 60\n\
             drain_at = 85.5\nrise = 1\n[[health.checks]]\ntype = \"tcp\"\ntarget = \"127.0.0.1:8080\"\n",
        )
        .unwrap();
    assert_eq!(s.health.listen, Some("198.18.0.1:9301".parse().unwrap()));
    assert_eq!(s.health.agent_listen, None);
    assert_eq!(s.health.settings.warn_at, 60.0);
    assert_eq!(s.health.settings.drain_at, 85.5);
    assert_eq!(s.health.settings.rise, 1);
    assert_eq!(s.health.settings.fall, 3);
    assert_eq!(s.health.settings.checks.len(), 1);
    assert!(s.health.config().is_ok());
    let b = Settings::builtin();
    assert_eq!(
        b.health.listen,
        Some(DEFAULT_HEALTH_LISTEN.parse().unwrap())
    );
    assert_eq!(
        b.health.agent_listen,
        Some(DEFAULT_AGENT_LISTEN.parse().unwrap())
    );
}

#[test]
fn threshold_of_150_percent_names_line_field_value_and_range() {
    let e = parse("[health]\ndrain_at = 95\nwarn_at = 150\n").unwrap_err();
    assert_eq!(e.line(), Some(3));
    assert_eq!(
        e.to_string(),
        "/etc/guard.toml line 3: health.warn_at = 150: expected a percentage from 0 to 100"
    );
    let e = parse("[health]\nwarn_at = 95\ndrain_at = 90\n").unwrap_err();
    assert_eq!(e.line(), Some(2));
    assert!(
        e.to_string().contains("must be below health.drain_at = 90"),
        "{e}"
    );
    let e = parse("[health]\nrise = -1\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/etc/guard.toml line 2: health.rise = -1: out of range: accepts 1 to 100"
    );
    let e = parse("[health]\nfall = 0\n").unwrap_err();
    assert!(e.to_string().contains("health.fall = 0"), "{e}");
}

#[test]
fn unknown_check_type_names_line_field_value_and_accepted_types() {
    let e = parse(
        "[health]\n[[health.checks]]\ntype = \"tcp\"\ntarget = \"127.0.0.1:1\"\n\
             [[health.checks]]\ntype = \"icmp\"\ntarget = \"127.0.0.1\"\n",
    )
    .unwrap_err();
    assert_eq!(e.line(), Some(5), "{e}");
    assert_eq!(
        e.to_string(),
        "/etc/guard.toml line 5: health.checks[1].type = \"icmp\": expected \"tcp\" or \"http\""
    );
    let e =
        parse("[health]\nchecks = [{ type = \"tcp\", target = \"x\", port = 1 }]\n").unwrap_err();
    assert!(e.to_string().contains("unknown field `port`"), "{e}");
}

#[test]
fn listen_addresses_are_checked_in_the_file_and_on_the_command_line() {
    for bad in [
        "localhost:9301",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        " ",
    ] {
        let e = parse(&format!("[health]\nlisten = {bad:?}\n")).unwrap_err();
        assert_eq!(e.line(), Some(2), "{bad}: {e}");
        assert!(e.to_string().contains("health.listen"), "{e}");
        assert!(e.to_string().contains("ADDRESS:PORT"), "{e}");
    }
    let mut s = parse("[health]\nlisten = \"[::]:9301\"\n").unwrap();
    assert_eq!(s.health.listen, Some("[::]:9301".parse().unwrap()));
    s.apply(&Overrides {
        health_listen: Some("".into()),
        agent_listen: Some("198.18.0.1:7777".into()),
        ..Overrides::default()
    })
    .unwrap();
    assert_eq!(s.health.listen, None);
    assert_eq!(
        s.health.agent_listen,
        Some("198.18.0.1:7777".parse().unwrap())
    );
    let e = s
        .apply(&Overrides {
            agent_listen: Some("nowhere".into()),
            ..Overrides::default()
        })
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("command line: --agent-listen = \"nowhere\": expected ADDRESS:PORT"),
        "{e}"
    );
}

#[test]
fn default_routes_are_found_in_proc_tables() {
    let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                  eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth0\t0001A8C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n\
                  down0\t00000000\t0101A8C0\t0002\t0\t0\t1\t00000000\t0\t0\t0\n";
    assert_eq!(parse_route_v4(v4), ["eth0", "wlan0"]);
    let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003    ens3\n\
                  20010db8000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    ens3\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
    assert_eq!(parse_route_v6(v6), ["ens3"]);
    assert!(parse_route_v4("Iface\tDestination\n").is_empty());
}

#[test]
fn mode_names_round_trip() {
    for m in [AttachMode::Auto, AttachMode::Native, AttachMode::Generic] {
        assert_eq!(parse_mode(mode_name(m)), Ok(m));
    }
    assert!(
        parse_mode("turbo")
            .unwrap_err()
            .contains("auto, native or generic")
    );
}

#[test]
fn syn_cookies_default_to_auto_for_tcp_and_off_for_udp() {
    use crate::config::SynCookies;
    let s = Settings::parse(
        "[[services]]\nname = \"web\"\nprotocol = \"tcp\"\nport = 443\n\
         [[services]]\nname = \"dns\"\nprotocol = \"udp\"\nport = 53\n\
         [[services]]\nname = \"ssh\"\nprotocol = \"tcp\"\nport = 22\nsyn_cookies = \"off\"\n",
        ConfigSource::Embedded,
    )
    .unwrap();
    let modes: Vec<SynCookies> = s.services.iter().map(|s| s.syn_cookies).collect();
    assert_eq!(modes, [SynCookies::Auto, SynCookies::Off, SynCookies::Off]);
}

/// A `[[health.checks]]` entry named `app-http`, for the watchdogs to name.
const APP_CHECK: &str = "[[health.checks]]\nname = \"app-http\"\ntype = \"http\"\ntarget = \"http://127.0.0.1:8080/\"\n";

#[test]
fn watchdogs_and_escalations_are_read_with_their_defaults() {
    let s = parse(&format!(
        "{APP_CHECK}[[watchdog]]\nname = \"app\"\ncheck = \"app-http\"\nunit = \"app.service\"\nmax_memory = \"2GiB\"\nmax_latency_ms = 800\n\
         [[watchdog]]\nname = \"worker\"\ncheck = \"app-http\"\nrestart_command = [\"/usr/local/bin/restart-worker\", \"now\"]\npid_file = \"/run/worker.pid\"\nmax_memory = \"512MiB\"\nfail_after = 5\ndrain_secs = 0\nmin_interval = \"1h\"\nrestart_timeout = \"20s\"\n\
         [[escalate.haproxy]]\nsocket = \"/run/haproxy/admin.sock\"\ntable = \"per_ip_rates\"\nwhen = \"http_req_rate > 100\"\n"
    ))
    .unwrap();
    let [app, worker] = &s.watchdogs[..] else {
        panic!("{:?}", s.watchdogs)
    };
    assert_eq!(
        app.restart,
        crate::watchdog::Restart::Unit("app.service".into())
    );
    assert_eq!(
        (
            app.max_memory,
            app.max_latency_ms,
            app.fail_after,
            app.drain_secs
        ),
        (Some(2 << 30), Some(800), 3, 30)
    );
    assert_eq!((app.min_interval_secs, app.restart_timeout_secs), (600, 60));
    assert_eq!(
        worker.restart,
        crate::watchdog::Restart::Command(vec![
            "/usr/local/bin/restart-worker".into(),
            "now".into()
        ])
    );
    assert_eq!(
        worker.pid_file.as_deref(),
        Some(Path::new("/run/worker.pid"))
    );
    assert_eq!(
        (
            worker.fail_after,
            worker.drain_secs,
            worker.min_interval_secs,
            worker.restart_timeout_secs
        ),
        (5, 0, 3600, 20)
    );
    let [h] = &s.escalate[..] else {
        panic!("{:?}", s.escalate)
    };
    assert_eq!(h.when.to_string(), "http_req_rate > 100");
    assert_eq!(
        (h.table.as_str(), h.for_secs, h.ban_secs),
        ("per_ip_rates", 30, 600)
    );
}

#[test]
fn bad_watchdogs_and_escalations_name_line_field_and_what_is_accepted() {
    let wd = |body: &str| format!("{APP_CHECK}[[watchdog]]\nname = \"app\"\n{body}");
    for (text, line, field, accepted) in [
        (
            wd("check = \"app-htp\"\nunit = \"app.service\"\n"),
            7,
            "watchdog[0].check = \"app-htp\"",
            "no [[health.checks]] entry has this name",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app.service\"\nrestart_command = [\"/bin/true\"]\n"),
            9,
            "watchdog[0].restart_command",
            "either unit",
        ),
        (
            wd("check = \"app-http\"\n"),
            5,
            "watchdog[0].unit = (none)",
            "required, or restart_command",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app\"\n"),
            8,
            "watchdog[0].unit = \"app\"",
            "with its suffix",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app.service\"\nmax_memory = \"2GB\"\n"),
            9,
            "watchdog[0].max_memory = \"2GB\"",
            "GiB",
        ),
        (
            wd("check = \"app-http\"\nrestart_command = [\"/bin/true\"]\nmax_memory = \"2GiB\"\n"),
            9,
            "watchdog[0].max_memory",
            "needs pid_file",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app.service\"\nfail_after = 0\n"),
            9,
            "watchdog[0].fail_after = 0",
            "accepts 1 to 100",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app.service\"\nmin_interval = \"10 minutes\"\n"),
            9,
            "watchdog[0].min_interval = \"10 minutes\"",
            "such as 90s",
        ),
        (
            wd("check = \"app-http\"\nunit = \"app.service\"\npid_file = \"/run/a.pid\"\n"),
            9,
            "watchdog[0].pid_file",
            "only with restart_command",
        ),
        (
            "[[escalate.haproxy]]\nsocket = \"admin.sock\"\ntable = \"t\"\nwhen = \"gpc0 > 1\"\n"
                .to_string(),
            2,
            "escalate.haproxy[0].socket = \"admin.sock\"",
            "absolute path",
        ),
        (
            "[[escalate.haproxy]]\nsocket = \"/run/a.sock\"\ntable = \"t\"\nwhen = \"rate ~ 1\"\n"
                .to_string(),
            4,
            "escalate.haproxy[0].when = \"rate ~ 1\"",
            "expected COLUMN OP NUMBER",
        ),
        (
            "[[escalate.haproxy]]\nsocket = \"/run/a.sock\"\ntable = \"t\"\nwhen = \"gpc0 > 1\"\nban = \"0s\"\n"
                .to_string(),
            5,
            "escalate.haproxy[0].ban = \"0s\"",
            "accepts 1s to",
        ),
    ] {
        let e = parse(&text).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.line(), Some(line), "{text:?}: {msg}");
        assert!(msg.contains(field), "{text:?}: {msg}");
        assert!(msg.contains(accepted), "{text:?}: {msg}");
    }
    let e = parse(&wd(
        "check = \"app-http\"\nunit = \"app.service\"\nmax_rss = \"1GiB\"\n",
    ))
    .unwrap_err();
    assert!(e.to_string().contains("max_rss"), "{e}");
}

#[test]
fn the_default_config_documents_every_watchdog_and_escalation_key() {
    for key in [
        "name",
        "check",
        "unit",
        "restart_command",
        "pid_file",
        "max_memory",
        "max_latency_ms",
        "fail_after",
        "drain_secs",
        "min_interval",
        "restart_timeout",
    ] {
        assert!(
            DEFAULT_TOML.contains(&format!("\n# {key} = ")),
            "watchdog key {key}"
        );
    }
    for key in ["socket", "table", "when", "for_secs", "ban"] {
        assert!(
            DEFAULT_TOML.contains(&format!("\n# {key} = ")),
            "escalate key {key}"
        );
    }
    // The examples, uncommented (one restart way each), are a valid config.
    let section = |from: &str, to: Option<&str>| {
        let start = DEFAULT_TOML.find(from).unwrap();
        let end = to.map_or(DEFAULT_TOML.len(), |t| {
            DEFAULT_TOML[start..].find(t).unwrap() + start
        });
        DEFAULT_TOML[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with(' '))
            .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
            .collect::<String>()
    };
    let watchdog: String = section("\n# [[watchdog]]\n", Some("\n\n"))
        .lines()
        .filter(|l| !l.starts_with("restart_command") && !l.starts_with("pid_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let escalate = section("\n# [[escalate.haproxy]]\n", None);
    let s = parse(&format!("{APP_CHECK}{watchdog}{escalate}")).unwrap();
    assert_eq!(s.watchdogs.len(), 1);
    assert_eq!(s.escalate.len(), 1);
}

#[test]
fn no_fleet_table_means_no_fleet_and_one_is_read_with_defaults() {
    assert_eq!(parse("").unwrap().fleet, None);
    let f = parse("[fleet]\nservers = [\"nats://198.18.0.1:4222\"]\nhost = \"web-1\"\n")
        .unwrap()
        .fleet
        .unwrap();
    assert_eq!(f.servers, ["nats://198.18.0.1:4222"]);
    assert_eq!(f.bucket, "guard");
    assert_eq!(f.host, "web-1");
    assert_eq!(f.share, [Share::Bans, Share::Deny]);
    assert_eq!(f.pool, "default");
    assert!((f.max_drained - 0.3).abs() < 1e-9);
    let f = parse(
        "[fleet]\nservers = [\"tls://n1:4222\", \"n2:4222\"]\nhost = \"a\"\nshare = [\"allow\", \"bans\"]\n\
         pool = \"web\"\nmax_drained = 0.34\ncreds = \"/etc/guard/f.creds\"\ntls_ca = \"/etc/ca.pem\"\n",
    )
    .unwrap()
    .fleet
    .unwrap();
    assert_eq!(f.share, [Share::Bans, Share::Allow]);
    assert_eq!(f.creds, Some(PathBuf::from("/etc/guard/f.creds")));
    assert_eq!(f.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
    // The hostname is the default host.
    let f = parse("[fleet]\nservers = [\"n1:4222\"]\n")
        .unwrap()
        .fleet
        .unwrap();
    assert!(!f.host.is_empty() && !f.host.contains('.'), "{}", f.host);
}

#[test]
fn bad_fleet_values_name_line_field_value_and_what_is_accepted() {
    for (text, field, accepted) in [
        (
            "[fleet]\nhost = \"a\"\n",
            "fleet.servers",
            "one or more NATS server URLs",
        ),
        (
            "[fleet]\nservers = []\nhost = \"a\"\n",
            "fleet.servers",
            "one or more",
        ),
        (
            "[fleet]\nservers = [\"http://n1\"]\nhost = \"a\"\n",
            "fleet.servers = \"http://n1\"",
            "nats:// or tls://",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a.b\"\n",
            "fleet.host = \"a.b\"",
            "letters, digits",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\nshare = [\"bans\", \"routes\"]\n",
            "fleet.share = \"routes\"",
            "\"bans\", \"deny\" and \"allow\"",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\nmax_drained = 1.5\n",
            "fleet.max_drained = 1.5",
            "from 0 to 1",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\nbucket = \"my bucket\"\n",
            "fleet.bucket",
            "letters, digits",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\ncreds = \"relative.creds\"\n",
            "fleet.creds",
            "",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\ntls_cert = \"/etc/c.pem\"\n",
            "fleet.tls_key",
            "together",
        ),
        (
            "[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\nwho = 1\n",
            "unknown field `who`",
            "",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains(accepted), "{text:?}: {e}");
        assert!(e.contains("line "), "{text:?}: {e}");
    }
}

#[test]
fn a_changed_fleet_needs_a_restart() {
    let old = parse("[fleet]\nservers = [\"n1:4222\"]\nhost = \"a\"\n").unwrap();
    let new = parse("[fleet]\nservers = [\"n2:4222\"]\nhost = \"a\"\n").unwrap();
    assert_eq!(old.restart_needed_for(&new), ["fleet"]);
}

#[test]
fn chain_and_next_are_read_and_a_chain_beside_interfaces_is_refused() {
    let s = parse(
        "[datapath]\nchain = { prog_array = \"/sys/fs/bpf/root/progs\", index = 3 }\nnext = \"/sys/fs/bpf/lb\"\n",
    )
    .unwrap();
    let chain = s.datapath.chain.unwrap();
    assert_eq!(chain.prog_array, PathBuf::from("/sys/fs/bpf/root/progs"));
    assert_eq!(chain.index, 3);
    assert_eq!(s.datapath.next, Some(PathBuf::from("/sys/fs/bpf/lb")));
    let e = parse(
        "[datapath]\ninterfaces = [\"eth0\"]\nchain = { prog_array = \"/sys/fs/bpf/r\", index = 0 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("datapath.chain") && e.contains("line 3"), "{e}");
    let e = parse("[datapath]\nchain = { prog_array = \"/sys/fs/bpf/r\", index = -1 }\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("datapath.chain.index"), "{e}");
    let e = parse("[datapath]\nnext = \"lb\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("datapath.next"), "{e}");
}

#[test]
fn attach_and_priority_are_read_and_a_dispatcher_beside_next_or_chain_is_refused() {
    use crate::dataplane::Placement;
    let s = parse("[datapath]\nattach = \"dispatcher\"\npriority = 20\n").unwrap();
    assert_eq!(s.datapath.attach, Placement::Dispatcher);
    assert_eq!(s.datapath.priority, 20);
    let s = parse("[datapath]\nattach = \"direct\"\n").unwrap();
    assert_eq!(s.datapath.attach, Placement::Direct);
    assert_eq!(parse("").unwrap().datapath.attach, Placement::Auto);
    let e = parse("[datapath]\nattach = \"libxdp\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attach") && e.contains("dispatcher") && e.contains("direct"),
        "names the field and what is accepted: {e}"
    );
    let e = parse("[datapath]\npriority = -1\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("datapath.priority"), "{e}");
    let e = parse("[datapath]\nattach = \"dispatcher\"\nnext = \"/sys/fs/bpf/lb\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("datapath.attach") && e.contains("datapath.next") && e.contains("line 2"),
        "{e}"
    );
    let e = parse(
        "[datapath]\nattach = \"dispatcher\"\nchain = { prog_array = \"/sys/fs/bpf/r\", index = 0 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("datapath.chain"), "{e}");
}
