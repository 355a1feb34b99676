//! Gradient2 as in Netflix concurrency-limits (`Gradient2Limit.java`).
//!
//! Every successful sample updates a long-run RTT (`long`: the plain mean of
//! the first 10 samples, then an EWMA with factor `2 / (long_window + 1)`)
//! and then, unless the limiter is app-limited (fewer than `limit / 2` in
//! flight when the request was admitted), the fractional limit `L`:
//!
//! ```text
//! gradient = clamp(rtt_tolerance × long / rtt, 0.5, 1.0)
//! L ← L × (1 − smoothing) + (L × gradient + queue_size) × smoothing
//! L ← clamp(L, min_limit, max_limit);   limit = floor(L)
//! ```
//!
//! With a steady RTT the gradient is 1 and `L` grows by
//! `queue_size × smoothing` (0.8 with the defaults) per sample up to the
//! maximum. When an RTT exceeds `long` by more than the tolerance, `L`
//! shrinks; the gradient floor of 0.5 bounds one sample's cut. When `long`
//! is more than twice the sample's RTT (latency back to normal after a long
//! overload), `long` decays by 5% per sample so the limit can recover.
//!
//! A drop (see the module above for why this differs from Netflix) applies
//! the floor gradient without the queue allowance:
//! `L ← L × (1 − smoothing / 2)`.

use super::{check, nanos_f64, InvalidConfig};
use std::time::Duration;

/// Samples averaged plainly before the long-run RTT becomes an EWMA
/// (Netflix's `ExpAvgMeasurement` warm-up).
const WARMUP_SAMPLES: u32 = 10;

/// Settings of [`Algorithm::Gradient2`](super::Algorithm::Gradient2); the
/// defaults are Netflix's except `min_limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradient2Config {
    /// The limit before any sample, clamped into `[min, max]` (Netflix: 20).
    pub initial_limit: usize,
    /// The limit never falls below this (Netflix: 20; here 1, see module).
    pub min_limit: usize,
    /// The limit never rises above this (`maxInFlight`; Netflix: 200).
    pub max_limit: usize,
    /// Weight of each new estimate, in (0, 1] (Netflix: 0.2).
    pub smoothing: f64,
    /// RTT growth over the long-run RTT tolerated before shrinking, at
    /// least 1 (Netflix: 1.5).
    pub rtt_tolerance: f64,
    /// Headroom added to each estimate (Netflix's Gradient2 default: a
    /// constant 4).
    pub queue_size: usize,
    /// Samples the long-run RTT averages over (Netflix: 600).
    pub long_window: u32,
}

impl Default for Gradient2Config {
    fn default() -> Self {
        Gradient2Config {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 200,
            smoothing: 0.2,
            rtt_tolerance: 1.5,
            queue_size: 4,
            long_window: 600,
        }
    }
}

impl Gradient2Config {
    pub(crate) fn validate(&self) -> Result<(), InvalidConfig> {
        if self.initial_limit == 0 || self.min_limit == 0 || self.max_limit == 0 {
            return Err(InvalidConfig::ZeroLimit);
        }
        if self.min_limit > self.max_limit {
            return Err(InvalidConfig::MinAboveMax {
                min: self.min_limit,
                max: self.max_limit,
            });
        }
        check(
            self.smoothing > 0.0 && self.smoothing <= 1.0,
            "smoothing",
            self.smoothing,
            "(0, 1]",
        )?;
        check(
            self.rtt_tolerance >= 1.0 && self.rtt_tolerance.is_finite(),
            "rtt_tolerance",
            self.rtt_tolerance,
            "[1, ∞)",
        )?;
        check(
            self.long_window > 0,
            "long_window",
            f64::from(self.long_window),
            "[1, ∞)",
        )
    }
}

/// Netflix's `ExpAvgMeasurement`, in ns.
#[derive(Debug, Clone, Copy)]
struct LongRtt {
    value: f64,
    sum: f64,
    count: u32,
    factor: f64,
}

