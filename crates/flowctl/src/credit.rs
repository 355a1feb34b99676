//! A credit window: at most `limit` messages in flight between a sender and
//! a consumer, as RabbitMQ's `basic_qos(prefetch_count)` or reactive
//! streams' `request(n)`. A credit is taken per message sent and given back
//! when the message is acknowledged.
//!
//! Guarantees:
//! - A grant never takes `outstanding` above the limit in force at the
//!   moment of the grant; `outstanding` never goes below zero.
//! - Credits are conserved: `outstanding` is exactly the credits granted
//!   minus the credits released (including those granted to an `acquire`
//!   that has not yet returned).
//! - Shrinking the limit ([`CreditWindow::set_limit`]) revokes nothing:
//!   credits already out stay out, and new grants wait until `outstanding`
//!   is below the new limit. Growing it serves waiters at once.
//! - Releasing more than the caller holds clamps to what is held (never
//!   below zero, never taking credits granted to a waiting `acquire`) and
//!   reports [`OverRelease`]; it never panics.
//! - [`CreditWindow::acquire`] waiters are served in arrival order, each
//!   granted `min(wanted, available)` as soon as any credit is free, and
//!   `try_acquire` does not overtake them. `acquire` is cancel safe:
//!   dropping it before it returns gives back anything granted to it.
//! - The uncontended `try_acquire`/`release` path is one uncontended
//!   `parking_lot` lock, with no allocation.
//!
//! Unlike AMQP, a limit of 0 means *no* credits (a paused consumer), not
//! unlimited; use `u32::MAX` for unlimited.
//!
//! Not guaranteed: which task's acknowledgements a release stands for;
//! credits are counted, not tracked per message.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

/// A release of more credits than were held; the held ones were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("released {requested} credits but only {released} were held; released {released}")]
pub struct OverRelease {
    pub requested: u32,
    pub released: u32,
}

struct CreditWaiter {
    wanted: u32,
    granted: u32,
    waker: Option<Waker>,
}

struct State {
    limit: u32,
    // Includes `pending`.
    outstanding: u32,
    // Granted to waiters that have not yet returned them to their caller.
    pending: u32,
    // Ticket order is arrival order.
    waiters: BTreeMap<u64, CreditWaiter>,
    // Waiters granted nothing yet; while any exist, `available()` is 0.
    queued: usize,
    next_ticket: u64,
}

impl State {
    fn available(&self) -> u32 {
        self.limit.saturating_sub(self.outstanding)
    }

    fn grant(&mut self, wakers: &mut Vec<Waker>) {
        if self.queued == 0 {
            return;
        }
        let mut available = self.available();
        for waiter in self.waiters.values_mut().filter(|w| w.granted == 0) {
            if available == 0 {
                break;
            }
            let granted = waiter.wanted.min(available);
            available -= granted;
            waiter.granted = granted;
            self.outstanding += granted;
            self.pending += granted;
            self.queued -= 1;
            wakers.extend(waiter.waker.take());
        }
    }
}

/// At most `limit` credits outstanding, shared by reference between the
/// task that sends and the tasks that acknowledge (`&self` methods).
pub struct CreditWindow {
    state: Mutex<State>,
}

impl fmt::Debug for CreditWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("CreditWindow")
            .field("limit", &state.limit)
            .field("outstanding", &state.outstanding)
            .field("waiters", &state.waiters.len())
            .finish()
    }
}

impl CreditWindow {
    /// A window allowing `limit` credits out at once, none out yet.
    pub fn new(limit: u32) -> Self {
        CreditWindow {
            state: Mutex::new(State {
                limit,
                outstanding: 0,
                pending: 0,
                waiters: BTreeMap::new(),
                queued: 0,
                next_ticket: 0,
            }),
        }
    }

    /// The limit in force.
    pub fn limit(&self) -> u32 {
        self.state.lock().limit
    }

    /// Credits granted and not yet released.
    pub fn outstanding(&self) -> u32 {
        self.state.lock().outstanding
    }

