//! `kind: Sensor` — dependencies (which events, which filters) and triggers
//! (what to do), with Argo's field names.
//!
//! Runnable today: `log` and `http` triggers, the store-for-later `k8s`
//! ConfigMap (`generateName: backlog-`) trigger, `data` filters. Argo fields
//! that are accepted by validation but not yet run are refused by
//! `spillway run` with a message naming them (see `topology`), never
//! silently ignored.

use super::decode::Spanned;
use super::flow_control::{SensorFlowControl, TriggerFlowControl};
use super::values::{one_of, GoDuration, ObjectMeta, RateLimit};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sensor {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: SensorSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SensorSpec {
    pub dependencies: Vec<Dependency>,
    pub triggers: Vec<Trigger>,
    /// Sensor-wide rate limit (seed): at most this many trigger runs per unit.
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// spillway extensions (burst of `rateLimit`, shedding).
    pub flow_control: Option<Spanned<SensorFlowControl>>,
    /// Argo: fail the sensor when a trigger round fails (accepted).
    pub error_on_failed_round: Option<bool>,
    pub logging_fields: Option<BTreeMap<String, String>>,
}

/// One event the sensor waits for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub name: Spanned<String>,
    pub event_source_name: Spanned<String>,
    pub event_name: Spanned<String>,
    pub filters: Option<DependencyFilters>,
}

/// Argo's `EventDependencyFilter`. Only `data` filters exist so far.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyFilters {
    pub data: Option<Vec<DataFilter>>,
    /// `and` (default) or `or` across the data filters.
    pub data_logical_operator: Option<Spanned<LogicalOperator>>,
}

/// `{path, type, value, comparator}`: the event's data at `path` (dotted,
/// e.g. `body.order.total`) must match one of `value`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataFilter {
    pub path: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<JsonType>,
    pub value: Spanned<Vec<Spanned<String>>>,
    /// For numbers: `>=`, `>`, `=`, `!=`, `<`, `<=` (default `=`).
    pub comparator: Option<Spanned<Comparator>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    String,
    Number,
    Bool,
}

impl<'de> Deserialize<'de> for JsonType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "string" => Ok(JsonType::String),
            "number" => Ok(JsonType::Number),
            "bool" | "boolean" => Ok(JsonType::Bool),
            _ => Err(de::Error::custom(one_of(
                "filter type",
                &text,
                &["string", "number", "bool"],
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    GreaterEqual,
    Greater,
    Equal,
    NotEqual,
    Less,
    LessEqual,
}

impl<'de> Deserialize<'de> for Comparator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.trim() {
            ">=" => Ok(Comparator::GreaterEqual),
            ">" => Ok(Comparator::Greater),
            "=" | "==" | "" => Ok(Comparator::Equal),
            "!=" => Ok(Comparator::NotEqual),
            "<" => Ok(Comparator::Less),
            "<=" => Ok(Comparator::LessEqual),
            _ => Err(de::Error::custom(one_of(
                "comparator",
                &text,
                &[">=", ">", "=", "!=", "<", "<="],
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogicalOperator {
    And,
    Or,
}

impl<'de> Deserialize<'de> for LogicalOperator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "and" | "&&" | "" => Ok(LogicalOperator::And),
            "or" | "||" => Ok(LogicalOperator::Or),
            _ => Err(de::Error::custom(one_of(
                "logical operator",
                &text,
                &["and", "or"],
            ))),
        }
    }
}

/// One trigger: a template (what to run) plus the policies around it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    pub template: TriggerTemplate,
    /// Parameters applied to the template (Argo `parameters`).
    pub parameters: Option<Vec<TriggerParameter>>,
    /// Per-trigger rate limit (seed).
    pub rate_limit: Option<Spanned<RateLimit>>,
    /// Argo `retryStrategy` (a Backoff).
    pub retry_strategy: Option<Spanned<Backoff>>,
    /// Argo: ack the bus before the trigger runs. spillway default: false.
    pub at_least_once: Option<Spanned<bool>>,
    /// spillway extensions (burst, maxInFlight, concurrency, slowStart …).
    pub flow_control: Option<Spanned<TriggerFlowControl>>,
    /// Argo: the trigger run for an event whose retries are used up.
    pub dlq_trigger: Option<Box<Spanned<Trigger>>>,
    /// Argo `policy`: which outcomes count as success.
    pub policy: Option<Spanned<TriggerPolicy>>,
}

/// Argo `TriggerPolicy`. Only `status` means something outside Kubernetes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerPolicy {
    pub status: Option<StatusPolicy>,
}

/// Argo `StatusPolicy`: the response statuses that count as success.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusPolicy {
    pub allow: Vec<Spanned<u16>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerTemplate {
    pub name: Spanned<String>,
    pub http: Option<Spanned<HttpTrigger>>,
    pub log: Option<Spanned<LogTrigger>>,
    pub argo_workflow: Option<Spanned<ArgoWorkflowTrigger>>,
    pub k8s: Option<Spanned<K8sTrigger>>,
    /// Argo `conditions`: a boolean expression over dependency names
    /// (`a && (b || c)`) saying which events the trigger waits for; without
    /// it, every dependency must arrive. See `docs/conditions.md`.
    pub conditions: Option<Spanned<String>>,
    /// Argo `conditionsReset`: when the events waiting for `conditions`
    /// are dropped.
    pub conditions_reset: Option<Vec<ConditionsReset>>,
}

/// Argo `ConditionsResetCriteria`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionsReset {
    pub by_time: Option<Spanned<ConditionsResetByTime>>,
}

