//! The built-in alert rules as data: name, severity, `for:` and a condition
//! with its thresholds.
//!
//! The same [`Rule`] drives the in-process evaluator, the Prometheus rule
//! file ([`Rule::expr`]) and the summaries sent to Alertmanager
//! ([`Rule::summary`]), so the three never disagree. Only these seven rules
//! exist; configuration tunes or disables them (see `docs/alerts.md`), it
//! cannot add new ones.

use std::fmt::Write as _;
use std::time::Duration;

/// A built-in rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleId {
    QueueDepthExceeded,
    ConsumerLagIncreasing,
    ProducerBlockTime,
    EventAgeHigh,
    SensorLatencyIncreasing,
    WorkflowsPendingGrowing,
    BusMemoryHigh,
}

impl RuleId {
    /// Every built-in rule, in evaluation and export order.
    pub const ALL: [RuleId; 7] = [
        RuleId::QueueDepthExceeded,
        RuleId::ConsumerLagIncreasing,
        RuleId::ProducerBlockTime,
        RuleId::EventAgeHigh,
        RuleId::SensorLatencyIncreasing,
        RuleId::WorkflowsPendingGrowing,
        RuleId::BusMemoryHigh,
    ];

    /// The `alertname` (also the key under `spec.rules` in config).
    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::QueueDepthExceeded => "QueueDepthExceeded",
            RuleId::ConsumerLagIncreasing => "ConsumerLagIncreasing",
            RuleId::ProducerBlockTime => "ProducerBlockTime",
            RuleId::EventAgeHigh => "EventAgeHigh",
            RuleId::SensorLatencyIncreasing => "SensorLatencyIncreasing",
            RuleId::WorkflowsPendingGrowing => "WorkflowsPendingGrowing",
            RuleId::BusMemoryHigh => "BusMemoryHigh",
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How urgent an alert is (the `severity` label), seed wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
}

impl Severity {
    pub const ALL: [&'static str; 4] = ["critical", "high", "medium", "low"];

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }

    /// Parses any capitalisation of [`Severity::ALL`].
    pub fn parse(text: &str) -> Option<Severity> {
        match text.to_ascii_lowercase().as_str() {
            "critical" => Some(Severity::Critical),
            "high" => Some(Severity::High),
            "medium" => Some(Severity::Medium),
            "low" => Some(Severity::Low),
            _ => None,
        }
    }
}

/// When a rule's condition holds, per series.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Per stream: depth > `above`, or depth > `ratio_of_max` × `max_msgs`
    /// when the bus has a `max_msgs` ("consistently near max_msgs").
    QueueDepth { above: u64, ratio_of_max: f64 },
    /// Per trigger consumer: lag > `above` and the least-squares slope of
    /// the lag over `window` is positive (a flat lag does not count).
    LagIncreasing { above: u64, window: Duration },
    /// Per source: mean producer block time over `window` > `above`.
    ProducerBlock { above: Duration, window: Duration },
    /// Per trigger consumer: its oldest unacked event is older than `above`.
    EventAge { above: Duration },
    /// Per sensor: mean processing latency over the last `window` is more
    /// than `factor` × the mean over the `window` before it, and more than
    /// `minimum` (so millisecond jitter does not page anyone).
    LatencyIncreasing {
        factor: f64,
        minimum: Duration,
        window: Duration,
    },
    /// Per workflow template: pending workflows > `above` and their slope
    /// over `window` is positive.
    PendingGrowing { above: u64, window: Duration },
    /// Per stream: bus bytes > `ratio_of_max` × `max_bytes` (broker memory).
    BusMemory { ratio_of_max: f64 },
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: RuleId,
    pub severity: Severity,
    /// How long the condition must hold before the alert fires.
    pub for_duration: Duration,
    pub condition: Condition,
}

/// The rules in force and how often they are evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSet {
    pub evaluation_interval: Duration,
    /// Enabled rules only.
    pub rules: Vec<Rule>,
}

/// Default evaluation interval ("every few seconds").
pub const DEFAULT_EVALUATION_INTERVAL: Duration = Duration::from_secs(5);

