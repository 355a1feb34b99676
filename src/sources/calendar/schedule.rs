//! When a calendar ticks: a pure function of the config and a time.
//!
//! `schedule` is a five-field cron expression read in `timezone` (default
//! UTC), as Argo's robfig parser reads it (minute hour day-of-month month
//! day-of-week; descriptors such as `@hourly` are accepted too); `interval`
//! ticks every fixed duration from the start. A tick whose local date is
//! one of the `exclusionDates` is skipped, as in Argo.

use crate::config::eventsource::calendar::CalendarEvent;
use crate::config::flow_control::Problem;
use crate::config::yaml::Pos;
use chrono::{DateTime, Days, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use std::time::Duration;

/// What ticks: a cron expression or a fixed interval.
#[derive(Debug, Clone)]
pub enum Rule {
    Cron(Box<Cron>),
    Every(Duration),
}

/// A parsed calendar.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub rule: Rule,
    pub timezone: Tz,
    /// Local dates without ticks.
    pub exclusions: Vec<NaiveDate>,
}

impl Schedule {
    /// Parses `config`; every problem is reported with its position
    /// (`at` is the event's name, for problems of the whole event).
    pub fn from_config(config: &CalendarEvent, at: Pos) -> Result<Schedule, Vec<Problem>> {
        let mut problems = Vec::new();
        let rule = match (&config.schedule, &config.interval) {
            (Some(_), Some(interval)) => {
                problems.push((
                    interval.pos,
                    "give either `schedule` or `interval`, not both".to_string(),
                ));
                None
            }
            (Some(schedule), None) => match parse_cron(&schedule.value) {
                Ok(cron) => Some(Rule::Cron(Box::new(cron))),
                Err(message) => {
                    problems.push((schedule.pos, message));
                    None
                }
            },
            (None, Some(interval)) if interval.value.0.is_zero() => {
                problems.push((interval.pos, "interval must be longer than 0".to_string()));
                None
            }
            (None, Some(interval)) => Some(Rule::Every(interval.value.0)),
            (None, None) => {
                problems.push((
                    at,
                    "a calendar needs `schedule` (cron) or `interval`".to_string(),
                ));
                None
            }
        };
        let timezone = match &config.timezone {
            None => Some(Tz::UTC),
            Some(name) => match name.value.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    problems.push((
                        name.pos,
                        format!(
                            "unknown timezone {:?}; expected an IANA name like UTC or America/New_York",
                            name.value
                        ),
                    ));
                    None
                }
            },
        };
        let mut exclusions = Vec::new();
        for entry in config.exclusion_dates.iter().flatten() {
            match parse_exclusion(&entry.value) {
                Ok(dates) => exclusions.extend(dates),
                Err(message) => problems.push((entry.pos, message)),
            }
        }
        match (rule, timezone) {
            (Some(rule), Some(timezone)) if problems.is_empty() => Ok(Schedule {
                rule,
                timezone,
                exclusions,
            }),
            _ => Err(problems),
        }
    }

    /// The first tick strictly after `after`, for a calendar started at
    /// `start` (intervals count from it). `None` when there is none (a cron
    /// date that never comes, or every candidate excluded for years).
    pub fn next_after(&self, start: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut candidate = self.candidate_after(start, after)?;
        // Each excluded date moves the search to the next local day; a
        // bounded number of hops, since the exclusion list is finite.
        for _ in 0..=self.exclusions.len() {
            let local_date = candidate.with_timezone(&self.timezone).date_naive();
            if !self.exclusions.contains(&local_date) {
                return Some(candidate);
            }
            let next_day = local_date.checked_add_days(Days::new(1))?;
            let midnight = self
                .timezone
                .from_local_datetime(&next_day.and_hms_opt(0, 0, 0)?)
                .earliest()?
                .with_timezone(&Utc);
            // Strictly after `midnight - 1ns` means at or after midnight.
            candidate = self.candidate_after(start, midnight - chrono::Duration::nanoseconds(1))?;
        }
        None
    }

    fn candidate_after(&self, start: DateTime<Utc>, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.rule {
            Rule::Cron(cron) => {
                let local = after.with_timezone(&self.timezone);
                cron.find_next_occurrence(&local, false)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            Rule::Every(interval) => {
                let interval = chrono::Duration::from_std(*interval).ok()?;
                if after < start {
                    return Some(start + interval);
                }
                let elapsed = (after - start).num_nanoseconds()?;
                let step = interval.num_nanoseconds()?.max(1);
                let ticks = elapsed / step + 1;
                Some(start + chrono::Duration::nanoseconds(ticks.checked_mul(step)?))
            }
        }
    }
}

