//! Slow start for draining a backlog: after an outage, starts are released at
//! a rate that grows step by step instead of all at once (the "thundering
//! herd" that knocks over a consumer that has just come back).
//!
//! The ramp: during the `k`-th interval since the drain was created or last
//! [`reset`](GradualDrain::reset), the rate is
//! `min(max_rate, initial_rate × factor^k)` starts per second. The seed's
//! `{initialRate: 10, factor: 1.1, interval: 1s, maxRate: 1000}` gives 10, 11,
//! 12.1, 13.31, … per second, reaches 1000 in interval 49 and stays there.
//!
//! Guarantees:
//! - The rate is a function of the time since the last reset: it never
//!   decreases between resets and never exceeds `max_rate`, which it reaches
//!   exactly. It is `initial_rate × factor^k` computed in `f64` and rounded to
//!   the nearest millionth of a start per second, so `10 × 1.1²` is exactly
//!   `12.1` rather than `12.100000000000001`.
//! - Interval `k` admits at most `n_k = floor(rate_k × interval)` starts (the
//!   seed's `int(current_rate)` for a 1 s interval), with no slack at interval
//!   boundaries: the count is enforced per interval, not derived from spacing.
//! - Starts are spread evenly, not released in a batch at the top of each
//!   interval: interval `k` has `n_k` slots, the `j`-th at
//!   `start_k + ceil(j × interval / n_k)`, and each start takes one. A caller
//!   that asks as soon as allowed starts exactly on the slots, so 10/s is one
//!   start every 100 ms and it gets all `n_k` starts of every interval.
//! - A late caller is never paid back with a burst: it takes the latest slot
//!   that has come, and the slots it missed are lost. Two starts are always at
//!   least half a slot apart (`floor(interval / n_k) / 2`, `k` being the later
//!   start's interval), across interval boundaries and resets too. The half
//!   slot lets a caller that woke a little late (tokio rounds sleeps up to
//!   the millisecond) get back on the slots instead of drifting off them and
//!   losing starts.
//! - A refused [`GradualDrain::try_acquire`] says exactly how long until a start
//!   is admitted; a refusal consumes nothing.
//! - [`GradualDrain::until_ready`] waits on tokio time (cancel safe: dropping
//!   the future consumes nothing).
//!
//! Not guaranteed:
//! - The flooring costs up to one start per interval, so a small
//!   `rate × interval` ramps unevenly (11/s over 100 ms intervals is still one
//!   start per 100 ms); keep `initial_rate × interval` at 10 or more.
//! - Fairness between concurrent waiters of `until_ready`.
//! - Any notion of consumer health: the caller decides when overload is back
//!   and calls [`GradualDrain::reset`].

use crate::clock::{duration_from_nanos, Clock, TokioClock};
use crate::rate_limit::RateLimited;
use parking_lot::{Mutex, MutexGuard};
use std::fmt;
use std::time::Duration;

/// Highest `max_rate` accepted: one start per nanosecond, the clock's
/// resolution.
pub const MAX_SUPPORTED_RATE: f64 = 1e9;

/// Longest `interval` accepted; it keeps the integer arithmetic in range.
pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// Smallest growth per interval other than none: closer to 1, `f64` error in
/// `factor^k` could outgrow the step and make the rate dip.
const MIN_FACTOR_ABOVE_ONE: f64 = 1.000_001;

const MICROS_PER_START: f64 = 1e6;
const NANOS_PER_SEC: u128 = 1_000_000_000;
const MICRO_NANOS: u128 = 1_000_000 * NANOS_PER_SEC;

/// `flowControl.slowStart`: how fast a drain starts and how it ramps up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// Starts per second during the first interval.
    pub initial_rate: f64,
    /// Multiplier applied to the rate at each new interval (1 keeps it flat).
    pub factor: f64,
    /// How long each step of the ramp lasts.
    pub interval: Duration,
    /// Starts per second the ramp stops at.
    pub max_rate: f64,
}

impl Default for SlowStart {
    /// The seed's `GradualDrain`: 10/s, +10 % per second, up to 1000/s.
    fn default() -> Self {
        SlowStart {
            initial_rate: 10.0,
            factor: 1.1,
            interval: Duration::from_secs(1),
            max_rate: 1000.0,
        }
    }
}