impl Default for RuleSet {
    /// The seed's thresholds (004's alert rules and metric table, 000's
    /// warning signs), every rule enabled.
    fn default() -> Self {
        RuleSet {
            evaluation_interval: DEFAULT_EVALUATION_INTERVAL,
            rules: RuleId::ALL.into_iter().map(Rule::default_for).collect(),
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

impl Rule {
    /// The built-in rule `name` with its default settings.
    pub fn default_for(name: RuleId) -> Rule {
        let (severity, for_duration, condition) = match name {
            RuleId::QueueDepthExceeded => (
                Severity::Critical,
                5 * MINUTE,
                Condition::QueueDepth {
                    above: 1_000_000,
                    ratio_of_max: 0.9,
                },
            ),
            RuleId::ConsumerLagIncreasing => (
                Severity::High,
                MINUTE,
                Condition::LagIncreasing {
                    above: 100_000,
                    window: 5 * MINUTE,
                },
            ),
            RuleId::ProducerBlockTime => (
                Severity::Medium,
                MINUTE,
                Condition::ProducerBlock {
                    above: Duration::from_millis(100),
                    window: MINUTE,
                },
            ),
            RuleId::EventAgeHigh => (
                Severity::High,
                MINUTE,
                Condition::EventAge { above: 2 * MINUTE },
            ),
            RuleId::SensorLatencyIncreasing => (
                Severity::Medium,
                2 * MINUTE,
                Condition::LatencyIncreasing {
                    factor: 2.0,
                    minimum: Duration::from_millis(100),
                    window: 5 * MINUTE,
                },
            ),
            RuleId::WorkflowsPendingGrowing => (
                Severity::Medium,
                5 * MINUTE,
                Condition::PendingGrowing {
                    above: 10,
                    window: 10 * MINUTE,
                },
            ),
            RuleId::BusMemoryHigh => (
                Severity::High,
                5 * MINUTE,
                Condition::BusMemory { ratio_of_max: 0.8 },
            ),
        };
        Rule {
            name,
            severity,
            for_duration,
            condition,
        }
    }

    /// The condition as a PromQL expression over spillway's metrics.
    pub fn expr(&self) -> String {
        match &self.condition {
            Condition::QueueDepth {
                above,
                ratio_of_max,
            } => format!(
                "spillway_bus_messages > {above} or (spillway_bus_messages > {} * spillway_bus_max_messages and spillway_bus_max_messages > 0)",
                number(*ratio_of_max)
            ),
            Condition::LagIncreasing { above, window } => format!(
                "spillway_consumer_lag > {above} and deriv(spillway_consumer_lag[{w}]) > 0",
                w = promql_duration(*window)
            ),
            Condition::ProducerBlock { above, window } => format!(
                "{} > {}",
                mean("spillway_producer_block_seconds", *window, ""),
                number(above.as_secs_f64())
            ),
            Condition::EventAge { above } => format!(
                "spillway_oldest_unacked_age_seconds > {}",
                number(above.as_secs_f64())
            ),
            Condition::LatencyIncreasing {
                factor,
                minimum,
                window,
            } => {
                let now = mean("spillway_sensor_processing_seconds", *window, "");
                let offset = format!(" offset {}", promql_duration(*window));
                let before = mean("spillway_sensor_processing_seconds", *window, &offset);
                format!(
                    "{now} > {} * {before} and {now} > {}",
                    number(*factor),
                    number(minimum.as_secs_f64())
                )
            }
            Condition::PendingGrowing { above, window } => format!(
                "spillway_workflows_pending > {above} and deriv(spillway_workflows_pending[{w}]) > 0",
                w = promql_duration(*window)
            ),
            Condition::BusMemory { ratio_of_max } => format!(
                "spillway_bus_bytes > {} * spillway_bus_max_bytes and spillway_bus_max_bytes > 0",
                number(*ratio_of_max)
            ),
        }
    }

    /// A one-line summary in Prometheus template syntax (`{{ $labels.x }}`,
    /// `{{ $value }}`); [`render`] fills it in for in-process alerts.
    pub fn summary(&self) -> String {
        match &self.condition {
            Condition::QueueDepth {
                above,
                ratio_of_max,
            } => format!(
                "bus {{{{ $labels.stream }}}} holds {{{{ $value }}}} messages (threshold {above}, or {}% of max_msgs)",
                number(ratio_of_max * 100.0)
            ),
            Condition::LagIncreasing { above, window } => format!(
                "trigger {{{{ $labels.sensor }}}}/{{{{ $labels.trigger }}}} lags {{{{ $value }}}} events (over {above}) and the lag grew over the last {}",
                promql_duration(*window)
            ),
            Condition::ProducerBlock { above, window } => format!(
                "producers of {{{{ $labels.source }}}} waited {{{{ $value }}}}s on average over the last {} (threshold {}s)",
                promql_duration(*window),
                number(above.as_secs_f64())
            ),
            Condition::EventAge { above } => format!(
                "trigger {{{{ $labels.sensor }}}}/{{{{ $labels.trigger }}}} has an event waiting for {{{{ $value }}}}s (threshold {}s)",
                number(above.as_secs_f64())
            ),
            Condition::LatencyIncreasing { factor, window, .. } => format!(
                "sensor {{{{ $labels.sensor }}}} takes {{{{ $value }}}}s per event, over {}x the {} before",
                number(*factor),
                promql_duration(*window)
            ),
            Condition::PendingGrowing { above, window } => format!(
                "{{{{ $value }}}} workflows of {{{{ $labels.template }}}} are pending (over {above}) and the queue grew over the last {}",
                promql_duration(*window)
            ),
            Condition::BusMemory { ratio_of_max } => format!(
                "bus {{{{ $labels.stream }}}} holds {{{{ $value }}}} bytes, over {}% of max_bytes",
                number(ratio_of_max * 100.0)
            ),
        }
    }
}

/// `rate(NAME_sum[w]) / rate(NAME_count[w])`: the mean observation over `w`.
fn mean(histogram: &str, window: Duration, offset: &str) -> String {
    let w = promql_duration(window);
    format!("(rate({histogram}_sum[{w}]{offset}) / rate({histogram}_count[{w}]{offset}))")
}

/// Fills a [`Rule::summary`] template with `labels` and `value`.
pub fn render(template: &str, labels: &[(&'static str, String)], value: f64) -> String {
    let mut out = template.replace("{{ $value }}", &number(value));
    for (name, label) in labels {
        out = out.replace(&format!("{{{{ $labels.{name} }}}}"), label);
    }
    out
}

/// A number as PromQL and people read it: integers without a fraction,
/// others with at most 6 significant decimals.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        let text = format!("{value:.6}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A duration in PromQL syntax (`5m`, `90s`, `250ms`, `0s`).
pub fn promql_duration(d: Duration) -> String {
    let millis = d.as_millis();
    let mut out = String::new();
    if millis == 0 {
        out.push_str("0s");
    } else if millis.is_multiple_of(3_600_000) {
        let _ = write!(out, "{}h", millis / 3_600_000);
    } else if millis.is_multiple_of(60_000) {
        let _ = write!(out, "{}m", millis / 60_000);
    } else if millis.is_multiple_of(1000) {
        let _ = write!(out, "{}s", millis / 1000);
    } else {
        let _ = write!(out, "{millis}ms");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_carry_the_seed_thresholds() {
        let set = RuleSet::default();
        assert_eq!(set.rules.len(), 7);
        let depth = &set.rules[0];
        assert_eq!(depth.name, RuleId::QueueDepthExceeded);
        assert_eq!(depth.severity, Severity::Critical);
        assert_eq!(depth.for_duration, Duration::from_secs(300));
        assert_eq!(
            depth.expr(),
            "spillway_bus_messages > 1000000 or (spillway_bus_messages > 0.9 * spillway_bus_max_messages and spillway_bus_max_messages > 0)"
        );
        assert_eq!(
            Rule::default_for(RuleId::ConsumerLagIncreasing).expr(),
            "spillway_consumer_lag > 100000 and deriv(spillway_consumer_lag[5m]) > 0"
        );
        assert_eq!(
            Rule::default_for(RuleId::ProducerBlockTime).expr(),
            "(rate(spillway_producer_block_seconds_sum[1m]) / rate(spillway_producer_block_seconds_count[1m])) > 0.1"
        );
    }

    #[test]
    fn summaries_render_labels_and_value() {
        let rule = Rule::default_for(RuleId::QueueDepthExceeded);
        assert_eq!(
            render(&rule.summary(), &[("stream", "default".into())], 95_000.0),
            "bus default holds 95000 messages (threshold 1000000, or 90% of max_msgs)"
        );
    }

    #[test]
    fn durations_and_numbers_in_promql_syntax() {
        assert_eq!(promql_duration(Duration::from_secs(300)), "5m");
        assert_eq!(promql_duration(Duration::from_secs(90)), "90s");
        assert_eq!(promql_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(promql_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(promql_duration(Duration::ZERO), "0s");
        assert_eq!(number(0.1), "0.1");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(1.0 / 3.0), "0.333333");
    }
}
