//! Building the correlation stage of the triggers of multi-dependency
//! sensors (Argo `conditions`, `conditionsReset`, spillway
//! `flowControl.correlation`), and refusing the combinations it does not
//! run. Validation already parsed everything; a failure here is reported
//! as a config error all the same, never a panic.

use super::RunError;
use crate::config::flow_control::{DEFAULT_CORRELATION_MAX_EVENTS, DEFAULT_CORRELATION_MAX_WAIT};
use crate::config::sensor::{SensorSpec, Trigger};
use crate::sensor::condition::Condition;
use crate::sensor::runner::{Correlation, WallClock};

/// The correlation of `trigger`, or `None` when the sensor has a single
/// dependency (each event runs the trigger, whatever `conditions` says:
/// it can only name that dependency).
pub fn correlation(
    sensor: &str,
    spec: &SensorSpec,
    trigger: &Trigger,
) -> Result<Option<Correlation>, RunError> {
    if spec.dependencies.len() < 2 {
        return Ok(None);
    }
    let name = &trigger.template.name.value;
    let problem = |e: String| RunError::Config(format!("sensor {sensor}, trigger {name}: {e}"));
    let condition = match &trigger.template.conditions {
        Some(text) => Condition::parse(&text.value).map_err(|e| problem(e.to_string()))?,
        // Argo: without conditions, every dependency must arrive.
        None => Condition::all_of(spec.dependencies.iter().map(|d| d.name.value.as_str()))
            .ok_or_else(|| problem("a sensor needs at least one dependency".to_string()))?,
    };
    let named = condition.names();
    let dependencies: Vec<String> = spec
        .dependencies
        .iter()
        .map(|d| d.name.value.clone())
        .filter(|d| named.contains(d.as_str()))
        .collect();
    let mut resets = Vec::new();
    for reset in trigger.template.conditions_reset.iter().flatten() {
        if let Some(by_time) = &reset.by_time {
            let schedule =
                crate::config::conditions::reset_schedule(by_time).map_err(|problems| {
                    let text: Vec<String> = problems.into_iter().map(|(_, m)| m).collect();
                    problem(format!("conditionsReset: {}", text.join("; ")))
                })?;
            resets.push(schedule);
        }
    }
    let bounds = trigger
        .flow_control
        .as_ref()
        .and_then(|f| f.value.correlation.as_ref())
        .map(|c| &c.value);
    Ok(Some(Correlation {
        condition,
        dependencies,
        max_wait: bounds
            .and_then(|b| b.max_wait.as_ref())
            .map_or(DEFAULT_CORRELATION_MAX_WAIT, |w| w.value.0),
        max_events: bounds
            .and_then(|b| b.max_events.as_ref())
            .map_or(DEFAULT_CORRELATION_MAX_EVENTS, |m| m.value) as usize,
        resets,
        clock: WallClock::system(),
    }))
}

/// What a multi-dependency sensor asks for that its correlated triggers do
/// not run; `at` formats a position as `FILE:LINE:COL`.
pub fn unsupported(
    spec: &SensorSpec,
    at: &dyn Fn(crate::config::yaml::Pos) -> String,
) -> Vec<String> {
    let mut problems = Vec::new();
    if spec.dependencies.len() < 2 {
        return problems;
    }
    if let Some(flow) = &spec.flow_control {
        let by_priority = flow.value.priority.as_ref().map(|p| p.pos);
        let shedding = flow.value.shedding.as_ref().map(|s| s.pos);
        if let Some(pos) = by_priority.or(shedding) {
            problems.push(format!(
                "{}: sensor flowControl.priority/shedding is not supported on a sensor with several dependencies yet",
                at(pos)
            ));
        }
    }
    problems
}
