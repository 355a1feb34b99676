//! The pool with stand-in evaluations: ones that stop at their budget (as
//! Lua and jq do) and ones that ignore it until the test releases them (as
//! a stuck C function does). Real time, short deadlines; no durations are
//! asserted, only outcomes and counts.

use super::*;
use crate::sensor::filter::FilterError;
use crate::telemetry::Metrics;
use std::sync::mpsc;
use std::sync::Arc;

fn settings(threads: usize, max_queued: usize, max_abandoned: usize) -> EvaluationSettings {
    EvaluationSettings {
        timeout: Duration::from_millis(50),
        threads,
        max_queued,
        max_abandoned,
    }
}

/// An evaluation that ignores its budget until `release` is sent to (or
/// dropped), telling `started` when it runs.
fn stuck(
    started: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
) -> impl FnOnce(&Budget) -> Result<u32, FilterError> + Send + 'static {
    move |_| {
        let _ = started.send(());
        let _ = release.recv();
        Ok(0)
    }
}

/// Waits (bounded) until `condition` holds; panics if it never does.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..2000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn threads_start_at_the_first_evaluation_and_answer() {
    let pool = EvaluationPool::new("test", settings(2, 8, 1), None);
    assert_eq!(pool.live(), 0, "no thread before the first evaluation");
    assert_eq!(pool.evaluate(|_| Ok(41 + 1)).await, Ok(42));
    assert_eq!(pool.live(), 2);
    let err = pool
        .evaluate(|_| Err::<(), _>(FilterError::Script("boom".into())))
        .await;
    assert_eq!(err, Err(FilterError::Script("boom".into())));
}

#[tokio::test]
async fn a_cooperative_evaluation_stops_at_its_deadline_and_keeps_its_thread() {
    let pool = EvaluationPool::new("test", settings(1, 8, 1), None);
    let result = pool
        .evaluate(|budget| {
            while !budget.exhausted() {
                std::hint::spin_loop();
            }
            Err::<(), _>(FilterError::Evaluation(EvaluationError::DeadlineExceeded {
                timeout: budget.timeout(),
            }))
        })
        .await;
    assert_eq!(
        result,
        Err(FilterError::Evaluation(EvaluationError::DeadlineExceeded {
            timeout: Duration::from_millis(50)
        }))
    );
    assert_eq!(pool.abandoned(), 0, "it stopped by itself");
    assert_eq!(pool.evaluate(|_| Ok(7)).await, Ok(7));
}

#[tokio::test]
async fn stuck_threads_are_replaced_up_to_the_bound_then_evaluations_fail_fast() {
    let metrics = Arc::new(Metrics::new());
    let pool = EvaluationPool::new("test", settings(1, 8, 1), Some(Arc::clone(&metrics)));
    let gauge = || {
        metrics.encode().lines().find_map(|line| {
            line.strip_prefix(r#"spillway_evaluation_threads_abandoned{sensor="test"} "#)?
                .parse::<f64>()
                .ok()
        })
    };
    let exceeded = Err(FilterError::Evaluation(EvaluationError::DeadlineExceeded {
        timeout: Duration::from_millis(50),
    }));
    let (started, started_rx) = mpsc::channel();
    let (release_first, first) = mpsc::channel();
    assert_eq!(pool.evaluate(stuck(started.clone(), first)).await, exceeded);
    assert!(started_rx.try_recv().is_ok(), "it ran");
    assert_eq!((pool.abandoned(), pool.live()), (1, 1), "replaced");
    assert_eq!(gauge(), Some(1.0));
    assert_eq!(
        pool.evaluate(|_| Ok(1)).await,
        Ok(1),
        "the new thread works"
    );

    // A second stuck thread is over maxAbandoned = 1: not replaced.
    let (release_second, second) = mpsc::channel();
    assert_eq!(pool.evaluate(stuck(started, second)).await, exceeded);
    assert_eq!((pool.abandoned(), pool.live()), (2, 0));
    assert_eq!(gauge(), Some(2.0));
    assert_eq!(
        pool.evaluate(|_| Ok(1)).await,
        Err(FilterError::Evaluation(EvaluationError::NoThreads {
            abandoned: 2
        })),
        "no thread left: fails at once"
    );

    // Once they come back, one rejoins (the pool has one thread) and the
    // other exits.
    drop(release_first);
    drop(release_second);
    eventually("both abandoned threads came back", || pool.abandoned() == 0).await;
    assert_eq!(pool.live(), 1);
    assert_eq!(gauge(), Some(0.0));
    assert_eq!(pool.evaluate(|_| Ok(2)).await, Ok(2));
}

#[tokio::test]
async fn a_full_queue_refuses_at_once_and_nothing_is_lost() {
    let mut long = settings(1, 1, 1);
    long.timeout = Duration::from_secs(600);
    let pool = EvaluationPool::new("test", long, None);
    let (started, started_rx) = mpsc::channel();
    let (release, released) = mpsc::channel();
    let running = tokio::spawn({
        let pool = pool.clone();
        async move { pool.evaluate(stuck(started, released)).await }
    });
    eventually("the first evaluation runs", || {
        started_rx.try_recv().is_ok()
    })
    .await;
    let queued = tokio::spawn({
        let pool = pool.clone();
        async move { pool.evaluate(|_| Ok(2)).await }
    });
    eventually("the second evaluation is queued", || pool.queued() == 1).await;
    assert_eq!(
        pool.evaluate(|_| Ok(3)).await,
        Err(FilterError::Evaluation(EvaluationError::QueueFull {
            max_queued: 1
        }))
    );
    release.send(()).expect("the first evaluation waits");
    assert_eq!(running.await.expect("task"), Ok(0));
    assert_eq!(queued.await.expect("task"), Ok(2));
}

#[tokio::test]
async fn a_panicking_evaluation_rejects_its_event_and_the_thread_goes_on() {
    // Long enough for the panic message and its backtrace to be written.
    let mut long = settings(1, 8, 0);
    long.timeout = Duration::from_secs(600);
    let pool = EvaluationPool::new("test", long, None);
    let lost = pool
        .evaluate(|_| -> Result<(), FilterError> { panic!("evaluator bug") })
        .await;
    assert_eq!(lost, Err(FilterError::Evaluation(EvaluationError::Lost)));
    assert_eq!(pool.evaluate(|_| Ok(5)).await, Ok(5));
    assert_eq!(pool.live(), 1);
}

#[tokio::test]
async fn a_caller_that_stops_waiting_cancels_its_evaluation() {
    let mut long = settings(1, 8, 0);
    long.timeout = Duration::from_secs(600);
    let pool = EvaluationPool::new("test", long, None);
    let (started, started_rx) = mpsc::channel();
    let (stopped, stopped_rx) = mpsc::channel();
    let caller = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.evaluate(move |budget| {
                let _ = started.send(());
                while !budget.exhausted() {
                    std::hint::spin_loop();
                }
                let _ = stopped.send(());
                Ok(())
            })
            .await
        }
    });
    eventually("the evaluation runs", || started_rx.try_recv().is_ok()).await;
    caller.abort();
    eventually("the evaluation saw the cancel", || {
        stopped_rx.try_recv().is_ok()
    })
    .await;
    assert_eq!(pool.evaluate(|_| Ok(6)).await, Ok(6));
}
