//! The `log` trigger: writes the event to the log (Argo `LogTrigger`).
//!
//! With `intervalSeconds > 0` at most one line is written per interval and
//! the rest are counted into the next line, so a storm cannot flood the log.

use crate::event::Event;
use crate::telemetry::LogThrottle;
use std::time::Duration;

pub struct LogTrigger {
    sensor: String,
    trigger: String,
    throttle: LogThrottle,
}

impl LogTrigger {
    pub fn new(sensor: &str, trigger: &str, interval_seconds: u64) -> Self {
        LogTrigger {
            sensor: sensor.to_string(),
            trigger: trigger.to_string(),
            throttle: LogThrottle::new(Duration::from_secs(interval_seconds)),
        }
    }

    pub fn invoke(&self, dependency: &str, event: &Event) {
        let Some(skipped) = self.throttle.admit() else {
            return;
        };
        let data = String::from_utf8_lossy(&event.data);
        tracing::info!(
            sensor = %self.sensor,
            trigger = %self.trigger,
            dependency,
            id = %event.context.id,
            source = %event.context.source,
            subject = %event.context.subject,
            time = %event.context.time,
            skipped,
            "event: {data}"
        );
    }
}
