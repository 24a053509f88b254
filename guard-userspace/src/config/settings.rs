//! [`Settings`] made: the built-in values, a file read and validated whole, the flags on
//! top, the kernel's view of them, and what a reload cannot change.
use super::*;

impl Settings {
    /// The built-in values, which `default.toml` spells out (a test keeps the two equal).
    pub fn builtin() -> Self {
        Self {
            source: ConfigSource::Embedded,
            datapath: DatapathSettings {
                interfaces: Vec::new(),
                mode: AttachMode::Auto,
                attach: crate::dataplane::Placement::Auto,
                priority: crate::dataplane::dispatcher::DEFAULT_PRIORITY,
                dry_run: false,
                pin_dir: PathBuf::from("/sys/fs/bpf/guard"),
                chain: None,
                next: None,
            },
            limits: Limits {
                pps: 20_000,
                burst: 40_000,
                syn_pps: 200,
                syn_burst: 400,
                ban_seconds: 60,
                ipv4_prefix: 32,
                ipv6_prefix: 64,
                malformed_pps: 1_000,
                malformed_burst: 2_000,
            },
            attack: AttackSettings {
                learn: true,
                known_after_secs: 10,
                known_ttl_secs: 86_400,
                newcomer_share: 0.1,
                enter_secs: 2,
                leave_secs: 10,
                factor: 3.0,
                floor_pps: 1_000,
                floor_syn_pps: 100,
                admit_packets: 4,
            },
            services: Vec::new(),
            prefixes: PrefixSettings {
                ipv4: 24,
                ipv6: 48,
                pps: 100_000,
                burst: 200_000,
                escalate_after: 8,
                escalate_window_secs: 60,
                ban_seconds: 600,
            },
            control: ControlSettings {
                socket: PathBuf::from("/run/guard/guard.sock"),
            },
            state: StateSettings {
                dir: PathBuf::from("/var/lib/guard"),
            },
            health: HealthSection {
                listen: parse_listen(DEFAULT_HEALTH_LISTEN).expect("a valid default"),
                agent_listen: parse_listen(DEFAULT_AGENT_LISTEN).expect("a valid default"),
                settings: HealthSettings::default(),
            },
            watchdogs: Vec::new(),
            escalate: Vec::new(),
            fleet: None,
        }
    }

