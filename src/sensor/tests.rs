//! Runner behaviour on paused tokio time with the in-memory bus and a
//! trigger that records when it was called: exact counts, no sleeps-and-hope.

use super::*;
use crate::event::Event;
use crate::telemetry::Metrics;
use crate::triggers::{CustomTrigger, DropReason, Trigger, TriggerError};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use spillway_bus::memory::MemoryBus;
use spillway_bus::{Bus, Consumer, ConsumerConfig, Limits};
use spillway_flowctl::{AdaptiveConcurrency, AimdConfig, Algorithm, RateLimit, RateLimiter};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Records the (paused) time of every call, measured from its creation.
struct Recorder {
    calls: Mutex<Vec<Duration>>,
    start: Instant,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            calls: Mutex::new(Vec::new()),
            start: Instant::now(),
        }
    }
}

impl Recorder {
    fn calls(&self) -> Vec<Duration> {
        self.calls.lock().clone()
    }
}

#[async_trait]
impl CustomTrigger for Recorder {
    async fn invoke(&self, _dependency: &str, _event: &Event) -> Result<(), TriggerError> {
        self.calls.lock().push(self.start.elapsed());
        Ok(())
    }
}

struct Setup {
    bus: Arc<MemoryBus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Setup {
    async fn new(events: usize) -> Setup {
        let bus = MemoryBus::new(Limits::default());
        for i in 0..events {
            let event = Event::new(
                "src",
                "orders",
                "orders",
                Bytes::from(format!("{{\"n\":{i}}}")),
            );
            bus.publish(event.to_message()).await.expect("publish");
        }
        Setup {
            bus,
            metrics: Arc::new(Metrics::new()),
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
        }
    }

    async fn runner(
        &mut self,
        trigger: &str,
        recorder: &Arc<Recorder>,
        limits: TriggerLimits,
    ) -> Arc<dyn Consumer> {
        let action = Arc::clone(recorder) as Arc<dyn CustomTrigger>;
        self.runner_with(trigger, action, None, limits).await.1
    }

    /// Starts a runner for `action` (and `dlq`); returns its handle and consumer.
    async fn runner_with(
        &mut self,
        trigger: &str,
        action: Arc<dyn CustomTrigger>,
        dlq: Option<Arc<dyn CustomTrigger>>,
        limits: TriggerLimits,
    ) -> (TriggerHandle, Arc<dyn Consumer>) {
        let mut config = ConsumerConfig::new(format!("sensor-{trigger}"));
        config.filter_subjects = vec![Event::subject_for("src", "orders")];
        config.max_ack_pending = limits.max_fetched();
        config.ack_wait = limits.ack_wait;
        let consumer = self.bus.consumer(config).await.expect("consumer");
        let runner = TriggerRunner::new(
            "sensor",
            trigger,
            vec![DependencyMatcher {
                name: "orders".into(),
                subject: Event::subject_for("src", "orders"),
                filters: None,
            }],
            Trigger::Custom(action),
            dlq.map(Trigger::Custom),
            Arc::clone(&consumer),
            limits,
            Arc::clone(&self.metrics),
        );
        let handle = runner.handle();
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(runner.run(shutdown));
        (handle, consumer)
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A fixed window of `max_in_flight`, no retries, no rate limits.
fn limits(max_in_flight: usize) -> TriggerLimits {
    TriggerLimits {
        max_in_flight,
        concurrency: AdaptiveConcurrency::new(Algorithm::Fixed(max_in_flight))
            .expect("a fixed window is valid"),
        retry: RetryPolicy::default(),
        rate: None,
        sensor_rate: None,
        slow_start: None,
        ack_wait: Duration::from_secs(30),
        at_least_once: true,
        max_pending: spillway_flowctl::DEFAULT_MAX_PENDING,
        on_reject: RejectPolicy::Error,
        autoscale: None,
        priority: None,
    }
}

fn min_gap(calls: &[Duration]) -> Duration {
    calls
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .unwrap_or(Duration::MAX)
}

/// Seed 000: sensor `rateLimit: {requestsPerUnit: 10, unit: minute}`.
#[tokio::test(start_paused = true)]
async fn sensor_rate_limit_10_per_minute_gives_exactly_50_calls_in_5_minutes() {
    let mut setup = Setup::new(200).await;
    let recorder = Arc::new(Recorder::default());
    let sensor_rate = Arc::new(RateLimiter::new(
        RateLimit::new(10, spillway_flowctl::RateUnit::Minute).unwrap(),
    ));
    setup
        .runner(
            "process",
            &recorder,
            TriggerLimits {
                sensor_rate: Some(sensor_rate),
                ..limits(16)
            },
        )
        .await;
    // The first call is at 0 s, then one every 6 s: 0, 6, …, 294 s.
    tokio::time::sleep(Duration::from_secs(299)).await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), 50);
    assert_eq!(min_gap(&calls), Duration::from_secs(6));
    // Events waiting for the limit stay in the bus, not in the runner.
    assert_eq!(setup.bus.stats().messages, 150);
    setup.stop().await;
}

/// Seed 000: trigger `rateLimit: {requestsPerUnit: 100, unit: second}`.
#[tokio::test(start_paused = true)]
async fn trigger_rate_limit_100_per_second_gives_exactly_100_per_second() {
    let mut setup = Setup::new(1000).await;
    let recorder = Arc::new(Recorder::default());
    let rate = RateLimiter::new(RateLimit::per_second(100).unwrap());
    setup
        .runner(
            "api-call",
            &recorder,
            TriggerLimits {
                rate: Some(rate),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(9_995)).await;
    let calls = recorder.calls();
    assert_eq!(calls.len(), 1000);
    for second in 0..10u64 {
        let in_second = calls.iter().filter(|t| t.as_secs() == second).count();
        assert_eq!(in_second, 100, "second {second}");
    }
    assert_eq!(min_gap(&calls), Duration::from_millis(10));
    setup.stop().await;
}

/// Two triggers sharing a sensor limit: the sum obeys the sensor limit and
/// each trigger its own.
#[tokio::test(start_paused = true)]
async fn triggers_share_the_sensor_limit_without_exceeding_their_own() {
    let mut setup = Setup::new(100).await;
    let sensor_rate = Arc::new(RateLimiter::new(RateLimit::per_second(10).unwrap()));
    let fast = Arc::new(Recorder::default());
    let slow = Arc::new(Recorder::default());
    setup
        .runner(
            "fast",
            &fast,
            TriggerLimits {
                sensor_rate: Some(Arc::clone(&sensor_rate)),
                ..limits(16)
            },
        )
        .await;
    setup
        .runner(
            "slow",
            &slow,
            TriggerLimits {
                sensor_rate: Some(Arc::clone(&sensor_rate)),
                rate: Some(RateLimiter::new(RateLimit::per_second(2).unwrap())),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut all: Vec<Duration> = fast.calls();
    all.extend(slow.calls());
    all.sort();
    assert!(min_gap(&all) >= Duration::from_millis(100), "{all:?}");
    assert!(min_gap(&slow.calls()) >= Duration::from_millis(500));
    // 10 s at 10/s: at most 101 calls in total (burst 1 at t = 0).
    assert!(all.len() <= 101, "{}", all.len());
    assert!(!slow.calls().is_empty());
    setup.stop().await;
}

/// Events held while a long rate wait runs are kept alive: none is
/// redelivered, each is called exactly once.
#[tokio::test(start_paused = true)]
async fn held_events_are_not_redelivered_during_a_long_rate_wait() {
    let mut setup = Setup::new(5).await;
    let recorder = Arc::new(Recorder::default());
    // One per minute with a 10 s ack_wait: every held event would expire
    // several times over without in_progress.
    let rate = RateLimiter::new(RateLimit::new(1, spillway_flowctl::RateUnit::Minute).unwrap());
    let consumer = setup
        .runner(
            "slow",
            &recorder,
            TriggerLimits {
                rate: Some(rate),
                ack_wait: Duration::from_secs(10),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;
    assert_eq!(recorder.calls().len(), 5);
    assert_eq!(consumer.stats().redelivered, 0);
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// A trigger call that runs for 6× `ack_wait` is kept alive: the bus does
/// not hand the event to another worker while it runs.
#[tokio::test(start_paused = true)]
async fn a_call_longer_than_ack_wait_is_not_redelivered_while_it_runs() {
    let mut setup = Setup::new(3).await;
    let slow = Arc::new(Latency {
        millis: AtomicUsize::new(60_000),
    });
    let (_, consumer) = setup
        .runner_with(
            "slow",
            Arc::clone(&slow) as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                ack_wait: Duration::from_secs(10),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(consumer.stats().redelivered, 0);
    assert_eq!(setup.bus.stats().messages, 0, "all three acked");
    setup.stop().await;
}

/// The credit window caps concurrent invocations.
#[tokio::test(start_paused = true)]
async fn max_in_flight_caps_concurrent_invocations() {
    struct Slow {
        running: AtomicUsize,
        peak: AtomicUsize,
        done: AtomicUsize,
    }
    #[async_trait]
    impl CustomTrigger for Slow {
        async fn invoke(&self, _: &str, _: &Event) -> Result<(), TriggerError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.done.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let mut setup = Setup::new(40).await;
    let slow = Arc::new(Slow {
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
    });
    setup
        .runner_with(
            "slow",
            Arc::clone(&slow) as Arc<dyn CustomTrigger>,
            None,
            limits(4),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(slow.peak.load(Ordering::SeqCst), 4);
    assert_eq!(slow.done.load(Ordering::SeqCst), 40);
    setup.stop().await;
}

/// Answers `429 Retry-After: 2s` to its first `refusals` calls, then succeeds;
/// records every call's time and the events it accepted.
struct TooBusyAtFirst {
    refusals: usize,
    start: Instant,
    calls: Mutex<Vec<(Duration, bool)>>,
    accepted: Mutex<Vec<String>>,
}

#[async_trait]
impl CustomTrigger for TooBusyAtFirst {
    async fn invoke(&self, _: &str, event: &Event) -> Result<(), TriggerError> {
        let mut calls = self.calls.lock();
        let refuse = calls.len() < self.refusals;
        calls.push((self.start.elapsed(), refuse));
        if refuse {
            return Err(TriggerError::Retryable {
                message: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(2)),
                pushback: Some(DropReason::TooManyRequests),
            });
        }
        self.accepted.lock().push(event.context.id.clone());
        Ok(())
    }
}

/// Issue 6: a downstream answering 429 + `Retry-After: 2` to its first 3
/// calls gets no request before each Retry-After has elapsed, and every
/// event is delivered exactly once, without spending retry steps.
#[tokio::test(start_paused = true)]
async fn downstream_retry_after_pauses_the_trigger_and_is_not_a_retry_step() {
    let mut setup = Setup::new(10).await;
    let downstream = Arc::new(TooBusyAtFirst {
        refusals: 3,
        start: Instant::now(),
        calls: Mutex::new(Vec::new()),
        accepted: Mutex::new(Vec::new()),
    });
    // A single slot makes the call order, and so the timing, exact.
    let (_, consumer) = setup
        .runner_with(
            "api",
            Arc::clone(&downstream) as Arc<dyn CustomTrigger>,
            None,
            limits(1),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let calls = downstream.calls.lock().clone();
    // Calls at 0 s, 2 s, 4 s (refused), then 6 s onwards.
    let refused: Vec<Duration> = calls.iter().filter(|c| c.1).map(|c| c.0).collect();
    assert_eq!(
        refused,
        [0, 2, 4].map(Duration::from_secs).to_vec(),
        "{calls:?}"
    );
    for pair in calls.windows(2) {
        if pair[0].1 {
            assert!(pair[1].0 - pair[0].0 >= Duration::from_secs(2), "{calls:?}");
        }
    }
    let mut accepted = downstream.accepted.lock().clone();
    assert_eq!(accepted.len(), 10);
    accepted.sort();
    accepted.dedup();
    assert_eq!(accepted.len(), 10, "an event was delivered twice");
    // With the default retryStrategy (1 attempt) a counted retry would have
    // terminated the event; none was, and nothing was redelivered.
    assert_eq!(setup.bus.stats().messages, 0);
    assert_eq!(consumer.stats().redelivered, 0);
    setup.stop().await;
}

/// Answers after `latency`, which the test changes while running.
struct Latency {
    millis: AtomicUsize,
}

#[async_trait]
impl CustomTrigger for Latency {
    async fn invoke(&self, _: &str, _: &Event) -> Result<(), TriggerError> {
        let ms = self.millis.load(Ordering::SeqCst) as u64;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(())
    }
}

/// Issue 6: when the downstream slows down ×10 the AIMD limit falls; when it
/// recovers the limit climbs back.
#[tokio::test(start_paused = true)]
async fn aimd_limit_falls_when_latency_rises_and_climbs_back_after() {
    let mut setup = Setup::new(60_000).await;
    let downstream = Arc::new(Latency {
        millis: AtomicUsize::new(10),
    });
    let mut limits = limits(32);
    limits.concurrency = AdaptiveConcurrency::new(Algorithm::Aimd(AimdConfig {
        max_limit: 32,
        ..AimdConfig::default()
    }))
    .expect("valid AIMD");
    let (handle, _) = setup
        .runner_with(
            "api",
            Arc::clone(&downstream) as Arc<dyn CustomTrigger>,
            None,
            limits,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fast = handle.concurrency_limit();
    assert!(fast >= 16, "AIMD should have climbed from 1, got {fast}");

    downstream.millis.store(100, Ordering::SeqCst);
    let mut lowest = fast;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        lowest = lowest.min(handle.concurrency_limit());
    }
    assert!(lowest < fast, "limit {fast} did not fall (lowest {lowest})");

    downstream.millis.store(10, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let recovered = handle.concurrency_limit();
    assert!(
        recovered > lowest,
        "limit did not climb back: fast {fast}, lowest {lowest}, now {recovered}"
    );
    setup.stop().await;
}

/// Always fails with a plain retryable error.
struct AlwaysFails {
    start: Instant,
    calls: Mutex<Vec<(String, Duration)>>,
}

#[async_trait]
impl CustomTrigger for AlwaysFails {
    async fn invoke(&self, _: &str, event: &Event) -> Result<(), TriggerError> {
        self.calls
            .lock()
            .push((event.context.id.clone(), self.start.elapsed()));
        Err(TriggerError::Retryable {
            message: "HTTP 500".into(),
            retry_after: None,
            pushback: None,
        })
    }
}

/// Issue 6: a downstream that always fails gets exactly `steps` attempts per
/// event with growing gaps, then exactly one DLQ call per event.
#[tokio::test(start_paused = true)]
async fn retries_use_exactly_the_steps_then_one_dlq_call_per_event() {
    let mut setup = Setup::new(3).await;
    let failing = Arc::new(AlwaysFails {
        start: Instant::now(),
        calls: Mutex::new(Vec::new()),
    });
    let dlq = Arc::new(Recorder::default());
    let (_, consumer) = setup
        .runner_with(
            "api",
            Arc::clone(&failing) as Arc<dyn CustomTrigger>,
            Some(Arc::clone(&dlq) as Arc<dyn CustomTrigger>),
            TriggerLimits {
                retry: RetryPolicy {
                    steps: 4,
                    duration: Duration::from_secs(1),
                    factor: 2.0,
                    jitter: 0.0,
                },
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = failing.calls.lock().clone();
    let mut ids: Vec<&String> = calls.iter().map(|c| &c.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for id in ids {
        let times: Vec<Duration> = calls.iter().filter(|c| &c.0 == id).map(|c| c.1).collect();
        assert_eq!(times.len(), 4, "attempts of {id}: {times:?}");
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // 1 s, 2 s, 4 s, each plus up to one fetch wait (1 s) of latency.
        for (gap, expected) in gaps.iter().zip([1, 2, 4]) {
            let expected = Duration::from_secs(expected);
            assert!(
                *gap >= expected && *gap <= expected + Duration::from_secs(1),
                "gaps of {id}: {gaps:?}"
            );
        }
    }
    assert_eq!(dlq.calls().len(), 3);
    assert_eq!(setup.bus.stats().messages, 0);
    assert_eq!(consumer.stats().ack_pending, 0);
    setup.stop().await;
}

/// Never answers.
struct Hangs;

#[async_trait]
impl CustomTrigger for Hangs {
    async fn invoke(&self, _: &str, _: &Event) -> Result<(), TriggerError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Issue 6: a trigger whose downstream hangs does not slow its sibling.
#[tokio::test(start_paused = true)]
async fn a_hanging_trigger_does_not_slow_its_sibling() {
    let mut setup = Setup::new(1000).await;
    let fast = Arc::new(Recorder::default());
    setup
        .runner_with("hangs", Arc::new(Hangs), None, limits(16))
        .await;
    let rate = RateLimiter::new(RateLimit::per_second(100).unwrap());
    setup
        .runner(
            "fast",
            &fast,
            TriggerLimits {
                rate: Some(rate),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_millis(9_995)).await;
    // Its full rate: 100/s for 10 s.
    assert_eq!(fast.calls().len(), 1000);
    setup.shutdown.cancel();
    // The hanging invocations never end; don't wait for them.
    setup.tasks.abort_all();
}

/// `atLeastOnce: false` (explicit): the bus is acked before the trigger
/// runs, the retries still happen (in memory), then the DLQ.
#[tokio::test(start_paused = true)]
async fn at_least_once_false_acks_first_and_still_retries_then_dlq() {
    let mut setup = Setup::new(2).await;
    let failing = Arc::new(AlwaysFails {
        start: Instant::now(),
        calls: Mutex::new(Vec::new()),
    });
    let dlq = Arc::new(Recorder::default());
    let (_, consumer) = setup
        .runner_with(
            "api",
            Arc::clone(&failing) as Arc<dyn CustomTrigger>,
            Some(Arc::clone(&dlq) as Arc<dyn CustomTrigger>),
            TriggerLimits {
                retry: RetryPolicy {
                    steps: 3,
                    duration: Duration::from_secs(1),
                    factor: 2.0,
                    jitter: 0.0,
                },
                at_least_once: false,
                ..limits(16)
            },
        )
        .await;
    // Acked before the first call: the bus is empty at once.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(setup.bus.stats().messages, 0);
    assert_eq!(consumer.stats().ack_pending, 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = failing.calls.lock().clone();
    assert_eq!(calls.len(), 6, "3 attempts for each of 2 events: {calls:?}");
    // In memory, exact: 0 s, 1 s, 3 s.
    let first: Vec<Duration> = calls
        .iter()
        .filter(|c| c.0 == calls[0].0)
        .map(|c| c.1)
        .collect();
    assert_eq!(first, [0, 1, 3].map(Duration::from_secs).to_vec());
    assert_eq!(dlq.calls().len(), 2);
    setup.stop().await;
}

/// `spillway_trigger_invocations_total` of `trigger` with `outcome`.
fn invocations(metrics: &Metrics, trigger: &str, outcome: &str) -> u64 {
    let series = format!(
        "spillway_trigger_invocations_total{{sensor=\"sensor\",trigger=\"{trigger}\",outcome=\"{outcome}\"}} "
    );
    metrics
        .encode()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Fails retryably (a refused connection) until `until`, or with a
/// permanent error when `permanent`; records (event id, time) per call.
struct DownUntil {
    until: Duration,
    permanent: bool,
    start: Instant,
    calls: Mutex<Vec<(String, Duration)>>,
}

impl DownUntil {
    fn new(until: Duration) -> Arc<DownUntil> {
        Arc::new(DownUntil {
            until,
            permanent: false,
            start: Instant::now(),
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls_of(&self, id: &str) -> usize {
        self.calls.lock().iter().filter(|c| c.0 == id).count()
    }
}

#[async_trait]
impl CustomTrigger for DownUntil {
    async fn invoke(&self, _: &str, event: &Event) -> Result<(), TriggerError> {
        let now = self.start.elapsed();
        self.calls.lock().push((event.context.id.clone(), now));
        if now >= self.until {
            return Ok(());
        }
        if self.permanent {
            return Err(TriggerError::Permanent {
                message: "HTTP 400".into(),
            });
        }
        Err(TriggerError::Retryable {
            message: "connection refused".into(),
            retry_after: None,
            pushback: None,
        })
    }
}

/// Issue 7: `onReject: error` (the default) never terminates a rejected
/// event: it goes back to the bus, stays counted in its depth, and is
/// delivered once the downstream is back.
#[tokio::test(start_paused = true)]
async fn on_reject_error_keeps_rejected_events_on_the_bus_until_the_downstream_is_back() {
    let mut setup = Setup::new(3).await;
    let down = DownUntil::new(Duration::from_secs(30));
    setup
        .runner_with(
            "api",
            Arc::clone(&down) as Arc<dyn CustomTrigger>,
            None,
            limits(16),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(29)).await;
    // Still held by the bus (that is what makes the sources push back).
    assert_eq!(setup.bus.stats().messages, 3);
    assert_eq!(invocations(&setup.metrics, "api", "failure"), 0);
    assert!(invocations(&setup.metrics, "api", "retry") >= 3 * 10);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(setup.bus.stats().messages, 0);
    assert_eq!(invocations(&setup.metrics, "api", "success"), 3);
    assert_eq!(invocations(&setup.metrics, "api", "failure"), 0);
    setup.stop().await;
}

/// Issue 7: `onReject: drop` acks a rejected event after its retry steps and
/// counts it `dropped`; nothing is retried after that.
#[tokio::test(start_paused = true)]
async fn on_reject_drop_acks_after_the_steps_and_counts_dropped() {
    let mut setup = Setup::new(5).await;
    let down = DownUntil::new(Duration::MAX);
    setup
        .runner_with(
            "metrics",
            Arc::clone(&down) as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                retry: RetryPolicy {
                    steps: 2,
                    ..RetryPolicy::default()
                },
                on_reject: RejectPolicy::Drop,
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(down.calls.lock().len(), 10);
    assert_eq!(invocations(&setup.metrics, "metrics", "dropped"), 5);
    assert_eq!(invocations(&setup.metrics, "metrics", "retry"), 5);
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// Issue 7: `onReject: backlog` stores rejected events and acks them; once
/// the store is full the rest stay on the bus (as with `error`), and a
/// permanent failure is never stored.
#[tokio::test(start_paused = true)]
async fn on_reject_backlog_stores_until_full_then_keeps_events_on_the_bus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        crate::backlog::BacklogStore::open(
            dir.path(),
            crate::backlog::BacklogLimits {
                max_events: 3,
                max_bytes: 1 << 20,
            },
        )
        .expect("store"),
    );
    let mut setup = Setup::new(5).await;
    let down = DownUntil::new(Duration::MAX);
    setup
        .runner_with(
            "api",
            Arc::clone(&down) as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                on_reject: RejectPolicy::Backlog(Arc::clone(&store)),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(invocations(&setup.metrics, "api", "backlog"), 3);
    assert_eq!(store.events(), 3);
    assert_eq!(setup.bus.stats().messages, 2);
    let scan = store.scan().expect("scan");
    for (_, record) in &scan.records {
        assert_eq!(
            (record.sensor.as_str(), record.trigger.as_str()),
            ("sensor", "api")
        );
        assert_eq!(down.calls_of(&record.event.context.id), 1);
    }
    setup.stop().await;

    let mut setup = Setup::new(1).await;
    let refused = Arc::new(DownUntil {
        permanent: true,
        ..Arc::into_inner(DownUntil::new(Duration::MAX)).expect("sole owner")
    });
    setup
        .runner_with(
            "strict",
            refused as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                on_reject: RejectPolicy::Backlog(Arc::clone(&store)),
                ..limits(16)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(invocations(&setup.metrics, "strict", "failure"), 1);
    assert_eq!(store.events(), 3);
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// Issue 7: a replayed event runs only the trigger named in its
/// `spillway-replay-to` header; siblings ack it without running.
#[tokio::test(start_paused = true)]
async fn a_replayed_event_runs_only_the_trigger_it_names() {
    let mut setup = Setup::new(0).await;
    for target in ["sensor/mine", "sensor/other"] {
        let mut message =
            Event::new("src", "orders", "orders", Bytes::from_static(b"{}")).to_message();
        message
            .headers
            .push((crate::backlog::REPLAY_TO_HEADER.into(), target.into()));
        setup.bus.publish(message).await.expect("publish");
    }
    let mine = Arc::new(Recorder::default());
    let sibling = Arc::new(Recorder::default());
    setup.runner("mine", &mine, limits(16)).await;
    setup.runner("sibling", &sibling, limits(16)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(mine.calls().len(), 1);
    assert_eq!(sibling.calls().len(), 0);
    assert_eq!(setup.bus.stats().messages, 0);
    setup.stop().await;
}

/// Holds every invocation until opened; records how many ran at once.
#[derive(Default)]
struct Gate {
    open: tokio::sync::Notify,
    opened: std::sync::atomic::AtomicBool,
    running: AtomicUsize,
    most_running: AtomicUsize,
    done: AtomicUsize,
}

impl Gate {
    fn open(&self) {
        self.opened.store(true, Ordering::Release);
        self.open.notify_waiters();
    }
}

#[async_trait]
impl CustomTrigger for Gate {
    async fn invoke(&self, _dependency: &str, _event: &Event) -> Result<(), TriggerError> {
        let running = self.running.fetch_add(1, Ordering::AcqRel) + 1;
        self.most_running.fetch_max(running, Ordering::AcqRel);
        let opened = self.open.notified();
        if !self.opened.load(Ordering::Acquire) {
            opened.await;
        }
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.done.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Seed 004's ScaledObject: `minReplicaCount: 1, maxReplicaCount: 100,
/// lagThreshold: "10000"`, KEDA/HPA defaults for the rest.
fn seed_autoscale() -> spillway_flowctl::AutoscalePolicy {
    spillway_flowctl::AutoscalePolicy {
        min: 1,
        max: 100,
        lag_threshold: 10_000,
        ..Default::default()
    }
}

/// Issue 7: lag 50 000 with lagThreshold 10 000 → 5 workers, exactly 5
/// invocations at once; once the lag is 0, back to 1 worker when the 300 s
/// stabilisation window has passed, and not a poll before.
#[tokio::test(start_paused = true)]
async fn autoscale_runs_5_workers_for_a_lag_of_50000_and_returns_to_min() {
    let mut setup = Setup::new(50_000).await;
    let gate = Arc::new(Gate::default());
    let scaler = spillway_flowctl::LagAutoscaler::new(seed_autoscale()).expect("valid policy");
    let (handle, consumer) = setup
        .runner_with(
            "scaled",
            Arc::clone(&gate) as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                autoscale: Some(scaler),
                ..limits(100)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.workers(), Some(5));
    assert_eq!(gate.running.load(Ordering::Acquire), 5);
    assert_eq!(handle.inflight(), 5);

    gate.open();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(gate.done.load(Ordering::Acquire), 50_000);
    assert_eq!(consumer.stats().pending, 0);
    assert_eq!(gate.most_running.load(Ordering::Acquire), 5);
    // Polls at 0 s, 30 s, …: the recommendation of 5 made at 0 s holds for
    // the 300 s window, so the poll at 270 s keeps 5 and the one at 300 s
    // drops to min.
    tokio::time::sleep(Duration::from_secs(275)).await;
    assert_eq!(handle.workers(), Some(5), "at 296 s");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(handle.workers(), Some(1), "at 301 s");
    setup.stop().await;
}

/// With `min: 0` an idle trigger runs no worker and fetches nothing; a lag
/// above `activationLagThreshold` wakes it at the next poll, and after
/// `cooldownPeriod` without lag it goes back to 0.
#[tokio::test(start_paused = true)]
async fn autoscale_from_zero_wakes_on_lag_and_sleeps_after_cooldown() {
    let mut setup = Setup::new(0).await;
    let recorder = Arc::new(Recorder::default());
    let policy = spillway_flowctl::AutoscalePolicy {
        min: 0,
        max: 10,
        lag_threshold: 10,
        activation_lag_threshold: 5,
        polling_interval: Duration::from_secs(10),
        cooldown: Duration::from_secs(60),
        scale_down_stabilization: Duration::from_secs(60),
    };
    let scaler = spillway_flowctl::LagAutoscaler::new(policy).expect("valid policy");
    let (handle, consumer) = setup
        .runner_with(
            "from-zero",
            Arc::clone(&recorder) as Arc<dyn CustomTrigger>,
            None,
            TriggerLimits {
                autoscale: Some(scaler),
                ..limits(10)
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.workers(), Some(0));
    // Five events are not above the activation threshold: nothing runs.
    for _ in 0..5 {
        let event = Event::new("src", "orders", "orders", Bytes::from_static(b"{}"));
        setup
            .bus
            .publish(event.to_message())
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.workers(), Some(0), "at 11 s");
    assert_eq!(recorder.calls().len(), 0);
    assert_eq!(consumer.stats().pending, 5);
    // A sixth wakes it at the poll at 20 s: ceil(6 / 10) = 1 worker.
    let event = Event::new("src", "orders", "orders", Bytes::from_static(b"{}"));
    setup
        .bus
        .publish(event.to_message())
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.workers(), Some(1), "at 21 s");
    assert_eq!(recorder.calls().len(), 6);
    // Last active poll at 20 s; the first poll more than 60 s later (90 s)
    // goes to 0.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(handle.workers(), Some(1), "at 81 s");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(handle.workers(), Some(0), "at 91 s");
    setup.stop().await;
}
mod conditions;
mod priority;
