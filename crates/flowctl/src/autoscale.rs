//! How many workers a consumer should run for its lag, the way KEDA's Kafka
//! scaler and the Kubernetes HPA behind it decide replicas.
//!
//! Each poll, with `lag` the consumer's backlog:
//! - the raw recommendation is `clamp(ceil(lag / lag_threshold), min, max)`
//!   (HPA's `AverageValue` target; its lower bound is 1 when `min` is 0);
//! - scaling up is immediate (HPA's default scale-up window is 0);
//! - scaling down uses the highest recommendation of the last
//!   `scale_down_stabilization` (HPA default 300 s), so a lag that flaps does
//!   not flap the workers: a high recommendation holds for exactly the window
//!   (a recommendation made at `t` counts while `now - t < window`);
//! - with `min` 0, the lag *activates* the consumer only when it is strictly
//!   above `activation_lag_threshold` (KEDA: `totalLag > activationLagThreshold`).
//!   An inactive consumer stays at 0, and an active one goes to 0 at the first
//!   poll more than `cooldown` after the last active poll (KEDA:
//!   `lastActiveTime + cooldownPeriod < now`). With `min` ≥ 1, activation and
//!   cooldown play no part, as in KEDA.
//!
//! Guarantees:
//! - [`LagAutoscaler::observe`] returns a value in `[min, max]`, or 0 when
//!   `min` is 0 and the consumer is not active.
//! - Memory is bounded whatever the polling rate: the window is a monotonic
//!   deque whose recommendations strictly decrease from oldest to newest, so
//!   it holds at most `max - max(min, 1) + 1` entries, and never more than the
//!   polls of the last window (10 with the 30 s / 300 s defaults).
//! - Time is read from the injected clock only; tests drive it by hand.
//!
//! Not modelled: HPA's 10 % tolerance (it would keep 1 worker at lag 10 001),
//! HPA scale-up/down rate policies, KEDA's going through 1 replica on the
//! way up from 0 (here it goes straight to the recommendation), the Kafka
//! scaler's cap at the partition count, `idleReplicaCount` and fallback.
//! Polling is the caller's job: [`LagAutoscaler::next_poll_at`] says when the
//! next one is due, and `observe` evaluates whenever it is called.

use crate::clock::{Clock, TokioClock};
use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// A ScaledObject's limits and its Kafka trigger's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoscalePolicy {
    /// `minReplicaCount` (KEDA default 0: scale to zero when idle).
    pub min: u32,
    /// `maxReplicaCount` (KEDA default 100).
    pub max: u32,
    /// `lagThreshold`: target lag per worker (Kafka scaler default 10).
    pub lag_threshold: u64,
    /// `activationLagThreshold`: lag a consumer at 0 must exceed to wake
    /// (default 0; only used when `min` is 0).
    pub activation_lag_threshold: u64,
    /// `pollingInterval` (KEDA default 30 s).
    pub polling_interval: Duration,
    /// `cooldownPeriod`: idle time before scaling to 0 (KEDA default 300 s;
    /// only used when `min` is 0).
    pub cooldown: Duration,
    /// HPA `scaleDown.stabilizationWindowSeconds` (default 300 s).
    pub scale_down_stabilization: Duration,
}

impl Default for AutoscalePolicy {
    /// KEDA's and the HPA's defaults.
    fn default() -> Self {
        AutoscalePolicy {
            min: 0,
            max: 100,
            lag_threshold: 10,
            activation_lag_threshold: 0,
            polling_interval: Duration::from_secs(30),
            cooldown: Duration::from_secs(300),
            scale_down_stabilization: Duration::from_secs(300),
        }
    }
}

/// Why an [`AutoscalePolicy`] was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AutoscalePolicyError {
    #[error("lagThreshold must be greater than 0")]
    LagThreshold,
    #[error("maxReplicaCount must be at least 1")]
    MaxZero,
    #[error("minReplicaCount ({min}) must not exceed maxReplicaCount ({max})")]
    MinAboveMax { min: u32, max: u32 },
}

