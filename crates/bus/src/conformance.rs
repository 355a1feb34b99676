//! The backend-neutral conformance suite: the [`Bus`] contract as async test
//! cases that take a [`Backend`] (a factory of fresh buses), so every
//! backend runs the same cases.
//!
//! A backend module generates one `#[tokio::test]` per case with
//! [`conformance_suite!`](crate::conformance::conformance_suite):
//!
//! ```ignore
//! #[cfg(test)]
//! mod conformance_tests {
//!     crate::conformance::conformance_suite!(crate::conformance::MemoryBackend);
//! }
//! ```
//!
//! The cases use **real time** with short durations (a few hundred ms) and
//! generous upper bounds: a durable backend does real I/O (the segment
//! log's writer is a std thread doing `fdatasync`), and under tokio's paused
//! time the runtime auto-advances the clock whenever every task is idle,
//! which it is while an append waits for that thread, so timers would fire
//! "early" in real terms and timing assertions would measure nothing. The
//! memory backend's own tests keep the exact paused-time checks.
//!
//! Cases assume a fresh bus per `open` and only what the trait promises:
//! seqs are compared relative to the ones `publish` returned.
//!
//! The JetStream backend runs the same cases against a real nats-server.
//! Its statistics are snapshots of a server that applies acks
//! asynchronously, so cases read statistics through
//! [`Backend::stats_when`] (exact at once on the embedded backends, refreshed
//! until they match on JetStream); where JetStream 2.9 documentedly behaves
//! otherwise ([`Quirks`]) the case checks that behaviour instead, never
//! nothing.

use crate::{
    Bus, BusError, BusStats, Consumer, ConsumerConfig, ConsumerStats, DiscardPolicy, Limits,
    Message, PublishError, Received,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Makes fresh, empty buses for the suite, and says where the backend
/// legitimately differs from the embedded ones (see [`Quirks`]).
#[async_trait]
pub(crate) trait Backend: Send + Sync {
    /// A new, empty bus enforcing `limits`.
    async fn open(&self, limits: Limits) -> Arc<dyn Bus>;

    /// What this backend does differently; the embedded backends do nothing
    /// differently.
    fn quirks(&self) -> Quirks {
        Quirks::NONE
    }

    /// `bus`'s statistics once `settled` holds. The embedded backends apply
    /// every call before it returns, so their figures are final at once and
    /// this is `bus.stats()` (the case then asserts on exact values). A
    /// backend whose statistics are a snapshot of a server that applies
    /// acks asynchronously refreshes until `settled` holds or a few seconds
    /// pass, and returns the last snapshot for the case to assert on.
    async fn stats_when(&self, bus: &Arc<dyn Bus>, _settled: &Settled<'_, BusStats>) -> BusStats {
        bus.stats()
    }

    /// [`stats_when`](Self::stats_when) for a consumer of `bus`.
    async fn consumer_stats_when(
        &self,
        _bus: &Arc<dyn Bus>,
        consumer: &Arc<dyn Consumer>,
        _settled: &Settled<'_, ConsumerStats>,
    ) -> ConsumerStats {
        consumer.stats()
    }

    /// Bytes `message` takes against `max_bytes` on a bus of this backend.
    fn stored_size(&self, message: &Message) -> u64 {
        message.size() as u64
    }
}

/// When statistics count as settled (see [`Backend::stats_when`]); an alias
/// so that `async_trait` leaves its higher-ranked lifetime alone.
pub(crate) type Settled<'a, T> = dyn Fn(&T) -> bool + Send + Sync + 'a;

/// Documented differences of a backend from the embedded ones; each case
/// that meets one says what it checks instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quirks {
    /// Messages published while the stream has no consumer are not kept
    /// (JetStream's interest retention drops them after the PubAck).
    pub drops_without_consumers: bool,
    /// `BusStats::bytes` counts the server's stored records, not
    /// [`Message::size`].
    pub server_bytes: bool,
    /// `BusStats::discarded` is always 0 (the server does not report it).
    pub no_discard_count: bool,
}

impl Quirks {
    pub(crate) const NONE: Quirks = Quirks {
        drops_without_consumers: false,
        server_bytes: false,
        no_discard_count: false,
    };
}

/// The memory backend, for the suite.
pub(crate) struct MemoryBackend;

#[async_trait]
impl Backend for MemoryBackend {
    async fn open(&self, limits: Limits) -> Arc<dyn Bus> {
        crate::memory::MemoryBus::new(limits)
    }
}

