//! The JetStream stream behind a bus: its configuration, its last known
//! state, and the drain rate `retry_after` is estimated from.
//!
//! # Retention and limits on nats-server 2.9 (checked against 2.9.10)
//!
//! - `retention: interest` + `discard: new` is accepted, and `max_msgs` is
//!   enforced exactly: a publish to a full stream is answered
//!   `10077 maximum messages exceeded` and nothing is stored.
//! - With interest retention a message no consumer's filter matches, or any
//!   message published while the stream has **no consumer at all**, is
//!   acknowledged (it gets a sequence number) and **not stored**. The memory
//!   bus keeps messages while there is no consumer; here, create the
//!   consumers before accepting events.
//! - `max_bytes` with `discard: new` is **not** exact on 2.9: the server
//!   compares the raw message size with the limit but counts the stored
//!   record (subject, headers and ~30 bytes of framing), and when the record
//!   pushes the stream over the limit it deletes the *oldest* message to make
//!   room, after acknowledging the new one. A full stream then silently loses
//!   accepted, unprocessed events. So with `discard: new` this backend
//!   enforces `max_bytes` itself (see `ByteBudget`) and configures the
//!   server limit a quarter higher, as a backstop that only
//!   concurrent publishers from several processes can reach.
//! - Bytes are counted as the server stores them (`BusStats::bytes` is the
//!   server's number), which is more than [`Message::size`](crate::Message::size)
//!   per message.
//! - File storage on 2.9 syncs to disk on an interval, not per message: a
//!   PubAck means the server holds the message in its page cache, not that
//!   it is on disk (the embedded segment log acks only after `fdatasync`).

use super::error::unavailable;
use crate::stream::{retry_after_for, LimitHit};
use crate::{BusError, DiscardPolicy, Limits};
use async_nats::jetstream::{self, stream};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// With `discard: new`, the server's `max_bytes` is `max_bytes + max_bytes / 4`.
pub(crate) const BYTES_HEADROOM_DIV: u64 = 4;

/// Per-record framing the server adds to subject + headers + payload
/// (measured on 2.9.10: a 12-byte subject, 22-byte header block and 10-byte
/// payload store as 78 bytes). Errs high for records without headers.
const RECORD_OVERHEAD: u64 = 34;

/// Bytes a message will take in the stream, as the server counts them.
pub(crate) fn stored_size(nats_subject_len: usize, header_block: usize, payload: usize) -> u64 {
    RECORD_OVERHEAD + (nats_subject_len + header_block + payload) as u64
}

