//! The `nats` event source (Argo's `NATSEventsSource`): a core NATS
//! subscription, each message published to the bus.
//!
//! Core NATS has no acknowledgement, so the source has no way to tell the
//! producer to slow down. While the bus is full, a message is dropped at
//! once (not waited on, which would only grow the client's buffer): counted
//! as `source_events_total{outcome="bus_full"}` and logged as a
//! rate-limited warning (at most one line per 10 s, with the count). This is
//! the seed's "drop silently" case for optional events — except that
//! spillway counts and says it. Use `jetstream` for events that must not be
//! lost.
//!
//! Bounded: the client buffers at most [`SUBSCRIPTION_CAPACITY`] messages
//! for the subscription; when spillway falls further behind, the NATS
//! client drops messages and reports a slow consumer, which is logged
//! (rate-limited) as well.

use super::{EventName, LogThrottle, Running, SourceContext, SourceError};
use crate::config::eventsource::nats::NatsEvent;
use crate::event::Event;
use crate::sensor::RetryPolicy;
use crate::telemetry::SourceOutcome;
use futures_util::StreamExt;
use spillway_bus::PublishError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Messages the NATS client holds for the subscription before it drops.
pub const SUBSCRIPTION_CAPACITY: usize = 8192;
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The runnable form of one `nats` event.
#[derive(Debug, Clone)]
pub struct NatsSource {
    pub name: EventName,
    pub config: NatsEvent,
    pub json_body: bool,
    pub metadata: BTreeMap<String, String>,
}

impl NatsSource {
    pub fn new(name: EventName, config: &NatsEvent) -> Self {
        NatsSource {
            name,
            json_body: config.json_body.unwrap_or(false),
            metadata: config.metadata.clone().unwrap_or_default(),
            config: config.clone(),
        }
    }

    /// Connects (retrying per `connectionBackoff`) and subscribes.
    pub async fn start(self, ctx: SourceContext) -> Result<Running, SourceError> {
        let url = self.config.url.value.clone();
        let backoff = self
            .config
            .connection_backoff
            .as_ref()
            .map_or_else(RetryPolicy::default, |b| RetryPolicy::from(&b.value));
        let slow = Arc::new(LogThrottle::new(WARN_EVERY));
        let mut attempt = 1;
        let client = loop {
            let slow = Arc::clone(&slow);
            let name = self.name.clone();
            let connected = async_nats::ConnectOptions::new()
                .name("spillway-nats-source")
                .subscription_capacity(SUBSCRIPTION_CAPACITY)
                .connection_timeout(Duration::from_secs(5))
                .event_callback(move |event| {
                    let slow = Arc::clone(&slow);
                    let name = name.clone();
                    async move {
                        if let async_nats::Event::SlowConsumer(_) = event {
                            if let Some(n) = slow.occurred() {
                                tracing::warn!("nats source {name}: the NATS client dropped messages: spillway is a slow consumer ({n} report(s))");
                            }
                        }
                    }
                })
                .connect(url.as_str())
                .await;
            match connected {
                Ok(client) => break client,
                Err(err) => match backoff.delay_after(attempt, None) {
                    Some(delay) => {
                        tracing::warn!("nats source {}: attempt {attempt} failed ({err}); retrying in {delay:?}", self.name);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    None => {
                        return Err(SourceError::Connect {
                            name: self.name.to_string(),
                            url,
                            reason: err.to_string(),
                        })
                    }
                },
            }
        };
        let subject = self.config.subject.value.clone();
        let mut subscription =
            client
                .subscribe(subject.clone())
                .await
                .map_err(|err| SourceError::Setup {
                    name: self.name.to_string(),
                    reason: format!("cannot subscribe to {subject:?}: {err}"),
                })?;
        // The subscription is registered once the server has seen it.
        client.flush().await.map_err(|err| SourceError::Setup {
            name: self.name.to_string(),
            reason: format!("cannot subscribe to {subject:?}: {err}"),
        })?;
        tracing::info!(
            "nats source {} subscribed to {subject:?} at {url}",
            self.name
        );
        Ok(tokio::spawn(async move {
            let dropped = LogThrottle::new(WARN_EVERY);
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = ctx.stop.cancelled() => break,
                };
                let Some(message) = next else { break };
                self.handle(message, &ctx, &dropped).await;
            }
            let _ = subscription.unsubscribe().await;
        }))
    }

    async fn handle(
        &self,
        message: async_nats::Message,
        ctx: &SourceContext,
        dropped: &LogThrottle,
    ) {
        let count = |outcome| {
            ctx.metrics
                .source_event(&self.name.source, &self.name.event, outcome)
        };
        let warn_drop = |why: &str| {
            if let Some(n) = dropped.occurred() {
                tracing::warn!("nats source {}: {n} message(s) dropped: {why}", self.name);
            }
        };
        let body = match super::event_body(&message.payload, self.json_body) {
            Ok(body) => body,
            Err(err) => {
                count(SourceOutcome::Invalid);
                warn_drop(&err.to_string());
                return;
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
            "nats",
            &self.name.event,
            bytes::Bytes::from(data.to_string()),
        );
        match ctx.bus.publish(event.to_message()).await {
            Ok(_) => count(SourceOutcome::Accepted),
            Err(PublishError::Full { limit, .. }) => {
                count(SourceOutcome::BusFull);
                warn_drop(&format!(
                    "the bus is full ({limit}); core NATS cannot be asked to resend"
                ));
            }
            Err(PublishError::TooLarge { size, max, .. }) => {
                count(SourceOutcome::TooLarge);
                warn_drop(&format!(
                    "event of {size} bytes exceeds the bus max_msg_size {max}"
                ));
            }
            Err(err @ (PublishError::Closed { .. } | PublishError::Unavailable { .. })) => {
                count(SourceOutcome::Unavailable);
                warn_drop(&err.to_string());
            }
        }
    }
}
