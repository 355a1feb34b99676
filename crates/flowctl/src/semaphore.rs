//! A counting semaphore with a bounded FIFO pending queue and a limit that
//! can change at runtime: Argo's ConfigMap semaphore (`data: {api-calls:
//! "5"}`: at most 5 workflows run, the rest wait as "Pending" in FIFO order).
//!
//! Guarantees:
//! - A slot is granted only while `running < limit`, judged against the limit
//!   in force at the moment of the grant; [`Semaphore::running`] counts every
//!   granted slot (including one granted to a waiter that has not been polled
//!   since), so `running + pending` is exact at every instant.
//! - Waiters are served strictly in FIFO order of their first poll, and
//!   [`Semaphore::try_acquire`] never overtakes a waiter.
//! - No slot stays idle while someone waits: whenever `pending > 0`,
//!   `running >= limit`.
//! - [`Semaphore::set_limit`] growing admits waiters at once; shrinking never
//!   preempts a holder, it only admits nobody until `running` falls below the
//!   new limit. A limit of 0 pauses admission.
//! - The pending queue holds at most `max_pending` waiters; past that,
//!   [`Semaphore::acquire`] fails at once with [`AcquireError::PendingFull`]
//!   instead of queueing.
//! - [`Semaphore::close`] fails every waiter and every later acquire with
//!   `Closed`; permits already granted stay valid.
//! - Cancel safe: dropping a waiting `acquire` future leaves the queue at
//!   once, and if it had already been granted a slot the slot passes to the
//!   next waiter. A slot is never leaked.
//! - [`Permit`] is owned (`'static`, `Send`), so it can move into a spawned
//!   task; dropping it releases the slot to the oldest waiter.
//!
//! Not guaranteed: fairness between `try_acquire` callers racing for a slot
//! that was just released with nobody waiting.
//!
//! Why not `tokio::sync::Semaphore` underneath: its permits are handed to a
//! waiter inside `release`, before the waiter runs, so a separate pending
//! counter and a "debt" for shrinking would each lag behind it and could be
//! observed inconsistent (or, racing a shrink, admit one over the new limit).
//! One small mutex over `running`, `limit` and the queue makes every count and
//! the shrink rule exact, and the uncontended path is still one lock/unlock
//! per acquire and per release.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

/// Spillway's default `maxPending`.
pub const DEFAULT_MAX_PENDING: usize = 1000;

/// Why [`Semaphore::try_acquire`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryAcquireError {
    /// Every slot is taken (or others are already waiting).
    #[error("no free slot (limit {limit})")]
    NoPermits { limit: usize },
    #[error("semaphore closed")]
    Closed,
}

/// Why [`Semaphore::acquire`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// The pending queue is full; the caller was not queued.
    #[error("pending queue full ({max_pending} waiting)")]
    PendingFull { max_pending: usize },
    #[error("semaphore closed")]
    Closed,
}

/// A semaphore shared between tasks; clones are handles to the same one.
#[derive(Clone)]
pub struct Semaphore {
    inner: Arc<Inner>,
}

struct Inner {
    max_pending: usize,
    state: Mutex<State>,
}

struct State {
    limit: usize,
    running: usize,
    closed: bool,
    next_id: u64,
    // Ids grow with arrival, so the first key is the oldest waiter.
    waiting: BTreeMap<u64, Waker>,
    // Granted a slot (counted in `running`) but not yet polled to see it.
    granted: BTreeSet<u64>,
}

impl State {
    fn grant_next(&mut self) -> Option<Waker> {
        if self.running >= self.limit {
            return None;
        }
        let (id, waker) = self.waiting.pop_first()?;
        self.granted.insert(id);
        self.running += 1;
        Some(waker)
    }

    fn grant_all(&mut self) -> Vec<Waker> {
        std::iter::from_fn(|| self.grant_next()).collect()
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.lock();
        f.debug_struct("Semaphore")
            .field("limit", &state.limit)
            .field("running", &state.running)
            .field("pending", &state.waiting.len())
            .field("max_pending", &self.inner.max_pending)
            .field("closed", &state.closed)
            .finish()
    }
}

