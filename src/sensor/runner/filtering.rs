//! The runner's side of dependency filters: apply them to a fetched event,
//! count what they keep out, and warn (throttled) about events they could
//! not evaluate. What the filters mean is in [`crate::sensor::filter`].

use super::RunnerInner;
use crate::event::Event;
use crate::sensor::DependencyFilter;
use crate::telemetry::FilteredReason;

impl RunnerInner {
    /// Transforms `event` and whether it passes `filter`. An event that does
    /// not is counted in `spillway_sensor_events_filtered_total` with its
    /// reason; the caller acks it without running the trigger.
    pub(super) async fn passes(
        &self,
        filter: &DependencyFilter,
        event: &mut Event,
        seq: u64,
    ) -> bool {
        match filter.apply(event).await {
            Ok(true) => true,
            Ok(false) => {
                self.metrics.sensor_filtered(
                    &self.sensor,
                    &self.trigger_name,
                    FilteredReason::NoMatch,
                );
                false
            }
            Err(err) => {
                self.metrics.sensor_filtered(
                    &self.sensor,
                    &self.trigger_name,
                    FilteredReason::Error,
                );
                if let Some(count) = filter.errors_logged.occurred() {
                    tracing::warn!(
                        sensor = %self.sensor,
                        trigger = %self.trigger_name,
                        seq,
                        id = %event.context.id,
                        "event rejected: its dependency filter or transform failed ({count} since the last warning): {err}"
                    );
                }
                false
            }
        }
    }
}
