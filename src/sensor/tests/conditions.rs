//! Multi-dependency triggers (`conditions`, correlation bounds,
//! `conditionsReset`) on paused time with the in-memory bus: exact counts.

use super::*;
use crate::sensor::condition::Condition;
use crate::sensor::runner::{Correlation, WallClock};
use crate::sources::calendar::Schedule;
use crate::triggers::Matched;

/// Records every run as the `(dependency, n)` of its events.
#[derive(Default)]
struct Runs {
    runs: Mutex<Vec<Vec<(String, u64)>>>,
    /// Fail (retryably) this many runs first.
    fail_first: AtomicUsize,
    /// Fail (retryably) every run that has this `(dependency, n)`.
    poison: Option<(&'static str, u64)>,
}

impl Runs {
    fn runs(&self) -> Vec<Vec<(String, u64)>> {
        self.runs.lock().clone()
    }
}

#[async_trait]
impl CustomTrigger for Runs {
    async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError> {
        self.invoke_matched(&[(dependency, event)]).await
    }

    async fn invoke_matched(&self, matched: &Matched<'_>) -> Result<(), TriggerError> {
        let run: Vec<(String, u64)> = matched
            .iter()
            .map(|(d, e)| {
                (
                    d.to_string(),
                    e.data_json()["n"].as_u64().unwrap_or(u64::MAX),
                )
            })
            .collect();
        let poisoned = self
            .poison
            .is_some_and(|(d, n)| run.iter().any(|(rd, rn)| rd == d && *rn == n));
        self.runs.lock().push(run);
        let failing = poisoned
            || self
                .fail_first
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
        if failing {
            return Err(TriggerError::Retryable {
                message: "down".into(),
                retry_after: None,
                pushback: None,
            });
        }
        Ok(())
    }
}

/// Publishes event `n` of dependency `dependency` (subject `src.<dependency>`).
async fn publish(bus: &MemoryBus, dependency: &str, n: u64) {
    let event = Event::new(
        "src",
        dependency,
        dependency,
        Bytes::from(format!("{{\"n\":{n}}}")),
    );
    bus.publish(event.to_message()).await.expect("publish");
}

fn correlation(condition: &str, dependencies: &[&str]) -> Correlation {
    let condition = Condition::parse(condition).expect("valid condition");
    Correlation {
        condition,
        dependencies: dependencies.iter().map(|d| d.to_string()).collect(),
        max_wait: Duration::from_secs(3600),
        max_events: 1000,
        resets: Vec::new(),
        clock: WallClock::system(),
    }
}

struct Correlated {
    bus: Arc<MemoryBus>,
    metrics: Arc<Metrics>,
    consumer: Arc<dyn Consumer>,
    runs: Arc<Runs>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Correlated {
    async fn start(correlation: Correlation, limits: TriggerLimits) -> Correlated {
        Self::start_with(correlation, limits, Arc::new(Runs::default())).await
    }

    async fn start_with(
        correlation: Correlation,
        limits: TriggerLimits,
        runs: Arc<Runs>,
    ) -> Correlated {
        Self::start_with_dlq(correlation, limits, runs, None).await
    }

    /// With `dlq` as the `dlqTrigger`.
    async fn start_with_dlq(
        correlation: Correlation,
        limits: TriggerLimits,
        runs: Arc<Runs>,
        dlq: Option<Arc<Runs>>,
    ) -> Correlated {
        let bus = MemoryBus::new(Limits::default());
        let metrics = Arc::new(Metrics::new());
        let dependencies: Vec<DependencyMatcher> = correlation
            .dependencies
            .iter()
            .map(|d| DependencyMatcher {
                name: d.clone(),
                subject: Event::subject_for("src", d),
                filters: None,
            })
            .collect();
        let mut config = ConsumerConfig::new("sensor-joined");
        config.filter_subjects = dependencies.iter().map(|d| d.subject.clone()).collect();
        config.max_ack_pending = limits.max_fetched() + correlation.max_waiting();
        config.ack_wait = limits.ack_wait;
        let consumer = bus.consumer(config).await.expect("consumer");
        let runner = TriggerRunner::new(
            "sensor",
            "joined",
            dependencies,
            Trigger::Custom(Arc::clone(&runs) as Arc<dyn CustomTrigger>),
            dlq.map(|dlq| Trigger::Custom(dlq as Arc<dyn CustomTrigger>)),
            Arc::clone(&consumer),
            limits,
            Arc::clone(&metrics),
        )
        .correlate(correlation);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(runner.run(shutdown.clone()));
        Correlated {
            bus,
            metrics,
            consumer,
            runs,
            shutdown,
            task,
        }
    }

    /// `spillway_sensor_events_expired_total` of `dependency` for `reason`.
    fn expired(&self, dependency: &str, reason: &str) -> u64 {
        let series = format!(
            "spillway_sensor_events_expired_total{{sensor=\"sensor\",trigger=\"joined\",dependency=\"{dependency}\",reason=\"{reason}\"}} "
        );
        self.metrics
            .encode()
            .lines()
            .find_map(|line| line.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Events still on the bus (waiting, or not yet fetched).
    fn unacked(&self) -> u64 {
        self.bus.stats().messages
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("runner task");
    }
}

fn run(events: &[(&str, u64)]) -> Vec<(String, u64)> {
    events.iter().map(|(d, n)| (d.to_string(), *n)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_and_b_fires_once_per_matched_pair() {
    let joined = Correlated::start(correlation("a && b", &["a", "b"]), limits(4)).await;
    for n in 0..3 {
        publish(&joined.bus, "a", n).await;
    }
    for n in 0..2 {
        publish(&joined.bus, "b", n).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // FIFO per dependency: a0 pairs with b0, a1 with b1; a2 waits.
    assert_eq!(
        joined.runs.runs(),
        [run(&[("a", 0), ("b", 0)]), run(&[("a", 1), ("b", 1)])]
    );
    assert_eq!(joined.unacked(), 1);
    publish(&joined.bus, "b", 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.runs.runs().len(), 3);
    assert_eq!(joined.runs.runs()[2], run(&[("a", 2), ("b", 2)]));
    assert_eq!(joined.unacked(), 0);
    assert_eq!(invocations(&joined.metrics, "joined", "success"), 3);
    joined.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_or_b_fires_once_per_event() {
    let joined = Correlated::start(correlation("a || b", &["a", "b"]), limits(4)).await;
    for n in 0..3 {
        publish(&joined.bus, "a", n).await;
    }
    for n in 0..2 {
        publish(&joined.bus, "b", n).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let runs = joined.runs.runs();
    assert_eq!(runs.len(), 5, "{runs:?}");
    assert!(runs.iter().all(|r| r.len() == 1), "{runs:?}");
    assert_eq!(joined.unacked(), 0);
    joined.stop().await;
}

#[tokio::test(start_paused = true)]
async fn without_conditions_every_dependency_must_arrive() {
    let all = Condition::all_of(["a", "b", "c"]).expect("three names");
    let joined = Correlated::start(
        Correlation {
            condition: all,
            ..correlation("a", &["a", "b", "c"])
        },
        limits(4),
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(joined.runs.runs().is_empty());
    publish(&joined.bus, "c", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.runs.runs(), [run(&[("a", 0), ("b", 0), ("c", 0)])]);
    joined.stop().await;
}

/// An `a` with no `b` waits exactly `maxWait`, then is acked and counted;
/// it never runs the trigger.
#[tokio::test(start_paused = true)]
async fn an_unmatched_event_expires_after_max_wait_and_is_counted() {
    let joined = Correlated::start(
        Correlation {
            max_wait: Duration::from_secs(300),
            ..correlation("a && b", &["a", "b"])
        },
        limits(4),
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(joined.expired("a", "max_wait"), 0);
    assert_eq!(joined.unacked(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(joined.expired("a", "max_wait"), 1);
    assert_eq!(joined.unacked(), 0);
    // The `b` that comes too late waits for an `a` of its own.
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(joined.runs.runs().is_empty());
    assert_eq!(joined.unacked(), 1);
    joined.stop().await;
}

/// With `maxEvents: 3`, five `a`s push out the two oldest (acked, counted);
/// the next `b` pairs with the oldest that is left.
#[tokio::test(start_paused = true)]
async fn max_events_overflow_acks_the_oldest_and_counts_it() {
    let joined = Correlated::start(
        Correlation {
            max_events: 3,
            ..correlation("a && b", &["a", "b"])
        },
        limits(4),
    )
    .await;
    for n in 0..5 {
        publish(&joined.bus, "a", n).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.expired("a", "max_events"), 2);
    assert_eq!(joined.unacked(), 3);
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.runs.runs(), [run(&[("a", 2), ("b", 0)])]);
    assert_eq!(joined.unacked(), 2);
    joined.stop().await;
}

/// `conditionsReset.byTime` `0 9 * * *` in America/New_York, starting at
/// 08:00 there: the waiting events are dropped exactly one hour later (a
/// UTC reading would wait 14 hours).
#[tokio::test(start_paused = true)]
async fn conditions_reset_cron_drops_the_waiting_events_in_its_timezone() {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-05T13:00:00Z")
        .expect("a valid time")
        .with_timezone(&chrono::Utc);
    let schedule = Schedule::from_config(
        &crate::config::eventsource::calendar::CalendarEvent {
            schedule: Some(crate::config::decode::Spanned::new(
                "0 9 * * *".to_string(),
                Default::default(),
            )),
            interval: None,
            timezone: Some(crate::config::decode::Spanned::new(
                "America/New_York".to_string(),
                Default::default(),
            )),
            exclusion_dates: None,
            metadata: None,
        },
        Default::default(),
    )
    .expect("a valid schedule");
    let joined = Correlated::start(
        Correlation {
            resets: vec![schedule],
            clock: WallClock::from_tokio(start),
            ..correlation("a && b", &["a", "b"])
        },
        limits(4),
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    publish(&joined.bus, "a", 1).await;
    tokio::time::sleep(Duration::from_secs(3590)).await;
    assert_eq!(joined.expired("a", "reset"), 0);
    assert_eq!(joined.unacked(), 2);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(joined.expired("a", "reset"), 2);
    assert_eq!(joined.unacked(), 0);
    // After the reset, pairs form again.
    publish(&joined.bus, "a", 2).await;
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.runs.runs(), [run(&[("a", 2), ("b", 0)])]);
    joined.stop().await;
}

/// An `a` waiting 30 minutes for its `b`, with a 10 s `ackWait`, is kept
/// alive: never redelivered, run exactly once.
#[tokio::test(start_paused = true)]
async fn waiting_events_are_not_redelivered() {
    let joined = Correlated::start(
        correlation("a && b", &["a", "b"]),
        TriggerLimits {
            ack_wait: Duration::from_secs(10),
            ..limits(4)
        },
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(joined.runs.runs(), [run(&[("a", 0), ("b", 0)])]);
    assert_eq!(joined.consumer.stats().redelivered, 0);
    assert_eq!(joined.unacked(), 0);
    joined.stop().await;
}

/// A failed run puts both events back on the bus with the backoff; they
/// are correlated again and the retry runs them together.
#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_with_the_same_events() {
    let runs = Arc::new(Runs {
        fail_first: AtomicUsize::new(1),
        ..Runs::default()
    });
    let joined = Correlated::start_with(
        correlation("a && b", &["a", "b"]),
        TriggerLimits {
            retry: RetryPolicy {
                steps: 3,
                duration: Duration::from_secs(1),
                ..RetryPolicy::default()
            },
            ..limits(4)
        },
        runs,
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let pair = run(&[("a", 0), ("b", 0)]);
    assert_eq!(joined.runs.runs(), [pair.clone(), pair]);
    assert_eq!(invocations(&joined.metrics, "joined", "retry"), 1);
    assert_eq!(invocations(&joined.metrics, "joined", "success"), 1);
    assert_eq!(joined.unacked(), 0);
    joined.stop().await;
}

/// `atLeastOnce: false`: the pair is acked when the run starts and the
/// failed run is retried in memory with the same events.
#[tokio::test(start_paused = true)]
async fn at_least_once_false_acks_the_pair_first_and_retries_in_memory() {
    let runs = Arc::new(Runs {
        fail_first: AtomicUsize::new(1),
        ..Runs::default()
    });
    let joined = Correlated::start_with(
        correlation("a && b", &["a", "b"]),
        TriggerLimits {
            at_least_once: false,
            retry: RetryPolicy {
                steps: 2,
                duration: Duration::from_secs(10),
                ..RetryPolicy::default()
            },
            ..limits(4)
        },
        runs,
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    publish(&joined.bus, "b", 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Failed once, acked already, retry still 5 s away.
    assert_eq!(joined.runs.runs().len(), 1);
    assert_eq!(joined.unacked(), 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pair = run(&[("a", 0), ("b", 0)]);
    assert_eq!(joined.runs.runs(), [pair.clone(), pair]);
    assert_eq!(invocations(&joined.metrics, "joined", "success"), 1);
    assert_eq!(joined.consumer.stats().redelivered, 0);
    joined.stop().await;
}

/// Retries every second, `steps` attempts per event.
fn retrying(steps: u32, on_reject: RejectPolicy) -> TriggerLimits {
    TriggerLimits {
        retry: RetryPolicy {
            steps,
            duration: Duration::from_secs(1),
            ..RetryPolicy::default()
        },
        on_reject,
        ..limits(4)
    }
}

/// `a0` makes every run fail; `b0`, `b1`, `b2` wait with it. Each retry
/// of `a0` pairs it with the next fresh `b` (FIFO; a `b` back from its
/// own retry queues behind the others), so its third run has a `b2` that
/// never ran before:
///   run 1 (a0#1, b0#1), run 2 (a0#2, b1#1), run 3 (a0#3, b2#1).
/// After run 3 `a0` has used its 3 steps and is given up (`given_up`
/// says how: DLQ trigger or `onReject: drop`); `b2` is judged by its own
/// first attempt and retried, so all three `b`s later pair with fresh
/// `a`s and succeed. Judged by the run's highest count, `b2` would have
/// been given up with `a0` after a single attempt.
async fn spent_and_fresh_events_are_judged_apart(dlq: bool) {
    let runs = Arc::new(Runs {
        poison: Some(("a", 0)),
        ..Runs::default()
    });
    let dead_letters = Arc::new(Runs::default());
    let on_reject = if dlq {
        RejectPolicy::Error
    } else {
        RejectPolicy::Drop
    };
    let joined = Correlated::start_with_dlq(
        correlation("a && b", &["a", "b"]),
        retrying(3, on_reject),
        runs,
        dlq.then(|| Arc::clone(&dead_letters)),
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    for n in 0..3 {
        publish(&joined.bus, "b", n).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        joined.runs.runs(),
        [
            run(&[("a", 0), ("b", 0)]),
            run(&[("a", 0), ("b", 1)]),
            run(&[("a", 0), ("b", 2)]),
        ]
    );
    // Runs 1–3 each sent at least one event back: one `retry` each.
    assert_eq!(invocations(&joined.metrics, "joined", "retry"), 3);
    if dlq {
        assert_eq!(dead_letters.runs(), [run(&[("a", 0)])]);
        assert_eq!(invocations(&joined.metrics, "joined", "dlq"), 1);
    } else {
        assert_eq!(invocations(&joined.metrics, "joined", "dropped"), 1);
    }
    // The three `b`s wait, none of them given up.
    assert_eq!(joined.unacked(), 3);
    the_waiting_bs_pair_with_new_as(&joined).await;
    assert_eq!(dead_letters.runs().len(), usize::from(dlq));
    joined.stop().await;
}

/// After three runs of `a0` with `b0`–`b2` that left the `b`s waiting:
/// `a1`–`a3` each pair with one of them, in order, and succeed.
async fn the_waiting_bs_pair_with_new_as(joined: &Correlated) {
    for n in 1..4 {
        publish(&joined.bus, "a", n).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        joined.runs.runs()[3..],
        [
            run(&[("a", 1), ("b", 0)]),
            run(&[("a", 2), ("b", 1)]),
            run(&[("a", 3), ("b", 2)]),
        ]
    );
    assert_eq!(invocations(&joined.metrics, "joined", "success"), 3);
    assert_eq!(joined.unacked(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_spent_event_goes_to_the_dlq_alone_and_its_fresh_partner_is_retried() {
    spent_and_fresh_events_are_judged_apart(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_spent_event_is_dropped_after_its_own_steps_though_its_partner_is_fresh() {
    spent_and_fresh_events_are_judged_apart(false).await;
}

/// With 2 steps, `a0` fails in run 1 (with `b0`) and run 2 (with `b1`),
/// and its DLQ hand-off fails once, so it comes back a third time with its
/// count past its steps. It is not given up on sight (a waiting event's
/// count also grows when it is redelivered without running): it pairs with
/// `b2`, and that failed run sends it to the DLQ at once, without a retry,
/// while `b2` keeps its own steps.
#[tokio::test(start_paused = true)]
async fn an_event_back_after_its_steps_waits_for_a_partner_and_its_next_failure_goes_to_the_dlq() {
    let runs = Arc::new(Runs {
        poison: Some(("a", 0)),
        ..Runs::default()
    });
    let dead_letters = Arc::new(Runs {
        fail_first: AtomicUsize::new(1),
        ..Runs::default()
    });
    let joined = Correlated::start_with_dlq(
        correlation("a && b", &["a", "b"]),
        retrying(2, RejectPolicy::Error),
        runs,
        Some(Arc::clone(&dead_letters)),
    )
    .await;
    publish(&joined.bus, "a", 0).await;
    for n in 0..3 {
        publish(&joined.bus, "b", n).await;
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        joined.runs.runs(),
        [
            run(&[("a", 0), ("b", 0)]),
            run(&[("a", 0), ("b", 1)]),
            run(&[("a", 0), ("b", 2)]),
        ]
    );
    // The failed hand-off, then the one that took it (after the third run,
    // with no retry of `a0`).
    assert_eq!(dead_letters.runs(), [run(&[("a", 0)]), run(&[("a", 0)])]);
    assert_eq!(invocations(&joined.metrics, "joined", "dlq"), 1);
    assert_eq!(joined.unacked(), 3);
    the_waiting_bs_pair_with_new_as(&joined).await;
    joined.stop().await;
}
