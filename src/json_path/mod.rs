//! Paths into JSON event data, in gjson syntax (what Argo Events evaluates
//! for data filter `path`, `exprs` `fields[].path` and parameter
//! `dataKey`/`contextKey`), and sjson-style `dest` paths for writing.
//!
//! Reading ([`Path`], [`get`]) supports:
//! - keys and array indexes separated by `.`: `body.items.0.sku`;
//! - `\` escapes for keys holding special characters: `metadata\.name`;
//! - `*` / `?` wildcards in keys: `child*`, `c?ildren` (the first key that
//!   matches; object keys are visited in sorted order here, not in the order
//!   the producer wrote them);
//! - `#` (array length), `#.key` (that key of every element, as an array);
//! - queries `#(key==value)` (first match) and `#(key>n)#` (all matches), with
//!   `== != < <= > >= % !%`, `~true`/`~false`/`~null`/`~*`, nested paths and
//!   queries on the left;
//! - `|` (apply the rest to the result, not to each element);
//! - multipaths `[a,b]` and `{a,"name":b}`;
//! - modifiers `@this`, `@reverse`, `@keys`, `@values`, `@flatten`
//!   (`:{"deep":true}`), `@join`, `@tostr`, `@fromstr`, and `@valid` and
//!   `@ugly` (no-ops on parsed data).
//!
//! What it does not support is refused when the path is parsed
//! ([`Path::parse`], at config load) with the character where it starts:
//! JSON literals (`!true`), JSON lines (`..`), `@pretty`, `@dig`, `@group`.
//!
//! A plain key/index path borrows from the data (no copy, no allocation);
//! constructs that build a value (`#`, multipaths, modifiers) return an
//! owned one. [`gjson`] converts a found value to the string, number or
//! bool Argo compares.

mod eval;
pub mod gjson;
mod parse;
mod wildcard;

use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// A gjson path, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    steps: Vec<parse::Step>,
}

/// Why a path cannot be used; `offset` is the byte where the problem starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {} of the path)", .offset + 1)]
pub struct PathError {
    pub offset: usize,
    pub message: String,
}

impl PathError {
    fn new(offset: usize, message: impl Into<String>) -> Self {
        PathError {
            offset,
            message: message.into(),
        }
    }

    /// The same error for a path embedded at `by` in a longer one.
    fn shifted(self, by: usize) -> Self {
        PathError {
            offset: self.offset + by,
            ..self
        }
    }
}

impl Path {
    /// Parses `text`; what is not supported is an error, never a path that
    /// silently finds nothing.
    pub fn parse(text: &str) -> Result<Path, PathError> {
        Ok(Path {
            text: text.to_string(),
            steps: parse::parse(text)?,
        })
    }

    /// The value at this path in `value`, if there is one.
    pub fn get<'v>(&self, value: &'v Value) -> Option<Cow<'v, Value>> {
        eval::eval(&self.steps, value)
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Bytes that make a path more than dotted keys (a table: one load per
/// byte keeps the check for plain paths cheap).
const SPECIAL: [bool; 256] = {
    let mut table = [false; 256];
    let bytes = b"\\*?#@|[{!(";
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

/// The value at gjson `path` in `value`; `None` when it is missing or the
/// path is not valid (paths from config are checked at load with
/// [`Path::parse`]). Prefer a parsed [`Path`] on a hot path.
pub fn get<'v>(value: &'v Value, path: &str) -> Option<Cow<'v, Value>> {
    if path.is_empty() || path.bytes().any(|b| SPECIAL[usize::from(b)]) {
        return Path::parse(path).ok()?.get(value);
    }
    // Plain keys and indexes: walk without parsing into steps.
    let mut current = value;
    for segment in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) if segment.bytes().all(|b| b.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)?
            }
            _ => return None,
        };
    }
    Some(Cow::Borrowed(current))
}

/// Puts `new` at sjson `path` (the `dest` of a parameter), creating objects
/// on the way and replacing non-object values that are in the way. A
/// numeric segment indexes an existing array element
/// (`spec.arguments.parameters.0.value`); `\\` escapes a `.` that is part
/// of a key (`metadata.labels.app\\.kubernetes\\.io/name`).
pub fn set(value: &mut Value, path: &str, new: Value) {
    let segments = split_dest(path);
    let mut current = value;
    let mut segments = segments.into_iter().peekable();
    while let Some(segment) = segments.next() {
        let index = (!segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()))
            .then(|| segment.parse::<usize>().ok())
            .flatten();
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
            map.insert(segment, new);
            return;
        }
        current = map
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// A `dest` path's keys: split at each `.` not escaped by `\\`, escapes
/// removed.
fn split_dest(path: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut segment = String::new();
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => segment.extend(chars.next()),
            '.' => segments.push(std::mem::take(&mut segment)),
            other => segment.push(other),
        }
    }
    segments.push(segment);
    segments
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
mod tests;
