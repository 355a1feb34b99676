//! The store-for-later trigger: Argo's `k8s` trigger creating a `ConfigMap`
//! with `generateName: backlog-` (seed "3. Store for Later"). Instead of a
//! Kubernetes API it writes the event, as that ConfigMap's `data.event`, to
//! spillway's durable backlog store; `spillway backlog replay` puts it back.
//!
//! Succeeds once the record is durable; a full store (or a disk error) is a
//! retryable failure, so the event stays on the bus and is tried again, as
//! with `onReject: error`: never a silent loss. The same store takes events
//! rejected by triggers with `flowControl.onReject: backlog`. Each record
//! names the trigger it is replayed to: the trigger itself, or, used as a
//! `dlqTrigger`, the trigger whose dead letters it keeps.

use super::TriggerError;
use crate::backlog::{store_event, BacklogStore};
use crate::event::Event;
use std::sync::Arc;

pub struct BacklogTrigger {
    store: Arc<BacklogStore>,
    sensor: String,
    /// The trigger its records are replayed to.
    replay_to: String,
}

impl BacklogTrigger {
    pub fn new(store: Arc<BacklogStore>, sensor: &str, replay_to: &str) -> Self {
        BacklogTrigger {
            store,
            sensor: sensor.to_string(),
            replay_to: replay_to.to_string(),
        }
    }

    pub async fn invoke(&self, event: &Event) -> Result<(), TriggerError> {
        let reason = "stored by a store-for-later (k8s ConfigMap backlog-) trigger".to_string();
        match store_event(&self.store, &self.sensor, &self.replay_to, reason, event).await {
            Ok(name) => {
                tracing::debug!(sensor = %self.sensor, id = %event.context.id, "event stored for later as {name}");
                Ok(())
            }
            Err(err) => Err(TriggerError::Retryable {
                message: err.to_string(),
                retry_after: None,
                pushback: None,
            }),
        }
    }
}
