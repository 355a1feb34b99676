//! `jetstream:` events (a spillway extension; Argo has no JetStream event
//! source): pull from a durable consumer of an existing upstream stream.
//!
//! The "return error to source" pattern of the seed: a message is acked
//! upstream only after spillway's bus accepted it; while the bus is full it
//! is nak'd with a delay, so the upstream stream keeps the backlog.

use crate::config::decode::Spanned;
use crate::config::flow_control::Problem;
use crate::config::values::GoDuration;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One upstream durable pull consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamEvent {
    /// `nats://host:port`.
    pub url: Spanned<String>,
    /// Upstream stream name (must exist).
    pub stream: Spanned<String>,
    /// Durable consumer name; created if missing.
    pub consumer: Spanned<String>,
    /// Only messages on this subject (wildcards allowed); default: all.
    pub subject: Option<Spanned<String>>,
    /// Time a message may stay unacked before upstream redelivers it (default 30s).
    pub ack_wait_time: Option<Spanned<GoDuration>>,
    /// Most messages pulled (and unacked) at once (default 100).
    pub batch_size: Option<Spanned<u32>>,
    pub json_body: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl JetStreamEvent {
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.url.value.starts_with("nats://") {
            out.push((
                self.url.pos,
                format!("url must start with nats://, found {:?}", self.url.value),
            ));
        }
        for (field, value) in [("stream", &self.stream), ("consumer", &self.consumer)] {
            if value.value.is_empty() || value.value.contains(['.', '*', '>', ' ']) {
                out.push((
                    value.pos,
                    format!(
                        "{field} {:?} must be non-empty without '.', '*', '>' or spaces",
                        value.value
                    ),
                ));
            }
        }
        if let Some(batch) = &self.batch_size {
            if batch.value == 0 {
                out.push((batch.pos, "batchSize must be at least 1".to_string()));
            }
        }
        if let Some(wait) = &self.ack_wait_time {
            if wait.value.0 < std::time::Duration::from_secs(1) {
                out.push((wait.pos, "ackWaitTime must be at least 1s".to_string()));
            }
        }
        out
    }
}
