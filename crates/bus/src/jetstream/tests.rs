//! Tests against a real `nats-server -js` (2.9 on this machine), one server
//! per test on a free port with its own store directory.

use super::test_server::TestServer;
use super::*;
use crate::{ConsumerStats, Received};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::time::SystemTime;

const NO_SUBJECTS: &[&str] = &[];
const NOW: Duration = Duration::ZERO;

fn options() -> JetStreamOptions {
    JetStreamOptions {
        request_timeout: Duration::from_secs(2),
        stats_interval: Duration::from_millis(200),
        space_poll_interval: Duration::from_millis(50),
        ..JetStreamOptions::default()
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

async fn bus(server: &TestServer, limits: Limits) -> Arc<JetStreamBus> {
    JetStreamBus::connect_with(&server.url(), "events", limits, NO_SUBJECTS, options())
        .await
        .expect("connect")
}

fn msg(subject: &str, payload: &str) -> Message {
    Message {
        subject: subject.to_string(),
        headers: vec![("ce-id".to_string(), "1".to_string())],
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }
}

fn config(name: &str) -> ConsumerConfig {
    ConsumerConfig::new(name)
}

fn seqs(batch: &[Received]) -> Vec<u64> {
    batch.iter().map(|r| r.seq).collect()
}

fn counts(batch: &[Received]) -> Vec<u32> {
    batch.iter().map(|r| r.delivery_count).collect()
}

async fn publish_n(bus: &JetStreamBus, subject: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            bus.publish(msg(subject, &i.to_string()))
                .await
                .expect("publish"),
        );
    }
    out
}

async fn fetch_now(c: &Arc<dyn Consumer>, max: usize) -> Vec<Received> {
    c.fetch(max, NOW).await.expect("fetch")
}

/// Refreshes the statistics until `check` holds (acks are applied by the
/// server asynchronously), or panics after 5 s with the last value.
async fn eventually<T: std::fmt::Debug>(
    bus: &JetStreamBus,
    mut read: impl FnMut() -> T,
    check: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        bus.refresh_stats().await.expect("refresh stats");
        let value = read();
        if check(&value) {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("condition never held; last value {value:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn depth_becomes(bus: &JetStreamBus, messages: u64) {
    eventually(bus, || bus.stats().messages, |m| *m == messages).await;
}

#[tokio::test]
async fn publish_fetch_ack_roundtrip() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let c = bus.consumer(config("c")).await.unwrap();
    assert_eq!(c.name(), "c");
    let before = SystemTime::now() - Duration::from_secs(1);
    assert_eq!(bus.publish(msg("a.x", "one")).await.unwrap(), 1);
    assert_eq!(bus.publish(msg("b.y", "two")).await.unwrap(), 2);
    let mut third = msg("a.x", "three");
    third.headers.push(("traceparent".into(), "00-abc".into()));
    assert_eq!(bus.publish(third).await.unwrap(), 3);

    let batch = fetch_now(&c, 10).await;
    assert_eq!(seqs(&batch), vec![1, 2, 3]);
    assert_eq!(counts(&batch), vec![1, 1, 1]);
    assert_eq!(batch[0].subject, "a.x");
    assert_eq!(batch[1].subject, "b.y");
    assert_eq!(batch[1].payload, Bytes::from_static(b"two"));
    assert_eq!(batch[2].header("CE-ID"), Some("1"));
    assert_eq!(batch[2].header("traceparent"), Some("00-abc"));
    assert!(batch[0].published_at >= before);

    bus.refresh_stats().await.unwrap();
    let stats = bus.stats();
    assert_eq!((stats.messages, stats.published, stats.last_seq), (3, 3, 3));
    assert!(stats.bytes > 0);
    assert_eq!(stats.consumers, 1);
    let cs = c.stats();
    assert_eq!((cs.pending, cs.ack_pending), (0, 3));
    assert!(cs.oldest_unacked_age.is_some());

    for seq in [2, 1, 3] {
        c.ack(seq).await.unwrap();
    }
    depth_becomes(&bus, 0).await;
    assert!(fetch_now(&c, 10).await.is_empty());
    assert_eq!(bus.publish(msg("a.x", "four")).await.unwrap(), 4);
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![4]);
    // Unknown and already settled sequences are ignored.
    c.ack(1).await.unwrap();
    c.ack(999).await.unwrap();
    c.nak(999, NOW).await.unwrap();
    c.in_progress(999).await.unwrap();
    c.term(999).await.unwrap();
}

