//! Durable pull consumers of a [`Stream`]: cursor, pending set, redelivery
//! timers, `max_deliver` give-ups, `max_ack_pending` credit.
//!
//! A consumer's position is fully described by its cursor (every matching
//! message below it was delivered or released) and its pending set (the
//! delivered, unacked ones, at most `max_ack_pending`): that pair, in a
//! [`ConsumerSnapshot`], is what a durable backend persists.

use super::seq_map::SeqMap;
use super::{later, Slot, Stream};
use crate::{BusError, ConsumerConfig, ConsumerStats};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Identifies a consumer of one [`Stream`] for as long as it lives; never
/// reused after [`Stream::remove_consumer`].
pub(crate) type ConsumerId = u64;

/// The consumer a handle is bound to was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConsumerDeleted;

/// A delivered, unacked message of one consumer.
pub(crate) struct PendingEntry {
    pub deliveries: u32,
    /// When it becomes due for redelivery (ack_wait or nak delay); `None`
    /// while it waits in the consumer's `due` set.
    pub timer: Option<Instant>,
    /// Set by `nak` until redelivered; `in_progress` then has no effect.
    pub nakked: bool,
}

pub(crate) struct ConsumerState {
    pub config: ConsumerConfig,
    /// Wakes waiting fetches: new matching message, redelivery scheduled,
    /// credit freed, close.
    pub wake: Arc<Notify>,
    /// Messages with `seq >= cursor` that match the filter are not delivered yet.
    pub cursor: u64,
    /// Number of those (the consumer's lag).
    pub unseen: u64,
    /// Delivered and not yet acked; at most `max_ack_pending` entries.
    pub pending: BTreeMap<u64, PendingEntry>,
    /// `(due time, seq)` of pending entries with a timer.
    pub timers: BTreeSet<(Instant, u64)>,
    /// Pending entries due for redelivery (the redelivery set).
    pub due: BTreeSet<u64>,
    pub redelivered: u64,
    /// Cursor or pending set changed since the last [`Stream::snapshot`]
    /// (durable backends persist dirty consumers).
    pub dirty: bool,
}

/// What a durable backend persists of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerSnapshot {
    pub config: ConsumerConfig,
    pub cursor: u64,
    /// `(seq, deliveries)` of every delivered, unacked message.
    pub pending: Vec<(u64, u32)>,
}

impl ConsumerState {
    fn new(config: ConsumerConfig, cursor: u64) -> Self {
        ConsumerState {
            config,
            wake: Arc::new(Notify::new()),
            cursor,
            unseen: 0,
            pending: BTreeMap::new(),
            timers: BTreeSet::new(),
            due: BTreeSet::new(),
            redelivered: 0,
            dirty: true,
        }
    }

    /// Drops `entry`'s timer or redelivery-set membership.
    pub(crate) fn unschedule(&mut self, seq: u64, timer: Option<Instant>) {
        match timer {
            Some(at) => {
                self.timers.remove(&(at, seq));
            }
            None => {
                self.due.remove(&seq);
            }
        }
    }

    /// The oldest not-yet-delivered message this consumer holds; moves the
    /// cursor past messages its filter does not match on the way.
    fn first_unseen<B>(&mut self, msgs: &SeqMap<Slot<B>>) -> Option<u64> {
        if self.unseen == 0 {
            return None;
        }
        for (seq, m) in msgs.range_from(self.cursor) {
            if self.config.matches(&m.subject) {
                return Some(seq);
            }
            self.cursor = seq + 1;
        }
        None
    }

    /// With nothing unseen, every matching seq up to `last_seq` was delivered
    /// or released: moves the cursor past them all. Recovery re-holds log
    /// records at or above a restored cursor, so this keeps a message that
    /// was released while above the cursor (held only by a deleted
    /// consumer, or unwanted before this consumer existed) from coming back
    /// after a restart.
    fn skip_released(&mut self, last_seq: u64) {
        if self.unseen == 0 && self.cursor <= last_seq {
            self.cursor = last_seq.saturating_add(1);
            self.dirty = true;
        }
    }

    /// When this consumer's next redelivery timer fires.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }
}

