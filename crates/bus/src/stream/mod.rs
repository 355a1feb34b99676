//! The stream and consumer state machine shared by the embedded backends
//! ([`MemoryBus`](crate::memory::MemoryBus) and
//! [`SegmentBus`](crate::segment_bus::SegmentBus)).
//!
//! A [`Stream<B>`] is the whole bus state behind one lock: the held messages
//! in sequence order, every consumer's cursor and pending set, the limits,
//! the drain-rate meter and the counters. It is generic over `B`, what a
//! backend stores per held message besides the common fields of [`Slot`]:
//! the memory backend stores the message itself, the segment backend only
//! the record's [`Location`](crate::segment::Location) in the log and reads
//! the payload back on fetch. [`Shared<B>`] adds the async parts (fetch
//! waits, `wait_for_space`) that both backends use as they are.
//!
//! # Semantics (what every embedded backend guarantees while it runs)
//!
//! - **Ordering and sequence numbers.** Messages are held in sequence order
//!   and new messages reach a consumer in sequence order. The backend picks
//!   the sequence numbers (they only grow).
//! - **Typed refusals, never blocking.** [`Stream::admit`] answers at once:
//!   `TooLarge` (over `max_msg_size`, or over `max_bytes` so it could never
//!   fit), `Full` (at `max_msgs` / `max_bytes` with `discard: new`, with a
//!   `retry_after` estimated from the measured drain rate). Every refusal is
//!   counted; the backend hands the message back.
//! - **Retention by interest.** A message stays until every current consumer
//!   has released it (acked, terminated, or given up after `max_deliver`), or
//!   its subject matches no consumer's filter. With no consumer at all,
//!   messages stay until a limit removes them. Queue depth
//!   (`BusStats::messages` / `bytes`) is exactly the set of messages still
//!   held, and is what `max_msgs` / `max_bytes` apply to.
//! - **At-least-once delivery per consumer**: a delivered message is
//!   redelivered after `ack_wait` or a `nak` delay until it is acked,
//!   terminated, or has been delivered `max_deliver` times. Fetching is
//!   cancel-safe: a message counts as delivered only when the fetch returns
//!   it (marking happens synchronously, right before returning).
//! - **Deleted consumers let go.** [`Stream::remove_consumer`] releases
//!   every message the consumer held; handles bound to it get
//!   [`ConsumerDeleted`] and never act on a later consumer of the same name
//!   (ids are not reused).
//! - **Bounded memory.** Held messages are bounded by [`Limits`]; released
//!   messages are removed at once (wherever they are in the stream). Each
//!   consumer keeps a cursor plus one entry per delivered, unacked message,
//!   so its state is bounded by `max_ack_pending`, not by stream length.
//!   Subjects are interned: one string per distinct subject held.
//!
//! # What it does not guarantee
//!
//! - **Delivery of dropped messages.** `discard: old` and `max_age` delete
//!   messages even if a consumer never saw them (counted in
//!   `BusStats::discarded`, logged at most once per 10 s), and a message that
//!   exhausts `max_deliver` is released for that consumer (logged).
//! - **Messages published before a consumer existed, for other consumers.**
//!   A new consumer starts at the oldest message still held, so it only sees
//!   what earlier consumers have not released yet. When the *first* consumer
//!   is created, held messages its filter does not match are released
//!   (nobody is interested in them any more).
//! - **Exact timers.** Expiry (`max_age`) and `max_deliver` give-ups are
//!   applied lazily, whenever the bus is touched (publish, fetch, stats,
//!   `wait_for_space`), not by a background task.
//!
//! All timing uses [`tokio::time::Instant`], so tests can run on paused time.

mod consumer;
mod meter;
mod seq_map;
mod shared;

