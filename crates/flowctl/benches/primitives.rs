//! Hot-path cost of each flow-control primitive, uncontended and (for the
//! rate limiter and semaphore) with two threads hammering one instance.
//!
//! Run: `cargo bench -p spillway-flowctl --bench primitives`.
//! Goal (issue 4): every uncontended check under 100 ns on the 2-core CI box.

use criterion::{criterion_group, criterion_main, Criterion};
use spillway_flowctl::{
    AutoscalePolicy, BoundedBuffer, BufferLimits, CreditWindow, GradualDrain, LagAutoscaler,
    PriorityQueue, PriorityShedder, RateLimit, RateLimiter, Semaphore, SheddingPolicy, SlowStart,
    SystemClock, WhenFull,
};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs `op` `iters` times on each of two threads against shared state and
/// returns the mean wall time per operation (so a result comparable with the
/// uncontended figure).
fn contended<S: Send + Sync + 'static>(shared: Arc<S>, iters: u64, op: fn(&S)) -> Duration {
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let other = {
        let (shared, barrier) = (shared.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..iters {
                op(&shared);
            }
        })
    };
    barrier.wait();
    let start = Instant::now();
    for _ in 0..iters {
        op(&shared);
    }
    let _ = other.join();
    start.elapsed() / 2
}

fn rate_limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limiter");
    // A rate high enough that checks are mostly admitted, as on a busy source.
    let limit = RateLimit::per_second(1_000_000_000)
        .and_then(|l| l.with_burst(1000))
        .expect("valid limit");
    let limiter = RateLimiter::with_clock(limit, SystemClock::new());
    group.bench_function("check_admitted", |b| b.iter(|| black_box(limiter.check())));

    // A limit that refuses almost every call: the path a storm takes.
    let strict = RateLimiter::with_clock(
        RateLimit::per_second(1).expect("valid limit"),
        SystemClock::new(),
    );
    group.bench_function("check_refused", |b| b.iter(|| black_box(strict.check())));

    let shared = Arc::new(RateLimiter::with_clock(limit, SystemClock::new()));
    group.bench_function("check_2_threads", |b| {
        b.iter_custom(|iters| {
            contended(shared.clone(), iters, |l| {
                let _ = black_box(l.check());
            })
        })
    });
    group.finish();
}

fn semaphore(c: &mut Criterion) {
    let mut group = c.benchmark_group("semaphore");
    let sem = Semaphore::new(5, 1000);
    group.bench_function("try_acquire_drop", |b| {
        b.iter(|| drop(black_box(sem.try_acquire())))
    });
    let shared = Arc::new(Semaphore::new(5, 1000));
    group.bench_function("try_acquire_drop_2_threads", |b| {
        b.iter_custom(|iters| {
            contended(shared.clone(), iters, |s| drop(black_box(s.try_acquire())))
        })
    });
    // tokio's semaphore on the same path, for reference.
    let tokio_sem = Arc::new(tokio::sync::Semaphore::new(5));
    group.bench_function("tokio_reference_try_acquire_drop", |b| {
        b.iter(|| drop(black_box(tokio_sem.clone().try_acquire_owned())))
    });
    group.finish();
}

fn buffer_and_credits(c: &mut Criterion) {
    let buffer: BoundedBuffer<u64, SystemClock> = BoundedBuffer::with_clock(
        BufferLimits::kafka_default(),
        WhenFull::RejectNew,
        SystemClock::new(),
    );
    c.bench_function("buffer/try_push_try_pop", |b| {
        b.iter(|| {
            let _ = black_box(buffer.try_push(7, 256));
            black_box(buffer.try_pop())
        })
    });
    let credits = CreditWindow::new(10);
    c.bench_function("credit/try_acquire_release", |b| {
        b.iter(|| {
            let granted = black_box(credits.try_acquire(1));
            black_box(credits.release(granted))
        })
    });
}

fn shedding_and_priority(c: &mut Criterion) {
    let shedder = PriorityShedder::new(SheddingPolicy::single(80_000, 2).expect("valid policy"));
    let mut depth = 0u64;
    c.bench_function("priority/shedder_decide", |b| {
        b.iter(|| {
            depth = (depth + 7_919) % 160_000;
            black_box(shedder.decide(black_box(5), depth))
        })
    });
    let mut queue: PriorityQueue<u64, SystemClock> =
        PriorityQueue::with_clock(1024, Duration::from_millis(100), SystemClock::new());
    for i in 0..512 {
        let _ = queue.push((i % 10) as u8, i);
    }
    let mut n = 0u64;
    c.bench_function("priority/queue_push_pop_512_deep", |b| {
        b.iter(|| {
            n += 1;
            let _ = queue.push((n % 10) as u8, n);
            black_box(queue.pop())
        })
    });
}

fn drain_and_autoscale(c: &mut Criterion) {
    // At 1e9/s (the supported maximum) nearly every call is admitted.
    let drain = GradualDrain::with_clock(
        SlowStart {
            initial_rate: 1e9,
            factor: 1.0,
            interval: Duration::from_secs(1),
            max_rate: 1e9,
        },
        SystemClock::new(),
    )
    .expect("valid slow start");
    c.bench_function("drain/try_acquire", |b| {
        b.iter(|| black_box(drain.try_acquire()))
    });
    let mut scaler = LagAutoscaler::with_clock(AutoscalePolicy::default(), SystemClock::new())
        .expect("valid policy");
    let mut lag = 0u64;
    c.bench_function("autoscale/observe", |b| {
        b.iter(|| {
            lag = (lag + 99_991) % 2_000_000;
            black_box(scaler.observe(lag))
        })
    });
}

criterion_group!(
    benches,
    rate_limiter,
    semaphore,
    buffer_and_credits,
    shedding_and_priority,
    drain_and_autoscale
);
criterion_main!(benches);
