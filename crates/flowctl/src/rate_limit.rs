//! GCRA rate limiting (a token bucket without a refill task), on governor.
//!
//! Guarantees:
//! - In any window of length `w`, at most `burst + floor(w / interval)` calls
//!   are admitted, where `interval = ceil(unit / requests_per_unit)`. The
//!   interval is rounded *up* to whole nanoseconds so rounding can only make
//!   the limiter stricter, never looser.
//! - `burst` defaults to 1: `10/minute` admits one call, then one every 6 s.
//!   (Argo's trigger rate limiter lets a burst slack of 10 past the limit;
//!   spillway only does so when `burst` says so.) A bucket of capacity 5000
//!   refilled at 1000/s is `1000/second, burst 5000`: 5000 at once, then one
//!   per millisecond.
//! - A refused [`RateLimiter::check`] says exactly how long until the next
//!   call would be admitted, which is what `Retry-After` needs. A refused
//!   check consumes nothing.
//! - [`RateLimiter::until_ready`] waits on tokio time (cancel safe: dropping
//!   the future consumes nothing).
//!
//! Not guaranteed: fairness between concurrent waiters of `until_ready`
//! (whoever checks first after the wait wins).

use crate::clock::{duration_from_nanos, Clock, GovernorClock, TokioClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::Quota;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// The unit of `requestsPerUnit` (Argo accepts any capitalisation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    Second,
    Minute,
    Hour,
}

impl RateUnit {
    /// Length of one unit.
    pub fn duration(self) -> Duration {
        match self {
            RateUnit::Second => Duration::from_secs(1),
            RateUnit::Minute => Duration::from_secs(60),
            RateUnit::Hour => Duration::from_secs(3600),
        }
    }

    /// Argo's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RateUnit::Second => "Second",
            RateUnit::Minute => "Minute",
            RateUnit::Hour => "Hour",
        }
    }
}

impl fmt::Display for RateUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit that is not second, minute or hour.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown rate unit {0:?}; expected one of Second, Minute, Hour")]
pub struct UnknownRateUnit(pub String);

impl FromStr for RateUnit {
    type Err = UnknownRateUnit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "second" => Ok(RateUnit::Second),
            "minute" => Ok(RateUnit::Minute),
            "hour" => Ok(RateUnit::Hour),
            _ => Err(UnknownRateUnit(text.to_owned())),
        }
    }
}

/// A rate (`requests_per_unit` per `unit`) and how many calls may go at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    requests_per_unit: NonZeroU32,
    unit: RateUnit,
    burst: NonZeroU32,
}

impl RateLimit {
    /// `requests_per_unit` per `unit`, burst 1. `None` when the rate is zero.
    pub fn new(requests_per_unit: u32, unit: RateUnit) -> Option<RateLimit> {
        Some(RateLimit {
            requests_per_unit: NonZeroU32::new(requests_per_unit)?,
            unit,
            burst: NonZeroU32::MIN,
        })
    }

    /// `n` per second, burst 1. `None` when `n` is zero.
    pub fn per_second(n: u32) -> Option<RateLimit> {
        RateLimit::new(n, RateUnit::Second)
    }

    /// The same rate allowing `burst` calls at once (a bucket of that
    /// capacity). `None` when `burst` is zero.
    pub fn with_burst(self, burst: u32) -> Option<RateLimit> {
        Some(RateLimit {
            burst: NonZeroU32::new(burst)?,
            ..self
        })
    }

    pub fn requests_per_unit(&self) -> u32 {
        self.requests_per_unit.get()
    }

    pub fn unit(&self) -> RateUnit {
        self.unit
    }

    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// Time between two admitted calls once the burst is spent, rounded up
    /// to whole nanoseconds (never less than 1 ns).
    pub fn interval(&self) -> Duration {
        let unit = self.unit.duration().as_nanos();
        let n = u128::from(self.requests_per_unit.get());
        let nanos = unit.div_ceil(n).max(1);
        duration_from_nanos(nanos)
    }

    /// Calls per second, for display and metrics.
    pub fn per_second_f64(&self) -> f64 {
        f64::from(self.requests_per_unit.get()) / self.unit.duration().as_secs_f64()
    }

    fn quota(&self) -> Quota {
        // `interval()` is never zero, so `with_period` always succeeds; the
        // fallback only exists to avoid a panic path.
        Quota::with_period(self.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(self.burst)
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} (burst {})",
            self.requests_per_unit,
            self.unit.as_str().to_ascii_lowercase(),
            self.burst
        )
    }
}

/// A refused call: the next one is admitted after `wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; next call admitted in {wait:?}")]
pub struct RateLimited {
    pub wait: Duration,
}

impl RateLimited {
    /// `wait` as whole seconds for an HTTP `Retry-After` header
    /// (see [`retry_after_secs`]).
    pub fn retry_after_secs(&self) -> u64 {
        retry_after_secs(self.wait)
    }
}