#[tokio::test]
async fn fetch_respects_max_and_max_ack_pending() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.max_ack_pending = 3;
    let c = bus.consumer(cfg).await.unwrap();
    publish_n(&bus, "s", 6).await;
    assert_eq!(seqs(&fetch_now(&c, 2).await), vec![1, 2]);
    // Only one credit left, though 4 messages wait and 10 are asked for.
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![3]);
    assert!(fetch_now(&c, 10).await.is_empty());
    // A waiting fetch wakes when an ack frees a credit.
    let acker = Arc::clone(&c);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        acker.ack(1).await.unwrap();
    });
    let start = Instant::now();
    let batch = c.fetch(10, Duration::from_secs(10)).await.unwrap();
    assert_eq!(seqs(&batch), vec![4]);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(c.fetch(0, Duration::from_secs(5)).await.unwrap().is_empty());
    let cs = eventually(&bus, || c.stats(), |cs| cs.ack_pending == 3).await;
    assert_eq!(cs.pending, 2);
}

#[tokio::test]
async fn fetch_waits_for_a_message_and_times_out_empty() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let c = bus.consumer(config("c")).await.unwrap();
    let start = Instant::now();
    assert!(c
        .fetch(10, Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(290) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let producer = Arc::clone(&bus);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish_n(&producer, "s", 3).await;
    });
    let start = Instant::now();
    let batch = c.fetch(10, Duration::from_secs(10)).await.unwrap();
    assert!(!batch.is_empty() && batch[0].seq == 1, "{batch:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn nak_with_delay_redelivers_after_the_delay() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let c = bus.consumer(config("c")).await.unwrap();
    publish_n(&bus, "s", 2).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1, 2]);
    let start = Instant::now();
    c.nak(1, Duration::from_millis(800)).await.unwrap();
    c.nak(2, NOW).await.unwrap();
    let batch = c.fetch(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!((seqs(&batch), counts(&batch)), (vec![2], vec![2]));
    // in_progress does not cancel a nak.
    c.in_progress(1).await.unwrap();
    assert!(fetch_now(&c, 10).await.is_empty());
    let batch = c.fetch(10, Duration::from_secs(5)).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(750),
        "{:?}",
        start.elapsed()
    );
    assert_eq!((seqs(&batch), counts(&batch)), (vec![1], vec![2]));
    assert_eq!(c.stats().redelivered, 2);
}

#[tokio::test]
async fn ack_wait_expiry_redelivers_and_in_progress_extends_it() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.ack_wait = Duration::from_secs(1);
    let c = bus.consumer(cfg).await.unwrap();
    publish_n(&bus, "s", 2).await;
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1, 2]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.in_progress(2).await.unwrap();
    // Seq 1 comes back after its ack_wait; seq 2 later, its timer reset.
    let batch = c.fetch(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!((seqs(&batch), counts(&batch)), (vec![1], vec![2]));
    let batch = c.fetch(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!((seqs(&batch), counts(&batch)), (vec![2], vec![2]));
    c.ack(1).await.unwrap();
    c.ack(2).await.unwrap();
    depth_becomes(&bus, 0).await;
}

#[tokio::test]
async fn term_stops_redelivery_and_releases() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.ack_wait = Duration::from_secs(1);
    let c = bus.consumer(cfg).await.unwrap();
    publish_n(&bus, "s", 1).await;
    fetch_now(&c, 1).await;
    c.term(1).await.unwrap();
    depth_becomes(&bus, 0).await;
    assert!(c
        .fetch(10, Duration::from_millis(1500))
        .await
        .unwrap()
        .is_empty());
    let cs = eventually(&bus, || c.stats(), |cs| cs.ack_pending == 0).await;
    assert_eq!(cs, ConsumerStats::default());
}

