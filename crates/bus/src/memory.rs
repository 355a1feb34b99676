//! The in-memory [`Bus`] backend: one process, no disk.
//!
//! A thin layer over the shared stream state machine
//! (the private `stream` module), storing each held message whole. The
//! semantics below are the stream's; this module's tests are their
//! behavioural specification (paused time, exact timings), and the
//! backend-neutral conformance suite runs against it too.
//!
//! # What it guarantees
//!
//! - **Ordering and sequence numbers.** Every accepted message gets the next
//!   stream sequence number, starting at 1 (`BusStats::last_seq`), and new
//!   messages reach a consumer in sequence order.
//! - **Typed refusals, never blocking.** [`Bus::publish`] answers at once:
//!   `TooLarge` (over `max_msg_size`, or over `max_bytes` so it could never
//!   fit), `Full` (at `max_msgs` / `max_bytes` with `discard: new`, with a
//!   `retry_after` estimated from the measured drain rate) or `Closed`. Every
//!   refusal hands the message back and is counted.
//! - **Retention by interest.** A message stays until every current consumer
//!   has released it (acked, terminated, or given up after `max_deliver`), or
//!   its subject matches no consumer's filter. With no consumer at all,
//!   messages stay until a limit removes them. Queue depth
//!   (`BusStats::messages` / `bytes`) is exactly the set of messages still
//!   held, and is what `max_msgs` / `max_bytes` apply to.
//! - **At-least-once delivery per consumer** while the process lives: a
//!   delivered message is redelivered after `ack_wait` or a `nak` delay until
//!   it is acked, terminated, or has been delivered `max_deliver` times.
//!   Fetching is cancel-safe: a message counts as delivered only when
//!   [`Consumer::fetch`] returns it.
//! - **Deleting a consumer** ([`Bus::delete_consumer`]) releases every
//!   message it held as if it had acked it; its handles' fetches then fail
//!   with [`BusError::ConsumerDeleted`], and binding the name again creates
//!   a new consumer.
//! - **Bounded memory.** Held messages are bounded by [`Limits`]; released
//!   messages are removed at once (wherever they are in the stream). Each
//!   consumer keeps a cursor plus one entry per delivered, unacked message,
//!   so its state is bounded by `max_ack_pending`, not by stream length.
//!
//! # What it does not guarantee
//!
//! - **Durability.** Everything lives in this process: a crash or restart
//!   loses every message and every consumer position. Use
//!   [`SegmentBus`](crate::segment_bus::SegmentBus) wherever guarantee 1 of
//!   the design ("accepted = held durably") matters.
//! - **Delivery of dropped messages.** `discard: old` and `max_age` delete
//!   messages even if a consumer never saw them (counted in
//!   `BusStats::discarded` and logged), and a message that exhausts
//!   `max_deliver` is released for that consumer (logged).
//! - **Messages published before a consumer existed, for other consumers.**
//!   A new consumer starts at the oldest message still held, so it only sees
//!   what earlier consumers have not released yet. When the *first* consumer
//!   is created, held messages its filter does not match are released (nobody
//!   is interested in them any more).
//! - **Exact timers.** Expiry (`max_age`) and `max_deliver` give-ups are
//!   applied lazily, whenever the bus is touched (publish, fetch, stats,
//!   `wait_for_space`), not by a background task.
//!
//! All timing uses [`tokio::time::Instant`], so tests can run on paused time.

use crate::stream::{ConsumerId, Shared, Slot};
#[cfg(test)]
use crate::stream::{IDLE_RETRY_AFTER, MAX_RETRY_AFTER, MIN_RETRY_AFTER};
#[cfg(test)]
use crate::DiscardPolicy;
use crate::{
    Bus, BusError, BusStats, Consumer, ConsumerConfig, ConsumerStats, Headers, Limits, Message,
    PublishError, Received,
};
use async_trait::async_trait;
use bytes::Bytes;
#[cfg(test)]
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// An in-process, non-durable [`Bus`]. See the [module docs](self).
pub struct MemoryBus {
    shared: Arc<Shared<Body>>,
}

