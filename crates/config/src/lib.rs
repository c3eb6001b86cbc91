//! Helpers for configuration files: human-friendly sizes and durations (`50MB`, `2GiB`, `4096`;
//! `250ms`, `30s`, `10m`, `1h`, `7d`; in TOML a bare number is octets or seconds), and locating a
//! TOML error's line and field so messages can name them.

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as `250ms`, `30s`, `10m`, `1h`, `7d` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

/// A number followed by an optional unit, as in `10m` or `50MB`.
pub fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Deserialize a value written either as a bare number or as text parsed with `FromStr`.
pub fn number_or_text<'de, D, T>(d: D, from_number: impl FnOnce(u64) -> T) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(from_number(n)),
        Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (n, unit) =
            number_and_unit(s).ok_or_else(|| format!("{s:?} is not a duration (examples: 30s, 10m, 1h)"))?;
        let millis: u64 = match unit {
            "ms" => 1,
            "" | "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("unknown unit {other:?} in {s:?}; use ms, s, m, h or d")),
        };
        Ok(Self(Duration::from_millis(n.saturating_mul(millis))))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, |n| Self(Duration::from_secs(n)))
    }
}

/// A size written as a number of octets or with a unit: `50MB`, `2GiB`, `512KB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanSize(pub u64);

impl FromStr for HumanSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let (n, unit) =
            number_and_unit(t).ok_or_else(|| format!("{s:?} is not a size (examples: 50MB, 1GiB, 4096)"))?;
        let mult: u64 = match unit.to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" | "K" => 1000,
            "MB" | "M" => 1000 * 1000,
            "GB" | "G" => 1000 * 1000 * 1000,
            "KIB" => 1 << 10,
            "MIB" => 1 << 20,
            "GIB" => 1 << 30,
            other => return Err(format!("unknown unit {other:?} in {s:?}; use B, KB, MB, GB, KiB, MiB or GiB")),
        };
        n.checked_mul(mult).map(Self).ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d, Self)
    }
}

/// The line (1-based) and `table.key` at a byte offset of a TOML document.
pub fn toml_location(text: &str, offset: usize) -> (usize, String) {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line - 1).map_or("", |l| l.trim());
    let key = this.split('=').next().map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('['));
    let table = lines[..(line - 1).min(lines.len())]
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && !l.starts_with("[["))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let field = match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (None, Some(k)) => k.to_owned(),
        (Some(t), None) => t,
        (None, None) => "(top level)".to_owned(),
    };
    (line, field)
}

/// The line (1-based) where `key` is set inside `[table]`, or 0 if it is not written there.
pub fn key_line(text: &str, table: &str, key: &str) -> usize {
    let mut in_table = false;
    let mut found = 0;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            in_table = t.trim_matches(|c| c == '[' || c == ']').trim() == table;
        } else if in_table && t.split('=').next().map(str::trim) == Some(key) {
            found = i + 1;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!("50MB".parse::<HumanSize>().map(|s| s.0), Ok(50_000_000));
        assert_eq!("2GiB".parse::<HumanSize>().map(|s| s.0), Ok(2 << 30));
        assert!("5 parsecs".parse::<HumanSize>().is_err());
        assert_eq!("7d".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!("250ms".parse::<HumanDuration>().map(|d| d.0), Ok(Duration::from_millis(250)));
        assert!("2w".parse::<HumanDuration>().is_err());
    }
}