impl LongRtt {
    fn new(window: u32) -> LongRtt {
        LongRtt {
            value: 0.0,
            sum: 0.0,
            count: 0,
            factor: 2.0 / (f64::from(window) + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < WARMUP_SAMPLES {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / f64::from(self.count);
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

/// The Gradient2 state machine; callers go through
/// [`AdaptiveConcurrency`](super::AdaptiveConcurrency).
#[derive(Debug, Clone)]
pub(crate) struct Gradient2 {
    config: Gradient2Config,
    estimated: f64,
    long_rtt: LongRtt,
}

impl Gradient2 {
    pub(crate) fn new(config: Gradient2Config) -> Gradient2 {
        let initial = config
            .initial_limit
            .clamp(config.min_limit, config.max_limit.max(config.min_limit));
        Gradient2 {
            config,
            estimated: initial as f64,
            long_rtt: LongRtt::new(config.long_window),
        }
    }

    pub(crate) fn limit(&self) -> usize {
        self.estimated as usize
    }

    /// Records one completed request (`rtt` is `None` for a drop) that had
    /// `in_flight` requests in flight, itself included, when admitted, and
    /// returns the limit.
    pub(crate) fn on_sample(&mut self, rtt: Option<Duration>, in_flight: usize) -> usize {
        let smoothing = self.config.smoothing;
        let Some(rtt) = rtt else {
            let cut = self.estimated * (1.0 - smoothing) + self.estimated * 0.5 * smoothing;
            self.estimated = self.clamped(cut);
            return self.limit();
        };
        // A zero RTT would make the ratios infinite or NaN.
        let short = nanos_f64(rtt).max(1.0);
        let long = self.long_rtt.add(short);
        if long / short > 2.0 {
            self.long_rtt.value *= 0.95;
        }
        if (in_flight as f64) < self.estimated / 2.0 {
            return self.limit();
        }
        let gradient = (self.config.rtt_tolerance * long / short).clamp(0.5, 1.0);
        let target = self.estimated * gradient + self.config.queue_size as f64;
        let smoothed = self.estimated * (1.0 - smoothing) + target * smoothing;
        self.estimated = self.clamped(smoothed);
        self.limit()
    }

    fn clamped(&self, limit: f64) -> f64 {
        limit.clamp(self.config.min_limit as f64, self.config.max_limit as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Feeds `n` samples of `rtt`, each admitted at the current limit (so
    /// never app-limited); returns the limit after each.
    fn feed(g: &mut Gradient2, n: usize, rtt: Duration) -> Vec<usize> {
        (0..n).map(|_| g.on_sample(Some(rtt), g.limit())).collect()
    }

    /// Steady RTT: gradient 1, so L ← L + 4 × 0.2 = L + 0.8 per sample:
    /// 20.8, 21.6, 22.4, 23.2, 24.0, …, reaching max 200 after 225 samples.
    #[test]
    fn steady_rtt_grows_by_queue_times_smoothing_up_to_max() {
        let mut g = Gradient2::new(Gradient2Config::default());
        assert_eq!(g.limit(), 20);
        assert_eq!(
            feed(&mut g, 10, 100 * MS),
            [20, 21, 22, 23, 24, 24, 25, 26, 27, 28]
        );
        let limits = feed(&mut g, 300, 100 * MS);
        // 20 + 0.8 n ≥ 200 first at n = 225, i.e. the 215th of these.
        assert_eq!(limits[213], 199);
        assert_eq!(limits[214], 200);
        assert!(limits[214..].iter().all(|&l| l == 200));
    }

    /// RTT doubling after a 100 ms warm-up: with L = 28 and long = 100 ms,
    /// one 200 ms sample moves long to 100 + 100 × 2/601 = 100.3328 ms, so
    /// gradient = 1.5 × 100.3328 / 200 = 0.752496 and
    /// L = 28 × 0.8 + (28 × 0.752496 + 4) × 0.2 = 27.4140.
    /// The next: long = 100.6645, gradient = 0.754983, L = 26.8706.
    #[test]
    fn doubled_rtt_shrinks_the_limit_by_the_formula() {
        let mut g = Gradient2::new(Gradient2Config::default());
        feed(&mut g, 10, 100 * MS);
        assert!((g.estimated - 28.0).abs() < 1e-9);
        assert_eq!(g.long_rtt.value, 100e6);

        assert_eq!(g.on_sample(Some(200 * MS), 28), 27);
        let long = 100e6 + 100e6 * 2.0 / 601.0;
        assert!((g.long_rtt.value - long).abs() < 1e-3);
        let expected = 28.0 * 0.8 + (28.0 * (1.5 * long / 200e6) + 4.0) * 0.2;
        assert!((g.estimated - expected).abs() < 1e-9, "{}", g.estimated);
        assert!((g.estimated - 27.4140).abs() < 1e-4);

        let before = g.estimated;
        assert_eq!(g.on_sample(Some(200 * MS), 27), 26);
        let long = long + (200e6 - long) * 2.0 / 601.0;
        let expected = before * 0.8 + (before * (1.5 * long / 200e6) + 4.0) * 0.2;
        assert!((g.estimated - expected).abs() < 1e-9, "{}", g.estimated);
        assert!((g.estimated - 26.8706).abs() < 1e-4);

        // Held at 2×, L heads for its fixed point 0.8 / (0.2 × (1 − g)),
        // about 16 at g = 0.75; but the long RTT absorbs the new latency
        // (by design), g rises, and the limit bottoms out at 21 after 19
        // more samples and then recovers toward max.
        let limits = feed(&mut g, 200, 200 * MS);
        assert!(limits[..19].windows(2).all(|w| w[1] <= w[0]), "{limits:?}");
        assert_eq!(limits[18], 21);
        assert_eq!(limits.iter().min(), Some(&21));
        assert!(limits[18..].windows(2).all(|w| w[1] >= w[0]), "{limits:?}");
    }

    /// Within the tolerance (RTT up to 1.5 × long) the gradient stays 1.
    #[test]
    fn rtt_within_tolerance_still_grows() {
        let mut g = Gradient2::new(Gradient2Config::default());
        feed(&mut g, 10, 100 * MS);
        assert_eq!(g.on_sample(Some(150 * MS), 28), 28);
        assert!((g.estimated - 28.8).abs() < 1e-9);
    }

    /// Fewer than L/2 in flight: the long RTT learns, the limit does not move.
    #[test]
    fn app_limited_samples_do_not_move_the_limit() {
        let mut g = Gradient2::new(Gradient2Config::default());
        for _ in 0..20 {
            assert_eq!(g.on_sample(Some(100 * MS), 9), 20);
        }
        assert_eq!(g.on_sample(Some(100 * MS), 10), 20);
        assert!((g.estimated - 20.8).abs() < 1e-9);
    }

    /// Each drop: L ← 0.9 L (gradient 0.5, no queue allowance), floor min.
    #[test]
    fn drops_cut_by_the_gradient_floor_down_to_the_minimum() {
        let mut g = Gradient2::new(Gradient2Config {
            min_limit: 5,
            ..Gradient2Config::default()
        });
        let limits: Vec<usize> = (0..6).map(|_| g.on_sample(None, 1)).collect();
        // 18, 16.2, 14.58, 13.122, 11.8098, 10.62882
        assert_eq!(limits, [18, 16, 14, 13, 11, 10]);
        let limits: Vec<usize> = (0..20).map(|_| g.on_sample(None, 1)).collect();
        assert_eq!(limits[19], 5);
        assert_eq!(g.estimated, 5.0);
    }

    /// After a long overload the long RTT is far above a normal sample; it
    /// decays 5% per such sample instead of waiting for the EWMA.
    #[test]
    fn long_rtt_decays_when_twice_the_sample() {
        let mut g = Gradient2::new(Gradient2Config::default());
        feed(&mut g, 10, 500 * MS);
        assert_eq!(g.long_rtt.value, 500e6);
        g.on_sample(Some(100 * MS), 20);
        let ewma = 500e6 * (1.0 - 2.0 / 601.0) + 100e6 * 2.0 / 601.0;
        assert!((g.long_rtt.value - ewma * 0.95).abs() < 1e-3);
    }
}