impl<B> Stream<B> {
    /// Creates the durable consumer `config.name`, or binds to it if it
    /// already exists with the same configuration. Returns its id and its
    /// wake-up handle.
    pub(crate) fn add_consumer(
        &mut self,
        config: ConsumerConfig,
        now: Instant,
    ) -> Result<(ConsumerId, Arc<Notify>), BusError> {
        if let Some((&id, c)) = self.find_consumer(&config.name) {
            if c.config != config {
                return Err(BusError::ConsumerMismatch { name: config.name });
            }
            return Ok((id, Arc::clone(&c.wake)));
        }
        if let Some(max) = self.limits.max_consumers {
            if self.consumers.len() as u64 >= max {
                return Err(BusError::TooManyConsumers {
                    name: config.name,
                    max,
                });
            }
        }
        let first = self.consumers.is_empty();
        let cursor = self.msgs.first_key().unwrap_or(self.last_seq + 1);
        let mut unseen = 0;
        for m in self.msgs.values_mut() {
            if config.matches(&m.subject) {
                m.holders = m.holders.saturating_add(1);
                unseen += 1;
            }
        }
        let name = config.name.clone();
        let mut c = ConsumerState::new(config, cursor);
        c.unseen = unseen;
        c.skip_released(self.last_seq);
        let wake = Arc::clone(&c.wake);
        let id = self.push_consumer(c);
        if first {
            // Messages kept only because there was no consumer at all, and
            // which this one does not want either: nobody is interested.
            let orphans: Vec<u64> = self
                .msgs
                .iter()
                .filter(|(_, m)| m.holders == 0)
                .map(|(seq, _)| seq)
                .collect();
            if !orphans.is_empty() {
                tracing::debug!(
                    consumer = %name,
                    released = orphans.len(),
                    "released held messages that match no consumer"
                );
            }
            for seq in orphans {
                self.free(seq, now);
            }
        }
        Ok((id, wake))
    }

    /// Recovery: re-creates a consumer from its persisted position, before
    /// any message is re-held with [`Stream::insert_recovered`]. Its pending
    /// messages are due for redelivery at once (their deliveries count
    /// towards `max_deliver` as before; one that used them all is given up).
    /// Pending entries at or above the cursor cannot be genuine and are left
    /// to be delivered as new; those below the discard floor were discarded.
    /// Set [`Stream::discard_floor`] first.
    pub(crate) fn restore_consumer(
        &mut self,
        snapshot: ConsumerSnapshot,
        dirty: bool,
    ) -> ConsumerId {
        let ConsumerSnapshot {
            config,
            cursor,
            pending,
        } = snapshot;
        let mut c = ConsumerState::new(config, cursor);
        c.dirty = dirty;
        for (seq, deliveries) in pending {
            if seq >= cursor || seq < self.discard_floor {
                c.dirty = true;
                continue;
            }
            if c.config.max_deliver.is_some_and(|max| deliveries >= max) {
                // Its last allowed delivery was under way: the same give-up
                // as when its ack_wait runs out.
                tracing::warn!(
                    consumer = %c.config.name,
                    seq,
                    deliveries,
                    "max_deliver reached before the restart; message released without ack"
                );
                c.dirty = true;
                continue;
            }
            c.pending.insert(
                seq,
                PendingEntry {
                    deliveries,
                    timer: None,
                    nakked: false,
                },
            );
            c.due.insert(seq);
        }
        self.push_consumer(c)
    }

    fn push_consumer(&mut self, c: ConsumerState) -> ConsumerId {
        let id = self.next_consumer_id;
        self.next_consumer_id += 1;
        self.consumers.insert(id, c);
        id
    }

    /// The live consumer named `name`.
    pub(crate) fn find_consumer(&self, name: &str) -> Option<(&ConsumerId, &ConsumerState)> {
        self.consumers.iter().find(|(_, c)| c.config.name == name)
    }

    /// Deletes consumer `id`: its handles see [`ConsumerDeleted`] (waiting
    /// fetches are woken), and every message it held (delivered and
    /// unacked, or not yet delivered and matching its filter) is released
    /// as if it had acked it, so a message nobody else holds is freed.
    /// Costs one pass over the messages at or above its cursor. Returns
    /// its state, `None` if there is no such consumer.
    pub(crate) fn remove_consumer(
        &mut self,
        id: ConsumerId,
        now: Instant,
    ) -> Option<ConsumerState> {
        let c = self.consumers.remove(&id)?;
        // Pending seqs all lie below the cursor; every matching message at
        // or above it is one this consumer has not seen yet and holds.
        let unseen: Vec<u64> = self
            .msgs
            .range_from(c.cursor)
            .filter(|(_, m)| c.config.matches(&m.subject))
            .map(|(seq, _)| seq)
            .collect();
        for seq in c.pending.keys().copied().chain(unseen) {
            self.release_ref(seq, now);
        }
        c.wake.notify_waiters();
        Some(c)
    }

