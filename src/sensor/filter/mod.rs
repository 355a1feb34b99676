//! A dependency's `transform` and `filters`: which events run the trigger,
//! and with what data.
//!
//! Per event, in Argo's order: the `transform` (jq or Lua, see
//! [`crate::sensor::transform`]) rewrites the data, then the filters decide.
//! Filter kinds: [`context`] (CloudEvents attributes), [`time`] (time of day
//! of the event), [`data`] (path/type/value), [`expr`] (`exprs`
//! expressions), [`script`] (Lua). They combine with
//! `filtersLogicalOperator` (`and` by default): under `and` the cheap kinds
//! run first and the first failure decides; under `or` the event passes when
//! any present kind passes.
//!
//! Guarantees:
//! - everything (regexes, expressions, Lua, jq, timezones) is compiled once
//!   at start-up by [`DependencyFilter::compile`]; what does not compile is a
//!   config error with its position, reported by `spillway validate`;
//! - the Lua script and the transform (jq or Lua) run on the sensor's
//!   evaluation pool ([`crate::sensor::evaluation`]) within its deadline;
//!   the other kinds run inline on the caller's task (they are bounded by
//!   the size of the event);
//! - a transform or filter that fails on an event (data not JSON, a missing
//!   path, a Lua error or limit, a jq error, the evaluation's deadline, a
//!   full evaluation queue) is a
//!   [`FilterError`]: that event is rejected — acked without running the
//!   trigger and counted `reason="error"` in
//!   `spillway_sensor_events_filtered_total` — never the sensor. Under `or`
//!   an error only counts when no kind passed (Argo rejects the event as
//!   soon as any kind errs);
//! - empty event data passes the data, expression and script filters and is
//!   not transformed, as in Argo.

pub mod context;
pub mod data;
pub mod expr;
pub mod script;
pub mod time;

