//! Closed loop: a fixed number of workers, each sending its next request
//! only after the previous one was answered, so the offered load falls when
//! the target slows down (what most benchmarks do; the open loop in
//! `schedule` is the one that keeps the pressure on).
//!
//! Guarantees: at most `workers` requests are outstanding; no worker starts
//! a new event once the run's duration has passed; with
//! `--honor-retry-after` a worker retries its event (same id) after the
//! target's `Retry-After` before moving on. Not guaranteed: any rate.

use super::deliver::{deliver, Window};
use super::recorder::Recorder;
use super::target::Target;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Most workers a closed loop may be asked for.
pub const MAX_WORKERS: usize = 100_000;

/// A closed-loop run; see the module docs.
#[derive(Debug, Clone)]
pub struct ClosedLoop {
    /// Clamped to 1..=[`MAX_WORKERS`].
    pub workers: usize,
    pub honor_retry_after: bool,
    /// Retries per event at most (`u32::MAX`: until the run ends).
    pub max_retries: u32,
}

impl ClosedLoop {
    /// Runs the workers until the window ends and their last events finish.
    pub async fn run<T: Target>(&self, target: Arc<T>, recorder: Arc<Recorder>, window: Window) {
        let next_id = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..self.workers.clamp(1, MAX_WORKERS) {
            let target = target.clone();
            let recorder = recorder.clone();
            let next_id = next_id.clone();
            let (honor, max_retries) = (self.honor_retry_after, self.max_retries);
            workers.spawn(async move {
                loop {
                    let now = Instant::now();
                    if now >= window.end {
                        return;
                    }
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    recorder.sent(window.elapsed(now));
                    deliver(&*target, &recorder, window, id, now, honor, max_retries).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storm::target::{Outcome, Request};
    use std::time::Duration;

    /// Answers every request after 10 ms.
    struct TenMillis;

    impl Target for TenMillis {
        async fn send(&self, _: Request) -> Outcome {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Outcome::Accepted
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_worker_waits_for_its_answer() {
        let recorder = Arc::new(Recorder::new(3));
        let closed = ClosedLoop {
            workers: 4,
            honor_retry_after: false,
            max_retries: u32::MAX,
        };
        let window = Window::new(Instant::now(), Duration::from_secs(2));
        closed
            .run(Arc::new(TenMillis), recorder.clone(), window)
            .await;
        let rec = recorder.finish();
        // 4 workers × 100 answers of 10 ms per second.
        assert_eq!(rec.seconds[0].sent, 400);
        assert_eq!(rec.seconds[1].sent, 400);
        assert_eq!(rec.totals.accepted, 800);
        assert_eq!(rec.totals.dropped_by_generator, 0);
    }
}