/// Generates one `#[tokio::test]` per conformance case for `$backend` (an
/// expression building a [`Backend`], evaluated once per test).
macro_rules! conformance_suite {
    ($backend:expr) => {
        $crate::conformance::conformance_suite!(@cases $backend;
            publish_fetch_ack_roundtrip,
            fetch_respects_max_and_keeps_order,
            ack_is_idempotent_and_ignores_unknown_seqs,
            max_msgs_full_returns_the_message,
            max_bytes_full,
            too_large_is_refused_and_counted,
            discard_old_drops_oldest_and_counts,
            depth_drops_only_when_all_consumers_acked,
            filter_subjects,
            subjects_nobody_wants_are_not_held,
            new_consumer_starts_at_first_held_message,
            max_ack_pending_caps_a_fetch,
            ack_wait_expiry_redelivers,
            nak_with_delay_and_without,
            in_progress_resets_ack_wait,
            max_deliver_releases_the_message,
            term_releases_without_redelivery,
            binding_twice_shares_state,
            rebinding_with_another_config_is_a_mismatch,
            too_many_consumers,
            delete_consumer_releases_what_it_held,
            fetch_wakes_on_publish,
            fetch_times_out_empty,
            cancelled_fetch_loses_nothing,
            close_behaviour,
            wait_for_space_wakes_on_ack,
            wait_for_space_times_out,
            max_age_expiry,
            consumer_stats_track_lag_and_pending,
            concurrent_producers_and_consumers,
        );
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::conformance::$case(&backend).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// The unit of time of the timer cases.
const T: Duration = Duration::from_millis(250);
const NOW: Duration = Duration::ZERO;

pub(crate) fn msg(subject: &str, payload: &str) -> Message {
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

pub(crate) fn unlimited() -> Limits {
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

async fn publish_n(bus: &Arc<dyn Bus>, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            bus.publish(msg("s", &i.to_string()))
                .await
                .expect("publish"),
        );
    }
    out
}

async fn fetch_now(c: &Arc<dyn Consumer>, max: usize) -> Vec<Received> {
    c.fetch(max, NOW).await.expect("fetch")
}

/// Asserts that `read` of the bus statistics is `want`, once the backend
/// has applied what was sent so far (at once on the embedded backends, see
/// [`Backend::stats_when`]). Returns the statistics.
async fn assert_stats<T>(
    b: &dyn Backend,
    bus: &Arc<dyn Bus>,
    read: impl Fn(&BusStats) -> T + Send + Sync,
    want: T,
) -> BusStats
where
    T: PartialEq + std::fmt::Debug + Send + Sync,
{
    let stats = b.stats_when(bus, &|s| read(s) == want).await;
    assert_eq!(read(&stats), want, "{stats:?}");
    stats
}

/// [`assert_stats`] for consumer `c` of `bus`.
async fn assert_consumer_stats<T>(
    b: &dyn Backend,
    bus: &Arc<dyn Bus>,
    c: &Arc<dyn Consumer>,
    read: impl Fn(&ConsumerStats) -> T + Send + Sync,
    want: T,
) -> ConsumerStats
where
    T: PartialEq + std::fmt::Debug + Send + Sync,
{
    let stats = b.consumer_stats_when(bus, c, &|s| read(s) == want).await;
    assert_eq!(read(&stats), want, "{stats:?}");
    stats
}

/// A consumer of every subject, created before the case publishes so that
/// messages are held on every backend: JetStream's interest retention keeps
/// nothing published while the stream has no consumer
/// ([`Quirks::drops_without_consumers`]).
async fn holder(bus: &Arc<dyn Bus>) -> Arc<dyn Consumer> {
    bus.consumer(ConsumerConfig::new("holder"))
        .await
        .expect("holder consumer")
}

fn with_ack_wait(name: &str, ack_wait: Duration) -> ConsumerConfig {
    ConsumerConfig {
        ack_wait,
        ..ConsumerConfig::new(name)
    }
}

pub(crate) async fn publish_fetch_ack_roundtrip(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_eq!(c.name(), "c");
    let before = SystemTime::now() - Duration::from_secs(1);
    let s1 = bus.publish(msg("a", "one")).await.unwrap();
    let s2 = bus.publish(msg("b", "two")).await.unwrap();
    let s3 = bus.publish(msg("a", "three")).await.unwrap();
    assert!(s1 < s2 && s2 < s3);

    let batch = fetch_now(&c, 10).await;
    assert_eq!(seqs(&batch), vec![s1, s2, s3]);
    assert_eq!(counts(&batch), vec![1, 1, 1]);
    assert_eq!(batch[0].subject, "a");
    assert_eq!(batch[1].payload, Bytes::from_static(b"two"));
    assert_eq!(batch[2].header("CE-ID"), Some("1"));
    assert!(batch[0].published_at >= before);

    let stats = assert_stats(
        b,
        &bus,
        |s| (s.messages, s.published, s.last_seq, s.consumers),
        (3, 3, s3, 1),
    )
    .await;
    let sizes = [msg("a", "one"), msg("b", "two"), msg("a", "three")].map(|m| b.stored_size(&m));
    if b.quirks().server_bytes {
        assert!(stats.bytes > 0 && stats.bytes <= sizes.iter().sum::<u64>());
    } else {
        assert_eq!(stats.bytes, (1 + 6 + 3) + (1 + 6 + 3) + (1 + 6 + 5));
    }

    for seq in [s2, s1, s3] {
        c.ack(seq).await.unwrap();
    }
    assert_stats(b, &bus, |s| (s.messages, s.bytes), (0, 0)).await;
    assert!(fetch_now(&c, 10).await.is_empty());
    let s4 = bus.publish(msg("a", "four")).await.unwrap();
    assert!(s4 > s3);
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s4]);
}