pub(crate) use consumer::{ConsumerDeleted, ConsumerId, ConsumerSnapshot, ConsumerState};
pub(crate) use meter::{
    later, DRAIN_WINDOW_SECS, IDLE_RETRY_AFTER, MAX_RETRY_AFTER, MIN_RETRY_AFTER,
};
pub(crate) use shared::Shared;

use crate::{BusStats, DiscardPolicy, Limits, Message, PublishError};
use meter::{DrainMeter, LogThrottle};
use seq_map::SeqMap;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A held message: what every backend keeps, plus the backend's `body`.
pub(crate) struct Slot<B> {
    /// Interned: one allocation per distinct subject, shared by its messages.
    pub subject: Arc<str>,
    /// Bytes counted against `max_bytes` ([`Message::size`]).
    pub size: u64,
    /// Publish time on the tokio clock (ages, `max_age`).
    pub stored_at: Instant,
    /// Consumers that still hold this message; it is released at 0 (unless
    /// there are no consumers at all).
    pub holders: u32,
    pub body: B,
}

/// Which limit a publish hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Msgs,
    Bytes,
}

impl LimitHit {
    pub(crate) fn name(self) -> &'static str {
        match self {
            LimitHit::Msgs => "max_msgs",
            LimitHit::Bytes => "max_bytes",
        }
    }
}

/// How long until a stream holding `held` messages of `held_bytes` has room
/// for one more of `size` bytes under `hit`, when `rate` messages leave per
/// second: (messages that must leave) / rate, clamped to
/// [[`MIN_RETRY_AFTER`], [`MAX_RETRY_AFTER`]]; [`IDLE_RETRY_AFTER`] when
/// nothing drains. Shared by every backend so `Retry-After` means the same.
pub(crate) fn retry_after_for(
    rate: f64,
    hit: LimitHit,
    held: u64,
    held_bytes: u64,
    limits: &Limits,
    size: u64,
) -> Duration {
    if rate <= 0.0 {
        return IDLE_RETRY_AFTER;
    }
    let needed = match hit {
        LimitHit::Msgs => (held + 1).saturating_sub(limits.max_msgs.unwrap_or(u64::MAX)),
        LimitHit::Bytes => {
            let over = held_bytes
                .saturating_add(size)
                .saturating_sub(limits.max_bytes.unwrap_or(u64::MAX));
            let avg = (held_bytes / held.max(1)).max(1);
            over.div_ceil(avg)
        }
    }
    .max(1);
    let secs = needed as f64 / rate;
    Duration::from_secs_f64(
        secs.clamp(MIN_RETRY_AFTER.as_secs_f64(), MAX_RETRY_AFTER.as_secs_f64()),
    )
}

/// Why [`Stream::admit`] refused a message (already counted).
#[derive(Debug)]
pub(crate) enum Refusal {
    TooLarge {
        size: u64,
        max: u64,
    },
    Full {
        limit: &'static str,
        retry_after: Duration,
    },
}

impl Refusal {
    /// The publish error handing `message` back.
    pub(crate) fn into_error(self, message: Message) -> PublishError {
        match self {
            Refusal::TooLarge { size, max } => PublishError::TooLarge { message, size, max },
            Refusal::Full { limit, retry_after } => PublishError::Full {
                message,
                limit,
                retry_after,
            },
        }
    }
}

/// Whether an admitted message takes room in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Some consumer wants it (or there is no consumer): it will be held.
    Held,
    /// Consumers exist but none matches: accepted and released at once, no
    /// limit applies.
    Unwanted,
}

