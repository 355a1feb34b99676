//! The threads that run untrusted evaluations, and what happens when one of
//! them does not come back. The guarantees are listed in [`super`].

use super::budget::Budget;
use super::{EvaluationError, EvaluationSettings};
use crate::sensor::filter::FilterError;
use crate::telemetry::{LogThrottle, Metrics};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long after its deadline a running evaluation has to stop by itself
/// (its budget is exhausted) before its thread is abandoned.
pub const ABANDON_GRACE: Duration = Duration::from_millis(100);
/// At most one warning per this interval about evaluations refused because
/// the queue is full or no thread is left.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Stack of each pool thread. Reserved address space; only the pages an
/// evaluation touches use memory (and stay resident while the thread
/// lives). jq stops recursing at an eighth of it, leaving the rest for work
/// that recurses over a value's depth (printing, comparing, dropping),
/// which the jq step limit bounds (see `sensor::transform`).
pub const WORKER_STACK_SIZE: usize = 64 * 1024 * 1024;

/// A handle on a sensor's evaluation pool; clones share the pool. Threads
/// start at the first evaluation; dropping the last handle lets idle
/// threads exit.
#[derive(Clone)]
pub struct EvaluationPool {
    shared: Arc<Shared>,
    _closer: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for EvaluationPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvaluationPool")
            .field("sensor", &self.shared.sensor)
            .field("settings", &self.shared.settings)
            .finish()
    }
}

struct Shared {
    settings: EvaluationSettings,
    /// The sensor the pool belongs to (logs, metric label).
    sensor: String,
    metrics: Option<Arc<Metrics>>,
    state: Mutex<State>,
    work_ready: Condvar,
    /// Throttles the warning about evaluations refused at once.
    refusals_logged: LogThrottle,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    started: bool,
    closed: bool,
    /// Threads taking work (not abandoned).
    live: usize,
    /// Threads abandoned in an evaluation that have not come back yet.
    abandoned: usize,
    /// Threads spawned so far (names them).
    spawned: u64,
}

/// One evaluation: the work (which answers its caller itself) and its ticket.
struct Job {
    work: Box<dyn FnOnce(&Budget) + Send>,
    ticket: Arc<Ticket>,
    deadline: Instant,
}

/// What the caller and the thread running an evaluation share.
#[derive(Default)]
struct Ticket {
    cancelled: Arc<AtomicBool>,
    /// The thread running it, while it runs (set and cleared under the
    /// state lock, so abandonment never races the thread finishing).
    running_on: Mutex<Option<Arc<Worker>>>,
}

/// One pool thread, as the pool sees it.
#[derive(Default)]
struct Worker {
    /// Written under the state lock only.
    abandoned: AtomicBool,
}

/// Cancels an evaluation whose caller stopped waiting (deadline, or the
/// caller's future dropped at shutdown) so a cooperative evaluator stops.
struct CancelOnDrop(Arc<Ticket>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Closes the pool when the last [`EvaluationPool`] handle goes (workers
/// hold the shared state, not a handle).
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        state.closed = true;
        state.queue.clear();
        self.0.work_ready.notify_all();
    }
}

impl EvaluationPool {
    /// A pool for `sensor`; no thread runs until the first evaluation.
    pub fn new(sensor: &str, settings: EvaluationSettings, metrics: Option<Arc<Metrics>>) -> Self {
        let shared = Arc::new(Shared {
            settings,
            sensor: sensor.to_string(),
            metrics,
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            refusals_logged: LogThrottle::new(REFUSAL_LOG_INTERVAL),
        });
        EvaluationPool {
            _closer: Arc::new(CloseOnDrop(Arc::clone(&shared))),
            shared,
        }
    }

    /// The settings the pool was made with.
    pub fn settings(&self) -> &EvaluationSettings {
        &self.shared.settings
    }

    /// Runs `work` on a pool thread and waits for its result until the
    /// deadline (`timeout` from now). `work` gets the [`Budget`] it must
    /// check. Errors: the queue is full, no thread is left, or the deadline
    /// passed (the thread is abandoned when it does not stop within
    /// [`ABANDON_GRACE`] after it).
    pub async fn evaluate<T, F>(&self, work: F) -> Result<T, FilterError>
    where
        T: Send + 'static,
        F: FnOnce(&Budget) -> Result<T, FilterError> + Send + 'static,
    {
        let timeout = self.shared.settings.timeout;
        let deadline = Instant::now() + timeout;
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let ticket = Arc::new(Ticket::default());
        let _cancel = CancelOnDrop(Arc::clone(&ticket));
        let job = Job {
            work: Box::new(move |budget: &Budget| {
                // The caller may have stopped waiting: nobody to tell.
                let _ = reply.send(work(budget));
            }),
            ticket: Arc::clone(&ticket),
            deadline,
        };
        if let Err(refused) = self.shared.submit(job) {
            if let Some(skipped) = self.shared.refusals_logged.admit() {
                tracing::warn!(sensor = %self.shared.sensor, skipped, "{refused}");
            }
            return Err(refused.into());
        }
        let lost = || FilterError::Evaluation(EvaluationError::Lost);
        let exceeded = || FilterError::Evaluation(EvaluationError::DeadlineExceeded { timeout });
        match tokio::time::timeout_at(deadline.into(), &mut answer).await {
            Ok(Ok(result)) => return result,
            Ok(Err(_)) => return Err(lost()),
            Err(_) => {}
        }
        ticket.cancelled.store(true, Ordering::Relaxed);
        if self.shared.withdraw(&ticket) {
            // Still queued: it never ran.
            return Err(exceeded());
        }
        match tokio::time::timeout(ABANDON_GRACE, &mut answer).await {
            // Stopped by its budget (or finished just in time): its own answer.
            Ok(Ok(result)) => result,
            // A thread took it off the queue as it was cancelled, and
            // dropped it unrun.
            Ok(Err(_)) => Err(exceeded()),
            Err(_) => {
                self.shared.abandon(&ticket);
                Err(exceeded())
            }
        }
    }

