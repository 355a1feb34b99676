//! Per-second counts and latency of a storm, in bounded memory.
//!
//! Each event is counted in the second (since the run started) in which it
//! happened: a first attempt or a generator drop in the second it was due,
//! a retry in the second it was sent, an answer in the second it came back.
//! Latency goes into an HDR histogram for the whole run and into one for the
//! current second, which is reduced to percentiles when the second is over;
//! so memory is two histograms plus one small [`Bucket`] per second of the
//! run, fixed when the recorder is made. Events after the last second are
//! counted in the last one (they can only be answers that came back after
//! the run's drain allowance, which the caller sizes to cover them).
//!
//! Not guaranteed: latency percentiles are those of HDR histograms with
//! 3 significant digits (run) and 2 (per second); latencies above one hour
//! are recorded as one hour.

use super::target::{Outcome, Rejection};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;
use std::time::Duration;

/// Longest latency recorded, in microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Most seconds a recorder covers (one day), whatever it is asked for.
pub const MAX_SECONDS: usize = 86_400;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        Latency {
            count: histogram.len(),
            p50_us: histogram.value_at_quantile(0.50),
            p90_us: histogram.value_at_quantile(0.90),
            p99_us: histogram.value_at_quantile(0.99),
            p999_us: histogram.value_at_quantile(0.999),
            max_us: histogram.max(),
        }
    }
}

/// What happened in one second of the run (or, summed, in the whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Bucket {
    /// First attempts sent.
    pub sent: u64,
    /// Arrivals the schedule asked for but did not send because too many
    /// requests were outstanding (open loop only).
    pub dropped_by_generator: u64,
    /// Attempts sent again after a `Retry-After` (extra load).
    pub retries: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 429 answers by `X-Spillway-Reason`.
    pub rejected_bus_full: u64,
    pub rejected_rate_limited: u64,
    pub rejected_shed: u64,
    pub rejected_other: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Other 4xx answers (413, 400 …).
    pub client_errors: u64,
    /// No answer (connect failure, timeout).
    pub errors: u64,
    /// Latency of the answers that came back in this second.
    pub latency: Latency,
}

impl Bucket {
    /// All 429 answers.
    pub fn rejected(&self) -> u64 {
        self.rejected_bus_full
            + self.rejected_rate_limited
            + self.rejected_shed
            + self.rejected_other
    }

    /// Attempts that got an outcome (answered or failed).
    pub fn completed(&self) -> u64 {
        self.accepted + self.rejected() + self.server_errors + self.client_errors + self.errors
    }

    fn add_counts(&mut self, other: &Bucket) {
        self.sent += other.sent;
        self.dropped_by_generator += other.dropped_by_generator;
        self.retries += other.retries;
        self.accepted += other.accepted;
        self.rejected_bus_full += other.rejected_bus_full;
        self.rejected_rate_limited += other.rejected_rate_limited;
        self.rejected_shed += other.rejected_shed;
        self.rejected_other += other.rejected_other;
        self.server_errors += other.server_errors;
        self.client_errors += other.client_errors;
        self.errors += other.errors;
    }
}

/// Everything recorded, once the run is over.
#[derive(Debug, Clone, Serialize)]
pub struct Recording {
    /// One bucket per second of the run.
    pub seconds: Vec<Bucket>,
    /// The sum of the buckets, with the latency of the whole run.
    pub totals: Bucket,
}

/// Collects a storm's outcomes; shared by every task of the run.
pub struct Recorder {
    inner: Mutex<Inner>,
    /// Per-event facts (accepted ids), when the run checks for loss.
    tracker: Option<std::sync::Arc<super::tracker::Tracker>>,
}

struct Inner {
    seconds: Vec<Bucket>,
    totals: Bucket,
    run: Histogram<u64>,
    /// The second whose latencies `current` holds.
    current_second: usize,
    current: Histogram<u64>,
}

