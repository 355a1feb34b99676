//! Event sources: where events enter and where backpressure reaches the
//! producer. One folder per source kind.
//!
//! Every source follows one rule: an event is acknowledged upstream (2xx,
//! AMQP ack, JetStream ack, next line read) only after [`Bus::publish`]
//! returned a sequence number. What a source does while the bus is full is
//! its protocol's "slow down" signal, documented in its module:
//!
//! | source | bus full |
//! |---|---|
//! | `webhook` | `429` + `Retry-After` |
//! | `amqp` | stops acking (prefetch runs out, RabbitMQ holds the queue); nack-requeue after `maxBlock` |
//! | `jetstream` | nak with a delay; the upstream stream keeps the backlog |
//! | `nats` | core NATS cannot push back: dropped, counted `bus_full`, warned (rate-limited) |
//! | `calendar` | the tick waits until the next one is due, then is counted `missed` |
//! | `file` | stops reading until there is space; never drops |
//!
//! Non-webhook sources are started by [`start`] from their config; each
//! returns a [`Running`] task that stops when the context's `stop` token is
//! cancelled.

pub mod amqp;
pub mod calendar;
pub mod file;
pub mod jetstream;
pub mod nats;
pub mod webhook;

mod body;
mod publish;
mod start;

use crate::telemetry::LogThrottle;
pub use body::{event_body, BodyError};
pub use publish::{publish_waiting, Waited};
pub use start::start_sources;

use crate::telemetry::Metrics;
use spillway_bus::Bus;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What every running source shares.
#[derive(Clone)]
pub struct SourceContext {
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown: the source stops taking new events, settles
    /// the ones in hand (acked or handed back upstream) and returns.
    pub stop: CancellationToken,
}

/// Which event a source produces: `<source>.<event>` on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventName {
    /// The EventSource's `metadata.name`.
    pub source: String,
    /// The event's key under its kind.
    pub event: String,
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.source, self.event)
    }
}

/// A started source: its task ends after `stop` is cancelled.
pub type Running = tokio::task::JoinHandle<()>;

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The upstream (RabbitMQ, NATS) could not be reached or set up.
    #[error("{name}: cannot connect to {url}: {reason}")]
    Connect {
        name: String,
        url: String,
        reason: String,
    },
    /// The upstream refused the source's setup (queue, stream, consumer).
    #[error("{name}: {reason}")]
    Setup { name: String, reason: String },
    /// A local resource (file, standard input) could not be opened.
    #[error("{name}: {reason}")]
    Open { name: String, reason: String },
}
