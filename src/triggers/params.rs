//! Argo trigger parameters: take a value from an event and place it in a
//! JSON document (a Workflow resource, an http payload).
//!
//! A parameter's value, as in Argo's `ResolveParamValue` (params.go):
//! 1. no `dataKey`/`contextKey`/`dataTemplate`/`contextTemplate`: `value`,
//!    else the whole event `{"context": …, "data": …}`;
//! 2. a template (`dataTemplate` over the data, `contextTemplate` over the
//!    context, `.Input` = that JSON) that renders to a non-empty string;
//! 3. else the key (`dataKey` / `contextKey`, dotted gjson-style path);
//! 4. else `value`;
//! 5. else the parameter fails: [`ParamError`], a permanent trigger failure
//!    for that event (Argo fails the trigger too). A dependency whose event
//!    is absent (only possible with dependency conditions) uses `value` or
//!    leaves `dest` alone.
//!
//! Where `data*` and `context*` are both set, the data wins, as in Argo.
//!
//! Differences from Argo, on purpose (docs/parameters.md):
//! - a key's value keeps its JSON type (numbers stay numbers, objects stay
//!   objects); Argo inserts every value as a string (objects as their JSON
//!   text) unless `useRawData: true`, which a receiver expecting a number
//!   trips over;
//! - the whole event is `{"context", "data"}` with data as JSON; Argo
//!   marshals its Go struct, where data is base64.
//!
//! `operation: append|prepend` joins the current text at `dest` with the
//! new value as strings (Argo's behaviour); when `dest` holds nothing yet
//! the new value is set as is.

pub mod template;

use crate::config::sensor::{ParameterOperation, TriggerParameter, TriggerParameterSource};
use crate::event::Event;
use crate::json_path;
use serde_json::Value;

/// Why a parameter has no value for an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("parameter {dest:?} (dependency {dependency:?}): {reason}")]
pub struct ParamError {
    pub dependency: String,
    pub dest: String,
    pub reason: String,
}

/// The value `parameter` takes from `event`, whose data is `data` (the
/// event's data as JSON, parsed once per event by the caller).
pub fn resolve(
    parameter: &TriggerParameter,
    event: &Event,
    data: &Value,
) -> Result<Value, ParamError> {
    let src = &parameter.src.value;
    resolve_source(src, event, data).map_err(|reason| ParamError {
        dependency: src.dependency_name.value.clone(),
        dest: parameter.dest.value.clone(),
        reason,
    })
}

/// The value `src` takes from `event` (steps 1–5 above), or why it has none;
/// for users of a bare `src` without a `dest` (the postgres trigger's
/// statement parameters).
pub fn resolve_source(
    src: &TriggerParameterSource,
    event: &Event,
    data: &Value,
) -> Result<Value, String> {
    let default = || src.value.as_ref().map(|v| Value::String(v.clone()));
    let uses_data = src.data_key.is_some() || src.data_template.is_some();
    let uses_context = src.context_key.is_some() || src.context_template.is_some();
    if !uses_data && !uses_context {
        return Ok(default()
            .unwrap_or_else(|| serde_json::json!({ "context": event.context, "data": data })));
    }
    let context;
    let (input, key, template) = if uses_data {
        (data, &src.data_key, &src.data_template)
    } else {
        context = serde_json::to_value(&event.context).unwrap_or(Value::Null);
        (&context, &src.context_key, &src.context_template)
    };
    let mut why = Vec::new();
    if let Some(template) = template {
        match template.value.render(input) {
            Ok(text) => return Ok(Value::String(text)),
            Err(err) => why.push(err.to_string()),
        }
    }
    if let Some(key) = key {
        match json_path::get(input, &key.value) {
            Some(found) => return Ok(found.into_owned()),
            None => why.push(format!(
                "{} {:?} is not in the event {}",
                if uses_data { "dataKey" } else { "contextKey" },
                key.value,
                if uses_data { "data" } else { "context" }
            )),
        }
    }
    default().ok_or_else(|| format!("{} and no default `value`", why.join("; ")))
}

/// Applies `parameters` to `target`: each parameter takes its value from the
/// event `event_of` finds for its `dependencyName` and puts it at `dest`.
pub fn apply<'e>(
    parameters: &[TriggerParameter],
    event_of: impl Fn(&str) -> Option<&'e Event>,
    target: &mut Value,
) -> Result<(), ParamError> {
    for parameter in parameters {
        let src = &parameter.src.value;
        let value = match event_of(&src.dependency_name.value) {
            Some(event) => resolve(parameter, event, &event.data_json())?,
            None => match &src.value {
                Some(default) => Value::String(default.clone()),
                None => continue,
            },
        };
        place(parameter, value, target);
    }
    Ok(())
}

/// Puts `value` at the parameter's `dest`, honouring its `operation`.
fn place(parameter: &TriggerParameter, value: Value, target: &mut Value) {
    let dest = &parameter.dest.value;
    let operation = parameter
        .operation
        .as_ref()
        .map_or(ParameterOperation::Overwrite, |o| o.value);
    let current = json_path::get(target, dest).filter(|c| !c.is_null());
    let value = match (operation, current) {
        (ParameterOperation::Overwrite, _) | (_, None) => value,
        (ParameterOperation::Append, Some(current)) => Value::String(format!(
            "{}{}",
            json_path::to_plain_string(&current),
            json_path::to_plain_string(&value)
        )),
        (ParameterOperation::Prepend, Some(current)) => Value::String(format!(
            "{}{}",
            json_path::to_plain_string(&value),
            json_path::to_plain_string(&current)
        )),
    };
    json_path::set(target, dest, value);
}

/// Builds a JSON object from `parameters` for the event that satisfied
/// `dependency` (parameters of other dependencies use their `value`, or
/// are skipped).
pub fn build_payload(
    parameters: &[TriggerParameter],
    dependency: &str,
    event: &Event,
) -> Result<Value, ParamError> {
    build_payload_matched(parameters, &[(dependency, event)])
}

/// Builds a JSON object from `parameters` for the events of one trigger
/// run ([`super::Matched`]): each parameter reads the event of its
/// `src.dependencyName`. A parameter whose dependency has no event in the
/// run takes its `src.value` default, or is skipped without one (as Argo
/// falls back to `value`).
pub fn build_payload_matched(
    parameters: &[TriggerParameter],
    matched: &super::Matched,
) -> Result<Value, ParamError> {
    let mut out = Value::Object(serde_json::Map::new());
    apply_matched(parameters, matched, &mut out)?;
    Ok(out)
}

/// Applies `parameters` to `target` for the events of one trigger run (see
/// [`build_payload_matched`] for which event a parameter reads).
pub fn apply_matched(
    parameters: &[TriggerParameter],
    matched: &super::Matched,
    target: &mut Value,
) -> Result<(), ParamError> {
    apply(
        parameters,
        |name| {
            matched
                .iter()
                .find(|(dependency, _)| *dependency == name)
                .map(|(_, event)| *event)
        },
        target,
    )
}

#[cfg(test)]
mod tests;
