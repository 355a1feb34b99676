//! The backlog: events stored for later instead of being held on the bus or
//! dropped, and their gradual replay (seed "Handling Rejected Events → 3.
//! Store for later").
//!
//! - [`store`]: the durable store, one file per event under
//!   `<data-dir>/backlog/`, bounded by event count and bytes.
//! - [`record`]: the file format, the `ConfigMap` the seed's
//!   `generateName: backlog-` trigger would have created.
//! - [`replay`]: publishing records back to the bus at a slow-start pace,
//!   removing each only after the bus accepted it.
//! - [`client`]: `spillway backlog replay`'s side of the admin API.
//!
//! A replayed event carries the [`REPLAY_TO_HEADER`] header naming the
//! trigger that stored it; every other trigger acks it without running, so
//! a replay never fires the sibling triggers that already handled the
//! event. What the store guarantees is in [`store`], what replay guarantees
//! in [`replay`].

pub mod client;
pub mod record;
pub mod replay;
pub mod store;

pub use client::AdminClient;
pub use record::{Record, RecordError};
pub use replay::{
    replay_all, Refused, ReplayError, ReplayReport, ReplaySource, Replayer, TargetKind,
};
pub use store::{BacklogLimits, BacklogStore, Entry, Scan, StoreError};

use crate::event::Event;
use std::sync::Arc;
use std::time::SystemTime;

/// Bus header of a replayed event: `<sensor>/<trigger>` it is replayed to.
pub const REPLAY_TO_HEADER: &str = "spillway-replay-to";

/// The value of [`REPLAY_TO_HEADER`] for `trigger` of `sensor`.
pub fn target(sensor: &str, trigger: &str) -> String {
    format!("{sensor}/{trigger}")
}

/// Stores `event` (off the async runtime: the store fsyncs); the record name.
pub async fn store_event(
    store: &Arc<BacklogStore>,
    sensor: &str,
    trigger: &str,
    reason: String,
    event: &Event,
) -> Result<String, StoreError> {
    let record = Record {
        sensor: sensor.to_string(),
        trigger: trigger.to_string(),
        reason,
        stored_at: SystemTime::now(),
        event: event.clone(),
    };
    let owned = Arc::clone(store);
    tokio::task::spawn_blocking(move || owned.put(&record))
        .await
        .map_err(|e| StoreError::Io {
            path: store.dir().to_path_buf(),
            source: std::io::Error::other(e),
        })?
}
