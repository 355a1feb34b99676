//! Adaptive concurrency limits: how many requests a trigger may have in
//! flight to one downstream service, found by watching how it answers.
//!
//! Three algorithms, picked by `flowControl.concurrency` (`maxInFlight` is
//! the cap, or the fixed value):
//!
//! - `fixed`: the limit is `maxInFlight`, always.
//! - `aimd` ([`AimdConfig`]): Vector's adaptive request concurrency. Once
//!   per RTT window: +1 when the window reached the limit and its mean RTT is
//!   not above the long-run mean; ×0.9 (rounded down) on any 429, 503 or
//!   timeout in the window, or when the mean RTT exceeds the long-run mean by
//!   more than 2.5 deviations.
//! - `gradient` ([`Gradient2Config`]): Netflix's `Gradient2Limit`. On every
//!   sample the limit moves toward `limit × gradient + queue_size`, where the
//!   gradient compares the sample's RTT with a long-run RTT average.
//!
//! Guarantees (of [`AdaptiveConcurrency`]):
//! - The limit always lies within the algorithm's `[min, max]` (AIMD's
//!   minimum is 1).
//! - [`AdaptiveConcurrency::try_acquire`] admits a request only while the
//!   number in flight is below the limit, so `in_flight ≤ limit` holds right
//!   after every admission. Lowering the limit cancels nothing: requests
//!   already in flight finish, and no new one is admitted until enough have.
//! - A `Retry-After: d` ([`Outcome::Dropped`] with `retry_after`) refuses
//!   every acquire until exactly `now + d` on the injected clock, whatever
//!   the limit; a later, longer `Retry-After` extends the pause, a shorter
//!   one never cuts it short. It also counts as a drop.
//! - A [`Token`] dropped without [`Token::complete`] frees its slot and is
//!   not a sample: use that for answers that say nothing about the
//!   downstream's load (a 400, a cancelled send).
//!
//! Not guaranteed: fairness or waiting (acquire never blocks; the caller
//! retries after a completion or after `Busy::Paused::wait`), and exactness
//! under a race: an acquire that reads the limit just before another thread
//! lowers it may still be admitted against the old limit.
//!
//! RTTs are measured by the caller (the trigger times its HTTP call), so an
//! RTT never includes time spent waiting for a slot.
//!
//! Where this departs from the originals, and why:
//! - AIMD decreases on RTT when the window mean is strictly *above*
//!   `mean + 2.5 × deviation`; Vector uses `>=`, which with a perfectly
//!   steady RTT (deviation 0) cuts the limit of every healthy window that
//!   did not reach the limit.
//! - Gradient2's `min_limit` defaults to 1, not Netflix's 20: Netflix notes a
//!   floor of 20 is not wanted when the limit is backpressure for a client,
//!   which is what a trigger is.
//! - Gradient2 ignores drops in Netflix (a dropped request only feeds its
//!   RTT, and a fast 429 then *raises* the limit). Here a drop feeds no RTT
//!   and applies the gradient floor 0.5 without the queue allowance:
//!   `limit ← limit × (1 − smoothing/2)`, ×0.9 with the default smoothing,
//!   and it applies even when the limiter is not saturated.

mod aimd;
mod gradient;
mod limiter;

pub use aimd::AimdConfig;
pub use gradient::Gradient2Config;
pub use limiter::{AdaptiveConcurrency, Busy, Token};

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Why the downstream did not process a request: each is backpressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// HTTP 429.
    TooManyRequests,
    /// HTTP 503.
    Unavailable,
    /// No answer within the request timeout.
    Timeout,
}

impl DropReason {
    /// The drop an HTTP status signals, if any (429 and 503 only).
    pub fn from_status(status: u16) -> Option<DropReason> {
        match status {
            429 => Some(DropReason::TooManyRequests),
            503 => Some(DropReason::Unavailable),
            _ => None,
        }
    }
}