impl AutoscalePolicy {
    /// Checks the ranges documented on [`AutoscalePolicyError`].
    pub fn validate(&self) -> Result<(), AutoscalePolicyError> {
        if self.lag_threshold == 0 {
            return Err(AutoscalePolicyError::LagThreshold);
        }
        if self.max == 0 {
            return Err(AutoscalePolicyError::MaxZero);
        }
        if self.min > self.max {
            return Err(AutoscalePolicyError::MinAboveMax {
                min: self.min,
                max: self.max,
            });
        }
        Ok(())
    }

    /// HPA's unstabilised recommendation for `lag`.
    fn recommend(&self, lag: u64) -> u32 {
        let wanted = lag.div_ceil(self.lag_threshold);
        let capped = u32::try_from(wanted).unwrap_or(u32::MAX).min(self.max);
        // HPA never goes below 1; reaching 0 is KEDA's call (cooldown).
        capped.max(self.min.max(1))
    }
}

/// Turns lag readings into a worker count (one per consumer; `&mut self`).
pub struct LagAutoscaler<C: Clock = TokioClock> {
    policy: AutoscalePolicy,
    clock: C,
    current: u32,
    /// `(clock reading, recommendation)`, oldest first; recommendations
    /// strictly decrease, so the front is the window's highest.
    window: VecDeque<(Duration, u32)>,
    last_active: Option<Duration>,
    next_poll: Duration,
}

impl<C: Clock> fmt::Debug for LagAutoscaler<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagAutoscaler")
            .field("policy", &self.policy)
            .field("current", &self.current)
            .field("window", &self.window)
            .field("last_active", &self.last_active)
            .field("next_poll", &self.next_poll)
            .finish_non_exhaustive()
    }
}

impl LagAutoscaler<TokioClock> {
    /// An autoscaler on tokio time, at `min` workers, due to poll now.
    pub fn new(policy: AutoscalePolicy) -> Result<Self, AutoscalePolicyError> {
        LagAutoscaler::with_clock(policy, TokioClock::new())
    }
}

