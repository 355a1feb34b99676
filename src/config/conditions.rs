//! Validation of trigger `conditions`, `conditionsReset` and
//! `flowControl.correlation`: the expression parses (with the runtime's
//! own parser, so what validates runs), names only dependencies of the
//! sensor, and every reset cron and timezone parses (with the calendar
//! source's parser).

use super::decode::Spanned;
use super::eventsource::calendar::CalendarEvent;
use super::flow_control::Problem;
use super::sensor::{ConditionsResetByTime, Trigger};
use super::suggest::did_you_mean;
use crate::sensor::condition::Condition;
use crate::sources::calendar::Schedule;

/// What is wrong with `trigger`'s conditions (errors) and what has no
/// effect (warnings), given the sensor's dependency names.
pub fn problems(trigger: &Trigger, dependencies: &[&str]) -> (Vec<Problem>, Vec<Problem>) {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let template = &trigger.template;
    if let Some(conditions) = &template.conditions {
        match Condition::parse(&conditions.value) {
            Ok(condition) => {
                for name in condition.names() {
                    if !dependencies.contains(&name) {
                        let hint = did_you_mean(name, dependencies.iter().copied())
                            .map(|h| format!("; did you mean {h:?}?"))
                            .unwrap_or_default();
                        errors.push((
                            conditions.pos,
                            format!(
                                "conditions: {name:?} is not a dependency of this sensor{hint}"
                            ),
                        ));
                    }
                }
            }
            Err(err) => errors.push((conditions.pos, err.to_string())),
        }
    }
    for reset in template.conditions_reset.iter().flatten() {
        if let Some(by_time) = &reset.by_time {
            if let Err(problems) = reset_schedule(by_time) {
                errors.extend(problems);
            }
        }
    }
    if dependencies.len() < 2 {
        let correlation = trigger
            .flow_control
            .as_ref()
            .and_then(|f| f.value.correlation.as_ref());
        if let Some(correlation) = correlation {
            warnings.push((
                correlation.pos,
                "flowControl.correlation has no effect: the sensor has one dependency, so no event waits for another".to_string(),
            ));
        }
        if let Some(first) = template
            .conditions_reset
            .iter()
            .flatten()
            .find_map(|r| r.by_time.as_ref())
        {
            warnings.push((
                first.pos,
                "conditionsReset has no effect: the sensor has one dependency, so no event waits for another".to_string(),
            ));
        }
    }
    (errors, warnings)
}

/// The schedule of one `conditionsReset.byTime`, parsed by the calendar
/// source's parser (five-field cron or descriptor, IANA timezone).
pub fn reset_schedule(by_time: &Spanned<ConditionsResetByTime>) -> Result<Schedule, Vec<Problem>> {
    let calendar = CalendarEvent {
        schedule: Some(by_time.value.cron.clone()),
        interval: None,
        timezone: by_time.value.timezone.clone(),
        exclusion_dates: None,
        metadata: None,
    };
    Schedule::from_config(&calendar, by_time.pos)
}