/// Why a [`SlowStart`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SlowStartError {
    #[error("initialRate must be a positive number of starts per second, got {0}")]
    InitialRate(f64),
    #[error("factor must be 1 (a flat rate) or at least 1.000001, got {0}")]
    Factor(f64),
    #[error("interval must be more than 0 and at most 24h, got {0:?}")]
    Interval(Duration),
    #[error("maxRate must be at least initialRate ({initial_rate}) and at most 1e9 per second, got {max_rate}")]
    MaxRate { initial_rate: f64, max_rate: f64 },
    /// `floor(initial_rate × interval)` is 0: the first interval would admit
    /// nothing, and with a flat rate nothing ever.
    #[error("initialRate {initial_rate}/s admits no start in an interval of {interval:?}; raise one of them")]
    NoStartInFirstInterval {
        initial_rate: f64,
        interval: Duration,
    },
}

/// `rate` in millionths of a start per second, rounded to nearest.
fn micros(rate: f64) -> u128 {
    // Saturating float-to-int cast; callers have checked `rate` is finite.
    (rate * MICROS_PER_START).round() as u128
}

impl SlowStart {
    /// Checks the ranges documented on [`SlowStartError`].
    pub fn validate(&self) -> Result<(), SlowStartError> {
        let SlowStart {
            initial_rate,
            factor,
            interval,
            max_rate,
        } = *self;
        // Written as negated comparisons so NaN is refused too.
        if !(initial_rate.is_finite() && initial_rate > 0.0) {
            return Err(SlowStartError::InitialRate(initial_rate));
        }
        if !(factor.is_finite() && (factor == 1.0 || factor >= MIN_FACTOR_ABOVE_ONE)) {
            return Err(SlowStartError::Factor(factor));
        }
        if interval.is_zero() || interval > MAX_INTERVAL {
            return Err(SlowStartError::Interval(interval));
        }
        if !(max_rate.is_finite() && max_rate <= MAX_SUPPORTED_RATE)
            || micros(max_rate) < micros(initial_rate)
        {
            return Err(SlowStartError::MaxRate {
                initial_rate,
                max_rate,
            });
        }
        if self.starts_in(0) == 0 {
            return Err(SlowStartError::NoStartInFirstInterval {
                initial_rate,
                interval,
            });
        }
        Ok(())
    }

    /// Starts per second during interval `k` of the ramp (0 is the first).
    pub fn rate_at(&self, k: u64) -> f64 {
        // At most 1e15, so exactly representable.
        self.rate_micros(k) as f64 / MICROS_PER_START
    }

    fn rate_micros(&self, k: u64) -> u128 {
        let max = micros(self.max_rate);
        // Past i32::MAX steps any factor above 1 has long hit the cap.
        let exp = i32::try_from(k).unwrap_or(i32::MAX);
        let scaled = (self.initial_rate * self.factor.powi(exp) * MICROS_PER_START).round();
        if scaled >= max as f64 {
            max
        } else {
            scaled as u128
        }
    }

    /// `n_k`: the start budget of interval `k`.
    fn starts_in(&self, k: u64) -> u128 {
        // rate ≤ 1e15 micros and interval ≤ 8.64e13 ns: no overflow.
        self.rate_micros(k) * self.interval.as_nanos() / MICRO_NANOS
    }
}

#[derive(Debug)]
struct State {
    /// Clock reading (ns) the ramp last (re)started at.
    origin: u128,
    /// Interval (since `origin`) that `next_slot` indexes the slots of.
    interval: u64,
    /// First slot of `interval` not yet taken or lost.
    next_slot: u128,
    /// Slots in `interval` and in the one after it (`starts_in(k).max(1)`),
    /// cached because computing them (a power of `factor`) costs more than
    /// the rest of a check.
    starts: u128,
    next_starts: u128,
    last_start: Option<u128>,
}

impl State {
    /// Moves the slot index to interval `k` of the ramp.
    fn enter(&mut self, k: u64, config: &SlowStart) {
        self.interval = k;
        self.next_slot = 0;
        self.starts = config.starts_in(k).max(1);
        self.next_starts = config.starts_in(k.saturating_add(1)).max(1);
    }
}

/// Paces starts along a [`SlowStart`] ramp; shared by reference between
/// tasks (`&self` methods behind a short mutex).
pub struct GradualDrain<C: Clock = TokioClock> {
    config: SlowStart,
    clock: C,
    state: Mutex<State>,
}