/// Argo `ConditionsResetByTime`: at each `cron` tick (read in `timezone`,
/// default UTC) the waiting events are dropped.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionsResetByTime {
    pub cron: Spanned<String>,
    pub timezone: Option<Spanned<String>>,
}

/// Argo `HTTPTrigger`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpTrigger {
    pub url: Spanned<String>,
    /// Default POST.
    pub method: Option<Spanned<String>>,
    /// Builds the JSON request body from the event.
    pub payload: Option<Vec<TriggerParameter>>,
    pub headers: Option<BTreeMap<String, String>>,
    /// Request timeout in seconds (Argo default 60).
    pub timeout: Option<Spanned<u64>>,
}

/// Argo `LogTrigger`: logs each event.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogTrigger {
    /// Argo: log at most once per interval. 0 = every event.
    pub interval_seconds: Option<u64>,
}

/// Argo `ArgoWorkflowTrigger`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgoWorkflowTrigger {
    /// `submit` (default).
    pub operation: Option<Spanned<String>>,
    pub source: Option<ArtifactLocation>,
    pub parameters: Option<Vec<TriggerParameter>>,
    pub args: Option<Vec<String>>,
}

/// Argo `StandardK8STrigger`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct K8sTrigger {
    /// `create` (default) or `submit`.
    pub operation: Option<Spanned<String>>,
    pub source: ArtifactLocation,
    pub parameters: Option<Vec<TriggerParameter>>,
}

impl K8sTrigger {
    /// The inline resource's `kind` ("" when absent).
    pub fn resource_kind(&self) -> &str {
        self.source
            .resource
            .as_ref()
            .and_then(|r| r.value.get("kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("")
    }

    /// What keeps a `ConfigMap` resource from being the store-for-later
    /// trigger, the only ConfigMap spillway creates: `operation: create`,
    /// `apiVersion: v1`, `metadata.generateName: backlog-` (records are named
    /// `backlog-<suffix>`), and no `parameters` (`data.event` always holds
    /// the whole event, so replay can publish it again).
    pub fn config_map_problems(&self) -> Vec<super::flow_control::Problem> {
        let mut out = Vec::new();
        if let Some(op) = &self.operation {
            if op.value != "create" {
                out.push((
                    op.pos,
                    format!(
                        "operation {:?} cannot store a ConfigMap for later; use `create`",
                        op.value
                    ),
                ));
            }
        }
        let Some(resource) = &self.source.resource else {
            return out;
        };
        let value = &resource.value;
        if let Some(version) = value.get("apiVersion").and_then(|v| v.as_str()) {
            if version != "v1" {
                out.push((
                    resource.pos,
                    format!("a ConfigMap is apiVersion v1, not {version:?}"),
                ));
            }
        }
        let metadata = value.get("metadata");
        let generate_name = metadata
            .and_then(|m| m.get("generateName"))
            .and_then(|g| g.as_str());
        if generate_name != Some(crate::backlog::record::NAME_PREFIX) {
            out.push((
                resource.pos,
                format!(
                    "a ConfigMap trigger stores events for later and needs `metadata.generateName: {}` \
                     (records are named backlog-<suffix> in <data-dir>/backlog/){}",
                    crate::backlog::record::NAME_PREFIX,
                    generate_name.map(|g| format!(", found {g:?}")).unwrap_or_default()
                ),
            ));
        }
        if metadata.and_then(|m| m.get("name")).is_some() {
            out.push((
                resource.pos,
                "a stored-for-later ConfigMap gets a generated name; remove `metadata.name`"
                    .to_string(),
            ));
        }
        if let Some(first) = self.parameters.iter().flatten().next() {
            out.push((
                first.src.pos,
                "parameters are not supported on the store-for-later trigger: data.event always holds the whole event"
                    .to_string(),
            ));
        }
        out
    }
}

/// Where a trigger's resource comes from. Only inline `resource` so far.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactLocation {
    /// An inline Kubernetes object (e.g. a `Workflow` or a `ConfigMap`).
    pub resource: Option<Spanned<serde_json::Value>>,
}

/// Argo `TriggerParameter`: take a value from the event, put it at `dest`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerParameter {
    pub src: Spanned<TriggerParameterSource>,
    /// Dotted path in the target document, e.g. `order.id`.
    pub dest: Spanned<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerParameterSource {
    pub dependency_name: Spanned<String>,
    /// Dotted path into the event data (e.g. `body.order.id`).
    pub data_key: Option<Spanned<String>>,
    /// Dotted path into the event context (`id`, `source`, `type`, `subject`, `time`).
    pub context_key: Option<Spanned<String>>,
    /// Used when the key is missing.
    pub value: Option<String>,
}

/// Argo `Backoff`: `steps` attempts, waiting `duration × factor^n` (± jitter).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    pub steps: Option<u32>,
    pub duration: Option<GoDuration>,
    pub factor: Option<Spanned<f64>>,
    pub jitter: Option<Spanned<f64>>,
}
