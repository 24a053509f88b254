//! Durations as operators type them (`90s`, `10m`, `1h30m`, `2d`) for TTLs, and their display,
//! with errors that name the value and the accepted forms.
//!
//! Hand-written here, not humantime: the accepted form is stricter than humantime's (units
//! d, h, m, s, largest first, once each, no spaces or fractions, at most ten years, so that a
//! typo is an error rather than a TTL), and the display is that same form (`1h30m`, `2d`),
//! which humantime's (`1h 30m`, `2days`) is not; both are documented and tested.
use std::{fmt, str::FromStr, time::Duration};

/// What an error message offers as the accepted forms.
pub const ACCEPTED: &str =
    "a whole number with a unit (s, m, h or d), largest unit first, such as 90s, 10m, 1h30m or 2d";

/// The longest duration accepted: ten years, far beyond any sensible TTL, and far below overflow
/// of a nanosecond count in a u64 (about 584 years).
pub const MAX: Duration = Duration::from_secs(10 * 365 * 86_400);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    #[error("empty duration: expected {ACCEPTED}")]
    Empty,
    #[error("{input:?} is not a duration: expected {ACCEPTED}")]
    Invalid { input: String },
    #[error(
        "{input:?} is not a duration: negative durations are not accepted; expected {ACCEPTED}"
    )]
    Negative { input: String },
    #[error("{input:?} has no unit after {number}: expected {ACCEPTED}")]
    MissingUnit { input: String, number: String },
    #[error(
        "{input:?}: units must appear once each, largest first (d, h, m, s): expected {ACCEPTED}"
    )]
    UnitOrder { input: String },
    #[error("{input:?} is too long: the longest accepted is 3650d")]
    TooLong { input: String },
    #[error("{input:?} is zero: a TTL must be at least 1s (leave the TTL out for no expiry)")]
    Zero { input: String },
}

fn unit_secs(unit: char) -> Option<(u64, u8)> {
    // (seconds, rank): ranks enforce largest-unit-first, each unit once.
    match unit {
        'd' => Some((86_400, 4)),
        'h' => Some((3_600, 3)),
        'm' => Some((60, 2)),
        's' => Some((1, 1)),
        _ => None,
    }
}

/// Parses `90s`, `10m`, `1h`, `2d`, `1h30m`, `1d2h3m4s`. Zero (`0s`) is accepted here; see
/// [`parse_ttl`] for TTLs, which must be positive.
///
/// # Errors
///
/// A [`DurationError`] naming the input and the accepted forms.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    if input.starts_with('-') {
        return Err(DurationError::Negative {
            input: input.to_string(),
        });
    }
    let invalid = || DurationError::Invalid {
        input: input.to_string(),
    };
    let mut total: u64 = 0;
    let mut last_rank = u8::MAX;
    let mut rest = input;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let (number, after) = rest.split_at(digits);
        let mut chars = after.chars();
        let Some(unit) = chars.next() else {
            return Err(DurationError::MissingUnit {
                input: input.to_string(),
                number: number.to_string(),
            });
        };
        let (secs, rank) = unit_secs(unit).ok_or_else(invalid)?;
        if rank >= last_rank {
            return Err(DurationError::UnitOrder {
                input: input.to_string(),
            });
        }
        last_rank = rank;
        let too_long = || DurationError::TooLong {
            input: input.to_string(),
        };
        let n: u64 = number.parse().map_err(|_| too_long())?;
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(too_long)?;
        if total > MAX.as_secs() {
            return Err(too_long());
        }
        rest = chars.as_str();
    }
    Ok(Duration::from_secs(total))
}

/// Parses a TTL: a [`parse`]d duration of at least one second.
///
/// # Errors
///
/// As [`parse`], and [`DurationError::Zero`] for a zero duration.
pub fn parse_ttl(s: &str) -> Result<Duration, DurationError> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(DurationError::Zero {
            input: s.trim().to_string(),
        });
    }
    Ok(d)
}

/// A TTL as a command-line value (`--ttl 10m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl FromStr for Ttl {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_ttl(s).map(Ttl)
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Human(self.0))
    }
}

/// Displays a duration in the form [`parse`] accepts, to the second: `1h30m`, `45s`, `0s`.
#[derive(Clone, Copy, Debug)]
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.0.as_secs();
        if secs == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [('d', 86_400), ('h', 3_600), ('m', 60), ('s', 1)] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse(s).unwrap().as_secs()
    }

    #[test]
    fn parses_single_and_combined_units() {
        assert_eq!(secs("90s"), 90);
        assert_eq!(secs("10m"), 600);
        assert_eq!(secs("1h"), 3600);
        assert_eq!(secs("2d"), 172_800);
        assert_eq!(secs("1h30m"), 5400);
        assert_eq!(secs("1d2h3m4s"), 93_784);
        assert_eq!(secs(" 5m "), 300);
        assert_eq!(secs("0s"), 0);
    }

    #[test]
    fn rejects_negative_garbage_and_empty_naming_the_value_and_forms() {
        let e = parse("-5s").unwrap_err();
        assert!(matches!(e, DurationError::Negative { .. }));
        assert!(e.to_string().contains("\"-5s\""), "{e}");
        assert!(e.to_string().contains("90s, 10m, 1h30m"), "{e}");
        let e = parse("banana").unwrap_err();
        assert!(e.to_string().contains("\"banana\""), "{e}");
        assert!(e.to_string().contains("unit (s, m, h or d)"), "{e}");
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(parse("   "), Err(DurationError::Empty));
        assert!(matches!(
            parse("10"),
            Err(DurationError::MissingUnit { .. })
        ));
        assert!(matches!(parse("10x"), Err(DurationError::Invalid { .. })));
        assert!(matches!(
            parse("1h 30m"),
            Err(DurationError::Invalid { .. })
        ));
        assert!(matches!(parse("m"), Err(DurationError::Invalid { .. })));
        assert!(matches!(parse("1.5h"), Err(DurationError::Invalid { .. })));
        assert!(matches!(parse("+5s"), Err(DurationError::Invalid { .. })));
    }

    #[test]
    fn units_must_be_largest_first_and_once() {
        assert!(matches!(
            parse("30m1h"),
            Err(DurationError::UnitOrder { .. })
        ));
        assert!(matches!(
            parse("1m1m"),
            Err(DurationError::UnitOrder { .. })
        ));
    }

    #[test]
    fn huge_values_are_rejected_not_overflowed() {
        assert!(matches!(parse("3651d"), Err(DurationError::TooLong { .. })));
        assert!(matches!(
            parse("99999999999999999999999s"),
            Err(DurationError::TooLong { .. })
        ));
        assert!(matches!(
            parse("18446744073709551615d"),
            Err(DurationError::TooLong { .. })
        ));
        assert_eq!(secs("3650d"), MAX.as_secs());
    }

    #[test]
    fn ttl_must_be_positive() {
        assert!(matches!(parse_ttl("0s"), Err(DurationError::Zero { .. })));
        assert_eq!("10m".parse::<Ttl>().unwrap().0, Duration::from_secs(600));
    }

    #[test]
    fn human_display_round_trips() {
        for s in ["0s", "45s", "1h30m", "2d", "1d2h3m4s", "10m"] {
            assert_eq!(Human(parse(s).unwrap()).to_string(), s);
        }
    }
}
