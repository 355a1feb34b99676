//! One trigger of one sensor: pull events, apply the trigger's limits, run
//! it, settle the event with the bus.
//!
//! Before an event is handed to the trigger, in this order:
//! 1. **Concurrency slot** (`flowControl.maxInFlight`, adapted by
//!    `flowControl.concurrency`: AIMD by default for http and postgres
//!    triggers). No slot, no fetch: the runner fetches at most as many
//!    events as it has slots, so a slow downstream stops the pulling, the bus
//!    fills, and the sources push back. A downstream `Retry-After` (429/503)
//!    pauses every send of the trigger until it has elapsed.
//! 2. **Rate limits**: the sensor's `spec.rateLimit` (shared by its triggers)
//!    and the trigger's own `rateLimit`. Both tokens are taken at the instant
//!    of the invocation (a refused sensor token gives up the trigger token and
//!    starts over), so neither limit is ever exceeded.
//! 3. **Slow start** (`flowControl.slowStart`, seed GradualDrain): after
//!    start-up and after every downstream pushback, starts are paced from the
//!    initial rate up to `maxRate`, so a backlog is not released at once.
//!
//! 4. **Workflow semaphore** (argoWorkflow triggers whose WorkflowTemplate
//!    has `synchronization.semaphore`): the workflow waits FIFO as Pending
//!    until the ConfigMap limit lets it run. Pending is bounded per trigger
//!    by `flowControl.maxPending`: the runner fetches an event only with a
//!    pending ticket (held from the fetch until the workflow runs), so when
//!    `maxPending` workflows wait, the trigger stops pulling and the
//!    backpressure travels on to the bus and the sources.
//!
//! With `flowControl.autoscale`, step 1 also waits for a free *worker*: the
//! worker count follows the consumer lag (see [`super::workers`]) and caps
//! the invocations in flight below the concurrency limit.
//! A trigger of a multi-dependency sensor runs the loop of
//! `runner/correlated.rs`: events wait (bounded) until the trigger's
//! `conditions` are met, then the trigger runs once for them.
//! A sensor with `flowControl.priority` or `flowControl.shedding` runs the
//! loop of `runner/prioritized.rs` instead: it keeps a bounded look-ahead window of
//! fetched events, sheds low priorities while the backlog is deep, and gives
//! each free slot to the most important event of the window. Everything
//! below (limits, keep-alive, ack after the outcome) holds there too.
//!
//! Events fetched but waiting on 2, 3 or 4, paused by a `Retry-After`, or
//! whose trigger is still running, are kept alive with `in_progress` so the
//! bus does not redeliver them meanwhile.
//!
//! Guarantees:
//! - an event is acked only after its trigger succeeded, its DLQ trigger
//!   succeeded, or it was filtered out (Argo `atLeastOnce: true`, spillway's
//!   default). Only an explicit `atLeastOnce: false` acks before the trigger
//!   runs; its retries then happen in memory (same steps and backoff) and
//!   the event is lost if the process dies first, exactly as in Argo;
//! - a failure is retried per `retryStrategy` (nak with backoff; the attempt
//!   is the bus delivery count, so retries survive restarts). A `Retry-After`
//!   pause is not a retry step: the event is held and sent again when the
//!   pause ends;
//! - once the steps are used up on a retryable failure, the event is
//!   *rejected* and `flowControl.onReject` decides (see [`super::reject`]):
//!   back to the bus with a delay (`error`, the default), dropped (`drop`)
//!   or stored for later (`backlog`);
//! - a permanent failure, or a rejection under `error`, goes to the
//!   `dlqTrigger` (counted `dlq`; if the DLQ trigger fails the event is
//!   redelivered and goes straight to the DLQ again); a permanent failure
//!   without one is terminated, counted `failure` and logged with its id;
//! - a replayed event (bus header `spillway-replay-to`) runs only the
//!   trigger it names; every other trigger acks it untouched;
//! - on shutdown the runner stops fetching and waits for its in-flight
//!   invocations (the caller bounds the wait); events it had not finished are
//!   left unacked, so the bus redelivers them.

use super::workers::Workers;
mod correlated;
mod filtering;
use filtering::{Verdict, EVALUATION_BUSY_DELAY};
mod prioritized;

pub use correlated::{Correlation, WallClock};

pub use prioritized::{
    look_ahead, PriorityDispatch, MAX_LOOK_AHEAD, MIN_LOOK_AHEAD, PRIORITY_AGING,
};