pub(crate) async fn fetch_respects_max_and_keeps_order(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 5).await;
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[0..2]);
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[2..4]);
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[4..5]);
    let start = Instant::now();
    assert!(c.fetch(0, Duration::from_secs(5)).await.unwrap().is_empty());
    assert!(start.elapsed() < Duration::from_secs(2));
}

pub(crate) async fn ack_is_idempotent_and_ignores_unknown_seqs(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 2).await;
    fetch_now(&c, 1).await;
    c.ack(s[0]).await.unwrap();
    c.ack(s[0]).await.unwrap();
    c.ack(999_999).await.unwrap();
    // Never delivered: acking it does not skip it.
    c.ack(s[1]).await.unwrap();
    c.nak(999_999, NOW).await.unwrap();
    c.term(999_999).await.unwrap();
    c.in_progress(999_999).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 1).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s[1]]);
}

pub(crate) async fn max_msgs_full_returns_the_message(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msgs: Some(2),
            ..unlimited()
        })
        .await;
    let _holder = holder(&bus).await;
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
            assert!(
                (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&retry_after),
                "{retry_after:?}"
            );
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert_stats(
        b,
        &bus,
        |s| (s.messages, s.published, s.rejected_full),
        (2, 2, 1),
    )
    .await;
}

pub(crate) async fn max_bytes_full(b: &dyn Backend) {
    // Room for exactly these two (10 bytes on the embedded backends).
    let max = b.stored_size(&sized(6)) + b.stored_size(&sized(4));
    let bus = b
        .open(Limits {
            max_bytes: Some(max),
            ..unlimited()
        })
        .await;
    let _holder = holder(&bus).await;
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
    let stats = assert_stats(b, &bus, |s| (s.messages, s.rejected_full), (2, 1)).await;
    if b.quirks().server_bytes {
        // The server's own count of its records; the backend's estimate errs high.
        assert!(stats.bytes > 0 && stats.bytes <= max, "{stats:?}");
    } else {
        assert_eq!(stats.bytes, max);
    }
}

pub(crate) async fn too_large_is_refused_and_counted(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msg_size: Some(10),
            max_bytes: Some(100),
            ..unlimited()
        })
        .await;
    bus.publish(sized(10)).await.unwrap();
    match bus.publish(sized(11)).await {
        Err(PublishError::TooLarge { message, size, max }) => {
            assert_eq!(message, sized(11));
            assert_eq!((size, max), (11, 10));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let stats = bus.stats();
    assert_eq!((stats.rejected_too_large, stats.published), (1, 1));
    // Larger than max_bytes can never fit: too large, not full.
    let bus = b
        .open(Limits {
            max_bytes: Some(8),
            ..unlimited()
        })
        .await;
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
    assert_eq!(
        (
            stats.rejected_too_large,
            stats.rejected_full,
            stats.published
        ),
        (1, 0, 0)
    );
}

pub(crate) async fn discard_old_drops_oldest_and_counts(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msgs: Some(3),
            discard: DiscardPolicy::Old,
            ..unlimited()
        })
        .await;
    let c = bus.consumer(with_ack_wait("c", T)).await.unwrap();
    let s = publish_n(&bus, 3).await;
    // The first is out with the consumer when it gets discarded.
    assert_eq!(seqs(&fetch_now(&c, 1).await), vec![s[0]]);
    let s4 = bus.publish(msg("s", "4")).await.unwrap();
    let s5 = bus.publish(msg("s", "5")).await.unwrap();
    let discarded = if b.quirks().no_discard_count { 0 } else { 2 };
    assert_stats(
        b,
        &bus,
        |s| (s.messages, s.discarded, s.rejected_full),
        (3, discarded, 0),
    )
    .await;
    assert_consumer_stats(b, &bus, &c, |cs| (cs.pending, cs.ack_pending), (3, 0)).await;
    c.ack(s[0]).await.unwrap();
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s[2], s4, s5]);
    // The discarded in-flight message is never redelivered.
    tokio::time::sleep(2 * T).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s[2], s4, s5]);
}

