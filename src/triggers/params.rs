//! Argo trigger parameters: take a value from an event and place it in a
//! JSON document (a Workflow resource, an http trigger's spec, an http
//! payload).
//!
//! A parameter's value, as in Argo's `ResolveParamValue` (params.go):
//! 1. no `dataKey`/`contextKey`/`dataTemplate`/`contextTemplate`: `value`,
//!    else the whole event `{"context": …, "data": …}` as JSON text;
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
//! Types, exactly as Argo places them ([`Found::placed`]): every value is a
//! string (a key's number `42` becomes `"42"`, an object its JSON text),
//! except a key's non-string value under `useRawData: true`, which keeps
//! its JSON type. Templates, `value`, the whole event and append/prepend
//! results are strings either way.
//!
//! `operation: append|prepend` joins the text already at `dest` with the
//! new value's text (Argo's behaviour); when `dest` holds nothing yet the
//! new value is set as is.
//!
//! Differences from Argo, on purpose (docs/parameters.md): the whole event
//! has its data as JSON (Argo marshals a Go struct, where data is base64);
//! an object's text is compact with sorted keys (Argo copies the event's
//! own bytes).

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
/// event's data as JSON, parsed once per event by the caller), typed as
/// Argo places it: a string, unless `useRawData: true` and the value is a
/// key's non-string JSON value.
pub fn resolve(
    parameter: &TriggerParameter,
    event: &Event,
    data: &Value,
) -> Result<Value, ParamError> {
    let src = &parameter.src.value;
    resolve_source(src, event, data)
        .map(|found| found.placed(src.use_raw_data.unwrap_or(false)))
        .map_err(|reason| ParamError {
            dependency: src.dependency_name.value.clone(),
            dest: parameter.dest.value.clone(),
            reason,
        })
}

/// What a parameter source found in an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// From a template, `value`, or the whole event: always a string.
    Text(String),
    /// The JSON value at a `dataKey` / `contextKey`.
    Key(Value),
}

impl Found {
    /// The value Argo puts at `dest`: with `use_raw_data`, a key's JSON
    /// value as is; otherwise (and for text) a string, as gjson prints it:
    /// numbers as written (`42`, `1.5`), booleans as `true`/`false`, null
    /// as `null`, objects and arrays as compact JSON text.
    pub fn placed(self, use_raw_data: bool) -> Value {
        match self {
            Found::Text(text) => Value::String(text),
            Found::Key(value) if use_raw_data => value,
            Found::Key(value) => Value::String(value_text(&value)),
        }
    }

    /// The value with its JSON type (a key's value as is, text as a
    /// string): for users that convert types themselves (the postgres
    /// trigger's text-format parameters).
    pub fn typed(self) -> Value {
        match self {
            Found::Text(text) => Value::String(text),
            Found::Key(value) => value,
        }
    }
}

/// A resolved value as the text Argo holds it in (`ResolveParamValue`'s
/// string): gjson's `Result.String()` ([`json_path::gjson::string`]),
/// except that null is `null`.
fn value_text(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        other => json_path::gjson::string(other).into_owned(),
    }
}

/// What `src` finds in `event` (steps 1–5 above), or why it finds nothing;
/// for users of a bare `src` without a `dest` (the postgres trigger's
/// statement parameters).
pub fn resolve_source(
    src: &TriggerParameterSource,
    event: &Event,
    data: &Value,
) -> Result<Found, String> {
    let default = || src.value.as_ref().map(|v| Found::Text(v.clone()));
    let uses_data = src.data_key.is_some() || src.data_template.is_some();
    let uses_context = src.context_key.is_some() || src.context_template.is_some();
    if !uses_data && !uses_context {
        return Ok(default().unwrap_or_else(|| {
            Found::Text(serde_json::json!({ "context": event.context, "data": data }).to_string())
        }));
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
            Ok(text) => return Ok(Found::Text(text)),
            Err(err) => why.push(err.to_string()),
        }
    }
    if let Some(key) = key {
        match json_path::get(input, &key.value) {
            Some(found) => return Ok(Found::Key(found.into_owned())),
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
                // Argo skips it too (its `resolveParamValue` returns nil).
                None => continue,
            },
        };
        place(parameter, value, target);
    }
    Ok(())
}

/// Puts `value` at the parameter's `dest`, honouring its `operation`:
/// `append`/`prepend` join the text already at `dest` (even `null`, which
/// reads as "") with the value's text into a string, as Argo does.
fn place(parameter: &TriggerParameter, value: Value, target: &mut Value) {
    let dest = &parameter.dest.value;
    let operation = parameter
        .operation
        .as_ref()
        .map_or(ParameterOperation::Overwrite, |o| o.value);
    let current = json_path::get(target, dest);
    let value = match (operation, current) {
        (ParameterOperation::Overwrite, _) | (_, None) => value,
        (ParameterOperation::Append, Some(current)) => Value::String(format!(
            "{}{}",
            json_path::gjson::string(&current),
            value_text(&value)
        )),
        (ParameterOperation::Prepend, Some(current)) => Value::String(format!(
            "{}{}",
            value_text(&value),
            json_path::gjson::string(&current)
        )),
    };
    json_path::set(target, dest, value);
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

/// The body Argo's `ConstructPayload` builds from an http trigger's
/// `payload` parameters for one trigger run: the JSON object of
/// [`build_payload_matched`], except that the first parameter with an
/// empty `dest` that has a value makes its value's text the whole body
/// (Argo's way to forward a key's JSON, or a template's text, as is).
pub fn payload_body(
    parameters: &[TriggerParameter],
    matched: &super::Matched,
) -> Result<String, ParamError> {
    let event_of = |name: &str| {
        matched
            .iter()
            .find(|(dependency, _)| *dependency == name)
            .map(|(_, event)| *event)
    };
    let mut placed = Vec::with_capacity(parameters.len());
    for parameter in parameters {
        if !parameter.dest.value.is_empty() {
            placed.push(parameter.clone());
            continue;
        }
        let src = &parameter.src.value;
        let whole = match event_of(&src.dependency_name.value) {
            Some(event) => Some(resolve(parameter, event, &event.data_json())?),
            None => src.value.clone().map(Value::String),
        };
        if let Some(whole) = whole {
            return Ok(value_text(&whole));
        }
    }
    Ok(build_payload_matched(&placed, matched)?.to_string())
}

/// `parameters` whose `dest` starts with one of `prefixes`, with that
/// prefix removed: trigger-level parameters (Argo `Trigger.parameters`,
/// whose `dest` is a path in the whole trigger template, e.g. `http.url`)
/// made relative to the part of the template a trigger kind reads. `Err`
/// is the first `dest` outside every prefix.
pub fn rebase(
    parameters: &[TriggerParameter],
    prefixes: &[&str],
) -> Result<Vec<TriggerParameter>, String> {
    parameters
        .iter()
        .map(|parameter| {
            let dest = &parameter.dest.value;
            let inner = prefixes.iter().find_map(|prefix| dest.strip_prefix(prefix));
            let Some(inner) = inner else {
                return Err(dest.clone());
            };
            let mut parameter = parameter.clone();
            parameter.dest.value = inner.to_string();
            Ok(parameter)
        })
        .collect()
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
