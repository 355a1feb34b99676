//! The event that travels from a source through the bus to a trigger.
//!
//! Like Argo Events, an event is a CloudEvents-style context (id, source,
//! type, subject, time) plus data. On the bus the context travels in
//! `ce-*` headers (CloudEvents binary mode) and the data is the payload, so
//! a sensor can route on headers without parsing the body.

use bytes::Bytes;
use spillway_bus::{Message, Received};
use std::time::SystemTime;

/// CloudEvents attributes of an event (Argo's `EventContext`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventContext {
    pub id: String,
    /// The EventSource name.
    pub source: String,
    /// The source kind, e.g. `webhook`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event name within the source.
    pub subject: String,
    /// RFC 3339 time the source received the event.
    pub time: String,
    pub specversion: &'static str,
    pub datacontenttype: String,
}

/// An event: context plus data bytes (JSON for every source so far).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub context: EventContext,
    pub data: Bytes,
}

/// Why a bus message is not a valid event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventDecodeError {
    #[error("message has no `{0}` header")]
    MissingHeader(&'static str),
}

impl Event {
    /// A new event with a fresh id and the current time.
    pub fn new(source: &str, kind: &str, subject: &str, data: Bytes) -> Self {
        Event {
            context: EventContext {
                id: uuid::Uuid::new_v4().simple().to_string(),
                source: source.to_string(),
                kind: kind.to_string(),
                subject: subject.to_string(),
                time: rfc3339(SystemTime::now()),
                specversion: "1.0",
                datacontenttype: "application/json".to_string(),
            },
            data,
        }
    }

    /// The bus subject for events of `source`/`event`.
    pub fn subject_for(source: &str, event: &str) -> String {
        format!("{source}.{event}")
    }

    /// Encodes this event as a bus message.
    pub fn to_message(&self) -> Message {
        let c = &self.context;
        Message {
            subject: Self::subject_for(&c.source, &c.subject),
            headers: vec![
                ("ce-id".into(), c.id.clone()),
                ("ce-source".into(), c.source.clone()),
                ("ce-type".into(), c.kind.clone()),
                ("ce-subject".into(), c.subject.clone()),
                ("ce-time".into(), c.time.clone()),
                ("ce-specversion".into(), c.specversion.into()),
                ("content-type".into(), c.datacontenttype.clone()),
            ],
            payload: self.data.clone(),
        }
    }

    /// Decodes a delivered bus message.
    pub fn from_received(message: &Received) -> Result<Self, EventDecodeError> {
        let get = |name: &'static str| {
            message
                .header(name)
                .map(str::to_string)
                .ok_or(EventDecodeError::MissingHeader(name))
        };
        Ok(Event {
            context: EventContext {
                id: get("ce-id")?,
                source: get("ce-source")?,
                kind: get("ce-type")?,
                subject: get("ce-subject")?,
                time: get("ce-time")?,
                specversion: "1.0",
                datacontenttype: get("content-type")
                    .unwrap_or_else(|_| "application/json".to_string()),
            },
            data: message.payload.clone(),
        })
    }

    /// The data parsed as JSON (`null` when it is not JSON).
    pub fn data_json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

/// `time` as RFC 3339 with millisecond precision, UTC.
pub fn rfc3339(time: SystemTime) -> String {
    let datetime = time::OffsetDateTime::from(time);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    datetime
        .format(&format)
        .unwrap_or_else(|_| "1970-01-01T00:00:00.000Z".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_through_a_bus_message() {
        let event = Event::new(
            "shop",
            "webhook",
            "orders",
            Bytes::from_static(b"{\"a\":1}"),
        );
        let message = event.to_message();
        assert_eq!(message.subject, "shop.orders");
        let received = Received {
            seq: 1,
            subject: message.subject.clone(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            published_at: SystemTime::now(),
            delivery_count: 1,
        };
        assert_eq!(Event::from_received(&received), Ok(event));
    }

    #[test]
    fn rfc3339_format() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
