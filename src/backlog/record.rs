//! One stored-for-later event as a file: the `ConfigMap` the seed's
//! store-for-later trigger would have created in Kubernetes.
//!
//! ```json
//! {"apiVersion": "v1", "kind": "ConfigMap",
//!  "metadata": {"name": "backlog-x7k2p", "generateName": "backlog-",
//!               "creationTimestamp": "2025-01-01T10:00:00.000Z",
//!               "labels": {"spillway.io/sensor": "orders", "spillway.io/trigger": "api"},
//!               "annotations": {"spillway.io/stored-at-ms": "…", "spillway.io/reason": "…",
//!                               "spillway.io/crc32c": "…"}},
//!  "data": {"event": "<the event as a CloudEvents JSON document>"}}
//! ```
//!
//! Guarantees: [`Record::decode`] gives back exactly the event that was
//! encoded — context and data bytes (JSON data is embedded verbatim, other
//! data as `data_base64`) — and the sensor/trigger it is replayed to. A file
//! that is not such a document, or whose `data.event` does not match its
//! CRC-32C, is refused with a [`RecordError`] saying why; decoding never
//! panics. Not guaranteed: anything about other `data` keys of the seed's
//! resource (only `data.event` is written).

use crate::event::{Event, EventContext};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `metadata.generateName` of every record, and so the prefix of its name.
pub const NAME_PREFIX: &str = "backlog-";

const SENSOR_LABEL: &str = "spillway.io/sensor";
const TRIGGER_LABEL: &str = "spillway.io/trigger";
const STORED_AT: &str = "spillway.io/stored-at-ms";
const REASON: &str = "spillway.io/reason";
const CRC: &str = "spillway.io/crc32c";

/// A stored event and where replay sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The sensor whose trigger the event is replayed to.
    pub sensor: String,
    /// The trigger the event is replayed to (the one that rejected it).
    pub trigger: String,
    /// Why it was stored, for `spillway backlog list` and the logs.
    pub reason: String,
    pub stored_at: SystemTime,
    pub event: Event,
}

/// Why a file is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("not a backlog ConfigMap: {0}")]
    Shape(String),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("data.event does not match its CRC-32C (stored {stored}, computed {computed}): the record is damaged")]
    Checksum { stored: String, computed: String },
    #[error("data.event is not a CloudEvents JSON document: {0}")]
    Event(String),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigMap {
    api_version: String,
    kind: String,
    metadata: Metadata,
    data: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    name: String,
    generate_name: String,
    creation_timestamp: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// CloudEvents JSON format (structured mode).
#[derive(Serialize, Deserialize)]
struct CloudEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    subject: String,
    time: String,
    datacontenttype: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    data_base64: Option<String>,
}

