//! `kind: AlertRules` (`apiVersion: spillway.io/v1alpha1`): tunes the
//! built-in alert rules and names an Alertmanager to notify.
//!
//! A spillway kind of its own rather than a field of an Argo kind, so the
//! Argo documents stay valid Argo. Optional: without it the seven built-in
//! rules run with the seed's thresholds and nothing is sent anywhere. At
//! most one may be loaded. Every field is optional; what is left out keeps
//! its default (listed in `docs/alerts.md`). Rules cannot be added, only
//! tuned or disabled (`enabled: false`).
//!
//! [`AlertRulesSpec::resolve`] checks every value and turns the document
//! into the runtime settings in one pass, so a default is written down once
//! (in `telemetry::alerts::rules`).

use super::decode::Spanned;
use super::flow_control::Problem;
use super::values::{one_of, GoDuration, ObjectMeta};
use crate::telemetry::alerts::{Condition, Rule, RuleId, RuleSet, Severity};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::time::Duration;

/// The apiVersion an `AlertRules` document carries.
pub const API_VERSION: &str = "spillway.io/v1alpha1";

/// Shortest accepted `evaluationInterval`.
pub const MIN_EVALUATION_INTERVAL: Duration = Duration::from_millis(100);
/// Most alerts an Alertmanager queue may be configured to hold.
pub const MAX_QUEUE: u32 = 100_000;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRules {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AlertRulesSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertRulesSpec {
    /// How often the rules are evaluated (default 5s).
    pub evaluation_interval: Option<Spanned<GoDuration>>,
    /// Where firing and resolved alerts are POSTed.
    pub alertmanager: Option<Spanned<Alertmanager>>,
    /// Per-rule settings, keyed by rule name.
    pub rules: Option<RuleSettings>,
}

/// `alertmanager:` — an Alertmanager-compatible receiver.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alertmanager {
    /// `http(s)://host:port` of Alertmanager (alerts go to
    /// `/api/v2/alerts` under it), or a full URL ending in `/api/v2/alerts`.
    pub url: Spanned<String>,
    /// Per-request timeout (default 10s).
    pub timeout: Option<Spanned<GoDuration>>,
    /// Firing alerts are sent again this often (default 1m).
    pub resend_interval: Option<Spanned<GoDuration>>,
    /// Most alerts waiting to be sent; the oldest is dropped beyond it
    /// (default 1000).
    pub max_queue: Option<Spanned<u32>>,
}

/// `rules:` — one optional block per built-in rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RuleSettings {
    #[serde(rename = "QueueDepthExceeded")]
    pub queue_depth_exceeded: Option<Spanned<QueueDepthSettings>>,
    #[serde(rename = "ConsumerLagIncreasing")]
    pub consumer_lag_increasing: Option<Spanned<GrowingSettings>>,
    #[serde(rename = "ProducerBlockTime")]
    pub producer_block_time: Option<Spanned<MeanSettings>>,
    #[serde(rename = "EventAgeHigh")]
    pub event_age_high: Option<Spanned<AgeSettings>>,
    #[serde(rename = "SensorLatencyIncreasing")]
    pub sensor_latency_increasing: Option<Spanned<LatencySettings>>,
    #[serde(rename = "WorkflowsPendingGrowing")]
    pub workflows_pending_growing: Option<Spanned<GrowingSettings>>,
    #[serde(rename = "BusMemoryHigh")]
    pub bus_memory_high: Option<Spanned<RatioSettings>>,
}

/// `QueueDepthExceeded`: `above` messages, or `ratioOfMax` of `max_msgs`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepthSettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub above: Option<Spanned<u64>>,
    pub ratio_of_max: Option<Spanned<f64>>,
}

/// `ConsumerLagIncreasing`, `WorkflowsPendingGrowing`: above a count and
/// growing over `window`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrowingSettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub above: Option<Spanned<u64>>,
    pub window: Option<Spanned<GoDuration>>,
}

/// `ProducerBlockTime`: mean over `window` above a duration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeanSettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub above: Option<Spanned<GoDuration>>,
    pub window: Option<Spanned<GoDuration>>,
}

/// `EventAgeHigh`: oldest unacked event older than `above`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgeSettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub above: Option<Spanned<GoDuration>>,
}

/// `SensorLatencyIncreasing`: mean latency over `window` above `factor` ×
/// the window before, and above `minimum`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub factor: Option<Spanned<f64>>,
    pub minimum: Option<Spanned<GoDuration>>,
    pub window: Option<Spanned<GoDuration>>,
}

/// `BusMemoryHigh`: bus bytes above `ratioOfMax` of `max_bytes`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RatioSettings {
    pub enabled: Option<Spanned<bool>>,
    #[serde(rename = "for")]
    pub for_duration: Option<Spanned<GoDuration>>,
    pub severity: Option<Spanned<SeverityName>>,
    pub ratio_of_max: Option<Spanned<f64>>,
}

