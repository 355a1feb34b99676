//! Where an event's priority comes from, and what an unreadable value means.
//!
//! Priorities are `0..=9` and 0 is the most important (flowctl's
//! convention). The value policy is the same at a webhook and at a sensor:
//! - a whole number `0..=9` (a JSON number, or text of digits with
//!   surrounding whitespace ignored) is the priority;
//! - a larger whole number counts as 9, the lowest: a bad value can make an
//!   event more likely to be shed or served later, never less;
//! - a missing value counts as the configured default (5 unless set),
//!   silently: producers that do not care send none;
//! - a present but unreadable value (negative, fractional, not a number,
//!   an object) also counts as the default, and [`Resolved::unreadable`]
//!   says so, so the caller can log it (throttled).
//!
//! A webhook stamps the priority it resolved on the bus message as the
//! [`PRIORITY_HEADER`] header, so a sensor without a `priority` block of its
//! own reads it without parsing the event data again.

use crate::config::flow_control::Priority;
use serde_json::Value;

/// Bus message header carrying the priority a source resolved.
pub const PRIORITY_HEADER: &str = "spillway-priority";

/// Priority of events without a readable value, unless configured.
pub const DEFAULT_PRIORITY: u8 = 5;

/// A priority number as flowctl takes it: anything past the lowest priority
/// counts as the lowest, so an out-of-range value can never buy precedence.
pub fn priority_from(number: u64) -> u8 {
    spillway_flowctl::clamp_priority(u8::try_from(number).unwrap_or(u8::MAX))
}

/// The priority written as text (a header value), if it is a whole number.
pub fn read_text(text: &str) -> Option<u8> {
    text.trim().parse::<u64>().ok().map(priority_from)
}

/// The priority held by a JSON value: a whole number, or a string of one.
pub fn read_json(value: &Value) -> Option<u8> {
    match value {
        Value::Number(number) => number.as_u64().map(priority_from),
        Value::String(text) => read_text(text),
        _ => None,
    }
}

/// Where the priority is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityFrom {
    /// A header: the HTTP request's at a webhook; at a sensor the bus
    /// message's, else the request header a webhook event carries in its
    /// data (`header.<Name>`); matched ASCII case-insensitively.
    Header(String),
    /// A gjson path into the event data (`body.priority`), resolved as
    /// Argo data filters resolve theirs ([`crate::json_path::get`]).
    Path(String),
}

/// A configured priority source with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrioritySource {
    pub from: PriorityFrom,
    pub default: u8,
}

/// One event's priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub priority: u8,
    /// The value that was present but unreadable (the priority is then the
    /// default).
    pub unreadable: Option<String>,
}

impl PrioritySource {
    /// The source a validated `priority:` block describes (`header` wins
    /// should both be set; validation refuses that).
    pub fn from_config(config: &Priority) -> Option<PrioritySource> {
        let from = match (&config.header, &config.path) {
            (Some(header), _) => PriorityFrom::Header(header.value.clone()),
            (None, Some(path)) => PriorityFrom::Path(path.value.clone()),
            (None, None) => return None,
        };
        let default = config
            .default
            .as_ref()
            .map_or(DEFAULT_PRIORITY, |d| priority_from(u64::from(d.value)));
        Some(PrioritySource { from, default })
    }

    /// Whether the priority is in the event data (so the body must be read
    /// and parsed before it is known).
    pub fn reads_data(&self) -> bool {
        matches!(self.from, PriorityFrom::Path(_))
    }

    /// The priority from a header value (`None`: no such header).
    pub fn in_text(&self, text: Option<&str>) -> Resolved {
        self.resolve(text, read_text, str::to_string)
    }

    /// The priority at this source's path in `data` (the default for a
    /// header source, whose value is not in the data).
    pub fn in_data(&self, data: &Value) -> Resolved {
        let value = match &self.from {
            PriorityFrom::Path(path) => crate::json_path::get(data, path),
            PriorityFrom::Header(_) => None,
        };
        self.resolve(value.as_deref(), read_json, Value::to_string)
    }

    fn resolve<T: ?Sized>(
        &self,
        value: Option<&T>,
        read: impl Fn(&T) -> Option<u8>,
        show: impl Fn(&T) -> String,
    ) -> Resolved {
        match value {
            None => Resolved {
                priority: self.default,
                unreadable: None,
            },
            Some(value) => match read(value) {
                Some(priority) => Resolved {
                    priority,
                    unreadable: None,
                },
                None => Resolved {
                    priority: self.default,
                    unreadable: Some(show(value)),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(default: u8) -> PrioritySource {
        PrioritySource {
            from: PriorityFrom::Path("body.priority".into()),
            default,
        }
    }

    #[test]
    fn whole_numbers_are_priorities_and_large_ones_the_lowest() {
        let source = path(5);
        for (data, expected) in [
            (json!({"body": {"priority": 0}}), 0),
            (json!({"body": {"priority": 3}}), 3),
            (json!({"body": {"priority": "2"}}), 2),
            (json!({"body": {"priority": " 7 "}}), 7),
            (json!({"body": {"priority": 12}}), 9),
            (json!({"body": {"priority": 70000}}), 9),
        ] {
            let resolved = source.in_data(&data);
            assert_eq!(resolved.priority, expected, "{data}");
            assert_eq!(resolved.unreadable, None, "{data}");
        }
    }

    #[test]
    fn missing_values_are_the_default_and_unreadable_ones_are_reported() {
        let source = path(4);
        assert_eq!(
            source.in_data(&json!({"body": {}})),
            Resolved {
                priority: 4,
                unreadable: None
            }
        );
        for bad in [json!(-1), json!(1.5), json!("high"), json!({"p": 1})] {
            let resolved = source.in_data(&json!({"body": {"priority": bad.clone()}}));
            assert_eq!(resolved.priority, 4, "{bad}");
            assert_eq!(resolved.unreadable, Some(bad.to_string()));
        }
    }

    #[test]
    fn header_values_follow_the_same_policy() {
        let source = PrioritySource {
            from: PriorityFrom::Header("X-Priority".into()),
            default: 5,
        };
        assert_eq!(source.in_text(Some("1")).priority, 1);
        assert_eq!(source.in_text(Some("250")).priority, 9);
        assert_eq!(source.in_text(None).priority, 5);
        let junk = source.in_text(Some("junk"));
        assert_eq!(junk.priority, 5);
        assert_eq!(junk.unreadable.as_deref(), Some("junk"));
        // A header source finds nothing in the data.
        assert_eq!(source.in_data(&json!({"priority": 0})).priority, 5);
    }
}
