//! The `jetstream` event source (a spillway extension): pulls from a durable
//! consumer of an upstream NATS JetStream stream — the seed's "return error
//! to source" pattern.
//!
//! Each pull asks for at most `batchSize` messages (default 100), which is
//! also the consumer's `max_ack_pending`, so no more than that is ever in
//! hand. Each message is offered to the bus once; the upstream message is
//!
//! | outcome (`source_events_total`) | upstream |
//! |---|---|
//! | `accepted` | acked after the bus holds the event |
//! | `bus_full` | nak'd with a delay (the bus's `retry_after`, within 100 ms … `ackWaitTime`/2), then the source waits for bus space before pulling again |
//! | `unavailable` | bus closed or failing, or shutting down: nak'd without delay |
//! | `too_large`, `invalid` | terminated (`+TERM`): redelivering cannot help; logged |
//!
//! so while spillway's bus is full the backlog stays in the upstream stream
//! (its consumer's pending count), not in spillway's memory.
//!
//! Guarantees: at least once; nothing is acked before the bus accepted it.
//! A message whose ack is lost (connection drop) or whose `ackWaitTime`
//! expires is redelivered by the server and published again: a duplicate,
//! never a loss. Not guaranteed: order (a batch is published concurrently,
//! nak'd messages come back later).

use super::{EventName, LogThrottle, Running, SourceContext, SourceError};
use crate::config::eventsource::jetstream::JetStreamEvent;
use crate::event::Event;
use crate::telemetry::SourceOutcome;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::AckKind;

type PullConsumer = async_nats::jetstream::consumer::Consumer<pull::Config>;
use futures_util::StreamExt;
use spillway_bus::PublishError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub const DEFAULT_BATCH: u32 = 100;
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long one pull request may wait on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// Bounds of the nak delay while the bus is full.
const MIN_NAK_DELAY: Duration = Duration::from_millis(100);
/// Pause after a failed pull before the next one.
const PULL_RETRY: Duration = Duration::from_secs(1);
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The runnable form of one `jetstream` event.
#[derive(Debug, Clone)]
pub struct JetStreamSource {
    pub name: EventName,
    pub config: JetStreamEvent,
    pub batch: u32,
    pub ack_wait: Duration,
    pub json_body: bool,
    pub metadata: BTreeMap<String, String>,
}

impl JetStreamSource {
    pub fn new(name: EventName, config: &JetStreamEvent) -> Self {
        JetStreamSource {
            name,
            batch: config
                .batch_size
                .as_ref()
                .map_or(DEFAULT_BATCH, |b| b.value.max(1)),
            ack_wait: config
                .ack_wait_time
                .as_ref()
                .map_or(DEFAULT_ACK_WAIT, |d| d.value.0),
            json_body: config.json_body.unwrap_or(false),
            metadata: config.metadata.clone().unwrap_or_default(),
            config: config.clone(),
        }
    }

