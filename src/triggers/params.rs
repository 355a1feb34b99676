//! Argo trigger parameters: take values from an event, place them in a
//! JSON document (`src.dataKey` / `src.contextKey` / `src.value` → `dest`).

use crate::config::sensor::{TriggerParameter, TriggerParameterSource};
use crate::event::Event;
use crate::json_path;
use serde_json::Value;

/// The value a parameter takes from `event`, or `None` when neither the key
/// nor a default `value` yields one.
pub fn resolve(parameter: &TriggerParameter, event: &Event, data: &Value) -> Option<Value> {
    resolve_source(&parameter.src.value, event, data)
}

/// The value `src` takes from `event` (whose data is `data`), or `None`
/// when neither the key nor a default `value` yields one.
pub fn resolve_source(src: &TriggerParameterSource, event: &Event, data: &Value) -> Option<Value> {
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
    let data = event.data_json();
    let mut out = Value::Object(serde_json::Map::new());
    for parameter in parameters {
        if parameter.src.value.dependency_name.value != dependency {
            continue;
        }
        if let Some(value) = resolve(parameter, event, &data) {
            json_path::set(&mut out, &parameter.dest.value, value);
        }
    }
    out
}