#[tokio::test]
async fn max_deliver_releases_the_message() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.ack_wait = Duration::from_millis(700);
    cfg.max_deliver = Some(2);
    let c = bus.consumer(cfg).await.unwrap();
    publish_n(&bus, "s", 2).await;
    assert_eq!(counts(&fetch_now(&c, 10).await), vec![1, 1]);
    let batch = c.fetch(10, Duration::from_secs(3)).await.unwrap();
    assert_eq!(counts(&batch), vec![2, 2], "{batch:?}");
    // Seq 2 by nak after its last delivery; seq 1 by ack_wait expiry.
    c.nak(2, NOW).await.unwrap();
    assert!(c
        .fetch(10, Duration::from_millis(1500))
        .await
        .unwrap()
        .is_empty());
    depth_becomes(&bus, 0).await;
    let cs = eventually(&bus, || c.stats(), |cs| cs.ack_pending == 0).await;
    assert_eq!((cs.redelivered, cs.oldest_unacked_age), (2, None));
}

#[tokio::test]
async fn discard_new_refuses_at_max_msgs_and_hands_the_message_back() {
    let server = TestServer::start();
    let bus = bus(
        &server,
        Limits {
            max_msgs: Some(2),
            ..unlimited()
        },
    )
    .await;
    let c = bus.consumer(config("c")).await.unwrap();
    publish_n(&bus, "s", 2).await;
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
                (crate::stream::MIN_RETRY_AFTER..=crate::stream::MAX_RETRY_AFTER)
                    .contains(&retry_after),
                "{retry_after:?}"
            );
        }
        other => panic!("expected Full, got {other:?}"),
    }
    bus.refresh_stats().await.unwrap();
    let stats = bus.stats();
    assert_eq!(
        (stats.messages, stats.published, stats.rejected_full),
        (2, 2, 1)
    );
    assert_eq!(stats.last_seq, 2);
    // Nothing was lost to make room, and an ack makes room again.
    assert_eq!(seqs(&fetch_now(&c, 10).await), vec![1, 2]);
    c.ack(1).await.unwrap();
    depth_becomes(&bus, 1).await;
    assert_eq!(bus.publish(refused).await.unwrap(), 3);
}

/// nats-server 2.9 admits a message over `max_bytes` and then deletes the
/// oldest one; the client-side check must refuse it instead.
#[tokio::test]
async fn max_bytes_refuses_without_losing_old_messages() {
    let server = TestServer::start();
    let bus = bus(
        &server,
        Limits {
            max_bytes: Some(400),
            ..unlimited()
        },
    )
    .await;
    let c = bus.consumer(config("c")).await.unwrap();
    let mut accepted = 0;
    let err = loop {
        match bus.publish(msg("s", "0123456789")).await {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 100, "never full");
    };
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
    assert!(accepted >= 3, "{accepted}");
    bus.refresh_stats().await.unwrap();
    let stats = bus.stats();
    assert!(stats.bytes <= 400, "{stats:?}");
    assert_eq!(stats.messages, accepted);
    // Every accepted message is still there, the first one included.
    let batch = fetch_now(&c, 100).await;
    assert_eq!(seqs(&batch), (1..=accepted).collect::<Vec<_>>());
}

