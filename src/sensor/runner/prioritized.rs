//! The fetch/dispatch loop of a trigger whose sensor sets
//! `flowControl.priority` or `flowControl.shedding`: sensor-level shedding
//! and higher priorities first.
//!
//! The runner keeps a **look-ahead window** of fetched events waiting for a
//! concurrency slot, at most [`PriorityDispatch::look_ahead`] of them (the
//! bus consumer's `max_ack_pending` is raised by as much, see
//! [`TriggerLimits::max_fetched`]). The window is refilled from the bus
//! before every dispatch without waiting (it waits for events only when it
//! is empty), so events that arrived while the runner waited for a slot
//! compete too. Unlike the FIFO loop, fetches are not sized by the rate
//! limits: events waiting for a rate token wait in the window (kept alive),
//! which is what lets an important late event overtake them.
//!
//! Guarantees:
//! - **Shedding** is decided once per event, as it enters the window: when
//!   the trigger's backlog — consumer lag as the consumer reports it, plus
//!   the events in the window, plus the rest of the fetched batch, this
//!   event included — is above `queueDepthAbove`, an event whose priority
//!   number is above `shedPriorityAbove` is acked without running the
//!   trigger, counted in `spillway_sensor_events_shed_total{sensor,trigger,
//!   priority}` and logged (throttled). Priority 0 is never shed
//!   ([`PriorityShedder`]). An event replayed to this trigger (`spillway
//!   backlog replay`) is never shed: an operator asked for it.
//! - **Order**: each free slot goes to the window's event with the lowest
//!   effective priority number, FIFO within a priority, with aging
//!   ([`PRIORITY_AGING`] of waiting is worth one priority step, so a
//!   low-priority event is not starved by a stream of important ones). The
//!   order holds only among the events in the window; events still on the
//!   bus are not seen, and retries and `Retry-After` pauses keep their own
//!   place (they go before new dispatches, as in the FIFO loop).
//! - Events in the window are kept alive (`in_progress`) and are never
//!   acked before their trigger outcome (or their shedding). On shutdown
//!   they are left unacked and the bus redelivers them.

