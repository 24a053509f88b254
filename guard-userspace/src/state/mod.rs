//! The state file (`<state dir>/state.json`): allow and deny lists, bans and the operator's
//! health override with wall-clock times, written atomically (temp file, fsync, rename, fsync dir) so a crash loses nothing.
//!
//! A corrupt file is not overwritten and does not stop the daemon: it is moved aside to
//! `state.json.corrupt-<unix seconds>` (kept for the operator), logged loudly, and the daemon
//! rebuilds its state from the pinned maps, if any survived, so protection is not dropped.
use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{cidr::Cidr, health::Override};

/// The state file's name in the state directory.
pub const FILE_NAME: &str = "state.json";

/// The state file's format version. A newer version is refused (not moved aside), so a
/// downgrade never destroys state it cannot read.
pub const VERSION: u32 = 1;

/// Everything the daemon keeps across restarts and reboots.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub allow: Vec<ListRecord>,
    pub deny: Vec<ListRecord>,
    pub bans: Vec<BanRecord>,
    /// `guard drain|maint` in force (`guard ready` clears it). Left out when there is none,
    /// and optional when read, so files of guards without it still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Override>,
    /// Prefix bans the daemon escalated (optional when read, like `operator`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prefix_bans: Vec<PrefixBanRecord>,
    /// Each service's learned normal rates, so a restart does not start learning again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<LearnedRecord>,
}

/// A prefix ban: a network whose sources kept getting banned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixBanRecord {
    pub cidr: Cidr,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds.
    pub expires: u64,
    /// Source bans in the window that escalated it.
    pub sources: u32,
}

/// A service's learned rates, by protocol and port (names may change across reloads).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedRecord {
    pub protocol: crate::dataplane::ServiceProto,
    pub port: u16,
    pub pps: crate::control::attack::Learned,
    pub syn_pps: crate::control::attack::Learned,
}

/// One allow or deny entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListRecord {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub added: u64,
    /// Unix seconds; `None` never expires.
    pub expires: Option<u64>,
}

/// One ban the data plane made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BanRecord {
    /// The tracker key's address: IPv4, or an IPv6 network address masked to the prefix.
    pub source: IpAddr,
    /// A `guard_common::reason::NAMES` name.
    pub reason: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds.
    pub expires: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the state directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the state file {} has version {found}; this guard reads version {VERSION}: run the newer guard, or move the file away to start empty",
        path.display()
    )]
    Version { path: PathBuf, found: u32 },
    #[error("cannot move the corrupt state file {} aside to {}", path.display(), to.display())]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the state file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
}

/// What [`Store::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// A valid file.
    Found(State),
    /// No file: a first run, or a removed state directory.
    Missing,
    /// A file that did not parse: it was moved aside to `moved_to`.
    Corrupt {
        moved_to: PathBuf,
        error: serde_json::Error,
    },
}

/// The state file in its directory.
#[derive(Clone, Debug)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    /// Reads the state file. See the module docs for what happens to a corrupt one.
    ///
    /// # Errors
    ///
    /// [`StateError::Read`] if the file exists but cannot be read, [`StateError::Version`] for a
    /// newer format, [`StateError::MoveAside`] if a corrupt file cannot be moved aside.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.version > VERSION => Err(StateError::Version {
                path,
                found: state.version,
            }),
            Ok(state) => Ok(Loaded::Found(state)),
            Err(error) => {
                // A newer format we cannot parse must not be destroyed as "corrupt".
                if let Some(found) = version_of(&bytes).filter(|v| *v > VERSION) {
                    return Err(StateError::Version { path, found });
                }
                let to = self.dir.join(format!("{FILE_NAME}.corrupt-{}", unix_now()));
                fs::rename(&path, &to).map_err(|source| StateError::MoveAside {
                    path: path.clone(),
                    to: to.clone(),
                    source,
                })?;
                Ok(Loaded::Corrupt {
                    moved_to: to,
                    error,
                })
            }
        }
    }

    /// Writes `state` atomically: a temp file in the same directory, fsync, rename over the
    /// old file, fsync the directory. A crash at any moment leaves the old or the new file.
    ///
    /// # Errors
    ///
    /// [`StateError::CreateDir`] or [`StateError::Write`]; the old file is then untouched.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| StateError::CreateDir {
                path: self.dir.clone(),
                source,
            })?;
        let bytes = serde_json::to_vec(state).map_err(StateError::Encode)?;
        let path = self.path();
        let tmp = self
            .dir
            .join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
        let write = |p: &Path| -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)?;
            f.write_all(&bytes)?;
            f.write_all(b"\n")?;
            f.sync_all()
        };
        if let Err(source) = write(&tmp).and_then(|()| fs::rename(&tmp, &path)) {
            let _ = fs::remove_file(&tmp);
            return Err(StateError::Write { path, source });
        }
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StateError::Write { path, source })
    }
}

