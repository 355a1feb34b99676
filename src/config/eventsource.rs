//! `kind: EventSource` — where events enter. Argo field names; spillway's
//! own knobs live in a per-event `flowControl:` block.
//!
//! Runnable today: `webhook`, `amqp`, `nats`, `calendar` (Argo kinds) and
//! `jetstream`, `file` (spillway extensions); each kind's fields live in
//! `eventsource/<kind>.rs`. `pubsub` (Google Cloud) is accepted so the
//! seed's "return error to source" example validates, but it has no runtime
//! here and `spillway run` says so.

pub mod amqp;
pub mod calendar;
pub mod file;
pub mod jetstream;
pub mod nats;

use super::decode::Spanned;
use super::flow_control::{BurstRateLimit, Priority, Shedding};
use super::values::{ByteSize, GoDuration, NamedMap, ObjectMeta};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSource {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: EventSourceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventSourceSpec {
    pub webhook: Option<NamedMap<WebhookEvent>>,
    pub pubsub: Option<NamedMap<PubSubEvent>>,
    pub amqp: Option<NamedMap<amqp::AmqpEvent>>,
    pub nats: Option<NamedMap<nats::NatsEvent>>,
    pub calendar: Option<NamedMap<calendar::CalendarEvent>>,
    /// spillway extension: pull from an upstream JetStream stream.
    pub jetstream: Option<NamedMap<jetstream::JetStreamEvent>>,
    /// spillway extension: lines of a file or of standard input.
    pub file: Option<NamedMap<file::FileEvent>>,
}

impl EventSourceSpec {
    /// Every event name defined here, of every kind, in kind order.
    pub fn event_names(&self) -> Vec<&Spanned<String>> {
        fn names<T>(map: &Option<NamedMap<T>>) -> impl Iterator<Item = &Spanned<String>> {
            map.iter().flat_map(|m| m.iter()).map(|(name, _)| name)
        }
        names(&self.webhook)
            .chain(names(&self.pubsub))
            .chain(names(&self.amqp))
            .chain(names(&self.nats))
            .chain(names(&self.calendar))
            .chain(names(&self.jetstream))
            .chain(names(&self.file))
            .collect()
    }
}

/// One webhook endpoint (Argo's `WebhookContext`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEvent {
    /// TCP port to listen on; endpoints may share a port.
    pub port: Spanned<String>,
    /// URL path, e.g. `/orders`.
    pub endpoint: Spanned<String>,
    /// HTTP method accepted (Argo default: POST).
    pub method: Option<Spanned<String>>,
    /// Externally visible URL (informational).
    pub url: Option<String>,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_payload_size: Option<Spanned<ByteSize>>,
    /// Extra key/values attached to every event from this endpoint.
    pub metadata: Option<BTreeMap<String, String>>,
    pub flow_control: Option<WebhookFlowControl>,
}

/// spillway extensions for a webhook endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFlowControl {
    /// Wait this long for bus space before answering 429 (Kafka `max.block.ms`). Default 0.
    pub max_block: Option<Spanned<GoDuration>>,
    /// Ingress rate limit: over it, `429` with `X-Spillway-Reason: rate_limited`.
    pub rate_limit: Option<Spanned<BurstRateLimit>>,
    /// Where each request's priority comes from (for shedding).
    pub priority: Option<Spanned<Priority>>,
    /// Refuse low-priority requests while the bus is deep (`429 shed`).
    pub shedding: Option<Spanned<Shedding>>,
}

/// Google Cloud Pub/Sub subscription (accepted, not run here).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PubSubEvent {
    #[serde(rename = "projectID")]
    pub project_id: Option<String>,
    pub topic: Option<String>,
    #[serde(rename = "subscriptionID")]
    pub subscription_id: Option<String>,
    /// Time a message may stay unacknowledged before Pub/Sub redelivers it.
    pub ack_wait_time: Option<Spanned<GoDuration>>,
    pub json_body: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}
