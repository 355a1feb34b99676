//! Argo `time` filters: does the event's time of day fall in
//! `[start, stop)`?
//!
//! The time is the event's own `context.time` (set by the source when it
//! received the event), never the clock at evaluation: a redelivered or
//! replayed event is judged by when it happened, and tests are exact. `start`
//! and `stop` are `hh:mm:ss` (or `hh:mm`) in `timezone` (IANA name; Argo has
//! no such field and uses UTC, so UTC is the default). A `stop` before
//! `start` wraps midnight (`22:00:00`–`01:00:00` is 22:00 to 01:00 the next
//! day); `start == stop` lets everything through, as in Argo. An event time
//! that is not RFC 3339 is an error.

use super::FilterError;
use crate::config::flow_control::Problem;
use crate::config::sensor::TimeFilter as TimeConfig;
use chrono::{DateTime, NaiveTime};
use chrono_tz::Tz;

/// A dependency's `time` filter, parsed.
#[derive(Debug)]
pub struct TimeFilter {
    start: NaiveTime,
    stop: NaiveTime,
    timezone: Tz,
}

fn parse_time_of_day(text: &str) -> Option<NaiveTime> {
    let text = text.trim();
    NaiveTime::parse_from_str(text, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M"))
        .ok()
}

impl TimeFilter {
    pub fn compile(config: &TimeConfig) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut time = |field: &crate::config::Spanned<String>, name: &str| {
            let parsed = parse_time_of_day(&field.value);
            if parsed.is_none() {
                problems.push((
                    field.pos,
                    format!(
                        "time filter {name} {:?} is not a time of day (hh:mm:ss)",
                        field.value
                    ),
                ));
            }
            parsed
        };
        let start = time(&config.start, "start");
        let stop = time(&config.stop, "stop");
        let timezone = match &config.timezone {
            None => Some(Tz::UTC),
            Some(tz) => match tz.value.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    problems.push((
                        tz.pos,
                        format!(
                            "unknown timezone {:?} (use an IANA name such as Europe/Paris)",
                            tz.value
                        ),
                    ));
                    None
                }
            },
        };
        match (start, stop, timezone) {
            (Some(start), Some(stop), Some(timezone)) if problems.is_empty() => Ok(TimeFilter {
                start,
                stop,
                timezone,
            }),
            _ => Err(problems),
        }
    }

    /// Whether the event time `rfc3339` (its `context.time`) is in the window.
    pub fn evaluate(&self, rfc3339: &str) -> Result<bool, FilterError> {
        let time = DateTime::parse_from_rfc3339(rfc3339)
            .map_err(|_| FilterError::EventTime(rfc3339.to_string()))?
            .with_timezone(&self.timezone)
            .time();
        Ok(if self.start < self.stop {
            self.start <= time && time < self.stop
        } else {
            self.start <= time || time < self.stop
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::yaml::Pos;
    use crate::config::Spanned;

    fn filter(start: &str, stop: &str, tz: Option<&str>) -> Result<TimeFilter, Vec<Problem>> {
        let s = |v: &str| Spanned::new(v.to_string(), Pos::default());
        TimeFilter::compile(&TimeConfig {
            start: s(start),
            stop: s(stop),
            timezone: tz.map(s),
        })
    }

    #[test]
    fn table() {
        // (start, stop, timezone, event time, expected: Some(pass) / None = error)
        let cases = [
            (
                "09:00:00",
                "17:00:00",
                None,
                "2024-03-01T09:00:00.000Z",
                Some(true),
            ),
            (
                "09:00:00",
                "17:00:00",
                None,
                "2024-03-01T08:59:59.999Z",
                Some(false),
            ),
            (
                "09:00:00",
                "17:00:00",
                None,
                "2024-03-01T17:00:00.000Z",
                Some(false),
            ),
            (
                "09:00:00",
                "17:00:00",
                None,
                "2024-03-01T16:59:59Z",
                Some(true),
            ),
            // Wraps midnight.
            (
                "22:00:00",
                "01:00:00",
                None,
                "2024-03-01T23:30:00Z",
                Some(true),
            ),
            (
                "22:00:00",
                "01:00:00",
                None,
                "2024-03-01T00:30:00Z",
                Some(true),
            ),
            (
                "22:00:00",
                "01:00:00",
                None,
                "2024-03-01T01:00:00Z",
                Some(false),
            ),
            (
                "22:00:00",
                "01:00:00",
                None,
                "2024-03-01T12:00:00Z",
                Some(false),
            ),
            // 08:30 UTC is 09:30 in Paris (winter, UTC+1), 17:30 in Tokyo.
            (
                "09:00",
                "17:00",
                Some("Europe/Paris"),
                "2024-01-15T08:30:00Z",
                Some(true),
            ),
            (
                "09:00",
                "17:00",
                Some("Asia/Tokyo"),
                "2024-01-15T08:30:00Z",
                Some(false),
            ),
            // An offset in the event time is honoured: 10:30+02:00 is 08:30 UTC.
            (
                "09:00",
                "17:00",
                None,
                "2024-01-15T10:30:00+02:00",
                Some(false),
            ),
            (
                "08:00",
                "09:00",
                None,
                "2024-01-15T10:30:00+02:00",
                Some(true),
            ),
            ("10:00", "10:00", None, "2024-01-15T03:00:00Z", Some(true)),
            ("09:00", "17:00", None, "yesterday", None),
            ("09:00", "17:00", None, "", None),
        ];
        for (i, (start, stop, tz, at, expected)) in cases.iter().enumerate() {
            let f = filter(start, stop, *tz).expect("compiles");
            assert_eq!(
                f.evaluate(at).ok(),
                *expected,
                "case {i}: {start}-{stop} {tz:?} at {at}"
            );
        }
    }

    #[test]
    fn bad_config_is_a_problem() {
        assert_eq!(
            filter("9am", "17:00:00", None).err().map(|p| p.len()),
            Some(1)
        );
        assert_eq!(
            filter("09:00", "25:00", Some("Mars/Olympus"))
                .err()
                .map(|p| p.len()),
            Some(2)
        );
    }
}