/// `severity:` — critical, high, medium or low.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeverityName(pub Severity);

impl<'de> Deserialize<'de> for SeverityName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Severity::parse(&text)
            .map(SeverityName)
            .ok_or_else(|| de::Error::custom(one_of("severity", &text, &Severity::ALL)))
    }
}

/// The resolved `alertmanager:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertmanagerConfig {
    /// The full `/api/v2/alerts` endpoint.
    pub url: reqwest::Url,
    pub timeout: Duration,
    pub resend_interval: Duration,
    pub max_queue: usize,
}

/// Alerting as it runs: the rules, and where to send alerts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AlertingConfig {
    pub rules: RuleSet,
    pub alertmanager: Option<AlertmanagerConfig>,
}

/// The settings every rule block has.
struct Common<'a> {
    enabled: &'a Option<Spanned<bool>>,
    for_duration: &'a Option<Spanned<GoDuration>>,
    severity: &'a Option<Spanned<SeverityName>>,
}

macro_rules! common {
    ($settings:expr) => {
        Common {
            enabled: &$settings.enabled,
            for_duration: &$settings.for_duration,
            severity: &$settings.severity,
        }
    };
}

impl AlertRulesSpec {
    /// The runtime settings, or every out-of-range value.
    pub fn resolve(&self) -> Result<AlertingConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        let interval = match &self.evaluation_interval {
            Some(i) if i.value.0 < MIN_EVALUATION_INTERVAL => {
                problems.push((
                    i.pos,
                    "evaluationInterval must be at least 100ms".to_string(),
                ));
                MIN_EVALUATION_INTERVAL
            }
            Some(i) => i.value.0,
            None => crate::telemetry::alerts::rules::DEFAULT_EVALUATION_INTERVAL,
        };
        let settings = self.rules.clone().unwrap_or_default();
        let mut rules = Vec::new();
        for id in RuleId::ALL {
            let mut rule = Rule::default_for(id);
            let enabled = match id {
                RuleId::QueueDepthExceeded => match &settings.queue_depth_exceeded {
                    None => true,
                    Some(s) => {
                        let s = &s.value;
                        if let Condition::QueueDepth {
                            above,
                            ratio_of_max,
                        } = &mut rule.condition
                        {
                            set(above, &s.above);
                            set_ratio(ratio_of_max, &s.ratio_of_max, &mut problems);
                        }
                        apply(&mut rule, common!(s))
                    }
                },
                RuleId::ConsumerLagIncreasing | RuleId::WorkflowsPendingGrowing => {
                    let block = if id == RuleId::ConsumerLagIncreasing {
                        &settings.consumer_lag_increasing
                    } else {
                        &settings.workflows_pending_growing
                    };
                    match block {
                        None => true,
                        Some(s) => {
                            let s = &s.value;
                            if let Condition::LagIncreasing { above, window }
                            | Condition::PendingGrowing { above, window } = &mut rule.condition
                            {
                                set(above, &s.above);
                                set_window(window, &s.window, interval, &mut problems);
                            }
                            apply(&mut rule, common!(s))
                        }
                    }
                }
                RuleId::ProducerBlockTime => match &settings.producer_block_time {
                    None => true,
                    Some(s) => {
                        let s = &s.value;
                        if let Condition::ProducerBlock { above, window } = &mut rule.condition {
                            set_duration(above, &s.above);
                            set_window(window, &s.window, interval, &mut problems);
                        }
                        apply(&mut rule, common!(s))
                    }
                },
                RuleId::EventAgeHigh => match &settings.event_age_high {
                    None => true,
                    Some(s) => {
                        let s = &s.value;
                        if let Condition::EventAge { above } = &mut rule.condition {
                            set_duration(above, &s.above);
                        }
                        apply(&mut rule, common!(s))
                    }
                },
                RuleId::SensorLatencyIncreasing => match &settings.sensor_latency_increasing {
                    None => true,
                    Some(s) => {
                        let s = &s.value;
                        if let Condition::LatencyIncreasing {
                            factor,
                            minimum,
                            window,
                        } = &mut rule.condition
                        {
                            if let Some(f) = &s.factor {
                                if f.value.is_finite() && f.value >= 1.0 {
                                    *factor = f.value;
                                } else {
                                    problems.push((
                                        f.pos,
                                        format!("factor must be at least 1, found {}", f.value),
                                    ));
                                }
                            }
                            set_duration(minimum, &s.minimum);
                            set_window(window, &s.window, interval, &mut problems);
                        }
                        apply(&mut rule, common!(s))
                    }
                },
                RuleId::BusMemoryHigh => match &settings.bus_memory_high {
                    None => true,
                    Some(s) => {
                        let s = &s.value;
                        if let Condition::BusMemory { ratio_of_max } = &mut rule.condition {
                            set_ratio(ratio_of_max, &s.ratio_of_max, &mut problems);
                        }
                        apply(&mut rule, common!(s))
                    }
                },
            };
            if enabled {
                rules.push(rule);
            }
        }
        // A default window too short for a long interval is reported at
        // the interval (a configured one was reported at the window).
        if let Some(i) = &self.evaluation_interval {
            for rule in &rules {
                if let Some(window) = window_of(rule).filter(|w| *w < interval * 2) {
                    problems.push((
                        i.pos,
                        format!(
                            "evaluationInterval must be at most half of {}'s window ({}); set a longer `window` for it",
                            rule.name,
                            humantime::format_duration(window)
                        ),
                    ));
                }
            }
        }
        let alertmanager = self
            .alertmanager
            .as_ref()
            .and_then(|a| a.value.resolve(&mut problems));
        if problems.is_empty() {
            Ok(AlertingConfig {
                rules: RuleSet {
                    evaluation_interval: interval,
                    rules,
                },
                alertmanager,
            })
        } else {
            Err(problems)
        }
    }
}