use super::{DependencyMatcher, RejectPolicy, RetryPolicy};
use crate::event::Event;
use crate::telemetry::{LogThrottle, Metrics, TriggerOutcome};
use crate::triggers::workflow::semaphores::{Running, WorkflowGate};
use crate::triggers::{Trigger, TriggerError};
use spillway_bus::{Consumer, Received};
use spillway_flowctl::{
    AcquireError, AdaptiveConcurrency, Busy, GradualDrain, LagAutoscaler, Outcome, Permit,
    RateLimiter, Semaphore, Token,
};
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one fetch waits for events before checking for shutdown.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Pause after a bus error before fetching again.
const BUS_ERROR_BACKOFF: Duration = Duration::from_secs(1);
/// At most one warning per this interval about rejected events.
const REJECT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The flow-control settings of one trigger.
#[derive(Debug)]
pub struct TriggerLimits {
    /// Most events in flight at once (the cap of the adaptive limit).
    pub max_in_flight: usize,
    /// The in-flight limit, moving between 1 and `max_in_flight`.
    pub concurrency: AdaptiveConcurrency,
    pub retry: RetryPolicy,
    /// The trigger's own `rateLimit`.
    pub rate: Option<RateLimiter>,
    /// The sensor's `spec.rateLimit`, shared by all of its triggers.
    pub sensor_rate: Option<Arc<RateLimiter>>,
    /// `flowControl.slowStart`.
    pub slow_start: Option<GradualDrain>,
    /// How long the bus waits for an ack before redelivering; held events
    /// are refreshed well before it runs out.
    pub ack_wait: Duration,
    /// Argo `atLeastOnce` (spillway default `true`). `false` acks the bus
    /// before the trigger runs and retries in memory: a crash mid-retry
    /// loses the event, as in Argo.
    pub at_least_once: bool,
    /// `flowControl.maxPending`: most events of this trigger fetched and
    /// waiting for their workflow semaphore (used only by argoWorkflow
    /// triggers whose template has a semaphore).
    pub max_pending: usize,
    /// `flowControl.onReject`: what happens to an event whose retries are
    /// used up on a retryable failure.
    pub on_reject: RejectPolicy,
    /// `flowControl.autoscale`: the worker count follows the consumer lag
    /// (see [`super::workers`]).
    pub autoscale: Option<LagAutoscaler>,
    /// Sensor `flowControl.priority` / `shedding`: shed by priority and
    /// dispatch higher priorities first (`runner/prioritized.rs`); `None` keeps bus
    /// order.
    pub priority: Option<PriorityDispatch>,
}

/// The live view of one runner, for metrics and `/api/v1/status`.
#[derive(Clone)]
pub struct TriggerHandle {
    pub sensor: String,
    pub trigger: String,
    pub consumer: Arc<dyn Consumer>,
    concurrency: AdaptiveConcurrency,
    max_in_flight: usize,
    pending: Option<PendingTickets>,
    workers: Option<Arc<Workers>>,
}

/// A trigger's share of its workflow semaphore's pending queue.
#[derive(Clone)]
struct PendingTickets {
    gate: Arc<WorkflowGate>,
    tickets: Semaphore,
}

impl TriggerHandle {
    /// The WorkflowTemplate this trigger runs, if it waits on a semaphore.
    pub fn workflow_template(&self) -> Option<&str> {
        self.pending.as_ref().map(|p| p.gate.template())
    }

    /// Events fetched and not yet running their workflow (at most
    /// [`TriggerHandle::max_pending`]).
    pub fn pending(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.tickets.running())
    }

    /// `flowControl.maxPending`, for triggers that wait on a semaphore.
    pub fn max_pending(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.tickets.limit())
    }

    /// Events holding a concurrency slot now (being fetched or invoked).
    pub fn inflight(&self) -> usize {
        self.concurrency.in_flight()
    }

    /// The current (adaptive) concurrency limit.
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.limit()
    }

    /// The configured cap of the concurrency limit.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The autoscaled worker count, for triggers with `flowControl.autoscale`.
    pub fn workers(&self) -> Option<usize> {
        self.workers.as_ref().map(|w| w.count())
    }
}

/// Runs one trigger of one sensor.
pub struct TriggerRunner {
    inner: Arc<RunnerInner>,
    max_in_flight: usize,
    /// Most events fetched at once: what the rate limits admit in about a
    /// second, so few events sit fetched-but-waiting.
    fetch_cap: usize,
    rate: Option<RateLimiter>,
    sensor_rate: Option<Arc<RateLimiter>>,
    /// Started with the runner; drives `inner.workers`.
    autoscaler: Option<LagAutoscaler>,
    /// Set when the sensor dispatches by priority.
    priority: Option<prioritized::Prioritized>,
    /// Set for a trigger of a multi-dependency sensor (`runner/correlated.rs`).
    correlation: Option<Correlation>,
}

