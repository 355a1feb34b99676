//! AIMD as in Vector's adaptive request concurrency
//! (`src/sinks/util/adaptive_concurrency/controller.rs`).
//!
//! Time is cut into windows about one RTT long (the long-run mean RTT).
//! Samples only accumulate inside a window; the limit moves when the first
//! sample at or after the window's end arrives, by at most one step:
//! - +1 if the window reached the limit, had no drop, and its mean RTT is
//!   at most the long-run mean (the EWMA of past window means);
//! - otherwise `floor(limit × decrease_ratio)` (at least 1) if it had a drop
//!   or its mean RTT is above `mean + rtt_deviation_scale × deviation`.
//!
//! So several 429s in one window cost one decrease, as in Vector. Like
//! Vector, the first window only seeds the long-run mean (no adjustment) and
//! its samples also count toward the second window's mean.

use super::{check, duration_from_nanos_f64, nanos_f64, InvalidConfig};
use std::time::Duration;

/// Settings of [`Algorithm::Aimd`](super::Algorithm::Aimd); the defaults are
/// Vector's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AimdConfig {
    /// The limit before any adjustment, clamped into `[1, max]` (Vector: 1).
    pub initial_limit: usize,
    /// The limit never rises above this (`maxInFlight`; Vector: 200).
    pub max_limit: usize,
    /// Factor applied on a decrease, in (0, 1) (Vector: 0.9).
    pub decrease_ratio: f64,
    /// Weight of the newest window in the long-run RTT EWMA, in (0, 1)
    /// (Vector: 0.4).
    pub ewma_alpha: f64,
    /// Deviations above the long-run mean RTT tolerated before decreasing,
    /// at least 0 (Vector: 2.5).
    pub rtt_deviation_scale: f64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            initial_limit: 1,
            max_limit: 200,
            decrease_ratio: 0.9,
            ewma_alpha: 0.4,
            rtt_deviation_scale: 2.5,
        }
    }
}

impl AimdConfig {
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.initial_limit == 0 || self.max_limit == 0 {
            return Err(InvalidConfig::ZeroLimit);
        }
        check(
            self.decrease_ratio > 0.0 && self.decrease_ratio < 1.0,
            "decrease_ratio",
            self.decrease_ratio,
            "(0, 1)",
        )?;
        check(
            self.ewma_alpha > 0.0 && self.ewma_alpha < 1.0,
            "ewma_alpha",
            self.ewma_alpha,
            "(0, 1)",
        )?;
        check(
            self.rtt_deviation_scale >= 0.0 && self.rtt_deviation_scale.is_finite(),
            "rtt_deviation_scale",
            self.rtt_deviation_scale,
            "[0, ∞)",
        )
    }
}

/// Long-run RTT: EWMA of window means and of their squared deviation, in ns.
#[derive(Debug, Clone, Copy)]
struct MeanVariance {
    mean: f64,
    variance: f64,
}

/// Plain mean of the RTTs in the current window, in ns.
#[derive(Debug, Clone, Copy, Default)]
struct Mean {
    mean: f64,
    count: u64,
}

impl Mean {
    fn add(&mut self, value: f64) {
        self.count += 1;
        // Incremental form (as Vector) so identical samples stay identical.
        self.mean += (value - self.mean) / self.count as f64;
    }

    fn get(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }
}

/// The AIMD state machine; callers go through
/// [`AdaptiveConcurrency`](super::AdaptiveConcurrency).
#[derive(Debug, Clone)]
pub(crate) struct Aimd {
    config: AimdConfig,
    limit: usize,
    past_rtt: Option<MeanVariance>,
    next_update: Duration,
    window_rtt: Mean,
    had_back_pressure: bool,
}

impl Aimd {
    pub(crate) fn new(config: AimdConfig) -> Aimd {
        Aimd {
            config,
            limit: config.initial_limit.clamp(1, config.max_limit.max(1)),
            past_rtt: None,
            next_update: Duration::ZERO,
            window_rtt: Mean::default(),
            had_back_pressure: false,
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Records one completed request at `now` (`rtt` is `None` for a drop)
    /// and returns the limit. `reached_limit` is asked, only when a window
    /// closes, whether any acquire in it hit the limit (and resets that).
    pub(crate) fn on_sample(
        &mut self,
        now: Duration,
        rtt: Option<Duration>,
        reached_limit: impl FnOnce() -> bool,
    ) -> usize {
        match rtt {
            Some(rtt) => self.window_rtt.add(nanos_f64(rtt)),
            None => self.had_back_pressure = true,
        }
        let current = self.window_rtt.get();
        match self.past_rtt {
            None => {
                if let Some(current) = current {
                    self.past_rtt = Some(MeanVariance {
                        mean: current,
                        variance: 0.0,
                    });
                    self.next_update = now + duration_from_nanos_f64(current);
                }
            }
            Some(mut past) if now >= self.next_update => {
                self.adjust(past, current, reached_limit());
                if let Some(current) = current {
                    past = self.updated_past(past, current);
                    self.past_rtt = Some(past);
                }
                self.next_update = now + duration_from_nanos_f64(past.mean);
                self.window_rtt = Mean::default();
                self.had_back_pressure = false;
            }
            Some(_) => {}
        }
        self.limit
    }

    fn adjust(&mut self, past: MeanVariance, current: Option<f64>, reached_limit: bool) {
        let threshold = past.variance.sqrt() * self.config.rtt_deviation_scale;
        // Grow only on evidence that more concurrency was wanted.
        if self.limit < self.config.max_limit
            && reached_limit
            && !self.had_back_pressure
            && current.is_some_and(|rtt| rtt <= past.mean)
        {
            self.limit += 1;
        } else if self.limit > 1
            && (self.had_back_pressure || current.is_some_and(|rtt| rtt > past.mean + threshold))
        {
            // Rounding down makes every decrease at least 1 while ratio < 1.
            let decreased = (self.limit as f64 * self.config.decrease_ratio) as usize;
            self.limit = decreased.clamp(1, self.limit - 1);
        }
    }

    fn updated_past(&self, past: MeanVariance, current: f64) -> MeanVariance {
        let alpha = self.config.ewma_alpha;
        let difference = current - past.mean;
        let increment = alpha * difference;
        MeanVariance {
            mean: past.mean + increment,
            variance: (1.0 - alpha) * difference.mul_add(increment, past.variance),
        }
    }
}
