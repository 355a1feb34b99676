//! The `amqp` event source: consumes a RabbitMQ queue bound to an exchange
//! (Argo's `AMQPEventSource`) and publishes each message to the bus.
//!
//! Backpressure is AMQP's own credit window: the channel's `basic.qos`
//! prefetch (`flowControl.qos.prefetchCount`, default 10) caps the
//! deliveries RabbitMQ hands out unacked. A delivery is acked only after
//! [`Bus::publish`](spillway_bus::Bus::publish) returned a sequence number.
//! While the bus is full the delivery is held (unacked) and offered again as
//! space frees, so the prefetch credits run out and RabbitMQ keeps the rest
//! of the queue; a delivery still refused after `flowControl.maxBlock`
//! (default 5s) is nack-requeued and comes back later.
//!
//! | outcome (`source_events_total`) | what happens to the AMQP message |
//! |---|---|
//! | `accepted` | acked after the bus holds it |
//! | `bus_full` | held up to `maxBlock`, then `basic.nack` with requeue |
//! | `unavailable` | bus closed or failing, or shutting down: nack with requeue |
//! | `too_large` | larger than the bus `max_msg_size`: `basic.reject` without requeue (RabbitMQ dead-letters it if the queue has a DLX) |
//! | `invalid` | `jsonBody: true` but not JSON: `basic.reject` without requeue |
//!
//! Guarantees: at least once. No message is acked before the bus accepted
//! it. An ack lost with a broken connection means RabbitMQ redelivers a
//! message the bus already holds (a duplicate, never a loss). Deliveries in
//! hand are bounded by the prefetch count. Not guaranteed: order (deliveries
//! are published concurrently, and requeued ones return out of order).

mod setup;

use super::{publish_waiting, EventName, LogThrottle, Running, SourceContext, SourceError, Waited};
use crate::config::eventsource::amqp::AmqpEvent;
use crate::event::Event;
use crate::sensor::RetryPolicy;
use crate::telemetry::SourceOutcome;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions, BasicRejectOptions};
use spillway_bus::PublishError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use setup::{amqp_value_json, field_table};

/// `basic.qos` prefetch without `flowControl.qos.prefetchCount`.
pub const DEFAULT_PREFETCH: u16 = 10;
/// How long a delivery waits for bus space before it is nack-requeued.
pub const DEFAULT_MAX_BLOCK: Duration = Duration::from_secs(5);
/// At most one warning line per this interval for each kind of refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The runnable form of one `amqp` event.
#[derive(Debug, Clone)]
pub struct AmqpSource {
    pub name: EventName,
    pub config: AmqpEvent,
    pub prefetch: u16,
    pub max_block: Duration,
    pub json_body: bool,
    pub metadata: BTreeMap<String, String>,
    /// Connection retries: `connectionBackoff`, or 5 attempts 1s ×2.
    pub backoff: RetryPolicy,
}

impl AmqpSource {
    pub fn new(name: EventName, config: &AmqpEvent) -> Self {
        let flow = config.flow_control.as_ref().map(|f| &f.value);
        AmqpSource {
            name,
            prefetch: flow
                .and_then(|f| f.qos.as_ref())
                .and_then(|q| q.value.prefetch_count.as_ref())
                .map_or(DEFAULT_PREFETCH, |c| c.value.max(1)),
            max_block: flow
                .and_then(|f| f.max_block.as_ref())
                .map_or(DEFAULT_MAX_BLOCK, |d| d.value.0),
            json_body: config.json_body.unwrap_or(false),
            metadata: config.metadata.clone().unwrap_or_default(),
            backoff: config.connection_backoff.as_ref().map_or(
                RetryPolicy {
                    steps: 5,
                    duration: Duration::from_secs(1),
                    factor: 2.0,
                    jitter: 0.0,
                },
                |b| RetryPolicy::from(&b.value),
            ),
            config: config.clone(),
        }
    }

    /// Connects, declares and starts consuming; then runs until `ctx.stop`.
    /// A lost connection is re-established with the backoff's delays.
    pub async fn start(self, ctx: SourceContext) -> Result<Running, SourceError> {
        let session = setup::connect_with_retries(&self, &ctx.stop).await?;
        tracing::info!(
            "amqp source {} consuming queue {:?} (exchange {:?}, routing key {:?}, prefetch {})",
            self.name,
            session.queue,
            self.config.exchange_name.value,
            self.config.routing_key.value,
            self.prefetch
        );
        let source = Arc::new(self);
        Ok(tokio::spawn(async move {
            let mut session = Some(session);
            loop {
                if let Some(current) = session.take() {
                    source.consume(current, &ctx).await;
                }
                if ctx.stop.is_cancelled() {
                    break;
                }
                match setup::reconnect(&source, &ctx.stop).await {
                    Some(next) => session = Some(next),
                    None => break,
                }
            }
        }))
    }

