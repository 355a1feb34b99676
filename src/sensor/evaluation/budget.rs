//! The time one evaluation may take, as the evaluator sees it.
//!
//! A [`Budget`] is handed to the Lua or jq code running an evaluation on a
//! pool thread. It answers one question cheaply and often: must this
//! evaluation stop now? It must once its wall-clock deadline has passed or
//! once the pool cancelled it (the caller stopped waiting). Evaluators check
//! it cooperatively (the Lua instruction hook, jq's step hook); code that
//! never checks it (a C function, one long native jq operation) is what the
//! pool's thread abandonment is for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// When one evaluation must stop, and a flag to stop it earlier.
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: Instant,
    timeout: Duration,
    cancelled: Arc<AtomicBool>,
}

impl Budget {
    /// A budget that runs out `timeout` from now.
    pub fn starting_now(timeout: Duration) -> Self {
        Budget::until(Instant::now() + timeout, timeout, Arc::default())
    }

    /// A budget that runs out at `deadline` (which is `timeout` after the
    /// evaluation was asked for) or when `cancelled` is set.
    pub(super) fn until(deadline: Instant, timeout: Duration, cancelled: Arc<AtomicBool>) -> Self {
        Budget {
            deadline,
            timeout,
            cancelled,
        }
    }

    /// Whether the evaluation must stop: the deadline passed or it was
    /// cancelled. Reads the clock once.
    pub fn exhausted(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// The configured time for one evaluation (for error messages).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_exhausts_a_budget_before_its_deadline() {
        let cancelled = Arc::new(AtomicBool::new(false));
        let hour = Duration::from_secs(3600);
        let budget = Budget::until(Instant::now() + hour, hour, Arc::clone(&cancelled));
        assert!(!budget.exhausted());
        cancelled.store(true, Ordering::Relaxed);
        assert!(budget.exhausted());
    }

    #[test]
    fn a_past_deadline_is_exhausted() {
        let budget = Budget::starting_now(Duration::ZERO);
        assert!(budget.exhausted());
        assert_eq!(budget.timeout(), Duration::ZERO);
    }
}
