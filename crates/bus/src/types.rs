//! Values that cross the [`Bus`](crate::Bus) boundary: messages, limits,
//! consumer settings, statistics and errors. Backend-neutral.

use bytes::Bytes;
use std::time::{Duration, SystemTime};

/// Message headers, in insertion order (CloudEvents attributes travel here).
pub type Headers = Vec<(String, String)>;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Routing subject, e.g. `webhook.orders` (`<eventSourceName>.<eventName>`).
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
}

impl Message {
    /// Bytes this message counts against `max_bytes` and `max_msg_size`
    /// (subject + headers + payload, as JetStream counts them).
    pub fn size(&self) -> usize {
        self.subject.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.payload.len()
    }

    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A message as delivered to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Stream sequence number; the handle for ack / nak / term.
    pub seq: u64,
    pub subject: String,
    pub headers: Headers,
    pub payload: Bytes,
    /// When the bus accepted the message.
    pub published_at: SystemTime,
    /// 1 on first delivery, incremented on each redelivery.
    pub delivery_count: u32,
}

impl Received {
    /// The first header named `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscardPolicy {
    /// Refuse the new message ([`PublishError::Full`]); producers see backpressure.
    #[default]
    New,
    /// Accept it and delete the oldest message, counted in `discarded`.
    /// Deleted messages are lost even if a consumer never saw them.
    Old,
}

/// Stream limits (the EventBus `max_*` settings). `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_msgs: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_msg_size: Option<u64>,
    pub max_consumers: Option<u64>,
    pub max_age: Option<Duration>,
    pub discard: DiscardPolicy,
}

impl Default for Limits {
    /// The seed's EventBus: 100 000 messages, 1 GiB, 1 MiB per message,
    /// 100 consumers, discard new.
    fn default() -> Self {
        Limits {
            max_msgs: Some(100_000),
            max_bytes: Some(1 << 30),
            max_msg_size: Some(1 << 20),
            max_consumers: Some(100),
            max_age: None,
            discard: DiscardPolicy::New,
        }
    }
}

/// Settings of a durable pull consumer (JetStream names and defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Durable name; binding twice to the same name shares the consumer.
    pub name: String,
    /// Subjects this consumer receives; empty means every subject.
    pub filter_subjects: Vec<String>,
    /// Redeliver a message not acked within this time (JetStream default 30 s).
    pub ack_wait: Duration,
    /// Stop delivering a message after this many deliveries (`None` = no cap).
    /// A message that reaches the cap is released as if terminated.
    pub max_deliver: Option<u32>,
    /// Most messages delivered and not yet acked (JetStream default 1000).
    pub max_ack_pending: usize,
}

impl ConsumerConfig {
    /// A consumer with JetStream's defaults.
    pub fn new(name: impl Into<String>) -> Self {
        ConsumerConfig {
            name: name.into(),
            filter_subjects: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_ack_pending: 1000,
        }
    }

    /// Whether `subject` passes this consumer's filter.
    pub fn matches(&self, subject: &str) -> bool {
        self.filter_subjects.is_empty() || self.filter_subjects.iter().any(|f| f == subject)
    }
}

/// A point-in-time view of the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BusStats {
    /// Messages not yet released by every consumer (queue depth).
    pub messages: u64,
    /// Bytes of those messages.
    pub bytes: u64,
    /// Messages accepted since start.
    pub published: u64,
    /// Publishes refused because the stream was full (max_msgs / max_bytes).
    pub rejected_full: u64,
    /// Publishes refused because the message exceeded max_msg_size.
    pub rejected_too_large: u64,
    /// Messages deleted by `discard: old` or `max_age` before every consumer released them.
    pub discarded: u64,
    /// Sequence number of the last accepted message (0 when none).
    pub last_seq: u64,
    /// Number of durable consumers.
    pub consumers: u64,
}

/// A point-in-time view of one consumer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumerStats {
    /// Messages matching the filter not yet delivered (consumer lag).
    pub pending: u64,
    /// Delivered, not yet acked.
    pub ack_pending: u64,
    /// Messages redelivered since start.
    pub redelivered: u64,
    /// Age of the oldest message this consumer has not released, if any.
    pub oldest_unacked_age: Option<Duration>,
}

/// Why a publish was refused. Every variant gives the message back.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The stream is at `max_msgs` or `max_bytes` and discards new messages.
    #[error("bus full ({limit} reached); retry after {retry_after:?}")]
    Full {
        message: Message,
        /// Which limit was hit: `max_msgs` or `max_bytes`.
        limit: &'static str,
        /// Estimated time until space frees up, from the current drain rate.
        retry_after: Duration,
    },
    /// The message is larger than `max_msg_size`.
    #[error("message of {size} bytes exceeds max_msg_size {max}")]
    TooLarge {
        message: Message,
        size: u64,
        max: u64,
    },
    /// The bus is closed (shutting down).
    #[error("bus closed")]
    Closed { message: Message },
    /// The backend failed (disk, network); the message was not stored.
    #[error("bus unavailable: {reason}")]
    Unavailable { message: Message, reason: String },
}

impl PublishError {
    /// The refused message, returned to the caller.
    pub fn into_message(self) -> Message {
        match self {
            PublishError::Full { message, .. }
            | PublishError::TooLarge { message, .. }
            | PublishError::Closed { message }
            | PublishError::Unavailable { message, .. } => message,
        }
    }
}

/// Errors of consumer operations.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus closed")]
    Closed,
    #[error("max_consumers ({max}) reached; cannot create consumer {name:?}")]
    TooManyConsumers { name: String, max: u64 },
    #[error("consumer {name:?} already exists with a different configuration")]
    ConsumerMismatch { name: String },
    /// The consumer this handle is bound to was deleted
    /// ([`Bus::delete_consumer`](crate::Bus::delete_consumer)); bind again
    /// to get a new one.
    #[error("consumer {name:?} was deleted")]
    ConsumerDeleted { name: String },
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The backend cannot honour this consumer configuration.
    #[error("consumer {name:?}: {reason}")]
    InvalidConsumer { name: String, reason: String },
}