impl Semaphore {
    /// A semaphore admitting `limit` holders at once, with up to
    /// `max_pending` waiters queued behind them.
    pub fn new(limit: usize, max_pending: usize) -> Self {
        Semaphore {
            inner: Arc::new(Inner {
                max_pending,
                state: Mutex::new(State {
                    limit,
                    running: 0,
                    closed: false,
                    next_id: 0,
                    waiting: BTreeMap::new(),
                    granted: BTreeSet::new(),
                }),
            }),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> usize {
        self.inner.state.lock().limit
    }

    /// Slots currently granted (may exceed the limit right after a shrink).
    pub fn running(&self) -> usize {
        self.inner.state.lock().running
    }

    /// Waiters queued for a slot.
    pub fn pending(&self) -> usize {
        self.inner.state.lock().waiting.len()
    }

    /// The bound on [`Semaphore::pending`].
    pub fn max_pending(&self) -> usize {
        self.inner.max_pending
    }

    /// Whether [`Semaphore::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    /// Changes the limit; growing admits waiters now, shrinking preempts no one.
    pub fn set_limit(&self, limit: usize) {
        let wakers = {
            let mut state = self.inner.state.lock();
            state.limit = limit;
            state.grant_all()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes a slot if one is free and nobody is waiting, without waiting.
    pub fn try_acquire(&self) -> Result<Permit, TryAcquireError> {
        let mut state = self.inner.state.lock();
        if state.closed {
            return Err(TryAcquireError::Closed);
        }
        if state.running < state.limit && state.waiting.is_empty() {
            state.running += 1;
            drop(state);
            Ok(Permit {
                inner: Arc::clone(&self.inner),
            })
        } else {
            Err(TryAcquireError::NoPermits { limit: state.limit })
        }
    }

    /// Waits in FIFO order for a slot; fails at once if the queue is full.
    pub async fn acquire(&self) -> Result<Permit, AcquireError> {
        Acquire {
            inner: &self.inner,
            id: None,
            done: false,
        }
        .await
    }

    /// Fails every waiter and every later acquire with `Closed`.
    pub fn close(&self) {
        let waiting = {
            let mut state = self.inner.state.lock();
            state.closed = true;
            std::mem::take(&mut state.waiting)
        };
        waiting.into_values().for_each(Waker::wake);
    }
}

/// One granted slot; dropping it releases the slot to the oldest waiter.
#[must_use = "the slot is released as soon as the permit is dropped"]
pub struct Permit {
    inner: Arc<Inner>,
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        release(&self.inner);
    }
}

fn release(inner: &Inner) {
    let waker = {
        let mut state = inner.state.lock();
        state.running -= 1;
        state.grant_next()
    };
    // Waking outside the lock: a waker may run arbitrary code.
    if let Some(waker) = waker {
        waker.wake();
    }
}

struct Acquire<'a> {
    inner: &'a Arc<Inner>,
    // None until the first poll queues us; the queue position is taken then.
    id: Option<u64>,
    done: bool,
}

impl Future for Acquire<'_> {
    type Output = Result<Permit, AcquireError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.inner;
        let mut state = inner.state.lock();
        let outcome = match self.id {
            None => {
                if state.closed {
                    Err(AcquireError::Closed)
                } else if state.running < state.limit && state.waiting.is_empty() {
                    state.running += 1;
                    Ok(())
                } else if state.waiting.len() >= inner.max_pending {
                    Err(AcquireError::PendingFull {
                        max_pending: inner.max_pending,
                    })
                } else {
                    let id = state.next_id;
                    state.next_id += 1;
                    state.waiting.insert(id, cx.waker().clone());
                    self.id = Some(id);
                    return Poll::Pending;
                }
            }
            Some(id) => {
                if state.granted.remove(&id) {
                    Ok(())
                } else if let Some(waker) = state.waiting.get_mut(&id) {
                    if !waker.will_wake(cx.waker()) {
                        waker.clone_from(cx.waker());
                    }
                    return Poll::Pending;
                } else {
                    // Neither queued nor granted: `close` drained the queue.
                    Err(AcquireError::Closed)
                }
            }
        };
        drop(state);
        self.done = true;
        Poll::Ready(outcome.map(|()| Permit {
            inner: Arc::clone(inner),
        }))
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.filter(|_| !self.done) else {
            return;
        };
        let mut state = self.inner.state.lock();
        if state.waiting.remove(&id).is_some() {
            return;
        }
        if state.granted.remove(&id) {
            // Granted but never seen: hand the slot on rather than leak it.
            drop(state);
            release(self.inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    type Waiting<'a> = Pin<Box<dyn Future<Output = Result<Permit, AcquireError>> + Send + 'a>>;

    fn start(sem: &Semaphore) -> Waiting<'_> {
        let mut fut: Waiting<'_> = Box::pin(sem.acquire());
        assert!(poll(&mut fut).is_pending(), "expected to queue");
        fut
    }

    fn poll(fut: &mut Waiting<'_>) -> Poll<Result<Permit, AcquireError>> {
        fut.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// seed: ConfigMap `api-calls: "5"`, 8 workflows: 5 run, 3 pending;
    /// one finishing lets the first pending one run.
    #[test]
    fn configmap_limit_five_with_eight_workflows() {
        let sem = Semaphore::new(5, DEFAULT_MAX_PENDING);
        let mut running: Vec<Permit> = (0..5).map(|_| sem.try_acquire().unwrap()).collect();
        let mut waiters: Vec<Waiting<'_>> = (0..3).map(|_| start(&sem)).collect();
        assert_eq!((sem.running(), sem.pending()), (5, 3));

        drop(running.pop());
        assert_eq!((sem.running(), sem.pending()), (5, 2));
        running.push(match poll(&mut waiters[0]) {
            Poll::Ready(Ok(permit)) => permit,
            other => panic!("first waiter should run, got {other:?}"),
        });
        assert!(poll(&mut waiters[1]).is_pending());
        assert!(poll(&mut waiters[2]).is_pending());
        assert_eq!((sem.running(), sem.pending()), (5, 2));
    }

    /// The same example on tokio paused time, with permits moved into
    /// spawned tasks that each run 10 s: 5 run in [0, 10 s), 3 in [10, 20 s).
    #[tokio::test(start_paused = true)]
    async fn permits_move_into_tasks_and_pass_on_when_dropped() {
        let sem = Semaphore::new(5, DEFAULT_MAX_PENDING);
        let peak = Arc::new(AtomicUsize::new(0));
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let permit = {
                let sem = sem.clone();
                tokio::spawn(async move { sem.acquire().await })
            };
            let sem = sem.clone();
            let peak = Arc::clone(&peak);
            tasks.push(tokio::spawn(async move {
                let permit = permit.await.unwrap().unwrap();
                peak.fetch_max(sem.running(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(10)).await;
                drop(permit);
                start.elapsed()
            }));
        }
        let mut finished = Vec::new();
        for task in tasks {
            finished.push(task.await.unwrap());
        }
        finished.sort();
        let secs: Vec<u64> = finished.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [10, 10, 10, 10, 10, 20, 20, 20]);
        assert_eq!(peak.load(Ordering::SeqCst), 5);
        assert_eq!((sem.running(), sem.pending()), (0, 0));
    }

    #[test]
    fn waiters_are_served_in_fifo_order_and_woken() {
        let sem = Semaphore::new(1, 10);
        let holder = sem.try_acquire().unwrap();
        let wakers: Vec<Arc<CountingWaker>> = (0..4).map(|_| Arc::default()).collect();
        let mut waiters: Vec<Waiting<'_>> = wakers
            .iter()
            .map(|w| {
                let mut fut: Waiting<'_> = Box::pin(sem.acquire());
                let waker = Waker::from(Arc::clone(w));
                assert!(fut
                    .as_mut()
                    .poll(&mut Context::from_waker(&waker))
                    .is_pending());
                fut
            })
            .collect();
        assert_eq!(
            sem.try_acquire().unwrap_err(),
            TryAcquireError::NoPermits { limit: 1 }
        );

        drop(holder);
        let mut order = Vec::new();
        for _ in 0..4 {
            let woken: Vec<usize> = (0..4)
                .filter(|&i| wakers[i].0.load(Ordering::SeqCst) == 1 && !order.contains(&i))
                .collect();
            assert_eq!(woken.len(), 1, "exactly one waiter woken at a time");
            let i = woken[0];
            let Poll::Ready(Ok(permit)) = poll(&mut waiters[i]) else {
                panic!("woken waiter {i} has no permit");
            };
            order.push(i);
            drop(permit);
        }
        assert_eq!(order, [0, 1, 2, 3]);
        assert_eq!((sem.running(), sem.pending()), (0, 0));
    }

    #[test]
    fn shrinking_preempts_nobody_and_admits_nobody_until_below_the_new_limit() {
        let sem = Semaphore::new(5, 10);
        let mut running: Vec<Permit> = (0..5).map(|_| sem.try_acquire().unwrap()).collect();
        let mut waiter = start(&sem);
        sem.set_limit(2);
        assert_eq!((sem.limit(), sem.running(), sem.pending()), (2, 5, 1));

        for expected_running in [4, 3, 2] {
            drop(running.pop());
            assert_eq!(sem.running(), expected_running);
            assert!(poll(&mut waiter).is_pending());
            assert!(sem.try_acquire().is_err());
        }
        drop(running.pop());
        let Poll::Ready(Ok(permit)) = poll(&mut waiter) else {
            panic!("a slot under the new limit should go to the waiter");
        };
        running.push(permit);
        assert_eq!((sem.running(), sem.pending()), (2, 0));
        assert!(sem.try_acquire().is_err(), "the new limit holds");
    }

    #[test]
    fn growing_admits_waiters_at_once_in_order() {
        let sem = Semaphore::new(1, 10);
        let _holder = sem.try_acquire().unwrap();
        let mut waiters: Vec<Waiting<'_>> = (0..4).map(|_| start(&sem)).collect();
        sem.set_limit(3);
        assert_eq!((sem.running(), sem.pending()), (3, 2));
        let admitted: Vec<Permit> = waiters[..2]
            .iter_mut()
            .map(|fut| match poll(fut) {
                Poll::Ready(Ok(permit)) => permit,
                other => panic!("expected a permit, got {other:?}"),
            })
            .collect();
        assert_eq!(admitted.len(), 2);
        assert!(poll(&mut waiters[2]).is_pending());
        assert!(poll(&mut waiters[3]).is_pending());
    }

    #[test]
    fn a_full_pending_queue_refuses_at_once() {
        let sem = Semaphore::new(1, 2);
        let _holder = sem.try_acquire().unwrap();
        let _a = start(&sem);
        let _b = start(&sem);
        let mut third: Waiting<'_> = Box::pin(sem.acquire());
        assert!(matches!(
            poll(&mut third),
            Poll::Ready(Err(AcquireError::PendingFull { max_pending: 2 }))
        ));
        assert_eq!(sem.pending(), 2);
        assert_eq!(
            AcquireError::PendingFull { max_pending: 2 }.to_string(),
            "pending queue full (2 waiting)"
        );
    }

    #[test]
    fn dropping_a_waiter_leaves_the_queue() {
        let sem = Semaphore::new(1, 10);
        let holder = sem.try_acquire().unwrap();
        let first = start(&sem);
        let mut second = start(&sem);
        assert_eq!(sem.pending(), 2);
        drop(first);
        assert_eq!(sem.pending(), 1);
        drop(holder);
        assert!(matches!(poll(&mut second), Poll::Ready(Ok(_))));
    }

    #[test]
    fn dropping_a_granted_but_unpolled_waiter_passes_the_slot_on() {
        let sem = Semaphore::new(1, 10);
        let holder = sem.try_acquire().unwrap();
        let granted = start(&sem);
        let mut next = start(&sem);
        drop(holder);
        assert_eq!((sem.running(), sem.pending()), (1, 1));
        drop(granted);
        assert_eq!((sem.running(), sem.pending()), (1, 0));
        let Poll::Ready(Ok(permit)) = poll(&mut next) else {
            panic!("the slot should have passed on");
        };
        drop(permit);
        assert_eq!(sem.running(), 0);
        assert!(sem.try_acquire().is_ok());
    }

    #[test]
    fn close_fails_waiters_and_later_acquires_but_keeps_permits() {
        let sem = Semaphore::new(1, 10);
        let holder = sem.try_acquire().unwrap();
        let mut waiter = start(&sem);
        sem.close();
        assert_eq!(sem.pending(), 0);
        assert!(matches!(
            poll(&mut waiter),
            Poll::Ready(Err(AcquireError::Closed))
        ));
        assert_eq!(sem.try_acquire().unwrap_err(), TryAcquireError::Closed);
        let mut late: Waiting<'_> = Box::pin(sem.acquire());
        assert!(matches!(
            poll(&mut late),
            Poll::Ready(Err(AcquireError::Closed))
        ));
        assert_eq!(sem.running(), 1);
        drop(holder);
        assert_eq!(sem.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_acquire_cancelled_by_timeout_leaves_the_queue() {
        let sem = Semaphore::new(1, 10);
        let _holder = sem.try_acquire().unwrap();
        let timed_out = tokio::time::timeout(Duration::from_secs(1), sem.acquire()).await;
        assert!(timed_out.is_err());
        assert_eq!((sem.running(), sem.pending()), (1, 0));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::VecDeque;

        #[derive(Debug, Clone)]
        enum Op {
            TryAcquire,
            Acquire,
            Release(usize),
            Poll(usize),
            Cancel(usize),
            SetLimit(usize),
            Close,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => Just(Op::TryAcquire),
                4 => Just(Op::Acquire),
                4 => any::<usize>().prop_map(Op::Release),
                3 => any::<usize>().prop_map(Op::Poll),
                2 => any::<usize>().prop_map(Op::Cancel),
                2 => (0usize..7).prop_map(Op::SetLimit),
                1 => Just(Op::Close),
            ]
        }

        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Expect {
            Queued,
            Granted,
            Closed,
        }

        /// The reference model: a FIFO of waiter ids and a running count.
        struct Model {
            limit: usize,
            running: usize,
            closed: bool,
            queue: VecDeque<usize>,
            expect: Vec<Expect>,
        }

        impl Model {
            fn grant(&mut self) -> usize {
                let mut granted = 0;
                while self.running < self.limit {
                    let Some(id) = self.queue.pop_front() else {
                        break;
                    };
                    self.expect[id] = Expect::Granted;
                    self.running += 1;
                    granted += 1;
                }
                granted
            }
        }

        proptest! {
            /// Against a FIFO model: every grant, count and refusal matches,
            /// and no grant ever takes `running` past the limit in force.
            #[test]
            fn matches_a_fifo_model_and_never_exceeds_the_limit(
                limit in 0usize..5,
                max_pending in 0usize..5,
                ops in prop::collection::vec(op(), 1..120),
            ) {
                let sem = Semaphore::new(limit, max_pending);
                let mut model = Model {
                    limit,
                    running: 0,
                    closed: false,
                    queue: VecDeque::new(),
                    expect: Vec::new(),
                };
                let mut permits: Vec<Permit> = Vec::new();
                // (model id, future) of every waiter not yet resolved.
                let mut waiters: Vec<(usize, Waiting<'_>)> = Vec::new();

                for op in ops {
                    let mut admitted_now = false;
                    let mut granted_now = 0;
                    match op {
                        Op::TryAcquire => {
                            let expected_ok = !model.closed
                                && model.running < model.limit
                                && model.queue.is_empty();
                            match sem.try_acquire() {
                                Ok(permit) => {
                                    prop_assert!(expected_ok);
                                    model.running += 1;
                                    admitted_now = true;
                                    permits.push(permit);
                                }
                                Err(TryAcquireError::Closed) => prop_assert!(model.closed),
                                Err(TryAcquireError::NoPermits { limit }) => {
                                    prop_assert!(!expected_ok && !model.closed);
                                    prop_assert_eq!(limit, model.limit);
                                }
                            }
                        }
                        Op::Acquire => {
                            let mut fut: Waiting<'_> = Box::pin(sem.acquire());
                            match poll(&mut fut) {
                                Poll::Ready(Ok(permit)) => {
                                    prop_assert!(!model.closed && model.running < model.limit);
                                    prop_assert!(model.queue.is_empty());
                                    model.running += 1;
                                    admitted_now = true;
                                    permits.push(permit);
                                }
                                Poll::Ready(Err(AcquireError::Closed)) => prop_assert!(model.closed),
                                Poll::Ready(Err(AcquireError::PendingFull { max_pending: m })) => {
                                    prop_assert!(!model.closed);
                                    prop_assert_eq!(m, max_pending);
                                    prop_assert_eq!(model.queue.len(), max_pending);
                                }
                                Poll::Pending => {
                                    prop_assert!(model.queue.len() < max_pending);
                                    let id = model.expect.len();
                                    model.expect.push(Expect::Queued);
                                    model.queue.push_back(id);
                                    waiters.push((id, fut));
                                }
                            }
                        }
                        Op::Release(i) if !permits.is_empty() => {
                            drop(permits.swap_remove(i % permits.len()));
                            model.running -= 1;
                            granted_now = model.grant();
                        }
                        Op::Poll(i) if !waiters.is_empty() => {
                            let at = i % waiters.len();
                            let id = waiters[at].0;
                            let polled = poll(&mut waiters[at].1);
                            match (model.expect[id], polled) {
                                (Expect::Queued, Poll::Pending) => {}
                                (Expect::Granted, Poll::Ready(Ok(permit))) => {
                                    permits.push(permit);
                                    drop(waiters.swap_remove(at));
                                }
                                (Expect::Closed, Poll::Ready(Err(AcquireError::Closed))) => {
                                    drop(waiters.swap_remove(at));
                                }
                                (expected, got) => {
                                    prop_assert!(false, "waiter {} expected {:?}, got {:?}", id, expected, got);
                                }
                            }
                        }
                        Op::Cancel(i) if !waiters.is_empty() => {
                            let (id, fut) = waiters.swap_remove(i % waiters.len());
                            drop(fut);
                            match model.expect[id] {
                                Expect::Queued => model.queue.retain(|&q| q != id),
                                Expect::Granted => {
                                    model.running -= 1;
                                    granted_now = model.grant();
                                }
                                Expect::Closed => {}
                            }
                        }
                        Op::SetLimit(new_limit) => {
                            sem.set_limit(new_limit);
                            model.limit = new_limit;
                            granted_now = model.grant();
                        }
                        Op::Close => {
                            sem.close();
                            model.closed = true;
                            for id in model.queue.drain(..) {
                                model.expect[id] = Expect::Closed;
                            }
                        }
                        Op::Release(_) | Op::Poll(_) | Op::Cancel(_) => {}
                    }

                    let unseen_grants = waiters
                        .iter()
                        .filter(|(id, _)| model.expect[*id] == Expect::Granted)
                        .count();
                    prop_assert_eq!(sem.running(), model.running);
                    prop_assert_eq!(sem.running(), permits.len() + unseen_grants);
                    prop_assert_eq!(sem.pending(), model.queue.len());
                    prop_assert!(sem.pending() <= max_pending);
                    prop_assert_eq!(sem.limit(), model.limit);
                    if granted_now > 0 || admitted_now {
                        prop_assert!(sem.running() <= sem.limit(), "granted past the limit");
                    }
                    if sem.pending() > 0 {
                        prop_assert!(sem.running() >= sem.limit(), "idle slot while waiting");
                    }
                }

                // Dropping everything returns every slot.
                drop(waiters);
                drop(permits);
                prop_assert_eq!((sem.running(), sem.pending()), (0, 0));
            }
        }
    }
}