#[tokio::test]
async fn too_large_is_refused_and_counted() {
    let server = TestServer::start();
    let bus = bus(
        &server,
        Limits {
            max_msg_size: Some(20),
            ..unlimited()
        },
    )
    .await;
    bus.consumer(config("c")).await.unwrap();
    let big = Message {
        subject: "s".into(),
        headers: Vec::new(),
        payload: Bytes::from(vec![b'x'; 20]),
    };
    match bus.publish(big.clone()).await {
        Err(PublishError::TooLarge { message, size, max }) => {
            assert_eq!(message, big);
            assert_eq!((size, max), (21, 20));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Over the server's max_payload (1 MiB) without a bus limit: refused
    // here, and the connection survives.
    let bus2 =
        JetStreamBus::connect_with(&server.url(), "other", unlimited(), NO_SUBJECTS, options())
            .await
            .unwrap();
    bus2.consumer(config("c")).await.unwrap();
    let huge = Message {
        subject: "s".into(),
        headers: Vec::new(),
        payload: Bytes::from(vec![b'x'; 2 << 20]),
    };
    assert!(matches!(
        bus2.publish(huge).await,
        Err(PublishError::TooLarge { max: 1_048_576, .. })
    ));
    assert_eq!(bus2.publish(msg("s", "small")).await.unwrap(), 1);
    assert_eq!(bus.stats().rejected_too_large, 1);
    assert_eq!(bus2.stats().rejected_too_large, 1);
}

#[tokio::test]
async fn bad_subjects_and_headers_are_refused_with_a_reason() {
    let server = TestServer::start();
    let bus = JetStreamBus::connect_with(
        &server.url(),
        "events",
        unlimited(),
        &["webhook.*"],
        options(),
    )
    .await
    .unwrap();
    bus.consumer(config("c")).await.unwrap();
    for bad in ["webhook.*", "webhook..x", "calendar.tick"] {
        let err = bus.publish(msg(bad, "x")).await.unwrap_err();
        assert!(matches!(err, PublishError::Unavailable { .. }), "{err:?}");
    }
    let mut m = msg("webhook.orders", "x");
    m.headers.push(("bad:name".into(), "v".into()));
    assert!(matches!(
        bus.publish(m).await,
        Err(PublishError::Unavailable { .. })
    ));
    assert_eq!(bus.publish(msg("webhook.orders", "x")).await.unwrap(), 1);
}

#[tokio::test]
async fn two_instances_share_one_durable_consumer() {
    let server = TestServer::start();
    let one = bus(&server, unlimited()).await;
    let two = bus(&server, unlimited()).await;
    let mut cfg = config("shared");
    cfg.max_ack_pending = 4;
    let c1 = one.consumer(cfg.clone()).await.unwrap();
    let c2 = two.consumer(cfg).await.unwrap();
    const N: u64 = 40;
    let producer = Arc::clone(&one);
    tokio::spawn(async move {
        publish_n(&producer, "s", N as usize).await;
    });
    let seen = Arc::new(Mutex::new(Vec::<(usize, u64)>::new()));
    let mut workers = Vec::new();
    for (id, c) in [(1, c1), (2, c2)] {
        let seen = Arc::clone(&seen);
        workers.push(tokio::spawn(async move {
            loop {
                if seen.lock().len() as u64 >= N {
                    return;
                }
                for r in c.fetch(3, Duration::from_millis(200)).await.unwrap() {
                    assert_eq!(r.delivery_count, 1, "redelivered: {r:?}");
                    seen.lock().push((id, r.seq));
                    c.ack(r.seq).await.unwrap();
                }
            }
        }));
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        for w in workers {
            w.await.unwrap();
        }
    })
    .await
    .expect("stalled");
    let seen = seen.lock().clone();
    let all: BTreeSet<u64> = seen.iter().map(|&(_, s)| s).collect();
    assert_eq!(seen.len() as u64, N, "a message was delivered twice");
    assert_eq!(all, (1..=N).collect());
    // Which instance gets how many is up to the server (usually both get
    // some); each message went to exactly one of them.
    depth_becomes(&one, 0).await;
}

#[tokio::test]
async fn binding_twice_in_one_process_shares_state() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let one = bus.consumer(config("c")).await.unwrap();
    let two = bus.consumer(config("c")).await.unwrap();
    publish_n(&bus, "s", 2).await;
    assert_eq!(seqs(&fetch_now(&one, 1).await), vec![1]);
    assert_eq!(seqs(&fetch_now(&two, 10).await), vec![2]);
    // A handle acks what the other fetched.
    two.ack(1).await.unwrap();
    depth_becomes(&bus, 1).await;
    assert_eq!(bus.stats().consumers, 1);
    let (s1, s2) = (one.stats(), two.stats());
    assert_eq!((s1.pending, s1.ack_pending), (s2.pending, s2.ack_pending));
    assert_eq!(s1.ack_pending, 1);

    let mut other = config("c");
    other.ack_wait = Duration::from_secs(5);
    assert!(matches!(
        bus.consumer(other).await,
        Err(BusError::ConsumerMismatch { name }) if name == "c"
    ));
}

/// Another process (or a restart) binding with changed settings updates the
/// server's consumer; a changed filter cannot be applied on 2.9 and is refused.
#[tokio::test]
async fn rebinding_from_another_process_updates_or_refuses() {
    let server = TestServer::start();
    let first = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.filter_subjects = vec!["a.x".into()];
    first.consumer(cfg.clone()).await.unwrap();
    let second = bus(&server, unlimited()).await;
    cfg.ack_wait = Duration::from_secs(5);
    cfg.max_ack_pending = 7;
    second.consumer(cfg.clone()).await.unwrap();
    let info = second.inner.stream.consumer_info("c").await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
    assert_eq!(info.config.max_ack_pending, 7);
    let third = bus(&server, unlimited()).await;
    cfg.filter_subjects = vec!["a.y".into()];
    assert!(matches!(
        third.consumer(cfg).await,
        Err(BusError::ConsumerMismatch { name }) if name == "c"
    ));
}

