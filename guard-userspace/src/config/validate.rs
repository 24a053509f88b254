//! Validation: each raw value checked and turned into its setting, with an error that names
//! the line, the field, the value and what is accepted.
use super::*;

pub(super) struct Validator<'a> {
    pub(super) text: &'a str,
    pub(super) source: &'a ConfigSource,
}

impl Validator<'_> {
    pub(super) fn invalid(
        &self,
        span: &Range<usize>,
        field: &str,
        value: String,
        expected: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            origin: Origin::Config {
                source: self.source.clone(),
                line: Some(line_of(self.text, span)),
            },
            field: field.to_string(),
            value,
            expected,
        }
    }

    pub(super) fn set(
        &self,
        slot: &mut u64,
        raw: Option<Spanned<i64>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        let Some(raw) = raw else { return Ok(()) };
        let span = raw.span();
        let value = raw.into_inner();
        match u64::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => {
                *slot = v;
                Ok(())
            }
            _ => Err(self.invalid(&span, field, value.to_string(), range_text(min, max))),
        }
    }

    pub(super) fn path(
        &self,
        raw: Spanned<String>,
        field: &str,
        absolute: bool,
    ) -> Result<PathBuf, ConfigError> {
        let span = raw.span();
        let value = raw.into_inner();
        let p = PathBuf::from(&value);
        check_path(&p, absolute)
            .map_err(|e| self.invalid(&span, field, format!("{value:?}"), e))?;
        Ok(p)
    }
}