/// How one request ended, as reported through [`Token::complete`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Processed; `rtt` is the time the downstream took to answer.
    Success { rtt: Duration },
    /// Pushed back, optionally with the downstream's `Retry-After`.
    Dropped {
        reason: DropReason,
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// A drop without `Retry-After`.
    pub fn dropped(reason: DropReason) -> Outcome {
        Outcome::Dropped {
            reason,
            retry_after: None,
        }
    }
}

/// Which algorithm sets the limit, with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Algorithm {
    /// A constant limit.
    Fixed(usize),
    /// Vector-style additive increase, multiplicative decrease.
    Aimd(AimdConfig),
    /// Netflix `Gradient2Limit`.
    Gradient2(Gradient2Config),
}

impl Algorithm {
    /// The algorithm `flowControl.concurrency: <mode>` selects, with
    /// `maxInFlight` as its cap (or fixed value) and defaults otherwise.
    pub fn for_mode(mode: ConcurrencyMode, max_in_flight: usize) -> Algorithm {
        match mode {
            ConcurrencyMode::Fixed => Algorithm::Fixed(max_in_flight),
            ConcurrencyMode::Aimd => Algorithm::Aimd(AimdConfig {
                max_limit: max_in_flight,
                ..AimdConfig::default()
            }),
            ConcurrencyMode::Gradient => Algorithm::Gradient2(Gradient2Config {
                max_limit: max_in_flight,
                ..Gradient2Config::default()
            }),
        }
    }

    /// The lowest limit the algorithm can set.
    pub fn min_limit(&self) -> usize {
        match self {
            Algorithm::Fixed(n) => *n,
            Algorithm::Aimd(_) => 1,
            Algorithm::Gradient2(config) => config.min_limit,
        }
    }

    /// The highest limit the algorithm can set.
    pub fn max_limit(&self) -> usize {
        match self {
            Algorithm::Fixed(n) => *n,
            Algorithm::Aimd(config) => config.max_limit,
            Algorithm::Gradient2(config) => config.max_limit,
        }
    }

    /// Checks every setting is usable.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        match self {
            Algorithm::Fixed(0) => Err(InvalidConfig::ZeroLimit),
            Algorithm::Fixed(_) => Ok(()),
            Algorithm::Aimd(config) => config.validate(),
            Algorithm::Gradient2(config) => config.validate(),
        }
    }
}

/// The value of `flowControl.concurrency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConcurrencyMode {
    /// [`Algorithm::Fixed`].
    Fixed,
    /// [`Algorithm::Aimd`].
    Aimd,
    /// [`Algorithm::Gradient2`].
    Gradient,
}

impl ConcurrencyMode {
    /// The spelling in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ConcurrencyMode::Fixed => "fixed",
            ConcurrencyMode::Aimd => "aimd",
            ConcurrencyMode::Gradient => "gradient",
        }
    }
}

impl fmt::Display for ConcurrencyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `flowControl.concurrency` that is not fixed, aimd or gradient.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown concurrency mode {0:?}; expected one of fixed, aimd, gradient")]
pub struct UnknownConcurrencyMode(pub String);

impl FromStr for ConcurrencyMode {
    type Err = UnknownConcurrencyMode;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "fixed" => Ok(ConcurrencyMode::Fixed),
            "aimd" => Ok(ConcurrencyMode::Aimd),
            "gradient" => Ok(ConcurrencyMode::Gradient),
            _ => Err(UnknownConcurrencyMode(text.to_owned())),
        }
    }
}

/// A setting that would make the algorithm misbehave.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidConfig {
    /// A limit (fixed, initial, minimum or maximum) of zero would admit nothing.
    #[error("concurrency limits must be at least 1")]
    ZeroLimit,
    /// No limit could satisfy both bounds.
    #[error("minimum concurrency limit {min} is above the maximum {max}")]
    MinAboveMax { min: usize, max: usize },
    /// A ratio or scale outside the range the algorithm is defined on.
    #[error("{name} = {value} is outside {expected}")]
    OutOfRange {
        name: &'static str,
        value: f64,
        expected: &'static str,
    },
}