impl<C: Clock> fmt::Debug for GradualDrain<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GradualDrain")
            .field("config", &self.config)
            .field("rate", &self.rate())
            .finish_non_exhaustive()
    }
}

impl GradualDrain<TokioClock> {
    /// A drain on tokio time whose ramp starts now.
    pub fn new(config: SlowStart) -> Result<Self, SlowStartError> {
        GradualDrain::with_clock(config, TokioClock::new())
    }
}

impl<C: Clock> GradualDrain<C> {
    /// A drain reading time from `clock`, whose ramp starts now.
    pub fn with_clock(config: SlowStart, clock: C) -> Result<Self, SlowStartError> {
        config.validate()?;
        let origin = clock.now().as_nanos();
        Ok(GradualDrain {
            config,
            clock,
            state: Mutex::new({
                let mut state = State {
                    origin,
                    interval: 0,
                    next_slot: 0,
                    starts: 0,
                    next_starts: 0,
                    last_start: None,
                };
                state.enter(0, &config);
                state
            }),
        })
    }

    /// The configured ramp.
    pub fn config(&self) -> &SlowStart {
        &self.config
    }

    /// Starts per second allowed now.
    pub fn rate(&self) -> f64 {
        let now = self.clock.now().as_nanos();
        let origin = self.lock().origin;
        self.config.rate_at(self.interval_at(origin, now))
    }

    /// Whether the ramp has reached `max_rate` (the backlog may now go at the
    /// configured maximum).
    pub fn at_full_rate(&self) -> bool {
        let now = self.clock.now().as_nanos();
        let origin = self.lock().origin;
        let k = self.interval_at(origin, now);
        self.config.rate_micros(k) == micros(self.config.max_rate)
    }

    /// Back to `initial_rate` from now (overload came back). The next start
    /// still keeps half the first interval's spacing from the previous one.
    pub fn reset(&self) {
        let now = self.clock.now().as_nanos();
        let mut state = self.lock();
        state.origin = now;
        state.enter(0, &self.config);
    }

    /// Admits one start now, or says how long until one would be admitted.
    pub fn try_acquire(&self) -> Result<(), RateLimited> {
        let now = self.clock.now().as_nanos();
        let mut state = self.lock();
        let k = self.interval_at(state.origin, now);
        if state.interval != k {
            state.enter(k, &self.config);
        }
        let due = self.next_due(&state, k);
        if due <= now {
            // Admitted means slot `next_slot` has come; any later ones that
            // have come too are skipped over rather than owed.
            let len = self.config.interval.as_nanos();
            let n = state.starts;
            let into = now - (state.origin + u128::from(k) * len);
            state.next_slot = into * n / len + 1;
            state.last_start = Some(now);
            Ok(())
        } else {
            Err(RateLimited {
                wait: duration_from_nanos(due - now),
            })
        }
    }