    /// Connects and binds (creating) the durable consumer, then pulls until
    /// `ctx.stop`. The client reconnects on its own after a lost connection.
    pub async fn start(self, ctx: SourceContext) -> Result<Running, SourceError> {
        let url = self.config.url.value.clone();
        let setup = |reason: String| SourceError::Setup {
            name: self.name.to_string(),
            reason,
        };
        let client = async_nats::ConnectOptions::new()
            .name("spillway-jetstream-source")
            .connection_timeout(Duration::from_secs(5))
            .connect(url.as_str())
            .await
            .map_err(|err| SourceError::Connect {
                name: self.name.to_string(),
                url: url.clone(),
                reason: err.to_string(),
            })?;
        let js = async_nats::jetstream::new(client);
        let stream = &self.config.stream.value;
        let durable = &self.config.consumer.value;
        let consumer: PullConsumer = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(durable.clone()),
                    description: Some(format!("spillway event source {}", self.name)),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    filter_subject: self
                        .config
                        .subject
                        .as_ref()
                        .map(|s| s.value.clone())
                        .unwrap_or_default(),
                    max_ack_pending: i64::from(self.batch),
                    ..Default::default()
                },
                stream.as_str(),
            )
            .await
            .map_err(|err| {
                setup(format!(
                    "cannot create or bind consumer {durable:?} on stream {stream:?}: {err}"
                ))
            })?;
        tracing::info!(
            "jetstream source {} pulling {stream}/{durable} from {url} in batches of {}",
            self.name,
            self.batch
        );
        let source = Arc::new(self);
        Ok(tokio::spawn(async move { source.run(consumer, ctx).await }))
    }

    async fn run(self: Arc<Self>, consumer: PullConsumer, ctx: SourceContext) {
        let warn = LogThrottle::new(WARN_EVERY);
        let batch = usize::try_from(self.batch).unwrap_or(usize::MAX);
        while !ctx.stop.is_cancelled() {
            let pulled = tokio::select! {
                pulled = consumer.batch().max_messages(batch).expires(PULL_EXPIRES).messages() => pulled,
                _ = ctx.stop.cancelled() => break,
            };
            let mut messages = match pulled {
                Ok(messages) => messages,
                Err(err) => {
                    if let Some(n) = warn.occurred() {
                        tracing::warn!("jetstream source {}: {n} pull(s) failed: {err}", self.name);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(PULL_RETRY) => {}
                        _ = ctx.stop.cancelled() => break,
                    }
                    continue;
                }
            };
            let mut in_hand = Vec::new();
            while let Some(next) = messages.next().await {
                match next {
                    Ok(message) => in_hand.push(message),
                    Err(err) => {
                        tracing::debug!("jetstream source {}: pull ended: {err}", self.name);
                        break;
                    }
                }
            }
            let outcomes =
                futures_util::future::join_all(in_hand.into_iter().map(|m| self.handle(m, &ctx)))
                    .await;
            // While the bus is full, pulling again would only nak more.
            if let Some(wait) = outcomes.into_iter().flatten().max() {
                if let Some(n) = warn.occurred() {
                    tracing::warn!(
                        "jetstream source {}: bus full; {n} batch(es) nak'd back to the upstream stream",
                        self.name
                    );
                }
                tokio::select! {
                    _ = ctx.bus.wait_for_space(wait) => {}
                    _ = ctx.stop.cancelled() => break,
                }
            }
        }
    }

    /// Publishes one message and settles it upstream; `Some(retry_after)`
    /// when the bus was full.
    async fn handle(
        &self,
        message: async_nats::jetstream::Message,
        ctx: &SourceContext,
    ) -> Option<Duration> {
        let count = |outcome| {
            ctx.metrics
                .source_event(&self.name.source, &self.name.event, outcome)
        };
        let body = match super::event_body(&message.payload, self.json_body) {
            Ok(body) => body,
            Err(err) => {
                count(SourceOutcome::Invalid);
                tracing::warn!("jetstream source {}: message terminated: {err}", self.name);
                settle(&self.name, message.ack_with(AckKind::Term).await);
                return None;
            }
        };
        let headers: BTreeMap<String, Vec<String>> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, values)| {
                (
                    k.to_string(),
                    values.iter().map(|v| v.as_str().to_string()).collect(),
                )
            })
            .collect();
        let mut data = serde_json::json!({
            "subject": message.subject.as_str(),
            "header": headers,
            "body": body,
        });
        if !self.metadata.is_empty() {
            data["metadata"] = serde_json::json!(self.metadata);
        }
        let event = Event::new(
            &self.name.source,
            "jetstream",
            &self.name.event,
            bytes::Bytes::from(data.to_string()),
        );
        match ctx.bus.publish(event.to_message()).await {
            Ok(_) => {
                count(SourceOutcome::Accepted);
                settle(&self.name, message.ack().await);
                None
            }
            Err(PublishError::Full { retry_after, .. }) => {
                count(SourceOutcome::BusFull);
                let delay =
                    retry_after.clamp(MIN_NAK_DELAY, (self.ack_wait / 2).max(MIN_NAK_DELAY));
                settle(
                    &self.name,
                    message.ack_with(AckKind::Nak(Some(delay))).await,
                );
                Some(delay)
            }
            Err(PublishError::TooLarge { size, max, .. }) => {
                count(SourceOutcome::TooLarge);
                tracing::warn!(
                    "jetstream source {}: message terminated: event of {size} bytes exceeds the bus max_msg_size {max}",
                    self.name
                );
                settle(&self.name, message.ack_with(AckKind::Term).await);
                None
            }
            Err(PublishError::Closed { .. } | PublishError::Unavailable { .. }) => {
                count(SourceOutcome::Unavailable);
                settle(&self.name, message.ack_with(AckKind::Nak(None)).await);
                None
            }
        }
    }
}

/// A lost ack/nak only means the server redelivers after `ackWaitTime`.
fn settle(name: &EventName, result: Result<(), async_nats::Error>) {
    if let Err(err) = result {
        tracing::debug!(
            "jetstream source {name}: could not settle a message (it will be redelivered): {err}"
        );
    }
}
