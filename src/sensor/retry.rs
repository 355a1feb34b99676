//! Argo `retryStrategy` (a Kubernetes-style Backoff) as a pure policy.
//!
//! `steps` is the total number of attempts (Argo/k8s semantics; default 1,
//! i.e. no retry). The wait after failed attempt `n` (1-based) is
//! `duration × factor^(n-1)`, stretched by up to `jitter` (a fraction), capped
//! at [`MAX_DELAY`]. A downstream `Retry-After` longer than that wins.

use crate::config::sensor::Backoff;
use crate::triggers::TriggerError;
use std::time::Duration;

/// No single retry wait is longer than this.
pub const MAX_DELAY: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub steps: u32,
    pub duration: Duration,
    pub factor: f64,
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// One attempt, no retry (Argo's behaviour without `retryStrategy`).
    fn default() -> Self {
        RetryPolicy {
            steps: 1,
            duration: Duration::from_secs(1),
            factor: 1.0,
            jitter: 0.0,
        }
    }
}

impl From<&Backoff> for RetryPolicy {
    fn from(backoff: &Backoff) -> Self {
        let default = RetryPolicy::default();
        RetryPolicy {
            steps: backoff.steps.unwrap_or(default.steps).max(1),
            duration: backoff.duration.map_or(default.duration, |d| d.0),
            factor: backoff
                .factor
                .as_ref()
                .map_or(default.factor, |f| f.value)
                .max(1.0),
            jitter: backoff
                .jitter
                .as_ref()
                .map_or(0.0, |j| j.value)
                .clamp(0.0, 1.0),
        }
    }
}

impl RetryPolicy {
    /// The wait before the next attempt after attempt `attempt` failed, or
    /// `None` when the attempts are used up.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if attempt >= self.steps {
            return None;
        }
        Some(self.redelivery_delay(attempt, retry_after))
    }

    /// The wait before retrying after attempt `attempt` failed with `err`:
    /// `None` for a permanent failure or when the attempts are used up.
    pub fn delay_for(&self, attempt: u32, err: &TriggerError) -> Option<Duration> {
        match err {
            TriggerError::Retryable { retry_after, .. } => self.delay_after(attempt, *retry_after),
            TriggerError::Permanent { .. } => None,
        }
    }

    /// The wait after failed attempt `attempt` with no regard to `steps`:
    /// the backoff continued (capped at [`MAX_DELAY`]), or the downstream's
    /// `Retry-After` when longer. Used to send a rejected event back to the
    /// bus (`onReject: error`) once the steps are used up.
    pub fn redelivery_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.duration.as_secs_f64() * self.factor.powi(exponent);
        let stretched = base * (1.0 + self.jitter * fastrand::f64());
        let backoff = Duration::from_secs_f64(stretched.min(MAX_DELAY.as_secs_f64()));
        retry_after.map_or(backoff, |r| r.max(backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_without_jitter() {
        let policy = RetryPolicy {
            steps: 4,
            duration: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        };
        assert_eq!(policy.delay_after(1, None), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay_after(2, None), Some(Duration::from_secs(2)));
        assert_eq!(policy.delay_after(3, None), Some(Duration::from_secs(4)));
        assert_eq!(policy.delay_after(4, None), None);
        assert_eq!(
            policy.delay_after(1, Some(Duration::from_secs(9))),
            Some(Duration::from_secs(9))
        );
    }

    #[test]
    fn default_does_not_retry() {
        assert_eq!(RetryPolicy::default().delay_after(1, None), None);
    }

    #[test]
    fn redelivery_continues_the_backoff_up_to_the_cap() {
        let policy = RetryPolicy {
            steps: 2,
            duration: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
        };
        assert_eq!(policy.redelivery_delay(2, None), Duration::from_secs(2));
        assert_eq!(policy.redelivery_delay(5, None), Duration::from_secs(16));
        assert_eq!(policy.redelivery_delay(40, None), MAX_DELAY);
        assert_eq!(
            policy.redelivery_delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn jitter_stays_in_range_and_cap_holds() {
        let policy = RetryPolicy {
            steps: 100,
            duration: Duration::from_secs(1),
            factor: 10.0,
            jitter: 0.5,
        };
        let d = policy.delay_after(1, None).unwrap();
        assert!(d >= Duration::from_secs(1) && d <= Duration::from_millis(1500));
        assert_eq!(policy.delay_after(50, None), Some(MAX_DELAY));
    }
}