    /// Waits (on tokio time) until one start is admitted, and takes it.
    pub async fn until_ready(&self) {
        while let Err(paced) = self.try_acquire() {
            tokio::time::sleep(paced.wait).await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    fn interval_at(&self, origin: u128, now: u128) -> u64 {
        let elapsed = now.saturating_sub(origin);
        u64::try_from(elapsed / self.config.interval.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Earliest clock reading (ns) at which a start is admitted, given that
    /// `state` indexes the slots of interval `k`.
    fn next_due(&self, state: &State, k: u64) -> u128 {
        let len = self.config.interval.as_nanos();
        let start = state.origin + u128::from(k) * len;
        let spaced = |n: u128, at_least: u128| match state.last_start {
            Some(last) => at_least.max(last + len / n / 2),
            None => at_least,
        };
        let n = state.starts;
        if state.next_slot < n {
            let slot = start + (state.next_slot * len).div_ceil(n);
            let due = spaced(n, slot);
            if due < start + len {
                return due;
            }
        }
        // This interval is spent: the first slot of the next one. The rate
        // only grows, so its spacing is no longer than this one's and the
        // result still falls inside it.
        spaced(state.next_starts, start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    fn drain(config: SlowStart) -> (GradualDrain<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        (
            GradualDrain::with_clock(config, clock.clone()).unwrap(),
            clock,
        )
    }

    /// Takes starts as soon as each is admitted until `until`; returns their
    /// times in ns.
    fn prompt_starts(
        drain: &GradualDrain<FakeClock>,
        clock: &FakeClock,
        until: Duration,
    ) -> Vec<u128> {
        let mut starts = Vec::new();
        loop {
            match drain.try_acquire() {
                Ok(()) => starts.push(clock.now().as_nanos()),
                Err(paced) => {
                    if clock.now() + paced.wait >= until {
                        return starts;
                    }
                    clock.advance(paced.wait);
                }
            }
        }
    }

    fn per_second(starts: &[u128], seconds: usize) -> Vec<usize> {
        let mut counts = vec![0; seconds];
        for &at in starts {
            counts[(at / NANOS_PER_SEC) as usize] += 1;
        }
        counts
    }

    #[test]
    fn seed_rates_are_exact_and_stop_at_the_cap() {
        let seed = SlowStart::default();
        let first: Vec<f64> = (0..5).map(|k| seed.rate_at(k)).collect();
        assert_eq!(first, [10.0, 11.0, 12.1, 13.31, 14.641]);
        // 10 × 1.1^48 ≈ 970.17 < 1000 ≤ 10 × 1.1^49.
        assert_eq!(seed.rate_at(48), 970.172_338);
        assert_eq!(seed.rate_at(49), 1000.0);
        assert_eq!(seed.rate_at(50), 1000.0);
        assert_eq!(seed.rate_at(u64::MAX), 1000.0);

        let (drain, clock) = drain(seed);
        assert_eq!(drain.rate(), 10.0);
        clock.advance(Duration::from_millis(999));
        assert_eq!(drain.rate(), 10.0);
        clock.advance(Duration::from_millis(1));
        assert_eq!(drain.rate(), 11.0);
        clock.advance_to(Duration::from_secs(49) - Duration::from_nanos(1));
        assert!(!drain.at_full_rate());
        clock.advance(Duration::from_nanos(1));
        assert!(drain.at_full_rate());
        assert_eq!(drain.rate(), 1000.0);
        clock.advance(Duration::from_secs(3600));
        assert_eq!(drain.rate(), 1000.0);
    }

    #[test]
    fn a_flat_or_steep_ramp_reaches_exactly_max() {
        let flat = SlowStart {
            factor: 1.0,
            ..SlowStart::default()
        };
        assert_eq!(flat.rate_at(1_000_000), 10.0);
        let steep = SlowStart {
            factor: 2.0,
            max_rate: 45.5,
            ..SlowStart::default()
        };
        let rates: Vec<f64> = (0..5).map(|k| steep.rate_at(k)).collect();
        assert_eq!(rates, [10.0, 20.0, 40.0, 45.5, 45.5]);
    }

    /// seed 004: the first ten seconds admit floor(rate) starts each, 156 in
    /// all, spread evenly within each second.
    #[test]
    fn seed_admits_floor_of_the_rate_per_interval() {
        let (drain, clock) = drain(SlowStart::default());
        let starts = prompt_starts(&drain, &clock, Duration::from_secs(10));
        assert_eq!(
            per_second(&starts, 10),
            [10, 11, 12, 13, 14, 16, 17, 19, 21, 23]
        );
        assert_eq!(starts.len(), 156);
        let ms: Vec<u128> = starts[..10].iter().map(|ns| ns / 1_000_000).collect();
        assert_eq!(ms, [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]);
        // Second 1: eleven starts at 1 s + ceil(j × 1 s / 11).
        let second: Vec<u128> = (0..11)
            .map(|j| NANOS_PER_SEC + (j * NANOS_PER_SEC).div_ceil(11))
            .collect();
        assert_eq!(starts[10..21], second[..]);
    }

    #[test]
    fn ten_per_second_is_one_every_hundred_ms() {
        let (drain, clock) = drain(SlowStart::default());
        assert_eq!(drain.try_acquire(), Ok(()));
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(100)
            })
        );
        clock.advance(Duration::from_nanos(99_999_999));
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_nanos(1)
            })
        );
        clock.advance(Duration::from_nanos(1));
        assert_eq!(drain.try_acquire(), Ok(()));
    }