/// `value` as an error unless `ok`.
fn check(
    ok: bool,
    name: &'static str,
    value: f64,
    expected: &'static str,
) -> Result<(), InvalidConfig> {
    if ok {
        Ok(())
    } else {
        Err(InvalidConfig::OutOfRange {
            name,
            value,
            expected,
        })
    }
}

/// Nanoseconds as `f64`: exact below 2^53 ns (~104 days), which keeps
/// steady RTTs exactly steady in the averages.
fn nanos_f64(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

/// The inverse of [`nanos_f64`], rounded to the nearest nanosecond
/// (saturating; NaN and negatives become zero).
fn duration_from_nanos_f64(nanos: f64) -> Duration {
    Duration::from_nanos(nanos.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_any_capitalisation_and_map_max_in_flight() {
        assert_eq!("AIMD".parse(), Ok(ConcurrencyMode::Aimd));
        assert_eq!("Gradient".parse(), Ok(ConcurrencyMode::Gradient));
        assert_eq!("fixed".parse(), Ok(ConcurrencyMode::Fixed));
        assert_eq!(
            "vegas".parse::<ConcurrencyMode>(),
            Err(UnknownConcurrencyMode("vegas".into()))
        );
        for mode in [
            ConcurrencyMode::Fixed,
            ConcurrencyMode::Aimd,
            ConcurrencyMode::Gradient,
        ] {
            assert_eq!(mode.as_str().parse(), Ok(mode));
            assert_eq!(Algorithm::for_mode(mode, 64).max_limit(), 64);
        }
        assert_eq!(
            Algorithm::for_mode(ConcurrencyMode::Fixed, 64).min_limit(),
            64
        );
        assert_eq!(
            Algorithm::for_mode(ConcurrencyMode::Aimd, 64).min_limit(),
            1
        );
        assert_eq!(
            Algorithm::for_mode(ConcurrencyMode::Gradient, 64).min_limit(),
            1
        );
    }

    #[test]
    fn drop_reasons_come_from_429_and_503_only() {
        assert_eq!(
            DropReason::from_status(429),
            Some(DropReason::TooManyRequests)
        );
        assert_eq!(DropReason::from_status(503), Some(DropReason::Unavailable));
        assert_eq!(DropReason::from_status(500), None);
        assert_eq!(DropReason::from_status(200), None);
    }

    #[test]
    fn unusable_settings_are_refused() {
        assert_eq!(
            Algorithm::Fixed(0).validate(),
            Err(InvalidConfig::ZeroLimit)
        );
        assert_eq!(
            Algorithm::for_mode(ConcurrencyMode::Aimd, 0).validate(),
            Err(InvalidConfig::ZeroLimit)
        );
        assert_eq!(
            Algorithm::Gradient2(Gradient2Config {
                min_limit: 30,
                max_limit: 10,
                ..Gradient2Config::default()
            })
            .validate(),
            Err(InvalidConfig::MinAboveMax { min: 30, max: 10 })
        );
        assert!(matches!(
            Algorithm::Aimd(AimdConfig {
                decrease_ratio: 1.0,
                ..AimdConfig::default()
            })
            .validate(),
            Err(InvalidConfig::OutOfRange {
                name: "decrease_ratio",
                ..
            })
        ));
        assert!(matches!(
            Algorithm::Gradient2(Gradient2Config {
                rtt_tolerance: 0.9,
                ..Gradient2Config::default()
            })
            .validate(),
            Err(InvalidConfig::OutOfRange {
                name: "rtt_tolerance",
                ..
            })
        ));
        for mode in [
            ConcurrencyMode::Fixed,
            ConcurrencyMode::Aimd,
            ConcurrencyMode::Gradient,
        ] {
            assert_eq!(Algorithm::for_mode(mode, 1).validate(), Ok(()));
        }
    }
}
