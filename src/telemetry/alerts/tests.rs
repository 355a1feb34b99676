//! Every built-in rule under a fake clock: exact thresholds, fires exactly
//! at its `for:`, resolves on the first evaluation after the condition ends.

use super::evaluator::{AlertState, Evaluator, Transition};
use super::rules::{Rule, RuleId, RuleSet};
use super::sample::{ConsumerSample, Snapshot, StreamSample, Totals};
use spillway_flowctl::FakeClock;
use std::time::Duration;

const TICK: Duration = Duration::from_secs(5);

struct Harness {
    clock: FakeClock,
    eval: Evaluator<FakeClock>,
}

impl Harness {
    fn new() -> Harness {
        let clock = FakeClock::new();
        Harness {
            eval: Evaluator::new(RuleSet::default().rules, clock.clone()),
            clock,
        }
    }

    fn with(rules: Vec<Rule>) -> Harness {
        let clock = FakeClock::new();
        Harness {
            eval: Evaluator::new(rules, clock.clone()),
            clock,
        }
    }

    /// Evaluates at the current time.
    fn eval(&mut self, snapshot: &Snapshot) -> Vec<Transition> {
        self.eval.evaluate(snapshot)
    }

    /// Advances one tick, then evaluates.
    fn step(&mut self, snapshot: &Snapshot) -> Vec<Transition> {
        self.clock.advance(TICK);
        self.eval(snapshot)
    }

    /// Steps `n` ticks with snapshots from `make(i)`; returns every
    /// transition with the clock reading it happened at.
    fn run(
        &mut self,
        n: usize,
        mut make: impl FnMut(usize) -> Snapshot,
    ) -> Vec<(Duration, String)> {
        let mut out = Vec::new();
        for i in 0..n {
            for t in self.step(&make(i)) {
                out.push((self.clock_now(), describe(&t)));
            }
        }
        out
    }

    fn clock_now(&self) -> Duration {
        spillway_flowctl::Clock::now(&self.clock)
    }

    fn state(&self, rule: RuleId) -> Option<AlertState> {
        self.eval
            .alerts()
            .iter()
            .find(|a| a.rule == rule)
            .map(|a| a.state)
    }
}