fn version_of(bytes: &[u8]) -> Option<u32> {
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    serde_json::from_slice::<Versioned>(bytes)
        .ok()
        .map(|v| v.version)
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 UTC (`2024-05-01T12:00:00Z`), by jiff.
pub fn format_unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .unwrap_or(jiff::Timestamp::MAX)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "guard-state-test-{name}-{}-{}",
            std::process::id(),
            unix_now()
        ));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn sample() -> State {
        State {
            version: VERSION,
            allow: vec![ListRecord {
                cidr: "198.18.0.0/15".parse().unwrap(),
                reason: Some("office".into()),
                added: 100,
                expires: None,
            }],
            deny: vec![ListRecord {
                cidr: "2001:db8::/32".parse().unwrap(),
                reason: None,
                added: 100,
                expires: Some(700),
            }],
            bans: vec![BanRecord {
                source: "203.0.113.9".parse().unwrap(),
                reason: "rate_limited".into(),
                since: 100,
                expires: 160,
            }],
            operator: Some(Override::new(
                crate::health::OverrideMode::Drain,
                Some("deploy".into()),
                100,
                Some(std::time::Duration::from_secs(600)),
            )),
            prefix_bans: vec![PrefixBanRecord {
                cidr: "198.18.7.0/24".parse().unwrap(),
                since: 100,
                expires: 700,
                sources: 8,
            }],
            learned: vec![LearnedRecord {
                protocol: crate::dataplane::ServiceProto::Udp,
                port: 53,
                pps: crate::control::attack::Learned {
                    raw: 5_000.0,
                    samples: 60,
                },
                syn_pps: crate::control::attack::Learned::default(),
            }],
        }
    }

    #[test]
    fn missing_file_loads_as_missing_and_save_creates_the_directory() {
        let dir = tempdir("missing");
        let store = Store::new(dir.join("nested"));
        assert!(matches!(store.load().unwrap(), Loaded::Missing));
        store.save(&sample()).unwrap();
        match store.load().unwrap() {
            Loaded::Found(s) => assert_eq!(s, sample()),
            other => panic!("{other:?}"),
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn save_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempdir("replace");
        let store = Store::new(&dir);
        store.save(&sample()).unwrap();
        store.save(&State::default()).unwrap();
        match store.load().unwrap() {
            Loaded::Found(s) => assert_eq!(s, State::default()),
            other => panic!("{other:?}"),
        }
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_file_is_moved_aside_not_overwritten() {
        let dir = tempdir("corrupt");
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        fs::write(store.path(), b"{\"version\": 1, \"allow\": [tru").unwrap();
        let Loaded::Corrupt { moved_to, .. } = store.load().unwrap() else {
            panic!("not reported corrupt")
        };
        assert!(!store.path().exists());
        assert_eq!(
            fs::read(&moved_to).unwrap(),
            b"{\"version\": 1, \"allow\": [tru"
        );
        assert!(moved_to.to_string_lossy().contains("state.json.corrupt-"));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn newer_version_is_refused_and_left_in_place() {
        let dir = tempdir("version");
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        fs::write(store.path(), b"{\"version\": 2, \"future\": true}").unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, StateError::Version { found: 2, .. }), "{e}");
        assert!(store.path().exists());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn unreadable_state_dir_is_an_error_naming_the_path() {
        let store = Store::new("/proc/self/guard-no-such-dir");
        let e = store.save(&State::default()).unwrap_err();
        assert!(
            e.to_string().contains("/proc/self/guard-no-such-dir"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_an_operator_override_loads() {
        let dir = tempdir("no-operator");
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        fs::write(
            store.path(),
            br#"{"version":1,"allow":[],"deny":[],"bans":[]}"#,
        )
        .unwrap();
        let Loaded::Found(s) = store.load().unwrap() else {
            panic!("not loaded")
        };
        assert_eq!(s.operator, None);
        store.save(&s).unwrap();
        let text = fs::read_to_string(store.path()).unwrap();
        assert!(!text.contains("operator"), "{text}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn unix_times_format_as_rfc3339() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_714_564_800), "2024-05-01T12:00:00Z");
    }
}
