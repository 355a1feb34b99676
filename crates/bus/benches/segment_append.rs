//! Durable append throughput of the segment log: 64 concurrent tokio tasks
//! publish 256-byte payloads with `SyncPolicy::Always` (every publish
//! returns only after the fdatasync covering it), on a temp dir.
//!
//! `cargo bench -p spillway-bus --bench segment_append`
//!
//! Criterion reports elements/s = msgs/s. A one-off run first prints the
//! rate together with the mean batch size (records per fdatasync), which is
//! what group commit is about.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spillway_bus::segment::{LogConfig, SegmentLog, SyncPolicy};
use spillway_bus::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PUBLISHERS: u64 = 64;
const PAYLOAD: usize = 256;

fn message() -> Message {
    Message {
        subject: "bench.segment".into(),
        headers: Vec::new(),
        payload: Bytes::from(vec![b'x'; PAYLOAD]),
    }
}

/// Appends at least `total` messages from [`PUBLISHERS`] tasks; returns
/// (messages appended, elapsed).
async fn run(log: &Arc<SegmentLog>, total: u64) -> (u64, Duration) {
    let per_task = total.div_ceil(PUBLISHERS);
    let start = Instant::now();
    let tasks: Vec<_> = (0..PUBLISHERS)
        .map(|_| {
            let log = Arc::clone(log);
            tokio::spawn(async move {
                for _ in 0..per_task {
                    if let Err(e) = log.append(message()).await {
                        panic!("append failed: {e}");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    let elapsed = start.elapsed();
    // Keep the temp dir small: everything appended so far may go.
    log.delete_before(log.next_seq())
        .expect("delete old segments");
    (per_task * PUBLISHERS, elapsed)
}

fn segment_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = LogConfig {
        sync: SyncPolicy::Always,
        ..LogConfig::default()
    };
    let (log, _) = SegmentLog::open(dir.path(), config, |_| {}).expect("open log");
    let log = Arc::new(log);

    let before = log.stats();
    let (n, elapsed) = rt.block_on(run(&log, 200_000));
    let after = log.stats();
    let syncs = after.syncs - before.syncs;
    let sync_time = after.sync_time - before.sync_time;
    println!(
        "segment_append: {n} msgs of {PAYLOAD} B, {PUBLISHERS} publishers, SyncPolicy::Always: \
         {:.0} msgs/s in {elapsed:.2?}; {syncs} fdatasyncs averaging {:.0?} ({:.0}% of the time), \
         {:.1} msgs per sync (largest batch {})",
        n as f64 / elapsed.as_secs_f64(),
        sync_time / syncs.max(1) as u32,
        100.0 * sync_time.as_secs_f64() / elapsed.as_secs_f64(),
        n as f64 / syncs.max(1) as f64,
        after.largest_batch,
    );

    let mut group = c.benchmark_group("segment_append");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("64_publishers_256B_always", |b| {
        b.iter_custom(|iters| {
            let (n, elapsed) = rt.block_on(run(&log, iters));
            // Scale to exactly `iters` messages.
            elapsed.mul_f64(iters as f64 / n as f64)
        })
    });
    group.finish();
    let end = log.stats();
    let syncs = end.syncs - after.syncs;
    println!(
        "segment_append (criterion phase): {} msgs, {syncs} fdatasyncs averaging {:.0?}, \
         {:.1} msgs per sync",
        end.appended - after.appended,
        (end.sync_time - after.sync_time) / syncs.max(1) as u32,
        (end.appended - after.appended) as f64 / syncs.max(1) as f64,
    );
    rt.block_on(async { log.close().await.expect("close") });
}

criterion_group!(benches, segment_append);
criterion_main!(benches);
