//! The embedded segment bus against NATS JetStream, in one run, with the
//! same workload (issue 5's comparison):
//!
//! `cargo bench -p spillway-bus --bench bus_vs_jetstream`
//!
//! It starts its own `nats-server -js` (file storage in a temporary
//! directory, free port; binary `/usr/sbin/nats-server` or `NATS_SERVER_BIN`)
//! and, for each of [`ROUNDS`] rounds (the order of the two alternates, so
//! that background load hits both alike):
//!
//! - **publish**: [`PUBLISHERS`] tasks publish `messages / PUBLISHERS`
//!   messages of [`PAYLOAD`] bytes each, one in flight per task, so both
//!   systems have 64 publishes outstanding at any time. Segment bus:
//!   `Bus::publish` with `SyncPolicy::Always` (returns after the
//!   `fdatasync` covering the message). JetStream: async-nats publish, the
//!   PubAck awaited (64 outstanding PubAcks, inside async-nats' window of
//!   5000). Each publish's latency (call to ack) is kept.
//! - **consume + ack**: one consumer drains the stream the publish phase
//!   filled, in batches of [`BATCH`], acking every message, until the
//!   stream is empty. Segment bus: `Consumer::fetch` + `Consumer::ack`.
//!   JetStream: a durable pull consumer's message stream + `ack()`; the
//!   phase ends when the server reports the stream empty (acks are
//!   fire-and-forget, the work is done once the server applied them).
//! - The same two phases through spillway's own JetStream backend
//!   ([`JetStreamBus`]: `Bus::publish`, `Consumer::fetch` + `Consumer::ack`)
//!   on the same server, so the cost of the backend's bookkeeping (pull
//!   requests, delivery handles) shows next to the bare client's.
//!
//! Both streams hold messages by interest (a consumer exists before the
//! first publish) with no limits that could refuse a publish.
//!
//! Prints a Markdown table: the median over the rounds of each figure.
//! Run without `--bench` (as `cargo test --all-targets` does), it makes one
//! round of 640 messages, to check that it still works.
//! `SPILLWAY_BENCH_MESSAGES` (default 100 000), `SPILLWAY_BENCH_ROUNDS`
//! (default 3) and `SPILLWAY_BENCH_PUBLISHERS` (default 64) change the run.
//! `SPILLWAY_BENCH_ONLY=segment` runs only the segment bus rounds (no
//! server; for profiling the segment bus alone), `SPILLWAY_BENCH_SYNC=never`
//! runs them with `SyncPolicy::Never` (the publish path's CPU ceiling), and
//! `SPILLWAY_BENCH_WORKERS` (default 2) sizes the tokio runtime.
//!
//! What the comparison does not say: a JetStream 2.9 PubAck means the
//! message is in the server's page cache (file storage syncs on an
//! interval), a segment-bus `Ok` means `fdatasync` returned. And the
//! server, its client and the benchmark share the same cores.

#[allow(dead_code)]
#[path = "../src/jetstream/test_server.rs"]
mod test_server;

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use spillway_bus::jetstream::JetStreamBus;
use spillway_bus::segment::SyncPolicy;
use spillway_bus::segment_bus::{SegmentBus, SegmentBusOptions};
use spillway_bus::{Bus, Consumer, ConsumerConfig, DiscardPolicy, Limits, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};
use test_server::TestServer;

/// Concurrent publishers unless `SPILLWAY_BENCH_PUBLISHERS` says otherwise.
const PUBLISHERS: usize = 64;

fn publishers() -> usize {
    env_or("SPILLWAY_BENCH_PUBLISHERS", PUBLISHERS).max(1)
}
const PAYLOAD: usize = 256;
const BATCH: usize = 256;
/// Both consumers may have this many delivered, unacked messages.
const MAX_ACK_PENDING: usize = 4 * BATCH;
const ROUNDS: usize = 3;
const MESSAGES: usize = 100_000;
const SUBJECT: &str = "bench.orders";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one round measured for one system.
#[derive(Debug, Clone, Copy)]
struct Round {
    publish_rate: f64,
    consume_rate: f64,
    p50: Duration,
    p99: Duration,
}

