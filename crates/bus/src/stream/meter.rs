//! Small fixed-size helpers of the stream: the drain-rate meter behind
//! `retry_after`, a log-line throttle, and saturating instant arithmetic.

use std::time::Duration;
use tokio::time::Instant;

/// Seconds of history the drain-rate estimate looks at.
pub(crate) const DRAIN_WINDOW_SECS: u64 = 10;
/// Bounds of [`PublishError::Full::retry_after`](crate::PublishError::Full).
pub(crate) const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// `retry_after` when nothing drained during the last [`DRAIN_WINDOW_SECS`]:
/// there is no rate to extrapolate from, so answer a conservative guess that
/// keeps retrying producers from hammering a stuck bus while still probing
/// it every few seconds.
pub(crate) const IDLE_RETRY_AFTER: Duration = Duration::from_secs(5);

/// `at + d`, saturating at a far-away instant instead of panicking.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(d)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// Messages released (or removed) per second over a sliding window of
/// one-second buckets. Fixed size: `DRAIN_WINDOW_SECS` counters.
pub(crate) struct DrainMeter {
    start: Instant,
    /// Index (seconds since `start`) of the newest bucket.
    head: u64,
    counts: [u64; DRAIN_WINDOW_SECS as usize],
}

impl DrainMeter {
    pub(crate) fn new(start: Instant) -> Self {
        DrainMeter {
            start,
            head: 0,
            counts: [0; DRAIN_WINDOW_SECS as usize],
        }
    }

    fn slot(sec: u64) -> usize {
        (sec % DRAIN_WINDOW_SECS) as usize
    }

    /// Advances to `now`, zeroing buckets that left the window.
    fn roll(&mut self, now: Instant) {
        let sec = now.saturating_duration_since(self.start).as_secs();
        if sec <= self.head {
            return;
        }
        let steps = (sec - self.head).min(DRAIN_WINDOW_SECS);
        for i in 1..=steps {
            self.counts[Self::slot(self.head + i)] = 0;
        }
        self.head = sec;
    }

    pub(crate) fn record(&mut self, now: Instant) {
        self.roll(now);
        self.counts[Self::slot(self.head)] += 1;
    }

    /// Releases per second. The window includes the current, partial second
    /// but is divided by whole seconds, so the rate errs low (`retry_after`
    /// errs long). A younger bus divides by its age (at least 1 s).
    pub(crate) fn rate(&mut self, now: Instant) -> f64 {
        self.roll(now);
        let total: u64 = self.counts.iter().sum();
        let age = now.saturating_duration_since(self.start).as_secs_f64();
        total as f64 / age.clamp(1.0, DRAIN_WINDOW_SECS as f64)
    }
}

/// Lets a log line through at most once per [`LogThrottle::INTERVAL`],
/// counting the ones held back.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(held back since the last line)` when a line may be written now.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < Self::INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}
