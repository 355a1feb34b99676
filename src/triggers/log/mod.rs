//! The `log` trigger: writes the event to the log (Argo `LogTrigger`).
//!
//! With `intervalSeconds > 0` at most one line is written per interval and
//! the rest are counted into the next line, so a storm cannot flood the log.

use crate::event::Event;
use parking_lot::Mutex;
use std::time::Duration;
use tokio::time::Instant;

pub struct LogTrigger {
    sensor: String,
    trigger: String,
    interval: Duration,
    /// When the last line was written and how many events were not logged since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogTrigger {
    pub fn new(sensor: &str, trigger: &str, interval_seconds: u64) -> Self {
        LogTrigger {
            sensor: sensor.to_string(),
            trigger: trigger.to_string(),
            interval: Duration::from_secs(interval_seconds),
            state: Mutex::new((None, 0)),
        }
    }

    pub fn invoke(&self, dependency: &str, event: &Event) {
        let skipped = {
            let mut state = self.state.lock();
            let now = Instant::now();
            match state.0 {
                Some(last) if now.duration_since(last) < self.interval => {
                    state.1 += 1;
                    return;
                }
                _ => {
                    state.0 = Some(now);
                    std::mem::take(&mut state.1)
                }
            }
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
