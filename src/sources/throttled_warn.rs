//! A warning that is logged at most once per interval, with the number of
//! occurrences it stands for, so a storm of drops gives a few log lines,
//! not one per event (DESIGN: never a log line per message under load).
//!
//! Guarantees: every occurrence is counted; the first one is logged at once,
//! later ones at most once per `every`, each line saying how many
//! occurrences happened since the previous line. Time is tokio's, so tests
//! with paused time see exact counts.

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Rate-limited `tracing::warn!` lines for one kind of occurrence.
#[derive(Debug)]
pub struct ThrottledWarn {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl ThrottledWarn {
    pub fn new(every: Duration) -> Self {
        ThrottledWarn {
            every,
            state: Mutex::new(State::default()),
        }
    }

    /// Records one occurrence; returns how many occurrences the line to log
    /// now stands for, or `None` when this one is only counted.
    pub fn occurred(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        state.unlogged += 1;
        let due = state
            .last_logged
            .is_none_or(|last| now.duration_since(last) >= self.every);
        if !due {
            return None;
        }
        state.last_logged = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn first_is_logged_then_once_per_interval_with_the_count() {
        let warn = ThrottledWarn::new(Duration::from_secs(10));
        assert_eq!(warn.occurred(), Some(1));
        let mut logged = Vec::new();
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(1)).await;
            if let Some(n) = warn.occurred() {
                logged.push(n);
            }
        }
        // 30 more occurrences, one per second: lines at t=10, 20, 30.
        assert_eq!(logged, vec![10, 10, 10]);
    }
}