/// `wait` as whole seconds for an HTTP `Retry-After` header: rounded up, and
/// at least 1 (a `Retry-After: 0` invites an immediate retry storm).
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// Why [`RateLimiter::check_n`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CheckNError {
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// More calls than the burst: they can never be admitted together.
    #[error("{requested} calls can never be admitted at once (burst is {burst})")]
    ExceedsBurst { requested: u32, burst: u32 },
}

type Gcra<C> =
    governor::RateLimiter<NotKeyed, InMemoryState, GovernorClock<C>, NoOpMiddleware<Duration>>;

/// A GCRA rate limiter shared by reference between tasks (`&self` methods,
/// lock-free underneath).
pub struct RateLimiter<C: Clock = TokioClock> {
    limit: RateLimit,
    gcra: Gcra<C>,
    clock: GovernorClock<C>,
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl RateLimiter<TokioClock> {
    /// A limiter on tokio time.
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter::with_clock(limit, TokioClock::new())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// A limiter reading time from `clock`; its bucket starts full.
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        let clock = GovernorClock(clock);
        RateLimiter {
            limit,
            gcra: governor::RateLimiter::direct_with_clock(limit.quota(), clock.clone()),
            clock,
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Admits one call now, or says how long until one would be admitted.
    pub fn check(&self) -> Result<(), RateLimited> {
        self.clock.pinned(|now| {
            self.gcra.check().map_err(|not_until| RateLimited {
                wait: not_until.wait_time_from(now),
            })
        })
    }

    /// Admits `n` calls at once (all or none).
    pub fn check_n(&self, n: u32) -> Result<(), CheckNError> {
        let Some(n) = NonZeroU32::new(n) else {
            return Ok(());
        };
        self.clock.pinned(|now| match self.gcra.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateLimited {
                wait: not_until.wait_time_from(now),
            }
            .into()),
            Err(_) => Err(CheckNError::ExceedsBurst {
                requested: n.get(),
                burst: self.limit.burst(),
            }),
        })
    }

