//! Human durations: `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`.
//!
//! One non-negative integer followed by one unit. The same form is used in
//! `coalmine.toml` and in the JSON the API shows.

use std::time::Duration;

/// The accepted forms, for error messages.
pub const ACCEPTED_FORMS: &str =
    "an integer followed by a unit: \"500ms\", \"10s\", \"5m\", \"2h\" or \"7d\"";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: {problem}; expected {ACCEPTED_FORMS}")]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Parse `"500ms"`, `"10s"`, `"5m"`, `"2h"`, `"7d"`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |problem: &str| DurationError {
        input: input.to_string(),
        problem: problem.to_string(),
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(err("it does not start with a number"));
    }
    let (num, unit) = s.split_at(digits_end);
    let unit = unit.trim();
    let n: u64 = num.parse().map_err(|_| err("the number is too large"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" => return Err(err("the unit is missing")),
        other if other.starts_with('.') => {
            return Err(err(
                "fractions are not accepted; use a smaller unit (1500ms, 90s)",
            ))
        }
        _ => return Err(err(&format!("unknown unit `{unit}`"))),
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .ok_or_else(|| err("the number is too large"))?;
    Ok(Duration::from_millis(ms))
}

/// Format a duration in the largest unit that represents it exactly
/// (`300s` becomes `"5m"`, `1500ms` stays `"1500ms"`). Sub-millisecond parts are dropped.
pub fn format(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000u64),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.checked_rem(size) == Some(0) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// `#[serde(with = "coalmine_analysis::duration::serde_str")]` for `Duration` fields:
/// written as `"10s"`, read from the same form.
pub mod serde_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse(" 0s ").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "",
            "s",
            "10",
            "10x",
            "1.5s",
            "-1s",
            "99999999999999999999s",
            "1 week",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains("\"500ms\""), "{e}");
        }
        assert!(parse("10").unwrap_err().problem.contains("unit is missing"));
        assert!(parse("1.5s").unwrap_err().problem.contains("fractions"));
    }

    #[test]
    fn formats_round_trip() {
        for s in ["500ms", "10s", "5m", "2h", "7d", "1500ms", "90s", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
    }
}
