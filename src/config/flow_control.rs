//! spillway's `flowControl:` blocks: the knobs Argo has no field for, kept in
//! one object per place so the Argo parts of a file stay valid Argo.
//!
//! Each struct mirrors its YAML one to one; the runtime types live in
//! `spillway_flowctl`, and the `to_*` conversions here are the only place the
//! two meet, so a default is written down once.

use super::decode::Spanned;
use super::values::{
    flowctl_rate_limit, one_of, rate_unit, requests_per_unit_problem, GoDuration, RateUnit,
};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use spillway_flowctl::ConcurrencyMode;

/// `Sensor.spec.flowControl`: sensor-wide extras.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SensorFlowControl {
    /// Burst of `spec.rateLimit` (default 1: no call goes past the rate).
    pub burst: Option<Spanned<u32>>,
    /// Skip low-priority events while the sensor's backlog is deep.
    pub shedding: Option<Spanned<Shedding>>,
    /// Where an event's priority comes from at this sensor; without it the
    /// priority the webhook stamped on the event (`spillway-priority`), else
    /// 5. With it (or with `shedding`) each trigger dispatches higher
    /// priorities first.
    pub priority: Option<Spanned<Priority>>,
    /// The threads, queue and deadline of the sensor's Lua script and jq
    /// evaluations (see `sensor::evaluation`).
    pub evaluation: Option<Spanned<Evaluation>>,
}

/// `Sensor.spec.flowControl.evaluation`: where the sensor runs `script`
/// filters and `transform`s, and how long one may take.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Evaluation {
    /// Wall-clock deadline of one evaluation, queueing included (default 1s).
    pub timeout: Option<Spanned<GoDuration>>,
    /// OS threads running evaluations (default 2).
    pub threads: Option<Spanned<u32>>,
    /// Evaluations waiting for a thread at most (default 64); one more is
    /// refused at once, rejecting its event.
    pub max_queued: Option<Spanned<u32>>,
    /// Threads stuck past their deadline that are replaced (default 4);
    /// beyond that the pool shrinks instead.
    pub max_abandoned: Option<Spanned<u32>>,
}

/// Longest `evaluation.timeout`: a trigger waits this long per event.
pub const MAX_EVALUATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Most `evaluation.threads` and `evaluation.maxAbandoned`.
pub const MAX_EVALUATION_THREADS: u32 = 64;

impl Evaluation {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(timeout) = &self.timeout {
            if timeout.value.0.is_zero() || timeout.value.0 > MAX_EVALUATION_TIMEOUT {
                out.push((
                    timeout.pos,
                    format!(
                        "evaluation timeout must be longer than 0s and at most {}s",
                        MAX_EVALUATION_TIMEOUT.as_secs()
                    ),
                ));
            }
        }
        if let Some(threads) = &self.threads {
            if threads.value == 0 || threads.value > MAX_EVALUATION_THREADS {
                out.push((
                    threads.pos,
                    format!("evaluation threads must be between 1 and {MAX_EVALUATION_THREADS}"),
                ));
            }
        }
        window("maxQueued", &self.max_queued, &mut out);
        if let Some(max) = &self.max_abandoned {
            if max.value > MAX_EVALUATION_THREADS {
                out.push((
                    max.pos,
                    format!("maxAbandoned must be at most {MAX_EVALUATION_THREADS}"),
                ));
            }
        }
        out
    }

    /// The pool settings, defaults filled in.
    pub fn to_settings(&self) -> crate::sensor::evaluation::EvaluationSettings {
        let defaults = crate::sensor::evaluation::EvaluationSettings::default();
        let count = |v: &Option<Spanned<u32>>, default: usize| {
            v.as_ref().map_or(default, |v| v.value as usize)
        };
        crate::sensor::evaluation::EvaluationSettings {
            timeout: self
                .timeout
                .as_ref()
                .map_or(defaults.timeout, |t| t.value.0),
            threads: count(&self.threads, defaults.threads),
            max_queued: count(&self.max_queued, defaults.max_queued),
            max_abandoned: count(&self.max_abandoned, defaults.max_abandoned),
        }
    }
}

