//! The shared entries' wire form: one KV key per source (the CIDR, spelled in the characters a
//! key allows), a JSON value with source, reason, origin host and absolute expiry.
use serde::{Deserialize, Serialize};

use crate::{cidr::Cidr, config::check_name, control::check_reason};

/// A ban or list entry as the fleet shares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedEntry {
    pub source: Cidr,
    /// Why the origin host made it (`rate_limited`, an operator's reason...).
    pub reason: String,
    /// The host that made it.
    pub origin: String,
    /// Unix seconds, the same on every host, so that it expires everywhere at once; 0 never.
    pub expires: u64,
    /// When it was published, Unix milliseconds (the lag to apply it).
    pub at_ms: u64,
}

/// Why a value in a bucket is not applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("key {key:?}: not a JSON entry ({message})")]
    Json { key: String, message: String },
    #[error("key {key:?}: the entry is for {cidr}, whose key is {expected:?}")]
    KeyMismatch {
        key: String,
        cidr: Cidr,
        expected: String,
    },
    #[error("key {key:?}: origin {origin:?}: {problem}")]
    Origin {
        key: String,
        origin: String,
        problem: String,
    },
    #[error("key {key:?}: {problem}")]
    Reason { key: String, problem: String },
}

/// The KV key of a source: its CIDR with `/` as `=` and `:` as `_` (a key may hold letters,
/// digits and `-/_=.`; an IPv6 `::1` must not start the key with a dot either).
pub fn key_for(cidr: &Cidr) -> String {
    cidr.to_string().replace('/', "=").replace(':', "_")
}

impl SharedEntry {
    pub fn encode(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).expect("an entry serialises"))
    }

    /// Parses the value under `key`, refusing anything this host would not apply as given.
    ///
    /// # Errors
    ///
    /// [`EntryError`], naming the key and what is wrong.
    pub fn decode(key: &str, value: &[u8]) -> Result<Self, EntryError> {
        let e: Self = serde_json::from_slice(value).map_err(|err| EntryError::Json {
            key: key.to_string(),
            message: err.to_string(),
        })?;
        let expected = key_for(&e.source);
        if expected != key {
            return Err(EntryError::KeyMismatch {
                key: key.to_string(),
                cidr: e.source,
                expected,
            });
        }
        check_name(&e.origin).map_err(|problem| EntryError::Origin {
            key: key.to_string(),
            origin: e.origin.clone(),
            problem,
        })?;
        check_reason(&e.reason).map_err(|err| EntryError::Reason {
            key: key.to_string(),
            problem: err.to_string(),
        })?;
        Ok(e)
    }

    /// The reason this host records for it: `fleet:<origin>`.
    pub fn local_reason(&self) -> String {
        format!("fleet:{}", self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(source: &str) -> SharedEntry {
        SharedEntry {
            source: source.parse().unwrap(),
            reason: "rate_limited".into(),
            origin: "web-1".into(),
            expires: 1_800_000_000,
            at_ms: 1_799_999_000_000,
        }
    }

    #[test]
    fn entries_round_trip_through_their_key() {
        for s in ["198.18.0.7/32", "198.18.4.0/24", "::1/128", "fd00::/64"] {
            let e = entry(s);
            let key = key_for(&e.source);
            assert!(
                key.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-/_=.".contains(c))
                    && !key.starts_with('.'),
                "{key}"
            );
            assert_eq!(SharedEntry::decode(&key, &e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn malformed_entries_are_refused_with_the_key() {
        let good = entry("198.18.0.7/32");
        let key = key_for(&good.source);
        let bad: &[(&str, Vec<u8>)] = &[
            ("not json", b"{not json".to_vec()),
            ("missing field", br#"{"source":"198.18.0.7/32"}"#.to_vec()),
            (
                "bad source",
                br#"{"source":"198.18.0.300/32","reason":"x","origin":"a","expires":1,"at_ms":1}"#
                    .to_vec(),
            ),
            (
                "unknown field",
                br#"{"source":"198.18.0.7/32","reason":"x","origin":"a","expires":1,"at_ms":1,"allow":true}"#
                    .to_vec(),
            ),
        ];
        for (what, value) in bad {
            let err = SharedEntry::decode(&key, value).unwrap_err();
            assert!(err.to_string().contains(&key), "{what}: {err}");
        }
        // Under another source's key: never applied to the wrong source.
        let other = key_for(&"198.18.0.8/32".parse().unwrap());
        assert!(matches!(
            SharedEntry::decode(&other, &good.encode()),
            Err(EntryError::KeyMismatch { .. })
        ));
        let mut e = good.clone();
        e.origin = "a.b".into();
        assert!(matches!(
            SharedEntry::decode(&key, &e.encode()),
            Err(EntryError::Origin { .. })
        ));
        let mut e = good;
        e.reason = "line\nbreak".into();
        assert!(matches!(
            SharedEntry::decode(&key, &e.encode()),
            Err(EntryError::Reason { .. })
        ));
    }
}
