//! `amqp:` events (Argo `AMQPEventSource`): consume a RabbitMQ queue bound
//! to an exchange.
//!
//! Argo's fields keep their names and meaning. Argo has no prefetch setting;
//! spillway's lives in `flowControl.qos` (AMQP `basic.qos` names), because
//! the prefetch window is what turns "the bus is full" into RabbitMQ holding
//! the messages. Argo fields that read Kubernetes secrets or configure TLS
//! are refused by the decoder with a reason ([`super::super::k8s_only`]).

use crate::config::decode::Spanned;
use crate::config::flow_control::Problem;
use crate::config::sensor::Backoff;
use crate::config::values::{one_of, GoDuration};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Exchange types RabbitMQ ships with.
pub const EXCHANGE_TYPES: &[&str] = &["direct", "fanout", "topic", "headers"];

/// One AMQP consumer (Argo's `AMQPEventSource`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmqpEvent {
    /// `amqp://user:password@host:port/vhost`.
    pub url: Spanned<String>,
    /// Exchange the queue is bound to (declared unless `exchangeDeclare` is absent and it exists).
    pub exchange_name: Spanned<String>,
    /// `direct`, `fanout`, `topic` or `headers`.
    pub exchange_type: Spanned<String>,
    /// Binding key between the exchange and the queue.
    pub routing_key: Spanned<String>,
    /// Retries of the initial connection (Argo `Backoff`); reconnects after a
    /// lost connection reuse its delays.
    pub connection_backoff: Option<Spanned<Backoff>>,
    /// The message body is JSON and is embedded as such in the event.
    pub json_body: Option<bool>,
    /// Key/values attached to every event.
    pub metadata: Option<BTreeMap<String, String>>,
    pub exchange_declare: Option<Spanned<ExchangeDeclare>>,
    pub queue_declare: Option<Spanned<QueueDeclare>>,
    pub queue_bind: Option<Spanned<QueueBind>>,
    pub consume: Option<Spanned<Consume>>,
    pub flow_control: Option<Spanned<AmqpFlowControl>>,
}

/// Argo `AMQPExchangeDeclareConfig` (Argo declares durable=false by default too).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeDeclare {
    pub durable: Option<bool>,
    pub auto_delete: Option<bool>,
    pub internal: Option<bool>,
    pub no_wait: Option<bool>,
}

/// Argo `AMQPQueueDeclareConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDeclare {
    /// Empty: the server generates a name (the queue then lives only as
    /// long as the connection, so events in it are lost on reconnect).
    pub name: Option<Spanned<String>>,
    pub durable: Option<bool>,
    pub auto_delete: Option<bool>,
    pub exclusive: Option<bool>,
    pub no_wait: Option<bool>,
    /// x-arguments as a JSON object, e.g. `'{"x-queue-type": "quorum"}'`.
    pub arguments: Option<Spanned<String>>,
}

/// Argo `AMQPQueueBindConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueBind {
    pub no_wait: Option<bool>,
}

/// Argo `AMQPConsumeConfig`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Consume {
    pub consumer_tag: Option<String>,
    /// Must stay false: spillway acks only after the bus accepted the event.
    pub auto_ack: Option<Spanned<bool>>,
    pub exclusive: Option<bool>,
    pub no_local: Option<bool>,
    pub no_wait: Option<bool>,
}

/// spillway extensions of an `amqp` event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmqpFlowControl {
    /// `basic.qos`: how many unacked deliveries RabbitMQ may hand us.
    pub qos: Option<Spanned<Qos>>,
    /// How long one delivery may wait for bus space before it is
    /// nack-requeued (default 5s).
    pub max_block: Option<Spanned<GoDuration>>,
}

/// AMQP `basic.qos` (`prefetchCount` default 10, never unlimited).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Qos {
    pub prefetch_count: Option<Spanned<u16>>,
    /// Byte window; RabbitMQ does not implement it and refuses non-zero values.
    pub prefetch_size: Option<Spanned<u32>>,
    /// Apply the window per channel (true) instead of per consumer.
    pub global: Option<bool>,
}

impl AmqpEvent {
    /// Values that decode but cannot work.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !(self.url.value.starts_with("amqp://") || self.url.value.starts_with("amqps://")) {
            out.push((
                self.url.pos,
                format!(
                    "url must start with amqp:// or amqps://, found {:?}",
                    self.url.value
                ),
            ));
        } else if self.url.value.starts_with("amqps://") {
            out.push((
                self.url.pos,
                "amqps:// (TLS) is not supported by this build; use amqp://".to_string(),
            ));
        }
        let kind = self.exchange_type.value.as_str();
        if !EXCHANGE_TYPES.contains(&kind) {
            out.push((
                self.exchange_type.pos,
                one_of("exchangeType", kind, EXCHANGE_TYPES),
            ));
        }
        if let Some(consume) = &self.consume {
            if let Some(auto_ack) = &consume.value.auto_ack {
                if auto_ack.value {
                    out.push((
                        auto_ack.pos,
                        "consume.autoAck: true would acknowledge messages before the bus holds them; \
                         spillway acks only after the bus accepted the event (remove it or set false)"
                            .to_string(),
                    ));
                }
            }
        }
        if let Some(declare) = &self.queue_declare {
            if let Some(arguments) = &declare.value.arguments {
                if let Err(message) = queue_arguments(&arguments.value) {
                    out.push((arguments.pos, message));
                }
            }
        }
        if let Some(qos) = self
            .flow_control
            .as_ref()
            .and_then(|f| f.value.qos.as_ref())
        {
            if let Some(count) = &qos.value.prefetch_count {
                if count.value == 0 {
                    out.push((
                        count.pos,
                        "prefetchCount must be at least 1 (0 would let RabbitMQ send without limit)"
                            .to_string(),
                    ));
                }
            }
            if let Some(size) = &qos.value.prefetch_size {
                if size.value != 0 {
                    out.push((
                        size.pos,
                        "RabbitMQ does not implement prefetchSize; leave it out or set 0"
                            .to_string(),
                    ));
                }
            }
        }
        out
    }
}

/// Parses Argo's `queueDeclare.arguments` (a JSON object as a string).
pub fn queue_arguments(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(_) => Err("queueDeclare.arguments must be a JSON object".to_string()),
        Err(err) => Err(format!("queueDeclare.arguments is not valid JSON: {err}")),
    }
}