pub(crate) async fn depth_drops_only_when_all_consumers_acked(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let a = bus.consumer(ConsumerConfig::new("a")).await.unwrap();
    let c = bus.consumer(ConsumerConfig::new("b")).await.unwrap();
    let s = publish_n(&bus, 2).await;
    assert_eq!(seqs(&fetch_now(&a, 10).await), s);
    a.ack(s[0]).await.unwrap();
    a.ack(s[1]).await.unwrap();
    // Settled first: a backend that applies acks asynchronously must not
    // pass by reading too early.
    tokio::time::sleep(T / 5).await;
    assert_stats(b, &bus, |s| s.messages, 2).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), s);
    c.ack(s[1]).await.unwrap();
    // Released out of order: freed at once, even behind the first.
    assert_stats(b, &bus, |s| s.messages, 1).await;
    c.ack(s[0]).await.unwrap();
    assert_stats(b, &bus, |s| (s.messages, s.bytes), (0, 0)).await;
}

pub(crate) async fn filter_subjects(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let mut cfg = ConsumerConfig::new("orders");
    cfg.filter_subjects = vec!["webhook.orders".into(), "webhook.refunds".into()];
    let orders = bus.consumer(cfg).await.unwrap();
    let mut cfg = ConsumerConfig::new("users");
    cfg.filter_subjects = vec!["webhook.users".into()];
    let users = bus.consumer(cfg).await.unwrap();
    let all = bus.consumer(ConsumerConfig::new("all")).await.unwrap();

    let s1 = bus.publish(msg("webhook.orders", "1")).await.unwrap();
    let s2 = bus.publish(msg("webhook.users", "2")).await.unwrap();
    let s3 = bus.publish(msg("webhook.refunds", "3")).await.unwrap();
    let s4 = bus.publish(msg("webhook.other", "4")).await.unwrap();

    assert_consumer_stats(b, &bus, &orders, |cs| cs.pending, 2).await;
    assert_consumer_stats(b, &bus, &users, |cs| cs.pending, 1).await;
    assert_eq!(seqs(&fetch_now(&orders, 10).await), vec![s1, s3]);
    assert_eq!(seqs(&fetch_now(&users, 10).await), vec![s2]);
    let batch = fetch_now(&all, 10).await;
    assert_eq!(seqs(&batch), vec![s1, s2, s3, s4]);
    for r in &batch {
        all.ack(r.seq).await.unwrap();
    }
    tokio::time::sleep(T / 5).await;
    assert_stats(b, &bus, |s| s.messages, 3).await;
    users.ack(s2).await.unwrap();
    orders.ack(s1).await.unwrap();
    orders.ack(s3).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 0).await;
}

pub(crate) async fn subjects_nobody_wants_are_not_held(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msgs: Some(1),
            ..unlimited()
        })
        .await;
    bus.publish(msg("a", "1")).await.unwrap();
    if b.quirks().drops_without_consumers {
        // Nobody is interested yet: accepted, not kept, takes no room.
        bus.publish(msg("b", "2")).await.unwrap();
        assert_stats(b, &bus, |s| s.messages, 0).await;
    } else {
        // No consumer at all: messages stay.
        bus.publish(msg("b", "2")).await.unwrap_err();
        assert_stats(b, &bus, |s| s.messages, 1).await;
    }
    let mut cfg = ConsumerConfig::new("b-only");
    cfg.filter_subjects = vec!["b".into()];
    let c = bus.consumer(cfg).await.unwrap();
    // The first consumer does not want "a": released, not discarded.
    assert_stats(b, &bus, |s| (s.messages, s.discarded), (0, 0)).await;
    // Unwanted subjects are accepted without taking room.
    let wanted = bus.publish(msg("b", "3")).await.unwrap();
    bus.publish(msg("a", "4")).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 1).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![wanted]);
}