    /// Recovery: drops pending entries whose message is not held (lost to a
    /// corrupt region, or below the discard floor). Returns how many each
    /// consumer lost, by id (only non-zero counts).
    pub(crate) fn prune_missing_pending(&mut self) -> Vec<(ConsumerId, u64)> {
        let Stream {
            msgs, consumers, ..
        } = self;
        let mut lost = Vec::new();
        for (&id, c) in consumers.iter_mut() {
            let missing: Vec<u64> = c
                .pending
                .keys()
                .filter(|seq| !msgs.contains_key(seq))
                .copied()
                .collect();
            for seq in &missing {
                if let Some(p) = c.pending.remove(seq) {
                    c.unschedule(*seq, p.timer);
                }
            }
            if !missing.is_empty() {
                c.dirty = true;
                lost.push((id, missing.len() as u64));
            }
        }
        lost
    }

    /// The consumer's persisted form if it changed since the last call
    /// (`force`: in any case); clears its dirty flag.
    pub(crate) fn snapshot(&mut self, id: ConsumerId, force: bool) -> Option<ConsumerSnapshot> {
        let c = self.consumers.get_mut(&id)?;
        if !c.dirty && !force {
            return None;
        }
        c.dirty = false;
        Some(ConsumerSnapshot {
            config: c.config.clone(),
            cursor: c.cursor,
            pending: c.pending.iter().map(|(&s, p)| (s, p.deliveries)).collect(),
        })
    }

    /// Moves the consumer's due timers into its redelivery set, or releases
    /// the message if it already had `max_deliver` deliveries.
    pub(crate) fn sweep_consumer(&mut self, id: ConsumerId, now: Instant) {
        loop {
            let Some(c) = self.consumers.get_mut(&id) else {
                return;
            };
            let Some(&(at, seq)) = c.timers.first() else {
                return;
            };
            if at > now {
                return;
            }
            c.timers.remove(&(at, seq));
            let max_deliver = c.config.max_deliver;
            let Some(p) = c.pending.get_mut(&seq) else {
                continue;
            };
            if max_deliver.is_some_and(|max| p.deliveries >= max) {
                let deliveries = p.deliveries;
                c.pending.remove(&seq);
                c.dirty = true;
                tracing::warn!(
                    consumer = %c.config.name,
                    seq,
                    deliveries,
                    "max_deliver reached; message released without ack"
                );
                c.wake.notify_waiters();
                self.release_ref(seq, now);
            } else {
                p.timer = None;
                c.due.insert(seq);
            }
        }
    }