#[tokio::test]
async fn interest_retention_keeps_messages_until_every_consumer_acked() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    // No consumer yet: accepted, but nobody is interested, so not kept.
    assert_eq!(bus.publish(msg("s", "early")).await.unwrap(), 1);
    depth_becomes(&bus, 0).await;

    let a = bus.consumer(config("a")).await.unwrap();
    let b = bus.consumer(config("b")).await.unwrap();
    publish_n(&bus, "s", 2).await;
    for r in fetch_now(&a, 10).await {
        a.ack(r.seq).await.unwrap();
    }
    // Both still held for b.
    tokio::time::sleep(Duration::from_millis(200)).await;
    depth_becomes(&bus, 2).await;
    let batch = fetch_now(&b, 10).await;
    assert_eq!(seqs(&batch), vec![2, 3]);
    b.ack(3).await.unwrap();
    depth_becomes(&bus, 1).await;
    b.ack(2).await.unwrap();
    depth_becomes(&bus, 0).await;
    assert_eq!(bus.stats().bytes, 0);
}

#[tokio::test]
async fn several_filter_subjects_use_one_jetstream_consumer_each() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("sensor.trigger");
    cfg.filter_subjects = vec!["webhook.orders".into(), "webhook.refunds".into()];
    let c = bus.consumer(cfg).await.unwrap();
    bus.publish(msg("webhook.orders", "1")).await.unwrap();
    bus.publish(msg("webhook.users", "2")).await.unwrap();
    bus.publish(msg("webhook.refunds", "3")).await.unwrap();
    // Nobody wants webhook.users: not kept.
    bus.refresh_stats().await.unwrap();
    assert_eq!(bus.stats().messages, 2);
    assert_eq!(bus.stats().consumers, 2);
    let cs = eventually(&bus, || c.stats(), |cs| cs.pending == 2).await;
    assert_eq!(cs.ack_pending, 0);
    let mut batch = fetch_now(&c, 10).await;
    batch.sort_by_key(|r| r.seq);
    assert_eq!(seqs(&batch), vec![1, 3]);
    assert_eq!(batch[1].subject, "webhook.refunds");
    // At most `max` across the parts.
    bus.publish(msg("webhook.orders", "4")).await.unwrap();
    bus.publish(msg("webhook.refunds", "5")).await.unwrap();
    assert_eq!(fetch_now(&c, 1).await.len(), 1);
    assert_eq!(fetch_now(&c, 10).await.len(), 1);
    // A waiting fetch sees a message published later.
    let producer = Arc::clone(&bus);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        producer.publish(msg("webhook.refunds", "6")).await.unwrap();
    });
    let start = Instant::now();
    let batch = c.fetch(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(seqs(&batch), vec![6]);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    for seq in [1, 3, 4, 5, 6] {
        c.ack(seq).await.unwrap();
    }
    depth_becomes(&bus, 0).await;
}

#[tokio::test]
async fn too_many_consumers() {
    let server = TestServer::start();
    let bus = bus(
        &server,
        Limits {
            max_consumers: Some(1),
            ..unlimited()
        },
    )
    .await;
    bus.consumer(config("a")).await.unwrap();
    let err = bus.consumer(config("b")).await.err().expect("too many");
    assert!(
        matches!(&err, BusError::TooManyConsumers { name, max: 1 } if name == "b"),
        "{err:?}"
    );
    bus.consumer(config("a")).await.unwrap();
}

#[tokio::test]
async fn wait_for_space_wakes_when_an_ack_makes_room() {
    let server = TestServer::start();
    let bus = bus(
        &server,
        Limits {
            max_msgs: Some(1),
            ..unlimited()
        },
    )
    .await;
    let c = bus.consumer(config("c")).await.unwrap();
    publish_n(&bus, "s", 1).await;
    fetch_now(&c, 1).await;
    assert!(bus.publish(msg("s", "x")).await.is_err());
    let start = Instant::now();
    bus.wait_for_space(Duration::from_millis(300)).await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(290), "{waited:?}");
    let acker = Arc::clone(&c);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        acker.ack(1).await.unwrap();
    });
    let start = Instant::now();
    bus.wait_for_space(Duration::from_secs(10)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(bus.publish(msg("s", "x")).await.unwrap(), 2);
}