pub(crate) async fn new_consumer_starts_at_first_held_message(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let early = publish_n(&bus, 2).await;
    let a = bus.consumer(ConsumerConfig::new("a")).await.unwrap();
    let s = if b.quirks().drops_without_consumers {
        // Nothing was kept for a consumer that did not exist yet: `a`
        // starts with what follows.
        publish_n(&bus, 2).await
    } else {
        early
    };
    let s3 = publish_n(&bus, 1).await[0];
    assert_eq!(seqs(&fetch_now(&a, 1).await), vec![s[0]]);
    a.ack(s[0]).await.unwrap();
    // Released by its only consumer before `b` exists.
    assert_stats(b, &bus, |st| st.messages, 2).await;
    let c = bus.consumer(ConsumerConfig::new("b")).await.unwrap();
    assert_consumer_stats(b, &bus, &c, |cs| cs.pending, 2).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s[1], s3]);
    assert_eq!(seqs(&fetch_now(&a, 10).await), vec![s[1], s3]);
}

pub(crate) async fn max_ack_pending_caps_a_fetch(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let mut cfg = ConsumerConfig::new("c");
    cfg.max_ack_pending = 2;
    let c = bus.consumer(cfg).await.unwrap();
    let s = publish_n(&bus, 5).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), s[0..2]);
    assert!(fetch_now(&c, 10).await.is_empty());
    c.ack(s[0]).await.unwrap();
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s[2]]);
    // Redeliveries need no new credit.
    c.nak(s[1], NOW).await.unwrap();
    let batch = fetch_now(&c, 10).await;
    assert_eq!((seqs(&batch), counts(&batch)), (vec![s[1]], vec![2]));
    assert_consumer_stats(b, &bus, &c, |cs| (cs.pending, cs.ack_pending), (2, 2)).await;
}

pub(crate) async fn ack_wait_expiry_redelivers(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(with_ack_wait("c", T)).await.unwrap();
    let s = publish_n(&bus, 3).await;
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[0..2]);
    let s4 = publish_n(&bus, 1).await[0];
    tokio::time::sleep(T + T / 2).await;
    // Redeliveries first, in sequence order, before anything new.
    let batch = fetch_now(&c, 10).await;
    assert_eq!(seqs(&batch), vec![s[0], s[1], s[2], s4]);
    assert_eq!(counts(&batch), vec![2, 2, 1, 1]);
    assert_eq!(c.stats().redelivered, 2);
    // A fetch waits for the next redelivery timer.
    let start = Instant::now();
    let batch = c.fetch(10, 20 * T).await.unwrap();
    assert_eq!(counts(&batch), vec![3, 3, 2, 2]);
    let waited = start.elapsed();
    assert!(waited >= T / 2 && waited < 10 * T, "{waited:?}");
}

pub(crate) async fn nak_with_delay_and_without(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 2).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), s);
    c.nak(s[0], 2 * T).await.unwrap();
    c.nak(s[1], NOW).await.unwrap();
    let batch = fetch_now(&c, 10).await;
    assert_eq!((seqs(&batch), counts(&batch)), (vec![s[1]], vec![2]));
    // in_progress does not cancel a nak.
    c.in_progress(s[0]).await.unwrap();
    assert!(fetch_now(&c, 10).await.is_empty());
    // A waiting fetch wakes for the nak delay.
    let start = Instant::now();
    let batch = c.fetch(10, 20 * T).await.unwrap();
    assert_eq!((seqs(&batch), counts(&batch)), (vec![s[0]], vec![2]));
    assert!(start.elapsed() < 10 * T);
    assert_eq!(c.stats().redelivered, 2);
}

pub(crate) async fn in_progress_resets_ack_wait(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(with_ack_wait("c", 2 * T)).await.unwrap();
    let s = publish_n(&bus, 1).await;
    fetch_now(&c, 1).await;
    tokio::time::sleep(T + T / 2).await;
    c.in_progress(s[0]).await.unwrap();
    tokio::time::sleep(T).await;
    // 2.5 T after delivery, 1 T after in_progress: not due yet.
    assert!(fetch_now(&c, 10).await.is_empty());
    tokio::time::sleep(2 * T).await;
    assert_eq!(counts(&fetch_now(&c, 10).await), vec![2]);
}

pub(crate) async fn max_deliver_releases_the_message(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let mut cfg = with_ack_wait("c", T);
    cfg.max_deliver = Some(2);
    let c = bus.consumer(cfg).await.unwrap();
    let s = publish_n(&bus, 2).await;
    assert_eq!(counts(&fetch_now(&c, 10).await), vec![1, 1]);
    tokio::time::sleep(T + T / 2).await;
    assert_eq!(counts(&fetch_now(&c, 10).await), vec![2, 2]);
    // The second by nak, the first by ack_wait expiry: both given up.
    c.nak(s[1], NOW).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 1).await;
    tokio::time::sleep(T + T / 2).await;
    assert!(fetch_now(&c, 10).await.is_empty());
    assert_stats(b, &bus, |s| (s.messages, s.discarded), (0, 0)).await;
    assert_consumer_stats(
        b,
        &bus,
        &c,
        |cs| (cs.ack_pending, cs.redelivered, cs.oldest_unacked_age),
        (0, 2, None),
    )
    .await;
}

