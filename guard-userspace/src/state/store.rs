//! The state store, `<state dir>/guard.db`: SQLite in WAL mode, one row per list entry, ban,
//! prefix ban and learned rate, so that a change is one small transaction, never a rewrite,
//! and a crash at any moment leaves each transaction wholly in or out (<https://sqlite.org/wal.html>).
//!
//! Opened with `locking_mode=EXCLUSIVE`: one daemon owns it, and WAL then keeps its index in
//! memory instead of a `-shm` file, so that a full disk cannot stop the daemon reading it.
use std::{
    fs,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};

use super::{
    BanRecord, LearnedRecord, ListRecord, PrefixBanRecord, State, StateError, VERSION,
    legacy::{self, LEGACY_FILE_NAME, Legacy},
    unix_now,
};
use crate::{cidr::Cidr, dataplane::List, health::Override};

/// The store's file name in the state directory (SQLite adds `-wal` beside it).
pub const DB_FILE_NAME: &str = "guard.db";

/// The store's schema version, in its `meta` table. A newer one is refused, not damage.
pub const SCHEMA: u32 = 1;

const SCHEMA_SQL: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE list_entries (
    list TEXT NOT NULL, cidr TEXT NOT NULL, reason TEXT, added INTEGER NOT NULL, expires INTEGER,
    PRIMARY KEY (list, cidr)) WITHOUT ROWID;
