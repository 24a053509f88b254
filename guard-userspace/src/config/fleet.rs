//! `[fleet]`: the NATS servers, the JetStream KV bucket prefix, this host's name and pool, what
//! it shares and the pool's drain budget, raw and validated. No `[fleet]`, no fleet.
use super::*;

/// What a host can share with the fleet (`share = [...]`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Share {
    Bans,
    Deny,
    Allow,
}

impl Share {
    pub const ALL: [Share; 3] = [Share::Bans, Share::Deny, Share::Allow];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bans => "bans",
            Self::Deny => "deny",
            Self::Allow => "allow",
        }
    }
}

/// A validated `[fleet]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FleetSettings {
    /// `nats://` or `tls://` URLs, at least one.
    pub servers: Vec<String>,
    /// The JetStream KV bucket prefix: buckets `<bucket>-bans`, `-deny`, `-allow`, `-pool`.
    pub bucket: String,
    /// This host's name in the fleet.
    pub host: String,
    pub share: Vec<Share>,
    pub pool: String,
    /// The share of the pool's members that may be drained at once, 0 to 1.
    pub max_drained: f64,
    /// A NATS credentials file (`.creds`), if any.
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the servers with, if not the system's roots.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key (PEM), for mutual TLS; both or neither.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl FleetSettings {
    pub fn shares(&self, what: Share) -> bool {
        self.share.contains(&what)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFleet {
    pub(super) servers: Option<Vec<Spanned<String>>>,
    pub(super) bucket: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) share: Option<Spanned<Vec<String>>>,
    pub(super) pool: Option<Spanned<String>>,
    pub(super) max_drained: Option<Spanned<f64>>,
    pub(super) creds: Option<Spanned<String>>,
    pub(super) tls_ca: Option<Spanned<String>>,
    pub(super) tls_cert: Option<Spanned<String>>,
    pub(super) tls_key: Option<Spanned<String>>,
}

/// A name usable in a JetStream KV bucket or key: letters, digits, `-` and `_`, 1 to 64.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("1 to 64 characters".to_string());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("letters, digits, '-' and '_' only (a JetStream KV name)".to_string());
    }
    Ok(())
}

/// This machine's hostname up to its first dot, as a fleet name.
fn default_host() -> Result<String, String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("cannot read the hostname ({e}): set fleet.host"))?;
    let name = name.trim();
    let short = name.split('.').next().unwrap_or_default().to_string();
    check_name(&short)
        .map_err(|e| format!("the hostname {name:?} is not usable ({e}): set fleet.host"))?;
    Ok(short)
}

impl Validator<'_> {
    /// `[fleet]`: servers are required; the rest have defaults.
    pub(super) fn fleet(&self, raw: Spanned<RawFleet>) -> Result<FleetSettings, ConfigError> {
        let table_span = raw.span();
        let RawFleet {
            servers,
            bucket,
            host,
            share,
            pool,
            max_drained,
            creds,
            tls_ca,
            tls_cert,
            tls_key,
        } = raw.into_inner();
        let Some(servers) = servers.filter(|s| !s.is_empty()) else {
            return Err(self.invalid(
                &table_span,
                "fleet.servers",
                "(none)".to_string(),
                "one or more NATS server URLs, such as [\"nats://nats1.example.net:4222\"]"
                    .to_string(),
            ));
        };
        let mut urls = Vec::with_capacity(servers.len());
        for s in servers {
            let span = s.span();
            let url = s.into_inner();
            check_server(&url)
                .map_err(|e| self.invalid(&span, "fleet.servers", format!("{url:?}"), e))?;
            urls.push(url);
        }
        let name = |raw: Option<Spanned<String>>, field: &str, default: &str| {
            let Some(raw) = raw else {
                return Ok(default.to_string());
            };
            let span = raw.span();
            let v = raw.into_inner();
            check_name(&v).map_err(|e| self.invalid(&span, field, format!("{v:?}"), e))?;
            Ok(v)
        };
        let bucket = name(bucket, "fleet.bucket", "guard")?;
        let pool = name(pool, "fleet.pool", "default")?;
        let host = match host {
            Some(h) if !h.get_ref().is_empty() => name(Some(h), "fleet.host", "")?,
            Some(h) => default_host()
                .map_err(|e| self.invalid(&h.span(), "fleet.host", "\"\"".into(), e))?,
            None => default_host()
                .map_err(|e| self.invalid(&table_span, "fleet.host", "(hostname)".into(), e))?,
        };
        let mut shares = vec![Share::Bans, Share::Deny];
        if let Some(raw) = share {
            let span = raw.span();
            shares.clear();
            for s in raw.into_inner() {
                let what = Share::ALL
                    .into_iter()
                    .find(|w| w.name() == s)
                    .ok_or_else(|| {
                        self.invalid(
                            &span,
                            "fleet.share",
                            format!("{s:?}"),
                            "a list of \"bans\", \"deny\" and \"allow\"".to_string(),
                        )
                    })?;
                if !shares.contains(&what) {
                    shares.push(what);
                }
            }
            shares.sort();
        }
        let mut budget = 0.3;
        self.set_f64(
            &mut budget,
            max_drained,
            "fleet.max_drained",
            |v| (0.0..=1.0).contains(&v),
            "a share of the pool from 0 to 1, such as 0.3",
        )?;
        let file = |raw: Option<Spanned<String>>, field: &str| {
            raw.map(|r| self.path(r, field, true)).transpose()
        };
        let creds = file(creds, "fleet.creds")?;
        let tls_ca = file(tls_ca, "fleet.tls_ca")?;
        let tls_cert = file(tls_cert, "fleet.tls_cert")?;
        let tls_key = file(tls_key, "fleet.tls_key")?;
        if tls_cert.is_some() != tls_key.is_some() {
            return Err(self.invalid(
                &table_span,
                if tls_cert.is_some() {
                    "fleet.tls_key"
                } else {
                    "fleet.tls_cert"
                },
                "(none)".to_string(),
                "tls_cert and tls_key together (a client certificate needs its key)".to_string(),
            ));
        }
        Ok(FleetSettings {
            servers: urls,
            bucket,
            host,
            share: shares,
            pool,
            max_drained: budget,
            creds,
            tls_ca,
            tls_cert,
            tls_key,
        })
    }
}

/// A NATS server URL: `nats://`, `tls://` (or a bare `host:port`), with a host.
fn check_server(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
        .unwrap_or(url);
    if url.contains("://") && !(url.starts_with("nats://") || url.starts_with("tls://")) {
        return Err("a nats:// or tls:// URL".to_string());
    }
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    if hostport.is_empty() || hostport.starts_with(':') || hostport.contains(char::is_whitespace) {
        return Err("a NATS server URL such as nats://nats1.example.net:4222".to_string());
    }
    Ok(())
}