    /// Credits that could be granted now (0 while over a shrunk limit).
    pub fn available(&self) -> u32 {
        self.state.lock().available()
    }

    /// Takes up to `n` credits now, as many as are free (possibly 0).
    pub fn try_acquire(&self, n: u32) -> u32 {
        let mut state = self.state.lock();
        // Waiters queue only while nothing is available, so this cannot
        // overtake them.
        let granted = n.min(state.available());
        state.outstanding += granted;
        granted
    }

    /// Waits until at least one credit is free, then takes `min(n, free)`;
    /// returns 0 at once when `n` is 0.
    pub async fn acquire(&self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let ticket = {
            let mut state = self.state.lock();
            let available = state.available();
            if available > 0 {
                let granted = n.min(available);
                state.outstanding += granted;
                return granted;
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiters.insert(
                ticket,
                CreditWaiter {
                    wanted: n,
                    granted: 0,
                    waker: None,
                },
            );
            state.queued += 1;
            ticket
        };
        let mut guard = AcquireGuard {
            window: self,
            ticket,
            armed: true,
        };
        let granted = poll_fn(|cx| self.poll_acquire(cx, ticket)).await;
        guard.armed = false;
        granted
    }

    fn poll_acquire(&self, cx: &mut Context<'_>, ticket: u64) -> Poll<u32> {
        let mut state = self.state.lock();
        let Some(waiter) = state.waiters.get_mut(&ticket) else {
            // Only this future removes its ticket, and it is not polled
            // after it returns.
            return Poll::Ready(0);
        };
        if waiter.granted == 0 {
            match &waiter.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => waiter.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        let granted = waiter.granted;
        state.waiters.remove(&ticket);
        state.pending -= granted;
        Poll::Ready(granted)
    }

    /// Gives back `k` credits (`k` messages acknowledged). Releasing more
    /// than are held releases all that are held and reports it.
    pub fn release(&self, k: u32) -> Result<(), OverRelease> {
        let mut wakers = Vec::new();
        let released = {
            let mut state = self.state.lock();
            let held = state.outstanding - state.pending;
            let released = k.min(held);
            state.outstanding -= released;
            state.grant(&mut wakers);
            released
        };
        wakers.into_iter().for_each(Waker::wake);
        if released < k {
            Err(OverRelease {
                requested: k,
                released,
            })
        } else {
            Ok(())
        }
    }

    /// Changes the limit; credits already out are never revoked.
    pub fn set_limit(&self, limit: u32) {
        let mut wakers = Vec::new();
        {
            let mut state = self.state.lock();
            state.limit = limit;
            state.grant(&mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

/// Withdraws an `acquire` dropped before it returned, giving back anything
/// granted to it.
struct AcquireGuard<'a> {
    window: &'a CreditWindow,
    ticket: u64,
    armed: bool,
}

impl Drop for AcquireGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut wakers = Vec::new();
        {
            let mut state = self.window.state.lock();
            if let Some(waiter) = state.waiters.remove(&self.ticket) {
                if waiter.granted == 0 {
                    state.queued -= 1;
                } else {
                    state.pending -= waiter.granted;
                    state.outstanding -= waiter.granted;
                    state.grant(&mut wakers);
                }
            }
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::time::Duration;

    fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// seed: `basic_qos(prefetch_count=10)` — "RabbitMQ sends only 10
    /// messages to this consumer. Once the consumer acknowledges 5 of them,
    /// the broker sends 5 more."
    #[test]
    fn prefetch_10_sends_10_then_5_more_after_5_acks() {
        let window = CreditWindow::new(10);
        assert_eq!(window.try_acquire(1_000), 10);
        assert_eq!(window.try_acquire(1), 0);
        assert_eq!((window.outstanding(), window.available()), (10, 0));
        assert_eq!(window.release(5), Ok(()));
        assert_eq!(window.try_acquire(1_000), 5);
        assert_eq!(window.try_acquire(1), 0);
        assert_eq!(window.outstanding(), 10);
    }

    #[test]
    fn try_acquire_grants_what_is_free_one_at_a_time_too() {
        let window = CreditWindow::new(3);
        assert_eq!(window.try_acquire(0), 0);
        assert_eq!(window.try_acquire(1), 1);
        assert_eq!(window.try_acquire(1), 1);
        assert_eq!(window.try_acquire(5), 1);
        assert_eq!(window.available(), 0);
    }

    #[test]
    fn over_release_clamps_and_reports() {
        let window = CreditWindow::new(10);
        assert_eq!(window.try_acquire(3), 3);
        assert_eq!(
            window.release(5),
            Err(OverRelease {
                requested: 5,
                released: 3
            })
        );
        assert_eq!(window.outstanding(), 0);
        assert_eq!(
            window.release(1),
            Err(OverRelease {
                requested: 1,
                released: 0
            })
        );
        assert_eq!(window.try_acquire(100), 10);
    }

    #[test]
    fn shrinking_revokes_nothing_and_waits_below_the_new_limit() {
        let window = CreditWindow::new(10);
        assert_eq!(window.try_acquire(10), 10);
        window.set_limit(4);
        assert_eq!(
            (window.limit(), window.outstanding(), window.available()),
            (4, 10, 0)
        );
        window.release(6).unwrap();
        assert_eq!(window.try_acquire(1), 0);
        window.release(1).unwrap();
        assert_eq!(window.try_acquire(5), 1);
        assert_eq!(window.outstanding(), 4);
    }

    #[test]
    fn growing_serves_waiters_at_once() {
        let window = CreditWindow::new(0);
        let mut first = Box::pin(window.acquire(3));
        let mut second = Box::pin(window.acquire(3));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        window.set_limit(4);
        assert_eq!(window.outstanding(), 4);
        assert_eq!(poll_once(first.as_mut()), Poll::Ready(3));
        assert_eq!(poll_once(second.as_mut()), Poll::Ready(1));
    }

    #[test]
    fn waiters_are_served_in_arrival_order_and_not_overtaken() {
        let window = CreditWindow::new(2);
        assert_eq!(window.try_acquire(2), 2);
        let mut first = Box::pin(window.acquire(2));
        let mut second = Box::pin(window.acquire(1));
        // A future arrives when first polled.
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        window.release(1).unwrap();
        assert_eq!(window.try_acquire(1), 0);
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(poll_once(first.as_mut()), Poll::Ready(1));
        window.release(1).unwrap();
        assert_eq!(poll_once(second.as_mut()), Poll::Ready(1));
    }

    #[test]
    fn a_dropped_acquire_gives_its_grant_to_the_next_waiter() {
        let window = CreditWindow::new(1);
        assert_eq!(window.try_acquire(1), 1);
        let mut first = Box::pin(window.acquire(1));
        let mut second = Box::pin(window.acquire(1));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        // Granted to `first`, which is dropped before it returns.
        window.release(1).unwrap();
        assert_eq!(window.outstanding(), 1);
        drop(first);
        assert_eq!(poll_once(second.as_mut()), Poll::Ready(1));
        // Dropped while still waiting: nothing changes.
        let third = Box::pin(window.acquire(1));
        drop(third);
        assert_eq!(window.outstanding(), 1);
        // A pending grant is not the caller's to release.
        let mut fourth = Box::pin(window.acquire(1));
        assert!(poll_once(fourth.as_mut()).is_pending());
        window.release(1).unwrap();
        assert_eq!(
            window.release(1),
            Err(OverRelease {
                requested: 1,
                released: 0
            })
        );
        assert_eq!(poll_once(fourth.as_mut()), Poll::Ready(1));
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_exactly_until_an_ack() {
        let window = CreditWindow::new(10);
        assert_eq!(window.acquire(10).await, 10);
        let acker = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            window.release(5).unwrap();
        };
        let start = tokio::time::Instant::now();
        let (granted, ()) = tokio::join!(window.acquire(8), acker);
        assert_eq!((granted, start.elapsed()), (5, Duration::from_secs(3)));
        assert_eq!(window.acquire(0).await, 0);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            TryAcquire(u32),
            Release(u32),
            SetLimit(u32),
            StartAcquire(u32),
            PollAll,
            Cancel(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0u32..8).prop_map(Op::TryAcquire),
                4 => (0u32..8).prop_map(Op::Release),
                2 => (0u32..12).prop_map(Op::SetLimit),
                3 => (1u32..8).prop_map(Op::StartAcquire),
                3 => Just(Op::PollAll),
                1 => (0usize..1000).prop_map(Op::Cancel),
            ]
        }

        type AcquireFuture<'a> = Pin<Box<dyn Future<Output = u32> + 'a>>;

        proptest! {
            /// Over random acquire/release/resize/cancel sequences: no step
            /// raises `outstanding` above the limit then in force, grants are
            /// in `1..=wanted` and never more than was free, releases clamp to
            /// what is held, and credits are conserved.
            #[test]
            fn never_above_the_limit_and_credits_are_conserved(
                limit in 0u32..12,
                ops in prop::collection::vec(op(), 1..150),
            ) {
                let window = CreditWindow::new(limit);
                let mut waiting: Vec<(u32, AcquireFuture<'_>)> = Vec::new();
                // Granted to callers and not yet released.
                let mut held = 0u32;
                for op in ops {
                    let before = window.outstanding();
                    match op {
                        Op::TryAcquire(n) => {
                            let free = window.available();
                            let granted = window.try_acquire(n);
                            prop_assert_eq!(granted, n.min(free));
                            held += granted;
                        }
                        Op::Release(k) => {
                            let result = window.release(k);
                            let released = k.min(held);
                            if k > held {
                                prop_assert_eq!(result, Err(OverRelease { requested: k, released }));
                            } else {
                                prop_assert_eq!(result, Ok(()));
                            }
                            held -= released;
                        }
                        Op::SetLimit(limit) => window.set_limit(limit),
                        Op::StartAcquire(n) => {
                            let free = window.available();
                            let mut future: AcquireFuture<'_> = Box::pin(window.acquire(n));
                            match poll_once(future.as_mut()) {
                                Poll::Ready(granted) => {
                                    prop_assert_eq!(granted, n.min(free));
                                    prop_assert!(granted >= 1);
                                    held += granted;
                                }
                                Poll::Pending => {
                                    prop_assert_eq!(free, 0);
                                    waiting.push((n, future));
                                }
                            }
                        }
                        Op::PollAll => {
                            let mut still = Vec::new();
                            for (wanted, mut future) in waiting.drain(..) {
                                match poll_once(future.as_mut()) {
                                    Poll::Ready(granted) => {
                                        prop_assert!((1..=wanted).contains(&granted));
                                        held += granted;
                                    }
                                    Poll::Pending => still.push((wanted, future)),
                                }
                            }
                            waiting = still;
                        }
                        Op::Cancel(index) => {
                            if !waiting.is_empty() {
                                drop(waiting.remove(index % waiting.len()));
                            }
                        }
                    }
                    let (outstanding, limit) = (window.outstanding(), window.limit());
                    prop_assert!(outstanding <= before || outstanding <= limit,
                        "{before} -> {outstanding} over limit {limit}");
                    prop_assert!(outstanding >= held);
                    prop_assert_eq!(window.available(), limit.saturating_sub(outstanding));
                }
                for (wanted, mut future) in std::mem::take(&mut waiting) {
                    if let Poll::Ready(granted) = poll_once(future.as_mut()) {
                        prop_assert!((1..=wanted).contains(&granted));
                        held += granted;
                    }
                }
                prop_assert_eq!(window.outstanding(), held);
                prop_assert_eq!(window.release(held), Ok(()));
                prop_assert_eq!(window.outstanding(), 0);
            }
        }
    }
}
