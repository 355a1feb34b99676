//! Applies parsed [`Step`]s to a `serde_json::Value`.
//!
//! Plain keys and indexes borrow from the event data (no copy); only what
//! builds a new value (`#`, `#.key`, `#(…)#`, multipaths, modifiers) owns
//! its result.

use super::gjson;
use super::parse::{Modifier, Query, QueryOp, Step, Tilde};
use super::wildcard::Pattern;
use serde_json::{Map, Value};
use std::borrow::Cow;

pub(super) fn eval<'v>(steps: &[Step], value: &'v Value) -> Option<Cow<'v, Value>> {
    // Leading keys and indexes (all of a plain path) borrow: walk them
    // without the `Cow` bookkeeping.
    let mut borrowed = value;
    let mut rest = steps;
    while let Some((Step::Key { name, index }, tail)) = rest.split_first() {
        borrowed = match borrowed {
            Value::Object(map) => map.get(name.as_str())?,
            Value::Array(items) => items.get((*index)?)?,
            _ => return None,
        };
        rest = tail;
    }
    let mut current = Cow::Borrowed(borrowed);
    for step in rest {
        current = apply(step, current)?;
    }
    Some(current)
}

fn apply<'v>(step: &Step, current: Cow<'v, Value>) -> Option<Cow<'v, Value>> {
    match step {
        Step::Key { name, index } => child(current, |value| match value {
            Value::Object(map) => map.get(name.as_str()),
            Value::Array(items) => items.get((*index)?),
            _ => None,
        }),
        Step::Wildcard(pattern) => child(current, |value| match value {
            Value::Object(map) => map
                .iter()
                .find(|(key, _)| pattern.matches(key))
                .map(|(_, v)| v),
            _ => None,
        }),
        Step::Count => match current.as_ref() {
            Value::Array(items) => Some(Cow::Owned(Value::from(items.len()))),
            _ => None,
        },
        Step::Each(rest) => match current.as_ref() {
            Value::Array(items) => Some(Cow::Owned(Value::Array(
                items
                    .iter()
                    .filter_map(|item| eval(rest, item).map(Cow::into_owned))
                    .collect(),
            ))),
            _ => None,
        },
        Step::Query { query, all } => {
            let Value::Array(items) = current.as_ref() else {
                return None;
            };
            if *all {
                let found = items.iter().filter(|item| matches(query, item)).cloned();
                return Some(Cow::Owned(Value::Array(found.collect())));
            }
            let position = items.iter().position(|item| matches(query, item))?;
            child(current, |value| value.as_array()?.get(position))
        }
        Step::Multi { object, items } => {
            let found = items
                .iter()
                .filter_map(|(name, steps)| Some((name, eval(steps, &current)?.into_owned())));
            Some(Cow::Owned(if *object {
                Value::Object(found.map(|(name, v)| (name.clone(), v)).collect())
            } else {
                Value::Array(found.map(|(_, v)| v).collect())
            }))
        }
        Step::Modifier(modifier) => Some(modify(*modifier, current)),
    }
}

/// A part of `current`: borrowed when `current` is, else moved out of it.
fn child<'v>(
    current: Cow<'v, Value>,
    pick: impl for<'a> Fn(&'a Value) -> Option<&'a Value>,
) -> Option<Cow<'v, Value>> {
    match current {
        Cow::Borrowed(value) => pick(value).map(Cow::Borrowed),
        Cow::Owned(value) => pick(&value).cloned().map(Cow::Owned),
    }
}

