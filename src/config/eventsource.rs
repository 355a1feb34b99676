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
use super::flow_control::Problem;
use super::flow_control::{BurstRateLimit, Priority, Shedding};
use super::values::{ByteSize, GoDuration, NamedMap, ObjectMeta, SecretKeySelector};
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
    /// Argo's bearer token: requests must carry `Authorization: Bearer
    /// <value of this secret>`, or get 401.
    pub auth_secret: Option<Spanned<SecretKeySelector>>,
    pub flow_control: Option<WebhookFlowControl>,
}

impl WebhookEvent {
    /// Out-of-range values of the endpoint's spillway fields.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(secret) = &self.auth_secret {
            out.extend(secret.value.problems());
        }
        if let Some(flow) = &self.flow_control {
            out.extend(flow.problems());
        }
        out
    }
}

/// spillway extensions for a webhook endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFlowControl {
    /// Wait this long for bus space before answering 429 (Kafka `max.block.ms`). Default 0.
    pub max_block: Option<Spanned<GoDuration>>,
    /// Ingress rate limit: over it, `429` with `X-Spillway-Reason: rate_limited`.
    pub rate_limit: Option<Spanned<BurstRateLimit>>,
    /// Where each request's priority comes from (for shedding, and stamped
    /// on the event for the sensors).
    pub priority: Option<Spanned<Priority>>,
    /// Refuse low-priority requests while the bus is deep (`429 shed`).
    pub shedding: Option<Spanned<Shedding>>,
    /// Require an HMAC-SHA256 signature of the body (GitHub style), or 401.
    pub signature: Option<Spanned<Signature>>,
    /// Time a client has to send a request's headers, and the longest a
    /// kept-alive connection may sit idle (slowloris guard). Per port: the
    /// smallest value among the port's endpoints applies. Default 10s.
    pub header_read_timeout: Option<Spanned<GoDuration>>,
    /// Time a client has to send the whole body, or 408. Default 30s.
    pub body_read_timeout: Option<Spanned<GoDuration>>,
    /// Most connections open at once on the endpoint's port; a connection
    /// over it gets 503 and is closed. Per port: the smallest value among
    /// the port's endpoints applies. Default 512.
    pub max_connections: Option<Spanned<u32>>,
}

impl WebhookFlowControl {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(rate) = &self.rate_limit {
            out.extend(rate.value.problems());
        }
        if let Some(shedding) = &self.shedding {
            out.extend(shedding.value.problems());
        }
        if let Some(priority) = &self.priority {
            out.extend(priority.value.problems(priority.pos));
        }
        if let Some(signature) = &self.signature {
            out.extend(signature.value.problems());
        }
        for (field, timeout) in [
            ("headerReadTimeout", &self.header_read_timeout),
            ("bodyReadTimeout", &self.body_read_timeout),
        ] {
            if let Some(t) = timeout.as_ref().filter(|t| t.value.0.is_zero()) {
                out.push((t.pos, format!("{field} must be greater than zero")));
            }
        }
        if let Some(max) = self.max_connections.as_ref().filter(|m| m.value == 0) {
            out.push((max.pos, "maxConnections must be at least 1".to_string()));
        }
        out
    }
}

/// `flowControl.signature: {secret, header}`: the body's HMAC-SHA256 under
/// `secret`, sent hex-encoded as `<header>: sha256=<hex>` (GitHub's
/// `X-Hub-Signature-256` format).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// The shared HMAC key.
    pub secret: Spanned<SecretKeySelector>,
    /// Request header carrying the signature (default `X-Hub-Signature-256`).
    pub header: Option<Spanned<String>>,
}

impl Signature {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = self.secret.value.problems();
        if let Some(header) = &self.header {
            if axum::http::HeaderName::try_from(header.value.as_str()).is_err() {
                out.push((
                    header.pos,
                    format!("{:?} is not a valid HTTP header name", header.value),
                ));
            }
        }
        out
    }
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