impl<C: Clock> LagAutoscaler<C> {
    /// An autoscaler reading time from `clock`, at `min` workers, due to poll
    /// now.
    pub fn with_clock(policy: AutoscalePolicy, clock: C) -> Result<Self, AutoscalePolicyError> {
        policy.validate()?;
        let next_poll = clock.now();
        Ok(LagAutoscaler {
            policy,
            clock,
            current: policy.min,
            window: VecDeque::new(),
            last_active: None,
            next_poll,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &AutoscalePolicy {
        &self.policy
    }

    /// Workers wanted for `lag` now; also becomes [`current`](Self::current).
    pub fn observe(&mut self, lag: u64) -> u32 {
        let now = self.clock.now();
        self.next_poll = now.saturating_add(self.policy.polling_interval);
        if self.policy.min == 0 {
            if lag > self.policy.activation_lag_threshold {
                self.last_active = Some(now);
            } else if self.current == 0 {
                return 0;
            } else if self
                .last_active
                .is_none_or(|at| at.saturating_add(self.policy.cooldown) < now)
            {
                // KEDA scales the target itself; the HPA (and its memory of
                // recommendations) starts afresh when it wakes up.
                self.current = 0;
                self.window.clear();
                return 0;
            }
        }
        let recommendation = self.policy.recommend(lag);
        let window = self.policy.scale_down_stabilization;
        while self
            .window
            .front()
            .is_some_and(|&(at, _)| now.saturating_sub(at) >= window)
        {
            self.window.pop_front();
        }
        // An older, lower recommendation can never be the window's highest
        // again: this one outlives it.
        while self
            .window
            .back()
            .is_some_and(|&(_, older)| older <= recommendation)
        {
            self.window.pop_back();
        }
        self.window.push_back((now, recommendation));
        // Scale-up is immediate because this recommendation is in the window;
        // scale-down waits for every higher one to age out. That is HPA's
        // clamp(current, up, down) with a 0 s up-window, since the current
        // count is always the window's highest.
        self.current = self
            .window
            .front()
            .map_or(recommendation, |&(_, high)| high);
        self.current
    }

    /// Workers wanted as of the last [`observe`](Self::observe) (`min` before
    /// the first).
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Clock reading at which the next poll is due: `polling_interval` after
    /// the last one, or the creation time before the first.
    pub fn next_poll_at(&self) -> Duration {
        self.next_poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    /// seed 004: `minReplicaCount: 1, maxReplicaCount: 100, lagThreshold:
    /// "10000"`.
    fn seed() -> AutoscalePolicy {
        AutoscalePolicy {
            min: 1,
            max: 100,
            lag_threshold: 10_000,
            ..AutoscalePolicy::default()
        }
    }

    fn scaler(policy: AutoscalePolicy) -> (LagAutoscaler<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        (
            LagAutoscaler::with_clock(policy, clock.clone()).unwrap(),
            clock,
        )
    }

    /// Observes `lags` one poll apart, starting now; returns the outputs.
    fn polls(scaler: &mut LagAutoscaler<FakeClock>, clock: &FakeClock, lags: &[u64]) -> Vec<u32> {
        lags.iter()
            .map(|&lag| {
                clock.advance_to(scaler.next_poll_at());
                scaler.observe(lag)
            })
            .collect()
    }

    #[test]
    fn seed_lag_maps_to_ceil_of_lag_over_threshold_within_limits() {
        for (lag, workers) in [
            (0, 1),
            (1, 1),
            (10_000, 1),
            (10_001, 2),
            (20_001, 3),
            (990_000, 99),
            (2_000_000, 100),
            (5_000_000, 100),
            (u64::MAX, 100),
        ] {
            let (mut scaler, _) = scaler(seed());
            assert_eq!(scaler.current(), 1);
            assert_eq!(scaler.observe(lag), workers, "lag {lag}");
            assert_eq!(scaler.current(), workers);
        }
    }

    #[test]
    fn defaults_are_kedas_and_bad_policies_are_refused() {
        let policy = AutoscalePolicy::default();
        assert_eq!(
            (
                policy.min,
                policy.max,
                policy.lag_threshold,
                policy.activation_lag_threshold
            ),
            (0, 100, 10, 0)
        );
        assert_eq!(policy.polling_interval, Duration::from_secs(30));
        assert_eq!(policy.cooldown, Duration::from_secs(300));
        assert_eq!(policy.scale_down_stabilization, Duration::from_secs(300));
        assert_eq!(policy.validate(), Ok(()));
        let check =
            |p: AutoscalePolicy| LagAutoscaler::with_clock(p, FakeClock::new()).unwrap_err();
        assert_eq!(
            check(AutoscalePolicy {
                lag_threshold: 0,
                ..seed()
            }),
            AutoscalePolicyError::LagThreshold
        );
        assert_eq!(
            check(AutoscalePolicy {
                min: 0,
                max: 0,
                ..seed()
            }),
            AutoscalePolicyError::MaxZero
        );
        assert_eq!(
            check(AutoscalePolicy {
                min: 5,
                max: 4,
                ..seed()
            }),
            AutoscalePolicyError::MinAboveMax { min: 5, max: 4 }
        );
    }

    #[test]
    fn next_poll_is_one_interval_after_the_last() {
        let (mut scaler, clock) = scaler(seed());
        assert_eq!(scaler.next_poll_at(), Duration::ZERO);
        scaler.observe(0);
        assert_eq!(scaler.next_poll_at(), Duration::from_secs(30));
        clock.advance(Duration::from_secs(45));
        scaler.observe(0);
        assert_eq!(scaler.next_poll_at(), Duration::from_secs(75));
    }

    /// The high count holds for exactly the stabilisation window after the
    /// last high recommendation, then drops in one step.
    #[test]
    fn scale_down_waits_exactly_the_stabilisation_window() {
        let (mut scaler, clock) = scaler(seed());
        assert_eq!(scaler.observe(2_000_000), 100);
        // Polls at 30 s … 270 s: the 100 made at 0 s still counts.
        let held = polls(&mut scaler, &clock, &[0; 9]);
        assert_eq!(held, [100; 9]);
        clock.advance_to(Duration::from_nanos(299_999_999_999));
        assert_eq!(scaler.observe(0), 100);
        clock.advance(Duration::from_nanos(1));
        assert_eq!(scaler.observe(0), 1);
        assert_eq!(scaler.current(), 1);
    }

    #[test]
    fn scale_down_goes_to_the_highest_recent_recommendation() {
        let (mut scaler, clock) = scaler(seed());
        // 0 s: 100; 30 s: 50; 60 s … : 5.
        let mut lags = vec![1_000_000, 500_000];
        lags.extend([50_000; 12]);
        let out = polls(&mut scaler, &clock, &lags);
        // 100 until 300 s, then 50 until 330 s, then 5.
        let mut expected = vec![100; 10];
        expected.extend([50, 5, 5, 5]);
        assert_eq!(out, expected);
    }

    #[test]
    fn scale_up_is_immediate_even_while_stabilising() {
        let (mut scaler, clock) = scaler(seed());
        assert_eq!(polls(&mut scaler, &clock, &[500_000, 0]), [50, 50]);
        assert_eq!(polls(&mut scaler, &clock, &[700_000]), [70]);
        assert_eq!(polls(&mut scaler, &clock, &[2_000_000]), [100]);
    }

    /// A lag alternating between 2M and 0 every poll keeps 100 workers, and
    /// they go 300 s after the last high reading.
    #[test]
    fn a_flapping_lag_does_not_flap_the_workers() {
        let (mut scaler, clock) = scaler(seed());
        let flapping: Vec<u64> = (0..40)
            .map(|i| if i % 2 == 0 { 2_000_000 } else { 0 })
            .collect();
        let out = polls(&mut scaler, &clock, &flapping);
        assert_eq!(out, [100; 40]);
        // The last high was at 38 × 30 s = 1140 s: polls at 1200 … 1410 s
        // hold, and 1440 s is exactly 300 s later.
        let quiet = polls(&mut scaler, &clock, &[0; 9]);
        let mut expected = vec![100; 8];
        expected.push(1);
        assert_eq!(quiet, expected);
        assert_eq!(clock.now(), Duration::from_secs(1440));
    }

    #[test]
    fn min_zero_scales_to_zero_after_the_cooldown() {
        let policy = AutoscalePolicy { min: 0, ..seed() };
        let (mut scaler, clock) = scaler(policy);
        assert_eq!(scaler.current(), 0);
        // Not active (lag must exceed 0): stays at zero.
        assert_eq!(polls(&mut scaler, &clock, &[0, 0]), [0, 0]);
        // 60 s: active, straight to the recommendation.
        assert_eq!(polls(&mut scaler, &clock, &[25_000]), [3]);
        // 90 s … 360 s: idle but cooling down (HPA still holds 3 for 300 s,
        // then its floor of 1); 360 s is exactly the cooldown, not past it.
        let cooling = polls(&mut scaler, &clock, &[0; 10]);
        let mut expected = vec![3; 9];
        expected.push(1);
        assert_eq!(cooling, expected);
        assert_eq!(clock.now(), Duration::from_secs(360));
        clock.advance(Duration::from_nanos(1));
        assert_eq!(scaler.observe(0), 0);
        assert_eq!(polls(&mut scaler, &clock, &[0, 0]), [0, 0]);
        // Waking up forgets the old window.
        assert_eq!(polls(&mut scaler, &clock, &[1]), [1]);
    }

    #[test]
    fn activation_threshold_gates_waking_from_zero_only() {
        let policy = AutoscalePolicy {
            min: 0,
            activation_lag_threshold: 100,
            ..seed()
        };
        let (mut scaler, clock) = scaler(policy);
        assert_eq!(polls(&mut scaler, &clock, &[100, 101]), [0, 1]);
        // Active again within the cooldown keeps it alive.
        let mut lags = vec![50; 9];
        lags.push(101);
        lags.extend([0; 10]);
        let out = polls(&mut scaler, &clock, &lags);
        assert!(out.iter().all(|&w| w == 1), "{out:?}");
        // Last active at 330 s: 0 at the first poll after 630 s.
        assert_eq!(clock.now(), Duration::from_secs(630));
        assert_eq!(polls(&mut scaler, &clock, &[0]), [0]);

        // With min 1 the activation threshold is ignored.
        let (mut scaler, clock) = self::scaler(AutoscalePolicy {
            activation_lag_threshold: 100_000,
            ..seed()
        });
        assert_eq!(polls(&mut scaler, &clock, &[50_000, 0]), [5, 5]);
    }

    #[test]
    fn the_window_never_holds_more_than_max_entries() {
        let (mut scaler, clock) = scaler(AutoscalePolicy {
            scale_down_stabilization: Duration::from_secs(3600),
            ..seed()
        });
        // Strictly falling recommendations every second: the worst case.
        for lag in (0..=1_000_000u64).rev().step_by(5_000) {
            scaler.observe(lag);
            clock.advance(Duration::from_secs(1));
        }
        assert_eq!(scaler.window.len(), 100);
        assert_eq!(scaler.current(), 100);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn policy() -> impl Strategy<Value = AutoscalePolicy> {
            (
                0u32..4,
                1u32..40,
                1u64..5_000,
                0u64..5_000,
                0u64..600,
                0u64..600,
            )
                .prop_map(
                    |(min, extra, lag_threshold, activation, cooldown, window)| AutoscalePolicy {
                        min,
                        max: min.max(1) + extra - 1,
                        lag_threshold,
                        activation_lag_threshold: activation,
                        polling_interval: Duration::from_secs(30),
                        cooldown: Duration::from_secs(cooldown),
                        scale_down_stabilization: Duration::from_secs(window),
                    },
                )
        }

        /// Every reading kept, searched in full: what the deque must match.
        struct Reference {
            policy: AutoscalePolicy,
            current: u32,
            history: Vec<(Duration, u32)>,
            last_active: Option<Duration>,
        }

        impl Reference {
            fn observe(&mut self, now: Duration, lag: u64) -> u32 {
                let p = self.policy;
                if p.min == 0 {
                    if lag > p.activation_lag_threshold {
                        self.last_active = Some(now);
                    } else if self.current == 0 {
                        return 0;
                    } else if self.last_active.is_none_or(|at| at + p.cooldown < now) {
                        self.current = 0;
                        self.history.clear();
                        return 0;
                    }
                }
                let wanted = lag.div_ceil(p.lag_threshold).min(u64::from(p.max));
                let rec = (wanted as u32).max(p.min.max(1));
                self.history.push((now, rec));
                self.current = self
                    .history
                    .iter()
                    .filter(|&&(at, _)| now - at < p.scale_down_stabilization)
                    .map(|&(_, r)| r)
                    .max()
                    .unwrap_or(rec);
                self.current
            }
        }

        proptest! {
            /// Output within `[min, max]` (or 0 when `min` is 0), equal to a
            /// brute-force HPA/KEDA model, with a bounded window.
            #[test]
            fn output_is_bounded_and_matches_the_reference(
                policy in policy(),
                readings in prop::collection::vec((0u64..200_000, 0u64..120_000), 1..200),
            ) {
                let (mut scaler, clock) = scaler(policy);
                let mut reference = Reference {
                    policy,
                    current: policy.min,
                    history: Vec::new(),
                    last_active: None,
                };
                for (lag, step_ms) in readings {
                    clock.advance(Duration::from_millis(step_ms));
                    let workers = scaler.observe(lag);
                    if policy.min == 0 {
                        prop_assert!(workers <= policy.max);
                    } else {
                        prop_assert!((policy.min..=policy.max).contains(&workers));
                    }
                    prop_assert_eq!(workers, reference.observe(clock.now(), lag));
                    prop_assert_eq!(workers, scaler.current());
                    let bound = (policy.max - policy.min.max(1) + 1) as usize;
                    prop_assert!(scaler.window.len() <= bound);
                    // Never fewer workers than the lag asks for right now.
                    if workers > 0 {
                        prop_assert!(workers >= policy.recommend(lag));
                    }
                }
            }
        }
    }
}