/// The whole state of one stream and its consumers. See the [module
/// docs](self).
pub(crate) struct Stream<B> {
    pub limits: Limits,
    /// Notified whenever a held message is released or removed, and on close.
    space: Arc<Notify>,
    pub closed: bool,
    /// Held messages by sequence number. A message released out of order
    /// (acks out of order, disjoint filters) is freed at once; what it
    /// leaves in the ring is bounded (see [`SeqMap`]).
    pub msgs: SeqMap<Slot<B>>,
    pub bytes: u64,
    pub last_seq: u64,
    published: u64,
    rejected_full: u64,
    rejected_too_large: u64,
    discarded: u64,
    /// Admitted publishes not stored yet (the segment backend admits before
    /// its append and stores from the commit hook); limits count them.
    reserved_msgs: u64,
    reserved_bytes: u64,
    /// Every seq below this is released for good: the oldest-first deletions
    /// (`discard: old`, `max_age`) only ever take the oldest held message, so
    /// everything before it was released already. Durable backends persist
    /// it so that a discarded message does not come back after a restart.
    pub discard_floor: u64,
    /// Live consumers by id. Ids are never reused, so a handle of a deleted
    /// consumer cannot act on a later one of the same name.
    pub consumers: BTreeMap<ConsumerId, ConsumerState>,
    next_consumer_id: ConsumerId,
    drain: DrainMeter,
    /// Rate-limits the discard warning.
    discard_log: LogThrottle,
    subjects: HashSet<Arc<str>>,
}

impl<B> Stream<B> {
    pub(crate) fn new(limits: Limits, space: Arc<Notify>, now: Instant) -> Self {
        Stream {
            limits,
            space,
            closed: false,
            msgs: SeqMap::new(),
            bytes: 0,
            last_seq: 0,
            published: 0,
            rejected_full: 0,
            rejected_too_large: 0,
            discarded: 0,
            reserved_msgs: 0,
            reserved_bytes: 0,
            discard_floor: 0,
            consumers: BTreeMap::new(),
            next_consumer_id: 0,
            drain: DrainMeter::new(now),
            discard_log: LogThrottle::default(),
            subjects: HashSet::new(),
        }
    }