CREATE TABLE bans (
    source TEXT PRIMARY KEY, reason TEXT NOT NULL, since INTEGER NOT NULL,
    expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE prefix_bans (
    cidr TEXT PRIMARY KEY, since INTEGER NOT NULL, expires INTEGER NOT NULL,
    sources INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE learned (
    protocol TEXT NOT NULL, port INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (protocol, port)) WITHOUT ROWID;
CREATE TABLE operator (id INTEGER PRIMARY KEY CHECK (id = 1), record TEXT NOT NULL);
";

/// What [`Store::open`] found.
#[derive(Debug)]
pub enum Opened {
    /// The stored records (or the JSON file's, migrated or to be migrated).
    Found(State),
    /// Nothing stored: a first run, or a removed state directory.
    Missing,
    /// The store, or the JSON file to migrate, is damaged. Nothing was changed and nothing
    /// is open: the caller refuses to start, or moves it aside ([`Store::set_aside`]) when
    /// the operator said so.
    Damaged { path: PathBuf, problem: String },
}

/// The store in its directory; without an open database while the disk is too full to
/// create one (every write then fails with [`StateError::Unavailable`], and the daemon
/// retries with [`Store::create`]).
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Option<Connection>,
    /// Why there is no open database.
    unavailable: Option<String>,
    /// A JSON state file read at start, to be renamed once the store holds its records.
    legacy: bool,
    /// Opened for this process alone (the daemon), or shared with readers (tests, tools).
    exclusive: bool,
    /// Tests: every write fails as on a full disk.
    #[cfg(any(test, feature = "test-support"))]
    full: bool,
}

/// Why an existing store could not be opened.
enum OpenError {
    Damaged(String),
    Fail(StateError),
}

impl Store {
    /// Opens the store in `dir`, creating it if there is none: from the JSON state file of
    /// an earlier guard if there is one (migrated in one transaction, the file then renamed
    /// `state.json.migrated`), else empty. A full disk does not fail this: the store is then
    /// unavailable until [`Store::create`] succeeds.
    ///
    /// # Errors
    ///
    /// [`StateError::Version`] for a newer store or file, [`StateError::Busy`] if another
    /// process holds it, [`StateError::Read`], [`StateError::Db`] or
    /// [`StateError::CreateDir`] for other failures to read or create it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<(Self, Opened), StateError> {
        let mut store = Self::lazy(dir);
        store.exclusive = true;
        let db = store.path();
        let legacy_path = store.dir.join(LEGACY_FILE_NAME);
        match fs::symlink_metadata(&db) {
            Ok(_) => {
                return match open_existing(&db, true) {
                    Ok((conn, state)) => {
                        store.conn = Some(conn);
                        // A crash between the migration's two renames leaves the JSON file.
                        if legacy_path.exists() {
                            store.legacy = true;
                            store.retire_legacy();
                        }
                        Ok((store, Opened::Found(state)))
                    }
                    Err(OpenError::Damaged(problem)) => {
                        Ok((store, Opened::Damaged { path: db, problem }))
                    }
                    Err(OpenError::Fail(e)) => Err(e),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(StateError::Read { path: db, source }),
        }
        let (state, opened) = match legacy::read(&legacy_path)? {
            Legacy::Damaged(problem) => {
                return Ok((
                    store,
                    Opened::Damaged {
                        path: legacy_path,
                        problem,
                    },
                ));
            }
            Legacy::Found(state) => {
                store.legacy = true;
                (state.clone(), Opened::Found(state))
            }
            Legacy::Missing => (State::default(), Opened::Missing),
        };
        match store.create(&state) {
            Ok(()) => {}
            Err(e) if e.is_full() => {}
            Err(e) => return Err(e),
        }
        Ok((store, opened))
    }

    /// A store in `dir` opened at its first write, shared with readers, with no migration
    /// (the control plane's default, for tests; the daemon uses [`Store::open`]).
    pub fn lazy(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            conn: None,
            unavailable: None,
            legacy: false,
            exclusive: false,
            #[cfg(any(test, feature = "test-support"))]
            full: false,
        }
    }

    /// Tests: makes every write fail as on a full disk (`SQLITE_FULL`), or work again.
    #[cfg(any(test, feature = "test-support"))]
    pub fn simulate_full_disk(&mut self, full: bool) {
        self.full = full;
    }

    /// Reads what is stored in `dir` without creating, migrating or locking anything (tests
    /// and tools; works beside a store opened by [`Store::lazy`], not by [`Store::open`]).
    ///
    /// # Errors
    ///
    /// As [`Store::open`].
    pub fn load(dir: impl AsRef<Path>) -> Result<Opened, StateError> {
        let db = dir.as_ref().join(DB_FILE_NAME);
        if db.exists() {
            return match open_existing(&db, false) {
                Ok((_, state)) => Ok(Opened::Found(state)),
                Err(OpenError::Damaged(problem)) => Ok(Opened::Damaged { path: db, problem }),
                Err(OpenError::Fail(e)) => Err(e),
            };
        }
        let legacy_path = dir.as_ref().join(LEGACY_FILE_NAME);
        Ok(match legacy::read(&legacy_path)? {
            Legacy::Damaged(problem) => Opened::Damaged {
                path: legacy_path,
                problem,
            },
            Legacy::Found(state) => Opened::Found(state),
            Legacy::Missing => Opened::Missing,
        })
    }

    /// Opens the store if it is not open: connects to the file if there is one (a lazy
    /// store), else creates it holding `state()`. True if it created it.
    ///
    /// # Errors
    ///
    /// As [`Store::create`], or [`StateError::Db`] connecting.
    pub fn ensure_open(&mut self, state: impl FnOnce() -> State) -> Result<bool, StateError> {
        if self.conn.is_some() {
            return Ok(false);
        }
        let db = self.path();
        if db.exists() {
            let conn = connect(&db, self.exclusive).map_err(|source| StateError::Db {
                path: db.clone(),
                source,
            })?;
            self.conn = Some(conn);
            self.unavailable = None;
            return Ok(false);
        }
        self.create(&state())?;
        Ok(true)
    }

    /// The store's file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(DB_FILE_NAME)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True if a database is open (false while the disk is too full to create it).
    pub fn is_open(&self) -> bool {
        self.conn.is_some()
    }

    /// Moves a damaged store (with its `-wal`) or JSON file aside to
    /// `<name>.damaged-<unix seconds>`, for the operator to inspect; returns where to.
    ///
    /// # Errors
    ///
    /// [`StateError::MoveAside`].
    pub fn set_aside(path: &Path) -> Result<PathBuf, StateError> {
        let to = PathBuf::from(format!("{}.damaged-{}", path.display(), unix_now()));
        fs::rename(path, &to).map_err(|source| StateError::MoveAside {
            path: path.to_path_buf(),
            to: to.clone(),
            source,
        })?;
        for side in ["-wal", "-shm"] {
            let from = PathBuf::from(format!("{}{side}", path.display()));
            if from.exists() {
                let _ = fs::rename(&from, format!("{}{side}", to.display()));
            }
        }
        Ok(to)
    }

    /// Creates the store holding `state`: built under a temporary name in one transaction,
    /// then renamed into place, so that a crash leaves no store or the whole one (a store
    /// without rows, taken for "nothing stored", would lose a JSON file's records). Then the
    /// JSON file read at start, if any, is renamed `state.json.migrated`.
    ///
    /// # Errors
    ///
    /// [`StateError::CreateDir`], [`StateError::Db`] or [`StateError::Write`]; the store
    /// stays unavailable ([`StateError::is_full`] tells a full disk).
    pub fn create(&mut self, state: &State) -> Result<(), StateError> {
        let result = self.try_create(state);
        match &result {
            Ok(()) => {
                self.unavailable = None;
                self.retire_legacy();
            }
            Err(e) => self.unavailable = Some(crate::rpc::error_chain(e)),
        }
        result
    }

    fn try_create(&mut self, state: &State) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StateError::CreateDir {
                path: self.dir.clone(),
                source,
            })?;
        let db = self.path();
        let tmp = self.dir.join(format!("{DB_FILE_NAME}.new"));
        let remove_tmp = || {
            for side in ["", "-journal", "-wal"] {
                let _ = fs::remove_file(format!("{}{side}", tmp.display()));
            }
        };
        remove_tmp();
        let err = |source| StateError::Db {
            path: db.clone(),
            source,
        };
        let build = || -> rusqlite::Result<()> {
            // A rollback journal while building: the file is complete once closed, with no
            // WAL beside it to carry over the rename.
            let mut conn = Connection::open(&tmp)?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA_SQL)?;
            let tx = conn.transaction()?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                params![SCHEMA],
            )?;
            Writer { conn: &tx }.replace_all(state)?;
            tx.commit()?;
            conn.close().map_err(|(_, e)| e)
        };
        if let Err(e) = build() {
            remove_tmp();
            return Err(err(e));
        }
        if let Err(source) = fs::rename(&tmp, &db) {
            remove_tmp();
            return Err(StateError::Write { path: db, source });
        }
        // The rename is durable only once the directory entry is.
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Write {
                path: db.clone(),
                source,
            })?;
        self.conn = Some(connect(&db, self.exclusive).map_err(err)?);
        Ok(())
    }

    /// Renames the JSON state file once the store holds its records.
    fn retire_legacy(&mut self) {
        if !self.legacy || self.conn.is_none() {
            return;
        }
        let from = self.dir.join(LEGACY_FILE_NAME);
        let to = self.dir.join(format!("{LEGACY_FILE_NAME}.migrated"));
        match fs::rename(&from, &to) {
            Ok(()) => {
                tracing::info!(
                    "migrated {} into the state store {}; the old file is now {}",
                    from.display(),
                    self.path().display(),
                    to.display()
                );
                self.legacy = false;
            }
            Err(e) => tracing::warn!(
                "cannot rename the migrated {} to {}: {e}; it is ignored while {} exists",
                from.display(),
                to.display(),
                self.path().display()
            ),
        }
    }

    /// Runs `f` in one transaction: all of its writes are saved, or none.
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] if no database is open; [`StateError::Db`] if a write or
    /// the commit fails (a full disk: [`StateError::is_full`]); nothing was changed then.
    pub fn write(
        &mut self,
        f: impl FnOnce(&Writer<'_>) -> rusqlite::Result<()>,
    ) -> Result<(), StateError> {
        let path = self.path();
        let Some(conn) = self.conn.as_mut() else {
            return Err(StateError::Unavailable {
                path,
                reason: self
                    .unavailable
                    .clone()
                    .unwrap_or_else(|| "not created yet".to_string()),
            });
        };
        let err = |source| StateError::Db {
            path: path.clone(),
            source,
        };
        #[cfg(any(test, feature = "test-support"))]
        if self.full {
            return Err(err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full (simulated)".to_string()),
            )));
        }
        let tx = conn.transaction().map_err(err)?;
        // Dropped on error, which rolls the transaction back.
        f(&Writer { conn: &tx }).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Reads every record (tests and tools; the daemon reads once, in [`Store::open`]).
    ///
    /// # Errors
    ///
    /// [`StateError::Unavailable`] or [`StateError::Db`].
    pub fn read(&self) -> Result<State, StateError> {
        let path = self.path();
        let conn = self.conn.as_ref().ok_or_else(|| StateError::Unavailable {
            path: path.clone(),
            reason: "not open".to_string(),
        })?;
        read_all(conn).map_err(|e| match e {
            OpenError::Damaged(reason) => StateError::Unavailable { path, reason },
            OpenError::Fail(e) => e,
        })
    }
}