struct RunnerInner {
    sensor: String,
    trigger_name: String,
    dependencies: Vec<DependencyMatcher>,
    trigger: Trigger,
    dlq: Option<Trigger>,
    retry: RetryPolicy,
    consumer: Arc<dyn Consumer>,
    metrics: Arc<Metrics>,
    concurrency: AdaptiveConcurrency,
    /// Signalled whenever a slot is given back.
    slot_freed: Notify,
    /// Held events waiting for a slot again (after a `Retry-After` pause or
    /// an in-memory retry). They go before new fetches: otherwise the fetch
    /// loop, which holds idle slots while it waits for events, could starve
    /// them.
    retriers: AtomicUsize,
    /// Signalled when `retriers` drops to zero.
    retriers_done: Notify,
    slow_start: Option<GradualDrain>,
    /// Interval of `in_progress` refreshes for held events.
    keep_alive: Duration,
    at_least_once: bool,
    /// Pending tickets, when the trigger waits on a workflow semaphore.
    pending: Option<PendingTickets>,
    on_reject: RejectPolicy,
    /// `<sensor>/<trigger>`: the replay header value addressed to us.
    replay_key: String,
    reject_log: LogThrottle,
    /// The autoscaled worker count: invocations beyond it do not start.
    workers: Option<Arc<Workers>>,
}

/// A concurrency slot; giving it back (complete or drop) wakes a waiter.
struct Slot {
    token: Option<Token>,
    inner: Arc<RunnerInner>,
}

