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
                warnings.extend(postgres_without_events(trigger, &condition));
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

/// A postgres trigger whose `conditions` let it run without the event a
/// parameter reads (`a || b`, a parameter of `b` with no default `value`)
/// writes NULL for that parameter: one warning per such dependency, at its
/// first parameter. Without `conditions` every dependency is required.
fn postgres_without_events(trigger: &Trigger, condition: &Condition) -> Vec<Problem> {
    let Some(postgres) = &trigger.template.postgres else {
        return Vec::new();
    };
    let mut warned: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for (n, parameter) in postgres.value.parameters.iter().flatten().enumerate() {
        let src = &parameter.src;
        let dependency = src.value.dependency_name.value.as_str();
        if src.value.value.is_some()
            || warned.contains(&dependency)
            || condition.requires(dependency)
        {
            continue;
        }
        warned.push(dependency);
        out.push((
            src.pos,
            format!(
                "conditions {:?} can run this postgres trigger without an event of {dependency:?}: \
                 parameter ${} (and any other of {dependency:?} without a default) would be NULL; \
                 require {dependency:?} in conditions (`&&`) or give the parameter a default `value`",
                trigger.template.conditions.as_ref().map_or("", |c| c.value.as_str()),
                n + 1
            ),
        ));
    }
    out
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