/// The writes of one transaction ([`Store::write`]).
pub struct Writer<'c> {
    conn: &'c Connection,
}

fn secs(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn list_name(list: List) -> &'static str {
    list.name()
}

impl Writer<'_> {
    pub fn put_list(&self, list: List, r: &ListRecord) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO list_entries (list, cidr, reason, added, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                list_name(list),
                r.cidr.to_string(),
                r.reason,
                secs(r.added),
                r.expires.map(secs)
            ])
            .map(drop)
    }

    pub fn del_list(&self, list: List, cidr: &Cidr) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("DELETE FROM list_entries WHERE list = ?1 AND cidr = ?2")?
            .execute(params![list_name(list), cidr.to_string()])
            .map(drop)
    }

    pub fn put_ban(&self, r: &BanRecord) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO bans (source, reason, since, expires)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                r.source.to_string(),
                r.reason,
                secs(r.since),
                secs(r.expires)
            ])
            .map(drop)
    }

    pub fn del_ban(&self, source: std::net::IpAddr) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("DELETE FROM bans WHERE source = ?1")?
            .execute(params![source.to_string()])
            .map(drop)
    }

    pub fn put_prefix_ban(&self, r: &PrefixBanRecord) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO prefix_bans (cidr, since, expires, sources)
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                r.cidr.to_string(),
                secs(r.since),
                secs(r.expires),
                r.sources
            ])
            .map(drop)
    }

    pub fn del_prefix_ban(&self, cidr: &Cidr) -> rusqlite::Result<()> {
        self.conn
            .prepare_cached("DELETE FROM prefix_bans WHERE cidr = ?1")?
            .execute(params![cidr.to_string()])
            .map(drop)
    }

    pub fn set_operator(&self, o: Option<&Override>) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM operator", [])?;
        if let Some(o) = o {
            self.conn.execute(
                "INSERT INTO operator (id, record) VALUES (1, ?1)",
                params![to_json(o)?],
            )?;
        }
        Ok(())
    }

    /// Replaces every learned rate with `records`.
    pub fn set_learned(&self, records: &[LearnedRecord]) -> rusqlite::Result<()> {
        self.conn.execute("DELETE FROM learned", [])?;
        for r in records {
            self.conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO learned (protocol, port, record) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![r.protocol.name(), r.port, to_json(r)?])?;
        }
        Ok(())
    }

    /// Replaces every record with `state`'s (creating the store, or rebuilding it from the
    /// pinned maps).
    pub fn replace_all(&self, state: &State) -> rusqlite::Result<()> {
        let State {
            version: _,
            allow,
            deny,
            bans,
            operator,
            prefix_bans,
            learned,
        } = state;
        self.conn.execute_batch(
            "DELETE FROM list_entries; DELETE FROM bans; DELETE FROM prefix_bans;",
        )?;
        for (list, records) in [(List::Allow, allow), (List::Deny, deny)] {
            for r in records {
                self.put_list(list, r)?;
            }
        }
        for r in bans {
            self.put_ban(r)?;
        }
        for r in prefix_bans {
            self.put_prefix_ban(r)?;
        }
        self.set_operator(operator.as_ref())?;
        self.set_learned(learned)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Opens a store file that exists: WAL, durable commits, and exclusive for the daemon.
fn connect(path: &Path, exclusive: bool) -> rusqlite::Result<Connection> {
    // Not SQLITE_OPEN_CREATE: a store that vanished must not come back empty.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    if exclusive {
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    }
    // Each commit is durable when it returns (one fsync of the WAL): an operator's change
    // that was acknowledged survives a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    if exclusive {
        // Take the lock now and keep it (exclusive mode never releases it), so that a second
        // process is refused at its start rather than at its first write.
        conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")?;
    }
    Ok(conn)
}