    /// Hands out up to `max` messages to consumer `id` and marks them
    /// delivered: due redeliveries first (sequence order), then new messages,
    /// the latter only while `max_ack_pending` leaves credit. `make` turns
    /// each `(seq, message, delivery count)` into what the caller returns.
    pub(crate) fn take_batch<T>(
        &mut self,
        id: ConsumerId,
        max: usize,
        now: Instant,
        mut make: impl FnMut(u64, &Slot<B>, u32) -> T,
    ) -> Vec<T> {
        let Stream {
            msgs,
            consumers,
            last_seq,
            ..
        } = self;
        let Some(c) = consumers.get_mut(&id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let ack_deadline = later(now, c.config.ack_wait);
        while out.len() < max {
            let Some(seq) = c.due.pop_first() else {
                break;
            };
            let Some(m) = msgs.get(&seq) else {
                // Not reachable: removing a message drops its pending entries.
                c.pending.remove(&seq);
                continue;
            };
            let Some(p) = c.pending.get_mut(&seq) else {
                continue;
            };
            // 0 deliveries: a first delivery taken back by `undeliver`.
            if p.deliveries > 0 {
                c.redelivered += 1;
            }
            p.deliveries = p.deliveries.saturating_add(1);
            p.nakked = false;
            p.timer = Some(ack_deadline);
            c.timers.insert((ack_deadline, seq));
            c.dirty = true;
            out.push(make(seq, m, p.deliveries));
        }
        let credit = c.config.max_ack_pending.saturating_sub(c.pending.len());
        let mut want = (max - out.len()).min(credit);
        if want > 0 && c.unseen > 0 {
            for (seq, m) in msgs.range_from(c.cursor) {
                if want == 0 {
                    break;
                }
                c.cursor = seq + 1;
                if !c.config.matches(&m.subject) {
                    continue;
                }
                c.pending.insert(
                    seq,
                    PendingEntry {
                        deliveries: 1,
                        timer: Some(ack_deadline),
                        nakked: false,
                    },
                );
                c.timers.insert((ack_deadline, seq));
                c.unseen = c.unseen.saturating_sub(1);
                c.dirty = true;
                want -= 1;
                out.push(make(seq, m, 1));
            }
        }
        c.skip_released(*last_seq);
        out
    }

    /// `ack` / `term`: consumer `id` releases `seq` for good.
    pub(crate) fn settle(&mut self, id: ConsumerId, seq: u64, now: Instant) {
        let Some(c) = self.consumers.get_mut(&id) else {
            return;
        };
        let Some(p) = c.pending.remove(&seq) else {
            return;
        };
        c.unschedule(seq, p.timer);
        c.dirty = true;
        c.wake.notify_waiters();
        self.release_ref(seq, now);
    }

    /// Takes back a delivery `take_batch` counted but the caller could not
    /// hand out (the backend failed to read the message): the delivery does
    /// not count against `max_deliver` or as a redelivery, and the message is
    /// due again after `retry_in`.
    pub(crate) fn undeliver(&mut self, id: ConsumerId, seq: u64, retry_in: Duration, now: Instant) {
        let Some(c) = self.consumers.get_mut(&id) else {
            return;
        };
        let Some(p) = c.pending.get_mut(&seq) else {
            return;
        };
        if p.deliveries > 1 {
            c.redelivered = c.redelivered.saturating_sub(1);
        }
        p.deliveries = p.deliveries.saturating_sub(1);
        let old_timer = p.timer;
        let at = later(now, retry_in);
        p.timer = Some(at);
        c.unschedule(seq, old_timer);
        c.timers.insert((at, seq));
        c.dirty = true;
        c.wake.notify_waiters();
    }

    pub(crate) fn nak(&mut self, id: ConsumerId, seq: u64, delay: Duration, now: Instant) {
        let Some(c) = self.consumers.get_mut(&id) else {
            return;
        };
        let max_deliver = c.config.max_deliver;
        let Some(p) = c.pending.get_mut(&seq) else {
            return;
        };
        let (old_timer, deliveries) = (p.timer, p.deliveries);
        if max_deliver.is_some_and(|max| deliveries >= max) {
            c.pending.remove(&seq);
            c.unschedule(seq, old_timer);
            c.dirty = true;
            tracing::warn!(
                consumer = %c.config.name,
                seq,
                deliveries,
                "nak after max_deliver deliveries; message released without ack"
            );
            c.wake.notify_waiters();
            self.release_ref(seq, now);
            return;
        }
        p.nakked = true;
        if delay.is_zero() {
            p.timer = None;
        } else {
            p.timer = Some(later(now, delay));
        }
        let new_timer = p.timer;
        c.unschedule(seq, old_timer);
        match new_timer {
            Some(at) => {
                c.timers.insert((at, seq));
            }
            None => {
                c.due.insert(seq);
            }
        }
        // A waiting fetch may have to wake earlier than it planned.
        c.wake.notify_waiters();
    }

    pub(crate) fn in_progress(&mut self, id: ConsumerId, seq: u64, now: Instant) {
        let Some(c) = self.consumers.get_mut(&id) else {
            return;
        };
        let at = later(now, c.config.ack_wait);
        let Some(p) = c.pending.get_mut(&seq) else {
            return;
        };
        if p.nakked {
            return;
        }
        let old_timer = p.timer;
        p.timer = Some(at);
        c.unschedule(seq, old_timer);
        c.timers.insert((at, seq));
    }

    /// Lag, pending acks and the age of the oldest unacked message of
    /// consumer `id` (call [`maintain`](Stream::maintain) first).
    pub(crate) fn consumer_stats(&mut self, id: ConsumerId, now: Instant) -> ConsumerStats {
        let Stream {
            msgs, consumers, ..
        } = self;
        let Some(c) = consumers.get_mut(&id) else {
            return ConsumerStats::default();
        };
        let oldest_pending = c.pending.keys().next().copied();
        let oldest_unseen = c.first_unseen(msgs);
        let oldest = match (oldest_pending, oldest_unseen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        ConsumerStats {
            pending: c.unseen,
            ack_pending: c.pending.len() as u64,
            redelivered: c.redelivered,
            oldest_unacked_age: oldest
                .and_then(|seq| msgs.get(&seq))
                .map(|m| now.saturating_duration_since(m.stored_at)),
        }
    }
}
