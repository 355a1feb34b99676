//! The running alerting: every `evaluationInterval` it collects a snapshot,
//! evaluates the rules, logs each transition once, sets
//! `spillway_alerts_firing`, and hands fired / resolved alerts (and, every
//! `resendInterval`, every firing one) to the Alertmanager [`Notifier`].
//!
//! Evaluation takes a short lock and does no I/O; `/api/v1/status` reads the
//! same state through [`Alerting::status`].

use super::evaluator::{Alert, AlertState, Evaluator, Transition};
use super::notifier::{Notifier, PostableAlert};
use super::rules::RuleSet;
use super::sample::Sources;
use crate::telemetry::Metrics;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use spillway_flowctl::{Clock, TokioClock};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// A pending or firing alert as `/api/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertStatus {
    pub alertname: String,
    pub severity: String,
    /// `pending` or `firing`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub summary: String,
    pub value: f64,
    /// RFC 3339 time the condition started to hold.
    pub active_since: String,
}

/// How to reach Alertmanager, and how often to repeat firing alerts.
#[derive(Clone)]
pub struct Notify {
    pub notifier: Notifier,
    pub resend_interval: Duration,
    /// Link placed in each alert's `generatorURL`.
    pub generator_url: Option<String>,
}

/// Shared alert state of a running pipeline.
pub struct Alerting {
    evaluator: Mutex<Evaluator<TokioClock>>,
    clock: TokioClock,
    /// Wall time at the clock's origin (for RFC 3339 timestamps).
    wall_origin: SystemTime,
    evaluation_interval: Duration,
}

impl Alerting {
    pub fn new(rules: RuleSet, metrics: &Metrics) -> Arc<Alerting> {
        let clock = TokioClock::new();
        let evaluator = Evaluator::new(rules.rules, clock);
        for (rule, severity, firing) in evaluator.firing_counts() {
            metrics.set_alerts_firing(rule.as_str(), severity.as_str(), firing);
        }
        Arc::new(Alerting {
            evaluator: Mutex::new(evaluator),
            clock,
            wall_origin: SystemTime::now(),
            evaluation_interval: rules.evaluation_interval,
        })
    }

    /// Pending and firing alerts now.
    pub fn status(&self) -> Vec<AlertStatus> {
        self.evaluator
            .lock()
            .alerts()
            .into_iter()
            .map(|a| AlertStatus {
                alertname: a.rule.as_str().to_string(),
                severity: a.severity.as_str().to_string(),
                state: a.state.as_str().to_string(),
                labels: label_map(&a),
                summary: a.summary.clone(),
                value: a.value,
                active_since: rfc3339(self.wall(a.active_at)),
            })
            .collect()
    }

    /// Evaluates until `stop` is cancelled.
    pub async fn run(
        self: Arc<Self>,
        sources: Sources,
        notify: Option<Notify>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.evaluation_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_resend = self.clock.now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let snapshot = sources.collect();
            let (transitions, firing, counts) = {
                let mut evaluator = self.evaluator.lock();
                let transitions = evaluator.evaluate(&snapshot);
                let firing: Vec<Alert> = evaluator
                    .alerts()
                    .into_iter()
                    .filter(|a| a.state == AlertState::Firing)
                    .collect();
                (transitions, firing, evaluator.firing_counts())
            };
            for t in &transitions {
                log(t);
            }
            for (rule, severity, n) in counts {
                sources
                    .metrics
                    .set_alerts_firing(rule.as_str(), severity.as_str(), n);
            }
            let Some(notify) = &notify else { continue };
            let now = self.clock.now();
            let valid_until =
                self.wall(now) + 4 * notify.resend_interval.max(self.evaluation_interval);
            let mut out: Vec<PostableAlert> = transitions
                .iter()
                .map(|t| match t {
                    Transition::Fired(a) => self.postable(a, valid_until, notify),
                    Transition::Resolved(a, at) => self.postable(a, self.wall(*at), notify),
                })
                .collect();
            if now.saturating_sub(last_resend) >= notify.resend_interval {
                last_resend = now;
                let just_fired: Vec<&Alert> = transitions
                    .iter()
                    .filter_map(|t| match t {
                        Transition::Fired(a) => Some(a),
                        Transition::Resolved(..) => None,
                    })
                    .collect();
                out.extend(
                    firing
                        .iter()
                        .filter(|a| !just_fired.contains(a))
                        .map(|a| self.postable(a, valid_until, notify)),
                );
            }
            notify.notifier.send(out);
        }
    }

    fn wall(&self, at: Duration) -> SystemTime {
        self.wall_origin + at
    }

    fn postable(&self, alert: &Alert, ends_at: SystemTime, notify: &Notify) -> PostableAlert {
        let mut labels = label_map(alert);
        labels.insert("alertname".into(), alert.rule.as_str().to_string());
        labels.insert("severity".into(), alert.severity.as_str().to_string());
        PostableAlert {
            labels,
            annotations: BTreeMap::from([("summary".to_string(), alert.summary.clone())]),
            starts_at: rfc3339(self.wall(alert.active_at)),
            ends_at: Some(rfc3339(ends_at)),
            generator_url: notify.generator_url.clone(),
        }
    }
}

fn label_map(alert: &Alert) -> BTreeMap<String, String> {
    alert
        .labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn labels_text(alert: &Alert) -> String {
    let inner: Vec<String> = alert
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// One log line per transition.
fn log(transition: &Transition) {
    match transition {
        Transition::Fired(a) => tracing::warn!(
            "alert {}{} firing ({}): {}",
            a.rule,
            labels_text(a),
            a.severity.as_str(),
            a.summary
        ),
        Transition::Resolved(a, _) => tracing::info!(
            "alert {}{} resolved ({})",
            a.rule,
            labels_text(a),
            a.severity.as_str()
        ),
    }
}

/// `at` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}
