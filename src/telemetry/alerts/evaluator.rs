//! The alert state machine: snapshots in, `Fired` / `Resolved` transitions
//! out, with time from an injected [`Clock`].
//!
//! Per rule and series (label set), Prometheus' semantics: when the
//! condition first holds the alert is *pending*; once it has held at every
//! evaluation for the rule's `for:` it *fires* (at once with `for: 0s`);
//! the first evaluation where it no longer holds, or where the series is
//! gone, *resolves* a firing alert and forgets a pending one. Each change is
//! reported exactly once.
//!
//! Windowed conditions (slopes, means over a window) read the samples this
//! evaluator recorded itself, so they mean the same as the PromQL of
//! [`Rule::expr`]: a slope is the least-squares slope of the samples in the
//! window (`deriv`), a mean is Δsum / Δcount between the oldest and newest
//! samples in the window (`rate(sum)/rate(count)`).
//!
//! Bounds: one history per series that a rule reads (series come from the
//! configuration: streams, triggers, sources, sensors, templates), each
//! trimmed to the longest window that needs it and capped at
//! [`MAX_SAMPLES`] (beyond that the oldest samples are dropped, which
//! shortens the window: only with an evaluation interval far below the
//! window). A series missing from a snapshot loses its history.
//! Not guaranteed: exactness between evaluations; a condition that holds
//! only between two evaluations is never seen.

use super::rules::{render, Condition, Rule, RuleId, Severity};
use super::sample::{Snapshot, Totals};
use spillway_flowctl::Clock;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// Most samples kept per series.
pub const MAX_SAMPLES: usize = 4096;

/// Labels of one series, in the rule's label order.
pub type Labels = Vec<(&'static str, String)>;

/// Where an alert is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    /// The condition holds, for less than `for:` so far.
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One pending or firing alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub rule: RuleId,
    pub severity: Severity,
    pub labels: Labels,
    pub state: AlertState,
    /// Clock reading when the condition started to hold.
    pub active_at: Duration,
    /// Clock reading when the alert fired.
    pub fired_at: Option<Duration>,
    /// The value the condition was last evaluated on.
    pub value: f64,
    pub summary: String,
}

/// A change worth telling someone about.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Fired(Alert),
    /// The alert as it last fired, and the clock reading it resolved at.
    Resolved(Alert, Duration),
}

/// Which recorded series a windowed condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Series {
    Lag,
    ProducerBlock,
    SensorLatency,
    WorkflowsPending,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    at: Duration,
    /// The gauge value, or a histogram's sum.
    value: f64,
    /// A histogram's count (0 for gauges).
    count: f64,
}

type History = VecDeque<Point>;

/// Evaluates a rule set against snapshots. See the module docs.
pub struct Evaluator<C: Clock> {
    rules: Vec<Rule>,
    clock: C,
    /// How far back each recorded series must reach.
    retention: BTreeMap<Series, Duration>,
    history: BTreeMap<(Series, Labels), History>,
    active: BTreeMap<(RuleId, Labels), Alert>,
}

