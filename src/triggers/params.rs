//! Argo trigger parameters: take values from an event, place them in a
//! JSON document (`src.dataKey` / `src.contextKey` / `src.value` → `dest`).

use crate::config::sensor::TriggerParameter;
use crate::event::Event;
use crate::json_path;
use serde_json::Value;

/// The value a parameter takes from `event`, or `None` when neither the key
/// nor a default `value` yields one.
pub fn resolve(parameter: &TriggerParameter, event: &Event, data: &Value) -> Option<Value> {
    let src = &parameter.src.value;
    let found = if let Some(key) = &src.data_key {
        json_path::get(data, &key.value).cloned()
    } else if let Some(key) = &src.context_key {
        let context = serde_json::to_value(&event.context).unwrap_or(Value::Null);
        json_path::get(&context, &key.value).cloned()
    } else {
        None
    };
    found.or_else(|| src.value.as_ref().map(|v| Value::String(v.clone())))
}

/// Builds a JSON object from `parameters` for the event that satisfied
/// `dependency` (parameters of other dependencies are skipped).
pub fn build_payload(parameters: &[TriggerParameter], dependency: &str, event: &Event) -> Value {
    build_payload_matched(parameters, &[(dependency, event)])
}

/// Builds a JSON object from `parameters` for the events of one trigger
/// run ([`super::Matched`]): each parameter reads the event of its
/// `src.dependencyName`. A parameter whose dependency has no event in the
/// run takes its `src.value` default, or is skipped without one (as Argo
/// falls back to `value`).
pub fn build_payload_matched(parameters: &[TriggerParameter], matched: &super::Matched) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    apply_matched(parameters, matched, &mut out);
    out
}

/// Applies `parameters` to `target` for the events of one trigger run (see
/// [`build_payload_matched`] for which event a parameter reads).
pub fn apply_matched(
    parameters: &[TriggerParameter],
    matched: &super::Matched,
    target: &mut Value,
) {
    // Each event's data is parsed once, however many parameters read it.
    let data: Vec<Value> = matched.iter().map(|(_, event)| event.data_json()).collect();
    for parameter in parameters {
        let src = &parameter.src.value;
        let found = matched
            .iter()
            .zip(&data)
            .find(|((dependency, _), _)| *dependency == src.dependency_name.value);
        let value = match found {
            Some(((_, event), data)) => resolve(parameter, event, data),
            None => src.value.as_ref().map(|v| Value::String(v.clone())),
        };
        if let Some(value) = value {
            json_path::set(target, &parameter.dest.value, value);
        }
    }
}