    #[test]
    fn a_late_caller_loses_missed_slots_instead_of_bursting() {
        let (drain, clock) = drain(SlowStart::default());
        clock.advance(Duration::from_millis(750));
        assert_eq!(drain.try_acquire(), Ok(()));
        // It took the 700 ms slot; 0 … 600 ms are lost, not owed.
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(50)
            })
        );
        clock.advance(Duration::from_millis(50));
        assert_eq!(drain.try_acquire(), Ok(()));
        clock.advance(Duration::from_millis(100));
        assert_eq!(drain.try_acquire(), Ok(()));
        // Second 0's ten slots are spent: the next start is second 1's first.
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(100)
            })
        );
    }

    #[test]
    fn a_slightly_late_caller_gets_back_on_the_slots() {
        let (drain, clock) = drain(SlowStart::default());
        assert_eq!(drain.try_acquire(), Ok(()));
        clock.advance(Duration::from_millis(130));
        assert_eq!(drain.try_acquire(), Ok(()));
        // Back on the slots: the next is at 200 ms, not 230 ms.
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(70)
            })
        );
        clock.advance(Duration::from_millis(70));
        assert_eq!(drain.try_acquire(), Ok(()));
        clock.advance(Duration::from_millis(190));
        assert_eq!(drain.try_acquire(), Ok(()));
        // The 390 ms start took the 300 ms slot. The 400 ms slot is only 10 ms
        // away, so half a slot (50 ms) from 390 ms decides.
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(50)
            })
        );
    }

    #[test]
    fn reset_goes_back_to_the_initial_rate_and_spacing() {
        let (drain, clock) = drain(SlowStart::default());
        clock.advance(Duration::from_secs(5));
        assert_eq!(drain.rate(), 16.1051);
        assert_eq!(drain.try_acquire(), Ok(()));
        clock.advance(Duration::from_millis(10));
        drain.reset();
        assert_eq!(drain.rate(), 10.0);
        assert!(!drain.at_full_rate());
        // Half a 10/s slot (50 ms) after the last start, not 1 s / 16 / 2.
        assert_eq!(
            drain.try_acquire(),
            Err(RateLimited {
                wait: Duration::from_millis(40)
            })
        );
        clock.advance(Duration::from_secs(1));
        assert_eq!(drain.rate(), 11.0);
        let (drain, clock) = self::drain(SlowStart::default());
        clock.advance(Duration::from_secs(60));
        assert!(drain.at_full_rate());
        drain.reset();
        assert!(!drain.at_full_rate());
    }

    #[test]
    fn invalid_configs_are_refused() {
        let ok = SlowStart::default();
        assert_eq!(ok.validate(), Ok(()));
        let check = |config: SlowStart| config.validate().unwrap_err();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                check(SlowStart {
                    initial_rate: rate,
                    ..ok
                }),
                SlowStartError::InitialRate(_)
            ));
        }
        for factor in [0.9, 1.000_000_1, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                check(SlowStart { factor, ..ok }),
                SlowStartError::Factor(_)
            ));
        }
        for interval in [Duration::ZERO, MAX_INTERVAL + Duration::from_nanos(1)] {
            assert_eq!(
                check(SlowStart { interval, ..ok }),
                SlowStartError::Interval(interval)
            );
        }
        for max_rate in [9.999_999, 1e9 + 1.0, f64::NAN] {
            assert!(matches!(
                check(SlowStart { max_rate, ..ok }),
                SlowStartError::MaxRate { .. }
            ));
        }
        assert_eq!(
            check(SlowStart {
                interval: Duration::from_millis(99),
                ..ok
            }),
            SlowStartError::NoStartInFirstInterval {
                initial_rate: 10.0,
                interval: Duration::from_millis(99)
            }
        );
        assert!(
            GradualDrain::with_clock(SlowStart { factor: 0.5, ..ok }, FakeClock::new()).is_err()
        );
    }

    /// tokio rounds each sleep up to the millisecond, so starts land up to
    /// 1 ms after their slots, and yet none is lost: the 156 starts of the
    /// first ten seconds are all taken, the last on time to the millisecond.
    #[tokio::test(start_paused = true)]
    async fn until_ready_keeps_the_slots_on_tokio_time() {
        let drain = GradualDrain::new(SlowStart::default()).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            drain.until_ready().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(900));
        for _ in 0..11 {
            drain.until_ready().await;
        }
        // Second 1's last slot is at 1 s + ceil(10 s / 11) = 1.909090910 s.
        assert_eq!(start.elapsed(), Duration::from_millis(1910));
        for _ in 21..156 {
            drain.until_ready().await;
        }
        // Second 9's last (23rd) slot: 9 s + ceil(22 s / 23) = 9.956521740 s.
        assert_eq!(start.elapsed(), Duration::from_millis(9957));
        drain.until_ready().await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn config() -> impl Strategy<Value = SlowStart> {
            (1u32..200, 0u32..300, 1u64..3000, 1u32..20).prop_map(
                |(initial, growth, interval_ms, headroom)| {
                    let interval = Duration::from_millis(interval_ms);
                    // At least one start per interval.
                    let initial_rate = f64::from(initial).max(1000.0 / interval_ms as f64).ceil();
                    SlowStart {
                        initial_rate,
                        factor: 1.0 + f64::from(growth) / 100.0,
                        interval,
                        max_rate: initial_rate * f64::from(headroom),
                    }
                },
            )
        }

        proptest! {
            /// Between resets the rate never decreases and never exceeds
            /// `max_rate`; a reset brings back `initial_rate`.
            #[test]
            fn rate_is_monotonic_and_capped(
                config in config(),
                ops in prop::collection::vec((0u64..5_000_000_000, prop::bool::weighted(0.05)), 1..300),
            ) {
                let (drain, clock) = drain(config);
                let mut previous = drain.rate();
                prop_assert_eq!(previous, config.rate_at(0));
                for (step, reset) in ops {
                    clock.advance(Duration::from_nanos(step));
                    if reset {
                        drain.reset();
                        previous = drain.rate();
                        prop_assert_eq!(previous, config.rate_at(0));
                        continue;
                    }
                    let rate = drain.rate();
                    prop_assert!(rate >= previous, "{rate} < {previous}");
                    prop_assert!(rate <= config.max_rate);
                    prop_assert_eq!(drain.at_full_rate(), rate == config.max_rate);
                    previous = rate;
                }
            }

            /// Whatever the caller's timing: at most `n_k` starts in interval
            /// `k`, consecutive starts at least half a slot apart, and a
            /// refusal's wait is exact.
            #[test]
            fn starts_stay_within_budget_and_spacing(
                config in config(),
                steps in prop::collection::vec(0u64..400_000_000, 1..400),
            ) {
                let (drain, clock) = drain(config);
                let len = config.interval.as_nanos();
                let mut starts: Vec<u128> = Vec::new();
                for step in steps {
                    clock.advance(Duration::from_nanos(step));
                    match drain.try_acquire() {
                        Ok(()) => starts.push(clock.now().as_nanos()),
                        Err(RateLimited { wait }) => {
                            prop_assert!(wait > Duration::ZERO);
                            if step % 3 == 0 {
                                clock.advance(wait - Duration::from_nanos(1));
                                prop_assert!(drain.try_acquire().is_err());
                                clock.advance(Duration::from_nanos(1));
                                prop_assert_eq!(drain.try_acquire(), Ok(()));
                                starts.push(clock.now().as_nanos());
                            }
                        }
                    }
                }
                let mut counts = std::collections::BTreeMap::<u64, u128>::new();
                for &at in &starts {
                    *counts.entry((at / len) as u64).or_default() += 1;
                }
                for (k, count) in counts {
                    let budget = config.starts_in(k);
                    prop_assert!(count <= budget, "{count} starts in interval {k}, budget {budget}");
                    // Same bound from the public rate, up to f64 rounding.
                    prop_assert!(count as f64 <= config.rate_at(k) * config.interval.as_secs_f64() + 1e-6);
                }
                for pair in starts.windows(2) {
                    let k = (pair[1] / len) as u64;
                    let gap = pair[1] - pair[0];
                    prop_assert!(gap >= len / config.starts_in(k) / 2, "gap {gap} in interval {k}");
                }
            }

        }

        proptest! {
            // Each case plays every start of up to 11 intervals: fewer cases.
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// A caller that takes every start as soon as it is admitted gets
            /// exactly `n_k` starts in each interval: the ramp never drifts.
            #[test]
            fn a_prompt_caller_gets_the_whole_budget(config in config(), intervals in 1u32..12) {
                let (drain, clock) = drain(config);
                let until = config.interval * intervals;
                let starts = prompt_starts(&drain, &clock, until);
                let len = config.interval.as_nanos();
                for k in 0..u64::from(intervals) {
                    let count = starts.iter().filter(|&&at| (at / len) as u64 == k).count();
                    prop_assert_eq!(count as u128, config.starts_in(k), "interval {}", k);
                }
            }
        }
    }
}
