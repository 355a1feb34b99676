//! The limiter callers share: admission is lock-free, outcomes take a short
//! lock only to run the algorithm.
//!
//! The hot path is one atomic load (the pause), one load (the limit) and one
//! compare-and-swap (in flight) to acquire, and one decrement to release; the
//! clock is read only while a pause is pending or when an AIMD or
//! `Retry-After` outcome needs the time. `Fixed` takes no lock at all.

use super::aimd::Aimd;
use super::gradient::Gradient2;
use super::{Algorithm, InvalidConfig, Outcome};
use crate::clock::{saturating_nanos, Clock, TokioClock};
use parking_lot::Mutex;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why [`AdaptiveConcurrency::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    /// `in_flight` requests are already in flight, at or over `limit`; one
    /// must complete first.
    #[error("at concurrency limit {limit} ({in_flight} in flight)")]
    AtLimit { limit: usize, in_flight: usize },
    /// The downstream asked (`Retry-After`) for no requests for `wait` more.
    #[error("paused by downstream Retry-After; next request allowed in {wait:?}")]
    Paused { wait: Duration },
}

/// The algorithm's mutable state; `Fixed` has none.
#[derive(Debug)]
enum State {
    Aimd(Aimd),
    Gradient2(Gradient2),
}

struct Shared<C> {
    clock: C,
    algorithm: Algorithm,
    in_flight: AtomicUsize,
    limit: AtomicUsize,
    /// Some acquire in the current AIMD window hit the limit.
    reached_limit: AtomicBool,
    /// Clock reading (ns) before which nothing is admitted; 0 when no pause
    /// is pending, so the common case reads no clock.
    paused_until: AtomicU64,
    state: Option<Mutex<State>>,
}

impl<C> Shared<C> {
    /// Records that demand reached the limit, which is what lets AIMD grow
    /// it. Only AIMD reads the flag; the load first keeps a saturated
    /// limiter from bouncing the cache line between cores with stores.
    fn note_demand_at_limit(&self) {
        if matches!(self.algorithm, Algorithm::Aimd(_))
            && !self.reached_limit.load(Ordering::Relaxed)
        {
            self.reached_limit.store(true, Ordering::Release);
        }
    }
}

/// An adaptive concurrency limit for one downstream; clones share it.
pub struct AdaptiveConcurrency<C: Clock = TokioClock> {
    shared: Arc<Shared<C>>,
}

impl<C: Clock> Clone for AdaptiveConcurrency<C> {
    fn clone(&self) -> Self {
        AdaptiveConcurrency {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: Clock> fmt::Debug for AdaptiveConcurrency<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveConcurrency")
            .field("algorithm", &self.shared.algorithm)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

impl AdaptiveConcurrency<TokioClock> {
    /// A limiter on tokio time.
    pub fn new(algorithm: Algorithm) -> Result<Self, InvalidConfig> {
        AdaptiveConcurrency::with_clock(algorithm, TokioClock::new())
    }
}

impl<C: Clock> AdaptiveConcurrency<C> {
    /// A limiter reading time from `clock`, starting at the algorithm's
    /// initial limit with nothing in flight.
    pub fn with_clock(algorithm: Algorithm, clock: C) -> Result<Self, InvalidConfig> {
        algorithm.validate()?;
        let (limit, state) = match algorithm {
            Algorithm::Fixed(n) => (n, None),
            Algorithm::Aimd(config) => {
                let aimd = Aimd::new(config);
                (aimd.limit(), Some(State::Aimd(aimd)))
            }
            Algorithm::Gradient2(config) => {
                let gradient = Gradient2::new(config);
                (gradient.limit(), Some(State::Gradient2(gradient)))
            }
        };
        Ok(AdaptiveConcurrency {
            shared: Arc::new(Shared {
                clock,
                algorithm,
                in_flight: AtomicUsize::new(0),
                limit: AtomicUsize::new(limit),
                reached_limit: AtomicBool::new(false),
                paused_until: AtomicU64::new(0),
                state: state.map(Mutex::new),
            }),
        })
    }

    /// The algorithm and settings in use.
    pub fn algorithm(&self) -> &Algorithm {
        &self.shared.algorithm
    }

    /// The current limit (the `spillway_trigger_concurrency_limit` gauge).
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Acquire)
    }

    /// Requests in flight now (the `spillway_trigger_inflight` gauge).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Admits one request if no pause is pending and fewer than the limit
    /// are in flight.
    pub fn try_acquire(&self) -> Result<Token<C>, Busy> {
        let shared = &*self.shared;
        let until = shared.paused_until.load(Ordering::Acquire);
        if until != 0 {
            let now = saturating_nanos(shared.clock.now());
            if now < until {
                return Err(Busy::Paused {
                    wait: Duration::from_nanos(until - now),
                });
            }
            // Back to the clock-free path; losing this race to a new, later
            // pause leaves that pause in place.
            let _ =
                shared
                    .paused_until
                    .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Acquire);
        }
        let limit = shared.limit.load(Ordering::Acquire);
        let mut in_flight = shared.in_flight.load(Ordering::Acquire);
        loop {
            if in_flight >= limit {
                shared.note_demand_at_limit();
                return Err(Busy::AtLimit { limit, in_flight });
            }
            match shared.in_flight.compare_exchange_weak(
                in_flight,
                in_flight + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => in_flight = actual,
            }
        }
        let in_flight = in_flight + 1;
        if in_flight >= limit {
            shared.note_demand_at_limit();
        }
        Ok(Token {
            shared: Arc::clone(&self.shared),
            in_flight,
            released: false,
        })
    }
}

impl<C: Clock> Shared<C> {
    fn record(&self, in_flight_at_acquire: usize, outcome: Outcome) {
        let mut now = None;
        let mut now = || *now.get_or_insert_with(|| self.clock.now());
        let rtt = match outcome {
            Outcome::Success { rtt } => Some(rtt),
            Outcome::Dropped { retry_after, .. } => {
                if let Some(wait) = retry_after.filter(|wait| !wait.is_zero()) {
                    let until = saturating_nanos(now()).saturating_add(saturating_nanos(wait));
                    self.paused_until.fetch_max(until, Ordering::AcqRel);
                }
                None
            }
        };
        let Some(state) = &self.state else {
            return;
        };
        let mut state = state.lock();
        let limit = match &mut *state {
            State::Aimd(aimd) => aimd.on_sample(now(), rtt, || {
                self.reached_limit.swap(false, Ordering::AcqRel)
            }),
            State::Gradient2(gradient) => gradient.on_sample(rtt, in_flight_at_acquire),
        };
        self.limit.store(limit, Ordering::Release);
    }
}

/// One admitted request: report how it ended with [`Token::complete`].
/// Dropping it instead frees the slot without a sample.
#[must_use = "dropping a token at once frees its slot; complete it when the request ends"]
pub struct Token<C: Clock = TokioClock> {
    shared: Arc<Shared<C>>,
    in_flight: usize,
    released: bool,
}

impl<C: Clock> Token<C> {
    /// Requests in flight, this one included, when it was admitted.
    pub fn in_flight_at_acquire(&self) -> usize {
        self.in_flight
    }

    /// Frees the slot and feeds `outcome` to the algorithm (and a
    /// `Retry-After` to the pause).
    pub fn complete(mut self, outcome: Outcome) {
        // Free the slot before taking the algorithm's lock, as Vector does,
        // so acquirers are not refused for the length of the update.
        self.release();
        self.shared.record(self.in_flight, outcome);
    }

    fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<C: Clock> Drop for Token<C> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<C: Clock> fmt::Debug for Token<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("in_flight_at_acquire", &self.in_flight)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adaptive::{AimdConfig, DropReason, Gradient2Config};
    use crate::clock::FakeClock;

    const MS: Duration = Duration::from_millis(1);

    fn limiter(algorithm: Algorithm) -> (AdaptiveConcurrency<FakeClock>, FakeClock) {
        let clock = FakeClock::new();
        let limiter = AdaptiveConcurrency::with_clock(algorithm, clock.clone()).unwrap();
        (limiter, clock)
    }

    fn aimd(initial_limit: usize, max_limit: usize) -> Algorithm {
        Algorithm::Aimd(AimdConfig {
            initial_limit,
            max_limit,
            ..AimdConfig::default()
        })
    }

    fn success(rtt: Duration) -> Outcome {
        Outcome::Success { rtt }
    }

    /// Fills the limit, lets `rtt` pass, completes every request with it.
    fn saturated_batch(limiter: &AdaptiveConcurrency<FakeClock>, clock: &FakeClock, rtt: Duration) {
        let limit = limiter.limit();
        let tokens: Vec<_> = (0..limit).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::AtLimit {
                limit,
                in_flight: limit
            }
        );
        clock.advance(rtt);
        for token in tokens {
            token.complete(success(rtt));
        }
    }

    /// One request after an idle second, long enough that every completion
    /// closes an AIMD window of its own.
    fn lone_request(
        limiter: &AdaptiveConcurrency<FakeClock>,
        clock: &FakeClock,
        rtt: Duration,
        outcome: Outcome,
    ) {
        clock.advance(Duration::from_secs(1));
        let token = limiter.try_acquire().unwrap();
        clock.advance(rtt);
        token.complete(outcome);
    }

    #[test]
    fn aimd_climbs_by_exactly_one_per_saturated_window() {
        let (limiter, clock) = limiter(aimd(1, 200));
        // The first window only seeds the long-run RTT.
        saturated_batch(&limiter, &clock, 100 * MS);
        assert_eq!(limiter.limit(), 1);
        for expected in 2..=40 {
            saturated_batch(&limiter, &clock, 100 * MS);
            assert_eq!(limiter.limit(), expected);
        }
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn aimd_stops_at_max() {
        let (limiter, clock) = limiter(aimd(1, 5));
        for _ in 0..20 {
            saturated_batch(&limiter, &clock, 100 * MS);
        }
        assert_eq!(limiter.limit(), 5);
    }

    /// No evidence more was wanted: no increase; and a steady RTT is no
    /// reason to decrease either (Vector's `>=` would cut here).
    #[test]
    fn aimd_holds_when_unsaturated_and_steady() {
        let (limiter, clock) = limiter(aimd(4, 200));
        for _ in 0..20 {
            lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        }
        assert_eq!(limiter.limit(), 4);
    }

    /// Each window with a drop: floor(limit × 0.9), never below 1, once per
    /// window however many drops it had.
    #[test]
    fn aimd_drops_decrease_multiplicatively_once_per_window() {
        let (limiter, clock) = limiter(aimd(100, 200));
        lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        let mut limits = Vec::new();
        for reason in [
            DropReason::TooManyRequests,
            DropReason::Unavailable,
            DropReason::Timeout,
            DropReason::TooManyRequests,
        ] {
            lone_request(&limiter, &clock, 100 * MS, Outcome::dropped(reason));
            limits.push(limiter.limit());
        }
        // 90, 81, floor(72.9) = 72, floor(64.8) = 64
        assert_eq!(limits, [90, 81, 72, 64]);

        // Three 429s and two fast successes inside one window (it ends
        // 100 ms after the last close): one decrease, when it closes.
        let tokens: Vec<_> = (0..5).map(|_| limiter.try_acquire().unwrap()).collect();
        clock.advance(50 * MS);
        for (i, token) in tokens.into_iter().enumerate() {
            let outcome = if i < 2 {
                success(50 * MS)
            } else {
                Outcome::dropped(DropReason::TooManyRequests)
            };
            token.complete(outcome);
        }
        assert_eq!(limiter.limit(), 64);
        lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        // floor(57.6)
        assert_eq!(limiter.limit(), 57);

        let (limiter, clock) = self::limiter(aimd(3, 200));
        lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        let mut limits = Vec::new();
        for _ in 0..4 {
            lone_request(
                &limiter,
                &clock,
                100 * MS,
                Outcome::dropped(DropReason::Timeout),
            );
            limits.push(limiter.limit());
        }
        // floor(2.7) = 2, floor(1.8) = 1, then never below 1.
        assert_eq!(limits, [2, 1, 1, 1]);
    }

    /// Windows of 100, 100, 80 ms leave a long-run mean of 92 ms with
    /// variance 0.6 × 20 × 8 = 96 ms², so the band is
    /// 92 + 2.5 × √96 = 116.49 ms: 115 ms is inside, 120 ms is beyond.
    #[test]
    fn aimd_rtt_beyond_the_deviation_band_decreases() {
        for (rtt_ms, expected) in [(115, 4), (120, 3)] {
            let (limiter, clock) = limiter(aimd(4, 200));
            for ms in [100, 100, 80] {
                lone_request(&limiter, &clock, ms * MS, success(ms * MS));
            }
            assert_eq!(limiter.limit(), 4);
            lone_request(&limiter, &clock, rtt_ms * MS, success(rtt_ms * MS));
            assert_eq!(limiter.limit(), expected, "{rtt_ms} ms");
        }
        // After a flat history the band has no width: any rise decreases.
        let (limiter, clock) = limiter(aimd(4, 200));
        for ms in [100, 100, 101] {
            lone_request(&limiter, &clock, ms * MS, success(ms * MS));
        }
        assert_eq!(limiter.limit(), 3);
    }

    #[test]
    fn retry_after_pauses_everything_for_exactly_its_duration_and_is_a_drop() {
        let (limiter, clock) = limiter(aimd(10, 200));
        lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        lone_request(
            &limiter,
            &clock,
            100 * MS,
            Outcome::Dropped {
                reason: DropReason::TooManyRequests,
                retry_after: Some(Duration::from_secs(5)),
            },
        );
        assert_eq!(limiter.limit(), 9);
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::Paused {
                wait: Duration::from_secs(5)
            }
        );
        clock.advance(Duration::from_millis(4_999));
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::Paused { wait: MS }
        );
        clock.advance(MS);
        let token = limiter.try_acquire().unwrap();
        assert_eq!(token.in_flight_at_acquire(), 1);
    }

    #[test]
    fn a_shorter_retry_after_never_cuts_a_pause_short_and_a_longer_one_extends_it() {
        let (limiter, clock) = limiter(Algorithm::Fixed(3));
        let [a, b, c] = [(); 3].map(|_| limiter.try_acquire().unwrap());
        let retry = |secs| Outcome::Dropped {
            reason: DropReason::Unavailable,
            retry_after: Some(Duration::from_secs(secs)),
        };
        a.complete(retry(5));
        clock.advance(Duration::from_secs(1));
        b.complete(retry(1));
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::Paused {
                wait: Duration::from_secs(4)
            }
        );
        c.complete(retry(10));
        clock.advance(Duration::from_secs(4));
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::Paused {
                wait: Duration::from_secs(6)
            }
        );
        clock.advance(Duration::from_secs(6));
        assert!(limiter.try_acquire().is_ok());
        // A Retry-After of zero is a drop but no pause.
        limiter.try_acquire().unwrap().complete(Outcome::Dropped {
            reason: DropReason::TooManyRequests,
            retry_after: Some(Duration::ZERO),
        });
        assert!(limiter.try_acquire().is_ok());
    }

    #[test]
    fn fixed_limit_never_moves() {
        let (limiter, clock) = limiter(Algorithm::Fixed(3));
        let tokens: Vec<_> = (0..3).map(|_| limiter.try_acquire().unwrap()).collect();
        assert_eq!(
            limiter.try_acquire().unwrap_err(),
            Busy::AtLimit {
                limit: 3,
                in_flight: 3
            }
        );
        clock.advance(100 * MS);
        for token in tokens {
            token.complete(Outcome::dropped(DropReason::TooManyRequests));
        }
        assert_eq!((limiter.limit(), limiter.in_flight()), (3, 0));
    }

    /// A token dropped without an outcome frees its slot and is no sample.
    #[test]
    fn dropped_tokens_free_the_slot_without_a_sample() {
        let (limiter, clock) = limiter(aimd(2, 200));
        lone_request(&limiter, &clock, 100 * MS, success(100 * MS));
        for _ in 0..10 {
            let a = limiter.try_acquire().unwrap();
            let b = limiter.try_acquire().unwrap();
            assert_eq!(limiter.in_flight(), 2);
            clock.advance(Duration::from_secs(1));
            drop((a, b));
        }
        assert_eq!((limiter.limit(), limiter.in_flight()), (2, 0));
    }

    /// The in-flight count at admission reaches Gradient2: a lone request
    /// is app-limited (1 < 20 / 2) and never grows the limit; one admitted
    /// with 19 others in flight moves it by +0.8.
    #[test]
    fn gradient_sees_in_flight_at_admission() {
        let (limiter, _clock) = limiter(Algorithm::Gradient2(Gradient2Config::default()));
        for _ in 0..20 {
            limiter.try_acquire().unwrap().complete(success(100 * MS));
        }
        assert_eq!(limiter.limit(), 20);
        let held: Vec<_> = (0..19).map(|_| limiter.try_acquire().unwrap()).collect();
        let mut limits = Vec::new();
        for _ in 0..3 {
            let token = limiter.try_acquire().unwrap();
            assert_eq!(token.in_flight_at_acquire(), 20);
            token.complete(success(100 * MS));
            limits.push(limiter.limit());
        }
        // 20.8, 21.6, 22.4
        assert_eq!(limits, [20, 21, 22]);
        drop(held);
        assert_eq!(limiter.in_flight(), 0);
    }

    #[test]
    fn concurrent_acquires_never_exceed_the_limit() {
        let (limiter, _clock) = limiter(Algorithm::Fixed(3));
        let live = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (limiter, live) = (limiter.clone(), Arc::clone(&live));
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if let Ok(token) = limiter.try_acquire() {
                            assert!(token.in_flight_at_acquire() <= 3);
                            assert!(live.fetch_add(1, Ordering::SeqCst) < 3);
                            live.fetch_sub(1, Ordering::SeqCst);
                            token.complete(success(MS));
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(limiter.in_flight(), 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Acquire,
            Complete(usize, Outcome),
            Forget(usize),
            Advance(Duration),
        }

        fn algorithm() -> impl Strategy<Value = Algorithm> {
            prop_oneof![
                (1usize..50).prop_map(Algorithm::Fixed),
                (1usize..60, 1usize..60).prop_map(|(initial, max)| aimd(initial, max)),
                (1usize..30, 0usize..60, 1usize..80, 0usize..8).prop_map(
                    |(min, extra, initial, queue_size)| {
                        Algorithm::Gradient2(Gradient2Config {
                            min_limit: min,
                            max_limit: min + extra,
                            initial_limit: initial,
                            queue_size,
                            ..Gradient2Config::default()
                        })
                    }
                ),
            ]
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            let reason = prop_oneof![
                Just(DropReason::TooManyRequests),
                Just(DropReason::Unavailable),
                Just(DropReason::Timeout),
            ];
            prop_oneof![
                3 => (0u64..2_000).prop_map(|ms| success(Duration::from_millis(ms))),
                1 => (reason, proptest::option::of(0u64..10_000)).prop_map(|(reason, ms)| {
                    Outcome::Dropped {
                        reason,
                        retry_after: ms.map(Duration::from_millis),
                    }
                }),
            ]
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Acquire),
                4 => (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Complete(i, o)),
                1 => any::<usize>().prop_map(Op::Forget),
                2 => (0u64..500).prop_map(|ms| Op::Advance(Duration::from_millis(ms))),
            ]
        }

        proptest! {
            /// Over any outcomes, the limit stays within [min, max]; an
            /// admission leaves in_flight ≤ limit; a refusal at the limit
            /// means in_flight ≥ limit; a pause is refused for exactly its
            /// remaining time.
            #[test]
            fn limit_stays_in_bounds_and_admission_respects_it(
                algorithm in algorithm(),
                ops in prop::collection::vec(op(), 1..400),
            ) {
                let (limiter, clock) = limiter(algorithm);
                let (min, max) = (algorithm.min_limit(), algorithm.max_limit());
                let mut tokens = Vec::new();
                for op in ops {
                    match op {
                        Op::Acquire => match limiter.try_acquire() {
                            Ok(token) => {
                                prop_assert!(limiter.in_flight() <= limiter.limit());
                                prop_assert_eq!(token.in_flight_at_acquire(), limiter.in_flight());
                                tokens.push(token);
                            }
                            Err(Busy::AtLimit { limit, in_flight }) => {
                                prop_assert!(in_flight >= limit);
                                prop_assert_eq!(limit, limiter.limit());
                            }
                            Err(Busy::Paused { wait }) => {
                                prop_assert!(wait > Duration::ZERO);
                                clock.advance(wait - Duration::from_nanos(1));
                                let still = matches!(limiter.try_acquire(), Err(Busy::Paused { .. }));
                                prop_assert!(still);
                                clock.advance(Duration::from_nanos(1));
                                let resumed = !matches!(limiter.try_acquire(), Err(Busy::Paused { .. }));
                                prop_assert!(resumed);
                            }
                        },
                        Op::Complete(i, outcome) if !tokens.is_empty() => {
                            let token = tokens.swap_remove(i % tokens.len());
                            token.complete(outcome);
                        }
                        Op::Forget(i) if !tokens.is_empty() => {
                            drop(tokens.swap_remove(i % tokens.len()));
                        }
                        Op::Advance(by) => clock.advance(by),
                        Op::Complete(..) | Op::Forget(_) => {}
                    }
                    let limit = limiter.limit();
                    prop_assert!((min..=max).contains(&limit), "{limit} outside [{min}, {max}]");
                    prop_assert_eq!(limiter.in_flight(), tokens.len());
                }
            }
        }
    }
}
