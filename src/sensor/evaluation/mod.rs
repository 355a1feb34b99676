//! The evaluation pool: where a sensor runs the user code it cannot trust
//! to finish — Lua `filters.script`, Lua `transform.script` and
//! `transform.jq` — so that no evaluation can hold a tokio worker thread.
//! The other filter kinds (`context`, `time`, `data`, `exprs`) are bounded
//! by construction and run inline.
//!
//! Guarantees:
//! - **Fixed threads, bounded queue.** Each sensor has its own pool of
//!   `threads` OS threads (started at its first evaluation) fed by a queue of
//!   at most `maxQueued` waiting evaluations. The async caller never runs
//!   the code itself; it awaits the answer.
//! - **Deadline.** Each evaluation has a wall-clock deadline `timeout` after
//!   it was asked for, time in the queue included. The caller waits until
//!   the deadline and then stops waiting: the evaluation fails with
//!   [`EvaluationError::DeadlineExceeded`], so the filter rejects the event
//!   (or the transform fails), counted `reason="error"` in
//!   `spillway_sensor_events_filtered_total` and logged. The sensor keeps
//!   running. A full queue fails the same way at once
//!   ([`EvaluationError::QueueFull`]).
//! - **Cooperative stop.** The evaluator gets a [`Budget`] and checks it:
//!   the Lua instruction hook every 1000 instructions, jq at every step of
//!   its interpreter (and at every value `range` makes). Past the deadline,
//!   or once the caller stopped waiting, the evaluation ends with an error
//!   and its thread takes the next job.
//! - **Abandonment.** Code that never checks the budget — a Lua C function
//!   (`string.rep`, pattern matching, `table.concat`, …) or one long native
//!   jq operation — cannot be stopped from outside a thread. When a running
//!   evaluation has not answered [`pool::ABANDON_GRACE`] after its
//!   deadline, its thread is abandoned: it stops counting as a pool thread
//!   and a new thread takes its place, as long as at most `maxAbandoned`
//!   threads are abandoned. Beyond that the thread is not replaced; with no
//!   thread left, every evaluation of the sensor fails at once with
//!   [`EvaluationError::NoThreads`]. The number abandoned is the gauge
//!   `spillway_evaluation_threads_abandoned{sensor}`, and each abandonment
//!   is a warning. An abandoned thread that finishes its evaluation rejoins
//!   the pool if the pool is short of threads, else exits. So a sensor never
//!   has more than `threads + maxAbandoned` evaluation threads.
//! - **What an abandoned thread holds** until its evaluation ends: its stack
//!   (address space of [`pool::WORKER_STACK_SIZE`], of which only the
//!   touched pages use memory), one CPU while it computes, and the
//!   evaluation's memory: for Lua at most the 16 MiB state limit plus the
//!   event's JSON; for jq the values the program built, which jq does not
//!   limit (see `sensor::transform`).
//! - A panic inside an evaluation is caught on its thread: that event is
//!   rejected ([`EvaluationError::Lost`]) and the thread goes on.
//!
//! Not guaranteed: that a C function or native jq operation that never
//! returns gives its CPU back. The Lua pattern functions are guarded by a
//! worst-case cost bound before they start (see `sensor::filter::script`),
//! which makes that unlikely for Lua; the residual risk is documented in
//! `docs/filters.md`.

pub mod budget;
pub mod pool;

pub use budget::Budget;
pub use pool::EvaluationPool;

use std::time::Duration;

/// Time one evaluation may take unless the sensor says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Pool threads per sensor unless the sensor says otherwise.
pub const DEFAULT_THREADS: usize = 2;
/// Evaluations that may wait for a thread unless the sensor says otherwise.
pub const DEFAULT_MAX_QUEUED: usize = 64;
/// Stuck threads replaced before the pool shrinks, unless the sensor says
/// otherwise.
pub const DEFAULT_MAX_ABANDONED: usize = 4;

/// A sensor's pool settings (`spec.flowControl.evaluation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluationSettings {
    /// Wall-clock deadline of one evaluation, queueing included.
    pub timeout: Duration,
    /// OS threads running evaluations.
    pub threads: usize,
    /// Evaluations waiting for a thread at most; one more fails at once.
    pub max_queued: usize,
    /// Stuck threads replaced at most (see the module docs).
    pub max_abandoned: usize,
}

impl Default for EvaluationSettings {
    fn default() -> Self {
        EvaluationSettings {
            timeout: DEFAULT_TIMEOUT,
            threads: DEFAULT_THREADS,
            max_queued: DEFAULT_MAX_QUEUED,
            max_abandoned: DEFAULT_MAX_ABANDONED,
        }
    }
}

/// Why the pool could not give an evaluation's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvaluationError {
    #[error("evaluation did not finish within its {timeout:?} deadline (flowControl.evaluation.timeout)")]
    DeadlineExceeded { timeout: Duration },
    #[error("evaluation refused: {max_queued} evaluations are already waiting for a thread (flowControl.evaluation.maxQueued)")]
    QueueFull { max_queued: usize },
    #[error("evaluation refused: no evaluation thread is left ({abandoned} abandoned in evaluations that did not stop; see flowControl.evaluation.maxAbandoned)")]
    NoThreads { abandoned: usize },
    #[error("evaluation failed: its thread panicked")]
    Lost,
}

#[cfg(test)]
mod tests;