fn payload() -> Bytes {
    Bytes::from(vec![b'x'; PAYLOAD])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Runs `PUBLISHERS` tasks of `per_task` calls of `publish` each; returns
/// the elapsed time and every call's latency, sorted.
async fn publish_phase<F, Fut>(per_task: usize, publish: F) -> (Duration, Vec<Duration>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..publishers())
        .map(|_| {
            let publish = publish.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    let t = Instant::now();
                    publish().await;
                    latencies.push(t.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(per_task * publishers());
    for t in tasks {
        all.extend(t.await.expect("publisher task"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    (elapsed, all)
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

/// The durable consumer both spillway backends drain the stream with.
fn bench_consumer() -> ConsumerConfig {
    ConsumerConfig {
        max_ack_pending: MAX_ACK_PENDING,
        ..ConsumerConfig::new("bench")
    }
}

/// `publish_phase` through a spillway [`Bus`]: each call publishes one
/// message and waits for its answer.
async fn publish_through<B: Bus + 'static>(
    bus: Arc<B>,
    per_task: usize,
    label: &'static str,
) -> (Duration, Vec<Duration>) {
    let body = payload();
    publish_phase(per_task, move || {
        let bus = Arc::clone(&bus);
        let message = Message {
            subject: SUBJECT.to_string(),
            headers: Vec::new(),
            payload: body.clone(),
        };
        async move {
            if let Err(err) = bus.publish(message).await {
                panic!("{label} publish failed: {err}");
            }
        }
    })
    .await
}

/// Fetches and acks `total` messages through a spillway [`Consumer`];
/// where the time went: fetching (lock, reads) and acking.
async fn fetch_and_ack(consumer: &dyn Consumer, total: usize, label: &str) -> (Duration, Duration) {
    let (mut fetching, mut acking) = (Duration::ZERO, Duration::ZERO);
    let mut acked = 0;
    while acked < total {
        let t = Instant::now();
        let batch = consumer
            .fetch(BATCH, Duration::from_secs(5))
            .await
            .expect("fetch");
        fetching += t.elapsed();
        assert!(!batch.is_empty(), "{label}: stream ran dry at {acked}");
        let t = Instant::now();
        for r in batch {
            consumer.ack(r.seq).await.expect("ack");
            acked += 1;
        }
        acking += t.elapsed();
    }
    (fetching, acking)
}

fn report_consume(
    label: &str,
    total: usize,
    consume: Duration,
    fetching: Duration,
    acking: Duration,
) {
    let per_msg = |d: Duration| d.as_secs_f64() * 1e6 / total as f64;
    eprintln!(
        "  {label}: {total} consumed in {consume:.2?}: fetch {fetching:.2?} ({:.2} µs/msg), ack \
         {acking:.2?} ({:.2} µs/msg)",
        per_msg(fetching),
        per_msg(acking),
    );
}

async fn segment_round(per_task: usize) -> Round {
    let total = per_task * publishers();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut options = SegmentBusOptions::default();
    options.log.sync = match std::env::var("SPILLWAY_BENCH_SYNC").as_deref() {
        Ok("never") => SyncPolicy::Never,
        _ => SyncPolicy::Always,
    };
    let (bus, _) = SegmentBus::open(dir.path(), unlimited(), options).expect("open segment bus");
    let consumer = bus.consumer(bench_consumer()).await.expect("consumer");
    let before = bus.log_stats();
    let (elapsed, latencies) = publish_through(Arc::clone(&bus), per_task, "segment bus").await;
    let log = bus.log_stats();
    let syncs = log.syncs - before.syncs;
    let writes = log.batches - before.batches;
    eprintln!(
        "  segment bus: {total} published in {elapsed:.2?}; {writes} writes, {syncs} fdatasyncs, \
         {:.1} msgs each, {:.0?} each on average",
        total as f64 / syncs.max(1) as f64,
        (log.sync_time - before.sync_time) / syncs.max(1) as u32,
    );

    let start = Instant::now();
    let (fetching, acking) = fetch_and_ack(&*consumer, total, "segment bus").await;
    let consume = start.elapsed();
    report_consume("segment bus", total, consume, fetching, acking);
    assert_eq!(bus.stats().messages, 0, "segment bus: stream not drained");
    bus.close().await;
    Round {
        publish_rate: total as f64 / elapsed.as_secs_f64(),
        consume_rate: total as f64 / consume.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

async fn jetstream_round(url: &str, round: usize, per_task: usize) -> Round {
    let total = per_task * publishers();
    let client = async_nats::connect(url).await.expect("connect to NATS");
    // At most PUBLISHERS PubAcks are outstanding: well inside async-nats'
    // window of 5000, so the client never holds a publish back.
    let js = jetstream::new(client);
    let name = format!("bench{round}");
    let stream = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            retention: stream::RetentionPolicy::Interest,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".to_string()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            max_ack_pending: MAX_ACK_PENDING as i64,
            ..Default::default()
        })
        .await
        .expect("create consumer");
    let subject = format!("{name}.{SUBJECT}");
    let body = payload();
    let publisher = js.clone();
    let (elapsed, latencies) = publish_phase(per_task, move || {
        let js = publisher.clone();
        let subject = subject.clone();
        let body = body.clone();
        async move {
            let ack = js.publish(subject, body).await.expect("publish");
            ack.await.expect("PubAck");
        }
    })
    .await;
    let mut stream = js.get_stream(&name).await.expect("stream");
    let stored = stream.info().await.expect("stream info").state.messages;
    assert_eq!(stored, total as u64, "JetStream: not every message stored");
    eprintln!("  JetStream:   {total} published in {elapsed:.2?}");

    let start = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(BATCH)
        .messages()
        .await
        .expect("consumer stream");
    let mut acked = 0;
    while acked < total {
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap_or_else(|_| panic!("JetStream: stream ran dry at {acked}"))
            .expect("consumer stream ended")
            .expect("message");
        msg.ack().await.expect("ack");
        acked += 1;
    }
    // Done when the server has applied the acks: the stream is empty.
    loop {
        if stream.info().await.expect("stream info").state.messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let consume = start.elapsed();
    eprintln!("  JetStream:   {total} consumed in {consume:.2?}");
    drop(messages);
    js.delete_stream(&name).await.expect("delete stream");
    Round {
        publish_rate: total as f64 / elapsed.as_secs_f64(),
        consume_rate: total as f64 / consume.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

async fn jetstream_bus_round(url: &str, round: usize, per_task: usize) -> Round {
    let total = per_task * publishers();
    let name = format!("busbench{round}");
    let bus = JetStreamBus::connect(url, &name, unlimited(), &[] as &[&str])
        .await
        .expect("connect the JetStream bus");
    let consumer = bus.consumer(bench_consumer()).await.expect("consumer");
    let (elapsed, latencies) = publish_through(Arc::clone(&bus), per_task, "JetStreamBus").await;
    eprintln!("  JetStreamBus: {total} published in {elapsed:.2?}");

    let start = Instant::now();
    let (fetching, acking) = fetch_and_ack(&*consumer, total, "JetStreamBus").await;
    // Done when the server has applied the acks: the stream is empty.
    loop {
        bus.refresh_stats().await.expect("stream info");
        if bus.stats().messages == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let consume = start.elapsed();
    report_consume("JetStreamBus", total, consume, fetching, acking);
    bus.close().await;
    Round {
        publish_rate: total as f64 / elapsed.as_secs_f64(),
        consume_rate: total as f64 / consume.as_secs_f64(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn summary(rounds: &[Round]) -> Round {
    Round {
        publish_rate: median(rounds.iter().map(|r| r.publish_rate).collect()),
        consume_rate: median(rounds.iter().map(|r| r.consume_rate).collect()),
        p50: median(rounds.iter().map(|r| r.p50).collect()),
        p99: median(rounds.iter().map(|r| r.p99).collect()),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test
    // --all-targets`) one small round checks that the benchmark still runs.
    let full = std::env::args().any(|a| a == "--bench");
    let (messages, rounds) = if full {
        (MESSAGES, ROUNDS)
    } else {
        (10 * publishers(), 1)
    };
    let messages = env_or("SPILLWAY_BENCH_MESSAGES", messages);
    let rounds = env_or("SPILLWAY_BENCH_ROUNDS", rounds).max(1);
    let per_task = messages.div_ceil(publishers());
    let total = per_task * publishers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(env_or("SPILLWAY_BENCH_WORKERS", 2).max(1))
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var("SPILLWAY_BENCH_ONLY").as_deref() == Ok("segment") {
        let rounds: Vec<Round> = (0..rounds)
            .map(|round| {
                eprintln!("round {}", round + 1);
                let r = runtime.block_on(segment_round(per_task));
                eprintln!("  segment {r:?}");
                r
            })
            .collect();
        println!(
            "segment bus only, median of {}: {:?}",
            rounds.len(),
            summary(&rounds)
        );
        return;
    }
    let server = TestServer::start();
    let url = server.url();
    let version = std::process::Command::new(
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "/usr/sbin/nats-server".into()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    .unwrap_or_default();
    eprintln!(
        "bus_vs_jetstream: {total} messages of {PAYLOAD} B, {} publishers, \
         {rounds} rounds; {version}",
        publishers()
    );

    let mut segment = Vec::new();
    let mut nats = Vec::new();
    let mut backend = Vec::new();
    for round in 0..rounds {
        eprintln!("round {}", round + 1);
        runtime.block_on(async {
            if round % 2 == 0 {
                segment.push(segment_round(per_task).await);
                nats.push(jetstream_round(&url, round, per_task).await);
            } else {
                nats.push(jetstream_round(&url, round, per_task).await);
                segment.push(segment_round(per_task).await);
            }
            backend.push(jetstream_bus_round(&url, round, per_task).await);
        });
        eprintln!(
            "  segment {:?}\n  jetstream {:?}\n  jetstream bus {:?}",
            segment[round], nats[round], backend[round]
        );
    }
    let s = summary(&segment);
    let j = summary(&nats);
    let b = summary(&backend);
    let rate = |v: f64| format!("{:.0}", v);
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!(
        "{total} messages of {PAYLOAD} B, {} concurrent publishers, consumer batches \
         of {BATCH}; median of {rounds} rounds",
        publishers()
    );
    println!();
    println!("| measure | segment bus (`sync: always`) | JetStream file storage | segment / JetStream | goal | spillway `JetStreamBus` |");
    println!("|---|---:|---:|---:|---|---:|");
    println!(
        "| publish, msgs/s | {} | {} | {:.2}× | ≥ 2.5× | {} |",
        rate(s.publish_rate),
        rate(j.publish_rate),
        s.publish_rate / j.publish_rate,
        rate(b.publish_rate)
    );
    println!(
        "| consume + ack, msgs/s | {} | {} | {:.2}× | ≥ 2× | {} |",
        rate(s.consume_rate),
        rate(j.consume_rate),
        s.consume_rate / j.consume_rate,
        rate(b.consume_rate)
    );
    println!(
        "| publish latency p50 | {} | {} | | | {} |",
        ms(s.p50),
        ms(j.p50),
        ms(b.p50)
    );
    println!(
        "| publish latency p99 | {} | {} | | | {} |",
        ms(s.p99),
        ms(j.p99),
        ms(b.p99)
    );
}