impl<C: Clock> Evaluator<C> {
    pub fn new(rules: Vec<Rule>, clock: C) -> Self {
        let mut retention: BTreeMap<Series, Duration> = BTreeMap::new();
        for rule in &rules {
            let need = match rule.condition {
                Condition::LagIncreasing { window, .. } => Some((Series::Lag, window)),
                Condition::ProducerBlock { window, .. } => Some((Series::ProducerBlock, window)),
                Condition::LatencyIncreasing { window, .. } => {
                    Some((Series::SensorLatency, window.saturating_mul(2)))
                }
                Condition::PendingGrowing { window, .. } => {
                    Some((Series::WorkflowsPending, window))
                }
                _ => None,
            };
            if let Some((series, span)) = need {
                let entry = retention.entry(series).or_default();
                *entry = (*entry).max(span);
            }
        }
        Evaluator {
            rules,
            clock,
            retention,
            history: BTreeMap::new(),
            active: BTreeMap::new(),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Records `snapshot` at the clock's current time and returns what
    /// fired or resolved because of it.
    pub fn evaluate(&mut self, snapshot: &Snapshot) -> Vec<Transition> {
        let now = self.clock.now();
        self.record(now, snapshot);
        let mut transitions = Vec::new();
        let mut holding_now = BTreeSet::new();
        for rule in &self.rules {
            for (labels, value) in self.holding(rule, snapshot, now) {
                let key = (rule.name, labels);
                let alert = self.active.entry(key.clone()).or_insert_with(|| Alert {
                    rule: rule.name,
                    severity: rule.severity,
                    labels: key.1.clone(),
                    state: AlertState::Pending,
                    active_at: now,
                    fired_at: None,
                    value,
                    summary: String::new(),
                });
                alert.value = value;
                alert.summary = render(&rule.summary(), &alert.labels, value);
                if alert.state == AlertState::Pending
                    && now.saturating_sub(alert.active_at) >= rule.for_duration
                {
                    alert.state = AlertState::Firing;
                    alert.fired_at = Some(now);
                    transitions.push(Transition::Fired(alert.clone()));
                }
                holding_now.insert(key);
            }
        }
        let ended: Vec<_> = self
            .active
            .keys()
            .filter(|k| !holding_now.contains(*k))
            .cloned()
            .collect();
        for key in ended {
            if let Some(alert) = self.active.remove(&key) {
                if alert.state == AlertState::Firing {
                    transitions.push(Transition::Resolved(alert, now));
                }
            }
        }
        transitions
    }

    /// Pending and firing alerts, ordered by rule then labels.
    pub fn alerts(&self) -> Vec<Alert> {
        self.active.values().cloned().collect()
    }

    /// Firing alerts per rule (every rule present, 0 when none fire).
    pub fn firing_counts(&self) -> Vec<(RuleId, Severity, usize)> {
        self.rules
            .iter()
            .map(|rule| {
                let firing = self
                    .active
                    .values()
                    .filter(|a| a.rule == rule.name && a.state == AlertState::Firing)
                    .count();
                (rule.name, rule.severity, firing)
            })
            .collect()
    }

    /// Appends the windowed series of `snapshot` to their histories.
    fn record(&mut self, now: Duration, snapshot: &Snapshot) {
        let mut present: BTreeSet<(Series, Labels)> = BTreeSet::new();
        let mut points: Vec<((Series, Labels), Point)> = Vec::new();
        let gauge = |value: f64| Point {
            at: now,
            value,
            count: 0.0,
        };
        let totals = |t: &Totals| Point {
            at: now,
            value: t.sum,
            count: t.count as f64,
        };
        for c in &snapshot.consumers {
            points.push((
                (Series::Lag, trigger_labels(&c.sensor, &c.trigger)),
                gauge(c.lag as f64),
            ));
        }
        for (source, t) in &snapshot.producers {
            points.push((
                (Series::ProducerBlock, vec![("source", source.clone())]),
                totals(t),
            ));
        }
        for (sensor, t) in &snapshot.sensors {
            points.push((
                (Series::SensorLatency, vec![("sensor", sensor.clone())]),
                totals(t),
            ));
        }
        for (template, pending) in &snapshot.workflows {
            points.push((
                (
                    Series::WorkflowsPending,
                    vec![("template", template.clone())],
                ),
                gauge(*pending as f64),
            ));
        }
        for (key, point) in points {
            let Some(span) = self.retention.get(&key.0).copied() else {
                continue;
            };
            present.insert(key.clone());
            let history = self.history.entry(key).or_default();
            history.push_back(point);
            let oldest = now.saturating_sub(span);
            while history.front().is_some_and(|p| p.at < oldest) || history.len() > MAX_SAMPLES {
                history.pop_front();
            }
        }
        self.history.retain(|key, _| present.contains(key));
    }

    /// The series of `rule` whose condition holds now, with their values.
    fn holding(&self, rule: &Rule, snapshot: &Snapshot, now: Duration) -> Vec<(Labels, f64)> {
        let mut out = Vec::new();
        match &rule.condition {
            Condition::QueueDepth {
                above,
                ratio_of_max,
            } => {
                for s in &snapshot.streams {
                    if s.messages > *above || over_ratio(s.messages, *ratio_of_max, s.max_msgs) {
                        out.push((vec![("stream", s.stream.clone())], s.messages as f64));
                    }
                }
            }
            Condition::BusMemory { ratio_of_max } => {
                for s in &snapshot.streams {
                    if over_ratio(s.bytes, *ratio_of_max, s.max_bytes) {
                        out.push((vec![("stream", s.stream.clone())], s.bytes as f64));
                    }
                }
            }
            Condition::LagIncreasing { above, window } => {
                for c in &snapshot.consumers {
                    let labels = trigger_labels(&c.sensor, &c.trigger);
                    if c.lag > *above && self.slope(Series::Lag, &labels, now, *window) > 0.0 {
                        out.push((labels, c.lag as f64));
                    }
                }
            }
            Condition::EventAge { above } => {
                for c in &snapshot.consumers {
                    if c.oldest_unacked_age > *above {
                        out.push((
                            trigger_labels(&c.sensor, &c.trigger),
                            c.oldest_unacked_age.as_secs_f64(),
                        ));
                    }
                }
            }
            Condition::ProducerBlock { above, window } => {
                for (source, _) in &snapshot.producers {
                    let labels = vec![("source", source.clone())];
                    let from = now.saturating_sub(*window);
                    if let Some(mean) = self.mean(Series::ProducerBlock, &labels, from, now) {
                        if mean > above.as_secs_f64() {
                            out.push((labels, mean));
                        }
                    }
                }
            }
            Condition::LatencyIncreasing {
                factor,
                minimum,
                window,
            } => {
                for (sensor, _) in &snapshot.sensors {
                    let labels = vec![("sensor", sensor.clone())];
                    let split = now.saturating_sub(*window);
                    let start = split.saturating_sub(*window);
                    let current = self.mean(Series::SensorLatency, &labels, split, now);
                    let before = self.mean(Series::SensorLatency, &labels, start, split);
                    if let (Some(current), Some(before)) = (current, before) {
                        if current > factor * before && current > minimum.as_secs_f64() {
                            out.push((labels, current));
                        }
                    }
                }
            }
            Condition::PendingGrowing { above, window } => {
                for (template, pending) in &snapshot.workflows {
                    let labels = vec![("template", template.clone())];
                    if *pending > *above
                        && self.slope(Series::WorkflowsPending, &labels, now, *window) > 0.0
                    {
                        out.push((labels, *pending as f64));
                    }
                }
            }
        }
        out
    }

    /// Least-squares slope (per second) of the samples in `[now - window,
    /// now]`; 0 with fewer than two samples.
    fn slope(&self, series: Series, labels: &Labels, now: Duration, window: Duration) -> f64 {
        let Some(history) = self.history.get(&(series, labels.clone())) else {
            return 0.0;
        };
        let from = now.saturating_sub(window);
        let points: Vec<&Point> = history.iter().filter(|p| p.at >= from).collect();
        let Some(first) = points.first() else {
            return 0.0;
        };
        if points.len() < 2 {
            return 0.0;
        }
        let n = points.len() as f64;
        let xs: Vec<f64> = points
            .iter()
            .map(|p| (p.at - first.at).as_secs_f64())
            .collect();
        let mean_x = xs.iter().sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.value).sum::<f64>() / n;
        let (mut num, mut den) = (0.0, 0.0);
        for (x, p) in xs.iter().zip(&points) {
            num += (x - mean_x) * (p.value - mean_y);
            den += (x - mean_x) * (x - mean_x);
        }
        if den > 0.0 {
            num / den
        } else {
            0.0
        }
    }

    /// Δsum / Δcount between the oldest and newest samples in `[from, to]`;
    /// `None` when nothing was observed in between.
    fn mean(&self, series: Series, labels: &Labels, from: Duration, to: Duration) -> Option<f64> {
        let history = self.history.get(&(series, labels.clone()))?;
        let mut inside = history.iter().filter(|p| p.at >= from && p.at <= to);
        let first = inside.next()?;
        let last = inside.next_back()?;
        let count = last.count - first.count;
        (count > 0.0).then(|| (last.value - first.value) / count)
    }
}

fn trigger_labels(sensor: &str, trigger: &str) -> Labels {
    vec![
        ("sensor", sensor.to_string()),
        ("trigger", trigger.to_string()),
    ]
}

/// `value > ratio × max`, false without a (non-zero) max.
fn over_ratio(value: u64, ratio: f64, max: Option<u64>) -> bool {
    max.is_some_and(|max| max > 0 && value as f64 > ratio * max as f64)
}