    /// Handles deliveries until the consumer ends or `stop`; deliveries in
    /// hand are settled (acked or requeued) before it returns.
    async fn consume(self: &Arc<Self>, mut session: setup::Session, ctx: &SourceContext) {
        let warn = Arc::new(Warnings::default());
        let mut in_hand = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                biased;
                _ = ctx.stop.cancelled() => break,
                Some(_) = in_hand.join_next(), if !in_hand.is_empty() => {}
                next = session.consumer.next(), if in_hand.len() < usize::from(self.prefetch) => {
                    match next {
                        Some(Ok(delivery)) => {
                            let source = Arc::clone(self);
                            let ctx = ctx.clone();
                            let warn = Arc::clone(&warn);
                            in_hand.spawn(async move { source.handle(delivery, &ctx, &warn).await });
                        }
                        Some(Err(err)) => {
                            tracing::warn!("amqp source {}: consumer failed: {err}; reconnecting", self.name);
                            break;
                        }
                        None => {
                            tracing::warn!("amqp source {}: the server cancelled the consumer; reconnecting", self.name);
                            break;
                        }
                    }
                }
            }
        }
        if ctx.stop.is_cancelled() {
            // Stop new deliveries first, so settling the ones in hand is final.
            let _ = session
                .channel
                .basic_cancel(session.consumer_tag.clone(), BasicCancelOptions::default())
                .await;
        }
        while in_hand.join_next().await.is_some() {}
        setup::close(session).await;
    }

    /// Publishes one delivery and settles it with RabbitMQ.
    async fn handle(&self, delivery: Delivery, ctx: &SourceContext, warn: &Warnings) {
        let count = |outcome| {
            ctx.metrics
                .source_event(&self.name.source, &self.name.event, outcome)
        };
        let data = match self.event_data(&delivery) {
            Ok(data) => data,
            Err(err) => {
                count(SourceOutcome::Invalid);
                if let Some(n) = warn.invalid.occurred() {
                    tracing::warn!("amqp source {}: {n} message(s) rejected: {err}", self.name);
                }
                settle(
                    &self.name,
                    delivery.reject(BasicRejectOptions { requeue: false }).await,
                );
                return;
            }
        };
        let event = Event::new(&self.name.source, "amqp", &self.name.event, data);
        let deadline = Instant::now() + self.max_block;
        let waited = publish_waiting(
            &*ctx.bus,
            &ctx.metrics,
            &self.name.source,
            event.to_message(),
            Some(deadline),
            Some(&ctx.stop),
        )
        .await;
        let requeue = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match waited {
            Waited::Accepted(_) => {
                count(SourceOutcome::Accepted);
                settle(&self.name, delivery.ack(BasicAckOptions::default()).await);
            }
            Waited::Refused(PublishError::Full { limit, .. }) => {
                count(SourceOutcome::BusFull);
                if let Some(n) = warn.full.occurred() {
                    tracing::warn!(
                        "amqp source {}: bus full ({limit}); {n} message(s) requeued to RabbitMQ after waiting {:?}",
                        self.name,
                        self.max_block
                    );
                }
                settle(&self.name, delivery.nack(requeue).await);
            }
            Waited::Refused(PublishError::TooLarge { size, max, .. }) => {
                count(SourceOutcome::TooLarge);
                if let Some(n) = warn.too_large.occurred() {
                    tracing::warn!(
                        "amqp source {}: {n} message(s) rejected: event of {size} bytes exceeds the bus max_msg_size {max}",
                        self.name
                    );
                }
                settle(
                    &self.name,
                    delivery.reject(BasicRejectOptions { requeue: false }).await,
                );
            }
            Waited::Refused(PublishError::Closed { .. } | PublishError::Unavailable { .. })
            | Waited::Stopped(_) => {
                count(SourceOutcome::Unavailable);
                settle(&self.name, delivery.nack(requeue).await);
            }
        }
    }

    /// Argo's `AMQPEventData` as JSON bytes.
    fn event_data(&self, delivery: &Delivery) -> Result<Bytes, super::BodyError> {
        let body = super::event_body(&delivery.data, self.json_body)?;
        let p = &delivery.properties;
        let text =
            |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_string());
        let headers: serde_json::Map<String, serde_json::Value> = p
            .headers()
            .iter()
            .flat_map(|table| table.into_iter())
            .map(|(k, v)| (k.as_str().to_string(), amqp_value_json(v)))
            .collect();
        let mut data = serde_json::json!({
            "contentType": text(p.content_type()),
            "contentEncoding": text(p.content_encoding()),
            "deliveryMode": p.delivery_mode(),
            "priority": p.priority(),
            "correlationId": text(p.correlation_id()),
            "replyTo": text(p.reply_to()),
            "expiration": text(p.expiration()),
            "messageId": text(p.message_id()),
            "timestamp": p.timestamp(),
            "type": text(p.kind()),
            "appId": text(p.app_id()),
            "exchange": delivery.exchange.as_str(),
            "routingKey": delivery.routing_key.as_str(),
            "headers": headers,
            "body": body,
        });
        if !self.metadata.is_empty() {
            data["metadata"] = serde_json::json!(self.metadata);
        }
        Ok(Bytes::from(data.to_string()))
    }
}

/// One throttled warning per kind of refusal, shared by a consumer's tasks.
struct Warnings {
    full: LogThrottle,
    too_large: LogThrottle,
    invalid: LogThrottle,
}

impl Default for Warnings {
    fn default() -> Self {
        Warnings {
            full: LogThrottle::new(WARN_EVERY),
            too_large: LogThrottle::new(WARN_EVERY),
            invalid: LogThrottle::new(WARN_EVERY),
        }
    }
}

/// An ack/nack that fails means the channel is gone: RabbitMQ requeues the
/// delivery itself, so this only needs saying.
fn settle(name: &EventName, result: lapin::Result<bool>) {
    if let Err(err) = result {
        tracing::debug!(
            "amqp source {name}: could not settle a delivery (RabbitMQ requeues it): {err}"
        );
    }
}
