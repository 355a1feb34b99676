//! At most one log line per interval for something that can happen once per
//! event: the first occurrence is logged at once, later ones are counted
//! into the next line, so a storm cannot flood the log (DESIGN: never a log
//! line per message under load).

use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    /// When the last line was written and how many were skipped since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    pub fn new(interval: Duration) -> Self {
        LogThrottle {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(skipped since the last line)` when a line should be written
    /// now; `None` (and counted) otherwise.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                state.0 = Some(now);
                Some(std::mem::take(&mut state.1))
            }
        }
    }

    /// Records one occurrence; `Some(occurrences the line to write now
    /// stands for, this one included)`, or `None` when it is only counted.
    pub fn occurred(&self) -> Option<u64> {
        self.admit().map(|skipped| skipped + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_line_per_interval_with_the_skipped_count() {
        let throttle = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(throttle.admit(), Some(2));
        assert_eq!(throttle.admit(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn occurrences_are_counted_into_the_next_line() {
        let warn = LogThrottle::new(Duration::from_secs(10));
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
