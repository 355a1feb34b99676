//! The fetch/correlate/dispatch loop of a trigger of a multi-dependency
//! sensor: Argo trigger `conditions` (without them, every dependency must
//! arrive), with bounded waiting.
//!
//! Each fetched event that passes its dependency's filters joins its
//! dependency's **FIFO queue**. Whenever the condition is true over "which
//! dependencies have a waiting event", the trigger runs **once** with the
//! oldest waiting event of every dependency that has one (the events that
//! made it true), and those events leave their queues; this repeats while
//! the condition stays true. So `a && b` fires once per (a, b) pair, and
//! `a || b` once per event.
//!
//! Argo keeps only the *latest* event per dependency and overwrites the
//! older one silently. spillway keeps every event in order instead, so at
//! least once holds: an event leaves its queue only by running the trigger
//! or by being **expired**, which acks it and counts it in
//! `spillway_sensor_events_expired_total{sensor,trigger,dependency,reason}`:
//! - `max_wait`: it waited `flowControl.correlation.maxWait` (default 1h);
//! - `max_events`: its dependency already had `maxEvents` (default 1000)
//!   waiting, and it was the oldest when another arrived (the queue is full
//!   → the oldest goes, never the new one, so the loop never stops fetching
//!   and the events another dependency needs still reach it);
//! - `reset`: a `conditionsReset.byTime` cron tick (read in its timezone)
//!   dropped every waiting event, as in Argo.
//!
//! Waiting events are held unacked on the bus and kept alive with
//! `in_progress` every `ackWait / 3`, so the bus does not redeliver them
//! while they wait; they do not hold a concurrency slot (a waiting `a` must
//! not keep the `b` it waits for from being fetched). The bus consumer's
//! `max_ack_pending` leaves room for them ([`Correlation::max_waiting`]).
//! On shutdown they stay unacked and are redelivered.
//!
//! A run takes a concurrency slot and passes the rate limits and slow start
//! like any invocation; its events are acked only after the outcome:
//! - success: all of them are acked, counted once as `success`;
//! - failure: **each event is judged by its own delivery count** (its own
//!   attempt), never by its partners'. An event with steps left is put back
//!   on the bus with its own backoff delay (`nak`); it comes back as a
//!   separate event and is correlated again (maybe with other partners).
//!   An event without steps left, or any event after a permanent failure,
//!   is settled as a single event would be (`onReject`, `dlqTrigger` — one
//!   DLQ call per event —, or terminated). A run counts `retry` once when
//!   at least one of its events goes back for another attempt; the events
//!   given up are counted one by one, as single events are.
//!
//! So an event redelivered many times never drags fresh partners to the
//! DLQ with it (they keep their own steps), and a fresh partner never buys
//! a spent event more attempts (it is given up after its own `steps`).
//! A delivery count is not an attempt count for a waiting event: it is
//! redelivered without running whenever its keep-alive is lost or the
//! process restarts. So, unlike a single-event trigger, an event fetched
//! with its count past `steps` is not sent to the DLQ trigger on sight: it
//! waits for partners like any event (and expires after `maxWait` /
//! `maxEvents` if none comes), and the first run of it that fails gives it
//! up. The cost: an event whose DLQ hand-off failed runs once more before
//! its next hand-off.
//!
//! With `atLeastOnce: false` the events are acked when the run starts and
//! retried in memory, as for a single event.
//!
//! Not supported here (refused by `spillway run`): sensor
//! `priority`/`shedding`. `maxPending` does not apply: a run waiting
//! for its workflow semaphore holds its concurrency slot, so `maxInFlight`
//! bounds them.