    /// Marks the stream closed and wakes every waiter.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for c in self.consumers.values() {
            c.wake.notify_waiters();
        }
        self.space.notify_waiters();
    }

    /// Applies `max_age` and due timers (redeliveries, `max_deliver` give-ups).
    pub(crate) fn maintain(&mut self, now: Instant) {
        self.expire(now);
        // By key rather than by a collected list: no allocation per call.
        let mut next = self.consumers.keys().next().copied();
        while let Some(id) = next {
            self.sweep_consumer(id, now);
            next = self
                .consumers
                .range(id.saturating_add(1)..)
                .next()
                .map(|(&id, _)| id);
        }
    }

    /// Removes messages older than `max_age`.
    fn expire(&mut self, now: Instant) {
        let Some(max_age) = self.limits.max_age else {
            return;
        };
        while let Some((seq, m)) = self.msgs.first() {
            if now.saturating_duration_since(m.stored_at) <= max_age {
                break;
            }
            self.discard_oldest(seq, now, "max_age");
        }
    }

    /// One consumer let go of `seq`; frees it when nobody holds it any more.
    fn release_ref(&mut self, seq: u64, now: Instant) {
        let Some(m) = self.msgs.get_mut(&seq) else {
            return;
        };
        m.holders = m.holders.saturating_sub(1);
        if m.holders == 0 {
            self.free(seq, now);
        }
    }

    /// Takes `seq` out of the stream (no consumer bookkeeping).
    pub(crate) fn free(&mut self, seq: u64, now: Instant) -> Option<Slot<B>> {
        let m = self.msgs.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(m.size);
        // The set and this slot: no other held message has this subject.
        if Arc::strong_count(&m.subject) <= 2 {
            self.subjects.remove(&m.subject);
        }
        self.drain.record(now);
        self.space.notify_waiters();
        Some(m)
    }

    /// Deletes the oldest held message `seq` although consumers may still
    /// hold it (`discard: old`, `max_age`) and raises the discard floor.
    fn discard_oldest(&mut self, seq: u64, now: Instant, reason: &'static str) {
        self.discard_floor = self.discard_floor.max(seq.saturating_add(1));
        self.discard(seq, now, reason);
    }

    /// Deletes `seq` although consumers may still hold it: it is never
    /// delivered again. Counted in `discarded` and logged (throttled).
    pub(crate) fn discard(&mut self, seq: u64, now: Instant, reason: &'static str) {
        let Some(m) = self.free(seq, now) else {
            return;
        };
        self.discarded += 1;
        // One line per interval, not per message: a storm with `discard: old`
        // would otherwise flood the log. The exact count is in `discarded`.
        if let Some(suppressed) = self.discard_log.ready(now) {
            tracing::warn!(seq, subject = %m.subject, reason, suppressed, total = self.discarded, "message discarded before every consumer released it");
        }
        for c in self.consumers.values_mut() {
            if let Some(p) = c.pending.remove(&seq) {
                c.unschedule(seq, p.timer);
                c.dirty = true;
                c.wake.notify_waiters();
            } else if seq >= c.cursor && c.config.matches(&m.subject) {
                c.unseen = c.unseen.saturating_sub(1);
            }
        }
    }

    /// Messages held or admitted and about to be.
    fn held(&self) -> u64 {
        self.msgs.len() as u64 + self.reserved_msgs
    }

    fn held_bytes(&self) -> u64 {
        self.bytes.saturating_add(self.reserved_bytes)
    }

    /// The first limit a new message of `size` bytes would exceed.
    fn over_limit(&self, size: u64) -> Option<LimitHit> {
        if self
            .limits
            .max_msgs
            .is_some_and(|max| self.held() + 1 > max)
        {
            return Some(LimitHit::Msgs);
        }
        if self
            .limits
            .max_bytes
            .is_some_and(|max| self.held_bytes().saturating_add(size) > max)
        {
            return Some(LimitHit::Bytes);
        }
        None
    }

    /// `discard: old`: deletes the oldest messages until `size` bytes fit.
    /// Deletes nothing and answers `false` if it cannot fit even with every
    /// stored message gone, because room reserved by publishes still being
    /// written (or a limit of 0) is in the way: deleting would lose messages
    /// and still refuse this one.
    fn make_room(&mut self, size: u64, now: Instant) -> bool {
        let fits_when_empty = self
            .limits
            .max_msgs
            .is_none_or(|max| self.reserved_msgs < max)
            && self
                .limits
                .max_bytes
                .is_none_or(|max| self.reserved_bytes.saturating_add(size) <= max);
        if !fits_when_empty {
            return false;
        }
        while self.over_limit(size).is_some() {
            let Some(seq) = self.msgs.first_key() else {
                return false;
            };
            self.discard_oldest(seq, now, "discard_old");
        }
        true
    }

    /// How long until `hit` should have room for a message of `size` bytes,
    /// extrapolating the drain rate over the last 10 s: (messages that must
    /// be released) / (messages released per second), clamped to
    /// [1 s, 60 s]; [`IDLE_RETRY_AFTER`] when nothing drained.
    fn retry_after(&mut self, now: Instant, hit: LimitHit, size: u64) -> Duration {
        let rate = self.drain.rate(now);
        retry_after_for(
            rate,
            hit,
            self.held(),
            self.held_bytes(),
            &self.limits,
            size,
        )
    }

    /// The next instant at which `maintain` may release something.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        let expiry = self.limits.max_age.and_then(|age| {
            let (_, m) = self.msgs.first()?;
            // Strictly older than max_age: one tick past the boundary.
            Some(later(later(m.stored_at, age), Duration::from_millis(1)))
        });
        self.consumers
            .values()
            .filter_map(|c| c.timers.first().map(|&(at, _)| at))
            .chain(expiry)
            .min()
    }

    /// Decides whether a message of `size` bytes on `subject` may be
    /// published now (call [`maintain`](Self::maintain) first). Refusals are
    /// counted. With `discard: old` this may discard the oldest messages.
    pub(crate) fn admit(
        &mut self,
        subject: &str,
        size: u64,
        now: Instant,
    ) -> Result<Admitted, Refusal> {
        let limits = self.limits;
        // A message larger than max_bytes could never fit: refuse it as too
        // large rather than as "full" (retrying would never help).
        let max_size = match (limits.max_msg_size, limits.max_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(max) = max_size {
            if size > max {
                self.rejected_too_large += 1;
                return Err(Refusal::TooLarge { size, max });
            }
        }
        let wanted =
            self.consumers.is_empty() || self.consumers.values().any(|c| c.config.matches(subject));
        if !wanted {
            // No consumer is interested: accepted and released at once, so
            // it takes no room and no limit applies.
            return Ok(Admitted::Unwanted);
        }
        if let Some(hit) = self.over_limit(size) {
            let fits = match limits.discard {
                DiscardPolicy::New => false,
                DiscardPolicy::Old => self.make_room(size, now),
            };
            if !fits {
                self.rejected_full += 1;
                let retry_after = self.retry_after(now, hit, size);
                return Err(Refusal::Full {
                    limit: hit.name(),
                    retry_after,
                });
            }
        }
        Ok(Admitted::Held)
    }

    /// Counts an admitted message that is not stored yet against the limits.
    pub(crate) fn reserve(&mut self, size: u64) {
        self.reserved_msgs += 1;
        self.reserved_bytes = self.reserved_bytes.saturating_add(size);
    }

    /// Undoes one [`reserve`](Self::reserve).
    pub(crate) fn unreserve(&mut self, size: u64) {
        self.reserved_msgs = self.reserved_msgs.saturating_sub(1);
        self.reserved_bytes = self.reserved_bytes.saturating_sub(size);
        // Wakes even when the message was stored: a release while it was
        // counted twice (stored and reserved) woke a producer too early,
        // and the message may not have been stored at all (its consumers
        // went away). A wake too many is cheap; one too few is not.
        self.space.notify_waiters();
    }

    /// Counts a publish refused for a reason found after [`admit`](Self::admit)
    /// (the segment backend's record-format limits).
    pub(crate) fn count_too_large(&mut self) {
        self.rejected_too_large += 1;
    }

    fn intern(&mut self, subject: &str) -> Arc<str> {
        if let Some(s) = self.subjects.get(subject) {
            return Arc::clone(s);
        }
        let s: Arc<str> = Arc::from(subject);
        self.subjects.insert(Arc::clone(&s));
        s
    }

    /// Stores the accepted message `seq` (above every seq so far) and hands
    /// it to every consumer whose filter matches. With consumers but none
    /// interested, it is counted as published and released at once.
    pub(crate) fn insert(&mut self, seq: u64, subject: &str, size: u64, now: Instant, body: B) {
        self.last_seq = self.last_seq.max(seq);
        self.published += 1;
        let mut holders = 0u32;
        for c in self.consumers.values_mut() {
            if c.config.matches(subject) {
                holders = holders.saturating_add(1);
                c.unseen += 1;
                c.wake.notify_waiters();
            }
        }
        if holders == 0 && !self.consumers.is_empty() {
            return;
        }
        self.store(seq, subject, size, now, holders, body);
    }

    fn store(
        &mut self,
        seq: u64,
        subject: &str,
        size: u64,
        stored_at: Instant,
        holders: u32,
        body: B,
    ) {
        self.bytes = self.bytes.saturating_add(size);
        let subject = self.intern(subject);
        self.msgs.insert(
            seq,
            Slot {
                subject,
                size,
                stored_at,
                holders,
                body,
            },
        );
    }

    /// Recovery: re-holds message `seq` found in durable storage if some
    /// restored consumer still holds it (pending, or not yet delivered and
    /// matching), or if there is no consumer at all. Returns whether it is
    /// held. Call in seq order, after restoring every consumer.
    pub(crate) fn insert_recovered(
        &mut self,
        seq: u64,
        subject: &str,
        size: u64,
        stored_at: Instant,
        body: B,
    ) -> bool {
        self.last_seq = self.last_seq.max(seq);
        if seq < self.discard_floor {
            return false;
        }
        let mut holders = 0u32;
        for c in self.consumers.values_mut() {
            if c.pending.contains_key(&seq) {
                holders = holders.saturating_add(1);
            } else if seq >= c.cursor && c.config.matches(subject) {
                holders = holders.saturating_add(1);
                c.unseen += 1;
            }
        }
        if holders == 0 && !self.consumers.is_empty() {
            return false;
        }
        self.store(seq, subject, size, stored_at, holders, body);
        true
    }

    /// The lowest seq that may still be needed: the oldest held message, or
    /// the next seq when nothing is held. Storage below it can be deleted.
    pub(crate) fn retention_floor(&self) -> u64 {
        self.msgs
            .first_key()
            .unwrap_or(self.last_seq.saturating_add(1))
    }

    pub(crate) fn stats(&self) -> BusStats {
        BusStats {
            messages: self.msgs.len() as u64,
            bytes: self.bytes,
            published: self.published,
            rejected_full: self.rejected_full,
            rejected_too_large: self.rejected_too_large,
            discarded: self.discarded,
            last_seq: self.last_seq,
            consumers: self.consumers.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DiscardPolicy;

    /// `discard: old` with room reserved by a publish still being written
    /// (the segment backend's fsync window): deleting stored messages cannot
    /// make room, so nothing is deleted and the publish is refused.
    #[test]
    fn discard_old_deletes_nothing_when_reservations_fill_the_stream() {
        let limits = Limits {
            max_msgs: Some(2),
            discard: DiscardPolicy::Old,
            ..Limits::default()
        };
        let now = Instant::now();
        let mut stream: Stream<()> = Stream::new(limits, Arc::new(Notify::new()), now);
        stream.insert(1, "a", 10, now, ());
        stream.reserve(10);
        stream.reserve(10);
        assert!(matches!(
            stream.admit("a", 10, now),
            Err(Refusal::Full { .. })
        ));
        assert_eq!(
            stream.msgs.len(),
            1,
            "a held message was deleted for nothing"
        );
        assert_eq!(stream.stats().discarded, 0);

        // With one reservation gone, deleting the stored message does make room.
        stream.unreserve(10);
        assert!(matches!(stream.admit("a", 10, now), Ok(Admitted::Held)));
        assert_eq!(stream.stats().discarded, 1);
    }

    /// A delivery the backend could not hand out (a failed read) is taken
    /// back: with `max_deliver: 1` the message is still delivered later, as
    /// its first delivery, and it is not counted as a redelivery.
    #[test]
    fn undeliver_does_not_spend_a_delivery() {
        let now = Instant::now();
        let mut stream: Stream<()> = Stream::new(Limits::default(), Arc::new(Notify::new()), now);
        let mut config = crate::ConsumerConfig::new("c");
        config.max_deliver = Some(1);
        let (id, _) = stream.add_consumer(config, now).expect("consumer");
        stream.insert(1, "a", 10, now, ());
        let first = stream.take_batch(id, 10, now, |seq, _, n| (seq, n));
        assert_eq!(first, [(1, 1)]);
        stream.undeliver(id, 1, Duration::from_secs(1), now);
        assert!(stream
            .take_batch(id, 10, now, |seq, _, n| (seq, n))
            .is_empty());
        let later = now + Duration::from_secs(1);
        stream.sweep_consumer(id, later);
        let again = stream.take_batch(id, 10, later, |seq, _, n| (seq, n));
        assert_eq!(again, [(1, 1)]);
        assert_eq!(stream.consumer_stats(id, later).redelivered, 0);
        assert_eq!(stream.msgs.len(), 1, "the message must still be held");
    }
}
