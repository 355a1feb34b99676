//! How bus subjects, consumer names and headers map onto NATS.
//!
//! - **Subjects.** The bus publishes `<source>.<event>`. On NATS every bus
//!   subject `S` becomes `spillway.<stream>.S`, and the stream captures
//!   `spillway.<stream>.P` for each configured pattern `P` (default `>`,
//!   everything). The prefix is stripped again on delivery, so callers never
//!   see it. It keeps spillway's subjects apart from other streams on the
//!   same server (Argo Events' own stream captures `default.*.*`) and lets
//!   several spillway streams share one server.
//! - **Consumer names.** A durable name may not contain `.`, `*`, `>`,
//!   whitespace or path separators. Valid names are used as they are; any
//!   other name is sanitised and suffixed with a hash of the original, so two
//!   different bus names never share a durable.
//! - **Headers.** NATS headers are a multimap without order: on delivery the
//!   headers come back sorted by name (values of one name keep their order).

use crate::Headers;

/// Prefix of every NATS subject this bus uses: `spillway.<stream>.`.
#[derive(Debug, Clone)]
pub(crate) struct SubjectSpace {
    prefix: String,
    /// Bus-level patterns the stream captures (NATS wildcards allowed).
    patterns: Vec<String>,
}

impl SubjectSpace {
    pub(crate) fn new(stream: &str, patterns: Vec<String>) -> SubjectSpace {
        let patterns = if patterns.is_empty() {
            vec![">".to_string()]
        } else {
            patterns
        };
        SubjectSpace {
            prefix: format!("spillway.{stream}."),
            patterns,
        }
    }

    /// The NATS subjects the stream captures.
    pub(crate) fn stream_subjects(&self) -> Vec<String> {
        self.patterns.iter().map(|p| self.to_nats(p)).collect()
    }

    pub(crate) fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// `subject` on the wire.
    pub(crate) fn to_nats(&self, subject: &str) -> String {
        format!("{}{subject}", self.prefix)
    }

    /// The bus subject of a NATS subject (the prefix removed).
    pub(crate) fn strip<'a>(&self, subject: &'a str) -> &'a str {
        subject.strip_prefix(&self.prefix).unwrap_or(subject)
    }

    /// Whether the stream captures bus subject `subject`.
    pub(crate) fn captures(&self, subject: &str) -> bool {
        self.patterns.iter().any(|p| subject_matches(p, subject))
    }
}

/// Why `subject` cannot be published on NATS, if it cannot.
pub(crate) fn invalid_publish_subject(subject: &str) -> Option<&'static str> {
    if subject.is_empty() {
        return Some("empty subject");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("subject contains whitespace or control characters");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Some("subject has an empty token (`..`, or a leading or trailing `.`)");
        }
        if token == "*" || token == ">" {
            return Some("subject contains a wildcard (`*` or `>`)");
        }
    }
    None
}

/// NATS subject matching: `*` matches one token, a final `>` one or more.
pub(crate) fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether NATS accepts `name` as a stream or durable consumer name.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| !(c.is_whitespace() || c.is_control() || ".*>/\\".contains(c)))
}

/// A durable consumer name for bus consumer name `name`: `name` itself when
/// NATS accepts it, otherwise a sanitised form plus a hash of `name`.
pub(crate) fn durable_name(name: &str) -> String {
    if is_valid_name(name) {
        return name.to_string();
    }
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}-{:08x}", fnv1a(name) as u32)
}

/// FNV-1a, 64 bit: stable across builds and platforms (unlike `DefaultHasher`).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Why `headers` cannot travel as NATS headers, if they cannot.
pub(crate) fn invalid_headers(headers: &Headers) -> Option<String> {
    for (name, value) in headers {
        if name.is_empty()
            || name
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control())
        {
            return Some(format!("header name {name:?} cannot be carried by NATS"));
        }
        if value.contains(['\r', '\n']) {
            return Some(format!("value of header {name:?} contains a line break"));
        }
    }
    None
}

/// Bytes of the NATS header block for `headers` (0 when there are none):
/// `NATS/1.0\r\n`, one `name: value\r\n` per header, and a final `\r\n`.
pub(crate) fn header_block_len(headers: &Headers) -> usize {
    if headers.is_empty() {
        return 0;
    }
    10 + headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>()
        + 2
}

pub(crate) fn to_header_map(headers: &Headers) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.append(name.as_str(), value.as_str());
    }
    map
}

/// Headers of a delivered message, sorted by name.
pub(crate) fn from_header_map(map: Option<&async_nats::HeaderMap>) -> Headers {
    let Some(map) = map else {
        return Headers::new();
    };
    let mut out: Headers = map
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_string()))
        })
        .collect();
    // Stable: values of one name keep their order.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_space_maps_both_ways() {
        let space = SubjectSpace::new("events", Vec::new());
        assert_eq!(space.stream_subjects(), vec!["spillway.events.>"]);
        assert_eq!(
            space.to_nats("webhook.orders"),
            "spillway.events.webhook.orders"
        );
        assert_eq!(
            space.strip("spillway.events.webhook.orders"),
            "webhook.orders"
        );
        assert!(space.captures("a.b.c"));
        let space = SubjectSpace::new("events", vec!["webhook.*".into()]);
        assert!(space.captures("webhook.orders"));
        assert!(!space.captures("calendar.tick"));
        assert!(!space.captures("webhook.orders.eu"));
    }

    #[test]
    fn matching_follows_nats() {
        assert!(subject_matches(">", "a"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*", "a.b.c"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.bc"));
    }

    #[test]
    fn publish_subjects_are_checked() {
        assert_eq!(invalid_publish_subject("webhook.orders"), None);
        assert!(invalid_publish_subject("").is_some());
        assert!(invalid_publish_subject("a..b").is_some());
        assert!(invalid_publish_subject("a.b.").is_some());
        assert!(invalid_publish_subject("a.*").is_some());
        assert!(invalid_publish_subject("a b").is_some());
    }

    #[test]
    fn durable_names_are_valid_and_distinct() {
        assert_eq!(durable_name("sensor-trigger"), "sensor-trigger");
        let a = durable_name("my.sensor-t");
        let b = durable_name("my_sensor-t");
        assert!(is_valid_name(&a), "{a}");
        assert!(a.starts_with("my_sensor-t-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, durable_name("my.sensor-t"));
        assert!(is_valid_name(&durable_name("a b/c>")));
    }

    #[test]
    fn headers_roundtrip_sorted() {
        let headers: Headers = vec![
            ("z".into(), "1".into()),
            ("a".into(), "2".into()),
            ("z".into(), "3".into()),
        ];
        assert_eq!(invalid_headers(&headers), None);
        let back = from_header_map(Some(&to_header_map(&headers)));
        assert_eq!(
            back,
            vec![
                ("a".to_string(), "2".to_string()),
                ("z".to_string(), "1".to_string()),
                ("z".to_string(), "3".to_string()),
            ]
        );
        assert!(invalid_headers(&vec![("a:b".into(), "v".into())]).is_some());
        assert!(invalid_headers(&vec![("a".into(), "v\r\n".into())]).is_some());
        assert_eq!(header_block_len(&Vec::new()), 0);
        assert_eq!(
            header_block_len(&vec![("ce-id".into(), "1".into())]),
            "NATS/1.0\r\nce-id: 1\r\n\r\n".len()
        );
    }
}
