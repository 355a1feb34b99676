//! `kind: Sensor` — dependencies (which events, which filters) and triggers
//! (what to do), with Argo's field names.
//!
//! Runnable today: `log`, `http` and (spillway extension) `postgres`
//! triggers, `argoWorkflow` and `k8s` Workflow triggers (local executor),
//! the store-for-later `k8s` ConfigMap (`generateName: backlog-`) trigger,
//! every dependency filter kind and `transform` (see `sensor::filter`).
//! Argo fields
//! that are accepted by validation but not yet run are refused by
//! `spillway run` with a message naming them (see `topology`), never
//! silently ignored.

use super::decode::Spanned;
use super::flow_control::{SensorFlowControl, TriggerFlowControl};
use super::values::{one_of, GoDuration, ObjectMeta, RateLimit, SecretKeySelector};
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
    /// `and` (default) or `or` across the filter kinds (data, exprs, context, time, script).
    pub filters_logical_operator: Option<Spanned<LogicalOperator>>,
    /// Rewrites the event data before the filters run (Argo order).
    pub transform: Option<Spanned<Transform>>,
}

/// Argo `EventDependencyTransformer`: exactly one of `jq` or `script` (Lua).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transform {
    pub jq: Option<Spanned<String>>,
    pub script: Option<Spanned<String>>,
}

/// Argo's `EventDependencyFilter`; what each kind means is in `sensor::filter`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DependencyFilters {
    pub data: Option<Vec<DataFilter>>,
    /// `and` (default) or `or` across the data filters.
    pub data_logical_operator: Option<Spanned<LogicalOperator>>,
    pub exprs: Option<Vec<ExprFilter>>,
    /// `and` (default) or `or` across the expression filters.
    pub expr_logical_operator: Option<Spanned<LogicalOperator>>,
    pub context: Option<Spanned<ContextFilter>>,
    pub time: Option<Spanned<TimeFilter>>,
    /// Lua; the event data is the global `event`, the script returns a bool.
    pub script: Option<Spanned<String>>,
}

/// Argo `ExprFilter`: `expr` over the values at `fields[].path`, named `fields[].name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExprFilter {
    pub expr: Spanned<String>,
    pub fields: Vec<PayloadField>,
}

/// Argo `PayloadField`: binds the data at `path` to `name`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PayloadField {
    pub path: Spanned<String>,
    pub name: Spanned<String>,
}

/// Argo `EventContext` as a filter: every non-empty field must equal the
/// event's. `id`, `specversion` and `time` are accepted and ignored, as in Argo.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContextFilter {
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub subject: Option<Spanned<String>>,
    pub source: Option<Spanned<String>>,
    pub data_content_type: Option<Spanned<String>>,
    pub id: Option<Spanned<String>>,
    pub specversion: Option<Spanned<String>>,
    pub time: Option<Spanned<String>>,
}

/// Argo `TimeFilter`: `start` inclusive, `stop` exclusive, `hh:mm:ss`; a
/// `stop` before `start` ends the next day. `timezone` (IANA name, default
/// UTC as in Argo) is a spillway extension.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimeFilter {
    pub start: Spanned<String>,
    pub stop: Spanned<String>,
    pub timezone: Option<Spanned<String>>,
}

/// `{path, type, value, comparator}`: the event's data at `path` (a gjson
/// path, e.g. `body.order.total`) against `value`, by Argo's rules
/// (`sensor::filter::data`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataFilter {
    pub path: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<JsonType>,
    pub value: Spanned<Vec<Spanned<String>>>,
    /// `>=`, `>`, `=`, `!=`, `<`, `<=` for numbers, `=`/`!=` for strings
    /// (default `=`); Argo ignores it for bools.
    pub comparator: Option<Spanned<Comparator>>,
    /// A Go template applied to the value at `path` (as text, `.Input`)
    /// before it is compared; its output is compared as a string.
    pub template: Option<Spanned<String>>,
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
    /// spillway extension: one idempotent statement per event.
    pub postgres: Option<Spanned<PostgresTrigger>>,
    /// Argo `conditions`: a boolean expression over dependency names
    /// (`a && (b || c)`) saying which events the trigger waits for; without
    /// it, every dependency must arrive. See `docs/conditions.md`.
    pub conditions: Option<Spanned<String>>,
    /// Argo `conditionsReset`: when the events waiting for `conditions`
    /// are dropped.
    pub conditions_reset: Option<Vec<ConditionsReset>>,
}