/// `triggers[].flowControl`: per-trigger extras.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFlowControl {
    /// Burst of the trigger's `rateLimit` (default 1).
    pub burst: Option<Spanned<u32>>,
    /// Credit window: most events in flight at once (default 16).
    pub max_in_flight: Option<Spanned<u32>>,
    /// How the in-flight limit adapts: `aimd` (default), `gradient`, `fixed`.
    pub concurrency: Option<Spanned<Concurrency>>,
    /// What happens to an event the trigger cannot take: `error` (default),
    /// `drop`, `backlog`.
    pub on_reject: Option<Spanned<OnReject>>,
    /// Most events of an argoWorkflow trigger waiting on their semaphore
    /// (default 1000); when that many wait, the trigger stops pulling.
    pub max_pending: Option<Spanned<u32>>,
    /// Scale the trigger's workers with consumer lag (KEDA-style).
    pub autoscale: Option<Spanned<Autoscale>>,
    /// Ramp the send rate up after recovering from overload.
    pub slow_start: Option<Spanned<SlowStart>>,
    /// How long the bus waits for an ack before redelivering an event to
    /// another worker (JetStream `ack_wait`, default 30s). Events still in
    /// progress are kept alive, so this bounds how late a crashed instance's
    /// events are redelivered, not how long a trigger may run.
    pub ack_wait: Option<Spanned<GoDuration>>,
    /// How long and how many events of a dependency wait for the trigger's
    /// `conditions` (multi-dependency sensors only).
    pub correlation: Option<Spanned<Correlation>>,
}

/// `correlation: {maxWait, maxEvents}`: bounds on the events of a
/// multi-dependency trigger that wait for its condition. An event that
/// waited `maxWait` (default 1h), or the oldest of a dependency when a
/// `maxEvents + 1`-th (default 1000) arrives, is acked and counted in
/// `spillway_sensor_events_expired_total`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Correlation {
    pub max_wait: Option<Spanned<GoDuration>>,
    pub max_events: Option<Spanned<u32>>,
}

/// Default `correlation.maxWait`.
pub const DEFAULT_CORRELATION_MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);
/// Default `correlation.maxEvents` (per dependency).
pub const DEFAULT_CORRELATION_MAX_EVENTS: u32 = 1000;

impl Correlation {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(wait) = &self.max_wait {
            if wait.value.0.is_zero() {
                out.push((wait.pos, "maxWait must be longer than 0s".to_string()));
            }
        }
        window("maxEvents", &self.max_events, &mut out);
        out
    }
}

/// `rateLimit` inside a `flowControl` block: Argo's fields plus `burst`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurstRateLimit {
    pub requests_per_unit: Spanned<u32>,
    /// Default `Second`.
    #[serde(default, deserialize_with = "rate_unit")]
    pub unit: Option<RateUnit>,
    /// Default 1.
    pub burst: Option<Spanned<u32>>,
}

impl BurstRateLimit {
    /// The enforced limit; `None` for a zero rate or burst (reported by
    /// validation).
    pub fn to_flowctl(&self) -> Option<spillway_flowctl::RateLimit> {
        flowctl_rate_limit(
            &self.requests_per_unit,
            self.unit,
            self.burst.as_ref().map(|b| b.value),
        )
    }
}

/// `shedding: {queueDepthAbove, shedPriorityAbove}`: while the queue is
/// deeper than `queueDepthAbove`, events whose priority number is above
/// `shedPriorityAbove` are shed (0 is the highest priority).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shedding {
    pub queue_depth_above: Spanned<u64>,
    pub shed_priority_above: Spanned<u32>,
}

/// `priority: {header | path, default}`: where an event's priority comes
/// from. Exactly one of `header` and `path`.
///
/// Value policy (see `crate::priority`): a whole number `0..=9` is the
/// priority; a larger one counts as 9 (a bad value can never buy
/// precedence); a missing, negative or non-numeric value counts as
/// `default`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Priority {
    /// Header carrying the priority number (0 = most important): the HTTP
    /// request's at a webhook, the bus message's at a sensor.
    pub header: Option<Spanned<String>>,
    /// gjson path into the event data as the sensor sees it
    /// (`body.priority` for a webhook's JSON body), as in Argo data filters.
    pub path: Option<Spanned<String>>,
    /// Priority of events without a readable value (default 5).
    pub default: Option<Spanned<u32>>,
}

/// `autoscale: {min, max, lagThreshold}` (KEDA ScaledObject names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Autoscale {
    /// Default 1.
    pub min: Option<Spanned<u32>>,
    /// Default 100.
    pub max: Option<Spanned<u32>>,
    /// One worker per this many lagging events (KEDA `lagThreshold`).
    pub lag_threshold: Spanned<u64>,
    /// Below this lag a trigger with `min: 0` stays at zero workers.
    pub activation_lag_threshold: Option<Spanned<u64>>,
    /// How often the lag is read (KEDA `pollingInterval`, default 30s).
    pub polling_interval: Option<Spanned<GoDuration>>,
    /// With `min: 0`, how long without lag before going to zero workers
    /// (KEDA `cooldownPeriod`, default 300s). With `min` ≥ 1 scale-down is
    /// governed by `scaleDownStabilization`, as in KEDA.
    pub cooldown_period: Option<Spanned<GoDuration>>,
    /// How long to keep the highest recent recommendation before scaling
    /// down (HPA stabilisation window, default 300s).
    pub scale_down_stabilization: Option<Spanned<GoDuration>>,
}

