//! `flowControl.autoscale`: a trigger's worker count follows its consumer
//! lag, the way KEDA scales consumer pods (seed 004's `ScaledObject`).
//!
//! spillway runs a trigger in one process, so a *worker* is one concurrent
//! invocation: the runner starts an invocation only while fewer than
//! [`Workers::count`] are in flight, on top of its (adaptive) concurrency
//! limit. Every `pollingInterval` the consumer's lag (events matching the
//! trigger not yet acked: not yet delivered, plus delivered and held by the
//! runner) goes to flowctl's [`LagAutoscaler`], which
//! decides as KEDA and the HPA do: `ceil(lag / lagThreshold)` clamped to
//! `[min, max]`, up at once, down only after the stabilisation window, and
//! to zero (with `min: 0`) only after `cooldownPeriod` without lag.
//!
//! Guarantees:
//! - at most `count` invocations start while the count holds; lowering it
//!   never cancels running invocations: they finish, and no new one starts
//!   until fewer than the new count run;
//! - a raised count wakes the waiting runner at once;
//! - with the count at 0 nothing is fetched, but held events are still kept
//!   alive, and the lag is still polled, so a new backlog wakes the trigger;
//!   held events count in the lag, so a trigger holding events is never
//!   scaled to 0 (unless they are within `activationLagThreshold`, which,
//!   as in KEDA, leaves that few events waiting).
//!
//! Scaled out on a shared JetStream consumer, each instance reads the whole
//! consumer's lag and runs that many workers itself: N instances run up to
//! N × the count. Across machines, scale instances with KEDA instead (see
//! `deploy/kubernetes/keda-scaledobject.yaml`).

use spillway_bus::Consumer;
use spillway_flowctl::LagAutoscaler;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The worker count of one trigger, shared by its runner and its autoscaler.
#[derive(Debug)]
pub struct Workers {
    count: AtomicUsize,
    /// Signalled when the count goes up.
    raised: Notify,
}

impl Workers {
    /// A count starting at the autoscaler's `min`.
    pub fn new(initial: usize) -> Self {
        Workers {
            count: AtomicUsize::new(initial),
            raised: Notify::new(),
        }
    }

    /// Invocations allowed at once now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether an invocation that made `in_flight` invocations (itself
    /// included) may start.
    pub fn admits(&self, in_flight: usize) -> bool {
        in_flight <= self.count()
    }

    /// Sets the count; a raise wakes everyone waiting in [`Workers::raised`].
    pub fn set(&self, count: usize) -> usize {
        let before = self.count.swap(count, Ordering::AcqRel);
        if count > before {
            self.raised.notify_waiters();
        }
        before
    }

    /// Completes after the next raise of the count (created before checking
    /// the count, so a raise in between is not missed).
    pub fn raised(&self) -> tokio::sync::futures::Notified<'_> {
        self.raised.notified()
    }
}

/// Polls `consumer`'s lag every `pollingInterval` and applies the
/// autoscaler's answer to `workers`, until `shutdown`.
pub async fn follow_lag(
    mut scaler: LagAutoscaler,
    consumer: Arc<dyn Consumer>,
    workers: Arc<Workers>,
    sensor: String,
    trigger: String,
    shutdown: CancellationToken,
) {
    let mut poll = tokio::time::interval(scaler.policy().polling_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        // Events the runner holds (fetched, waiting for a slot or a retry,
        // running) count too: otherwise a trigger at 0 workers could hold
        // events that no worker will ever be started for.
        let stats = consumer.stats();
        let lag = stats.pending.saturating_add(stats.ack_pending);
        let count = scaler.observe(lag) as usize;
        let before = workers.set(count);
        if before != count {
            // At most one line per polling interval, and only on a change.
            tracing::info!(%sensor, %trigger, lag, "workers {before} → {count}");
        }
    }
}
