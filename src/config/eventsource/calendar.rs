//! `calendar:` events (Argo `CalendarEventSource`): ticks on a cron
//! `schedule` or every `interval`, in a `timezone`, skipping `exclusionDates`.
//!
//! Validation parses all of it with the runtime's own parser
//! ([`crate::sources::calendar::Schedule`]), so a schedule that validates
//! runs.

use crate::config::decode::Spanned;
use crate::config::flow_control::Problem;
use crate::config::values::GoDuration;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One calendar (Argo field names).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CalendarEvent {
    /// Five-field cron expression (minute hour day-of-month month day-of-week).
    pub schedule: Option<Spanned<String>>,
    /// Fixed interval between ticks, e.g. `10s`, `1h`.
    pub interval: Option<Spanned<GoDuration>>,
    /// IANA time zone the schedule is read in (default UTC).
    pub timezone: Option<Spanned<String>>,
    /// RFC 5545 `EXDATE:20241225T000000Z,…` entries: no tick on those days.
    pub exclusion_dates: Option<Vec<Spanned<String>>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl CalendarEvent {
    pub fn problems(&self, at: crate::config::yaml::Pos) -> Vec<Problem> {
        match crate::sources::calendar::Schedule::from_config(self, at) {
            Ok(_) => Vec::new(),
            Err(problems) => problems,
        }
    }
}
