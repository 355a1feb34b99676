//! Sensors: pull events from the bus, match them to dependencies, run
//! triggers, and ack the bus only after the trigger outcome.
//!
//! Each trigger of each sensor runs as its own [`TriggerRunner`] with its own
//! durable bus consumer, so a slow or failing trigger never delays another
//! (fan-out isolation). A runner holds at most `max_in_flight` events at once
//! (its credit window): it fetches only as many events as it has free
//! credits, so a slow downstream stops the pulling, the bus fills, and the
//! sources push back.
//!
//! Guarantees:
//! - an event is acked only after its trigger succeeded, or was filtered out;
//! - a failed event is retried per `retryStrategy` (nak with backoff) and,
//!   once the steps are used up or the failure is permanent, terminated,
//!   counted as `failure` and logged once with its id;
//! - on shutdown the runner stops fetching and waits for its in-flight
//!   invocations (the caller bounds the wait).

pub mod filter;
mod retry;

pub use retry::RetryPolicy;

use crate::config::sensor::DependencyFilters;
use crate::event::Event;
use crate::telemetry::{Metrics, TriggerOutcome};
use crate::triggers::{Trigger, TriggerError};
use spillway_bus::{Consumer, Received};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long one fetch waits for events before checking for shutdown.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Pause after a bus error before fetching again.
const BUS_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// A dependency as the runner matches it: bus subject plus data filters.
#[derive(Debug, Clone)]
pub struct DependencyMatcher {
    pub name: String,
    pub subject: String,
    pub filters: Option<DependencyFilters>,
}

/// The live view of one runner, for metrics and `/api/v1/status`.
#[derive(Clone)]
pub struct TriggerHandle {
    pub sensor: String,
    pub trigger: String,
    pub consumer: Arc<dyn Consumer>,
    inflight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

impl TriggerHandle {
    /// Invocations running now.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The credit window size.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
}

/// Runs one trigger of one sensor.
pub struct TriggerRunner {
    inner: Arc<RunnerInner>,
    /// Credits: one permit per invocation allowed in flight.
    window: Arc<Semaphore>,
    /// Invocations running now (the permits held while fetching do not count).
    inflight: Arc<AtomicUsize>,
    max_in_flight: usize,
}

struct RunnerInner {
    sensor: String,
    trigger_name: String,
    dependencies: Vec<DependencyMatcher>,
    trigger: Trigger,
    retry: RetryPolicy,
    consumer: Arc<dyn Consumer>,
    metrics: Arc<Metrics>,
}

impl TriggerRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sensor: &str,
        trigger_name: &str,
        dependencies: Vec<DependencyMatcher>,
        trigger: Trigger,
        retry: RetryPolicy,
        consumer: Arc<dyn Consumer>,
        max_in_flight: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let max_in_flight = max_in_flight.max(1);
        TriggerRunner {
            inner: Arc::new(RunnerInner {
                sensor: sensor.to_string(),
                trigger_name: trigger_name.to_string(),
                dependencies,
                trigger,
                retry,
                consumer,
                metrics,
            }),
            window: Arc::new(Semaphore::new(max_in_flight)),
            inflight: Arc::new(AtomicUsize::new(0)),
            max_in_flight,
        }
    }

    pub fn handle(&self) -> TriggerHandle {
        TriggerHandle {
            sensor: self.inner.sensor.clone(),
            trigger: self.inner.trigger_name.clone(),
            consumer: Arc::clone(&self.inner.consumer),
            inflight: Arc::clone(&self.inflight),
            max_in_flight: self.max_in_flight,
        }
    }

    /// Pulls and processes events until `shutdown` is cancelled, then waits
    /// for the invocations in flight.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            // One credit first (waits while the window is full), then every
            // other free credit: the fetch never asks for more than the window allows.
            let first = tokio::select! {
                permit = Arc::clone(&self.window).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            while let Ok(p) = Arc::clone(&self.window).try_acquire_owned() {
                permits.push(p);
            }
            let batch = tokio::select! {
                batch = self.inner.consumer.fetch(permits.len(), FETCH_WAIT) => batch,
                _ = shutdown.cancelled() => break,
            };
            let messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(sensor = %self.inner.sensor, trigger = %self.inner.trigger_name, "bus fetch failed: {err}");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(BUS_ERROR_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            for (message, permit) in messages.into_iter().zip(permits.drain(..)) {
                let inner = Arc::clone(&self.inner);
                let inflight = Arc::clone(&self.inflight);
                inflight.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    inner.process(message).await;
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl RunnerInner {
    async fn process(&self, message: Received) {
        let delivered = tokio::time::Instant::now();
        let seq = message.seq;
        let event = match Event::from_received(&message) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, seq, "not a valid event, terminated: {err}");
                self.metrics.trigger_invocation(
                    &self.sensor,
                    &self.trigger_name,
                    TriggerOutcome::Failure,
                );
                self.settle(self.consumer.term(seq).await, seq);
                return;
            }
        };
        let Some(dependency) = self
            .dependencies
            .iter()
            .find(|d| d.subject == message.subject)
        else {
            // The consumer filter only lets our subjects through; nothing to do.
            self.settle(self.consumer.ack(seq).await, seq);
            return;
        };
        if dependency.filters.is_some()
            && !filter::matches(dependency.filters.as_ref(), &event.data_json())
        {
            self.settle(self.consumer.ack(seq).await, seq);
            return;
        }
        let age = SystemTime::now()
            .duration_since(message.published_at)
            .unwrap_or(Duration::ZERO);
        self.metrics.event_age(&self.sensor, age);
        let outcome = self.trigger.invoke(&dependency.name, &event).await;
        match outcome {
            Ok(()) => {
                self.metrics.trigger_invocation(
                    &self.sensor,
                    &self.trigger_name,
                    TriggerOutcome::Success,
                );
                self.settle(self.consumer.ack(seq).await, seq);
            }
            Err(err) => {
                let attempt = message.delivery_count;
                let retry_delay = match &err {
                    TriggerError::Retryable { retry_after, .. } => {
                        self.retry.delay_after(attempt, *retry_after)
                    }
                    TriggerError::Permanent { .. } => None,
                };
                match retry_delay {
                    Some(delay) => {
                        self.metrics.trigger_invocation(
                            &self.sensor,
                            &self.trigger_name,
                            TriggerOutcome::Retry,
                        );
                        tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempt, ?delay, "trigger failed, will retry: {err}");
                        self.settle(self.consumer.nak(seq, delay).await, seq);
                    }
                    None => {
                        self.metrics.trigger_invocation(
                            &self.sensor,
                            &self.trigger_name,
                            TriggerOutcome::Failure,
                        );
                        tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempts = attempt, "trigger failed, event terminated: {err}");
                        self.settle(self.consumer.term(seq).await, seq);
                    }
                }
            }
        }
        self.metrics
            .sensor_processing(&self.sensor, delivered.elapsed());
    }

    fn settle(&self, result: Result<(), spillway_bus::BusError>, seq: u64) {
        if let Err(err) = result {
            // The bus will redeliver after ack_wait: at least once still holds.
            tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, seq, "could not settle message: {err}");
        }
    }
}