    /// Waits (on tokio time) until one call is admitted, and takes it.
    pub async fn until_ready(&self) {
        while let Err(limited) = self.check() {
            tokio::time::sleep(limited.wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn limiter(limit: RateLimit) -> (RateLimiter<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        (RateLimiter::with_clock(limit, clock.clone()), clock)
    }

    #[test]
    fn units_parse_in_any_capitalisation() {
        for (text, unit) in [
            ("Second", RateUnit::Second),
            ("second", RateUnit::Second),
            ("SECOND", RateUnit::Second),
            ("minute", RateUnit::Minute),
            ("Minute", RateUnit::Minute),
            ("hOuR", RateUnit::Hour),
        ] {
            assert_eq!(text.parse::<RateUnit>(), Ok(unit), "{text}");
        }
        assert_eq!(
            "day".parse::<RateUnit>(),
            Err(UnknownRateUnit("day".into()))
        );
    }

    #[test]
    fn zero_rate_or_burst_is_refused() {
        assert_eq!(RateLimit::new(0, RateUnit::Second), None);
        assert_eq!(RateLimit::per_second(5).and_then(|l| l.with_burst(0)), None);
    }

    /// seed 000: `rateLimit: {requestsPerUnit: 10, unit: minute}` with the
    /// default burst 1 admits exactly one call every 6 s.
    #[test]
    fn ten_per_minute_is_one_every_six_seconds() {
        let limit = RateLimit::new(10, RateUnit::Minute).unwrap();
        let (limiter, clock) = limiter(limit);
        assert_eq!(limit.interval(), Duration::from_secs(6));
        assert_eq!(limiter.check(), Ok(()));
        assert_eq!(
            limiter.check(),
            Err(RateLimited {
                wait: Duration::from_secs(6)
            })
        );
        clock.advance(Duration::from_millis(5_999));
        assert_eq!(
            limiter.check(),
            Err(RateLimited {
                wait: Duration::from_millis(1)
            })
        );
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.check(), Ok(()));

        // Over one minute of calls every 100 ms: exactly 10 admitted, at
        // 0 s, 6 s, … 54 s.
        let (limiter, clock) = self::limiter(limit);
        let mut admitted = Vec::new();
        for tick in 0..600u64 {
            if limiter.check().is_ok() {
                admitted.push(tick * 100);
            }
            clock.advance(Duration::from_millis(100));
        }
        let expected: Vec<u64> = (0..10).map(|i| i * 6_000).collect();
        assert_eq!(admitted, expected);
    }

    /// seed 004: `TokenBucket(capacity=5000, refill_rate=1000)`: 5000 at
    /// once, then 1000 per second.
    #[test]
    fn seed_token_bucket_5000_then_1000_per_second() {
        let limit = RateLimit::per_second(1000)
            .and_then(|l| l.with_burst(5000))
            .unwrap();
        let (limiter, clock) = limiter(limit);
        let burst = (0..10_000).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(burst, 5000);
        assert_eq!(
            limiter.check(),
            Err(RateLimited {
                wait: Duration::from_millis(1)
            })
        );
        for second in 1..=3 {
            clock.advance(Duration::from_secs(1));
            let admitted = (0..10_000).filter(|_| limiter.check().is_ok()).count();
            assert_eq!(admitted, 1000, "second {second}");
        }
        // An idle bucket refills to its capacity and no further.
        clock.advance(Duration::from_secs(60));
        let admitted = (0..10_000).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(admitted, 5000);
    }

    #[test]
    fn intervals_round_up_so_the_rate_is_never_exceeded() {
        let limit = RateLimit::per_second(3).unwrap();
        assert_eq!(limit.interval(), Duration::from_nanos(333_333_334));
        let (limiter, clock) = limiter(limit);
        let mut admitted = 0;
        for _ in 0..1000 {
            admitted += usize::from(limiter.check().is_ok());
            clock.advance(Duration::from_millis(1));
        }
        // t = 0, 333.3 ms, 666.7 ms; the fourth would be at 1.000000002 s.
        assert_eq!(admitted, 3);
    }

    #[test]
    fn check_n_is_all_or_nothing() {
        let limit = RateLimit::per_second(10)
            .and_then(|l| l.with_burst(5))
            .unwrap();
        let (limiter, clock) = limiter(limit);
        assert_eq!(limiter.check_n(0), Ok(()));
        assert_eq!(limiter.check_n(3), Ok(()));
        assert_eq!(
            limiter.check_n(3),
            Err(CheckNError::RateLimited(RateLimited {
                wait: Duration::from_millis(100)
            }))
        );
        assert_eq!(limiter.check_n(2), Ok(()));
        assert_eq!(
            limiter.check_n(6),
            Err(CheckNError::ExceedsBurst {
                requested: 6,
                burst: 5
            })
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check_n(5), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        let secs = |ms| {
            RateLimited {
                wait: Duration::from_millis(ms),
            }
            .retry_after_secs()
        };
        assert_eq!(secs(0), 1);
        assert_eq!(secs(1), 1);
        assert_eq!(secs(1000), 1);
        assert_eq!(secs(1001), 2);
        assert_eq!(secs(6000), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn until_ready_waits_exactly_the_interval() {
        let limiter = RateLimiter::new(RateLimit::new(10, RateUnit::Minute).unwrap());
        let start = tokio::time::Instant::now();
        for _ in 0..4 {
            limiter.until_ready().await;
        }
        assert_eq!(start.elapsed(), Duration::from_secs(18));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// In any window between two admitted calls, no more than
            /// `burst + rate × window` calls were admitted.
            #[test]
            fn never_admits_more_than_burst_plus_rate_times_window(
                per_unit in 1u32..2000,
                unit in prop_oneof![Just(RateUnit::Second), Just(RateUnit::Minute)],
                burst in 1u32..50,
                steps in prop::collection::vec(0u64..50_000_000, 1..400),
            ) {
                let limit = RateLimit::new(per_unit, unit).unwrap().with_burst(burst).unwrap();
                let (limiter, clock) = limiter(limit);
                let mut admitted: Vec<u128> = Vec::new();
                for step in steps {
                    clock.advance(Duration::from_nanos(step));
                    if limiter.check().is_ok() {
                        admitted.push(clock.now().as_nanos());
                    }
                }
                let unit_nanos = unit.duration().as_nanos();
                for i in 0..admitted.len() {
                    for j in i..admitted.len() {
                        let window = admitted[j] - admitted[i];
                        let count = (j - i + 1) as u128;
                        // count ≤ burst + window × per_unit / unit, in integers.
                        prop_assert!(
                            count * unit_nanos <= u128::from(burst) * unit_nanos
                                + window * u128::from(per_unit),
                            "{count} admitted in {window} ns at {limit}"
                        );
                    }
                }
            }

            /// A refused check's wait is exact: after it, the call is admitted;
            /// 1 ns before, it is not.
            #[test]
            fn refused_wait_is_exact(
                per_unit in 1u32..5000,
                burst in 1u32..20,
                calls in 1usize..100,
            ) {
                let limit = RateLimit::per_second(per_unit).unwrap().with_burst(burst).unwrap();
                let (limiter, clock) = limiter(limit);
                for _ in 0..calls {
                    let _ = limiter.check();
                }
                if let Err(RateLimited { wait }) = limiter.check() {
                    prop_assert!(wait > Duration::ZERO);
                    clock.advance(wait - Duration::from_nanos(1));
                    prop_assert!(limiter.check().is_err());
                    clock.advance(Duration::from_nanos(1));
                    prop_assert_eq!(limiter.check(), Ok(()));
                }
            }
        }
    }
}