impl Record {
    /// The file contents of this record under `name`.
    pub fn encode(&self, name: &str) -> Vec<u8> {
        let c = &self.event.context;
        // Valid JSON data is embedded as is, so the bytes come back unchanged.
        let data = std::str::from_utf8(&self.event.data)
            .ok()
            .and_then(|text| RawValue::from_string(text.to_string()).ok());
        let data_base64 = data
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&self.event.data));
        let cloud_event = CloudEvent {
            specversion: c.specversion.to_string(),
            id: c.id.clone(),
            source: c.source.clone(),
            kind: c.kind.clone(),
            subject: c.subject.clone(),
            time: c.time.clone(),
            datacontenttype: c.datacontenttype.clone(),
            data,
            data_base64,
        };
        // Serialising plain strings and a RawValue cannot fail.
        let event = serde_json::to_string(&cloud_event).unwrap_or_default();
        let stored_at_ms = self
            .stored_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        let config_map = ConfigMap {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            metadata: Metadata {
                name: name.to_string(),
                generate_name: NAME_PREFIX.into(),
                creation_timestamp: crate::event::rfc3339(self.stored_at),
                labels: BTreeMap::from([
                    (SENSOR_LABEL.into(), self.sensor.clone()),
                    (TRIGGER_LABEL.into(), self.trigger.clone()),
                ]),
                annotations: BTreeMap::from([
                    (STORED_AT.into(), stored_at_ms.to_string()),
                    (REASON.into(), self.reason.clone()),
                    (CRC.into(), crc_of(&event)),
                ]),
            },
            data: BTreeMap::from([("event".into(), event)]),
        };
        let mut bytes = serde_json::to_vec_pretty(&config_map).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// The record in `bytes` (a file written by [`Record::encode`]).
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        let config_map: ConfigMap =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Shape(e.to_string()))?;
        if config_map.kind != "ConfigMap" {
            return Err(RecordError::Shape(format!(
                "kind is {:?}, not ConfigMap",
                config_map.kind
            )));
        }
        let meta = config_map.metadata;
        let label = |key, what| {
            meta.labels
                .get(key)
                .cloned()
                .ok_or(RecordError::Missing(what))
        };
        let sensor = label(SENSOR_LABEL, "the spillway.io/sensor label")?;
        let trigger = label(TRIGGER_LABEL, "the spillway.io/trigger label")?;
        let stored_at_ms: u64 = meta
            .annotations
            .get(STORED_AT)
            .and_then(|v| v.parse().ok())
            .ok_or(RecordError::Missing(
                "the spillway.io/stored-at-ms annotation",
            ))?;
        let event_text = config_map
            .data
            .get("event")
            .ok_or(RecordError::Missing("data.event"))?;
        let stored_crc = meta
            .annotations
            .get(CRC)
            .ok_or(RecordError::Missing("the spillway.io/crc32c annotation"))?;
        let computed = crc_of(event_text);
        if *stored_crc != computed {
            return Err(RecordError::Checksum {
                stored: stored_crc.clone(),
                computed,
            });
        }
        let cloud_event: CloudEvent =
            serde_json::from_str(event_text).map_err(|e| RecordError::Event(e.to_string()))?;
        let data = match (&cloud_event.data, &cloud_event.data_base64) {
            (Some(raw), None) => bytes::Bytes::copy_from_slice(raw.get().as_bytes()),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map(bytes::Bytes::from)
                .map_err(|e| RecordError::Event(format!("data_base64: {e}")))?,
            (None, None) => bytes::Bytes::new(),
            (Some(_), Some(_)) => {
                return Err(RecordError::Event(
                    "has both data and data_base64".to_string(),
                ))
            }
        };
        Ok(Record {
            sensor,
            trigger,
            reason: meta.annotations.get(REASON).cloned().unwrap_or_default(),
            stored_at: UNIX_EPOCH + Duration::from_millis(stored_at_ms),
            event: Event {
                context: EventContext {
                    id: cloud_event.id,
                    source: cloud_event.source,
                    kind: cloud_event.kind,
                    subject: cloud_event.subject,
                    time: cloud_event.time,
                    specversion: "1.0",
                    datacontenttype: cloud_event.datacontenttype,
                },
                data,
            },
        })
    }
}

fn crc_of(text: &str) -> String {
    format!("{:08x}", crc32c::crc32c(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(data: &'static [u8]) -> Record {
        Record {
            sensor: "orders".into(),
            trigger: "api".into(),
            reason: "HTTP 503".into(),
            stored_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            event: Event::new("shop", "webhook", "orders", bytes::Bytes::from_static(data)),
        }
    }

    #[test]
    fn json_data_round_trips_byte_for_byte() {
        let original = record(b"{ \"b\": 1,  \"a\": [2, 3] }");
        let bytes = original.encode("backlog-bcdfg");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\"generateName\": \"backlog-\""), "{text}");
        assert!(text.contains("\"name\": \"backlog-bcdfg\""), "{text}");
        assert_eq!(Record::decode(&bytes), Ok(original));
    }

    #[test]
    fn non_json_data_round_trips_as_base64() {
        let original = record(b"\xff\x00 not json");
        let bytes = original.encode("backlog-bcdfg");
        assert!(String::from_utf8_lossy(&bytes).contains("data_base64"));
        assert_eq!(Record::decode(&bytes), Ok(original));
    }

    #[test]
    fn damage_is_reported_not_panicked_on() {
        let bytes = record(b"{\"total\":42}").encode("backlog-bcdfg");
        let text = String::from_utf8(bytes.clone()).unwrap();
        let flipped = text.replace("total", "totAl");
        assert!(matches!(
            Record::decode(flipped.as_bytes()),
            Err(RecordError::Checksum { .. })
        ));
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 3] {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            Record::decode(b"{\"kind\":\"Secret\"}"),
            Err(RecordError::Shape(_))
        ));
    }
}
