//! One event, from its first attempt to its last: send, record the outcome,
//! and with `--honor-retry-after` send it again (same id) once the target's
//! `Retry-After` has passed.
//!
//! Guarantees: a retry is only sent if it falls inside the run, so a
//! delivery ends at most one request timeout after the run does; a
//! `Retry-After` shorter than [`MIN_RETRY_WAIT`] is stretched to it, so an
//! answer of `Retry-After: 0` cannot turn into a tight loop; at most
//! `max_retries` retries are sent per event (a client that gives up). Not guaranteed:
//! that the event is ever accepted.

use super::recorder::Recorder;
use super::target::{Request, Target};
use std::time::Duration;
use tokio::time::Instant;

/// Shortest wait before a retry.
pub const MIN_RETRY_WAIT: Duration = Duration::from_millis(100);

/// When a run started and when it stops sending.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn new(start: Instant, duration: Duration) -> Window {
        Window {
            start,
            end: start + duration,
        }
    }

    /// Time since the start of the run.
    pub fn elapsed(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.start)
    }
}

/// Delivers event `id`, whose first attempt was meant to start at
/// `first_due` (latency counts from then, so a generator that falls behind
/// shows up as latency instead of hiding it).
pub async fn deliver<T: Target>(
    target: &T,
    recorder: &Recorder,
    window: Window,
    id: u64,
    first_due: Instant,
    honor_retry_after: bool,
    max_retries: u32,
) {
    let mut attempt = 0;
    let mut started = first_due;
    loop {
        let outcome = target.send(Request { id, attempt }).await;
        let now = Instant::now();
        recorder.finished(window.elapsed(now), &outcome, now - started);
        recorder.track(id, &outcome);
        let wait = match outcome.retry_after() {
            Some(wait) if honor_retry_after && attempt < max_retries => wait.max(MIN_RETRY_WAIT),
            _ => return,
        };
        let retry_at = now + wait;
        if retry_at >= window.end {
            return;
        }
        tokio::time::sleep_until(retry_at).await;
        attempt += 1;
        started = Instant::now();
        recorder.retried(window.elapsed(started));
    }
}
