//! The last few minutes of status documents, so the dashboard shows charts
//! the moment it opens instead of starting empty.
//!
//! A sampler ([`run`]) takes one [`Status`] every [`INTERVAL`] into a ring
//! of at most [`CAPACITY`] documents; when full, the oldest is dropped.
//! `GET /api/v1/status/history` returns the ring oldest first. Memory is
//! bounded by `CAPACITY` documents (a few KiB each with a handful of
//! triggers). Samples are taken on a timer, not on requests, so the history
//! is the same whoever is watching; a sampling tick missed while the
//! process was busy is skipped, not made up (the gap shows in
//! `uptime_seconds`).

use super::status::Status;
use super::AdminState;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Time between two samples.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at [`INTERVAL`].
pub const CAPACITY: usize = 300;

/// A bounded ring of samples, oldest first.
pub struct History<T = Status> {
    samples: Mutex<VecDeque<T>>,
    capacity: usize,
}

impl<T: Clone> History<T> {
    /// An empty ring that keeps at most `capacity` (at least one) samples.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        History {
            samples: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        }
    }

    /// Adds `sample`, dropping the oldest when the ring is full.
    pub fn push(&self, sample: T) {
        let mut samples = self.samples.lock();
        if samples.len() == self.capacity {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Every sample held, oldest first.
    pub fn samples(&self) -> Vec<T> {
        self.samples.lock().iter().cloned().collect()
    }
}

impl Default for History<Status> {
    fn default() -> Self {
        History::new(CAPACITY)
    }
}

/// Samples `state` every [`INTERVAL`] until `stop` is cancelled.
pub async fn run(state: Arc<AdminState>, stop: CancellationToken) {
    sample_every(INTERVAL, &state.history, || super::snapshot(&state), stop).await;
}

/// Pushes `take()` into `history` now and then every `interval`, until
/// `stop` is cancelled.
async fn sample_every<T: Clone>(
    interval: Duration,
    history: &History<T>,
    mut take: impl FnMut() -> T,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => history.push(take()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_drops_the_oldest_sample() {
        let ring = History::new(3);
        for i in 0..5 {
            ring.push(i);
        }
        assert_eq!(ring.samples(), [2, 3, 4]);
    }

    #[test]
    fn a_ring_holds_at_least_one_sample() {
        let ring = History::new(0);
        ring.push(1);
        ring.push(2);
        assert_eq!(ring.samples(), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sampler_takes_one_sample_per_interval_until_stopped() {
        let ring = Arc::new(History::new(CAPACITY));
        let stop = CancellationToken::new();
        let task = {
            let ring = Arc::clone(&ring);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut n = 0;
                sample_every(
                    INTERVAL,
                    &ring,
                    || {
                        n += 1;
                        n
                    },
                    stop,
                )
                .await;
            })
        };
        // The first sample is immediate, then one per interval: 11 after
        // ten and a half intervals.
        tokio::time::sleep(INTERVAL * 10 + INTERVAL / 2).await;
        assert_eq!(ring.samples(), (1..=11).collect::<Vec<_>>());
        stop.cancel();
        task.await.expect("sampler task");
        tokio::time::sleep(INTERVAL * 5).await;
        assert_eq!(ring.samples().len(), 11, "no samples after stop");
    }
}