impl MemoryBus {
    /// An empty bus enforcing `limits`.
    pub fn new(limits: Limits) -> Arc<MemoryBus> {
        Arc::new(MemoryBus {
            shared: Arc::new(Shared::new(limits)),
        })
    }
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// What the memory backend keeps of a held message besides the stream's
/// common fields: all of it.
struct Body {
    headers: Headers,
    payload: Bytes,
    published_at: SystemTime,
}

fn received(seq: u64, m: &Slot<Body>, delivery_count: u32) -> Received {
    Received {
        seq,
        subject: m.subject.to_string(),
        headers: m.body.headers.clone(),
        payload: m.body.payload.clone(),
        published_at: m.body.published_at,
        delivery_count,
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, message: Message) -> Result<u64, PublishError> {
        let size = message.size() as u64;
        let mut st = self.shared.lock();
        if st.closed {
            return Err(PublishError::Closed { message });
        }
        let now = Instant::now();
        st.maintain(now);
        if let Err(refusal) = st.admit(&message.subject, size, now) {
            return Err(refusal.into_error(message));
        }
        let seq = st.last_seq + 1;
        let Message {
            subject,
            headers,
            payload,
        } = message;
        let body = Body {
            headers,
            payload,
            published_at: SystemTime::now(),
        };
        st.insert(seq, &subject, size, now, body);
        Ok(seq)
    }

    async fn consumer(&self, config: ConsumerConfig) -> Result<Arc<dyn Consumer>, BusError> {
        let mut st = self.shared.lock();
        if st.closed {
            return Err(BusError::Closed);
        }
        let now = Instant::now();
        st.maintain(now);
        let name = config.name.clone();
        let (id, wake) = st.add_consumer(config, now)?;
        Ok(Arc::new(MemoryConsumer {
            shared: Arc::clone(&self.shared),
            id,
            name,
            wake,
        }))
    }

    async fn delete_consumer(&self, name: &str) -> Result<bool, BusError> {
        let mut st = self.shared.lock();
        let Some((&id, _)) = st.find_consumer(name) else {
            return Ok(false);
        };
        st.remove_consumer(id, Instant::now());
        Ok(true)
    }

    async fn wait_for_space(&self, timeout: Duration) {
        self.shared.wait_for_space(timeout).await
    }

    fn limits(&self) -> Limits {
        self.shared.limits
    }

    fn stats(&self) -> BusStats {
        let mut st = self.shared.lock();
        st.maintain(Instant::now());
        st.stats()
    }

    async fn close(&self) {
        self.shared.lock().close();
    }
}

/// A handle on one durable consumer of a [`MemoryBus`]; handles bound to
/// the same name share its state.
struct MemoryConsumer {
    shared: Arc<Shared<Body>>,
    id: ConsumerId,
    name: String,
    wake: Arc<Notify>,
}

#[async_trait]
impl Consumer for MemoryConsumer {
    fn name(&self) -> &str {
        &self.name
    }

    async fn fetch(&self, max: usize, max_wait: Duration) -> Result<Vec<Received>, BusError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let id = self.id;
        self.shared
            .fetch(id, &self.wake, max_wait, |st, now| {
                st.take_batch(id, max, now, received)
            })
            .await
            .map_err(|_| BusError::ConsumerDeleted {
                name: self.name.clone(),
            })
    }

    async fn ack(&self, seq: u64) -> Result<(), BusError> {
        self.shared.settle(self.id, seq);
        Ok(())
    }

    async fn nak(&self, seq: u64, delay: Duration) -> Result<(), BusError> {
        self.shared.nak(self.id, seq, delay);
        Ok(())
    }

    async fn in_progress(&self, seq: u64) -> Result<(), BusError> {
        self.shared.in_progress(self.id, seq);
        Ok(())
    }

    async fn term(&self, seq: u64) -> Result<(), BusError> {
        self.shared.settle(self.id, seq);
        Ok(())
    }