/// The stream configuration for `limits`.
pub(crate) fn stream_config(
    name: &str,
    subjects: Vec<String>,
    limits: &Limits,
    replicas: usize,
) -> stream::Config {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let to_i32 = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    let max_bytes = limits.max_bytes.map_or(-1, |max| match limits.discard {
        DiscardPolicy::New => to_i64(max.saturating_add(max / BYTES_HEADROOM_DIV)),
        DiscardPolicy::Old => to_i64(max),
    });
    stream::Config {
        name: name.to_string(),
        description: Some("spillway event bus".to_string()),
        subjects,
        retention: stream::RetentionPolicy::Interest,
        storage: stream::StorageType::File,
        discard: match limits.discard {
            DiscardPolicy::New => stream::DiscardPolicy::New,
            DiscardPolicy::Old => stream::DiscardPolicy::Old,
        },
        max_messages: limits.max_msgs.map_or(-1, to_i64),
        max_bytes,
        max_message_size: limits.max_msg_size.map_or(-1, to_i32),
        max_consumers: limits.max_consumers.map_or(-1, to_i32),
        max_age: limits.max_age.unwrap_or(Duration::ZERO),
        max_messages_per_subject: -1,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates the stream or updates it to `config`.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Info, BusError> {
    let name = config.name.clone();
    let info = js.create_or_update_stream(config).await.map_err(|err| {
        unavailable(
            format!("cannot create or update JetStream stream {name:?}"),
            err,
        )
    })?;
    if info.config.retention != stream::RetentionPolicy::Interest {
        return Err(BusError::Unavailable(format!(
            "JetStream stream {name:?} exists with {:?} retention; spillway needs interest \
             retention (delete the stream or pick another name)",
            info.config.retention
        )));
    }
    Ok(info)
}

/// The stream's state as last seen.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StreamState {
    pub(crate) messages: u64,
    pub(crate) bytes: u64,
    pub(crate) last_seq: u64,
    pub(crate) consumers: u64,
}

impl From<&stream::State> for StreamState {
    fn from(s: &stream::State) -> Self {
        StreamState {
            messages: s.messages,
            bytes: s.bytes,
            last_seq: s.last_sequence,
            consumers: s.consumer_count as u64,
        }
    }
}

/// What this process knows about the stream's fill level: the last state
/// fetched from the server plus what it published since.
#[derive(Debug, Default)]
pub(crate) struct ByteBudget {
    /// Last state read from the server, and when.
    pub(crate) state: StreamState,
    pub(crate) seen_at: Option<Instant>,
    /// Stored bytes of messages this process had acknowledged since `seen_at`.
    pub(crate) added: u64,
    /// Stored bytes of publishes waiting for their PubAck.
    pub(crate) in_flight: u64,
}

impl ByteBudget {
    /// The stream's bytes as far as this process can tell (errs high: acks
    /// by consumers since `seen_at` are not subtracted).
    pub(crate) fn estimate(&self) -> u64 {
        self.state
            .bytes
            .saturating_add(self.added)
            .saturating_add(self.in_flight)
    }

    pub(crate) fn observe(&mut self, state: StreamState, at: Instant) {
        self.state = state;
        self.seen_at = Some(at);
        self.added = 0;
    }
}

/// Messages that left the stream between two looks at it: every accepted
/// message raises `last_seq`, and whatever did not stay was removed.
/// 0 if the stream was recreated in between (`last_seq` went back).
pub(crate) fn removed_between(first: StreamState, last: StreamState) -> u64 {
    if last.last_seq < first.last_seq {
        return 0;
    }
    let accepted = last.last_seq - first.last_seq;
    (first.messages + accepted).saturating_sub(last.messages)
}

/// Seconds of history the drain-rate estimate looks at (as in the memory bus).
const DRAIN_WINDOW: Duration = Duration::from_secs(crate::stream::DRAIN_WINDOW_SECS);
/// The stream's drain rate from periodic samples of its state.
///
/// Messages that left the stream between two samples (acked by every
/// consumer, terminated, expired) are `Δlast_seq − Δmessages`: every
/// accepted message raises `last_seq`, and whatever did not stay was
/// removed. It is measured on the server, so it counts the acks of every
/// spillway instance sharing the stream, not just this one's. Messages
/// accepted without being stored (no interested consumer) count as drained,
/// which makes the estimate err short only while such messages flow.
#[derive(Debug, Default)]
pub(crate) struct DrainMeter {
    samples: VecDeque<(Instant, StreamState)>,
}

impl DrainMeter {
    pub(crate) fn record(&mut self, at: Instant, state: StreamState) {
        if let Some((_, last)) = self.samples.back() {
            if state.last_seq < last.last_seq {
                // The stream was recreated: old samples mean nothing now.
                self.samples.clear();
            }
        }
        self.samples.push_back((at, state));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= DRAIN_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Messages removed per second over the window; divided by at least one
    /// second, so a young meter errs low (and `retry_after` long).
    pub(crate) fn rate(&self) -> f64 {
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back())
        else {
            return 0.0;
        };
        let removed = removed_between(*first, *last) as f64;
        let secs = t1.saturating_duration_since(*t0).as_secs_f64().max(1.0);
        removed / secs
    }

    /// How long until a full stream in `state` should have room for a
    /// message of `size` bytes under `hit`, from the drain rate (the same
    /// rule as the embedded bus: [`retry_after_for`]).
    pub(crate) fn retry_after(
        &self,
        hit: LimitHit,
        state: StreamState,
        limits: &Limits,
        size: u64,
    ) -> Duration {
        retry_after_for(self.rate(), hit, state.messages, state.bytes, limits, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{IDLE_RETRY_AFTER, MAX_RETRY_AFTER, MIN_RETRY_AFTER};

    fn state(messages: u64, last_seq: u64) -> StreamState {
        StreamState {
            messages,
            bytes: messages * 100,
            last_seq,
            consumers: 1,
        }
    }

    fn limits(max_msgs: u64) -> Limits {
        Limits {
            max_msgs: Some(max_msgs),
            max_bytes: None,
            ..Limits::default()
        }
    }

    #[test]
    fn stream_config_follows_limits() {
        let c = stream_config("s", vec!["spillway.s.>".into()], &Limits::default(), 1);
        assert_eq!(c.retention, stream::RetentionPolicy::Interest);
        assert_eq!(c.discard, stream::DiscardPolicy::New);
        assert_eq!(c.storage, stream::StorageType::File);
        assert_eq!(c.max_messages, 100_000);
        // The byte limit is enforced by the client; the server's is a backstop.
        assert_eq!(c.max_bytes, (1 << 30) + (1 << 28));
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.max_consumers, 100);
        assert_eq!(c.max_age, Duration::ZERO);
        let c = stream_config(
            "s",
            Vec::new(),
            &Limits {
                max_msgs: None,
                max_bytes: Some(1000),
                max_msg_size: None,
                max_consumers: None,
                max_age: Some(Duration::from_secs(60)),
                discard: DiscardPolicy::Old,
            },
            1,
        );
        assert_eq!(
            (c.max_messages, c.max_bytes, c.max_message_size),
            (-1, 1000, -1)
        );
        assert_eq!(c.max_consumers, -1);
        assert_eq!(c.discard, stream::DiscardPolicy::Old);
        assert_eq!(c.max_age, Duration::from_secs(60));
    }

    #[test]
    fn drain_rate_and_retry_after() {
        let t0 = Instant::now();
        let mut meter = DrainMeter::default();
        assert_eq!(
            meter.retry_after(LimitHit::Msgs, state(10, 10), &limits(10), 1),
            IDLE_RETRY_AFTER
        );
        meter.record(t0, state(10, 10));
        // 4 s later: 2 accepted, stream still at 10: 2 removed, 0.5 msg/s.
        meter.record(t0 + Duration::from_secs(4), state(10, 12));
        assert_eq!(meter.rate(), 0.5);
        assert_eq!(
            meter.retry_after(LimitHit::Msgs, state(10, 12), &limits(10), 1),
            Duration::from_secs(2)
        );
        // Slow: clamped to 60 s; fast: clamped to 1 s.
        assert_eq!(
            meter.retry_after(LimitHit::Msgs, state(200, 12), &limits(10), 1),
            MAX_RETRY_AFTER
        );
        meter.record(t0 + Duration::from_secs(5), state(10, 1000));
        assert_eq!(
            meter.retry_after(LimitHit::Msgs, state(10, 1000), &limits(10), 1),
            MIN_RETRY_AFTER
        );
        // Old samples leave the window; a recreated stream resets it.
        meter.record(t0 + Duration::from_secs(30), state(10, 1000));
        meter.record(t0 + Duration::from_secs(31), state(10, 1000));
        assert_eq!(meter.rate(), 0.0);
        meter.record(t0 + Duration::from_secs(32), state(0, 0));
        assert_eq!(meter.rate(), 0.0);
    }

    #[test]
    fn removed_between_counts_what_left() {
        // 3 accepted, depth down by 2: 5 left.
        assert_eq!(removed_between(state(10, 10), state(8, 13)), 5);
        // Grew by what was accepted: nothing left.
        assert_eq!(removed_between(state(10, 10), state(13, 13)), 0);
        // Recreated stream.
        assert_eq!(removed_between(state(10, 10), state(0, 0)), 0);
    }

    #[test]
    fn byte_budget_adds_what_this_process_published() {
        let mut b = ByteBudget::default();
        b.observe(state(2, 2), Instant::now());
        b.added = 50;
        b.in_flight = 30;
        assert_eq!(b.estimate(), 280);
        b.observe(state(1, 3), Instant::now());
        assert_eq!(b.estimate(), 130);
    }
}
