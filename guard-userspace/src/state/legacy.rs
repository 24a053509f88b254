//! The JSON state file of guards before the store (`<state dir>/state.json`): read once, at
//! the first start with the store, migrated into it, then renamed `state.json.migrated`.
use std::{fs, path::Path};

use serde::Deserialize;

use super::{State, StateError, VERSION};

/// The JSON state file's name in the state directory.
pub const LEGACY_FILE_NAME: &str = "state.json";

/// What the JSON file held.
#[derive(Debug)]
pub(super) enum Legacy {
    Missing,
    Found(State),
    /// It does not parse: the problem, for the operator.
    Damaged(String),
}

/// Reads the JSON state file at `path`. Unknown fields (a newer guard's) are accepted.
///
/// # Errors
///
/// [`StateError::Read`] if it exists but cannot be read; [`StateError::Version`] for a newer
/// format (left alone, not called damaged).
pub(super) fn read(path: &Path) -> Result<Legacy, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Legacy::Missing),
        Err(source) => {
            return Err(StateError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let newer = |found: u32| StateError::Version {
        path: path.to_path_buf(),
        found,
        supported: VERSION,
    };
    match serde_json::from_slice::<State>(&bytes) {
        Ok(state) if state.version > VERSION => Err(newer(state.version)),
        Ok(state) => Ok(Legacy::Found(state)),
        Err(error) => match version_of(&bytes).filter(|v| *v > VERSION) {
            // A newer format we cannot parse must not be destroyed as "damaged".
            Some(found) => Err(newer(found)),
            None => Ok(Legacy::Damaged(error.to_string())),
        },
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
