//! Time as the primitives see it: a [`Clock`] returns the time elapsed since
//! the clock's own origin, so every primitive works the same on real time,
//! on tokio's (pausable) time and on a hand-driven [`FakeClock`].
//!
//! Guarantees: every clock here is monotonic (never goes back) and cheap to
//! clone; clones of one clock share its origin (and, for [`FakeClock`], its
//! current time). A primitive that needs to *wait* (the `async` helpers)
//! sleeps on tokio's timer, so async tests pair [`TokioClock`] with
//! `tokio::time::pause()`; synchronous tests drive a [`FakeClock`] by hand and
//! assert exact answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// `d` in whole nanoseconds, saturating at `u64::MAX` (~584 years).
pub(crate) fn saturating_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `nanos` as a `Duration`, saturating at `u64::MAX` nanoseconds.
pub(crate) fn duration_from_nanos(nanos: u128) -> Duration {
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// A monotonic source of time, measured from an origin fixed at creation.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Time elapsed since this clock's origin.
    fn now(&self) -> Duration;
}

/// Real monotonic time (`std::time::Instant`); the cheapest clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: std::time::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// tokio's time (`tokio::time::Instant`): real time in production, and
/// paused/auto-advanced time under `tokio::time::pause()`, so it agrees with
/// `tokio::time::sleep` in every case. The clock the pipeline uses.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now (tokio time).
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The tokio instant `at` (a reading of this clock) corresponds to.
    pub fn instant_at(&self, at: Duration) -> tokio::time::Instant {
        self.origin + at
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Clone, Default)]
pub struct FakeClock {
    nanos: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock reading zero.
    pub fn new() -> Self {
        FakeClock::default()
    }

    /// Moves time forward by `by` (saturating after ~584 years).
    pub fn advance(&self, by: Duration) {
        let by = saturating_nanos(by);
        // fetch_update cannot fail with a closure that always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some(now.saturating_add(by))
            });
    }

    /// Moves time forward to `at` if it is later than now.
    pub fn advance_to(&self, at: Duration) {
        let at = saturating_nanos(at);
        self.nanos.fetch_max(at, Ordering::AcqRel);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::Acquire))
    }
}

/// Adapts any [`Clock`] to governor's clock trait.
///
/// [`GovernorClock::pinned`] runs governor with one reading taken
/// beforehand, so a caller that needs "now" too (to turn governor's
/// earliest-possible instant into a wait) reads the clock once, not twice:
/// on this machine a clock read costs about as much as the whole GCRA step.
#[derive(Debug, Clone)]
pub(crate) struct GovernorClock<C>(pub(crate) C);

thread_local! {
    /// The reading [`GovernorClock::pinned`] hands to governor on this thread.
    static PINNED_NOW: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

impl<C: Clock> GovernorClock<C> {
    /// Runs `f(now)` with governor seeing exactly `now` as the time.
    pub(crate) fn pinned<T>(&self, f: impl FnOnce(Duration) -> T) -> T {
        let now = self.0.now();
        PINNED_NOW.with(|pinned| {
            let previous = pinned.replace(Some(now));
            let result = f(now);
            pinned.set(previous);
            result
        })
    }
}

impl<C: Clock> governor::clock::Clock for GovernorClock<C> {
    type Instant = Duration;

    fn now(&self) -> Duration {
        PINNED_NOW
            .with(|pinned| pinned.get())
            .unwrap_or_else(|| self.0.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_clones_share_time_and_never_go_back() {
        let clock = FakeClock::new();
        let other = clock.clone();
        clock.advance(Duration::from_millis(1500));
        assert_eq!(other.now(), Duration::from_millis(1500));
        other.advance_to(Duration::from_secs(1));
        assert_eq!(clock.now(), Duration::from_millis(1500));
        other.advance_to(Duration::from_secs(2));
        assert_eq!(clock.now(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(clock.now(), Duration::from_secs(6));
    }
}