fn describe(t: &Transition) -> String {
    match t {
        Transition::Fired(a) => format!("fired {}", a.rule),
        Transition::Resolved(a, _) => format!("resolved {}", a.rule),
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn stream(messages: u64, max_msgs: Option<u64>, bytes: u64, max_bytes: Option<u64>) -> Snapshot {
    Snapshot {
        streams: vec![StreamSample {
            stream: "default".into(),
            messages,
            bytes,
            max_msgs,
            max_bytes,
        }],
        ..Snapshot::default()
    }
}

fn consumer(lag: u64, age: Duration) -> Snapshot {
    Snapshot {
        consumers: vec![ConsumerSample {
            sensor: "orders".into(),
            trigger: "forward".into(),
            lag,
            oldest_unacked_age: age,
        }],
        ..Snapshot::default()
    }
}

fn producer(sum: f64, count: u64) -> Snapshot {
    Snapshot {
        producers: vec![("shop".into(), Totals { sum, count })],
        ..Snapshot::default()
    }
}

fn sensor(sum: f64, count: u64) -> Snapshot {
    Snapshot {
        sensors: vec![("orders".into(), Totals { sum, count })],
        ..Snapshot::default()
    }
}

fn workflows(pending: u64) -> Snapshot {
    Snapshot {
        workflows: vec![("api-consumer".into(), pending)],
        ..Snapshot::default()
    }
}

#[test]
fn queue_depth_at_one_million_does_not_fire_above_it_fires_after_5m() {
    let mut h = Harness::new();
    let at_threshold = stream(1_000_000, None, 0, None);
    assert!(h.run(120, |_| at_threshold.clone()).is_empty());
    assert_eq!(h.state(RuleId::QueueDepthExceeded), None);

    let over = stream(1_000_001, None, 0, None);
    let start = h.clock_now();
    // First evaluation over the threshold: pending, from now.
    assert!(h.step(&over).is_empty());
    let active_at = start + TICK;
    assert_eq!(
        h.state(RuleId::QueueDepthExceeded),
        Some(AlertState::Pending)
    );
    // 4m55s later still pending; at exactly 5m it fires.
    let events = h.run(60, |_| over.clone());
    assert_eq!(
        events,
        vec![(
            active_at + secs(300),
            "fired QueueDepthExceeded".to_string()
        )]
    );
    let alert = &h.eval.alerts()[0];
    assert_eq!(alert.labels, vec![("stream", "default".to_string())]);
    assert_eq!(alert.value, 1_000_001.0);
    // Resolves on the first evaluation below.
    let events = h.run(1, |_| stream(10, None, 0, None));
    assert_eq!(
        events,
        vec![(h.clock_now(), "resolved QueueDepthExceeded".into())]
    );
    assert!(h.eval.alerts().is_empty());
}

#[test]
fn queue_depth_over_90_percent_of_max_msgs_fires_after_5m() {
    let mut h = Harness::new();
    assert!(h
        .run(100, |_| stream(90_000, Some(100_000), 0, None))
        .is_empty());
    let events = h.run(61, |_| stream(90_001, Some(100_000), 0, None));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "fired QueueDepthExceeded");
    // Pending at the first of the 61 evaluations, fired 60 ticks (5m) later.
    assert_eq!(events[0].0, h.clock_now());
}

#[test]
fn a_flat_lag_above_100k_never_fires_consumer_lag_increasing() {
    let mut h = Harness::new();
    assert!(h.run(240, |_| consumer(200_000, secs(0))).is_empty());
    assert_eq!(h.state(RuleId::ConsumerLagIncreasing), None);
}

#[test]
fn a_growing_lag_above_100k_fires_after_1m_and_resolves_once_flat_for_the_window() {
    let mut h = Harness::new();
    // Growing, but not above 100 000: nothing.
    assert!(h
        .run(20, |i| consumer(80_000 + i as u64 * 1000, secs(0)))
        .is_empty());
    // 99 000 + 1000/tick: first above 100 000 at the 3rd step of this run.
    let start = h.clock_now();
    let events = h.run(20, |i| consumer(99_000 + i as u64 * 1000, secs(0)));
    let first_above = start + 3 * TICK;
    assert_eq!(
        events,
        vec![(
            first_above + secs(60),
            "fired ConsumerLagIncreasing".to_string()
        )]
    );
    // The last sample is the top; flat from here on. The slope stays
    // positive while a lower sample is in the 5m window, and is 0 once
    // every sample in it is the top.
    let top = 99_000 + 19 * 1000;
    let flat_from = h.clock_now();
    let events = h.run(60, |_| consumer(top, secs(0)));
    assert_eq!(
        events,
        vec![(
            flat_from + secs(300),
            "resolved ConsumerLagIncreasing".to_string()
        )]
    );
}

#[test]
fn producer_block_time_mean_of_100ms_does_not_fire_above_it_fires_after_1m() {
    let mut h = Harness::new();
    // 10 publishes per tick, each blocked exactly 100 ms.
    let mut sum = 0.0;
    let mut count = 0;
    let events = h.run(60, |_| {
        sum += 1.0;
        count += 10;
        producer(sum, count)
    });
    assert!(events.is_empty());
    // Now 200 ms each: the 1m mean rises above 100 ms within the window.
    let start = h.clock_now();
    let mut first_over = None;
    let mut fired = Vec::new();
    for _ in 0..40 {
        sum += 2.0;
        count += 10;
        let t = h.step(&producer(sum, count));
        if first_over.is_none() && h.state(RuleId::ProducerBlockTime).is_some() {
            first_over = Some(h.clock_now());
        }
        fired.extend(t.iter().map(describe).map(|d| (h.clock_now(), d)));
    }
    let first_over = first_over.expect("condition held");
    // The mean over [now-1m, now] passes 0.1 s at the first new sample.
    assert_eq!(first_over, start + TICK);
    assert_eq!(
        fired,
        vec![(first_over + secs(60), "fired ProducerBlockTime".to_string())]
    );
    // No publishes for a whole window: no mean, resolved.
    let last_publish = h.clock_now();
    let events = h.run(13, |_| producer(sum, count));
    assert_eq!(
        events,
        vec![(
            last_publish + secs(60),
            "resolved ProducerBlockTime".to_string()
        )]
    );
}

#[test]
fn event_age_of_2m_does_not_fire_older_fires_after_1m() {
    let mut h = Harness::new();
    assert!(h.run(50, |_| consumer(0, secs(120))).is_empty());
    let start = h.clock_now();
    let events = h.run(13, |i| consumer(0, secs(121 + 5 * i as u64)));
    assert_eq!(
        events,
        vec![(start + TICK + secs(60), "fired EventAgeHigh".to_string())]
    );
    let events = h.run(1, |_| consumer(0, secs(0)));
    assert_eq!(events[0].1, "resolved EventAgeHigh");
}

#[test]
fn sensor_latency_doubling_fires_after_2m_flat_latency_never_fires() {
    // Flat 200 ms per event for 20 minutes: never.
    let mut h = Harness::new();
    let mut count = 0;
    assert!(h
        .run(240, |_| {
            count += 10;
            sensor(count as f64 * 0.2, count)
        })
        .is_empty());

    // 10 minutes at 200 ms, then 500 ms (> 2 × 200 ms and > 100 ms).
    let mut h = Harness::new();
    let (mut sum, mut count) = (0.0, 0u64);
    assert!(h
        .run(120, |_| {
            sum += 2.0;
            count += 10;
            sensor(sum, count)
        })
        .is_empty());
    // The 5m mean passes 2 × 200 ms after 41 samples at 500 ms (3×41 + 120
    // > 240 over 60 intervals).
    let start = h.clock_now();
    let mut first_held = None;
    let mut events = Vec::new();
    for _ in 0..80 {
        sum += 5.0;
        count += 10;
        let t = h.step(&sensor(sum, count));
        if first_held.is_none() && h.state(RuleId::SensorLatencyIncreasing).is_some() {
            first_held = Some(h.clock_now());
        }
        events.extend(t.iter().map(describe).map(|d| (h.clock_now(), d)));
    }
    let first_held = first_held.expect("latency increase seen");
    assert_eq!(first_held, start + 41 * TICK);
    assert_eq!(
        events[0],
        (
            first_held + secs(120),
            "fired SensorLatencyIncreasing".to_string()
        )
    );
}

#[test]
fn sensor_latency_growth_below_the_minimum_never_fires() {
    let mut h = Harness::new();
    let (mut sum, mut count) = (0.0, 0u64);
    let events = h.run(240, |i| {
        // 10 ms per event, then 50 ms: 5× but under the 100 ms minimum.
        sum += if i < 120 { 0.1 } else { 0.5 };
        count += 10;
        sensor(sum, count)
    });
    assert!(events.is_empty());
}

#[test]
fn workflows_pending_growing_fires_after_5m_flat_pending_never_fires() {
    let mut h = Harness::new();
    assert!(h.run(240, |_| workflows(50)).is_empty());
    // Growing up to 10 (not above it): nothing.
    let mut h = Harness::new();
    assert!(h.run(240, |i| workflows((i as u64).min(10))).is_empty());
    // Growing from 11: the slope needs a second sample, so it holds from
    // the 2nd evaluation and fires 5m after that.
    let mut h = Harness::new();
    let start = h.clock_now();
    let events = h.run(80, |i| workflows(11 + i as u64));
    assert_eq!(
        events,
        vec![(
            start + 2 * TICK + secs(300),
            "fired WorkflowsPendingGrowing".to_string()
        )]
    );
}

#[test]
fn bus_memory_over_80_percent_of_max_bytes_fires_after_5m() {
    let mut h = Harness::new();
    assert!(h.run(100, |_| stream(0, None, 800, Some(1000))).is_empty());
    // Unlimited max_bytes: never.
    assert!(h.run(100, |_| stream(0, None, 10_000, None)).is_empty());
    let start = h.clock_now();
    let events = h.run(61, |_| stream(0, None, 801, Some(1000)));
    assert_eq!(
        events,
        vec![(start + TICK + secs(300), "fired BusMemoryHigh".to_string())]
    );
}

#[test]
fn for_zero_fires_on_the_first_evaluation_and_a_vanished_series_resolves() {
    let mut rule = Rule::default_for(RuleId::EventAgeHigh);
    rule.for_duration = Duration::ZERO;
    let mut h = Harness::with(vec![rule]);
    let fired = h.eval(&consumer(0, secs(500)));
    assert_eq!(
        fired.iter().map(describe).collect::<Vec<_>>(),
        ["fired EventAgeHigh"]
    );
    // The trigger is gone from the snapshot: resolved.
    let resolved = h.step(&Snapshot::default());
    assert_eq!(
        resolved.iter().map(describe).collect::<Vec<_>>(),
        ["resolved EventAgeHigh"]
    );
}

#[test]
fn a_pending_alert_that_stops_holding_is_forgotten_without_a_transition() {
    let mut h = Harness::new();
    assert!(h.run(10, |_| stream(2_000_000, None, 0, None)).is_empty());
    assert_eq!(
        h.state(RuleId::QueueDepthExceeded),
        Some(AlertState::Pending)
    );
    assert!(h.step(&stream(0, None, 0, None)).is_empty());
    assert_eq!(h.state(RuleId::QueueDepthExceeded), None);
    // Holding again starts a fresh 5 minutes.
    let start = h.clock_now();
    let events = h.run(61, |_| stream(2_000_000, None, 0, None));
    assert_eq!(events[0].0, start + TICK + secs(300));
}

#[test]
fn firing_counts_cover_every_rule() {
    let mut rule = Rule::default_for(RuleId::QueueDepthExceeded);
    rule.for_duration = Duration::ZERO;
    let mut h = Harness::with(vec![rule, Rule::default_for(RuleId::BusMemoryHigh)]);
    h.eval(&stream(2_000_000, None, 0, None));
    let counts: Vec<_> = h
        .eval
        .firing_counts()
        .into_iter()
        .map(|(r, _, n)| (r, n))
        .collect();
    assert_eq!(
        counts,
        vec![(RuleId::QueueDepthExceeded, 1), (RuleId::BusMemoryHigh, 0)]
    );
}

#[test]
fn histories_are_trimmed_to_the_window() {
    let mut h = Harness::new();
    // 20 minutes of samples: a later flat stretch must not see old growth.
    let _ = h.run(240, |i| consumer(200_000 + i as u64, secs(0)));
    let _ = h.run(61, |_| consumer(300_000, secs(0)));
    assert_eq!(h.state(RuleId::ConsumerLagIncreasing), None);
}