    fn stats(&self) -> ConsumerStats {
        self.shared.consumer_stats(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, sleep};

    const NOW: Duration = Duration::ZERO;

    fn msg(subject: &str, payload: &str) -> Message {
        Message {
            subject: subject.to_string(),
            headers: vec![("ce-id".to_string(), "1".to_string())],
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    /// A message of exactly `size` bytes on subject `s`.
    fn sized(size: usize) -> Message {
        Message {
            subject: "s".to_string(),
            headers: Vec::new(),
            payload: Bytes::from(vec![b'x'; size - 1]),
        }
    }

    fn unlimited() -> Limits {
        Limits {
            max_msgs: None,
            max_bytes: None,
            max_msg_size: None,
            max_consumers: None,
            max_age: None,
            discard: DiscardPolicy::New,
        }
    }

    fn seqs(batch: &[Received]) -> Vec<u64> {
        batch.iter().map(|r| r.seq).collect()
    }

    fn counts(batch: &[Received]) -> Vec<u32> {
        batch.iter().map(|r| r.delivery_count).collect()
    }

    async fn publish_n(bus: &MemoryBus, n: usize) {
        for i in 0..n {
            bus.publish(msg("s", &i.to_string()))
                .await
                .expect("publish");
        }
    }

    async fn fetch_now(c: &Arc<dyn Consumer>, max: usize) -> Vec<Received> {
        c.fetch(max, NOW).await.expect("fetch")
    }

    #[tokio::test(start_paused = true)]
    async fn publish_fetch_ack_roundtrip() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        assert_eq!(c.name(), "c");
        let before = SystemTime::now();
        assert_eq!(bus.publish(msg("a", "one")).await.unwrap(), 1);
        assert_eq!(bus.publish(msg("b", "two")).await.unwrap(), 2);
        assert_eq!(bus.publish(msg("a", "three")).await.unwrap(), 3);

        let batch = fetch_now(&c, 10).await;
        assert_eq!(seqs(&batch), vec![1, 2, 3]);
        assert_eq!(counts(&batch), vec![1, 1, 1]);
        assert_eq!(batch[0].subject, "a");
        assert_eq!(batch[1].payload, Bytes::from_static(b"two"));
        assert_eq!(batch[2].header("CE-ID"), Some("1"));
        assert!(batch[0].published_at >= before);

        let stats = bus.stats();
        assert_eq!(stats.messages, 3);
        // subject + header ("ce-id", "1") + payload
        assert_eq!(stats.bytes, (1 + 6 + 3) + (1 + 6 + 3) + (1 + 6 + 5));
        assert_eq!(stats.published, 3);
        assert_eq!(stats.last_seq, 3);
        assert_eq!(stats.consumers, 1);

        for seq in [2, 1, 3] {
            c.ack(seq).await.unwrap();
        }
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.bytes), (0, 0));
        assert!(fetch_now(&c, 10).await.is_empty());
        assert_eq!(bus.publish(msg("a", "four")).await.unwrap(), 4);
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![4]);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_respects_max_and_keeps_order() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 5).await;
        assert_eq!(seqs(&fetch_now(&c, 2).await), vec![1, 2]);
        assert_eq!(seqs(&fetch_now(&c, 2).await), vec![3, 4]);
        assert_eq!(seqs(&fetch_now(&c, 2).await), vec![5]);
        assert!(c.fetch(0, Duration::from_secs(5)).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn ack_is_idempotent_and_ignores_unknown_seqs() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 2).await;
        fetch_now(&c, 1).await;
        c.ack(1).await.unwrap();
        c.ack(1).await.unwrap();
        c.ack(999).await.unwrap();
        // Seq 2 was never delivered: acking it does not skip it.
        c.ack(2).await.unwrap();
        c.nak(999, NOW).await.unwrap();
        c.term(999).await.unwrap();
        c.in_progress(999).await.unwrap();
        assert_eq!(bus.stats().messages, 1);
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_msgs_full_returns_the_message() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(2),
            ..unlimited()
        });
        publish_n(&bus, 2).await;
        let refused = msg("s", "third");
        match bus.publish(refused.clone()).await {
            Err(PublishError::Full {
                message,
                limit,
                retry_after,
            }) => {
                assert_eq!(message, refused);
                assert_eq!(limit, "max_msgs");
                assert_eq!(retry_after, IDLE_RETRY_AFTER);
            }
            other => panic!("expected Full, got {other:?}"),
        }
        let stats = bus.stats();
        assert_eq!(stats.rejected_full, 1);
        assert_eq!(stats.messages, 2);
        assert_eq!(stats.published, 2);
        assert_eq!(stats.last_seq, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_full() {
        let bus = MemoryBus::new(Limits {
            max_bytes: Some(10),
            ..unlimited()
        });
        bus.publish(sized(6)).await.unwrap();
        bus.publish(sized(4)).await.unwrap();
        let err = bus.publish(sized(1)).await.unwrap_err();
        assert!(
            matches!(
                err,
                PublishError::Full {
                    limit: "max_bytes",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.into_message(), sized(1));
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.bytes), (2, 10));
        assert_eq!(stats.rejected_full, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_is_refused_and_counted() {
        let bus = MemoryBus::new(Limits {
            max_msg_size: Some(10),
            max_bytes: Some(100),
            ..unlimited()
        });
        bus.publish(sized(10)).await.unwrap();
        match bus.publish(sized(11)).await {
            Err(PublishError::TooLarge { message, size, max }) => {
                assert_eq!(message, sized(11));
                assert_eq!((size, max), (11, 10));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        // Larger than max_bytes can never fit: too large, not full.
        let bus = MemoryBus::new(Limits {
            max_bytes: Some(8),
            ..unlimited()
        });
        let err = bus.publish(sized(9)).await.unwrap_err();
        assert!(
            matches!(
                err,
                PublishError::TooLarge {
                    size: 9,
                    max: 8,
                    ..
                }
            ),
            "{err:?}"
        );
        let stats = bus.stats();
        assert_eq!(stats.rejected_too_large, 1);
        assert_eq!(stats.rejected_full, 0);
        assert_eq!(stats.published, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn discard_old_drops_oldest_and_counts() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(3),
            discard: DiscardPolicy::Old,
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 3).await;
        // Seq 1 is out with the consumer when it gets discarded.
        assert_eq!(seqs(&fetch_now(&c, 1).await), vec![1]);
        assert_eq!(bus.publish(msg("s", "4")).await.unwrap(), 4);
        assert_eq!(bus.publish(msg("s", "5")).await.unwrap(), 5);
        let stats = bus.stats();
        assert_eq!(stats.messages, 3);
        assert_eq!(stats.discarded, 2);
        assert_eq!(stats.rejected_full, 0);
        let cs = c.stats();
        assert_eq!((cs.pending, cs.ack_pending), (3, 0));
        c.ack(1).await.unwrap();
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3, 4, 5]);
        // The discarded in-flight message is never redelivered.
        advance(Duration::from_secs(31)).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3, 4, 5]);
        assert_eq!(counts(&fetch_now(&c, 10).await), Vec::<u32>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn discard_old_by_bytes() {
        let bus = MemoryBus::new(Limits {
            max_bytes: Some(10),
            discard: DiscardPolicy::Old,
            ..unlimited()
        });
        bus.publish(sized(4)).await.unwrap();
        bus.publish(sized(4)).await.unwrap();
        bus.publish(sized(5)).await.unwrap();
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.bytes, stats.discarded), (2, 9, 1));
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn depth_drops_only_when_all_consumers_acked() {
        let bus = MemoryBus::new(unlimited());
        let a = bus.consumer(ConsumerConfig::new("a")).await.unwrap();
        let b = bus.consumer(ConsumerConfig::new("b")).await.unwrap();
        publish_n(&bus, 2).await;
        assert_eq!(seqs(&fetch_now(&a, 10).await), vec![1, 2]);
        a.ack(1).await.unwrap();
        a.ack(2).await.unwrap();
        assert_eq!(bus.stats().messages, 2);
        assert_eq!(seqs(&fetch_now(&b, 10).await), vec![1, 2]);
        b.ack(2).await.unwrap();
        // Released out of order: freed at once, even behind seq 1.
        assert_eq!(bus.stats().messages, 1);
        b.ack(1).await.unwrap();
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.bytes), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn filter_subjects() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("orders");
        cfg.filter_subjects = vec!["webhook.orders".into(), "webhook.refunds".into()];
        let orders = bus.consumer(cfg).await.unwrap();
        let mut cfg = ConsumerConfig::new("users");
        cfg.filter_subjects = vec!["webhook.users".into()];
        let users = bus.consumer(cfg).await.unwrap();
        let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();

        bus.publish(msg("webhook.orders", "1")).await.unwrap();
        bus.publish(msg("webhook.users", "2")).await.unwrap();
        bus.publish(msg("webhook.refunds", "3")).await.unwrap();
        bus.publish(msg("webhook.other", "4")).await.unwrap();

        assert_eq!(orders.stats().pending, 2);
        assert_eq!(users.stats().pending, 1);
        assert_eq!(seqs(&fetch_now(&orders, 10).await), vec![1, 3]);
        assert_eq!(seqs(&fetch_now(&users, 10).await), vec![2]);
        let batch = fetch_now(&all, 10).await;
        assert_eq!(seqs(&batch), vec![1, 2, 3, 4]);
        for r in &batch {
            all.ack(r.seq).await.unwrap();
        }
        // "all" released everything; the others still hold their subjects.
        assert_eq!(bus.stats().messages, 3);
        users.ack(2).await.unwrap();
        orders.ack(1).await.unwrap();
        orders.ack(3).await.unwrap();
        assert_eq!(bus.stats().messages, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn subjects_nobody_wants_are_not_held() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(1),
            ..unlimited()
        });
        // No consumer at all: messages stay.
        bus.publish(msg("a", "1")).await.unwrap();
        bus.publish(msg("b", "2")).await.unwrap_err();
        assert_eq!(bus.stats().messages, 1);
        let mut cfg = ConsumerConfig::new("b-only");
        cfg.filter_subjects = vec!["b".into()];
        let c = bus.consumer(cfg).await.unwrap();
        // The first consumer does not want "a": released, not discarded.
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.discarded), (0, 0));
        // Unwanted subjects are accepted without taking room.
        assert_eq!(bus.publish(msg("b", "3")).await.unwrap(), 2);
        assert_eq!(bus.publish(msg("a", "4")).await.unwrap(), 3);
        assert_eq!(bus.stats().messages, 1);
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_consumer_starts_at_first_held_message() {
        let bus = MemoryBus::new(unlimited());
        publish_n(&bus, 2).await;
        let a = bus.consumer(ConsumerConfig::new("a")).await.unwrap();
        publish_n(&bus, 1).await;
        assert_eq!(seqs(&fetch_now(&a, 1).await), vec![1]);
        a.ack(1).await.unwrap();
        let b = bus.consumer(ConsumerConfig::new("b")).await.unwrap();
        assert_eq!(b.stats().pending, 2);
        assert_eq!(seqs(&fetch_now(&b, 10).await), vec![2, 3]);
        assert_eq!(seqs(&fetch_now(&a, 10).await), vec![2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_ack_pending_caps_a_fetch() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.max_ack_pending = 2;
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 5).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1, 2]);
        assert!(fetch_now(&c, 10).await.is_empty());
        c.ack(1).await.unwrap();
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3]);
        // Redeliveries need no new credit (they already hold one).
        c.nak(2, NOW).await.unwrap();
        let batch = fetch_now(&c, 10).await;
        assert_eq!((seqs(&batch), counts(&batch)), (vec![2], vec![2]));
        let cs = c.stats();
        assert_eq!((cs.pending, cs.ack_pending), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn ack_wait_expiry_redelivers() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.ack_wait = Duration::from_secs(10);
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 3).await;
        assert_eq!(seqs(&fetch_now(&c, 2).await), vec![1, 2]);
        advance(Duration::from_secs(9)).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3]);
        advance(Duration::from_secs(1)).await;
        // Redeliveries first, in sequence order, before anything new.
        publish_n(&bus, 1).await;
        let batch = fetch_now(&c, 10).await;
        assert_eq!(seqs(&batch), vec![1, 2, 4]);
        assert_eq!(counts(&batch), vec![2, 2, 1]);
        assert_eq!(c.stats().redelivered, 2);
        // A fresh ack_wait starts with each redelivery.
        advance(Duration::from_secs(9)).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3]);
        assert_eq!(counts(&fetch_now(&c, 10).await), Vec::<u32>::new());
        advance(Duration::from_secs(1)).await;
        assert_eq!(counts(&fetch_now(&c, 10).await), vec![3, 3, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_waits_for_a_redelivery_timer() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.ack_wait = Duration::from_secs(10);
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 1).await;
        fetch_now(&c, 1).await;
        let start = Instant::now();
        let batch = c.fetch(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
        assert_eq!(counts(&batch), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn in_progress_resets_ack_wait() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.ack_wait = Duration::from_secs(10);
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 1).await;
        fetch_now(&c, 1).await;
        advance(Duration::from_secs(8)).await;
        c.in_progress(1).await.unwrap();
        advance(Duration::from_secs(9)).await;
        assert!(fetch_now(&c, 10).await.is_empty());
        advance(Duration::from_secs(1)).await;
        assert_eq!(counts(&fetch_now(&c, 10).await), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn nak_with_delay_and_without() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 2).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1, 2]);
        c.nak(1, Duration::from_secs(5)).await.unwrap();
        c.nak(2, NOW).await.unwrap();
        let batch = fetch_now(&c, 10).await;
        assert_eq!((seqs(&batch), counts(&batch)), (vec![2], vec![2]));
        advance(Duration::from_secs(4)).await;
        // in_progress does not cancel a nak.
        c.in_progress(1).await.unwrap();
        assert!(fetch_now(&c, 10).await.is_empty());
        advance(Duration::from_secs(1)).await;
        let batch = fetch_now(&c, 10).await;
        assert_eq!((seqs(&batch), counts(&batch)), (vec![1], vec![2]));
        let cs = c.stats();
        assert_eq!((cs.ack_pending, cs.redelivered), (2, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn nak_wakes_a_waiting_fetch() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 1).await;
        fetch_now(&c, 1).await;
        let c2 = Arc::clone(&c);
        tokio::spawn(async move {
            sleep(Duration::from_secs(1)).await;
            c2.nak(1, Duration::from_secs(2)).await.unwrap();
        });
        let start = Instant::now();
        let batch = c.fetch(10, Duration::from_secs(60)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        assert_eq!((seqs(&batch), counts(&batch)), (vec![1], vec![2]));
    }

    #[tokio::test(start_paused = true)]
    async fn ack_frees_credit_for_a_waiting_fetch() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.max_ack_pending = 1;
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 2).await;
        assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1]);
        let c2 = Arc::clone(&c);
        tokio::spawn(async move {
            sleep(Duration::from_secs(1)).await;
            c2.ack(1).await.unwrap();
        });
        let start = Instant::now();
        let batch = c.fetch(10, Duration::from_secs(20)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        assert_eq!(seqs(&batch), vec![2]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_deliver_releases_the_message() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.ack_wait = Duration::from_secs(10);
        cfg.max_deliver = Some(2);
        let c = bus.consumer(cfg).await.unwrap();
        publish_n(&bus, 2).await;
        assert_eq!(counts(&fetch_now(&c, 10).await), vec![1, 1]);
        advance(Duration::from_secs(10)).await;
        assert_eq!(counts(&fetch_now(&c, 10).await), vec![2, 2]);
        // Seq 1 by ack_wait expiry, seq 2 by nak: both given up.
        c.nak(2, NOW).await.unwrap();
        assert_eq!(bus.stats().messages, 1);
        advance(Duration::from_secs(10)).await;
        assert!(fetch_now(&c, 10).await.is_empty());
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.discarded), (0, 0));
        let cs = c.stats();
        assert_eq!((cs.ack_pending, cs.redelivered), (0, 2));
        assert_eq!(cs.oldest_unacked_age, None);
    }

    #[tokio::test(start_paused = true)]
    async fn term_releases_without_redelivery() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 1).await;
        fetch_now(&c, 1).await;
        c.term(1).await.unwrap();
        assert_eq!(bus.stats().messages, 0);
        advance(Duration::from_secs(60)).await;
        assert!(fetch_now(&c, 10).await.is_empty());
        assert_eq!(c.stats(), ConsumerStats::default());
    }

    #[tokio::test(start_paused = true)]
    async fn binding_twice_shares_state() {
        let bus = MemoryBus::new(unlimited());
        let one = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        let two = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        assert_eq!(bus.stats().consumers, 1);
        publish_n(&bus, 2).await;
        assert_eq!(seqs(&fetch_now(&one, 1).await), vec![1]);
        assert_eq!(seqs(&fetch_now(&two, 10).await), vec![2]);
        two.ack(1).await.unwrap();
        assert_eq!(bus.stats().messages, 1);
        assert_eq!(one.stats(), two.stats());
        assert_eq!(one.stats().ack_pending, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn rebinding_with_another_config_is_a_mismatch() {
        let bus = MemoryBus::new(unlimited());
        bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        let mut cfg = ConsumerConfig::new("c");
        cfg.ack_wait = Duration::from_secs(5);
        let err = bus.consumer(cfg).await.err().expect("mismatch");
        assert!(
            matches!(&err, BusError::ConsumerMismatch { name } if name == "c"),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn too_many_consumers() {
        let bus = MemoryBus::new(Limits {
            max_consumers: Some(1),
            ..unlimited()
        });
        bus.consumer(ConsumerConfig::new("a")).await.unwrap();
        let err = bus
            .consumer(ConsumerConfig::new("b"))
            .await
            .err()
            .expect("too many");
        assert!(
            matches!(&err, BusError::TooManyConsumers { name, max: 1 } if name == "b"),
            "{err:?}"
        );
        // Binding to an existing one is not a new consumer.
        bus.consumer(ConsumerConfig::new("a")).await.unwrap();
        assert_eq!(bus.stats().consumers, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_wakes_on_publish() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        let producer = Arc::clone(&bus);
        tokio::spawn(async move {
            sleep(Duration::from_secs(2)).await;
            producer.publish(msg("s", "late")).await.unwrap();
        });
        let start = Instant::now();
        let batch = c.fetch(10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(2));
        assert_eq!(seqs(&batch), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_times_out_empty() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.filter_subjects = vec!["wanted".into()];
        let c = bus.consumer(cfg).await.unwrap();
        bus.publish(msg("unwanted", "x")).await.unwrap();
        let start = Instant::now();
        let batch = c.fetch(10, Duration::from_secs(5)).await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_fetch_loses_nothing() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        tokio::select! {
            _ = c.fetch(10, Duration::from_secs(30)) => panic!("nothing to fetch"),
            _ = sleep(Duration::from_secs(1)) => {}
        }
        // A future created and dropped without being polled marks nothing.
        publish_n(&bus, 1).await;
        drop(c.fetch(10, NOW));
        let cs = c.stats();
        assert_eq!((cs.pending, cs.ack_pending), (1, 0));
        let batch = fetch_now(&c, 10).await;
        assert_eq!((seqs(&batch), counts(&batch)), (vec![1], vec![1]));
    }

    #[tokio::test(start_paused = true)]
    async fn close_behaviour() {
        let bus = MemoryBus::new(unlimited());
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        let waiting = Arc::clone(&c);
        let fetch = tokio::spawn(async move {
            let start = Instant::now();
            let batch = waiting.fetch(10, Duration::from_secs(30)).await.unwrap();
            (batch, Instant::now() - start)
        });
        sleep(Duration::from_secs(1)).await;
        publish_n(&bus, 1).await;
        let (batch, waited) = fetch.await.unwrap();
        assert_eq!((seqs(&batch), waited), (vec![1], Duration::from_secs(1)));

        let waiting = Arc::clone(&c);
        let fetch = tokio::spawn(async move {
            let start = Instant::now();
            let batch = waiting.fetch(10, Duration::from_secs(30)).await.unwrap();
            (batch, Instant::now() - start)
        });
        sleep(Duration::from_secs(1)).await;
        bus.close().await;
        let (batch, waited) = fetch.await.unwrap();
        assert!(batch.is_empty());
        assert_eq!(waited, Duration::from_secs(1));

        let refused = msg("s", "after close");
        match bus.publish(refused.clone()).await {
            Err(PublishError::Closed { message }) => assert_eq!(message, refused),
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(matches!(
            bus.consumer(ConsumerConfig::new("late")).await,
            Err(BusError::Closed)
        ));
        // Fetches return at once, even with messages still held.
        c.nak(1, NOW).await.unwrap();
        let start = Instant::now();
        assert!(c
            .fetch(10, Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(Instant::now() - start, Duration::ZERO);
        // Acks still settle in-flight work.
        c.ack(1).await.unwrap();
        assert_eq!(bus.stats().messages, 0);
        // wait_for_space does not wait on a closed bus.
        bus.wait_for_space(Duration::from_secs(30)).await;
        assert_eq!(Instant::now() - start, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_space_wakes_on_ack() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(1),
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 1).await;
        fetch_now(&c, 1).await;
        assert!(bus.publish(msg("s", "x")).await.is_err());
        let acker = Arc::clone(&c);
        tokio::spawn(async move {
            sleep(Duration::from_secs(3)).await;
            acker.ack(1).await.unwrap();
        });
        let start = Instant::now();
        bus.wait_for_space(Duration::from_secs(30)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(3));
        assert_eq!(bus.publish(msg("s", "x")).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_space_times_out() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(1),
            ..unlimited()
        });
        publish_n(&bus, 1).await;
        let start = Instant::now();
        bus.wait_for_space(Duration::from_secs(7)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_for_space_wakes_on_lazy_expiry() {
        let bus = MemoryBus::new(Limits {
            max_age: Some(Duration::from_secs(10)),
            ..unlimited()
        });
        publish_n(&bus, 1).await;
        let start = Instant::now();
        bus.wait_for_space(Duration::from_secs(60)).await;
        let waited = Instant::now() - start;
        assert!(
            waited > Duration::from_secs(10) && waited <= Duration::from_millis(10_001),
            "{waited:?}"
        );
        assert_eq!(bus.stats().messages, 0);
    }

    /// A bus at `max_msgs: 2` with one message drained at t = 0, full again.
    async fn full_after_one_release() -> (Arc<MemoryBus>, Arc<dyn Consumer>) {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(2),
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 2).await;
        fetch_now(&c, 1).await;
        c.ack(1).await.unwrap();
        publish_n(&bus, 1).await;
        (bus, c)
    }

    fn retry_after(err: PublishError) -> Duration {
        match err {
            PublishError::Full { retry_after, .. } => retry_after,
            other => panic!("expected Full, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_follows_the_drain_rate() {
        // One release in 4 s: 0.25 msg/s, one message needed: 4 s.
        let (bus, _c) = full_after_one_release().await;
        advance(Duration::from_secs(4)).await;
        let wait = retry_after(bus.publish(msg("s", "x")).await.unwrap_err());
        assert_eq!(wait, Duration::from_secs(4));
        // The release leaves the 10 s window: no rate, conservative default.
        advance(Duration::from_secs(7)).await;
        let wait = retry_after(bus.publish(msg("s", "x")).await.unwrap_err());
        assert_eq!(wait, IDLE_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_clamped() {
        // Fast drain: 50 msg/s would mean 20 ms; clamped up to 1 s.
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(50),
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 50).await;
        for r in fetch_now(&c, 50).await {
            c.ack(r.seq).await.unwrap();
        }
        publish_n(&bus, 50).await;
        let wait = retry_after(bus.publish(msg("s", "x")).await.unwrap_err());
        assert_eq!(wait, MIN_RETRY_AFTER);

        // Slow drain, big message: 10 messages of 10 bytes must go at one
        // per 9 s = 90 s; clamped down to 60 s.
        let bus = MemoryBus::new(Limits {
            max_bytes: Some(100),
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        for _ in 0..10 {
            bus.publish(sized(10)).await.unwrap();
        }
        fetch_now(&c, 1).await;
        c.ack(1).await.unwrap();
        bus.publish(sized(10)).await.unwrap();
        advance(Duration::from_secs(9)).await;
        let err = bus.publish(sized(100)).await.unwrap_err();
        assert!(matches!(
            err,
            PublishError::Full {
                limit: "max_bytes",
                ..
            }
        ));
        assert_eq!(retry_after(err), MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_stays_within_bounds() {
        let (bus, c) = full_after_one_release().await;
        for step in 0..30 {
            advance(Duration::from_millis(700)).await;
            if step % 3 == 0 {
                let r = fetch_now(&c, 1).await;
                if let Some(r) = r.first() {
                    c.ack(r.seq).await.unwrap();
                }
                let _ = bus.publish(msg("s", "refill")).await;
            }
            let wait = retry_after(bus.publish(msg("s", "x")).await.unwrap_err());
            assert!(
                (MIN_RETRY_AFTER..=MAX_RETRY_AFTER).contains(&wait),
                "{wait:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn max_age_expiry() {
        let bus = MemoryBus::new(Limits {
            max_age: Some(Duration::from_secs(60)),
            ..unlimited()
        });
        let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
        publish_n(&bus, 2).await;
        assert_eq!(seqs(&fetch_now(&c, 1).await), vec![1]);
        advance(Duration::from_secs(30)).await;
        publish_n(&bus, 1).await;
        advance(Duration::from_secs(30)).await;
        // Exactly max_age old is not older than max_age.
        assert_eq!(bus.stats().messages, 3);
        advance(Duration::from_millis(1)).await;
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.discarded), (1, 2));
        // Neither the in-flight seq 1 nor the unseen seq 2 is delivered.
        let cs = c.stats();
        assert_eq!((cs.pending, cs.ack_pending), (1, 0));
        assert_eq!(cs.oldest_unacked_age, Some(Duration::from_millis(30_001)));
        let batch = fetch_now(&c, 10).await;
        assert_eq!((seqs(&batch), counts(&batch)), (vec![3], vec![1]));
    }

    #[tokio::test(start_paused = true)]
    async fn consumer_stats() {
        let bus = MemoryBus::new(unlimited());
        let mut cfg = ConsumerConfig::new("c");
        cfg.filter_subjects = vec!["a".into()];
        cfg.ack_wait = Duration::from_secs(100);
        let c = bus.consumer(cfg).await.unwrap();
        assert_eq!(c.stats(), ConsumerStats::default());
        bus.publish(msg("a", "1")).await.unwrap();
        advance(Duration::from_secs(2)).await;
        bus.publish(msg("b", "2")).await.unwrap();
        bus.publish(msg("a", "3")).await.unwrap();
        advance(Duration::from_secs(3)).await;
        bus.publish(msg("a", "4")).await.unwrap();
        assert_eq!(
            c.stats(),
            ConsumerStats {
                pending: 3,
                ack_pending: 0,
                redelivered: 0,
                oldest_unacked_age: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(seqs(&fetch_now(&c, 2).await), vec![1, 3]);
        c.ack(1).await.unwrap();
        assert_eq!(
            c.stats(),
            ConsumerStats {
                pending: 1,
                ack_pending: 1,
                redelivered: 0,
                oldest_unacked_age: Some(Duration::from_secs(3)),
            }
        );
        c.nak(3, NOW).await.unwrap();
        fetch_now(&c, 10).await;
        c.ack(3).await.unwrap();
        advance(Duration::from_secs(1)).await;
        assert_eq!(
            c.stats(),
            ConsumerStats {
                pending: 0,
                ack_pending: 1,
                redelivered: 1,
                oldest_unacked_age: Some(Duration::from_secs(1)),
            }
        );
    }

    /// Real threads, real contention: every message reaches both consumers,
    /// the producer blocks on `wait_for_space`, and no wake-up is lost (a
    /// lost one would stall a 60 s wait and trip the 20 s timeout).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producer_and_consumers() {
        const N: u64 = 2_000;
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(16),
            ..unlimited()
        });
        let mut workers = Vec::new();
        for name in ["a", "b"] {
            let mut cfg = ConsumerConfig::new(name);
            cfg.max_ack_pending = 4;
            let c = bus.consumer(cfg).await.unwrap();
            workers.push(tokio::spawn(async move {
                let mut seen = BTreeSet::new();
                while (seen.len() as u64) < N {
                    for r in c.fetch(3, Duration::from_secs(60)).await.unwrap() {
                        seen.insert(r.seq);
                        c.ack(r.seq).await.unwrap();
                    }
                }
                seen
            }));
        }
        let producer = Arc::clone(&bus);
        let produce = tokio::spawn(async move {
            for i in 0..N {
                let mut m = msg("s", &i.to_string());
                loop {
                    match producer.publish(m).await {
                        Ok(_) => break,
                        Err(PublishError::Full { message, .. }) => {
                            m = message;
                            producer.wait_for_space(Duration::from_secs(60)).await;
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }
        });
        let all = tokio::time::timeout(Duration::from_secs(20), async {
            produce.await.unwrap();
            let mut sets = Vec::new();
            for w in workers {
                sets.push(w.await.unwrap());
            }
            sets
        })
        .await
        .expect("stalled: lost wake-up?");
        let expected: BTreeSet<u64> = (1..=N).collect();
        for seen in all {
            assert_eq!(seen, expected);
        }
        let stats = bus.stats();
        assert_eq!((stats.messages, stats.bytes, stats.published), (0, 0, N));
    }
}

/// The backend-neutral suite, in real time (the exact timings are checked
/// on paused time above).
#[cfg(test)]
mod conformance_tests {
    crate::conformance::conformance_suite!(crate::conformance::MemoryBackend);
}
