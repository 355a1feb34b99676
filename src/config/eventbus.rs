//! `kind: EventBus` — the stream's limits, in both spellings Argo users meet:
//! the seed's `jetstream.settings: |` block with snake_case keys
//! (`max_msgs`, `max_bytes`, …) and Argo's `streamConfig` with camelCase keys
//! (`maxMsgs`, `maxBytes`, …). Both are YAML embedded in a string (a mapping
//! is accepted too); errors inside them point at the line in the outer file.
//!
//! `sync_interval` (`syncInterval`) is spillway's: when the embedded bus
//! forces appended events to disk. The name and values follow nats-server's
//! `jetstream { sync_interval }` (`always`, or a duration), plus `never`.

use super::decode::Spanned;
use super::values::{one_of, ByteSize, GoDuration, ObjectMeta};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny};
use serde::Deserialize as DeriveDeserialize;

#[derive(Debug, Clone, PartialEq, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventBus {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: EventBusSpec,
}

#[derive(Debug, Clone, PartialEq, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventBusSpec {
    pub jetstream: Option<JetStreamBus>,
}

/// `spec.jetstream`. Pod-level Argo fields are accepted with a warning.
#[derive(Debug, Clone, PartialEq, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamBus {
    /// `nats://host:port` of an existing JetStream server, or several
    /// separated by commas for a cluster (spillway extension). Without it
    /// the embedded bus enforces the limits.
    pub url: Option<Spanned<String>>,
    /// The seed form: snake_case limits as YAML in a string (or a mapping).
    /// Decoded by the loader into [`SettingsLimits`] so that positions
    /// inside the string map back to the file.
    pub settings: Option<Spanned<IgnoredAny>>,
    /// Argo's form: camelCase stream settings as YAML in a string (or a
    /// mapping), decoded by the loader into [`StreamConfigLimits`].
    pub stream_config: Option<Spanned<IgnoredAny>>,
    /// Argo's `maxPayload` (a size): the largest message accepted.
    pub max_payload: Option<Spanned<ByteSize>>,
}

/// Limits in the seed's snake_case form (`settings: |`).
#[derive(Debug, Clone, Default, PartialEq, DeriveDeserialize)]
pub struct SettingsLimits {
    pub max_msgs: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<ByteSize>>,
    pub max_msg_size: Option<Spanned<ByteSize>>,
    pub max_consumers: Option<Spanned<i64>>,
    pub max_age: Option<Spanned<GoDuration>>,
    pub discard: Option<Spanned<Discard>>,
    /// nats-server's name for the largest message; same as `max_msg_size`.
    pub max_payload: Option<Spanned<ByteSize>>,
    /// Stream replicas on a JetStream cluster (see [`StreamConfigLimits::replicas`]).
    pub replicas: Option<Spanned<i64>>,
    /// The embedded bus's sync policy (see [`SyncInterval`]).
    pub sync_interval: Option<Spanned<SyncInterval>>,
}

/// Limits in Argo's camelCase `streamConfig` form.
#[derive(Debug, Clone, Default, PartialEq, DeriveDeserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamConfigLimits {
    pub max_msgs: Option<Spanned<i64>>,
    pub max_bytes: Option<Spanned<ByteSize>>,
    pub max_msg_size: Option<Spanned<ByteSize>>,
    pub max_consumers: Option<Spanned<i64>>,
    pub max_age: Option<Spanned<GoDuration>>,
    pub discard: Option<Spanned<Discard>>,
    /// Duplicate-detection window (accepted; the embedded bus does not dedupe).
    pub duplicates: Option<Spanned<GoDuration>>,
    /// Stream replicas on a JetStream cluster, 1 to 5 (Argo's default
    /// config says 3; spillway defaults to 1 so a single server works).
    /// The embedded bus is one machine and ignores it, with a warning.
    pub replicas: Option<Spanned<i64>>,
    /// The embedded bus's sync policy (see [`SyncInterval`]).
    pub sync_interval: Option<Spanned<SyncInterval>>,
}

/// When the embedded bus forces appended events to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// `always` (the default): an `fdatasync` covers every event before its
    /// producer is answered.
    Always,
    /// A duration: answer after the write, `fdatasync` at most this long
    /// after it.
    Every(std::time::Duration),
    /// `never`: leave flushing to the OS.
    Never,
}

impl<'de> Deserialize<'de> for SyncInterval {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(SyncInterval::Always),
            "never" => Ok(SyncInterval::Never),
            _ => match super::values::parse_duration(&text) {
                Ok(d) if !d.is_zero() => Ok(SyncInterval::Every(d)),
                _ => Err(de::Error::custom(format!(
                    "invalid sync_interval {text:?}; expected `always`, `never` or a duration \
                     above zero like 100ms or 2m"
                ))),
            },
        }
    }
}

/// `discard: new` (reject, the default) or `old` (delete the oldest).
/// Argo's numeric form is accepted too (0 = old, 1 = new).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    New,
    Old,
}

impl<'de> Deserialize<'de> for Discard {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "new" | "1" | "discardnew" => Ok(Discard::New),
            "old" | "0" | "discardold" => Ok(Discard::Old),
            _ => Err(de::Error::custom(one_of(
                "discard policy",
                &text,
                &["new", "old"],
            ))),
        }
    }
}
