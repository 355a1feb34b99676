//! Cost of one uncontended acquire + complete, per algorithm, on real time.

use criterion::{criterion_group, criterion_main, Criterion};
use spillway_flowctl::{
    AdaptiveConcurrency, AimdConfig, Algorithm, Gradient2Config, Outcome, SystemClock,
};
use std::hint::black_box;
use std::time::Duration;

fn acquire_complete(c: &mut Criterion) {
    // Calibration: the floor any shared counter pays (one increment, one
    // decrement) and one clock read, on this machine.
    let counter = std::sync::atomic::AtomicUsize::new(0);
    c.bench_function("baseline/fetch_add+fetch_sub", |b| {
        b.iter(|| {
            black_box(counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel));
            counter.fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
        })
    });
    let clock = SystemClock::new();
    c.bench_function("baseline/clock.now", |b| {
        b.iter(|| spillway_flowctl::Clock::now(black_box(&clock)))
    });

    let outcome = Outcome::Success {
        rtt: Duration::from_millis(10),
    };
    for (name, algorithm) in [
        ("fixed", Algorithm::Fixed(64)),
        ("aimd", Algorithm::Aimd(AimdConfig::default())),
        (
            "gradient2",
            Algorithm::Gradient2(Gradient2Config::default()),
        ),
    ] {
        let limiter =
            AdaptiveConcurrency::with_clock(algorithm, SystemClock::new()).expect("valid defaults");
        c.bench_function(&format!("adaptive/{name}/acquire+complete"), |b| {
            b.iter(|| {
                if let Ok(token) = limiter.try_acquire() {
                    token.complete(black_box(outcome));
                }
            })
        });
        c.bench_function(&format!("adaptive/{name}/acquire+drop"), |b| {
            b.iter(|| drop(black_box(limiter.try_acquire())))
        });
    }
}

/// AIMD reads the clock on every completion; a fake clock shows the rest.
fn aimd_without_clock_cost(c: &mut Criterion) {
    let outcome = Outcome::Success {
        rtt: Duration::from_millis(10),
    };
    let limiter = AdaptiveConcurrency::with_clock(
        Algorithm::Aimd(AimdConfig::default()),
        spillway_flowctl::FakeClock::new(),
    )
    .expect("valid defaults");
    c.bench_function("adaptive/aimd-fakeclock/acquire+complete", |b| {
        b.iter(|| {
            if let Ok(token) = limiter.try_acquire() {
                token.complete(black_box(outcome));
            }
        })
    });
}

criterion_group!(benches, acquire_complete, aimd_without_clock_cost);
criterion_main!(benches);
