//! The runner's side of dependency filters: apply them to a fetched event,
//! count what they keep out, and warn (throttled) about events they could
//! not evaluate. What the filters mean is in [`crate::sensor::filter`].

use super::RunnerInner;
use crate::event::Event;
use crate::sensor::evaluation::EvaluationError;
use crate::sensor::filter::FilterError;
use crate::sensor::DependencyFilter;
use crate::telemetry::FilteredReason;
use std::time::Duration;

/// How long an event waits before it is fetched again when the evaluation
/// pool had no room for it (a full queue, every thread abandoned).
pub(super) const EVALUATION_BUSY_DELAY: Duration = Duration::from_secs(1);

/// What a dependency's filters make of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Run the trigger with it.
    Pass,
    /// Keep it out for good (no match, or a filter failed on it): ack it.
    Reject,
    /// The evaluation pool could not take it: capacity, not the event's
    /// fault, so it goes back to the bus (`nak` after
    /// [`EVALUATION_BUSY_DELAY`]) instead of being dropped.
    Busy,
}

impl RunnerInner {
    /// Transforms `event` and judges it by `filter`. An event kept out is
    /// counted in `spillway_sensor_events_filtered_total` with its reason;
    /// the caller acks it without running the trigger ([`Verdict::Reject`])
    /// or, when the pool had no room, naks it ([`Verdict::Busy`]).
    pub(super) async fn judge(
        &self,
        filter: &DependencyFilter,
        event: &mut Event,
        seq: u64,
    ) -> Verdict {
        match filter.apply(event).await {
            Ok(true) => Verdict::Pass,
            Err(FilterError::Evaluation(
                err @ (EvaluationError::QueueFull { .. } | EvaluationError::NoThreads { .. }),
            )) => {
                if let Some(count) = filter.busy_logged.occurred() {
                    tracing::warn!(
                        sensor = %self.sensor,
                        trigger = %self.trigger_name,
                        seq,
                        id = %event.context.id,
                        "event put back on the bus for {EVALUATION_BUSY_DELAY:?} ({count} since the last warning): {err}"
                    );
                }
                Verdict::Busy
            }
            Ok(false) => {
                self.metrics.sensor_filtered(
                    &self.sensor,
                    &self.trigger_name,
                    FilteredReason::NoMatch,
                );
                Verdict::Reject
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
                Verdict::Reject
            }
        }
    }
}
