//! Dotted paths into JSON (`body.order.id`, `items.0.sku`), the subset of
//! gjson syntax Argo users write in `path`, `dataKey` and `dest`.

use serde_json::{Map, Value};

/// The value at `path`, if present. Numeric segments index arrays.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut current = value;
    for segment in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Puts `new` at `path`, creating objects on the way and replacing
/// non-object values that are in the way. A numeric segment indexes an
/// existing array element (`spec.arguments.parameters.0.value`).
pub fn set(value: &mut Value, path: &str, new: Value) {
    let mut current = value;
    let mut segments = path.split('.').peekable();
    while let Some(segment) = segments.next() {
        let index = segment.parse::<usize>().ok();
        if let (Value::Array(items), Some(i)) = (&*current, index) {
            if i < items.len() {
                let Value::Array(items) = current else {
                    return;
                };
                if segments.peek().is_none() {
                    items[i] = new;
                    return;
                }
                current = &mut items[i];
                continue;
            }
        }
        if !current.is_object() {
            *current = Value::Object(Map::new());
        }
        let Value::Object(map) = current else {
            return;
        };
        if segments.peek().is_none() {
            map.insert(segment.to_string(), new);
            return;
        }
        current = map
            .entry(segment.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A JSON value as the plain string Argo compares and substitutes
/// (strings without quotes, everything else as JSON).
pub fn to_plain_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn get_objects_and_arrays() {
        let v = json!({"body": {"items": [{"sku": "a"}, {"sku": "b"}]}});
        assert_eq!(get(&v, "body.items.1.sku"), Some(&json!("b")));
        assert_eq!(get(&v, "body.missing"), None);
        assert_eq!(get(&v, "body.items.x"), None);
    }

    #[test]
    fn set_creates_the_path() {
        let mut v = json!({});
        set(&mut v, "order.id", json!("o-1"));
        set(&mut v, "total", json!(42));
        assert_eq!(v, json!({"order": {"id": "o-1"}, "total": 42}));
    }

    #[test]
    fn set_indexes_existing_arrays() {
        let mut v = json!({"spec": {"arguments": {"parameters": [{"name": "a"}, {"name": "b"}]}}});
        set(&mut v, "spec.arguments.parameters.1.value", json!("x"));
        assert_eq!(
            v,
            json!({"spec": {"arguments": {"parameters": [{"name": "a"}, {"name": "b", "value": "x"}]}}})
        );
        set(&mut v, "spec.arguments.parameters.0", json!("whole"));
        assert_eq!(
            get(&v, "spec.arguments.parameters.0"),
            Some(&json!("whole"))
        );
    }
}