fn parse_cron(text: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(text)
        .map_err(|err| {
            format!(
                "invalid cron schedule {text:?}: {err}; expected five fields: minute hour day-of-month month day-of-week"
            )
        })
}

/// Argo's RFC 5545 form: `EXDATE:20241225T000000Z,20241226T000000Z`.
fn parse_exclusion(text: &str) -> Result<Vec<NaiveDate>, String> {
    let Some(list) = text.trim().strip_prefix("EXDATE:") else {
        return Err(format!(
            "exclusion date {text:?} must look like EXDATE:20241225T000000Z (RFC 5545, comma-separated)"
        ));
    };
    list.split(',')
        .map(|item| {
            chrono::NaiveDateTime::parse_from_str(item.trim(), "%Y%m%dT%H%M%SZ")
                .map(|t| t.date())
                .map_err(|_| format!("exclusion date {item:?} is not of the form 20241225T000000Z"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::Spanned;
    use crate::config::values::GoDuration;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test time")
            .with_timezone(&Utc)
    }

    fn calendar(schedule: Option<&str>, interval: Option<Duration>) -> CalendarEvent {
        CalendarEvent {
            schedule: schedule.map(|s| Spanned::new(s.to_string(), Pos::default())),
            interval: interval.map(|d| Spanned::new(GoDuration(d), Pos::default())),
            timezone: None,
            exclusion_dates: None,
            metadata: None,
        }
    }

    #[test]
    fn cron_in_a_timezone() {
        let mut config = calendar(Some("0 9 * * *"), None);
        config.timezone = Some(Spanned::new("America/New_York".into(), Pos::default()));
        let schedule = Schedule::from_config(&config, Pos::default()).expect("valid");
        let start = utc("2024-01-01T00:00:00Z");
        // 09:00 in New York in January is 14:00 UTC.
        assert_eq!(
            schedule.next_after(start, start),
            Some(utc("2024-01-01T14:00:00Z"))
        );
    }

    #[test]
    fn interval_counts_from_the_start_without_drift() {
        let config = calendar(None, Some(Duration::from_secs(10)));
        let schedule = Schedule::from_config(&config, Pos::default()).expect("valid");
        let start = utc("2024-01-01T00:00:00Z");
        assert_eq!(
            schedule.next_after(start, start),
            Some(utc("2024-01-01T00:00:10Z"))
        );
        assert_eq!(
            schedule.next_after(start, utc("2024-01-01T00:00:10.5Z")),
            Some(utc("2024-01-01T00:00:20Z"))
        );
    }

    #[test]
    fn excluded_dates_are_skipped() {
        let mut config = calendar(Some("0 12 * * *"), None);
        config.exclusion_dates = Some(vec![Spanned::new(
            "EXDATE:20241225T000000Z,20241226T000000Z".into(),
            Pos::default(),
        )]);
        let schedule = Schedule::from_config(&config, Pos::default()).expect("valid");
        let start = utc("2024-12-24T13:00:00Z");
        assert_eq!(
            schedule.next_after(start, start),
            Some(utc("2024-12-27T12:00:00Z"))
        );
    }

    #[test]
    fn problems_are_specific() {
        let config = calendar(Some("61 * * * *"), None);
        let problems = Schedule::from_config(&config, Pos::default()).expect_err("invalid");
        assert!(
            problems[0].1.contains("invalid cron schedule"),
            "{problems:?}"
        );
        let none = calendar(None, None);
        let problems = Schedule::from_config(&none, Pos::default()).expect_err("invalid");
        assert!(problems[0].1.contains("needs `schedule`"), "{problems:?}");
        let mut zone = calendar(None, Some(Duration::from_secs(1)));
        zone.timezone = Some(Spanned::new("Mars/Olympus".into(), Pos::default()));
        zone.exclusion_dates = Some(vec![Spanned::new("2024-12-25".into(), Pos::default())]);
        let problems = Schedule::from_config(&zone, Pos::default()).expect_err("invalid");
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
