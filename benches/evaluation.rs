//! Events per second through a Lua `script` filter and a `jq` transform,
//! evaluated inline on the calling task (how spillway ran them before the
//! evaluation pool) and through the pool (how it runs them now), so the
//! cost of the hand-off between a tokio task and a pool thread is visible.
//!
//! Run: `cargo bench --bench evaluation` (criterion-free: it prints a
//! table). `SPILLWAY_BENCH_EVENTS` sets the events per measurement
//! (default 20 000) and `SPILLWAY_BENCH_ROUNDS` the rounds (default 3; the
//! median is printed).
//!
//! Each event's data is parsed from JSON and evaluated in a fresh Lua state
//! (or a fresh jq run), as in a sensor. "inline" also pays the deadline
//! check and the pattern guard, which are part of the evaluation itself.

use serde_json::Value;
use spillway::sensor::evaluation::{Budget, EvaluationPool, EvaluationSettings};
use spillway::sensor::filter::script::LuaScript;
use spillway::sensor::transform::JqProgram;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SCRIPT: &str = "return event.body.kind == 'order' and event.body.total >= 100";
const JQ: &str = "{id: .body.id, kind: .body.kind, total: .body.total}";

fn event(i: usize) -> Vec<u8> {
    format!(
        r#"{{"body":{{"id":"order-{i}","kind":"order","total":{},"items":[{{"sku":"a","qty":1}},{{"sku":"b","qty":2}}],"note":"bench"}}}}"#,
        i % 250
    )
    .into_bytes()
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn parse(data: &[u8]) -> Value {
    serde_json::from_slice(data).expect("bench events are JSON")
}

fn budget() -> Budget {
    Budget::starting_now(Duration::from_secs(60))
}

/// Events/s of `run` over `events` events.
async fn rate<F, Fut>(events: usize, run: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for i in 0..events {
        run(i).await;
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Events/s with `callers` tasks sharing `events` events.
async fn rate_concurrent(
    events: usize,
    callers: usize,
    pool: &EvaluationPool,
    script: &Arc<LuaScript>,
) -> f64 {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for caller in 0..callers {
        let (pool, script) = (pool.clone(), Arc::clone(script));
        tasks.spawn(async move {
            for i in (caller..events).step_by(callers) {
                let data = parse(&event(i));
                let script = Arc::clone(&script);
                let pass = pool.evaluate(move |b| script.evaluate_bool(&data, b)).await;
                assert!(pass.is_ok());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    events as f64 / start.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn main() {
    let events = setting("SPILLWAY_BENCH_EVENTS", 20_000);
    let rounds = setting("SPILLWAY_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let script = Arc::new(LuaScript::compile(SCRIPT, "filter script").expect("compiles"));
    let jq = Arc::new(JqProgram::compile(JQ).expect("compiles"));
    let pool = EvaluationPool::new("bench", EvaluationSettings::default(), None);
    let mut results: Vec<(&str, Vec<f64>)> = vec![
        ("Lua filter, inline", vec![]),
        ("Lua filter, pool, 1 caller", vec![]),
        ("Lua filter, pool, 4 callers", vec![]),
        ("jq transform, inline", vec![]),
        ("jq transform, pool, 1 caller", vec![]),
    ];
    runtime.block_on(async {
        for _ in 0..rounds {
            let lua_inline = rate(events, |i| {
                let script = Arc::clone(&script);
                async move {
                    let data = parse(&event(i));
                    assert!(script.evaluate_bool(&data, &budget()).is_ok());
                }
            })
            .await;
            let lua_pool = rate(events, |i| {
                let (pool, script) = (pool.clone(), Arc::clone(&script));
                async move {
                    let data = parse(&event(i));
                    let pass = pool.evaluate(move |b| script.evaluate_bool(&data, b)).await;
                    assert!(pass.is_ok());
                }
            })
            .await;
            let lua_concurrent = rate_concurrent(events, 4, &pool, &script).await;
            let jq_inline = rate(events, |i| {
                let jq = Arc::clone(&jq);
                async move {
                    let data = parse(&event(i));
                    assert!(jq.run(&data, &budget()).is_ok());
                }
            })
            .await;
            let jq_pool = rate(events, |i| {
                let (pool, jq) = (pool.clone(), Arc::clone(&jq));
                async move {
                    let data = parse(&event(i));
                    let out = pool.evaluate(move |b| jq.run(&data, b)).await;
                    assert!(out.is_ok());
                }
            })
            .await;
            for (slot, value) in
                results
                    .iter_mut()
                    .zip([lua_inline, lua_pool, lua_concurrent, jq_inline, jq_pool])
            {
                slot.1.push(value);
            }
        }
    });
    println!("{events} events per measurement, median of {rounds} rounds");
    println!("{:<32} {:>12}", "path", "events/s");
    for (name, values) in results {
        println!("{name:<32} {:>12.0}", median(values));
    }
}