impl Alertmanager {
    fn resolve(&self, problems: &mut Vec<Problem>) -> Option<AlertmanagerConfig> {
        let mut ok = true;
        let mut positive =
            |field: &str, value: &Option<Spanned<GoDuration>>, default: u64| match value {
                Some(v) if v.value.0.is_zero() => {
                    problems.push((v.pos, format!("{field} must be longer than 0s")));
                    ok = false;
                    Duration::ZERO
                }
                Some(v) => v.value.0,
                None => Duration::from_secs(default),
            };
        let timeout = positive("timeout", &self.timeout, 10);
        let resend_interval = positive("resendInterval", &self.resend_interval, 60);
        let max_queue = match &self.max_queue {
            Some(q) if q.value == 0 || q.value > MAX_QUEUE => {
                problems.push((q.pos, format!("maxQueue must be between 1 and {MAX_QUEUE}")));
                ok = false;
                0
            }
            Some(q) => q.value as usize,
            None => 1000,
        };
        let url = match endpoint(&self.url.value) {
            Ok(url) => Some(url),
            Err(message) => {
                problems.push((self.url.pos, message));
                None
            }
        };
        Some(AlertmanagerConfig {
            url: url?,
            timeout,
            resend_interval,
            max_queue,
        })
        .filter(|_| ok)
    }
}

/// The `/api/v2/alerts` endpoint of `text`.
fn endpoint(text: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(text).map_err(|e| {
        format!("alertmanager url {text:?} is not a valid URL ({e}); expected e.g. http://alertmanager:9093")
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "alertmanager url {text:?} must start with http:// or https://"
        ));
    }
    if !url.path().trim_end_matches('/').ends_with("/api/v2/alerts") {
        let path = format!("{}/api/v2/alerts", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

/// Applies `for` and `severity`; returns whether the rule is enabled.
fn apply(rule: &mut Rule, common: Common<'_>) -> bool {
    if let Some(f) = common.for_duration {
        rule.for_duration = f.value.0;
    }
    if let Some(s) = common.severity {
        rule.severity = s.value.0;
    }
    common.enabled.as_ref().is_none_or(|e| e.value)
}

/// The window a rule reads samples over, if any.
fn window_of(rule: &Rule) -> Option<Duration> {
    match rule.condition {
        Condition::LagIncreasing { window, .. }
        | Condition::ProducerBlock { window, .. }
        | Condition::LatencyIncreasing { window, .. }
        | Condition::PendingGrowing { window, .. } => Some(window),
        _ => None,
    }
}

fn set(target: &mut u64, value: &Option<Spanned<u64>>) {
    if let Some(v) = value {
        *target = v.value;
    }
}

fn set_duration(target: &mut Duration, value: &Option<Spanned<GoDuration>>) {
    if let Some(v) = value {
        *target = v.value.0;
    }
}

fn set_ratio(target: &mut f64, value: &Option<Spanned<f64>>, problems: &mut Vec<Problem>) {
    if let Some(v) = value {
        if v.value > 0.0 && v.value <= 1.0 {
            *target = v.value;
        } else {
            problems.push((
                v.pos,
                format!(
                    "ratioOfMax must be above 0 and at most 1, found {}",
                    v.value
                ),
            ));
        }
    }
}

/// A window must hold at least two evaluations, or a slope or a mean over
/// it would never exist.
fn set_window(
    target: &mut Duration,
    value: &Option<Spanned<GoDuration>>,
    interval: Duration,
    problems: &mut Vec<Problem>,
) {
    if let Some(v) = value {
        if v.value.0 >= interval * 2 {
            *target = v.value.0;
        } else {
            problems.push((
                v.pos,
                format!(
                    "window must be at least twice evaluationInterval ({}), found {}",
                    humantime::format_duration(interval * 2),
                    humantime::format_duration(v.value.0)
                ),
            ));
        }
    }
}