impl Recorder {
    /// A recorder for `seconds` seconds (at least 1, at most [`MAX_SECONDS`]).
    pub fn new(seconds: usize) -> Recorder {
        let seconds = seconds.clamp(1, MAX_SECONDS);
        Recorder {
            inner: Mutex::new(Inner {
                seconds: vec![Bucket::default(); seconds],
                totals: Bucket::default(),
                run: histogram(3),
                current_second: 0,
                current: histogram(2),
            }),
            tracker: None,
        }
    }

    /// Also records which event ids were accepted into `tracker`.
    pub fn with_tracker(mut self, tracker: std::sync::Arc<super::tracker::Tracker>) -> Recorder {
        self.tracker = Some(tracker);
        self
    }

    /// The outcome of an attempt at event `id`, for the tracker (if any).
    pub fn track(&self, id: u64, outcome: &Outcome) {
        if let Some(tracker) = &self.tracker {
            tracker.observe(id, outcome);
        }
    }

    /// A first attempt due at `at` was sent.
    pub fn sent(&self, at: Duration) {
        self.count(at, |b| b.sent += 1);
    }

    /// An arrival due at `at` was not sent: too many requests outstanding.
    pub fn dropped_by_generator(&self, at: Duration) {
        self.count(at, |b| b.dropped_by_generator += 1);
    }

    /// A retry was sent at `at`.
    pub fn retried(&self, at: Duration) {
        self.count(at, |b| b.retries += 1);
    }

    /// An attempt ended at `at` with `outcome`, `latency` after it started.
    pub fn finished(&self, at: Duration, outcome: &Outcome, latency: Duration) {
        let mut inner = self.inner.lock();
        let index = inner.index(at);
        let count = |b: &mut Bucket| match outcome {
            Outcome::Accepted => b.accepted += 1,
            Outcome::Rejected { reason, .. } => match reason {
                Rejection::BusFull => b.rejected_bus_full += 1,
                Rejection::RateLimited => b.rejected_rate_limited += 1,
                Rejection::Shed => b.rejected_shed += 1,
                Rejection::Other => b.rejected_other += 1,
            },
            Outcome::ServerError { .. } => b.server_errors += 1,
            Outcome::ClientError { .. } => b.client_errors += 1,
            Outcome::Failed => b.errors += 1,
        };
        count(&mut inner.seconds[index]);
        count(&mut inner.totals);
        if outcome.answered() {
            if index > inner.current_second {
                inner.close_current_second();
                inner.current_second = index;
            }
            let micros = (latency.as_micros().min(u128::from(MAX_LATENCY_US)) as u64).max(1);
            // In bounds by construction: `micros` is clamped to the range.
            let _ = inner.run.record(micros);
            let _ = inner.current.record(micros);
        }
    }

    /// The counts so far, for a progress display.
    pub fn totals(&self) -> Bucket {
        self.inner.lock().totals
    }

    /// Closes the last second and hands over everything recorded.
    pub fn finish(&self) -> Recording {
        let mut inner = self.inner.lock();
        inner.close_current_second();
        let mut totals = Bucket::default();
        for bucket in &inner.seconds {
            totals.add_counts(bucket);
        }
        totals.latency = Latency::of(&inner.run);
        Recording {
            seconds: inner.seconds.clone(),
            totals,
        }
    }

    fn count(&self, at: Duration, what: impl Fn(&mut Bucket)) {
        let mut inner = self.inner.lock();
        let index = inner.index(at);
        what(&mut inner.seconds[index]);
        what(&mut inner.totals);
    }
}

impl Inner {
    fn index(&self, at: Duration) -> usize {
        (at.as_secs() as usize).min(self.seconds.len() - 1)
    }

    fn close_current_second(&mut self) {
        if !self.current.is_empty() {
            let second = self.current_second;
            self.seconds[second].latency = Latency::of(&self.current);
            self.current.reset();
        }
    }
}