impl Validator<'_> {
    pub(super) fn set_f64(
        &self,
        slot: &mut f64,
        raw: Option<Spanned<f64>>,
        field: &str,
        ok: impl Fn(f64) -> bool,
        expected: &str,
    ) -> Result<(), ConfigError> {
        let Some(raw) = raw else { return Ok(()) };
        let span = raw.span();
        let value = raw.into_inner();
        if !value.is_finite() || !ok(value) {
            return Err(self.invalid(&span, field, value.to_string(), expected.to_string()));
        }
        *slot = value;
        Ok(())
    }

    pub(super) fn set_u32(
        &self,
        slot: &mut u32,
        raw: Option<Spanned<i64>>,
        field: &str,
        min: u64,
        max: u64,
    ) -> Result<(), ConfigError> {
        let mut wide = u64::from(*slot);
        self.set(&mut wide, raw, field, min, max)?;
        *slot = wide as u32;
        Ok(())
    }

    /// `[attack]`: keys left out keep their defaults.
    pub(super) fn attack(&self, raw: RawAttack) -> Result<AttackSettings, ConfigError> {
        let RawAttack {
            learn,
            known_after_secs,
            known_ttl_secs,
            newcomer_share,
            enter_secs,
            leave_secs,
            factor,
            floor_pps,
            floor_syn_pps,
            admit_packets,
        } = raw;
        let mut a = Settings::builtin().attack;
        if let Some(learn) = learn {
            a.learn = learn;
        }
        self.set(
            &mut a.known_after_secs,
            known_after_secs,
            "attack.known_after_secs",
            0,
            86_400,
        )?;
        self.set(
            &mut a.known_ttl_secs,
            known_ttl_secs,
            "attack.known_ttl_secs",
            60,
            MAX_BAN_SECONDS,
        )?;
        self.set_f64(
            &mut a.newcomer_share,
            newcomer_share,
            "attack.newcomer_share",
            |v| (0.0..=1.0).contains(&v),
            "out of range: accepts 0 to 1 (a share of the service's ceiling, such as 0.1)",
        )?;
        self.set_u32(&mut a.enter_secs, enter_secs, "attack.enter_secs", 1, 3_600)?;
        self.set_u32(
            &mut a.leave_secs,
            leave_secs,
            "attack.leave_secs",
            1,
            86_400,
        )?;
        self.set_f64(
            &mut a.factor,
            factor,
            "attack.factor",
            |v| v > 1.0 && v <= 100.0,
            "out of range: accepts more than 1, up to 100 (the learned rate times this)",
        )?;
        self.set(&mut a.floor_pps, floor_pps, "attack.floor_pps", 1, MAX_RATE)?;
        self.set(
            &mut a.floor_syn_pps,
            floor_syn_pps,
            "attack.floor_syn_pps",
            1,
            MAX_RATE,
        )?;
        self.set_u32(
            &mut a.admit_packets,
            admit_packets,
            "attack.admit_packets",
            0,
            1_000,
        )?;
        Ok(a)
    }

    /// `[prefixes]`: keys left out keep their defaults (each length capped by the tracking
    /// prefix).
    pub(super) fn prefixes(
        &self,
        raw: RawPrefixes,
        limits: &Limits,
    ) -> Result<PrefixSettings, ConfigError> {
        let RawPrefixes {
            ipv4,
            ipv6,
            pps,
            burst,
            escalate_after,
            escalate_window,
            ban_seconds,
        } = raw;
        let mut p = Settings::builtin().prefixes;
        // A prefix holds whole tracked sources (and their bans), so it is at most as long as
        // the tracking prefix.
        let mut v4 = u64::from(p.ipv4.min(limits.ipv4_prefix));
        self.set(
            &mut v4,
            ipv4,
            "prefixes.ipv4",
            8,
            u64::from(limits.ipv4_prefix),
        )?;
        p.ipv4 = v4 as u8;
        let mut v6 = u64::from(p.ipv6.min(limits.ipv6_prefix));
        self.set(
            &mut v6,
            ipv6,
            "prefixes.ipv6",
            16,
            u64::from(limits.ipv6_prefix),
        )?;
        p.ipv6 = v6 as u8;
        self.set(&mut p.pps, pps, "prefixes.pps", 0, MAX_RATE)?;
        self.set(&mut p.burst, burst, "prefixes.burst", 0, MAX_RATE)?;
        self.set_u32(
            &mut p.escalate_after,
            escalate_after,
            "prefixes.escalate_after",
            0,
            65_536,
        )?;
        self.set(
            &mut p.escalate_window_secs,
            escalate_window,
            "prefixes.escalate_window",
            1,
            86_400,
        )?;
        self.set(
            &mut p.ban_seconds,
            ban_seconds,
            "prefixes.ban_seconds",
            1,
            MAX_BAN_SECONDS,
        )?;
        Ok(p)
    }

    /// `[[services]]`: unique names and (protocol, port) pairs, ceilings where not learned.
    pub(super) fn services(
        &self,
        raw: Vec<Spanned<RawService>>,
        learn: bool,
    ) -> Result<Vec<ServiceSettings>, ConfigError> {
        let mut out: Vec<ServiceSettings> = Vec::with_capacity(raw.len());
        for (i, item) in raw.into_iter().enumerate() {
            let whole = item.span();
            let RawService {
                name,
                protocol,
                port,
                max_pps,
                max_syn_pps,
                syn_cookies,
            } = item.into_inner();
            let field = |key: &str| format!("services[{i}].{key}");
            if i >= MAX_SERVICES {
                return Err(self.invalid(
                    &whole,
                    "services",
                    format!("{} entries", i + 1),
                    format!("at most {MAX_SERVICES} services"),
                ));
            }
            let (name_span, name) = (name.span(), name.into_inner());
            if name.is_empty()
                || name.len() > 32
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    "1 to 32 letters, digits, '-', '_' or '.', such as \"dns\"".to_string(),
                ));
            }
            if out.iter().any(|s| s.name == name) {
                return Err(self.invalid(
                    &name_span,
                    &field("name"),
                    format!("{name:?}"),
                    "used twice: give each service its own name".to_string(),
                ));
            }
            let (proto_span, proto) = (protocol.span(), protocol.into_inner());
            let protocol = match proto.as_str() {
                "udp" => ServiceProto::Udp,
                "tcp" => ServiceProto::Tcp,
                _ => {
                    return Err(self.invalid(
                        &proto_span,
                        &field("protocol"),
                        format!("{proto:?}"),
                        "expected \"udp\" or \"tcp\"".to_string(),
                    ));
                }
            };
            let port_span = port.span();
            let mut p = 0;
            self.set(&mut p, Some(port), &field("port"), 1, 65_535)?;
            let port = p as u16;
            if let Some(other) = out
                .iter()
                .find(|s| s.protocol == protocol && s.port == port)
            {
                return Err(self.invalid(
                    &port_span,
                    &field("port"),
                    port.to_string(),
                    format!(
                        "{} port {port} is already service {:?}: one service per protocol and port",
                        protocol.name(),
                        other.name
                    ),
                ));
            }
            let ceiling =
                |raw: Option<Spanned<i64>>, key: &str| -> Result<Option<u64>, ConfigError> {
                    match raw {
                        None => Ok(None),
                        Some(r) => {
                            let mut v = 0;
                            self.set(&mut v, Some(r), &field(key), 1, MAX_RATE)?;
                            Ok(Some(v))
                        }
                    }
                };
            let max_pps_span = max_pps.as_ref().map(Spanned::span);
            let max_pps = ceiling(max_pps, "max_pps")?;
            let syn_span = max_syn_pps.as_ref().map(Spanned::span);
            let max_syn_pps = ceiling(max_syn_pps, "max_syn_pps")?;
            if let (Some(span), ServiceProto::Udp) = (&syn_span, protocol) {
                return Err(self.invalid(
                    span,
                    &field("max_syn_pps"),
                    max_syn_pps.unwrap_or_default().to_string(),
                    "only a tcp service has SYNs: remove it or set protocol = \"tcp\"".to_string(),
                ));
            }
            let syn_cookies = match (syn_cookies, protocol) {
                (None, ServiceProto::Tcp) => SynCookies::Auto,
                (None, ServiceProto::Udp) => SynCookies::Off,
                (Some(raw), _) => {
                    let (span, value) = (raw.span(), raw.into_inner());
                    let mode = match value.as_str() {
                        "auto" => SynCookies::Auto,
                        "on" => SynCookies::On,
                        "off" => SynCookies::Off,
                        _ => {
                            return Err(self.invalid(
                                &span,
                                &field("syn_cookies"),
                                format!("{value:?}"),
                                "expected \"auto\" (while the service is under attack), \"on\" or \"off\"".to_string(),
                            ));
                        }
                    };
                    if protocol == ServiceProto::Udp && mode != SynCookies::Off {
                        return Err(self.invalid(
                            &span,
                            &field("syn_cookies"),
                            format!("{value:?}"),
                            "only a tcp service has SYNs: remove it or set protocol = \"tcp\""
                                .to_string(),
                        ));
                    }
                    mode
                }
            };
            if !learn && max_pps.is_none() {
                return Err(self.invalid(
                    max_pps_span.as_ref().unwrap_or(&whole),
                    &field("max_pps"),
                    "(none)".to_string(),
                    "required when [attack] learn = false: the packets per second above which the service is under attack".to_string(),
                ));
            }
            out.push(ServiceSettings {
                name,
                protocol,
                port,
                max_pps,
                max_syn_pps,
                syn_cookies,
            });
        }
        Ok(out)
    }

    /// Builds and validates the `[health]` section: keys left out keep their defaults.
    pub(super) fn health(&self, raw: RawHealth) -> Result<HealthSection, ConfigError> {
        let RawHealth {
            listen,
            agent_listen,
            warn_at,
            drain_at,
            weight_floor,
            psi_warn_at,
            psi_drain_at,
            map_warn_at,
            rise,
            fall,
            checks,
        } = raw;
        let mut out = Settings::builtin().health;
        for (slot, raw, field) in [
            (&mut out.listen, listen, "health.listen"),
            (&mut out.agent_listen, agent_listen, "health.agent_listen"),
        ] {
            if let Some(raw) = raw {
                let span = raw.span();
                let value = raw.into_inner();
                *slot = parse_listen(&value)
                    .map_err(|e| self.invalid(&span, field, format!("{value:?}"), e))?;
            }
        }
        // Where each key was written, for the line of an error.
        let mut spans: Vec<(&'static str, Range<usize>)> = Vec::new();
        let HealthSettings {
            warn_at: s_warn_at,
            drain_at: s_drain_at,
            weight_floor: s_weight_floor,
            psi_warn_at: s_psi_warn_at,
            psi_drain_at: s_psi_drain_at,
            map_warn_at: s_map_warn_at,
            rise: s_rise,
            fall: s_fall,
            checks: s_checks,
        } = &mut out.settings;
        for (slot, raw, field) in [
            (s_warn_at, warn_at, "health.warn_at"),
            (s_drain_at, drain_at, "health.drain_at"),
            (s_psi_warn_at, psi_warn_at, "health.psi_warn_at"),
            (s_psi_drain_at, psi_drain_at, "health.psi_drain_at"),
            (s_map_warn_at, map_warn_at, "health.map_warn_at"),
        ] {
            if let Some(raw) = raw {
                spans.push((field, raw.span()));
                *slot = raw.into_inner();
            }
        }
        for (slot, raw, field, min, max) in [
            (s_weight_floor, weight_floor, "health.weight_floor", 0, 100),
            (s_rise, rise, "health.rise", 1, 100),
            (s_fall, fall, "health.fall", 1, 100),
        ] {
            if let Some(raw) = raw {
                let span = raw.span();
                let value = raw.into_inner();
                // Out of u32: the health settings would never see it, so say the range here.
                *slot = u32::try_from(value).map_err(|_| {
                    self.invalid(&span, field, value.to_string(), range_text(min, max))
                })?;
                spans.push((field, span));
            }
        }
        let mut check_spans = Vec::new();
        if let Some(list) = checks {
            *s_checks = list
                .into_iter()
                .map(|c| {
                    check_spans.push(c.span());
                    c.into_inner()
                })
                .collect();
        }
        if let Err(error) = HealthConfig::from_settings(&out.settings) {
            let span_of = |field: &str| spans.iter().find(|(f, _)| *f == field).map(|(_, s)| s);
            let span = match &error {
                HealthError::Threshold { field, .. } | HealthError::Range { field, .. } => {
                    span_of(field)
                }
                HealthError::ThresholdOrder {
                    warn_field,
                    drain_field,
                    ..
                } => span_of(warn_field).or_else(|| span_of(drain_field)),
                HealthError::UnknownCheckType { index, .. }
                | HealthError::CheckTarget { index, .. }
                | HealthError::CheckTimeout { index, .. } => check_spans.get(*index),
                HealthError::TooManyChecks { .. } => check_spans.last(),
                HealthError::UnknownFormat { .. } => None,
            };
            return Err(ConfigError::Health {
                origin: Origin::Config {
                    source: self.source.clone(),
                    line: span.map(|s| line_of(self.text, s)),
                },
                error,
            });
        }
        Ok(out)
    }
}

pub(super) fn range_text(min: u64, max: u64) -> String {
    format!("out of range: accepts {min} to {max}")
}

pub(super) fn check_path(p: &Path, absolute: bool) -> Result<(), String> {
    if p.as_os_str().is_empty() {
        return Err("empty path: expected a file system path".to_string());
    }
    if absolute && !p.is_absolute() {
        return Err("expected an absolute path, such as /sys/fs/bpf/guard".to_string());
    }
    Ok(())
}

/// Checks an interface name as the kernel would accept it, and against duplicates.
pub(super) fn check_iface(name: &str, seen: &[String]) -> Result<(), String> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(format!(
            "an interface name is 1 to {} bytes, such as eth0",
            IFNAMSIZ - 1
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err("not a valid interface name: expected a name such as eth0".to_string());
    }
    if seen.iter().any(|s| s == name) {
        return Err("listed twice: name each interface once".to_string());
    }
    Ok(())
}

/// The 1-based line of the start of `span` in `text`.
pub(super) fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