/// `slowStart: {initialRate, factor, interval, maxRate}` (seed GradualDrain).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlowStart {
    /// Events per second right after recovery (default 10).
    pub initial_rate: Option<Spanned<f64>>,
    /// Growth per interval (default 1.1).
    pub factor: Option<Spanned<f64>>,
    /// Default 1s.
    pub interval: Option<Spanned<GoDuration>>,
    /// Rate at which the ramp ends (default 1000).
    pub max_rate: Option<Spanned<f64>>,
}

impl SlowStart {
    /// The ramp flowctl runs, with the seed's GradualDrain defaults for
    /// every field left out (10/s, ×1.1 per 1 s, up to 1000/s).
    pub fn to_flowctl(&self) -> spillway_flowctl::SlowStart {
        let default = spillway_flowctl::SlowStart::default();
        spillway_flowctl::SlowStart {
            initial_rate: self
                .initial_rate
                .as_ref()
                .map_or(default.initial_rate, |r| r.value),
            factor: self.factor.as_ref().map_or(default.factor, |f| f.value),
            interval: self
                .interval
                .as_ref()
                .map_or(default.interval, |i| i.value.0),
            max_rate: self.max_rate.as_ref().map_or(default.max_rate, |m| m.value),
        }
    }
}

impl Autoscale {
    /// The policy flowctl runs: KEDA/HPA defaults, except `min` 1 (the seed's
    /// `minReplicaCount: 1`; a trigger with no worker would never drain).
    pub fn to_flowctl(&self) -> spillway_flowctl::AutoscalePolicy {
        let default = spillway_flowctl::AutoscalePolicy::default();
        spillway_flowctl::AutoscalePolicy {
            min: self.min.as_ref().map_or(1, |m| m.value),
            max: self.max.as_ref().map_or(default.max, |m| m.value),
            lag_threshold: self.lag_threshold.value,
            activation_lag_threshold: self
                .activation_lag_threshold
                .as_ref()
                .map_or(default.activation_lag_threshold, |a| a.value),
            polling_interval: self
                .polling_interval
                .as_ref()
                .map_or(default.polling_interval, |p| p.value.0),
            cooldown: self
                .cooldown_period
                .as_ref()
                .map_or(default.cooldown, |c| c.value.0),
            scale_down_stabilization: self
                .scale_down_stabilization
                .as_ref()
                .map_or(default.scale_down_stabilization, |s| s.value.0),
        }
    }
}

/// `concurrency:` — how a trigger's in-flight limit moves: `aimd`
/// (Vector's ARC), `gradient` (Netflix Gradient2) or `fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency(pub ConcurrencyMode);

impl<'de> Deserialize<'de> for Concurrency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Concurrency).map_err(|_| {
            de::Error::custom(one_of("concurrency", &text, &["aimd", "gradient", "fixed"]))
        })
    }
}

/// `onReject:` — what happens to an event the downstream could not take
/// once its `retryStrategy` steps are used up (see `sensor::reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReject {
    /// To the `dlqTrigger` if any, else back to the bus with a delay, so the
    /// bus fills and the sources push back.
    Error,
    /// Acked, counted `dropped` and logged (throttled).
    Drop,
    /// Stored in the backlog store for `spillway backlog replay`.
    Backlog,
}

impl<'de> Deserialize<'de> for OnReject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.to_ascii_lowercase().as_str() {
            "error" => Ok(OnReject::Error),
            "drop" => Ok(OnReject::Drop),
            "backlog" => Ok(OnReject::Backlog),
            _ => Err(de::Error::custom(one_of(
                "onReject",
                &text,
                &["error", "drop", "backlog"],
            ))),
        }
    }
}

/// A value that is out of range: where, and why.
pub type Problem = (super::yaml::Pos, String);

fn at_least_one(field: &str, value: &Option<Spanned<u32>>, out: &mut Vec<Problem>) {
    if let Some(v) = value {
        if v.value == 0 {
            out.push((v.pos, format!("{field} must be at least 1")));
        }
    }
}

/// Highest accepted `maxInFlight`/`maxPending`: beyond this a window is a
/// queue in disguise.
pub const MAX_WINDOW: u32 = 100_000;