fn classify(path: &Path, e: rusqlite::Error) -> OpenError {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            OpenError::Damaged(e.to_string())
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            OpenError::Fail(StateError::Busy {
                path: path.to_path_buf(),
            })
        }
        _ => OpenError::Fail(StateError::Db {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Opens and checks an existing store, and reads it.
fn open_existing(path: &Path, exclusive: bool) -> Result<(Connection, State), OpenError> {
    let conn = connect(path, exclusive).map_err(|e| classify(path, e))?;
    // quick_check reads every page: a truncated or scribbled file shows here, not later.
    let problems: Vec<String> = (|| {
        let mut stmt = conn.prepare("PRAGMA quick_check(5)")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<String>>>()
    })()
    .map_err(|e| classify(path, e))?;
    if problems != ["ok"] {
        return Err(OpenError::Damaged(format!(
            "integrity check: {}",
            problems.join("; ")
        )));
    }
    let schema: Option<u32> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e if e.to_string().contains("no such table") => Ok(None),
            e => Err(e),
        })
        .map_err(|e| classify(path, e))?;
    match schema {
        None => {
            return Err(OpenError::Damaged(
                "it holds no guard schema (an empty or foreign file)".to_string(),
            ));
        }
        Some(found) if found > SCHEMA => {
            return Err(OpenError::Fail(StateError::Version {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA,
            }));
        }
        Some(_) => {}
    }
    let state = read_all(&conn)?;
    Ok((conn, state))
}

