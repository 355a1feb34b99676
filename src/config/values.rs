//! Small value types shared by every kind: durations, byte sizes, rate
//! limits, metadata, and the ordered name → value maps Argo uses for events.
//!
//! Each parses the spellings Argo and Kubernetes users write (`30s`,
//! `1m30s`, `1GB`, `1Gi`, `Second`, `minute`) and rejects anything else with a
//! message that says what was expected.

use super::decode::Spanned;
use super::suggest::did_you_mean;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A duration written as Go/Argo does (`30s`, `1m30s`, `500ms`, `72h`) or as
/// a plain number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration(pub Duration);

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(GoDuration)
            .map_err(de::Error::custom)
    }
}

/// Parses `30s`, `1m30s`, `500ms`, `72h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<f64>() {
        if secs < 0.0 {
            return Err(format!("duration {text:?} must not be negative"));
        }
        // Not `from_secs_f64`: it panics past u64::MAX seconds (and on NaN).
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("duration {text:?} is out of range"));
    }
    humantime::parse_duration(trimmed).map_err(|_| {
        format!(
            "invalid duration {text:?}; expected a number with a unit, like 500ms, 30s, 5m, 1h30m"
        )
    })
}

/// A size in bytes: an integer, or a number with a unit (`1MB` = 10⁶,
/// `1MiB` = `1Mi` = 2²⁰, likewise K/G/T).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_byte_size(&text)
            .map(ByteSize)
            .map_err(de::Error::custom)
    }
}

/// Parses an integer byte count or a number with a decimal/binary unit.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}; expected bytes like 1048576, 1MB or 1MiB"))?;
    if value <= 0.0 {
        return Err(format!("size {text:?} must be greater than zero"));
    }
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "KB" | "kB" | "k" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        "Ti" | "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
            ))
        }
    };
    let bytes = value * multiplier as f64;
    if bytes.fract() != 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("size {text:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

/// The time unit of an Argo rate limit (`Second`, `minute`, `HOUR`, …).
pub use spillway_flowctl::RateUnit;

/// Reads a [`RateUnit`] in any capitalisation (the `deserialize_with` of
/// every `unit:` field).
pub fn rate_unit<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<RateUnit>, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse::<RateUnit>()
        .map(Some)
        .map_err(|_| de::Error::custom(one_of("unit", &text, &["Second", "Minute", "Hour"])))
}

/// Argo's `rateLimit: {requestsPerUnit, unit}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    pub requests_per_unit: Spanned<u32>,
    /// Argo's default unit is `Second`.
    #[serde(default, deserialize_with = "rate_unit")]
    pub unit: Option<RateUnit>,
}

impl RateLimit {
    /// The limit flowctl enforces, with `burst` (spillway's
    /// `flowControl.burst`, default 1). `None` for a zero rate or burst,
    /// which validation has already reported.
    pub fn to_flowctl(&self, burst: Option<u32>) -> Option<spillway_flowctl::RateLimit> {
        flowctl_rate_limit(&self.requests_per_unit, self.unit, burst)
    }

    /// Out-of-range values.
    pub fn problems(&self) -> Vec<super::flow_control::Problem> {
        requests_per_unit_problem(&self.requests_per_unit)
            .into_iter()
            .collect()
    }
}

/// `requestsPerUnit` per `unit` (default `Second`) with `burst` (default 1)
/// as flowctl's limit; `None` for a zero rate or burst.
pub(super) fn flowctl_rate_limit(
    requests_per_unit: &Spanned<u32>,
    unit: Option<RateUnit>,
    burst: Option<u32>,
) -> Option<spillway_flowctl::RateLimit> {
    spillway_flowctl::RateLimit::new(requests_per_unit.value, unit.unwrap_or(RateUnit::Second))?
        .with_burst(burst.unwrap_or(1))
}

/// The error of a `requestsPerUnit` of 0, if it is.
pub(super) fn requests_per_unit_problem(
    requests_per_unit: &Spanned<u32>,
) -> Option<super::flow_control::Problem> {
    (requests_per_unit.value == 0).then(|| {
        (
            requests_per_unit.pos,
            "requestsPerUnit must be at least 1".to_string(),
        )
    })
}

/// "unknown X "v"; expected one of a, b (did you mean a?)".
pub fn one_of(what: &str, got: &str, allowed: &[&str]) -> String {
    let hint = did_you_mean(got, allowed.iter().copied())
        .map(|h| format!(" (did you mean `{h}`?)"))
        .unwrap_or_default();
    format!(
        "unknown {what} {got:?}; expected one of {}{hint}",
        allowed.join(", ")
    )
}

/// Kubernetes object metadata. Only the name matters outside Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<Spanned<String>>,
    pub generate_name: Option<String>,
}

impl ObjectMeta {
    /// `metadata.name`, or "" when absent (validation reports that).
    pub fn name(&self) -> &str {
        self.name.as_ref().map_or("", |n| n.value.as_str())
    }

    /// Where `metadata.name` is written, or `fallback` when it is absent.
    pub fn name_pos(&self, fallback: super::yaml::Pos) -> super::yaml::Pos {
        self.name.as_ref().map_or(fallback, |n| n.pos)
    }
}

/// A name → value mapping in source order, keeping the position of each
/// name (Argo keys events by name: `webhook: {orders: {...}}`).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMap<T>(pub Vec<(Spanned<String>, T)>);

impl<T> Default for NamedMap<T> {
    fn default() -> Self {
        NamedMap(Vec::new())
    }
}

impl<T> NamedMap<T> {
    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &T)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k.value == name).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NamedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NamedMapVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for NamedMapVisitor<T> {
            type Value = NamedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedMap<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some((k, v)) = map.next_entry::<Spanned<String>, T>()? {
                    entries.push((k, v));
                }
                Ok(NamedMap(entries))
            }
        }
        deserializer.deserialize_map(NamedMapVisitor(std::marker::PhantomData))
    }
}

/// Kubernetes' `SecretKeySelector` (`{name, key}`): one key of a Secret.
/// Outside Kubernetes spillway resolves it at start-up (see
/// `crate::secrets`); the config only names it, never holds the value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// The Secret's name (a DNS subdomain, as in Kubernetes).
    pub name: Spanned<String>,
    /// The key within the Secret.
    pub key: Spanned<String>,
}

impl SecretKeySelector {
    /// Names Kubernetes would refuse. They are also path components of
    /// `--secrets-dir`, so these rules keep a selector inside that directory.
    pub fn problems(&self) -> Vec<super::flow_control::Problem> {
        let mut out = Vec::new();
        let name = &self.name.value;
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            out.push((
                self.name.pos,
                format!(
                    "invalid secret name {name:?}: like a Kubernetes Secret name, it must be \
                     lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
                ),
            ));
        }
        let key = &self.key.value;
        let key_ok = !key.is_empty()
            && key.len() <= 253
            && key != "."
            && key != ".."
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !key_ok {
            out.push((
                self.key.pos,
                format!(
                    "invalid secret key {key:?}: like a Kubernetes Secret key, it must be \
                     letters, digits, '-', '_' and '.' (and not \".\" or \"..\")"
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        // Would panic in Duration::from_secs_f64.
        for huge in ["1e20", "inf", "NaN"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_byte_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("1Mi"), Ok(1 << 20));
        assert_eq!(parse_byte_size("1.5KB"), Ok(1500));
        assert!(parse_byte_size("-5").is_err());
        assert!(parse_byte_size("0").is_err());
        assert!(parse_byte_size("5 parsecs").is_err());
    }
}