#[tokio::test]
async fn close_stops_publishing_and_fetching_but_not_acks() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let c = bus.consumer(config("c")).await.unwrap();
    publish_n(&bus, "s", 2).await;
    fetch_now(&c, 1).await;
    let waiting = Arc::clone(&c);
    let fetch = tokio::spawn(async move { waiting.fetch(10, Duration::from_secs(30)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    bus.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .expect("fetch not woken by close");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(fetch_now(&c, 10).await.is_empty());
    let refused = msg("s", "late");
    assert!(matches!(
        bus.publish(refused.clone()).await,
        Err(PublishError::Closed { message }) if message == refused
    ));
    assert!(matches!(
        bus.consumer(config("late")).await,
        Err(BusError::Closed)
    ));
    let start = Instant::now();
    bus.wait_for_space(Duration::from_secs(30)).await;
    assert!(start.elapsed() < Duration::from_secs(1));
    c.ack(1).await.unwrap();
}

/// Kill -9 the server: publish and fetch answer `Unavailable` within a few
/// seconds; restarted on the same store, every accepted message is there.
#[tokio::test]
async fn server_crash_and_restart() {
    let mut server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let mut cfg = config("c");
    cfg.ack_wait = Duration::from_secs(2);
    let c = bus.consumer(cfg).await.unwrap();
    let accepted = publish_n(&bus, "s", 5).await;
    assert_eq!(seqs(&fetch_now(&c, 1).await), vec![1]);
    c.ack(1).await.unwrap();
    server.kill();

    let start = Instant::now();
    let refused = msg("s", "while down");
    match bus.publish(refused.clone()).await {
        Err(PublishError::Unavailable { message, reason }) => {
            assert_eq!(message, refused);
            assert!(!reason.is_empty());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let start = Instant::now();
    assert!(matches!(
        c.fetch(10, Duration::from_secs(30)).await,
        Err(BusError::Unavailable(_))
    ));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(!bus.is_connected());

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !bus.is_connected() {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every accepted message not acked before the crash comes back. Seq 1
    // may come back too: its ack was sent just before the kill and may not
    // have been processed (at-least-once).
    let want: BTreeSet<u64> = accepted[1..].iter().copied().collect();
    let mut got = BTreeSet::new();
    while !want.is_subset(&got) {
        let batch = c.fetch(10, Duration::from_secs(5)).await.unwrap();
        assert!(!batch.is_empty(), "missing messages; got {got:?}");
        got.extend(seqs(&batch));
    }
    assert!(
        got.is_subset(&accepted.iter().copied().collect()),
        "{got:?}"
    );
    assert_eq!(bus.publish(msg("s", "after")).await.unwrap(), 6);
}

/// Fetches answered in full reuse one pull subscription; a fetch answered
/// short drops it, so that a request the server may keep parked cannot
/// deliver to this process while no fetch runs: a message published after
/// that fetch stays undelivered until the next one.
#[tokio::test]
async fn full_batches_reuse_one_pull_subscription() {
    let server = TestServer::start();
    let bus = bus(&server, unlimited()).await;
    let c = bus.consumer(config("c")).await.unwrap();
    let shared = Arc::clone(&bus.inner.consumers.lock()["c"]);
    assert_eq!(shared.kept_subscriptions(), 0);
    let s = publish_n(&bus, "s", 5).await;
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[0..2]);
    assert_eq!(shared.kept_subscriptions(), 1);
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[2..4]);
    assert_eq!(shared.kept_subscriptions(), 1);
    // One left of the two asked for: answered short.
    assert_eq!(seqs(&fetch_now(&c, 2).await), s[4..5]);
    assert_eq!(shared.kept_subscriptions(), 0);
    let late = publish_n(&bus, "s", 1).await;
    let cs = eventually(&bus, || c.stats(), |cs| cs.pending == 1).await;
    assert_eq!((cs.pending, cs.ack_pending), (1, 5));
    let batch = fetch_now(&c, 10).await;
    assert_eq!((seqs(&batch), counts(&batch)), (late, vec![1]));
}