/// gjson's query rules: strings compare as text, numbers as floats, a
/// bool only against `true`/`false`; null, arrays and objects match no
/// operator (only existence).
fn matches(query: &Query, item: &Value) -> bool {
    let found = if query.lhs.is_empty() {
        Some(Cow::Borrowed(item))
    } else {
        eval(&query.lhs, item)
    };
    let found = match query.tilde {
        Some(tilde) => Some(Cow::Owned(Value::Bool(truthiness(tilde, found.as_deref())))),
        None => found,
    };
    let Some(found) = found else {
        return false;
    };
    let Some(op) = query.op else {
        return true;
    };
    let rhs = query.text.as_str();
    match found.as_ref() {
        Value::String(s) => match op {
            QueryOp::Equal => s == rhs,
            QueryOp::NotEqual => s != rhs,
            QueryOp::Less => s.as_str() < rhs,
            QueryOp::LessEqual => s.as_str() <= rhs,
            QueryOp::Greater => s.as_str() > rhs,
            QueryOp::GreaterEqual => s.as_str() >= rhs,
            QueryOp::Like => Pattern::from_query(rhs).matches(s),
            QueryOp::NotLike => !Pattern::from_query(rhs).matches(s),
        },
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(0.0);
            let rhs = query.number;
            match op {
                QueryOp::Equal => n == rhs,
                QueryOp::NotEqual => n != rhs,
                QueryOp::Less => n < rhs,
                QueryOp::LessEqual => n <= rhs,
                QueryOp::Greater => n > rhs,
                QueryOp::GreaterEqual => n >= rhs,
                QueryOp::Like | QueryOp::NotLike => false,
            }
        }
        Value::Bool(true) => match op {
            QueryOp::Equal => rhs == "true",
            QueryOp::NotEqual => rhs != "true",
            QueryOp::Greater => rhs == "false",
            QueryOp::GreaterEqual => true,
            _ => false,
        },
        Value::Bool(false) => match op {
            QueryOp::Equal => rhs == "false",
            QueryOp::NotEqual => rhs != "false",
            QueryOp::Less => rhs == "true",
            QueryOp::LessEqual => true,
            _ => false,
        },
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// `~true` / `~false` / `~null` / `~*` as gjson decides them (a missing
/// value is null-ish and false-ish).
fn truthiness(tilde: Tilde, value: Option<&Value>) -> bool {
    match tilde {
        Tilde::Exists => value.is_some(),
        Tilde::Null => matches!(value, None | Some(Value::Null)),
        Tilde::True => match value {
            Some(Value::String(s)) => gjson::parse_bool(&s.to_ascii_lowercase()) == Some(true),
            Some(v) => gjson::truthy(v),
            None => false,
        },
        Tilde::False => match value {
            None | Some(Value::Null | Value::Bool(false)) => true,
            Some(Value::String(s)) => gjson::parse_bool(&s.to_ascii_lowercase()) == Some(false),
            Some(Value::Number(n)) => n.as_f64() == Some(0.0),
            Some(_) => false,
        },
    }
}

fn modify<'v>(modifier: Modifier, current: Cow<'v, Value>) -> Cow<'v, Value> {
    match modifier {
        Modifier::This => current,
        Modifier::Reverse => match current.into_owned() {
            Value::Array(mut items) => {
                items.reverse();
                Cow::Owned(Value::Array(items))
            }
            // Object keys have no order of their own here (they are
            // sorted), so reversing an object leaves it as it is.
            other => Cow::Owned(other),
        },
        Modifier::Keys => Cow::Owned(match current.as_ref() {
            Value::Object(map) => Value::Array(map.keys().cloned().map(Value::String).collect()),
            _ => Value::Array(Vec::new()),
        }),
        Modifier::Values => match current.as_ref() {
            Value::Object(map) => Cow::Owned(Value::Array(map.values().cloned().collect())),
            Value::Array(_) => current,
            _ => Cow::Owned(Value::Array(Vec::new())),
        },
        Modifier::Flatten { deep } => match current.into_owned() {
            Value::Array(items) => {
                let mut flat = Vec::new();
                flatten_into(items, deep, &mut flat);
                Cow::Owned(Value::Array(flat))
            }
            other => Cow::Owned(other),
        },
        Modifier::Join => match current.into_owned() {
            Value::Array(items) => {
                let mut joined = Map::new();
                for item in items {
                    if let Value::Object(map) = item {
                        joined.extend(map);
                    }
                }
                Cow::Owned(Value::Object(joined))
            }
            other => Cow::Owned(other),
        },
        Modifier::ToStr => Cow::Owned(Value::String(current.to_string())),
        Modifier::FromStr => match current.as_ref() {
            Value::String(text) => match serde_json::from_str(text) {
                Ok(parsed) => Cow::Owned(parsed),
                Err(_) => Cow::Owned(Value::Null),
            },
            _ => current,
        },
    }
}

fn flatten_into(items: Vec<Value>, deep: bool, out: &mut Vec<Value>) {
    for item in items {
        match item {
            Value::Array(inner) if deep => flatten_into(inner, deep, out),
            Value::Array(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
}