/// Shortest `ackWait`: keep-alives go out every third of it, and a bus
/// round trip must fit well inside that.
pub const MIN_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `ackWait` when not configured (JetStream's default).
pub const DEFAULT_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn window(field: &str, value: &Option<Spanned<u32>>, out: &mut Vec<Problem>) {
    if let Some(v) = value {
        if v.value == 0 || v.value > MAX_WINDOW {
            out.push((v.pos, format!("{field} must be between 1 and {MAX_WINDOW}")));
        }
    }
}

fn priority_in_range(field: &str, value: &Spanned<u32>, out: &mut Vec<Problem>) {
    let lowest = u32::from(spillway_flowctl::LOWEST_PRIORITY);
    if value.value > lowest {
        out.push((
            value.pos,
            format!("{field} must be a priority from 0 (most important) to {lowest}"),
        ));
    }
}

impl Shedding {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        priority_in_range("shedPriorityAbove", &self.shed_priority_above, &mut out);
        out
    }
}

impl Priority {
    /// Out-of-range values and a missing or doubled source; `at` is where
    /// the `priority:` block starts.
    pub fn problems(&self, at: super::yaml::Pos) -> Vec<Problem> {
        let mut out = Vec::new();
        match (&self.header, &self.path) {
            (Some(_), Some(path)) => out.push((
                path.pos,
                "priority takes one of `header` or `path`, not both".to_string(),
            )),
            (None, None) => out.push((
                at,
                "priority needs `header` (a header name) or `path` (a JSON path into the event)"
                    .to_string(),
            )),
            _ => {}
        }
        if let Some(header) = &self.header {
            if axum::http::HeaderName::try_from(header.value.as_str()).is_err() {
                out.push((
                    header.pos,
                    format!("{:?} is not a valid HTTP header name", header.value),
                ));
            }
        }
        if let Some(path) = &self.path {
            if let Err(err) = crate::json_path::Path::parse(&path.value) {
                out.push((
                    path.pos,
                    format!(
                        "priority path {:?} is not a usable gjson path: {err}",
                        path.value
                    ),
                ));
            }
        }
        if let Some(default) = &self.default {
            priority_in_range("priority.default", default, &mut out);
        }
        out
    }
}

impl SensorFlowControl {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        at_least_one("burst", &self.burst, &mut out);
        if let Some(shedding) = &self.shedding {
            out.extend(shedding.value.problems());
        }
        if let Some(priority) = &self.priority {
            out.extend(priority.value.problems(priority.pos));
        }
        if let Some(evaluation) = &self.evaluation {
            out.extend(evaluation.value.problems());
        }
        out
    }

    /// The sensor's evaluation pool settings (defaults when not configured).
    pub fn evaluation_settings(
        flow: Option<&SensorFlowControl>,
    ) -> crate::sensor::evaluation::EvaluationSettings {
        flow.and_then(|f| f.evaluation.as_ref())
            .map(|e| e.value.to_settings())
            .unwrap_or_default()
    }
}

impl TriggerFlowControl {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        at_least_one("burst", &self.burst, &mut out);
        window("maxInFlight", &self.max_in_flight, &mut out);
        window("maxPending", &self.max_pending, &mut out);
        if let Some(scale) = &self.autoscale {
            if let Err(err) = scale.value.to_flowctl().validate() {
                out.push((scale.pos, format!("autoscale: {err}")));
            }
            if let Some(max) = scale.value.max.as_ref().filter(|m| m.value > MAX_WINDOW) {
                out.push((
                    max.pos,
                    format!("autoscale max must be at most {MAX_WINDOW} (each worker is one invocation in flight)"),
                ));
            }
            if let Some(poll) = &scale.value.polling_interval {
                if poll.value.0.is_zero() {
                    out.push((poll.pos, "pollingInterval must be longer than 0s".into()));
                }
            }
        }
        if let Some(ack_wait) = &self.ack_wait {
            if ack_wait.value.0 < MIN_ACK_WAIT {
                out.push((
                    ack_wait.pos,
                    format!(
                        "ackWait must be at least {}s (events are kept alive every ackWait/3)",
                        MIN_ACK_WAIT.as_secs()
                    ),
                ));
            }
        }
        if let Some(slow) = &self.slow_start {
            if let Err(err) = slow.value.to_flowctl().validate() {
                out.push((slow.pos, format!("slowStart: {err}")));
            }
        }
        if let Some(correlation) = &self.correlation {
            out.extend(correlation.value.problems());
        }
        out
    }
}

impl BurstRateLimit {
    /// Out-of-range values.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = requests_per_unit_problem(&self.requests_per_unit)
            .into_iter()
            .collect();
        at_least_one("burst", &self.burst, &mut out);
        out
    }
}
