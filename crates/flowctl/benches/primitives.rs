//! Hot-path cost of each flow-control primitive, uncontended and (for the
//! rate limiter and semaphore) with two threads hammering one instance.
//!
//! Run: `cargo bench -p spillway-flowctl --bench primitives`.
//! Goal (issue 4): every uncontended check under 100 ns on the 2-core CI box.

use criterion::{criterion_group, criterion_main, Criterion};
use spillway_flowctl::{RateLimit, RateLimiter, SystemClock};
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

criterion_group!(benches, rate_limiter);
criterion_main!(benches);