pub(crate) async fn term_releases_without_redelivery(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(with_ack_wait("c", T)).await.unwrap();
    let s = publish_n(&bus, 1).await;
    fetch_now(&c, 1).await;
    c.term(s[0]).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 0).await;
    tokio::time::sleep(2 * T).await;
    assert!(fetch_now(&c, 10).await.is_empty());
    assert_consumer_stats(b, &bus, &c, |cs| cs.ack_pending, 0).await;
}

pub(crate) async fn binding_twice_shares_state(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let one = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let two = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    assert_stats(b, &bus, |s| s.consumers, 1).await;
    let s = publish_n(&bus, 2).await;
    assert_eq!(seqs(&fetch_now(&one, 1).await), vec![s[0]]);
    assert_eq!(seqs(&fetch_now(&two, 10).await), vec![s[1]]);
    two.ack(s[0]).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 1).await;
    assert_consumer_stats(b, &bus, &one, |cs| cs.ack_pending, 1).await;
    // Same state (the age is read at two instants: left out).
    let (one, two) = (one.stats(), two.stats());
    assert_eq!(
        (one.pending, one.ack_pending, one.redelivered),
        (two.pending, two.ack_pending, two.redelivered)
    );
}

pub(crate) async fn rebinding_with_another_config_is_a_mismatch(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let err = bus
        .consumer(with_ack_wait("c", Duration::from_secs(5)))
        .await
        .err()
        .expect("mismatch");
    assert!(
        matches!(&err, BusError::ConsumerMismatch { name } if name == "c"),
        "{err:?}"
    );
}

pub(crate) async fn too_many_consumers(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_consumers: Some(1),
            ..unlimited()
        })
        .await;
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
    bus.consumer(ConsumerConfig::new("a")).await.unwrap();
    assert_stats(b, &bus, |s| s.consumers, 1).await;
}

pub(crate) async fn delete_consumer_releases_what_it_held(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let keep = bus.consumer(ConsumerConfig::new("keep")).await.unwrap();
    let mut gone_cfg = ConsumerConfig::new("gone");
    gone_cfg.filter_subjects = vec!["s".into()];
    let gone = bus.consumer(gone_cfg.clone()).await.unwrap();
    let mut idle_cfg = ConsumerConfig::new("idle");
    idle_cfg.filter_subjects = vec!["quiet".into()];
    let idle = bus.consumer(idle_cfg).await.unwrap();
    let s = publish_n(&bus, 3).await;
    for r in fetch_now(&keep, 10).await {
        keep.ack(r.seq).await.unwrap();
    }
    // `gone` alone holds all three: one delivered and unacked, two unseen.
    assert_eq!(seqs(&fetch_now(&gone, 1).await), vec![s[0]]);
    tokio::time::sleep(T / 5).await;
    assert_stats(b, &bus, |st| st.messages, 3).await;

    assert!(bus.delete_consumer("gone").await.unwrap());
    assert_stats(b, &bus, |st| (st.messages, st.consumers), (0, 2)).await;
    assert!(!bus.delete_consumer("gone").await.unwrap());
    let err = gone.fetch(10, NOW).await.expect_err("fetch after delete");
    assert!(
        matches!(&err, BusError::ConsumerDeleted { name } if name == "gone"),
        "{err:?}"
    );

    // A fetch waiting on a consumer is ended by its deletion, not by max_wait.
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let result = idle.fetch(10, 40 * T).await;
        (result.map(|batch| seqs(&batch)), start.elapsed())
    });
    tokio::time::sleep(T / 5).await;
    assert!(bus.delete_consumer("idle").await.unwrap());
    let (result, waited) = waiter.await.unwrap();
    assert!(
        matches!(&result, Err(BusError::ConsumerDeleted { name }) if name == "idle"),
        "{result:?}"
    );
    assert!(waited < 20 * T, "{waited:?}");
    assert_stats(b, &bus, |st| st.consumers, 1).await;

    // Bound again: a new consumer, which the released messages are not
    // delivered to.
    let again = bus.consumer(gone_cfg).await.unwrap();
    let s4 = publish_n(&bus, 1).await[0];
    assert_eq!(seqs(&fetch_now(&again, 10).await), vec![s4]);
}

