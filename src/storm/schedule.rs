//! Open loop: requests start when the profile says, whether or not the
//! target keeps up, so overload is real (the arrival rate does not drop
//! when the target slows down, unlike a closed loop).
//!
//! Guarantees: arrival `n` is sent at `start + profile.arrival_time(n)` on
//! tokio's clock (under paused time, exactly then; in real time, as soon
//! after as the runtime gets to it, catching up without skipping); arrivals
//! due at or after the run's duration are not sent. At most
//! `max_outstanding` requests are in flight or waiting to retry; an arrival
//! due while that many are outstanding is not sent and is counted as
//! `dropped_by_generator` in its second, so a slow target can never make
//! the generator queue without bound. `run` returns once every outstanding
//! request has finished (each is bounded by the request timeout, and
//! retries are only sent inside the run).
//!
//! Not guaranteed: that a real clock keeps up with very high rates; a late
//! send still counts in the second it was due, and its latency counts from
//! when it was due.

use super::deliver::{deliver, Window};
use super::profile::Profile;
use super::recorder::Recorder;
use super::target::Target;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Most outstanding requests an open loop may be asked to allow.
pub const MAX_OUTSTANDING: usize = 1_000_000;

/// An open-loop run; see the module docs.
#[derive(Debug, Clone)]
pub struct OpenLoop {
    pub profile: Profile,
    pub duration: Duration,
    /// Clamped to 1..=[`MAX_OUTSTANDING`].
    pub max_outstanding: usize,
    pub honor_retry_after: bool,
    /// Retries per event at most (`u32::MAX`: until the run ends).
    pub max_retries: u32,
}

