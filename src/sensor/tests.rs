//! Runner behaviour on paused tokio time with the in-memory bus and a
//! trigger that records when it was called: exact counts, no sleeps-and-hope.

use super::*;
use crate::triggers::CustomTrigger;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use spillway_bus::memory::MemoryBus;
use spillway_bus::{Bus, ConsumerConfig, Limits};
use spillway_flowctl::RateLimit;
use tokio::time::Instant;

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
        let mut config = ConsumerConfig::new(format!("sensor-{trigger}"));
        config.filter_subjects = vec![Event::subject_for("src", "orders")];
        config.max_ack_pending = limits.max_in_flight;
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
            Trigger::Custom(Arc::clone(recorder) as Arc<dyn CustomTrigger>),
            Arc::clone(&consumer),
            limits,
            Arc::new(Metrics::new()),
        );
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(runner.run(shutdown));
        consumer
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

fn limits(max_in_flight: usize) -> TriggerLimits {
    TriggerLimits {
        max_in_flight,
        ack_wait: Duration::from_secs(30),
        ..TriggerLimits::default()
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
    let config = {
        let mut c = ConsumerConfig::new("sensor-slow");
        c.filter_subjects = vec![Event::subject_for("src", "orders")];
        c.max_ack_pending = 4;
        c
    };
    let consumer = setup.bus.consumer(config).await.unwrap();
    let runner = TriggerRunner::new(
        "sensor",
        "slow",
        vec![DependencyMatcher {
            name: "orders".into(),
            subject: Event::subject_for("src", "orders"),
            filters: None,
        }],
        Trigger::Custom(Arc::clone(&slow) as Arc<dyn CustomTrigger>),
        consumer,
        limits(4),
        Arc::new(Metrics::new()),
    );
    setup.tasks.spawn(runner.run(setup.shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    assert_eq!(slow.peak.load(Ordering::SeqCst), 4);
    assert_eq!(slow.done.load(Ordering::SeqCst), 40);
    setup.stop().await;
}