/// spillway extension (not in Argo): runs one SQL statement per event in
/// PostgreSQL, at most once per event id (see `triggers::postgres`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostgresTrigger {
    /// `postgres://user[:password]@host[:port]/db`; or `urlSecret`.
    pub url: Option<Spanned<String>>,
    /// The URL from a Secret (it usually holds a password).
    pub url_secret: Option<Spanned<SecretKeySelector>>,
    /// One statement with `$1`, `$2` … placeholders.
    pub statement: Spanned<String>,
    /// The values of `$1`, `$2` … in order (`src` as in Argo parameters).
    pub parameters: Option<Vec<PostgresParameter>>,
    /// Most connections open at once (default 4).
    pub pool_size: Option<Spanned<u32>>,
    /// Bound on one invocation: waiting for a connection, connecting and
    /// the transaction (default 5s).
    pub timeout: Option<Spanned<GoDuration>>,
    /// The table recording which events were applied (default
    /// `spillway_applied_events`), created if missing.
    pub ledger_table: Option<Spanned<String>>,
}

/// The ledger table used when `ledgerTable` is not set.
pub const DEFAULT_LEDGER_TABLE: &str = "spillway_applied_events";
/// Connections per postgres trigger when `poolSize` is not set.
pub const DEFAULT_POOL_SIZE: u32 = 4;
/// The largest `poolSize`: PostgreSQL's default `max_connections` is 100,
/// and a pool is per trigger.
pub const MAX_POOL_SIZE: u32 = 64;

impl PostgresTrigger {
    /// What is wrong with this trigger's settings, each at its position.
    pub fn problems(&self, at: super::yaml::Pos) -> Vec<super::flow_control::Problem> {
        let mut out = Vec::new();
        match (&self.url, &self.url_secret) {
            (Some(_), Some(secret)) => out.push((
                secret.pos,
                "postgres needs one of `url` and `urlSecret`, not both".to_string(),
            )),
            (None, None) => out.push((
                at,
                "postgres needs `url` (postgres://user@host:port/db) or `urlSecret`".to_string(),
            )),
            (Some(url), None) => {
                // The message never repeats the URL: it may hold a password.
                if let Err(err) = url.value.parse::<tokio_postgres::Config>() {
                    out.push((url.pos, format!("invalid postgres url: {err}")));
                }
            }
            (None, Some(secret)) => out.extend(secret.value.problems()),
        }
        if self.statement.value.trim().is_empty() {
            out.push((
                self.statement.pos,
                "statement must not be empty".to_string(),
            ));
        }
        if let Some(size) = &self.pool_size {
            if !(1..=MAX_POOL_SIZE).contains(&size.value) {
                out.push((
                    size.pos,
                    format!("poolSize must be between 1 and {MAX_POOL_SIZE}"),
                ));
            }
        }
        if let Some(timeout) = &self.timeout {
            if timeout.value.0.is_zero() {
                out.push((timeout.pos, "timeout must be more than 0".to_string()));
            }
        }
        if let Some(table) = &self.ledger_table {
            if !is_table_name(&table.value) {
                out.push((
                    table.pos,
                    format!(
                        "ledgerTable {:?} must be a lowercase table name (letters, digits, '_'; \
                         optionally schema.table; at most 63 characters each)",
                        table.value
                    ),
                ));
            }
        }
        out
    }
}

/// A lowercase, optionally schema-qualified PostgreSQL identifier that
/// needs no quoting (so it can be put into SQL text as is).
pub fn is_table_name(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}

/// One `$n` of a postgres statement: where its value comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostgresParameter {
    pub src: Spanned<TriggerParameterSource>,
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
    /// Argo: parameters applied to this spec before each request (`dest`
    /// `url`, `method` or `headers.NAME`).
    pub parameters: Option<Vec<TriggerParameter>>,
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