impl OpenLoop {
    /// Sends the profile's arrivals from `window.start` until `duration`
    /// has passed, then waits for the outstanding requests.
    pub async fn run<T: Target>(&self, target: Arc<T>, recorder: Arc<Recorder>, window: Window) {
        let max = self.max_outstanding.clamp(1, MAX_OUTSTANDING);
        let outstanding = Arc::new(Semaphore::new(max));
        let mut n: u64 = 0;
        while let Some(offset) = self.profile.arrival_time(n) {
            if offset >= self.duration {
                break;
            }
            let due = window.start + offset;
            tokio::time::sleep_until(due).await;
            match outstanding.clone().try_acquire_owned() {
                Ok(permit) => {
                    recorder.sent(offset);
                    let target = target.clone();
                    let recorder = recorder.clone();
                    let (honor, max_retries) = (self.honor_retry_after, self.max_retries);
                    tokio::spawn(async move {
                        deliver(&*target, &recorder, window, n, due, honor, max_retries).await;
                        drop(permit);
                    });
                }
                Err(_) => recorder.dropped_by_generator(offset),
            }
            n += 1;
        }
        // Every permit back means every delivery has ended. `max` fits in
        // u32 (MAX_OUTSTANDING does); the semaphore is never closed.
        let _ = outstanding.acquire_many(max as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::target::{Outcome, Rejection, Request};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::time::Instant;

    /// Answers after `latency`; the first `reject_first` attempts of each
    /// event get 429 bus_full with `Retry-After: 1`.
    struct Fake {
        latency: Duration,
        reject_first: u32,
        calls: AtomicU64,
    }

    impl Fake {
        fn new(latency: Duration, reject_first: u32) -> Arc<Fake> {
            Arc::new(Fake {
                latency,
                reject_first,
                calls: AtomicU64::new(0),
            })
        }
    }

    impl Target for Fake {
        async fn send(&self, request: Request) -> Outcome {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.latency).await;
            if request.attempt < self.reject_first {
                Outcome::Rejected {
                    reason: Rejection::BusFull,
                    retry_after: Some(Duration::from_secs(1)),
                }
            } else {
                Outcome::Accepted
            }
        }
    }

    async fn storm(
        profile: Profile,
        secs: u64,
        max_outstanding: usize,
        fake: Arc<Fake>,
        honor: bool,
    ) -> crate::storm::recorder::Recording {
        let recorder = Arc::new(Recorder::new(secs as usize + 2));
        let open = OpenLoop {
            profile,
            duration: Duration::from_secs(secs),
            max_outstanding,
            honor_retry_after: honor,
            max_retries: u32::MAX,
        };
        let window = Window::new(Instant::now(), open.duration);
        open.run(fake, recorder.clone(), window).await;
        recorder.finish()
    }

    fn sent_per_second(rec: &crate::storm::recorder::Recording, secs: usize) -> Vec<u64> {
        rec.seconds[..secs].iter().map(|b| b.sent).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn constant_rate_sends_exactly_the_rate_each_second() {
        let fake = Fake::new(Duration::from_millis(5), 0);
        let rec = storm(
            Profile::constant(100.0).unwrap(),
            10,
            100,
            fake.clone(),
            false,
        )
        .await;
        assert_eq!(rec.totals.sent, 1000);
        assert_eq!(sent_per_second(&rec, 10), vec![100; 10]);
        assert_eq!(rec.totals.accepted, 1000);
        assert_eq!(rec.totals.dropped_by_generator, 0);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1000);
        // Every answer took the fake's 5 ms on the paused clock.
        assert!((5000..=5010).contains(&rec.totals.latency.max_us));
    }

    #[tokio::test(start_paused = true)]
    async fn ramp_sends_the_integral_each_second() {
        let fake = Fake::new(Duration::from_millis(1), 0);
        let rec = storm(
            Profile::ramp(10.0, 110.0, Duration::from_secs(10)).unwrap(),
            10,
            100,
            fake,
            false,
        )
        .await;
        let expected: Vec<u64> = (0..10).map(|k| 15 + 10 * k).collect();
        assert_eq!(sent_per_second(&rec, 10), expected);
        assert_eq!(rec.totals.sent, 600);
    }

    #[tokio::test(start_paused = true)]
    async fn spike_sends_exact_counts_per_phase() {
        let fake = Fake::new(Duration::from_millis(1), 0);
        let profile =
            Profile::spike(10.0, 100.0, Duration::from_secs(2), Duration::from_secs(1)).unwrap();
        let rec = storm(profile, 5, 100, fake, false).await;
        assert_eq!(sent_per_second(&rec, 5), vec![10, 10, 100, 10, 10]);
        assert_eq!(rec.totals.accepted, 140);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_target_makes_the_generator_drop_not_queue() {
        // 100/s for 2 s against answers that take longer than the run, at
        // most 50 outstanding: the first 50 arrivals are sent, the other 150
        // are dropped by the generator.
        let fake = Fake::new(Duration::from_secs(10), 0);
        let rec = storm(
            Profile::constant(100.0).unwrap(),
            2,
            50,
            fake.clone(),
            false,
        )
        .await;
        let s = &rec.seconds;
        assert_eq!((s[0].sent, s[0].dropped_by_generator), (50, 50));
        assert_eq!((s[1].sent, s[1].dropped_by_generator), (0, 100));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 50);
        // `run` waited for the outstanding answers.
        assert_eq!(rec.totals.accepted, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_as_extra_load_inside_the_run() {
        // Every event is refused once, with Retry-After: 1.
        let fake = Fake::new(Duration::ZERO, 1);
        let rec = storm(Profile::constant(10.0).unwrap(), 3, 100, fake.clone(), true).await;
        let s = &rec.seconds;
        assert_eq!(sent_per_second(&rec, 3), vec![10, 10, 10]);
        // Retries of seconds 0 and 1 land a second later; those of second 2
        // would fall after the end and are not sent.
        assert_eq!((s[0].retries, s[1].retries, s[2].retries), (0, 10, 10));
        assert_eq!(rec.totals.rejected_bus_full, 30);
        assert_eq!(rec.totals.accepted, 20);
        assert_eq!(fake.calls.load(Ordering::SeqCst), 50);

        // Ignored, nothing is sent again.
        let fake = Fake::new(Duration::ZERO, 1);
        let rec = storm(
            Profile::constant(10.0).unwrap(),
            3,
            100,
            fake.clone(),
            false,
        )
        .await;
        assert_eq!((rec.totals.retries, rec.totals.rejected_bus_full), (0, 30));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn an_event_is_given_up_after_max_retries() {
        // Refused three times each; the client gives up after two retries.
        let fake = Fake::new(Duration::ZERO, 3);
        let recorder = Arc::new(Recorder::new(12));
        let open = OpenLoop {
            profile: Profile::constant(10.0).unwrap(),
            duration: Duration::from_secs(10),
            max_outstanding: 100,
            honor_retry_after: true,
            max_retries: 2,
        };
        let window = Window::new(Instant::now(), open.duration);
        open.run(fake.clone(), recorder.clone(), window).await;
        let t = recorder.finish().totals;
        // Events of seconds 0-7 get both retries inside the run; those of
        // second 8 one (the second would fall after the end), of 9 none.
        assert_eq!((t.sent, t.retries), (100, 80 * 2 + 10));
        assert_eq!((t.accepted, t.rejected_bus_full), (0, 100 + 170));
        assert_eq!(fake.calls.load(Ordering::SeqCst), 270);
    }
}