    /// Reads and validates `path`, or the embedded default if `None`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Read`] if the file cannot be read; otherwise as [`Settings::parse`].
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(DEFAULT_TOML, ConfigSource::Embedded),
            Some(p) => {
                let text = fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, ConfigSource::File(p.to_path_buf()))
            }
        }
    }

    /// Parses and validates TOML text; keys it leaves out take their [`Settings::builtin`] value.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Parse`] for bad TOML, unknown keys or wrong types;
    /// [`ConfigError::Invalid`] for values out of range. Both carry the line.
    pub fn parse(text: &str, source: ConfigSource) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: Origin::Config {
                source: source.clone(),
                line: e.span().map(|s| line_of(text, &s)),
            },
            message: e.message().trim_end().to_string(),
        })?;
        let v = Validator {
            text,
            source: &source,
        };
        let RawConfig {
            datapath,
            limits,
            attack,
            services,
            prefixes,
            control,
            state,
            health,
            watchdog,
            escalate,
            fleet,
        } = raw;
        let mut out = Self::builtin();
        out.source = source.clone();

        let RawDatapath {
            interfaces,
            mode,
            attach,
            priority,
            dry_run,
            pin_dir,
            chain,
            next,
        } = datapath;
        if let Some(list) = interfaces {
            let mut names: Vec<String> = Vec::with_capacity(list.len());
            for name in list {
                let span = name.span();
                let name = name.into_inner();
                if let Err(expected) = check_iface(&name, &names) {
                    return Err(v.invalid(
                        &span,
                        "datapath.interfaces",
                        format!("{name:?}"),
                        expected,
                    ));
                }
                names.push(name);
            }
            out.datapath.interfaces = names;
        }
        if let Some(mode) = mode {
            out.datapath.mode = mode.into_inner();
        }
        let attach_span = attach.as_ref().map(|a| a.span());
        if let Some(attach) = attach {
            use crate::dataplane::Placement;
            let span = attach.span();
            out.datapath.attach = match attach.into_inner().as_str() {
                "auto" => Placement::Auto,
                "direct" => Placement::Direct,
                "dispatcher" => Placement::Dispatcher,
                other => {
                    return Err(v.invalid(
                        &span,
                        "datapath.attach",
                        format!("{other:?}"),
                        "\"auto\" (directly, or into libxdp's dispatcher where the interface runs one), \"direct\" or \"dispatcher\"".to_string(),
                    ));
                }
            };
        }
        let mut p = u64::from(out.datapath.priority);
        v.set(
            &mut p,
            priority,
            "datapath.priority",
            0,
            u64::from(u32::MAX),
        )?;
        out.datapath.priority = p as u32;
        if let Some(dry_run) = dry_run {
            out.datapath.dry_run = dry_run;
        }
        if let Some(dir) = pin_dir {
            out.datapath.pin_dir = v.path(dir, "datapath.pin_dir", true)?;
        }
        if let Some(chain) = chain {
            let span = chain.span();
            let RawChain { prog_array, index } = chain.into_inner();
            let prog_array = v.path(prog_array, "datapath.chain.prog_array", true)?;
            let mut i = 0;
            v.set(
                &mut i,
                Some(index),
                "datapath.chain.index",
                0,
                u64::from(u32::MAX),
            )?;
            if !out.datapath.interfaces.is_empty() {
                return Err(v.invalid(
                    &span,
                    "datapath.chain",
                    format!("{{ prog_array = {:?}, index = {i} }}", prog_array.display()),
                    "no chain beside datapath.interfaces: in chain mode the root program that tail-calls the slot decides the interfaces (remove one of the two)".to_string(),
                ));
            }
            out.datapath.chain = Some(crate::dataplane::ChainSlot {
                prog_array,
                index: i as u32,
            });
        }
        if let Some(next) = next {
            out.datapath.next = Some(v.path(next, "datapath.next", true)?);
        }
        if let Some(span) = &attach_span
            && out.datapath.attach == crate::dataplane::Placement::Dispatcher
        {
            let clash = if out.datapath.chain.is_some() {
                Some(
                    "not with datapath.chain: in chain mode the guard is in a program array, not on an interface (remove one of the two)",
                )
            } else if out.datapath.next.is_some() {
                Some(
                    "not with datapath.next: in libxdp's dispatcher the dispatcher runs the programs after the guard (give them a higher priority), and `next` is for a guard that is the root",
                )
            } else {
                None
            };
            if let Some(why) = clash {
                return Err(v.invalid(
                    span,
                    "datapath.attach",
                    "\"dispatcher\"".to_string(),
                    why.to_string(),
                ));
            }
        }

        let RawLimits {
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            ipv4_prefix,
            ipv6_prefix,
            malformed_pps,
            malformed_burst,
        } = limits;
        let l = &mut out.limits;
        v.set(
            &mut l.malformed_pps,
            malformed_pps,
            "limits.malformed_pps",
            0,
            MAX_RATE,
        )?;
        v.set(
            &mut l.malformed_burst,
            malformed_burst,
            "limits.malformed_burst",
            0,
            MAX_RATE,
        )?;
        v.set(&mut l.pps, pps, "limits.pps", 0, MAX_RATE)?;
        v.set(&mut l.burst, burst, "limits.burst", 0, MAX_RATE)?;
        v.set(&mut l.syn_pps, syn_pps, "limits.syn_pps", 0, MAX_RATE)?;
        v.set(&mut l.syn_burst, syn_burst, "limits.syn_burst", 0, MAX_RATE)?;
        v.set(
            &mut l.ban_seconds,
            ban_seconds,
            "limits.ban_seconds",
            0,
            MAX_BAN_SECONDS,
        )?;
        let mut p4 = u64::from(l.ipv4_prefix);
        v.set(&mut p4, ipv4_prefix, "limits.ipv4_prefix", 1, 32)?;
        l.ipv4_prefix = p4 as u8;
        let mut p6 = u64::from(l.ipv6_prefix);
        v.set(&mut p6, ipv6_prefix, "limits.ipv6_prefix", 1, 128)?;
        l.ipv6_prefix = p6 as u8;

        out.attack = v.attack(attack)?;
        out.prefixes = v.prefixes(prefixes, &out.limits)?;
        out.services = v.services(services.unwrap_or_default(), out.attack.learn)?;

        let RawControl { socket } = control;
        if let Some(socket) = socket {
            out.control.socket = v.path(socket, "control.socket", false)?;
        }
        let RawState { dir } = state;
        if let Some(dir) = dir {
            out.state.dir = v.path(dir, "state.dir", false)?;
        }
        out.health = v.health(health)?;
        out.watchdogs = v.watchdogs(watchdog.unwrap_or_default(), &out.health.settings.checks)?;
        let RawEscalate { haproxy } = escalate;
        out.escalate = v.escalate(haproxy.unwrap_or_default())?;
        out.fleet = fleet.map(|f| v.fleet(f)).transpose()?;
        Ok(out)
    }

    /// Applies `guard run` flags on top.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the flag, for a value out of range.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        let Overrides {
            interfaces,
            mode,
            dry_run,
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            socket,
            pin_dir,
            state_dir,
            health_listen,
            agent_listen,
        } = o;
        let flag = |field: &str, value: String, expected: String| ConfigError::Invalid {
            origin: Origin::Flag,
            field: format!("--{field}"),
            value,
            expected,
        };
        if !interfaces.is_empty() {
            let mut names: Vec<String> = Vec::with_capacity(interfaces.len());
            for name in interfaces {
                check_iface(name, &names).map_err(|e| flag("iface", format!("{name:?}"), e))?;
                if self.datapath.chain.is_some() {
                    return Err(flag(
                        "iface",
                        format!("{name:?}"),
                        "no --iface in chain mode ([datapath] chain is set): the root program decides the interfaces".to_string(),
                    ));
                }
                names.push(name.clone());
            }
            self.datapath.interfaces = names;
        }
        if let Some(mode) = mode {
            self.datapath.mode = *mode;
        }
        if *dry_run {
            self.datapath.dry_run = true;
        }
        let l = &mut self.limits;
        for (slot, value, name, max) in [
            (&mut l.pps, pps, "pps", MAX_RATE),
            (&mut l.burst, burst, "burst", MAX_RATE),
            (&mut l.syn_pps, syn_pps, "syn-pps", MAX_RATE),
            (&mut l.syn_burst, syn_burst, "syn-burst", MAX_RATE),
            (
                &mut l.ban_seconds,
                ban_seconds,
                "ban-seconds",
                MAX_BAN_SECONDS,
            ),
        ] {
            if let Some(value) = *value {
                if value > max {
                    return Err(flag(name, value.to_string(), range_text(0, max)));
                }
                *slot = value;
            }
        }
        for (slot, value, name, absolute) in [
            (&mut self.control.socket, socket, "socket", false),
            (&mut self.datapath.pin_dir, pin_dir, "pin-dir", true),
            (&mut self.state.dir, state_dir, "state-dir", false),
        ] {
            if let Some(p) = value {
                check_path(p, absolute)
                    .map_err(|e| flag(name, format!("{:?}", p.display().to_string()), e))?;
                *slot = p.clone();
            }
        }
        for (slot, value, name) in [
            (&mut self.health.listen, health_listen, "health-listen"),
            (&mut self.health.agent_listen, agent_listen, "agent-listen"),
        ] {
            if let Some(v) = value {
                *slot = parse_listen(v).map_err(|e| flag(name, format!("{v:?}"), e))?;
            }
        }
        Ok(())
    }

    /// The kernel's view of these settings, for `GUARD_CONFIG[0]`.
    pub fn kernel_config(&self) -> Config {
        let Limits {
            pps,
            burst,
            syn_pps,
            syn_burst,
            ban_seconds,
            ipv4_prefix,
            ipv6_prefix,
            malformed_pps,
            malformed_burst,
        } = self.limits;
        let PrefixSettings {
            ipv4: prefix_v4,
            ipv6: prefix_v6,
            pps: prefix_pps,
            burst: prefix_burst,
            ..
        } = self.prefixes;
        Config {
            pps,
            burst,
            syn_pps,
            syn_burst,
            // MAX_BAN_SECONDS keeps this far from overflow.
            ban_ns: ban_seconds * 1_000_000_000,
            flags: if self.datapath.dry_run {
                FLAG_DRY_RUN
            } else {
                0
            },
            v4_prefix_len: u32::from(ipv4_prefix),
            v6_prefix_len: u32::from(ipv6_prefix),
            admit_packets: self.attack.admit_packets,
            known_after_ns: self.attack.known_after_secs * 1_000_000_000,
            prefix_v4_len: u32::from(prefix_v4),
            prefix_v6_len: u32::from(prefix_v6),
            prefix_pps,
            prefix_burst,
            malformed_pps,
            malformed_burst,
            // Derived by the datapath when it writes the config.
            ..Config::default()
        }
    }

    /// The state store's path.
    pub fn state_file(&self) -> PathBuf {
        self.state.dir.join(crate::state::DB_FILE_NAME)
    }

    /// The settings that a reload cannot change without a restart and that differ in `new`,
    /// as `section.key` names.
    pub fn restart_needed_for(&self, new: &Settings) -> Vec<&'static str> {
        let Settings {
            source: _,
            datapath:
                DatapathSettings {
                    interfaces,
                    mode,
                    attach,
                    priority,
                    dry_run: _,
                    pin_dir,
                    chain,
                    next,
                },
            limits:
                Limits {
                    ipv4_prefix,
                    ipv6_prefix,
                    ..
                },
            control: ControlSettings { socket },
            state: StateSettings { dir },
            // Applied by a reload: new listeners are bound before the old ones close.
            health: _,
            // Applied by a reload: the services are re-mapped, monitors of unchanged ones
            // keep what they learned.
            attack: _,
            services: _,
            prefixes: _,
            // Applied by a reload: watchdogs keep their state by name; the HAProxy sockets
            // are checked before the reload is taken.
            watchdogs: _,
            escalate: _,
            fleet,
        } = self;
        let mut out = Vec::new();
        if *interfaces != new.datapath.interfaces {
            out.push("datapath.interfaces");
        }
        if *mode != new.datapath.mode {
            out.push("datapath.mode");
        }
        if *attach != new.datapath.attach {
            out.push("datapath.attach");
        }
        if *priority != new.datapath.priority {
            out.push("datapath.priority");
        }
        if *pin_dir != new.datapath.pin_dir {
            out.push("datapath.pin_dir");
        }
        if *chain != new.datapath.chain {
            out.push("datapath.chain");
        }
        if *next != new.datapath.next {
            out.push("datapath.next");
        }
        if *socket != new.control.socket {
            out.push("control.socket");
        }
        if *dir != new.state.dir {
            out.push("state.dir");
        }
        if *ipv4_prefix != new.limits.ipv4_prefix {
            out.push("limits.ipv4_prefix");
        }
        if *ipv6_prefix != new.limits.ipv6_prefix {
            out.push("limits.ipv6_prefix");
        }
        if *fleet != new.fleet {
            out.push("fleet");
        }
        out
    }
}