use crate::config::flow_control::Problem;
use crate::config::sensor::{Dependency, LogicalOperator};
use crate::event::Event;
use crate::sensor::evaluation::{EvaluationError, EvaluationPool};
use crate::sensor::transform::Transform;
use crate::telemetry::LogThrottle;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// At most one warning per this interval per dependency about events its
/// filters or transform could not evaluate.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a transform or filter could not be evaluated on one event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    #[error("event data is not JSON: {0}")]
    InvalidJson(String),
    #[error("{filter} filter: path {path:?} does not exist in the event data")]
    MissingPath { filter: &'static str, path: String },
    #[error("time filter: event time {0:?} is not RFC 3339")]
    EventTime(String),
    #[error("expr filter: {0}")]
    Expr(String),
    #[error("{0}")]
    Script(String),
    #[error("{0}")]
    ScriptLimit(String),
    #[error("transform: {0}")]
    Transform(String),
    #[error("data filter template {0}")]
    Template(String),
    /// The evaluation pool gave no result (deadline, full queue, no thread).
    #[error(transparent)]
    Evaluation(#[from] EvaluationError),
}

/// A dependency's transform and filters, compiled.
#[derive(Debug)]
pub struct DependencyFilter {
    /// Runs `transform` and `script`.
    evaluations: EvaluationPool,
    transform: Option<Arc<Transform>>,
    operator: LogicalOperator,
    context: Option<context::ContextFilter>,
    time: Option<time::TimeFilter>,
    data: Option<data::DataFilters>,
    exprs: Option<expr::ExprFilters>,
    script: Option<Arc<script::LuaScript>>,
    /// Throttles the warnings about events that could not be evaluated.
    pub errors_logged: LogThrottle,
    /// Warnings about events put back because the evaluation pool was
    /// full, at most one per interval (apart from the errors': a burst of
    /// either must not hide the other).
    pub busy_logged: LogThrottle,
}

impl DependencyFilter {
    /// Compiles `dependency`'s transform and filters; `None` when it has
    /// neither. Every part that does not compile is a problem. The script
    /// and transform will run on `evaluations`.
    pub fn compile(
        dependency: &Dependency,
        evaluations: &EvaluationPool,
    ) -> Result<Option<Self>, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut keep = |found: Vec<Problem>| problems.extend(found);
        let operator_of = |o: &Option<crate::config::Spanned<LogicalOperator>>| {
            o.as_ref().map_or(LogicalOperator::And, |o| o.value)
        };
        let transform = dependency
            .transform
            .as_ref()
            .and_then(|t| Transform::compile(t).map_err(&mut keep).ok())
            .map(Arc::new);
        let filters = dependency.filters.as_ref();
        let context = filters
            .and_then(|f| f.context.as_ref())
            .map(|c| context::ContextFilter::new(&c.value));
        let time = filters
            .and_then(|f| f.time.as_ref())
            .and_then(|t| time::TimeFilter::compile(&t.value).map_err(&mut keep).ok());
        let data = filters
            .and_then(|f| f.data.as_ref().filter(|d| !d.is_empty()).map(|d| (f, d)))
            .and_then(|(f, d)| {
                data::DataFilters::compile(d, operator_of(&f.data_logical_operator))
                    .map_err(&mut keep)
                    .ok()
            });
        let exprs = filters
            .and_then(|f| f.exprs.as_ref().filter(|e| !e.is_empty()).map(|e| (f, e)))
            .and_then(|(f, e)| {
                expr::ExprFilters::compile(e, operator_of(&f.expr_logical_operator))
                    .map_err(&mut keep)
                    .ok()
            });
        let script = filters
            .and_then(|f| f.script.as_ref())
            .filter(|s| !s.value.trim().is_empty())
            .and_then(|s| {
                script::LuaScript::compile(&s.value, "filter script")
                    .map_err(|m| keep(vec![(s.pos, m)]))
                    .ok()
            })
            .map(Arc::new);
        if !problems.is_empty() {
            return Err(problems);
        }
        let filter = DependencyFilter {
            evaluations: evaluations.clone(),
            transform,
            operator: operator_of(&dependency.filters_logical_operator),
            context,
            time,
            data,
            exprs,
            script,
            errors_logged: LogThrottle::new(ERROR_LOG_INTERVAL),
            busy_logged: LogThrottle::new(ERROR_LOG_INTERVAL),
        };
        let empty = filter.transform.is_none()
            && filter.context.is_none()
            && filter.time.is_none()
            && filter.data.is_none()
            && filter.exprs.is_none()
            && filter.script.is_none();
        Ok((!empty).then_some(filter))
    }

    /// Transforms `event` in place, then whether it passes the filters.
    pub async fn apply(&self, event: &mut Event) -> Result<bool, FilterError> {
        let needs_data = self.transform.is_some()
            || self.data.is_some()
            || self.exprs.is_some()
            || self.script.is_some();
        let mut data = None;
        if needs_data && !event.data.iter().all(u8::is_ascii_whitespace) {
            let parsed: Value = serde_json::from_slice(&event.data)
                .map_err(|e| FilterError::InvalidJson(e.to_string()))?;
            data = Some(parsed);
        }
        if let Some(transform) = &self.transform {
            if let Some(current) = data.take() {
                let transform = Arc::clone(transform);
                let transformed = self
                    .evaluations
                    .evaluate(move |budget| transform.apply(&current, budget))
                    .await?;
                let bytes = serde_json::to_vec(&transformed)
                    .map_err(|e| FilterError::Transform(e.to_string()))?;
                event.data = bytes.into();
                data = Some(transformed);
            }
        }
        // Cheapest first: under `and` the first failure decides, and the
        // kinds after it are not evaluated. The script, last, runs only when
        // the inline kinds left the outcome open.
        let inline = {
            let data = data.as_ref();
            let kinds: [&dyn Fn() -> Option<Result<bool, FilterError>>; 4] = [
                &|| self.context.as_ref().map(|c| Ok(c.matches(&event.context))),
                &|| self.time.as_ref().map(|t| t.evaluate(&event.context.time)),
                &|| {
                    self.data
                        .as_ref()
                        .map(|d| data.map_or(Ok(true), |v| d.evaluate(v)))
                },
                &|| {
                    self.exprs
                        .as_ref()
                        .map(|e| data.map_or(Ok(true), |v| e.evaluate(v)))
                },
            ];
            combine(self.operator, kinds.into_iter().filter_map(|kind| kind()))
        };
        let decided = matches!(
            (self.operator, &inline),
            (LogicalOperator::And, Some(Ok(false) | Err(_)))
                | (LogicalOperator::Or, Some(Ok(true)))
        );
        let script = match (&self.script, decided) {
            (Some(script), false) => Some(match data {
                // Empty data passes the script, as in Argo.
                None => Ok(true),
                Some(data) => {
                    let script = Arc::clone(script);
                    self.evaluations
                        .evaluate(move |budget| script.evaluate_bool(&data, budget))
                        .await
                }
            }),
            _ => None,
        };
        // `inline` stands for the kinds before the script: combining it with
        // the script's verdict gives what combining them all would.
        // No kind at all (only a transform): nothing to fail.
        combine(self.operator, inline.into_iter().chain(script)).unwrap_or(Ok(true))
    }
}

/// Combines verdicts under `operator`, evaluating them in order and only as
/// far as needed: `and` stops at the first `false` or error; `or` stops at
/// the first `true`, and an error decides under `or` only when nothing
/// passed. `None` when there was no verdict at all. Used by the kinds of a
/// dependency and by the filters inside `data` and `exprs`.
fn combine(
    operator: LogicalOperator,
    verdicts: impl IntoIterator<Item = Result<bool, FilterError>>,
) -> Option<Result<bool, FilterError>> {
    let mut first_error = None;
    let mut any = false;
    for verdict in verdicts {
        any = true;
        match (verdict, operator) {
            (Ok(true), LogicalOperator::Or) => return Some(Ok(true)),
            (Ok(false), LogicalOperator::And) => return Some(Ok(false)),
            (Err(err), LogicalOperator::And) => return Some(Err(err)),
            (Err(err), LogicalOperator::Or) => {
                first_error.get_or_insert(err);
            }
            (Ok(_), _) => {}
        }
    }
    let verdict = match (operator, first_error) {
        (LogicalOperator::And, _) => Ok(true),
        (LogicalOperator::Or, Some(err)) => Err(err),
        (LogicalOperator::Or, None) => Ok(false),
    };
    any.then_some(verdict)
}

#[cfg(test)]
mod tests;