fn bad_row(table: &str, key: &str, problem: impl std::fmt::Display) -> OpenError {
    OpenError::Damaged(format!("{table} row {key:?}: {problem}"))
}

fn read_all(conn: &Connection) -> Result<State, OpenError> {
    let path = conn.path().map(PathBuf::from).unwrap_or_default();
    let sql = |e: rusqlite::Error| classify(&path, e);
    let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
    let mut state = State {
        version: VERSION,
        ..State::default()
    };

    let mut stmt = conn
        .prepare("SELECT list, cidr, reason, added, expires FROM list_entries ORDER BY list, cidr")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (list, cidr, reason, added, expires) = row.map_err(sql)?;
        let cidr: Cidr = cidr
            .parse()
            .map_err(|e| bad_row("list_entries", &cidr, e))?;
        let record = ListRecord {
            cidr,
            reason,
            added: unsigned(added),
            expires: expires.map(unsigned),
        };
        match list.as_str() {
            "allow" => state.allow.push(record),
            "deny" => state.deny.push(record),
            other => return Err(bad_row("list_entries", other, "not allow or deny")),
        }
    }
    // Address order, as the control plane keeps them.
    state.allow.sort_by_key(|r| r.cidr);
    state.deny.sort_by_key(|r| r.cidr);

    let mut stmt = conn
        .prepare("SELECT source, reason, since, expires FROM bans")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (source, reason, since, expires) = row.map_err(sql)?;
        state.bans.push(BanRecord {
            source: source.parse().map_err(|e| bad_row("bans", &source, e))?,
            reason,
            since: unsigned(since),
            expires: unsigned(expires),
        });
    }
    state.bans.sort_by_key(|b| b.source);

    let mut stmt = conn
        .prepare("SELECT cidr, since, expires, sources FROM prefix_bans ORDER BY cidr")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, u32>(3)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (cidr, since, expires, sources) = row.map_err(sql)?;
        state.prefix_bans.push(PrefixBanRecord {
            cidr: cidr.parse().map_err(|e| bad_row("prefix_bans", &cidr, e))?,
            since: unsigned(since),
            expires: unsigned(expires),
            sources,
        });
    }
    state.prefix_bans.sort_by_key(|p| p.cidr);

    let mut stmt = conn
        .prepare("SELECT protocol, port, record FROM learned ORDER BY protocol, port")
        .map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u16>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(sql)?;
    for row in rows {
        let (protocol, port, record) = row.map_err(sql)?;
        let key = format!("{protocol}/{port}");
        state
            .learned
            .push(serde_json::from_str(&record).map_err(|e| bad_row("learned", &key, e))?);
    }

    let operator: Option<String> = conn
        .query_row("SELECT record FROM operator WHERE id = 1", [], |r| r.get(0))
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(sql)?;
    state.operator = operator
        .map(|text| serde_json::from_str(&text).map_err(|e| bad_row("operator", "1", e)))
        .transpose()?;
    Ok(state)
}

#[cfg(test)]
mod tests;