fn histogram(significant_digits: u8) -> Histogram<u64> {
    // Fixed bounds: sizing never depends on what is recorded.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, significant_digits)
        .unwrap_or_else(|_| unreachable!("1 ≤ 1h, digits ≤ 5"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn bus_full() -> Outcome {
        Outcome::Rejected {
            reason: Rejection::BusFull,
            retry_after: Some(Duration::from_secs(1)),
        }
    }

    #[test]
    fn events_land_in_the_second_they_happened() {
        let r = Recorder::new(3);
        r.sent(ms(0));
        r.sent(ms(999));
        r.sent(ms(1000));
        r.dropped_by_generator(ms(1500));
        r.retried(ms(2100));
        r.finished(ms(10), &Outcome::Accepted, ms(10));
        r.finished(ms(1001), &bus_full(), ms(2));
        r.finished(
            ms(1002),
            &Outcome::ServerError {
                status: 503,
                retry_after: None,
            },
            ms(2),
        );
        r.finished(ms(2500), &Outcome::Failed, ms(5000));
        r.finished(ms(2600), &Outcome::ClientError { status: 413 }, ms(1));
        // Past the end: counted in the last second.
        r.finished(ms(9000), &Outcome::Accepted, ms(3));
        let rec = r.finish();
        let s = &rec.seconds;
        assert_eq!((s[0].sent, s[1].sent, s[2].sent), (2, 1, 0));
        assert_eq!(s[1].dropped_by_generator, 1);
        assert_eq!(s[2].retries, 1);
        assert_eq!((s[0].accepted, s[1].accepted, s[2].accepted), (1, 0, 1));
        assert_eq!((s[1].rejected_bus_full, s[1].rejected()), (1, 1));
        assert_eq!(s[1].server_errors, 1);
        assert_eq!((s[2].errors, s[2].client_errors), (1, 1));
        assert_eq!(rec.totals.sent, 3);
        assert_eq!(rec.totals.completed(), 6);
        assert_eq!(rec.totals, {
            let mut t = Bucket::default();
            for b in s {
                t.add_counts(b);
            }
            t.latency = rec.totals.latency;
            t
        });
        assert_eq!(r.totals().accepted, 2);
    }

    #[test]
    fn reasons_are_counted_apart() {
        let r = Recorder::new(1);
        for reason in [
            Rejection::BusFull,
            Rejection::RateLimited,
            Rejection::RateLimited,
            Rejection::Shed,
            Rejection::Other,
        ] {
            let outcome = Outcome::Rejected {
                reason,
                retry_after: None,
            };
            r.finished(ms(1), &outcome, ms(1));
        }
        let t = r.finish().totals;
        assert_eq!(
            (
                t.rejected_bus_full,
                t.rejected_rate_limited,
                t.rejected_shed,
                t.rejected_other
            ),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn latency_percentiles_per_second_and_for_the_run() {
        let r = Recorder::new(2);
        // Second 0: 1..=100 ms; second 1: ten answers of 500 ms.
        for i in 1..=100 {
            r.finished(ms(i), &Outcome::Accepted, ms(i));
        }
        for i in 0..10 {
            r.finished(ms(1000 + i), &Outcome::Accepted, ms(500));
        }
        // Failures carry no latency.
        r.finished(ms(1500), &Outcome::Failed, ms(30_000));
        let rec = r.finish();
        let first = rec.seconds[0].latency;
        assert_eq!(first.count, 100);
        // 2 significant digits: within 1% of the exact value.
        assert!((49_500..=50_500).contains(&first.p50_us), "{first:?}");
        assert!((98_000..=100_000).contains(&first.p99_us), "{first:?}");
        let second = rec.seconds[1].latency;
        assert_eq!(second.count, 10);
        assert!((495_000..=505_000).contains(&second.p50_us), "{second:?}");
        let run = rec.totals.latency;
        assert_eq!(run.count, 110);
        assert!((499_000..=501_000).contains(&run.max_us), "{run:?}");
        // The 99th of 110 values is 99 ms.
        assert!((99_000..=99_100).contains(&run.p90_us), "{run:?}");
    }

    #[test]
    fn size_is_fixed_and_bounded() {
        assert_eq!(Recorder::new(0).finish().seconds.len(), 1);
        assert_eq!(
            Recorder::new(usize::MAX).finish().seconds.len(),
            MAX_SECONDS
        );
    }
}