pub(crate) async fn fetch_wakes_on_publish(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let producer = Arc::clone(&bus);
    let publish = tokio::spawn(async move {
        tokio::time::sleep(T).await;
        producer.publish(msg("s", "late")).await.unwrap()
    });
    let start = Instant::now();
    let batch = c.fetch(10, 40 * T).await.unwrap();
    let waited = start.elapsed();
    assert_eq!(seqs(&batch), vec![publish.await.unwrap()]);
    assert!(waited >= T / 2 && waited < 20 * T, "{waited:?}");
}

pub(crate) async fn fetch_times_out_empty(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let mut cfg = ConsumerConfig::new("c");
    cfg.filter_subjects = vec!["wanted".into()];
    let c = bus.consumer(cfg).await.unwrap();
    bus.publish(msg("unwanted", "x")).await.unwrap();
    let start = Instant::now();
    assert!(c.fetch(10, T).await.unwrap().is_empty());
    let waited = start.elapsed();
    assert!(waited >= T && waited < 10 * T, "{waited:?}");
}

pub(crate) async fn cancelled_fetch_loses_nothing(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    tokio::select! {
        _ = c.fetch(10, 40 * T) => panic!("nothing to fetch"),
        _ = tokio::time::sleep(T / 5) => {}
    }
    let s = publish_n(&bus, 1).await;
    drop(c.fetch(10, NOW));
    assert_consumer_stats(b, &bus, &c, |cs| (cs.pending, cs.ack_pending), (1, 0)).await;
    let batch = fetch_now(&c, 10).await;
    assert_eq!((seqs(&batch), counts(&batch)), (s.clone(), vec![1]));
}

pub(crate) async fn close_behaviour(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 1).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), s);
    let waiting = Arc::clone(&c);
    let fetch = tokio::spawn(async move {
        let start = Instant::now();
        let batch = waiting.fetch(10, 40 * T).await.unwrap();
        (batch, start.elapsed())
    });
    tokio::time::sleep(T).await;
    bus.close().await;
    let (batch, waited) = fetch.await.unwrap();
    assert!(batch.is_empty());
    assert!(waited < 20 * T, "{waited:?}");

    let refused = msg("s", "after close");
    match bus.publish(refused.clone()).await {
        Err(PublishError::Closed { message }) => assert_eq!(message, refused),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(
        bus.consumer(ConsumerConfig::new("late")).await,
        Err(BusError::Closed)
    ));
    // Fetches return at once, even with messages due.
    c.nak(s[0], NOW).await.unwrap();
    let start = Instant::now();
    assert!(c.fetch(10, 40 * T).await.unwrap().is_empty());
    assert!(start.elapsed() < 10 * T);
    // Acks still settle in-flight work.
    c.ack(s[0]).await.unwrap();
    assert_stats(b, &bus, |s| s.messages, 0).await;
    let start = Instant::now();
    bus.wait_for_space(40 * T).await;
    assert!(start.elapsed() < 10 * T);
}

pub(crate) async fn wait_for_space_wakes_on_ack(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msgs: Some(1),
            ..unlimited()
        })
        .await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 1).await;
    fetch_now(&c, 1).await;
    assert!(bus.publish(msg("s", "x")).await.is_err());
    let acker = Arc::clone(&c);
    let first = s[0];
    tokio::spawn(async move {
        tokio::time::sleep(T).await;
        acker.ack(first).await.unwrap();
    });
    let start = Instant::now();
    bus.wait_for_space(40 * T).await;
    let waited = start.elapsed();
    assert!(waited >= T / 2 && waited < 20 * T, "{waited:?}");
    assert!(bus.publish(msg("s", "x")).await.unwrap() > s[0]);
}

pub(crate) async fn wait_for_space_times_out(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_msgs: Some(1),
            ..unlimited()
        })
        .await;
    let _holder = holder(&bus).await;
    publish_n(&bus, 1).await;
    let start = Instant::now();
    bus.wait_for_space(T).await;
    let waited = start.elapsed();
    assert!(waited >= T && waited < 10 * T, "{waited:?}");
}

