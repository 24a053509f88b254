//! The link task: connect (for ever, a second apart), open or create the buckets, read each
//! one's current state then watch it, publish the outbox and this host's pool state; on a lost
//! connection start over, so that a host back from a partition catches up before it watches.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_nats::{
    ConnectOptions, ServerAddr,
    connection::State,
    jetstream::{self, kv},
};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{
    Applied, Apply, Fleet, Out, SharedEntry,
    budget::{self, Decision, MemberState, Slots},
};
use crate::{
    cidr::Cidr,
    config::{FleetSettings, Share},
    state::unix_now,
};

/// Between connection attempts.
const RETRY: Duration = Duration::from_secs(1);
/// How often the connection is checked and this host's pool state is refreshed.
const CHECK: Duration = Duration::from_millis(500);
/// This host's pool state is re-published this often even when unchanged (members older
/// than [`budget::MEMBER_STALE_SECS`] have left the pool).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Any one request to the servers.
const REQUEST: Duration = Duration::from_secs(3);
/// Compare-and-set attempts on the slots key before giving up.
const CAS_TRIES: usize = 8;

/// A live connection and its buckets.
#[derive(Clone)]
pub(super) struct Conn {
    client: async_nats::Client,
    buckets: Vec<(Share, kv::Store)>,
    pool: kv::Store,
}

impl Conn {
    fn bucket(&self, what: Share) -> Option<&kv::Store> {
        self.buckets
            .iter()
            .find(|(s, _)| *s == what)
            .map(|(_, b)| b)
    }
}

fn slots_key(pool: &str) -> String {
    format!("{pool}.slots")
}

fn member_key(pool: &str, host: &str) -> String {
    format!("{pool}.host.{host}")
}

pub(super) async fn run(fleet: Fleet, apply: Arc<dyn Apply>, stop: CancellationToken) {
    let mut failures = 0u64;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => break,
            r = connect(&fleet.inner.settings) => r,
        };
        match attempt {
            Err(e) => {
                failures += 1;
                // The first failure and then one a minute: the log must not fill while a
                // server is down for hours.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(
                        "fleet: cannot use the servers {}: {e}; protecting with local state, retrying every second",
                        fleet.inner.settings.servers.join(", ")
                    );
                }
                fleet.set_connected(false, Some(e));
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
            Ok(conn) => {
                tracing::info!(
                    "fleet: connected to {} as host {} of pool {}; catching up",
                    fleet.inner.settings.servers.join(", "),
                    fleet.inner.settings.host,
                    fleet.inner.settings.pool
                );
                failures = 0;
                *fleet.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
                fleet.set_connected(true, None);
                let why = session(&fleet, &conn, &apply, &stop).await;
                *fleet.inner.conn.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if stop.is_cancelled() {
                    break;
                }
                tracing::warn!(
                    "fleet: lost the servers ({why}); protecting with local state, reconnecting"
                );
                fleet.set_connected(false, Some(why));
            }
        }
    }
}

impl Fleet {
    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut s = self.status_mut();
        if s.connected != connected {
            s.since = unix_now();
        }
        s.connected = connected;
        s.error = error;
    }
}

/// Connects and opens (or creates) the buckets.
async fn connect(settings: &FleetSettings) -> Result<Conn, String> {
    let addrs: Vec<ServerAddr> = settings
        .servers
        .iter()
        .map(|s| s.parse::<ServerAddr>().map_err(|e| format!("{s}: {e}")))
        .collect::<Result<_, _>>()?;
    let mut opts = ConnectOptions::new()
        .name(format!("guard {}", settings.host))
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(REQUEST))
        // One attempt of its own: this task reconnects, and catches up when it does.
        .max_reconnects(Some(1));
    if let Some(creds) = &settings.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| format!("fleet.creds {}: {e}", creds.display()))?;
    }
    if let Some(ca) = &settings.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert, &settings.tls_key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if settings.servers.iter().any(|s| s.starts_with("tls://")) {
        opts = opts.require_tls(true);
    }
    let client = opts
        .connect(addrs.as_slice())
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client.clone());
    let mut buckets = Vec::new();
    for what in &settings.share {
        let name = format!("{}-{}", settings.bucket, what.name());
        buckets.push((*what, open(&js, &name).await?));
    }
    let pool = open(&js, &format!("{}-pool", settings.bucket)).await?;
    Ok(Conn {
        client,
        buckets,
        pool,
    })
}