use super::Ready;
use super::{RunnerInner, TriggerLimits, TriggerRunner, BUS_ERROR_BACKOFF, FETCH_WAIT};
use crate::priority::{PrioritySource, Resolved};
use crate::telemetry::LogThrottle;
use spillway_bus::Received;
use spillway_flowctl::{
    Decision, Permit, PriorityQueue, PriorityShedder, QueueFull, SheddingPolicy,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Waiting this long in the look-ahead window is worth one priority step.
pub const PRIORITY_AGING: Duration = Duration::from_secs(1);

/// Smallest look-ahead window: even a serial trigger (`maxInFlight: 1`)
/// chooses among this many events.
pub const MIN_LOOK_AHEAD: usize = 16;

/// Largest look-ahead window, whatever `maxInFlight` is: the window holds
/// whole events in memory.
pub const MAX_LOOK_AHEAD: usize = 1024;

/// At most one warning per this interval about shed events or unreadable
/// priorities.
const PRIORITY_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The look-ahead window of a trigger with `max_in_flight` slots:
/// `max_in_flight` clamped to [`MIN_LOOK_AHEAD`]..=[`MAX_LOOK_AHEAD`].
pub fn look_ahead(max_in_flight: usize) -> usize {
    max_in_flight.clamp(MIN_LOOK_AHEAD, MAX_LOOK_AHEAD)
}

/// Priority dispatch and shedding of one trigger (sensor
/// `flowControl.priority` / `flowControl.shedding`).
#[derive(Debug, Clone)]
pub struct PriorityDispatch {
    /// Where an event's priority is read: the sensor's `priority` block,
    /// else the `spillway-priority` header a source stamped, else 5.
    pub source: PrioritySource,
    /// `flowControl.shedding`, if set.
    pub shedding: Option<SheddingPolicy>,
    /// Most events fetched and waiting for a slot (see [`look_ahead`]).
    pub look_ahead: usize,
}

/// A runner's live priority state.
pub(super) struct Prioritized {
    source: PrioritySource,
    shedder: Option<PriorityShedder>,
    look_ahead: usize,
    shed_log: LogThrottle,
    unreadable_log: LogThrottle,
}

impl Prioritized {
    pub(super) fn new(dispatch: PriorityDispatch) -> Self {
        Prioritized {
            source: dispatch.source,
            shedder: dispatch.shedding.map(PriorityShedder::new),
            look_ahead: dispatch.look_ahead.max(1),
            shed_log: LogThrottle::new(PRIORITY_LOG_INTERVAL),
            unreadable_log: LogThrottle::new(PRIORITY_LOG_INTERVAL),
        }
    }
}

impl TriggerLimits {
    /// Most events the runner holds unacked at once: its slots, plus the
    /// look-ahead window when it dispatches by priority. The bus consumer's
    /// `max_ack_pending` must be at least this.
    pub fn max_fetched(&self) -> usize {
        let window = self.priority.as_ref().map_or(0, |p| p.look_ahead.max(1));
        self.max_in_flight.max(1).saturating_add(window)
    }
}

impl TriggerRunner {
    /// [`TriggerRunner::run`] with a look-ahead window: sheds, then
    /// dispatches by priority (see the module docs).
    pub(super) async fn run_prioritized(
        self,
        prioritized: Prioritized,
        shutdown: CancellationToken,
    ) {
        let mut window: PriorityQueue<Ready> =
            PriorityQueue::new(prioritized.look_ahead, PRIORITY_AGING);
        let mut tasks = JoinSet::new();
        let mut refreshed = tokio::time::Instant::now();
        loop {
            while tasks.try_join_next().is_some() {}
            self.refresh_if_due(&window, &mut refreshed).await;
            // Wait for events only when there is nothing to dispatch.
            let wait = if window.is_empty() {
                FETCH_WAIT
            } else {
                Duration::ZERO
            };
            if !self
                .refill(&prioritized, &mut window, wait, &shutdown)
                .await
            {
                break;
            }
            if window.is_empty() {
                continue;
            }
            self.refresh_if_due(&window, &mut refreshed).await;
            let Some(slot) = self.inner.acquire_slot(&shutdown, &held(&window)).await else {
                break;
            };
            // Events that arrived while we waited for the slot compete too.
            if window.len() < prioritized.look_ahead
                && !self
                    .refill(&prioritized, &mut window, Duration::ZERO, &shutdown)
                    .await
            {
                break;
            }
            self.refresh_if_due(&window, &mut refreshed).await;
            let Some(ticket) = self.inner.pending_ticket(&held(&window), &shutdown).await else {
                break;
            };
            // Before the best event leaves the window, so it is refreshed too.
            self.refresh_if_due(&window, &mut refreshed).await;
            let Some(best) = window.pop() else {
                continue;
            };
            let mut ready = best.item;
            ready.ticket = ticket;
            // The event being admitted first, then the rest of the window.
            let mut keep = vec![ready.message.seq];
            keep.extend(held(&window));
            let admitted = self
                .inner
                .keep_alive_while(&keep, &shutdown, self.admit())
                .await;
            if admitted.is_none() {
                // Shutting down: the unacked events are redelivered later.
                break;
            }
            let inner = Arc::clone(&self.inner);
            let shutdown = shutdown.clone();
            tasks.spawn(async move { inner.invoke(ready, slot, shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Sends `in_progress` for every event of the window when the last
    /// refresh is a keep-alive interval old. Each wait below also refreshes
    /// on its own timer, but that timer starts with the wait: a run of waits
    /// each shorter than the interval would otherwise never refresh, and an
    /// event could sit in the window past `ack_wait`. With this check before
    /// every wait, no event goes more than two intervals (2/3 of `ack_wait`)
    /// without a refresh.
    async fn refresh_if_due(
        &self,
        window: &PriorityQueue<Ready>,
        refreshed: &mut tokio::time::Instant,
    ) {
        if window.is_empty() {
            // Events fetched from now on start fresh.
            *refreshed = tokio::time::Instant::now();
            return;
        }
        if refreshed.elapsed() < self.inner.keep_alive {
            return;
        }
        for seq in held(window) {
            let result = self.inner.consumer.in_progress(seq).await;
            self.inner.settle(result, seq);
        }
        *refreshed = tokio::time::Instant::now();
    }

    /// Fetches up to the window's free room (waiting up to `wait`) and
    /// sorts the events in, shedding what the backlog calls for. `false` on
    /// shutdown.
    async fn refill(
        &self,
        prioritized: &Prioritized,
        window: &mut PriorityQueue<Ready>,
        wait: Duration,
        shutdown: &CancellationToken,
    ) -> bool {
        let room = prioritized.look_ahead.saturating_sub(window.len());
        if room == 0 {
            return !shutdown.is_cancelled();
        }
        let batch = tokio::select! {
            batch = self.inner.consumer.fetch(room, wait) => batch,
            _ = shutdown.cancelled() => return false,
        };
        match batch {
            Ok(messages) => {
                self.sort_in(prioritized, window, messages).await;
                !shutdown.is_cancelled()
            }
            Err(err) => {
                tracing::warn!(sensor = %self.inner.sensor, trigger = %self.inner.trigger_name, "bus fetch failed: {err}");
                self.inner
                    .keep_alive_while(
                        &held(window),
                        shutdown,
                        tokio::time::sleep(BUS_ERROR_BACKOFF),
                    )
                    .await
                    .is_some()
            }
        }
    }

    /// Decodes, filters, sheds or queues each fetched event.
    async fn sort_in(
        &self,
        prioritized: &Prioritized,
        window: &mut PriorityQueue<Ready>,
        messages: Vec<Received>,
    ) {
        // Read once per batch: the events of this batch have already left
        // the lag, so they are added back one by one below.
        let lag = self.inner.consumer.stats().pending;
        // This event and the batch's later ones: counted in the depth, and
        // kept alive with the window while filters and transforms run (up
        // to their deadline each).
        let mut unsorted: std::collections::VecDeque<u64> =
            messages.iter().map(|m| m.seq).collect();
        for message in messages {
            let depth = lag
                .saturating_add(window.len() as u64)
                .saturating_add(unsorted.len() as u64);
            let keep = || unsorted.iter().copied().chain(held(window)).collect();
            let prepared = self
                .inner
                .keep_alive_during_with(keep, self.inner.prepare(message))
                .await;
            unsorted.pop_front();
            let Some(ready) = prepared else {
                continue;
            };
            let priority = self.priority_of(prioritized, &ready);
            let replayed = ready
                .message
                .header(crate::backlog::REPLAY_TO_HEADER)
                .is_some();
            if let (Some(shedder), false) = (&prioritized.shedder, replayed) {
                if let Decision::Shed {
                    queue_depth_above, ..
                } = shedder.decide(priority, depth)
                {
                    self.inner
                        .shed(prioritized, &ready, priority, depth, queue_depth_above)
                        .await;
                    continue;
                }
            }
            match window.push(priority, ready) {
                Ok(None) => {}
                // The fetch asked for no more than the window's room, so
                // neither can happen; should one, the bus keeps the event.
                Ok(Some(evicted)) => {
                    self.inner
                        .put_back(evicted.item.message.seq, Duration::ZERO)
                        .await
                }
                Err(QueueFull { item, .. }) => {
                    self.inner.put_back(item.message.seq, Duration::ZERO).await
                }
            }
        }
    }

    /// The event's priority (see [`crate::priority`] for the value policy);
    /// an unreadable value is warned about, throttled.
    fn priority_of(&self, prioritized: &Prioritized, ready: &Ready) -> u8 {
        let source = &prioritized.source;
        let Resolved {
            priority,
            unreadable,
        } = match &source.from {
            crate::priority::PriorityFrom::Header(name) => {
                match ready.message.header(name) {
                    Some(value) => source.in_text(Some(value)),
                    // Sources stamp only `spillway-priority` on the bus
                    // message; a webhook event keeps its request headers in
                    // its data (`header: {Name: [values]}`, as in Argo).
                    None => {
                        source.in_text(request_header(&ready.event.data_json(), name).as_deref())
                    }
                }
            }
            crate::priority::PriorityFrom::Path(_) => source.in_data(&ready.event.data_json()),
        };
        if let Some(value) = unreadable {
            if let Some(skipped) = prioritized.unreadable_log.admit() {
                tracing::warn!(sensor = %self.inner.sensor, trigger = %self.inner.trigger_name, id = %ready.event.context.id, value = %value, skipped, "unreadable priority; using the default {priority}");
            }
        }
        priority
    }
}

impl RunnerInner {
    /// Acks a shed event without running the trigger, counted and logged.
    async fn shed(
        &self,
        prioritized: &Prioritized,
        ready: &Ready,
        priority: u8,
        depth: u64,
        queue_depth_above: u64,
    ) {
        let seq = ready.message.seq;
        self.metrics
            .sensor_shed(&self.sensor, &self.trigger_name, priority);
        if let Some(skipped) = prioritized.shed_log.admit() {
            tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, id = %ready.event.context.id, priority, depth, skipped, "event shed: backlog above {queue_depth_above} (counted in spillway_sensor_events_shed_total)");
        }
        self.settle(self.consumer.ack(seq).await, seq);
    }

    /// Gives an event back to the bus for redelivery `after` this long.
    pub(super) async fn put_back(&self, seq: u64, after: Duration) {
        self.settle(self.consumer.nak(seq, after).await, seq);
    }

    /// A pending ticket for the next dispatch when the trigger waits on a
    /// workflow semaphore (`Some(None)` otherwise), keeping `held` alive
    /// while `maxPending` workflows wait. `None` on shutdown.
    async fn pending_ticket(
        &self,
        held: &[u64],
        shutdown: &CancellationToken,
    ) -> Option<Option<Permit>> {
        let Some(pending) = &self.pending else {
            return Some(None);
        };
        loop {
            match self
                .keep_alive_while(held, shutdown, pending.tickets.acquire())
                .await?
            {
                Ok(ticket) => return Some(Some(ticket)),
                // Only this loop takes tickets and nothing closes them, so
                // this cannot happen; wait rather than go without one.
                Err(err) => {
                    tracing::warn!(sensor = %self.sensor, trigger = %self.trigger_name, "pending tickets: {err}");
                    self.keep_alive_while(held, shutdown, tokio::time::sleep(BUS_ERROR_BACKOFF))
                        .await?;
                }
            }
        }
    }
}

/// The sequence numbers of the events waiting in `window`.
fn held(window: &PriorityQueue<Ready>) -> Vec<u64> {
    window.iter().map(|ready| ready.message.seq).collect()
}

/// The first value of request header `name` (ASCII case-insensitive) in a
/// webhook event's data: `{"header": {"X-Priority": ["3"]}, …}`.
fn request_header(data: &serde_json::Value, name: &str) -> Option<String> {
    let headers = data.get("header")?.as_object()?;
    let (_, values) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
    match values {
        serde_json::Value::Array(values) => values.first()?.as_str().map(str::to_string),
        serde_json::Value::String(value) => Some(value.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::request_header;
    use serde_json::json;

    #[test]
    fn a_sensor_header_priority_is_found_in_the_webhook_event_data() {
        let data = json!({"header": {"X-Priority": ["3", "7"], "Other": "x"}, "body": {}});
        assert_eq!(request_header(&data, "x-priority").as_deref(), Some("3"));
        assert_eq!(request_header(&data, "other").as_deref(), Some("x"));
        assert_eq!(request_header(&data, "missing"), None);
        assert_eq!(request_header(&json!({"header": []}), "x"), None);
        assert_eq!(request_header(&json!("not an object"), "x"), None);
        assert_eq!(
            request_header(&json!({"header": {"X": [1]}}), "x"),
            None,
            "a non-string value is no header"
        );
    }
}