use super::filtering::{Verdict, EVALUATION_BUSY_DELAY};
use super::{Ready, RunnerInner, Slot, TriggerRunner, BUS_ERROR_BACKOFF, FETCH_WAIT};
use crate::event::Event;
use crate::sensor::condition::Condition;
use crate::sources::calendar::Schedule;
use crate::telemetry::{LogThrottle, TriggerOutcome};
use crate::triggers::TriggerError;
use chrono::{DateTime, Utc};
use spillway_bus::Received;
use spillway_flowctl::AcquireError;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// At most one log line per this interval about expired events.
const EXPIRED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The wall clock `conditionsReset` crons are read against.
#[derive(Clone)]
pub struct WallClock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl WallClock {
    /// The system clock.
    pub fn system() -> Self {
        WallClock(Arc::new(Utc::now))
    }

    /// `start` plus the tokio time elapsed since now: follows paused time
    /// in tests.
    pub fn from_tokio(start: DateTime<Utc>) -> Self {
        let base = Instant::now();
        WallClock(Arc::new(move || {
            let elapsed =
                chrono::Duration::from_std(base.elapsed()).unwrap_or(chrono::Duration::MAX);
            start + elapsed
        }))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

/// How a multi-dependency trigger correlates its events.
#[derive(Clone)]
pub struct Correlation {
    /// True when the trigger may run (Argo `conditions`, or all of the
    /// sensor's dependencies).
    pub condition: Condition,
    /// The dependencies that wait, in the order their events are passed to
    /// the trigger: the condition's names.
    pub dependencies: Vec<String>,
    /// `flowControl.correlation.maxWait`.
    pub max_wait: Duration,
    /// `flowControl.correlation.maxEvents`, per dependency.
    pub max_events: usize,
    /// `conditionsReset.byTime` schedules.
    pub resets: Vec<Schedule>,
    pub clock: WallClock,
}

impl Correlation {
    /// Most events waiting at once: `maxEvents` per dependency.
    pub fn max_waiting(&self) -> usize {
        self.max_events
            .max(1)
            .saturating_mul(self.dependencies.len())
    }
}

/// One waiting event.
struct Waiting {
    ready: Ready,
    since: Instant,
}

/// The waiting events, one FIFO queue per dependency.
struct Queues {
    queues: Vec<(String, VecDeque<Waiting>)>,
}

impl Queues {
    fn seqs(&self) -> Vec<u64> {
        self.queues
            .iter()
            .flat_map(|(_, q)| q.iter().map(|w| w.ready.message.seq))
            .collect()
    }

    fn is_met(&self, condition: &Condition) -> bool {
        condition.eval(&|name| {
            self.queues
                .iter()
                .any(|(dep, q)| dep == name && !q.is_empty())
        })
    }

    /// The oldest event of every dependency that has one.
    fn take_heads(&mut self) -> Vec<Ready> {
        self.queues
            .iter_mut()
            .filter_map(|(_, q)| q.pop_front().map(|w| w.ready))
            .collect()
    }

    /// When the oldest waiting event expires.
    fn next_expiry(&self, max_wait: Duration) -> Option<Instant> {
        self.queues
            .iter()
            .filter_map(|(_, q)| q.front().map(|w| w.since + max_wait))
            .min()
    }
}

impl TriggerRunner {
    /// Correlates events by `correlation` instead of running the trigger
    /// once per event (see the module docs).
    pub fn correlate(mut self, correlation: Correlation) -> Self {
        self.correlation = Some(correlation);
        self
    }

    pub(super) async fn run_correlated(
        self,
        correlation: Correlation,
        shutdown: CancellationToken,
    ) {
        let inner = Arc::clone(&self.inner);
        let mut queues = Queues {
            queues: correlation
                .dependencies
                .iter()
                .map(|d| (d.clone(), VecDeque::new()))
                .collect(),
        };
        let expired_log = LogThrottle::new(EXPIRED_LOG_INTERVAL);
        let mut next_reset = next_reset(&correlation);
        let mut next_keep_alive = Instant::now() + inner.keep_alive;
        let mut tasks = JoinSet::new();
        'run: loop {
            while tasks.try_join_next().is_some() {}
            let now = Instant::now();
            if next_reset.is_some_and(|at| at <= now) {
                for (dependency, queue) in &mut queues.queues {
                    for waiting in queue.drain(..) {
                        inner
                            .expire(&waiting.ready, dependency, "reset", &expired_log)
                            .await;
                    }
                }
                next_reset = self::next_reset(&correlation);
            }
            for (dependency, queue) in &mut queues.queues {
                while queue
                    .front()
                    .is_some_and(|w| w.since + correlation.max_wait <= now)
                {
                    if let Some(waiting) = queue.pop_front() {
                        inner
                            .expire(&waiting.ready, dependency, "max_wait", &expired_log)
                            .await;
                    }
                }
            }
            if next_keep_alive <= now {
                for seq in queues.seqs() {
                    let result = inner.consumer.in_progress(seq).await;
                    inner.settle(result, seq);
                }
                next_keep_alive = now + inner.keep_alive;
            }
            // Wake for the next expiry, reset or keep-alive, whichever is first.
            let deadline = [
                Some(now + FETCH_WAIT),
                Some(next_keep_alive),
                next_reset,
                queues.next_expiry(correlation.max_wait),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + FETCH_WAIT);
            let wait = deadline.saturating_duration_since(now);
            let batch = tokio::select! {
                batch = inner.consumer.fetch(self.fetch_cap, wait) => batch,
                _ = shutdown.cancelled() => break,
            };
            let messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(sensor = %inner.sensor, trigger = %inner.trigger_name, "bus fetch failed: {err}");
                    tokio::select! {
                        _ = tokio::time::sleep(BUS_ERROR_BACKOFF) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            // The batch's events not yet sorted in are held too: they must
            // be kept alive while earlier ones wait for a slot.
            let mut unsorted: VecDeque<u64> = messages.iter().map(|m| m.seq).collect();
            for message in messages {
                // This event, the batch's later ones and every waiting one
                // stay alive while its filters and transforms run.
                let held = || unsorted.iter().copied().chain(queues.seqs()).collect();
                let prepared = inner
                    .keep_alive_during_with(held, inner.prepare_matching(message))
                    .await;
                unsorted.pop_front();
                let Some((ready, candidates)) = prepared else {
                    continue;
                };
                let matching: Vec<&String> = candidates.iter().map(|(d, _)| d).collect();
                // Several dependencies may share a subject (same event
                // source, different filters): the event joins the first one
                // it matches that has nothing waiting, else the first.
                let index = queues
                    .queues
                    .iter()
                    .position(|(d, q)| q.is_empty() && matching.contains(&d))
                    .or_else(|| {
                        queues
                            .queues
                            .iter()
                            .position(|(d, _)| matching.contains(&d))
                    });
                let Some(index) = index else {
                    // Only dependencies the condition does not name: nothing waits for it.
                    let seq = ready.message.seq;
                    inner.settle(inner.consumer.ack(seq).await, seq);
                    continue;
                };
                let seq = ready.message.seq;
                if queues.seqs().contains(&seq) {
                    // Redelivered while it waits (a keep-alive was lost):
                    // the waiting copy holds it; no duplicate run.
                    continue;
                }
                let mut ready = ready;
                ready.dependency = queues.queues[index].0.clone();
                // The event as this dependency's own transform left it.
                if let Some((_, event)) =
                    candidates.into_iter().find(|(d, _)| *d == ready.dependency)
                {
                    ready.event = event;
                }
                // No `retries_used_up` shortcut here (unlike a single-event
                // trigger): a waiting event is redelivered without running
                // (a restart, a lost keep-alive), so its delivery count
                // overstates its attempts. It waits for partners like any
                // event; a failed run judges it by its own count.
                let (dependency, queue) = &mut queues.queues[index];
                if queue.len() >= correlation.max_events.max(1) {
                    if let Some(oldest) = queue.pop_front() {
                        inner
                            .expire(&oldest.ready, dependency, "max_events", &expired_log)
                            .await;
                    }
                }
                queue.push_back(Waiting {
                    ready,
                    since: Instant::now(),
                });
                while queues.is_met(&correlation.condition) {
                    let group = queues.take_heads();
                    let mut held = queues.seqs();
                    held.extend(group.iter().map(|r| r.message.seq));
                    held.extend(unsorted.iter().copied());
                    let Some(slot) = inner.acquire_slot(&shutdown, &held).await else {
                        break 'run;
                    };
                    if inner
                        .keep_alive_while(&held, &shutdown, self.admit())
                        .await
                        .is_none()
                    {
                        break 'run;
                    }
                    let inner = Arc::clone(&inner);
                    let shutdown = shutdown.clone();
                    tasks.spawn(async move { inner.invoke_group(group, slot, shutdown).await });
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        // Waiting events stay unacked: the bus redelivers them.
        while tasks.join_next().await.is_some() {}
    }
}

/// The tokio instant of the first `conditionsReset` tick from now.
fn next_reset(correlation: &Correlation) -> Option<Instant> {
    let now = correlation.clock.now();
    let next = correlation
        .resets
        .iter()
        .filter_map(|schedule| schedule.next_after(now, now))
        .min()?;
    let until = (next - now).to_std().unwrap_or(Duration::ZERO);
    Some(Instant::now() + until)
}

impl RunnerInner {
    /// Decodes one event and finds every dependency whose subject and
    /// filters it matches. Events that match none (or are invalid, or
    /// replayed to another trigger) are settled here and `None` is returned.
    async fn prepare_matching(&self, message: Received) -> Option<(Ready, Vec<(String, Event)>)> {
        let delivered = Instant::now();
        let seq = message.seq;
        let event = self.decode(&message).await?;
        // Each dependency of the subject applies its own transform and
        // filters to its own copy; the event waits as the first matching
        // dependency transformed it. A dependency whose filters keep the
        // event out counts it (spillway_sensor_events_filtered_total).
        let mut candidates: Vec<(String, Event)> = Vec::new();
        for dependency in self
            .dependencies
            .iter()
            .filter(|d| d.subject == message.subject)
        {
            let mut candidate = event.clone();
            let verdict = match &dependency.filters {
                None => Verdict::Pass,
                Some(filter) => self.judge(filter, &mut candidate, seq).await,
            };
            match verdict {
                Verdict::Pass => candidates.push((dependency.name.clone(), candidate)),
                Verdict::Reject => {}
                Verdict::Busy => {
                    // Judged again as a whole when it comes back.
                    self.put_back(seq, EVALUATION_BUSY_DELAY).await;
                    return None;
                }
            }
        }
        let Some((first, first_event)) = candidates.first().cloned() else {
            // Not ours, or filtered out by every dependency of its subject.
            self.settle(self.consumer.ack(seq).await, seq);
            return None;
        };
        Some((
            Ready {
                dependency: first,
                message,
                event: first_event,
                delivered,
                ticket: None,
            },
            candidates,
        ))
    }

    /// Acks a waiting event without running the trigger and counts it.
    async fn expire(&self, ready: &Ready, dependency: &str, reason: &str, log: &LogThrottle) {
        let seq = ready.message.seq;
        self.metrics
            .sensor_expired(&self.sensor, &self.trigger_name, dependency, reason);
        if let Some(skipped) = log.admit() {
            tracing::info!(sensor = %self.sensor, trigger = %self.trigger_name, dependency, id = %ready.event.context.id, reason, skipped, "event expired waiting for the trigger's conditions; acked (counted in spillway_sensor_events_expired_total)");
        }
        self.settle(self.consumer.ack(seq).await, seq);
    }

    /// Runs the trigger once for `group` (holding `slot`) and settles every
    /// event of it (see the module docs).
    async fn invoke_group(
        self: Arc<Self>,
        group: Vec<Ready>,
        mut slot: Slot,
        shutdown: CancellationToken,
    ) {
        let seqs: Vec<u64> = group.iter().map(|r| r.message.seq).collect();
        let first_delivered = group.iter().map(|r| r.delivered).min();
        for ready in &group {
            let age = SystemTime::now()
                .duration_since(ready.message.published_at)
                .unwrap_or(Duration::ZERO);
            self.metrics.event_age(&self.sensor, age);
        }
        // Held until the trigger is done: the workflow's semaphore slot.
        let _running = match self.trigger.workflow_gate() {
            Some(gate) => match self
                .keep_alive_while(&seqs, &shutdown, gate.acquire())
                .await
            {
                None => return,
                Some(Ok(running)) => Some(running),
                Some(Err(err @ (AcquireError::PendingFull { .. } | AcquireError::Closed))) => {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, template = gate.template(), "workflow semaphore refused the workflow ({err}); events put back on the bus");
                    self.count(TriggerOutcome::Retry);
                    for &seq in &seqs {
                        let result = self.consumer.nak(seq, BUS_ERROR_BACKOFF).await;
                        self.settle(result, seq);
                    }
                    return;
                }
            },
            None => None,
        };
        let matched: Vec<(&str, &Event)> = group
            .iter()
            .map(|r| (r.dependency.as_str(), &r.event))
            .collect();
        if !self.at_least_once {
            for &seq in &seqs {
                self.settle(self.consumer.ack(seq).await, seq);
            }
            self.invoke_acked(&matched, slot, &shutdown).await;
            if let Some(delivered) = first_delivered {
                self.metrics
                    .sensor_processing(&self.sensor, delivered.elapsed());
            }
            return;
        }
        let result = loop {
            let started = Instant::now();
            let result = self
                .keep_alive_during(&seqs, self.trigger.invoke_matched(&matched))
                .await;
            let pause = self.release_slot(slot, &result, started.elapsed());
            let Some(_pause) = pause.filter(|p| !p.is_zero()) else {
                break result;
            };
            // The downstream said when to come back: not a retry step.
            self.count(TriggerOutcome::Retry);
            match self.reacquire_slot(&shutdown, &seqs).await {
                Some(next) => slot = next,
                None => return,
            }
        };
        match result {
            Ok(()) => {
                self.count(self.success());
                for &seq in &seqs {
                    self.settle(self.consumer.ack(seq).await, seq);
                }
            }
            Err(err) => self.settle_failed_group(&group, &err).await,
        }
        if let Some(delivered) = first_delivered {
            self.metrics
                .sensor_processing(&self.sensor, delivered.elapsed());
        }
    }

    /// Settles every event of a failed run by its own attempt (its delivery
    /// count): back to the bus with its backoff while it has steps left,
    /// else given up as a single event would be (see the module docs).
    async fn settle_failed_group(&self, group: &[Ready], err: &TriggerError) {
        let mut given_up = Vec::new();
        let mut retried = 0;
        for ready in group {
            let (seq, attempt) = (ready.message.seq, ready.message.delivery_count);
            match self.retry.delay_for(attempt, err) {
                Some(delay) => {
                    tracing::debug!(sensor = %self.sensor, trigger = %self.trigger_name, id = %ready.event.context.id, attempt, ?delay, "trigger failed, event will be retried: {err}");
                    self.settle(self.consumer.nak(seq, delay).await, seq);
                    retried += 1;
                }
                None => given_up.push(ready),
            }
        }
        if retried > 0 {
            self.count(TriggerOutcome::Retry);
        }
        // The events given up wait for each other's DLQ calls: keep them alive.
        let held: Vec<u64> = given_up.iter().map(|r| r.message.seq).collect();
        self.keep_alive_during(&held, async {
            for ready in given_up {
                let attempt = ready.message.delivery_count;
                self.give_up(
                    ready.message.seq,
                    attempt,
                    &ready.dependency,
                    &ready.event,
                    err,
                )
                .await;
            }
        })
        .await;
    }
}