async fn open(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    // The bucket's stream as `create_key_value` makes it, made here: that call first asks for
    // the account's info, whose answer from nats-server 2.9 (Debian's) async-nats 0.51 cannot
    // parse. The stream is the whole of a bucket.
    js.get_or_create_stream(jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create the KV bucket {name:?}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("cannot open the KV bucket {name:?}: {e}"))
}

/// Serves one connection until it is lost (the reason) or `stop`.
async fn session(
    fleet: &Fleet,
    conn: &Conn,
    apply: &Arc<dyn Apply>,
    stop: &CancellationToken,
) -> String {
    let settings = &fleet.inner.settings;
    // History first (the last value of every key), then the changes: the current state
    // before anything new, over one consumer per bucket, so that nothing falls between.
    let mut streams = Vec::new();
    for (what, store) in &conn.buckets {
        match store.watch_with_history(">").await {
            Ok(w) => {
                let what = *what;
                streams.push(
                    w.map(move |e| (Some(what), e.map_err(|e| e.to_string())))
                        .boxed(),
                );
            }
            Err(e) => return format!("watching the {} bucket: {e}", what.name()),
        }
    }
    match conn
        .pool
        .watch_with_history(format!("{}.>", settings.pool))
        .await
    {
        Ok(w) => streams.push(w.map(|e| (None, e.map_err(|e| e.to_string()))).boxed()),
        Err(e) => return format!("watching the pool bucket: {e}"),
    }
    let mut watched = futures_util::stream::select_all(streams);
    // Which key holds which origin's entry, for the status's counts by origin.
    let mut origins: BTreeMap<(Share, String), String> = BTreeMap::new();
    let mut members: BTreeMap<String, MemberState> = BTreeMap::new();
    let mut local = fleet.inner.local.subscribe();
    local.mark_changed();
    let mut check = tokio::time::interval(CHECK);
    let mut last_beat = tokio::time::Instant::now() - HEARTBEAT;
    let mut down_checks = 0;
    if let Err(e) = flush(fleet, conn).await {
        return e;
    }
    loop {
        tokio::select! {
            () = stop.cancelled() => return "stopping".to_string(),
            item = watched.next() => {
                let Some(item) = item else {
                    return "the watch ended".to_string();
                };
                match item {
                    (_, Err(e)) => return format!("watching: {e}"),
                    (Some(what), Ok(entry)) => {
                        on_entry(fleet, apply, what, entry, &mut origins).await;
                    }
                    (None, Ok(entry)) => on_pool_entry(fleet, entry, &mut members),
                }
            }
            () = fleet.inner.wake.notified() => {
                if let Err(e) = flush(fleet, conn).await {
                    return e;
                }
            }
            changed = local.changed() => {
                if changed.is_err() {
                    return "stopping".to_string();
                }
                last_beat = tokio::time::Instant::now() - HEARTBEAT;
                check.reset_immediately();
            }
            _ = check.tick() => {
                if conn.client.connection_state() == State::Connected {
                    down_checks = 0;
                } else {
                    down_checks += 1;
                    if down_checks >= 2 {
                        return "disconnected".to_string();
                    }
                    continue;
                }
                if last_beat.elapsed() >= HEARTBEAT {
                    let l = fleet.inner.local.borrow().clone();
                    if let Err(e) = heartbeat(fleet, conn, &l.state, l.out).await {
                        tracing::warn!("fleet: publishing this host's pool state: {e}");
                    } else {
                        last_beat = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
}

/// Publishes the queued entries, oldest first; what fails stays queued.
async fn flush(fleet: &Fleet, conn: &Conn) -> Result<(), String> {
    loop {
        let Some(out) = fleet.outbox().pop_front() else {
            return Ok(());
        };
        let (what, result) = match &out {
            Out::Put(what, key, value) => (
                *what,
                match conn.bucket(*what) {
                    Some(b) => b
                        .put(key, value.clone())
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                },
            ),
            Out::Delete(what, key) => (
                *what,
                match conn.bucket(*what) {
                    Some(b) => b.delete(key).await.map_err(|e| e.to_string()),
                    None => Ok(()),
                },
            ),
        };
        match result {
            Ok(()) => fleet.status_mut().published += 1,
            Err(e) => {
                fleet.outbox().push_front(out);
                return Err(format!("publishing to the {} bucket: {e}", what.name()));
            }
        }
    }
}

async fn on_entry(
    fleet: &Fleet,
    apply: &Arc<dyn Apply>,
    what: Share,
    entry: kv::Entry,
    origins: &mut BTreeMap<(Share, String), String>,
) {
    let me = fleet.inner.settings.host.clone();
    let key = entry.key.clone();
    match entry.operation {
        kv::Operation::Delete | kv::Operation::Purge => {
            origins.remove(&(what, key.clone()));
            fleet.count_origins(origins);
            let Some(cidr) = cidr_of_key(&key) else {
                tracing::warn!(
                    "fleet: skipped a delete of key {key:?} in the {} bucket: not a source",
                    what.name()
                );
                return;
            };
            let apply = Arc::clone(apply);
            match tokio::task::spawn_blocking(move || apply.remove(what, cidr)).await {
                Ok(Ok(Applied::Done)) => {
                    tracing::info!("fleet: lifted {cidr} ({}), as the fleet did", what.name());
                }
                Ok(Ok(Applied::Skipped(_))) => {}
                Ok(Err(e)) => tracing::warn!("fleet: lifting {cidr}: {e}"),
                Err(e) => tracing::error!("fleet: lifting {cidr}: {e}"),
            }
        }
        kv::Operation::Put => {
            let e = match SharedEntry::decode(&key, &entry.value) {
                Ok(e) => e,
                Err(err) => {
                    let mut s = fleet.status_mut();
                    s.malformed += 1;
                    s.skipped += 1;
                    drop(s);
                    tracing::warn!(
                        "fleet: skipped a malformed entry in the {} bucket: {err}",
                        what.name()
                    );
                    return;
                }
            };
            origins.insert((what, key), e.origin.clone());
            fleet.count_origins(origins);
            if e.origin == me {
                return;
            }
            let live = entry.seen_current;
            let apply = Arc::clone(apply);
            let shared = e.clone();
            match tokio::task::spawn_blocking(move || apply.put(what, &shared)).await {
                Ok(Ok(Applied::Done)) => {
                    let lag = (unix_ms()).saturating_sub(e.at_ms);
                    let mut s = fleet.status_mut();
                    s.applied += 1;
                    if live {
                        s.lag_ms = Some(lag);
                    }
                    drop(s);
                    tracing::info!(
                        "fleet: applied {} {} from {} ({}){}",
                        what.name(),
                        e.source,
                        e.origin,
                        e.reason,
                        if e.expires > 0 {
                            format!(" until {}", crate::state::format_unix(e.expires))
                        } else {
                            String::new()
                        }
                    );
                }
                Ok(Ok(Applied::Skipped(why))) => {
                    fleet.status_mut().skipped += 1;
                    tracing::info!(
                        "fleet: skipped {} {} from {}: {why}",
                        what.name(),
                        e.source,
                        e.origin
                    );
                }
                Ok(Err(err)) => {
                    fleet.status_mut().skipped += 1;
                    tracing::warn!(
                        "fleet: applying {} {} from {}: {err}",
                        what.name(),
                        e.source,
                        e.origin
                    );
                }
                Err(err) => tracing::error!("fleet: applying {}: {err}", e.source),
            }
        }
    }
}

fn on_pool_entry(fleet: &Fleet, entry: kv::Entry, members: &mut BTreeMap<String, MemberState>) {
    let pool = &fleet.inner.settings.pool;
    let deleted = !matches!(entry.operation, kv::Operation::Put);
    if entry.key == slots_key(pool) {
        let slots = if deleted {
            Slots::default()
        } else {
            match serde_json::from_slice::<Slots>(&entry.value) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("fleet: skipped a malformed slots entry in pool {pool}: {e}");
                    return;
                }
            }
        };
        fleet.status_mut().slots = slots;
        return;
    }
    let Some(host) = entry.key.strip_prefix(&format!("{pool}.host.")) else {
        return;
    };
    if deleted {
        members.remove(host);
    } else {
        match serde_json::from_slice::<MemberState>(&entry.value) {
            Ok(m) if m.host == host => {
                members.insert(host.to_string(), m);
            }
            Ok(_) | Err(_) => {
                tracing::warn!(
                    "fleet: skipped a malformed member entry {:?} in pool {pool}",
                    entry.key
                );
                return;
            }
        }
    }
    fleet.status_mut().members = members.values().cloned().collect();
}

impl Fleet {
    fn count_origins(&self, origins: &BTreeMap<(Share, String), String>) {
        let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((what, _), origin) in origins {
            *counts
                .entry(origin.clone())
                .or_default()
                .entry(what.name().to_string())
                .or_default() += 1;
        }
        self.status_mut().origins = counts;
    }
}

/// Publishes this host's pool state; releases its drain slot if the operator no longer has it
/// out (`guard ready`, or the drain expired).
async fn heartbeat(fleet: &Fleet, conn: &Conn, state: &str, out: bool) -> Result<(), String> {
    let s = &fleet.inner.settings;
    let me = MemberState {
        host: s.host.clone(),
        state: if state.is_empty() {
            "starting".into()
        } else {
            state.to_string()
        },
        at: unix_now(),
    };
    conn.pool
        .put(
            member_key(&s.pool, &s.host),
            serde_json::to_vec(&me).expect("serialises").into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !out {
        release_slot(fleet, conn).await?;
    }
    Ok(())
}

/// The slots and their revision (0: no slots key yet).
async fn read_slots(conn: &Conn, key: &str) -> Result<(Slots, u64), String> {
    match conn.pool.entry(key).await.map_err(|e| e.to_string())? {
        Some(e) if matches!(e.operation, kv::Operation::Put) => Ok((
            serde_json::from_slice(&e.value).unwrap_or_default(),
            e.revision,
        )),
        Some(e) => Ok((Slots::default(), e.revision)),
        None => Ok((Slots::default(), 0)),
    }
}

/// Writes `slots` if the key is still at `revision`: `Ok(false)` if another host got there
/// first (read again and decide again).
async fn write_slots(conn: &Conn, key: &str, slots: &Slots, revision: u64) -> Result<bool, String> {
    let value: bytes::Bytes = serde_json::to_vec(slots).expect("serialises").into();
    let result = if revision == 0 {
        conn.pool.create(key, value).await.map(|_| ()).map_err(|e| {
            (
                e.kind() == kv::CreateErrorKind::AlreadyExists,
                e.to_string(),
            )
        })
    } else {
        conn.pool
            .update(key, value, revision)
            .await
            .map(|_| ())
            .map_err(|e| {
                (
                    e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                    e.to_string(),
                )
            })
    };
    match result {
        Ok(()) => Ok(true),
        Err((true, _)) => Ok(false),
        Err((false, e)) => Err(e),
    }
}

async fn release_slot(fleet: &Fleet, conn: &Conn) -> Result<(), String> {
    let s = &fleet.inner.settings;
    let key = slots_key(&s.pool);
    for _ in 0..CAS_TRIES {
        let (slots, revision) = read_slots(conn, &key).await?;
        let Some(freed) = budget::release(&slots, &s.host) else {
            return Ok(());
        };
        if write_slots(conn, &key, &freed, revision).await? {
            tracing::info!("fleet: released this host's drain slot in pool {}", s.pool);
            return Ok(());
        }
    }
    Err("the slots key kept changing".to_string())
}

pub(super) async fn take_slot(fleet: &Fleet, conn: &Conn, until: u64) -> Result<(), String> {
    let s = &fleet.inner.settings;
    let key = slots_key(&s.pool);
    for _ in 0..CAS_TRIES {
        let (slots, revision) = read_slots(conn, &key).await?;
        let members = read_members(conn, &s.pool).await?;
        match budget::decide(&slots, &members, &s.host, until, unix_now(), s.max_drained) {
            Decision::Refuse {
                out,
                allowed,
                members,
            } => {
                return Err(format!(
                    "refused: pool {:?} may have {allowed} of its {members} hosts out (max_drained = {}), and {} already {}: {}; --force drains anyway",
                    s.pool,
                    s.max_drained,
                    out.len(),
                    if out.len() == 1 { "is" } else { "are" },
                    if out.is_empty() {
                        "(none)".to_string()
                    } else {
                        out.join(", ")
                    }
                ));
            }
            Decision::Take(new) => {
                if write_slots(conn, &key, &new, revision).await? {
                    fleet.status_mut().slots = new;
                    return Ok(());
                }
                // Another host changed the slots between our read and write: decide again.
            }
        }
    }
    Err(format!(
        "cannot take a drain slot in pool {:?}: the slots key kept changing; try again, or --force",
        s.pool
    ))
}

async fn read_members(conn: &Conn, pool: &str) -> Result<Vec<MemberState>, String> {
    let prefix = format!("{pool}.host.");
    let mut keys = conn.pool.keys().await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| e.to_string())?;
        if !k.starts_with(&prefix) {
            continue;
        }
        if let Some(v) = conn.pool.get(&k).await.map_err(|e| e.to_string())?
            && let Ok(m) = serde_json::from_slice::<MemberState>(&v)
        {
            out.push(m);
        }
    }
    Ok(out)
}

/// The source of a key ([`super::key_for`] backwards).
fn cidr_of_key(key: &str) -> Option<Cidr> {
    key.replace('=', "/").replace('_', ":").parse().ok()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix milliseconds now, for [`SharedEntry::at_ms`].
pub fn now_ms() -> u64 {
    unix_ms()
}
