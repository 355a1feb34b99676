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
//! Rate limits (the sensor's `spec.rateLimit`, shared by its triggers, and
//! each trigger's own `rateLimit`) are waited for *before* an event is
//! handed to the trigger, while the runner is not fetching: a rate-limited
//! trigger pulls no faster than its limit, so the backlog stays in the bus.
//! Both tokens are taken at the instant of the invocation (a sensor token
//! that is refused gives up the trigger token and starts over), so neither
//! limit is ever exceeded; events held while waiting are kept alive with
//! `in_progress` so they are not redelivered meanwhile.
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
use spillway_flowctl::RateLimiter;
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

/// The flow-control settings of one trigger.
#[derive(Debug, Default)]
pub struct TriggerLimits {
    /// Credit window: most events in flight at once (at least 1).
    pub max_in_flight: usize,
    pub retry: RetryPolicy,
    /// The trigger's own `rateLimit`.
    pub rate: Option<RateLimiter>,
    /// The sensor's `spec.rateLimit`, shared by all of its triggers.
    pub sensor_rate: Option<Arc<RateLimiter>>,
    /// How long the bus waits for an ack before redelivering; events held
    /// by a rate-limit wait are refreshed well before it runs out.
    pub ack_wait: Duration,
}

/// Runs one trigger of one sensor.
pub struct TriggerRunner {
    inner: Arc<RunnerInner>,
    /// Credits: one permit per invocation allowed in flight.
    window: Arc<Semaphore>,
    /// Invocations running now (the permits held while fetching do not count).
    inflight: Arc<AtomicUsize>,
    max_in_flight: usize,
    /// Most events fetched at once: what the rate limits admit in about a
    /// second, so few events sit fetched-but-waiting.
    fetch_cap: usize,
    rate: Option<RateLimiter>,
    sensor_rate: Option<Arc<RateLimiter>>,
    /// Interval of `in_progress` refreshes for events held by a rate wait.
    keep_alive: Duration,
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
    pub fn new(
        sensor: &str,
        trigger_name: &str,
        dependencies: Vec<DependencyMatcher>,
        trigger: Trigger,
        consumer: Arc<dyn Consumer>,
        limits: TriggerLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let TriggerLimits {
            max_in_flight,
            retry,
            rate,
            sensor_rate,
            ack_wait,
        } = limits;
        let max_in_flight = max_in_flight.max(1);
        let fetch_cap = [rate.as_ref(), sensor_rate.as_deref()]
            .into_iter()
            .flatten()
            .map(admitted_per_second)
            .min()
            .unwrap_or(max_in_flight)
            .clamp(1, max_in_flight);
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
            fetch_cap,
            rate,
            sensor_rate,
            keep_alive: (ack_wait / 3).max(Duration::from_millis(100)),
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
            while permits.len() < self.fetch_cap {
                match Arc::clone(&self.window).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
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
            let mut held: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            for (message, permit) in messages.into_iter().zip(permits.drain(..)) {
                held.retain(|&seq| seq != message.seq);
                let Some(ready) = self.inner.prepare(message).await else {
                    continue;
                };
                if !self.wait_for_rate(&ready, &held, &shutdown).await {
                    // Shutting down: the unacked events are redelivered later.
                    break;
                }
                let inner = Arc::clone(&self.inner);
                let inflight = Arc::clone(&self.inflight);
                inflight.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(async move {
                    inner.invoke(ready).await;
                    inflight.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl TriggerRunner {
    /// Waits until both rate limits admit one invocation, refreshing the
    /// events this runner holds (`ready` and `held`) meanwhile. `false` when
    /// shutdown came first.
    async fn wait_for_rate(
        &self,
        ready: &Ready,
        held: &[u64],
        shutdown: &CancellationToken,
    ) -> bool {
        if self.rate.is_none() && self.sensor_rate.is_none() {
            return true;
        }
        let admitted = async {
            loop {
                if let Some(rate) = &self.rate {
                    rate.until_ready().await;
                }
                let Some(sensor_rate) = &self.sensor_rate else {
                    return;
                };
                match sensor_rate.check() {
                    Ok(()) => return,
                    // The trigger token is given up: taking both at one
                    // instant is what keeps both limits exact.
                    Err(limited) => tokio::time::sleep(limited.wait).await,
                }
            }
        };
        tokio::pin!(admitted);
        let mut keep_alive = tokio::time::interval_at(
            tokio::time::Instant::now() + self.keep_alive,
            self.keep_alive,
        );
        loop {
            tokio::select! {
                () = &mut admitted => return true,
                _ = keep_alive.tick() => {
                    for &seq in std::iter::once(&ready.message.seq).chain(held) {
                        let result = self.inner.consumer.in_progress(seq).await;
                        self.inner.settle(result, seq);
                    }
                }
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

/// Invocations a limiter admits in about one second (at least its burst),
/// used to size fetches.
fn admitted_per_second(limiter: &RateLimiter) -> usize {
    let limit = limiter.limit();
    let per_second = limit.per_second_f64().floor() as usize;
    per_second.max(limit.burst() as usize).max(1)
}

/// An event that passed its dependency's filters, ready for the trigger.
struct Ready {
    message: Received,
    event: Event,
    dependency: String,
    delivered: tokio::time::Instant,
}

impl RunnerInner {
    /// Decodes and filters one event. Events that will not run the trigger
    /// (invalid, not ours, filtered out) are settled here and `None` is
    /// returned.
    async fn prepare(&self, message: Received) -> Option<Ready> {
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
                return None;
            }
        };
        let Some(dependency) = self
            .dependencies
            .iter()
            .find(|d| d.subject == message.subject)
        else {
            // The consumer filter only lets our subjects through; nothing to do.
            self.settle(self.consumer.ack(seq).await, seq);
            return None;
        };
        if dependency.filters.is_some()
            && !filter::matches(dependency.filters.as_ref(), &event.data_json())
        {
            self.settle(self.consumer.ack(seq).await, seq);
            return None;
        }
        Some(Ready {
            dependency: dependency.name.clone(),
            message,
            event,
            delivered,
        })
    }

    /// Runs the trigger for one event and settles it with the bus.
    async fn invoke(&self, ready: Ready) {
        let Ready {
            message,
            event,
            dependency,
            delivered,
        } = ready;
        let seq = message.seq;
        let age = SystemTime::now()
            .duration_since(message.published_at)
            .unwrap_or(Duration::ZERO);
        self.metrics.event_age(&self.sensor, age);
        let outcome = self.trigger.invoke(&dependency, &event).await;
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

#[cfg(test)]
mod tests;