    /// Threads abandoned in an evaluation and not back yet.
    pub fn abandoned(&self) -> usize {
        self.shared.state.lock().abandoned
    }

    /// Threads taking work.
    pub fn live(&self) -> usize {
        self.shared.state.lock().live
    }

    /// Evaluations waiting for a thread.
    pub fn queued(&self) -> usize {
        self.shared.state.lock().queue.len()
    }
}

impl Shared {
    /// Queues `job`, starting the threads on first use.
    fn submit(self: &Arc<Self>, job: Job) -> Result<(), EvaluationError> {
        let mut state = self.state.lock();
        if !state.started {
            state.started = true;
            for _ in 0..self.settings.threads {
                self.spawn(&mut state);
            }
        }
        if state.live == 0 {
            return Err(EvaluationError::NoThreads {
                abandoned: state.abandoned,
            });
        }
        if state.queue.len() >= self.settings.max_queued {
            return Err(EvaluationError::QueueFull {
                max_queued: self.settings.max_queued,
            });
        }
        state.queue.push_back(job);
        self.work_ready.notify_one();
        Ok(())
    }

    /// Removes the job of `ticket` from the queue; whether it was there.
    fn withdraw(&self, ticket: &Arc<Ticket>) -> bool {
        let mut state = self.state.lock();
        let before = state.queue.len();
        state.queue.retain(|job| !Arc::ptr_eq(&job.ticket, ticket));
        state.queue.len() != before
    }

    /// Gives up on the thread running `ticket`'s evaluation: it no longer
    /// counts as a pool thread, and a new one takes its place while fewer
    /// than `max_abandoned` are abandoned.
    fn abandon(self: &Arc<Self>, ticket: &Ticket) {
        let mut state = self.state.lock();
        let Some(worker) = ticket.running_on.lock().clone() else {
            // It finished after all.
            return;
        };
        if worker.abandoned.swap(true, Ordering::Relaxed) {
            return;
        }
        state.live -= 1;
        state.abandoned += 1;
        self.publish_abandoned(&state);
        let max = self.settings.max_abandoned;
        if state.abandoned <= max && !state.closed {
            self.spawn(&mut state);
            tracing::warn!(
                sensor = %self.sensor,
                "an evaluation did not stop {ABANDON_GRACE:?} after its {:?} deadline (stuck in a C function or a long jq operation); its thread is abandoned and replaced ({} of at most {max} abandoned, counted in spillway_evaluation_threads_abandoned)",
                self.settings.timeout,
                state.abandoned
            );
        } else {
            tracing::warn!(
                sensor = %self.sensor,
                "an evaluation did not stop {ABANDON_GRACE:?} after its {:?} deadline; its thread is abandoned and NOT replaced: {} threads are abandoned (flowControl.evaluation.maxAbandoned = {max}); {} threads left, and with none left every script and jq evaluation fails at once until an abandoned thread comes back",
                self.settings.timeout,
                state.abandoned,
                state.live
            );
        }
    }

    /// Starts one more pool thread (a failure is logged; the pool runs with
    /// the threads it has).
    fn spawn(self: &Arc<Self>, state: &mut State) {
        state.spawned += 1;
        let shared = Arc::clone(self);
        let worker = Arc::new(Worker::default());
        let spawned = std::thread::Builder::new()
            .name(format!("eval-{}", state.spawned))
            .stack_size(WORKER_STACK_SIZE)
            .spawn(move || shared.run_jobs(&worker));
        match spawned {
            Ok(_) => state.live += 1,
            Err(err) => {
                tracing::warn!(sensor = %self.sensor, "cannot start an evaluation thread: {err}")
            }
        }
    }

    /// A pool thread: runs queued jobs until the pool closes or the thread,
    /// abandoned, comes back to a pool that no longer needs it.
    fn run_jobs(&self, me: &Arc<Worker>) {
        let mut state = self.state.lock();
        loop {
            if state.closed {
                state.live -= 1;
                return;
            }
            let Some(job) = state.queue.pop_front() else {
                self.work_ready.wait(&mut state);
                continue;
            };
            let Job {
                work,
                ticket,
                deadline,
            } = job;
            if ticket.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            *ticket.running_on.lock() = Some(Arc::clone(me));
            let budget = Budget::until(
                deadline,
                self.settings.timeout,
                Arc::clone(&ticket.cancelled),
            );
            let outcome = parking_lot::MutexGuard::unlocked(&mut state, || {
                catch_unwind(AssertUnwindSafe(|| work(&budget)))
            });
            if outcome.is_err() {
                // The caller sees its answer dropped (`Lost`).
                tracing::warn!(sensor = %self.sensor, "an evaluation panicked; its event is rejected");
            }
            *ticket.running_on.lock() = None;
            if me.abandoned.load(Ordering::Relaxed) {
                state.abandoned -= 1;
                self.publish_abandoned(&state);
                if state.live < self.settings.threads && !state.closed {
                    me.abandoned.store(false, Ordering::Relaxed);
                    state.live += 1;
                    tracing::info!(sensor = %self.sensor, "an abandoned evaluation thread finished its evaluation and rejoined the pool");
                } else {
                    tracing::info!(sensor = %self.sensor, "an abandoned evaluation thread finished its evaluation and exited");
                    return;
                }
            }
        }
    }

    fn publish_abandoned(&self, state: &State) {
        if let Some(metrics) = &self.metrics {
            metrics.evaluation_threads_abandoned(&self.sensor, state.abandoned);
        }
    }
}