pub(crate) async fn max_age_expiry(b: &dyn Backend) {
    let bus = b
        .open(Limits {
            max_age: Some(2 * T),
            ..unlimited()
        })
        .await;
    let c = bus.consumer(ConsumerConfig::new("c")).await.unwrap();
    let s = publish_n(&bus, 2).await;
    assert_eq!(seqs(&fetch_now(&c, 1).await), vec![s[0]]);
    assert_stats(b, &bus, |s| s.messages, 2).await;
    // wait_for_space wakes when expiry makes room.
    let start = Instant::now();
    bus.wait_for_space(40 * T).await;
    let waited = start.elapsed();
    assert!(waited >= T && waited < 20 * T, "{waited:?}");
    // The second message was published a moment after the first.
    tokio::time::sleep(T / 5).await;
    let discarded = if b.quirks().no_discard_count { 0 } else { 2 };
    assert_stats(b, &bus, |s| (s.messages, s.discarded), (0, discarded)).await;
    // Neither the in-flight nor the unseen message is delivered.
    let s3 = publish_n(&bus, 1).await[0];
    let batch = fetch_now(&c, 10).await;
    assert_eq!((seqs(&batch), counts(&batch)), (vec![s3], vec![1]));
}

pub(crate) async fn consumer_stats_track_lag_and_pending(b: &dyn Backend) {
    let bus = b.open(unlimited()).await;
    let mut cfg = ConsumerConfig::new("c");
    cfg.filter_subjects = vec!["a".into()];
    let c = bus.consumer(cfg).await.unwrap();
    assert_consumer_stats(
        b,
        &bus,
        &c,
        |cs| (cs.pending, cs.oldest_unacked_age),
        (0, None),
    )
    .await;
    let s1 = bus.publish(msg("a", "1")).await.unwrap();
    bus.publish(msg("b", "2")).await.unwrap();
    let s3 = bus.publish(msg("a", "3")).await.unwrap();
    tokio::time::sleep(T / 5).await;
    let cs = assert_consumer_stats(
        b,
        &bus,
        &c,
        |cs| (cs.pending, cs.ack_pending, cs.redelivered),
        (2, 0, 0),
    )
    .await;
    assert!(cs.oldest_unacked_age.unwrap() >= T / 5);
    assert_eq!(seqs(&fetch_now(&c, 1).await), vec![s1]);
    assert_consumer_stats(b, &bus, &c, |cs| (cs.pending, cs.ack_pending), (1, 1)).await;
    c.ack(s1).await.unwrap();
    c.nak(s3, NOW).await.unwrap();
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![s3]);
    c.nak(s3, NOW).await.unwrap();
    assert_eq!(counts(&fetch_now(&c, 10).await), vec![2]);
    c.ack(s3).await.unwrap();
    assert_consumer_stats(
        b,
        &bus,
        &c,
        |cs| (cs.pending, cs.ack_pending, cs.redelivered),
        (0, 0, 1),
    )
    .await;
}

/// Real threads, real contention: every message reaches both consumers,
/// producers block on `wait_for_space`, and no wake-up is lost.
pub(crate) async fn concurrent_producers_and_consumers(b: &dyn Backend) {
    const PRODUCERS: u64 = 4;
    const EACH: u64 = 150;
    let bus = b
        .open(Limits {
            max_msgs: Some(16),
            ..unlimited()
        })
        .await;
    let mut workers = Vec::new();
    for name in ["a", "b"] {
        let mut cfg = ConsumerConfig::new(name);
        cfg.max_ack_pending = 4;
        let c = bus.consumer(cfg).await.unwrap();
        workers.push(tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while (seen.len() as u64) < PRODUCERS * EACH {
                for r in c.fetch(3, Duration::from_secs(60)).await.unwrap() {
                    seen.insert(r.seq);
                    c.ack(r.seq).await.unwrap();
                }
            }
            seen
        }));
    }
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let bus = Arc::clone(&bus);
        producers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for i in 0..EACH {
                let mut m = msg("s", &format!("{p}-{i}"));
                loop {
                    match bus.publish(m).await {
                        Ok(seq) => {
                            mine.push(seq);
                            break;
                        }
                        Err(PublishError::Full { message, .. }) => {
                            m = message;
                            bus.wait_for_space(Duration::from_secs(60)).await;
                        }
                        Err(other) => panic!("{other:?}"),
                    }
                }
            }
            mine
        }));
    }
    let (published, seen) = tokio::time::timeout(Duration::from_secs(60), async {
        let mut published = BTreeSet::new();
        for p in producers {
            published.extend(p.await.unwrap());
        }
        let mut sets = Vec::new();
        for w in workers {
            sets.push(w.await.unwrap());
        }
        (published, sets)
    })
    .await
    .expect("stalled: lost wake-up?");
    assert_eq!(published.len() as u64, PRODUCERS * EACH);
    for s in seen {
        assert_eq!(s, published);
    }
    assert_stats(
        b,
        &bus,
        |s| (s.messages, s.bytes, s.published),
        (0, 0, PRODUCERS * EACH),
    )
    .await;
}
