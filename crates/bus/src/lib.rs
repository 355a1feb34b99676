//! The spillway event bus: one [`Bus`] trait, several backends.
//!
//! A bus is a bounded, ordered stream of messages with durable named
//! consumers, modelled on NATS JetStream (the engine Argo Events uses):
//!
//! - [`Bus::publish`] either stores the message and returns its stream
//!   sequence number, or refuses it with a typed [`PublishError`] that hands
//!   the message back (nothing is lost by accident). A full bus with
//!   `discard: new` answers [`PublishError::Full`] with an honest
//!   `retry_after` so sources can turn it into `429 + Retry-After`.
//! - Consumers pull: [`Consumer::fetch`] never returns more than the
//!   consumer's free `max_ack_pending` credits, so a slow consumer stops
//!   pulling and the stream fills up behind it (that is the backpressure).
//! - A message stays in the stream until every consumer has acked (or
//!   terminated) it; that count is the queue depth limits apply to.
//! - An unacked message is redelivered after `ack_wait`, or after a `nak`
//!   delay, until `max_deliver` deliveries have been made.
//! - [`Bus::delete_consumer`] removes a durable consumer for good and
//!   releases what it held (durably, on the durable backends).
//!
//! Backends: [`memory::MemoryBus`] (in-process, not durable),
//! [`segment_bus::SegmentBus`] (embedded and durable), both thin layers over
//! one shared stream / consumer state machine (the private `stream` module),
//! and [`jetstream::JetStreamBus`] (a NATS JetStream stream shared by several
//! spillway instances). The storage engine under the segment bus is
//! [`segment::SegmentLog`]. One conformance suite (the private `conformance`
//! module) runs against all three, the JetStream one on a real
//! `nats-server`.

#[cfg(test)]
pub(crate) mod conformance;
pub mod jetstream;
pub mod memory;
pub mod segment;
pub mod segment_bus;
mod stream;
#[cfg(test)]
mod test_alloc;
mod types;

pub use types::{
    BusError, BusStats, ConsumerConfig, ConsumerStats, DiscardPolicy, Headers, Limits, Message,
    PublishError, Received,
};

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A bounded message stream with durable pull consumers.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Appends `message`; returns its sequence number once the bus holds it.
    ///
    /// Never blocks waiting for space: a full bus answers
    /// [`PublishError::Full`] at once and the caller decides how long to wait.
    async fn publish(&self, message: Message) -> Result<u64, PublishError>;

    /// Creates the durable consumer `config.name`, or binds to it if it
    /// already exists (its position and pending messages are kept).
    async fn consumer(&self, config: ConsumerConfig) -> Result<Arc<dyn Consumer>, BusError>;

    /// Deletes the durable consumer `name` (an Argo Sensor was removed):
    /// every message it held is released as if it had acked it, so one that
    /// no other consumer holds leaves the stream. Returns whether it
    /// existed. Fetches through handles bound to it, waiting ones included,
    /// then fail with [`BusError::ConsumerDeleted`]; binding the name again
    /// creates a new consumer that starts at the oldest message still held.
    async fn delete_consumer(&self, name: &str) -> Result<bool, BusError>;

    /// Resolves once space may have been freed (a message acked or removed)
    /// or `timeout` elapsed, whichever comes first. Used by producers that
    /// block for space (`maxBlock`) instead of polling.
    async fn wait_for_space(&self, timeout: Duration);

    /// Limits this bus enforces.
    fn limits(&self) -> Limits;

    /// A snapshot of depth, bytes and counters.
    fn stats(&self) -> BusStats;

    /// Stops accepting publishes ([`PublishError::Closed`]) and wakes waiting
    /// fetches, which then return what they have.
    async fn close(&self);
}

/// A durable pull consumer.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// The consumer's durable name.
    fn name(&self) -> &str;

    /// Waits up to `max_wait` for at least one message and returns at most
    /// `max` of them, never more than the free `max_ack_pending` credits.
    /// Returns an empty batch on timeout or when the bus is closed.
    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Received>, BusError>;

    /// Marks `seq` processed: it is never delivered to this consumer again.
    async fn ack(&self, seq: u64) -> Result<(), BusError>;

    /// Asks for redelivery of `seq` after `delay` (at once if zero); counts as
    /// a delivery against `max_deliver`.
    async fn nak(&self, seq: u64, delay: Duration) -> Result<(), BusError>;

    /// Resets the `ack_wait` timer of `seq` (work is still going on).
    async fn in_progress(&self, seq: u64) -> Result<(), BusError>;

    /// Gives up on `seq`: never redelivered, released like an ack.
    async fn term(&self, seq: u64) -> Result<(), BusError>;

    /// Lag, pending acks and the age of the oldest unacked message.
    fn stats(&self) -> ConsumerStats;
}