impl Slot {
    fn complete(mut self, outcome: Outcome) {
        if let Some(token) = self.token.take() {
            token.complete(outcome);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A token dropped without an outcome frees the slot without a sample.
        drop(self.token.take());
        self.inner.slot_freed.notify_one();
    }
}

impl TriggerRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        sensor: &str,
        trigger_name: &str,
        dependencies: Vec<DependencyMatcher>,
        trigger: Trigger,
        dlq: Option<Trigger>,
        consumer: Arc<dyn Consumer>,
        limits: TriggerLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let TriggerLimits {
            max_in_flight,
            concurrency,
            retry,
            rate,
            sensor_rate,
            slow_start,
            ack_wait,
            at_least_once,
            max_pending,
            on_reject,
            autoscale,
            priority,
        } = limits;
        let workers = autoscale
            .as_ref()
            .map(|scaler| Arc::new(Workers::new(scaler.current() as usize)));
        let max_in_flight = max_in_flight.max(1);
        let fetch_cap = [rate.as_ref(), sensor_rate.as_deref()]
            .into_iter()
            .flatten()
            .map(admitted_per_second)
            .min()
            .unwrap_or(max_in_flight)
            .clamp(1, max_in_flight);
        // Only the fetch loop waits for a ticket, so one waiter is enough.
        let pending = trigger
            .workflow_gate()
            .filter(|gate| gate.has_semaphore())
            .map(|gate| PendingTickets {
                gate: Arc::clone(gate),
                tickets: Semaphore::new(max_pending.max(1), 1),
            });
        TriggerRunner {
            inner: Arc::new(RunnerInner {
                sensor: sensor.to_string(),
                trigger_name: trigger_name.to_string(),
                dependencies,
                trigger,
                dlq,
                retry,
                consumer,
                metrics,
                concurrency,
                slot_freed: Notify::new(),
                retriers: AtomicUsize::new(0),
                retriers_done: Notify::new(),
                slow_start,
                keep_alive: (ack_wait / 3).max(Duration::from_millis(100)),
                at_least_once,
                pending,
                on_reject,
                replay_key: crate::backlog::target(sensor, trigger_name),
                reject_log: LogThrottle::new(REJECT_LOG_INTERVAL),
                workers,
            }),
            max_in_flight,
            fetch_cap,
            rate,
            sensor_rate,
            autoscaler: autoscale,
            priority: priority.map(prioritized::Prioritized::new),
            correlation: None,
        }
    }

    pub fn handle(&self) -> TriggerHandle {
        TriggerHandle {
            sensor: self.inner.sensor.clone(),
            trigger: self.inner.trigger_name.clone(),
            consumer: Arc::clone(&self.inner.consumer),
            concurrency: self.inner.concurrency.clone(),
            max_in_flight: self.max_in_flight,
            pending: self.inner.pending.clone(),
            workers: self.inner.workers.clone(),
        }
    }

    /// Pulls and processes events until `shutdown` is cancelled, then waits
    /// for the invocations in flight.
    pub async fn run(mut self, shutdown: CancellationToken) {
        // Stops with the runner, whichever loop it runs.
        let _scaling = self
            .autoscaler
            .take()
            .zip(self.inner.workers.clone())
            .map(|(scaler, workers)| {
                tokio::spawn(super::workers::follow_lag(
                    scaler,
                    Arc::clone(&self.inner.consumer),
                    workers,
                    self.inner.sensor.clone(),
                    self.inner.trigger_name.clone(),
                    shutdown.clone(),
                ))
            })
            .map(tokio_util::task::AbortOnDropHandle::new);
        if let Some(prioritized) = self.priority.take() {
            return self.run_prioritized(prioritized, shutdown).await;
        }
        if let Some(correlation) = self.correlation.take() {
            return self.run_correlated(correlation, shutdown).await;
        }
        let mut tasks = JoinSet::new();
        loop {
            while tasks.try_join_next().is_some() {}
            // One slot first (waits while at the limit or paused), then every
            // other free slot: the fetch never asks for more than the limit allows.
            let Some(first) = self.inner.acquire_slot(&shutdown, &[]).await else {
                break;
            };
            let mut slots = vec![first];
            while slots.len() < self.fetch_cap {
                match self.inner.try_acquire_slot() {
                    Some(slot) => slots.push(slot),
                    None => break,
                }
            }
            // No pending ticket, no fetch: `maxPending` workflows are waiting.
            if !self.inner.fit_to_tickets(&mut slots, &shutdown).await {
                break;
            }
            let batch = tokio::select! {
                batch = self.inner.consumer.fetch(slots.len(), FETCH_WAIT) => batch,
                _ = shutdown.cancelled() => break,
            };
            let messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(sensor = %self.inner.sensor, trigger = %self.inner.trigger_name, "bus fetch failed: {err}");
                    drop(slots);
                    tokio::select! {
                        _ = tokio::time::sleep(BUS_ERROR_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            let mut tickets = self.inner.tickets_for(messages.len());
            let mut held: VecDeque<u64> = messages.iter().map(|m| m.seq).collect();
            for (message, slot) in messages.into_iter().zip(slots.drain(..)) {
                let ticket = tickets.pop();
                // Filters and transforms may take up to the evaluation
                // deadline per event: the batch stays alive meanwhile.
                let prepared = self
                    .inner
                    .keep_alive_during(held.make_contiguous(), self.inner.prepare(message))
                    .await;
                let Some(mut ready) = prepared else {
                    held.pop_front();
                    continue;
                };
                // `held` still starts with this event's own seq.
                let admitted = self
                    .inner
                    .keep_alive_while(held.make_contiguous(), &shutdown, self.admit())
                    .await;
                held.pop_front();
                ready.ticket = ticket;
                if admitted.is_none() {
                    // Shutting down: the unacked events are redelivered later.
                    break;
                }
                let inner = Arc::clone(&self.inner);
                let shutdown = shutdown.clone();
                tasks.spawn(async move { inner.invoke(ready, slot, shutdown).await });
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Waits until the rate limits and the slow start admit one invocation.
    async fn admit(&self) {
        loop {
            if let Some(rate) = &self.rate {
                rate.until_ready().await;
            }
            if let Some(sensor_rate) = &self.sensor_rate {
                if let Err(limited) = sensor_rate.check() {
                    // The trigger token is given up: taking both at one
                    // instant is what keeps both limits exact.
                    tokio::time::sleep(limited.wait).await;
                    continue;
                }
            }
            break;
        }
        if let Some(drain) = &self.inner.slow_start {
            // Once the ramp has reached its end, the other limits govern.
            if !drain.at_full_rate() {
                drain.until_ready().await;
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
    delivered: Instant,
    /// A place in the trigger's pending queue, until the workflow runs.
    ticket: Option<Permit>,
}

impl RunnerInner {
    /// A slot for fetching, if one is free and no held event is waiting.
    fn try_acquire_slot(self: &Arc<Self>) -> Option<Slot> {
        if self.retriers.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.concurrency
            .try_acquire()
            .ok()
            .filter(|token| self.workers_admit(token))
            .map(|token| Slot {
                token: Some(token),
                inner: Arc::clone(self),
            })
    }

    /// Gives `slot` back with what the invocation said about the downstream
    /// (a latency sample for adaptive concurrency on success; on pushback a
    /// drop sample, and the slow start starts over), records the
    /// invocation's duration, and returns the downstream's `Retry-After`, if
    /// it sent one.
    fn release_slot(
        &self,
        slot: Slot,
        result: &Result<(), TriggerError>,
        rtt: Duration,
    ) -> Option<Duration> {
        self.metrics
            .trigger_duration(&self.sensor, &self.trigger_name, rtt);
        match result {
            Ok(()) => {
                slot.complete(Outcome::Success { rtt });
                None
            }
            Err(TriggerError::Retryable {
                pushback: Some(reason),
                retry_after,
                ..
            }) => {
                slot.complete(Outcome::Dropped {
                    reason: *reason,
                    retry_after: *retry_after,
                });
                if let Some(drain) = &self.slow_start {
                    drain.reset();
                }
                *retry_after
            }
            Err(_) => {
                drop(slot);
                None
            }
        }
    }

    /// Whether the worker count (if autoscaled) lets `token`'s invocation
    /// start; a refused token is dropped, which frees its place at once.
    fn workers_admit(&self, token: &Token) -> bool {
        self.workers
            .as_ref()
            .is_none_or(|w| w.admits(token.in_flight_at_acquire()))
    }

    /// Waits for a slot to fetch (or dispatch) with: the limit has room, no
    /// `Retry-After` pause is running, and no held event is waiting; the
    /// fetched events `held` meanwhile are kept alive. `None` on shutdown.
    async fn acquire_slot(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        held: &[u64],
    ) -> Option<Slot> {
        let wait = async {
            loop {
                let retriers_done = self.retriers_done.notified();
                if self.retriers.load(Ordering::Acquire) > 0 {
                    retriers_done.await;
                    continue;
                }
                match self.wait_for_slot().await {
                    Ok(slot) => return slot,
                    // Woken by a freed slot a held event should have had.
                    Err(()) => self.slot_freed.notify_one(),
                }
            }
        };
        self.keep_alive_while(held, shutdown, wait).await
    }

    /// Waits for a slot for an event this runner already holds (`held`, kept
    /// alive meanwhile); such events go before new fetches. `None` on
    /// shutdown.
    async fn reacquire_slot(
        self: &Arc<Self>,
        shutdown: &CancellationToken,
        held: &[u64],
    ) -> Option<Slot> {
        struct Waiting<'a>(&'a RunnerInner);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.0.retriers.fetch_sub(1, Ordering::AcqRel) == 1 {
                    self.0.retriers_done.notify_waiters();
                }
            }
        }
        self.retriers.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(self);
        let wait = async {
            loop {
                if let Ok(slot) = self.wait_for_slot().await {
                    return slot;
                }
            }
        };
        self.keep_alive_while(held, shutdown, wait).await
    }

    /// One slot once the limit has room and no pause runs. `Err` when the
    /// fetch loop was woken while held events are waiting (it must step back).
    async fn wait_for_slot(self: &Arc<Self>) -> Result<Slot, ()> {
        loop {
            // Registered before trying, so a slot freed in between is not missed.
            let freed = self.slot_freed.notified();
            let raised = self.workers.as_ref().map(|w| w.raised());
            match self.concurrency.try_acquire() {
                Ok(token) if self.workers_admit(&token) => {
                    return Ok(Slot {
                        token: Some(token),
                        inner: Arc::clone(self),
                    })
                }
                // All workers busy: wait for one to finish or for more workers.
                Ok(refused) => {
                    drop(refused);
                    match raised {
                        Some(raised) => {
                            tokio::select! {
                                _ = freed => {}
                                _ = raised => {}
                            }
                        }
                        None => freed.await,
                    }
                }
                Err(Busy::AtLimit { .. }) => freed.await,
                Err(Busy::Paused { wait }) => tokio::time::sleep(wait).await,
            }
            if self.retriers.load(Ordering::Acquire) > 0 {
                return Err(());
            }
        }
    }

    /// Runs `work`, sending `in_progress` for the `held` events every
    /// `keep_alive` meanwhile. `None` when shutdown came first.
    async fn keep_alive_while<T>(
        &self,
        held: &[u64],
        shutdown: &CancellationToken,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::select! {
            done = self.keep_alive_during(held, work) => Some(done),
            _ = shutdown.cancelled() => None,
        }
    }

    /// Runs `work` to its end, sending `in_progress` for the `held` events
    /// every `keep_alive` meanwhile.
    async fn keep_alive_during<T>(&self, held: &[u64], work: impl Future<Output = T>) -> T {
        self.keep_alive_during_with(|| held.to_vec(), work).await
    }

    /// [`Self::keep_alive_during`] for a held set that is costly to list
    /// (a batch plus a window or queues): listed only when a keep-alive is
    /// due, not for every event that might need one.
    async fn keep_alive_during_with<T>(
        &self,
        held: impl Fn() -> Vec<u64>,
        work: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(work);
        let mut keep_alive =
            tokio::time::interval_at(Instant::now() + self.keep_alive, self.keep_alive);
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = keep_alive.tick() => {
                    for seq in held() {
                        let result = self.consumer.in_progress(seq).await;
                        self.settle(result, seq);
                    }
                }
            }
        }
    }

    /// Waits until the trigger has a free pending ticket, then gives back
    /// the slots beyond the free tickets, so the fetch asks for no more
    /// events than may wait. The tickets themselves are taken after the
    /// fetch ([`RunnerInner::tickets_for`]): an idle fetch holds none.
    /// `false` on shutdown.
    async fn fit_to_tickets(&self, slots: &mut Vec<Slot>, shutdown: &CancellationToken) -> bool {
        let Some(pending) = &self.pending else {
            return true;
        };
        loop {
            let acquired = tokio::select! {
                acquired = pending.tickets.acquire() => acquired,
                _ = shutdown.cancelled() => return false,
            };
            match acquired {
                // Only this loop takes tickets, so the free ones can only
                // grow until the fetch returns.
                Ok(ticket) => {
                    drop(ticket);
                    break;
                }
                // The fetch loop is the only waiter and nothing closes the
                // tickets, so this cannot happen; wait rather than fetch
                // without a ticket.
                Err(err) => {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, "pending tickets: {err}");
                    tokio::time::sleep(BUS_ERROR_BACKOFF).await;
                }
            }
        }
        let free = pending
            .tickets
            .limit()
            .saturating_sub(pending.tickets.running());
        slots.truncate(free.max(1));
        true
    }

    /// One pending ticket per fetched event (none without a workflow
    /// semaphore). [`RunnerInner::fit_to_tickets`] made sure they are free.
    fn tickets_for(&self, count: usize) -> Vec<Permit> {
        let Some(pending) = &self.pending else {
            return Vec::new();
        };
        (0..count)
            .filter_map(|_| pending.tickets.try_acquire().ok())
            .collect()
    }

    /// Waits as Pending for the workflow's semaphore (keeping the event
    /// alive), then holds its slot. `None` when shutdown came first (the
    /// event stays unacked and is redelivered) or the semaphore's queue
    /// refused it (the event is put back on the bus for later).
    async fn wait_for_workflow(
        &self,
        gate: &WorkflowGate,
        seq: u64,
        shutdown: &CancellationToken,
    ) -> Option<Running> {
        match self
            .keep_alive_while(&[seq], shutdown, gate.acquire())
            .await?
        {
            Ok(running) => Some(running),
            Err(err @ (AcquireError::PendingFull { .. } | AcquireError::Closed)) => {
                // Each trigger's tickets keep the shared queue from filling;
                // should it happen anyway, the bus keeps the event.
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, template = gate.template(), seq, "workflow semaphore refused the workflow ({err}); event put back on the bus");
                self.count(TriggerOutcome::Retry);
                let result = self.consumer.nak(seq, BUS_ERROR_BACKOFF).await;
                self.settle(result, seq);
                None
            }
        }
    }

    /// Decodes and filters one event. Events that will not run the trigger
    /// (invalid, not ours, filtered out) are settled here and `None` is
    /// returned.
    async fn prepare(&self, message: Received) -> Option<Ready> {
        let delivered = Instant::now();
        let seq = message.seq;
        let mut event = self.decode(&message).await?;
        let Some(dependency) = self
            .dependencies
            .iter()
            .find(|d| d.subject == message.subject)
        else {
            // The consumer filter only lets our subjects through; nothing to do.
            self.settle(self.consumer.ack(seq).await, seq);
            return None;
        };
        if let Some(filter) = &dependency.filters {
            match self.judge(filter, &mut event, seq).await {
                Verdict::Pass => {}
                Verdict::Reject => {
                    self.settle(self.consumer.ack(seq).await, seq);
                    return None;
                }
                Verdict::Busy => {
                    self.put_back(seq, EVALUATION_BUSY_DELAY).await;
                    return None;
                }
            }
        }
        Some(Ready {
            dependency: dependency.name.clone(),
            message,
            event,
            delivered,
            ticket: None,
        })
    }

    /// The event `message` carries, if this trigger should look at it: a
    /// replay addressed to another trigger is acked, and a message that is
    /// not a valid event is terminated and counted as a failure.
    async fn decode(&self, message: &Received) -> Option<Event> {
        let seq = message.seq;
        if message
            .header(crate::backlog::REPLAY_TO_HEADER)
            .is_some_and(|to| to != self.replay_key)
        {
            // Replayed for another trigger: this one already handled it.
            self.settle(self.consumer.ack(seq).await, seq);
            return None;
        }
        match Event::from_received(message) {
            Ok(event) => Some(event),
            Err(err) => {
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, seq, "not a valid event, terminated: {err}");
                self.count(TriggerOutcome::Failure);
                self.settle(self.consumer.term(seq).await, seq);
                None
            }
        }
    }

    /// Runs the trigger for one event (holding `slot`) and settles it.
    async fn invoke(self: Arc<Self>, ready: Ready, mut slot: Slot, shutdown: CancellationToken) {
        let Ready {
            message,
            event,
            dependency,
            delivered,
            ticket,
        } = ready;
        let seq = message.seq;
        let attempt = message.delivery_count;
        let age = SystemTime::now()
            .duration_since(message.published_at)
            .unwrap_or(Duration::ZERO);
        self.metrics.event_age(&self.sensor, age);
        if self.retries_used_up(attempt) {
            drop(slot);
            self.dead_letter(seq, &dependency, &event, "retries used up")
                .await;
            return;
        }
        // Held until the trigger is done: the workflow's semaphore slot.
        let _running = match self.trigger.workflow_gate() {
            Some(gate) => match self.wait_for_workflow(gate, seq, &shutdown).await {
                Some(running) => Some(running),
                None => return,
            },
            None => None,
        };
        drop(ticket);
        if !self.at_least_once {
            self.settle(self.consumer.ack(seq).await, seq);
            self.invoke_acked(&[(&dependency, &event)], slot, &shutdown)
                .await;
            self.metrics
                .sensor_processing(&self.sensor, delivered.elapsed());
            return;
        }
        let result = loop {
            let started = Instant::now();
            // Not cancelled by shutdown: a started invocation may finish
            // within the grace period; it is kept alive meanwhile.
            let result = self
                .keep_alive_during(&[seq], self.trigger.invoke(&dependency, &event))
                .await;
            let pause = self.release_slot(slot, &result, started.elapsed());
            let Some(pause) = pause.filter(|p| !p.is_zero()) else {
                break result;
            };
            // The downstream said when to come back: the event waits for it
            // (every send of this trigger is paused) and is not charged a
            // retry step.
            self.count(TriggerOutcome::Retry);
            tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, ?pause, "downstream asked to retry later");
            match self.reacquire_slot(&shutdown, &[seq]).await {
                Some(next) => slot = next,
                // Shutting down: left unacked, redelivered later.
                None => return,
            }
        };
        match result {
            Ok(()) => {
                self.count(self.success());
                crate::failpoint::crash_point(crate::failpoint::CrashPoint::AfterTriggerSuccess);
                self.settle(self.consumer.ack(seq).await, seq);
            }
            Err(err) => match self.retry.delay_for(attempt, &err) {
                Some(delay) => {
                    self.count(TriggerOutcome::Retry);
                    tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempt, ?delay, "trigger failed, will retry: {err}");
                    self.settle(self.consumer.nak(seq, delay).await, seq);
                }
                None => self.give_up(seq, attempt, &dependency, &event, &err).await,
            },
        }
        self.metrics
            .sensor_processing(&self.sensor, delivered.elapsed());
    }

    /// `atLeastOnce: false`: the event is already acked, so the retries
    /// (same `retryStrategy`) and the DLQ hand-off happen here, in memory.
    /// The event keeps its concurrency slot through its backoff, so events
    /// retried in memory stay bounded by `maxInFlight`; only a downstream
    /// pushback gives the slot back (to the pause) and waits for a new one.
    /// `matched` holds one event, or the events of one run of a trigger
    /// with `conditions` (each is settled on its own when the run gives up).
    async fn invoke_acked(
        self: &Arc<Self>,
        matched: &crate::triggers::Matched<'_>,
        first_slot: Slot,
        shutdown: &CancellationToken,
    ) {
        let Some(&(_, event)) = matched.first() else {
            return;
        };
        let mut slot = Some(first_slot);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = self.trigger.invoke_matched(matched).await;
            let rtt = started.elapsed();
            self.metrics
                .trigger_duration(&self.sensor, &self.trigger_name, rtt);
            let err = match result {
                Ok(()) => {
                    // Only a first attempt's time is a clean RTT sample.
                    if let (Some(slot), 1) = (slot.take(), attempt) {
                        slot.complete(Outcome::Success { rtt });
                    }
                    self.count(self.success());
                    return;
                }
                Err(err) => err,
            };
            let delay = match &err {
                TriggerError::Retryable {
                    retry_after,
                    pushback,
                    ..
                } => {
                    if let (Some(reason), Some(held)) = (pushback, slot.take()) {
                        held.complete(Outcome::Dropped {
                            reason: *reason,
                            retry_after: *retry_after,
                        });
                    }
                    self.retry.delay_after(attempt, *retry_after)
                }
                TriggerError::Permanent { .. } => None,
            };
            let Some(delay) = delay else {
                drop(slot);
                for &(dependency, event) in matched {
                    if self.handled_rejection(attempt, event, &err).await {
                        continue;
                    }
                    if self.dlq.is_some() {
                        self.dead_letter_acked(dependency, event, &err.to_string())
                            .await;
                    } else {
                        self.count(TriggerOutcome::Failure);
                        tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempts = attempt, "trigger failed; event was acked before the trigger (atLeastOnce: false) and is dropped: {err}");
                    }
                }
                return;
            };
            self.count(TriggerOutcome::Retry);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, "shutting down during a retry of an event acked before its trigger (atLeastOnce: false): dropped");
                    return;
                }
            }
            attempt += 1;
            if slot.is_none() {
                match self.reacquire_slot(shutdown, &[]).await {
                    Some(next) => slot = Some(next),
                    None => return,
                }
            }
        }
    }

    /// The DLQ hand-off of an already-acked event: one attempt.
    async fn dead_letter_acked(&self, dependency: &str, event: &Event, why: &str) {
        let Some(dlq) = &self.dlq else {
            return;
        };
        match dlq.invoke(dependency, event).await {
            Ok(()) => {
                self.count(TriggerOutcome::Dlq);
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, "trigger gave up ({why}); event sent to the DLQ trigger");
            }
            Err(err) => {
                self.count(TriggerOutcome::Failure);
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, "trigger and DLQ trigger failed; event was acked before the trigger (atLeastOnce: false) and is dropped: {err}");
            }
        }
    }

    /// Whether an event delivered `delivery_count` times goes straight to
    /// the DLQ trigger without running the trigger again: it already had
    /// its `steps` attempts (its DLQ hand-off failed, or the process stopped
    /// before settling it). Without a DLQ trigger such an event runs again
    /// and `onReject` decides after the attempt.
    fn retries_used_up(&self, delivery_count: u32) -> bool {
        self.at_least_once && self.dlq.is_some() && delivery_count > self.retry.steps
    }

    /// Hands an event whose trigger gave up to the DLQ trigger: acked when
    /// the DLQ took it, otherwise redelivered after the first retry delay
    /// (and then sent to the DLQ again).
    async fn dead_letter(&self, seq: u64, dependency: &str, event: &Event, why: &str) {
        let Some(dlq) = &self.dlq else {
            return;
        };
        match self
            .keep_alive_during(&[seq], dlq.invoke(dependency, event))
            .await
        {
            Ok(()) => {
                self.count(TriggerOutcome::Dlq);
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, "trigger gave up ({why}); event sent to the DLQ trigger");
                self.settle(self.consumer.ack(seq).await, seq);
            }
            Err(err) => {
                let delay = self.retry.duration.max(Duration::from_secs(1));
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, ?delay, "DLQ trigger failed, event kept for redelivery: {err}");
                self.count(TriggerOutcome::Retry);
                self.settle(self.consumer.nak(seq, delay).await, seq);
            }
        }
    }

    /// Settles an event whose trigger will not be tried again now: the
    /// attempts are used up, or the failure is permanent.
    async fn give_up(
        &self,
        seq: u64,
        attempt: u32,
        dependency: &str,
        event: &Event,
        err: &TriggerError,
    ) {
        if self.handled_rejection(attempt, event, err).await {
            self.settle(self.consumer.ack(seq).await, seq);
            return;
        }
        if self.dlq.is_some() {
            self.dead_letter(seq, dependency, event, &err.to_string())
                .await;
            return;
        }
        match err {
            TriggerError::Retryable { retry_after, .. } => {
                // onReject: error. The event keeps its place on the bus, so
                // the bus fills and the sources push back.
                let delay = self.retry.redelivery_delay(attempt, *retry_after);
                self.count(TriggerOutcome::Retry);
                if let Some(skipped) = self.reject_log.admit() {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempts = attempt, ?delay, skipped, "downstream rejected the event; it goes back to the bus (onReject: error): {err}");
                }
                self.settle(self.consumer.nak(seq, delay).await, seq);
            }
            TriggerError::Permanent { .. } => {
                self.count(TriggerOutcome::Failure);
                tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempts = attempt, "trigger failed, event terminated: {err}");
                self.settle(self.consumer.term(seq).await, seq);
            }
        }
    }

    /// Applies `onReject: drop | backlog` to a rejected event (a retryable
    /// failure with the attempts used up). `true` when the event is dealt
    /// with and may be acked; `false` leaves it to `error` handling.
    async fn handled_rejection(&self, attempt: u32, event: &Event, err: &TriggerError) -> bool {
        if !matches!(err, TriggerError::Retryable { .. }) {
            return false;
        }
        match &self.on_reject {
            RejectPolicy::Error => false,
            RejectPolicy::Drop => {
                self.count(TriggerOutcome::Dropped);
                if let Some(skipped) = self.reject_log.admit() {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, attempts = attempt, skipped, "rejected event dropped (onReject: drop; counted in spillway_trigger_invocations_total{{outcome=\"dropped\"}}): {err}");
                }
                true
            }
            RejectPolicy::Backlog(store) => {
                let reason = format!("rejected after {attempt} attempt(s): {err}");
                match crate::backlog::store_event(
                    store,
                    &self.sensor,
                    &self.trigger_name,
                    reason,
                    event,
                )
                .await
                {
                    Ok(name) => {
                        self.count(TriggerOutcome::Backlog);
                        tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, "rejected event stored for later as {name}");
                        true
                    }
                    Err(store_err) => {
                        if let Some(skipped) = self.reject_log.admit() {
                            tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %event.context.id, skipped, "cannot store the rejected event for later ({store_err}); it stays on the bus as with onReject: error");
                        }
                        false
                    }
                }
            }
        }
    }

    /// How a successful invocation is counted: a store-for-later trigger
    /// stored the event, any other delivered it.
    fn success(&self) -> TriggerOutcome {
        if matches!(self.trigger, Trigger::Backlog(_)) {
            TriggerOutcome::Backlog
        } else {
            TriggerOutcome::Success
        }
    }

    fn count(&self, outcome: TriggerOutcome) {
        self.metrics
            .trigger_invocation(&self.sensor, &self.trigger_name, outcome);
    }

    fn settle(&self, result: Result<(), spillway_bus::BusError>, seq: u64) {
        if let Err(err) = result {
            // The bus will redeliver after ack_wait: at least once still holds.
            tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, seq, "could not settle message: {err}");
        }
    }
}