/// Where a trigger's resource comes from: inline `resource`, a `file` read
/// at load, a `url` fetched at load, or a `configmap` key of a ConfigMap
/// document loaded with the config. The loader turns `file`, `url` and
/// `configmap` into `resource` (see `config::artifact`), so everything after
/// loading reads `resource` only.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactLocation {
    /// An inline Kubernetes object (e.g. a `Workflow` or a `ConfigMap`).
    pub resource: Option<Spanned<serde_json::Value>>,
    /// Argo `FileArtifact`: a YAML or JSON file holding the resource.
    pub file: Option<Spanned<FileArtifact>>,
    /// Argo `ConfigMapKeySelector`: a ConfigMap key whose value is the resource.
    pub configmap: Option<Spanned<ConfigMapKeySelector>>,
    /// Argo `URLArtifact`: an http(s) URL serving the resource.
    pub url: Option<Spanned<UrlArtifact>>,
}

impl ArtifactLocation {
    /// Whether the resource is read from outside the Sensor (`file`, `url`
    /// or `configmap`): when that fails the loader has reported it.
    pub fn is_loaded_elsewhere(&self) -> bool {
        self.file.is_some() || self.url.is_some() || self.configmap.is_some()
    }
}

/// Argo `URLArtifact`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlArtifact {
    /// The `http://` or `https://` URL.
    pub path: Spanned<String>,
    /// Check the server's certificate. Absent means `true` here (Argo's
    /// zero value skips the check; see `config::artifact`).
    pub verify_cert: Option<Spanned<bool>>,
}

/// Argo `FileArtifact`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileArtifact {
    /// Absolute, or relative to the directory of the file that names it.
    pub path: Spanned<String>,
}

/// Kubernetes `ConfigMapKeySelector`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeySelector {
    pub name: Spanned<String>,
    pub key: Spanned<String>,
    /// Accepted for Argo's sake; a missing ConfigMap is always an error here.
    pub optional: Option<bool>,
}

/// Argo `TriggerParameter`: take a value from the event, put it at `dest`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerParameter {
    pub src: Spanned<TriggerParameterSource>,
    /// Dotted (sjson) path in the target document, e.g. `order.id`; `\.` for a dot in a key.
    pub dest: Spanned<String>,
    /// Argo: `overwrite` (default), `append` or `prepend` to the value at `dest`.
    pub operation: Option<Spanned<ParameterOperation>>,
}

/// What a parameter does with the value already at its `dest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParameterOperation {
    #[default]
    Overwrite,
    /// `dest` becomes its current text followed by the new value.
    Append,
    /// `dest` becomes the new value followed by its current text.
    Prepend,
}

impl<'de> Deserialize<'de> for ParameterOperation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "overwrite" | "" => Ok(ParameterOperation::Overwrite),
            "append" => Ok(ParameterOperation::Append),
            "prepend" => Ok(ParameterOperation::Prepend),
            _ => Err(de::Error::custom(one_of(
                "parameter operation",
                &text,
                &["overwrite", "append", "prepend"],
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerParameterSource {
    pub dependency_name: Spanned<String>,
    /// gjson path into the event data (e.g. `body.order.id`).
    pub data_key: Option<Spanned<String>>,
    /// gjson path into the event context (`id`, `source`, `type`, `subject`, `time`).
    pub context_key: Option<Spanned<String>>,
    /// Used when the key is missing.
    pub value: Option<String>,
    /// Go template over the event data (`.Input`); parsed at load.
    pub data_template: Option<Spanned<crate::triggers::params::template::GoTemplate>>,
    /// Go template over the event context (`.Input`); parsed at load.
    pub context_template: Option<Spanned<crate::triggers::params::template::GoTemplate>>,
    /// Argo: a `dataKey`/`contextKey` value that is not a string (a
    /// number, boolean, null, object or array) is inserted as that JSON
    /// value rather than as its text (see docs/parameters.md).
    pub use_raw_data: Option<bool>,
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
