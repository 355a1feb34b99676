//! A bounded in-memory buffer between a producer and the pipeline, bounded by
//! item count and by bytes at once, with a policy for when it is full
//! ([`WhenFull`], as Vector's buffer `when_full`).
//!
//! Guarantees:
//! - Neither bound is ever exceeded: `len() <= max_items` and
//!   `bytes() <= max_bytes` at all times. Space granted to a blocked pusher
//!   counts against the bounds until its push completes.
//! - Nothing is lost unreported: every item handed to a push is exactly one
//!   of: still inside, popped, given back in [`Rejected`] (`Full`, `TooLarge`,
//!   `Closed`), or given back in [`Pushed::dropped`] (`DropOldest`). The one
//!   exception is a `push` future the caller drops: its item never entered the
//!   buffer and goes down with the future (counted in
//!   [`BufferStats::cancelled`]).
//! - FIFO: items are popped in the order their pushes completed (for one
//!   producer, call order). Blocked pushers are granted space in arrival
//!   order, head-of-line: a large item waiting at the head is overtaken
//!   neither by smaller pushers behind it nor by `try_push`.
//! - An item that can never fit (`bytes > max_bytes`, or `max_items == 0`) is
//!   `TooLarge` at once and is never waited on.
//! - [`BoundedBuffer::push`] and [`BoundedBuffer::pop`] are cancel safe:
//!   dropping the future before it completes leaves the buffer as if it had
//!   not been called (space already granted to it passes to the next waiter;
//!   an item is removed only by the poll that returns it).
//! - Time spent blocked is read from the buffer's [`Clock`] and reported on
//!   success and on failure; waits themselves run on tokio time, so use
//!   [`TokioClock`] (the default) for the two to agree.
//!
//! Not guaranteed: the order between pushes racing from different tasks
//! (whichever completes first is first), or fairness between concurrent
//! `pop`s.
//!
//! Seed: a Kafka producer (`buffer.memory` = 32 MiB, `max.block.ms` = 60000)
//! is [`BufferLimits::kafka_default`] with [`WhenFull::kafka_default`]; like
//! Kafka it bounds bytes only.

use crate::clock::{Clock, TokioClock};
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;

/// Kafka's default producer `buffer.memory`: 32 MiB.
pub const KAFKA_BUFFER_MEMORY: usize = 32 * 1024 * 1024;

/// Kafka's default producer `max.block.ms`: 60 s.
pub const KAFKA_MAX_BLOCK: Duration = Duration::from_secs(60);

/// The two bounds a buffer enforces together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BufferLimits {
    /// Most items held at once (`usize::MAX` for no count bound).
    pub max_items: usize,
    /// Most bytes held at once, as the sizes passed on push add up.
    pub max_bytes: usize,
}

impl BufferLimits {
    /// Kafka's producer default: 32 MiB. Kafka bounds only bytes; the item
    /// count is capped at one item per byte of that budget so that empty
    /// items cannot grow the buffer without bound.
    pub fn kafka_default() -> Self {
        BufferLimits {
            max_items: KAFKA_BUFFER_MEMORY,
            max_bytes: KAFKA_BUFFER_MEMORY,
        }
    }

    /// Whether an item of `bytes` fits in an empty buffer.
    fn could_ever_fit(&self, bytes: usize) -> bool {
        self.max_items > 0 && bytes <= self.max_bytes
    }
}

/// What a push does when the item does not fit now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WhenFull {
    /// `push` waits up to `max_block` for space, then fails `Full`;
    /// `try_push` fails `Full` at once.
    Block { max_block: Duration },
    /// Fail `Full` at once, giving the new item back.
    RejectNew,
    /// Evict the oldest items until the new one fits, giving them back.
    DropOldest,
}

impl WhenFull {
    /// Kafka's producer default: block for up to 60 s.
    pub fn kafka_default() -> Self {
        WhenFull::Block {
            max_block: KAFKA_MAX_BLOCK,
        }
    }
}

/// Why a push gave its item back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum RejectReason {
    /// No room now (or, for a blocking push, not within `max_block`).
    #[error("buffer is full")]
    Full,
    /// Larger than the buffer could ever hold.
    #[error("item can never fit in the buffer")]
    TooLarge,
    /// The buffer was closed before the item got in.
    #[error("buffer is closed")]
    Closed,
}

/// A refused push: the item comes back, with why and how long it waited.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason} (after blocking {blocked:?})")]
pub struct Rejected<T> {
    pub item: T,
    pub reason: RejectReason,
    pub blocked: Duration,
}

/// An accepted push: the items evicted to make room (`DropOldest` only,
/// oldest first) and how long the push waited.
#[derive(Debug, PartialEq, Eq)]
pub struct Pushed<T> {
    pub dropped: Vec<T>,
    pub blocked: Duration,
}

/// Counters since the buffer was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Items accepted into the buffer.
    pub pushed: u64,
    /// Items given back in a [`Rejected`].
    pub rejected: u64,
    /// Items evicted by `DropOldest`.
    pub dropped: u64,
    /// Items popped.
    pub popped: u64,
    /// Blocked `push` futures dropped by the caller before completing.
    pub cancelled: u64,
    /// `push` calls that had to wait.
    pub blocked_pushes: u64,
    /// Total time `push` calls spent waiting, whatever their outcome.
    pub blocked: Duration,
}

struct Slot<T> {
    item: T,
    bytes: usize,
}

struct PushWaiter {
    bytes: usize,
    granted: bool,
    waker: Option<Waker>,
}

struct State<T> {
    items: VecDeque<Slot<T>>,
    bytes: usize,
    // Space granted to blocked pushers that have not yet been polled.
    reserved_items: usize,
    reserved_bytes: usize,
    // Ticket order is arrival order.
    waiters: BTreeMap<u64, PushWaiter>,
    // Waiters not yet granted space.
    queued: usize,
    next_ticket: u64,
    closed: bool,
    stats: BufferStats,
}

impl<T> State<T> {
    fn free_items(&self, limits: &BufferLimits) -> usize {
        limits
            .max_items
            .saturating_sub(self.items.len() + self.reserved_items)
    }

    fn free_bytes(&self, limits: &BufferLimits) -> usize {
        limits
            .max_bytes
            .saturating_sub(self.bytes + self.reserved_bytes)
    }

    fn has_room(&self, limits: &BufferLimits, bytes: usize) -> bool {
        self.free_items(limits) > 0 && bytes <= self.free_bytes(limits)
    }

    fn insert(&mut self, item: T, bytes: usize) {
        self.items.push_back(Slot { item, bytes });
        self.bytes += bytes;
        self.stats.pushed += 1;
    }

    /// Hands free space to queued pushers in arrival order, stopping at the
    /// first that does not fit so that a large item is not starved.
    fn grant(&mut self, limits: &BufferLimits, wakers: &mut Vec<Waker>) {
        if self.queued == 0 {
            return;
        }
        let mut free_items = self.free_items(limits);
        let mut free_bytes = self.free_bytes(limits);
        for waiter in self.waiters.values_mut().filter(|w| !w.granted) {
            if free_items == 0 || waiter.bytes > free_bytes {
                break;
            }
            free_items -= 1;
            free_bytes -= waiter.bytes;
            waiter.granted = true;
            self.reserved_items += 1;
            self.reserved_bytes += waiter.bytes;
            self.queued -= 1;
            wakers.extend(waiter.waker.take());
        }
    }

    /// Forgets a waiter, giving back any space granted to it.
    fn remove_waiter(&mut self, ticket: u64) -> Option<PushWaiter> {
        let waiter = self.waiters.remove(&ticket)?;
        if waiter.granted {
            self.reserved_items -= 1;
            self.reserved_bytes -= waiter.bytes;
        } else {
            self.queued -= 1;
        }
        Some(waiter)
    }
}

enum Taken<T> {
    Item(T),
    Empty,
    Closed,
}

/// A FIFO buffer bounded by item count and bytes, shared by reference
/// between producers and consumers (`&self` methods).
pub struct BoundedBuffer<T, C: Clock = TokioClock> {
    limits: BufferLimits,
    when_full: WhenFull,
    clock: C,
    state: Mutex<State<T>>,
    not_empty: Notify,
}

impl<T, C: Clock> fmt::Debug for BoundedBuffer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock();
        f.debug_struct("BoundedBuffer")
            .field("limits", &self.limits)
            .field("when_full", &self.when_full)
            .field("len", &state.items.len())
            .field("bytes", &state.bytes)
            .field("closed", &state.closed)
            .finish_non_exhaustive()
    }
}

impl<T> BoundedBuffer<T, TokioClock> {
    /// An empty buffer measuring blocked time on tokio time.
    pub fn new(limits: BufferLimits, when_full: WhenFull) -> Self {
        BoundedBuffer::with_clock(limits, when_full, TokioClock::new())
    }
}

impl<T, C: Clock> BoundedBuffer<T, C> {
    /// An empty buffer measuring blocked time on `clock`.
    pub fn with_clock(limits: BufferLimits, when_full: WhenFull, clock: C) -> Self {
        BoundedBuffer {
            limits,
            when_full,
            clock,
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                reserved_items: 0,
                reserved_bytes: 0,
                waiters: BTreeMap::new(),
                queued: 0,
                next_ticket: 0,
                closed: false,
                stats: BufferStats::default(),
            }),
            not_empty: Notify::new(),
        }
    }

    /// The configured bounds.
    pub fn limits(&self) -> BufferLimits {
        self.limits
    }

    /// The configured policy.
    pub fn when_full(&self) -> WhenFull {
        self.when_full
    }

    /// Items inside now.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Whether no item is inside now.
    pub fn is_empty(&self) -> bool {
        self.state.lock().items.is_empty()
    }

    /// Sum of the sizes of the items inside now.
    pub fn bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Counters since creation.
    pub fn stats(&self) -> BufferStats {
        self.state.lock().stats
    }

    /// Pushes `item` (of size `bytes`) now if the policy allows, never
    /// waiting: under `Block` a full buffer (or one with pushers already
    /// queued) is `Full`.
    pub fn try_push(&self, item: T, bytes: usize) -> Result<Pushed<T>, Rejected<T>> {
        let result = {
            let mut state = self.state.lock();
            self.push_now(&mut state, item, bytes)
        };
        if result.is_ok() {
            self.not_empty.notify_one();
        }
        result
    }

    fn push_now(
        &self,
        state: &mut State<T>,
        item: T,
        bytes: usize,
    ) -> Result<Pushed<T>, Rejected<T>> {
        let reason = match self.refusal(state, bytes) {
            None => {
                state.insert(item, bytes);
                return Ok(Pushed {
                    dropped: Vec::new(),
                    blocked: Duration::ZERO,
                });
            }
            Some(RejectReason::Full) if self.when_full == WhenFull::DropOldest => {
                let mut dropped = Vec::new();
                while !state.has_room(&self.limits, bytes) {
                    let Some(oldest) = state.items.pop_front() else {
                        break;
                    };
                    state.bytes -= oldest.bytes;
                    state.stats.dropped += 1;
                    dropped.push(oldest.item);
                }
                // `refusal` ruled out items that could never fit, and
                // DropOldest never reserves space, so there is room now;
                // the check only keeps a broken invariant from breaking the
                // bounds too.
                if state.has_room(&self.limits, bytes) {
                    state.insert(item, bytes);
                    return Ok(Pushed {
                        dropped,
                        blocked: Duration::ZERO,
                    });
                }
                RejectReason::Full
            }
            Some(reason) => reason,
        };
        state.stats.rejected += 1;
        Err(Rejected {
            item,
            reason,
            blocked: Duration::ZERO,
        })
    }

    /// Why an item of `bytes` cannot go in right now, if it cannot.
    fn refusal(&self, state: &State<T>, bytes: usize) -> Option<RejectReason> {
        if state.closed {
            Some(RejectReason::Closed)
        } else if !self.limits.could_ever_fit(bytes) {
            Some(RejectReason::TooLarge)
        } else if state.queued > 0 || !state.has_room(&self.limits, bytes) {
            // Queued pushers exist only under Block; making way for them
            // keeps their place in line.
            Some(RejectReason::Full)
        } else {
            None
        }
    }

    /// Pushes `item` (of size `bytes`); under `Block` waits up to
    /// `max_block` for space (queued behind earlier waiters), otherwise the
    /// same as [`try_push`](Self::try_push).
    pub async fn push(&self, item: T, bytes: usize) -> Result<Pushed<T>, Rejected<T>> {
        let WhenFull::Block { max_block } = self.when_full else {
            return self.try_push(item, bytes);
        };
        let (ticket, start) = {
            let mut state = self.state.lock();
            match self.refusal(&state, bytes) {
                None => {
                    state.insert(item, bytes);
                    drop(state);
                    self.not_empty.notify_one();
                    return Ok(Pushed {
                        dropped: Vec::new(),
                        blocked: Duration::ZERO,
                    });
                }
                Some(RejectReason::Full) => {}
                Some(reason) => {
                    state.stats.rejected += 1;
                    return Err(Rejected {
                        item,
                        reason,
                        blocked: Duration::ZERO,
                    });
                }
            }
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            state.waiters.insert(
                ticket,
                PushWaiter {
                    bytes,
                    granted: false,
                    waker: None,
                },
            );
            state.queued += 1;
            state.stats.blocked_pushes += 1;
            (ticket, self.clock.now())
        };
        let mut guard = PushGuard {
            buffer: self,
            ticket,
            start,
            armed: true,
        };
        let mut item = Some(item);
        let mut deadline = pin!(tokio::time::sleep(max_block));
        let (blocked, reason) =
            poll_fn(|cx| self.poll_push(cx, ticket, start, &mut item, deadline.as_mut())).await;
        guard.armed = false;
        // poll_push takes the item exactly when it puts it in the buffer.
        match item {
            None => Ok(Pushed {
                dropped: Vec::new(),
                blocked,
            }),
            Some(item) => Err(Rejected {
                item,
                reason,
                blocked,
            }),
        }
    }

    fn poll_push(
        &self,
        cx: &mut Context<'_>,
        ticket: u64,
        start: Duration,
        item: &mut Option<T>,
        deadline: Pin<&mut tokio::time::Sleep>,
    ) -> Poll<(Duration, RejectReason)> {
        let mut wakers = Vec::new();
        let mut state = self.state.lock();
        let reason = match state.waiters.get(&ticket).map(|w| w.granted) {
            // Only `close` removes another pusher's ticket.
            None => RejectReason::Closed,
            Some(true) => {
                if let Some(waiter) = state.remove_waiter(ticket) {
                    if let Some(item) = item.take() {
                        state.insert(item, waiter.bytes);
                    }
                }
                // Not a rejection: the item is taken.
                RejectReason::Full
            }
            Some(false) => {
                if deadline.poll(cx).is_pending() {
                    if let Some(waiter) = state.waiters.get_mut(&ticket) {
                        match &waiter.waker {
                            Some(waker) if waker.will_wake(cx.waker()) => {}
                            _ => waiter.waker = Some(cx.waker().clone()),
                        }
                    }
                    return Poll::Pending;
                }
                state.remove_waiter(ticket);
                // It may have been the head holding back smaller pushers.
                state.grant(&self.limits, &mut wakers);
                RejectReason::Full
            }
        };
        let blocked = self.clock.now().saturating_sub(start);
        state.stats.blocked += blocked;
        let inserted = item.is_none();
        if !inserted {
            state.stats.rejected += 1;
        }
        drop(state);
        if inserted {
            self.not_empty.notify_one();
        }
        wakers.into_iter().for_each(Waker::wake);
        Poll::Ready((blocked, reason))
    }

    /// Removes and returns the oldest item, if any, never waiting.
    pub fn try_pop(&self) -> Option<T> {
        match self.take() {
            Taken::Item(item) => Some(item),
            Taken::Empty | Taken::Closed => None,
        }
    }

    /// Removes and returns the oldest item, waiting for one; `None` once the
    /// buffer is closed and drained.
    pub async fn pop(&self) -> Option<T> {
        loop {
            // Registered before looking, so a push in between still wakes us.
            let mut notified = pin!(self.not_empty.notified());
            notified.as_mut().enable();
            match self.take() {
                Taken::Item(item) => return Some(item),
                Taken::Closed => return None,
                Taken::Empty => notified.await,
            }
        }
    }

    fn take(&self) -> Taken<T> {
        let mut wakers = Vec::new();
        let taken = {
            let mut state = self.state.lock();
            match state.items.pop_front() {
                Some(slot) => {
                    state.bytes -= slot.bytes;
                    state.stats.popped += 1;
                    state.grant(&self.limits, &mut wakers);
                    Taken::Item(slot.item)
                }
                None if state.closed => Taken::Closed,
                None => Taken::Empty,
            }
        };
        wakers.into_iter().for_each(Waker::wake);
        taken
    }

    /// Refuses all further pushes and fails pending ones `Closed` (with their
    /// items); items inside can still be popped.
    pub fn close(&self) {
        let wakers: Vec<Waker> = {
            let mut state = self.state.lock();
            state.closed = true;
            state.queued = 0;
            state.reserved_items = 0;
            state.reserved_bytes = 0;
            let waiters = std::mem::take(&mut state.waiters);
            waiters.into_values().filter_map(|w| w.waker).collect()
        };
        wakers.into_iter().for_each(Waker::wake);
        self.not_empty.notify_waiters();
    }
}

/// Withdraws a blocked push whose future is dropped before completing.
struct PushGuard<'a, T, C: Clock> {
    buffer: &'a BoundedBuffer<T, C>,
    ticket: u64,
    start: Duration,
    armed: bool,
}

impl<T, C: Clock> Drop for PushGuard<'_, T, C> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let buffer = self.buffer;
        let mut wakers = Vec::new();
        {
            let mut state = buffer.state.lock();
            state.remove_waiter(self.ticket);
            state.grant(&buffer.limits, &mut wakers);
            state.stats.cancelled += 1;
            state.stats.blocked += buffer.clock.now().saturating_sub(self.start);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FakeClock;

    const KIB: usize = 1024;

    fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn limits(max_items: usize, max_bytes: usize) -> BufferLimits {
        BufferLimits {
            max_items,
            max_bytes,
        }
    }

    fn block(secs: u64) -> WhenFull {
        WhenFull::Block {
            max_block: Duration::from_secs(secs),
        }
    }

    fn pushed<T>(dropped: Vec<T>, blocked: Duration) -> Pushed<T> {
        Pushed { dropped, blocked }
    }

    fn rejected<T>(item: T, reason: RejectReason, blocked: Duration) -> Rejected<T> {
        Rejected {
            item,
            reason,
            blocked,
        }
    }

    /// seed: Kafka `buffer.memory` 32 MiB holds exactly 32768 records of
    /// 1 KiB; the next one does not fit.
    #[test]
    fn kafka_32_mib_admits_exactly_32768_one_kib_items() {
        let buffer = BoundedBuffer::with_clock(
            BufferLimits::kafka_default(),
            WhenFull::kafka_default(),
            FakeClock::new(),
        );
        let admitted = (0..40_000u32)
            .filter(|&i| buffer.try_push(i, KIB).is_ok())
            .count();
        assert_eq!(admitted, 32_768);
        assert_eq!(buffer.len(), 32_768);
        assert_eq!(buffer.bytes(), KAFKA_BUFFER_MEMORY);
        assert_eq!(
            buffer.try_push(7, 1).unwrap_err(),
            rejected(7, RejectReason::Full, Duration::ZERO)
        );
        assert_eq!(buffer.try_pop(), Some(0));
        assert!(buffer.try_push(40_000, KIB).is_ok());
        assert_eq!(buffer.stats().pushed, 32_769);
        assert_eq!(buffer.stats().rejected, 40_000 - 32_768 + 1);
    }

    #[test]
    fn the_item_count_bound_holds_for_zero_byte_items() {
        let buffer =
            BoundedBuffer::with_clock(limits(3, 100), WhenFull::RejectNew, FakeClock::new());
        for i in 0..3 {
            assert!(buffer.try_push(i, 0).is_ok());
        }
        assert_eq!(
            buffer.try_push(3, 0).unwrap_err().reason,
            RejectReason::Full
        );
        assert_eq!((buffer.len(), buffer.bytes()), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn too_large_is_refused_at_once_even_when_blocking() {
        let buffer = BoundedBuffer::new(limits(10, 100), block(60));
        let start = tokio::time::Instant::now();
        assert_eq!(
            buffer.push("big", 101).await.unwrap_err(),
            rejected("big", RejectReason::TooLarge, Duration::ZERO)
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
        let no_items = BoundedBuffer::new(limits(0, 100), WhenFull::DropOldest);
        assert_eq!(
            no_items.try_push("x", 0).unwrap_err().reason,
            RejectReason::TooLarge
        );
        assert!(buffer.push("fits exactly", 100).await.is_ok());
    }

    /// seed: `max.block.ms` = 60000 — a full buffer blocks the producer for
    /// exactly 60 s, then fails and hands the record back.
    #[tokio::test(start_paused = true)]
    async fn block_gives_up_after_exactly_max_block_and_returns_the_item() {
        let buffer = BoundedBuffer::new(limits(usize::MAX, 2 * KIB), WhenFull::kafka_default());
        assert!(buffer.push(1, KIB).await.is_ok());
        assert!(buffer.push(2, KIB).await.is_ok());
        let start = tokio::time::Instant::now();
        assert_eq!(
            buffer.push(3, KIB).await.unwrap_err(),
            rejected(3, RejectReason::Full, KAFKA_MAX_BLOCK)
        );
        assert_eq!(start.elapsed(), KAFKA_MAX_BLOCK);
        let stats = buffer.stats();
        assert_eq!(
            (
                stats.pushed,
                stats.rejected,
                stats.blocked_pushes,
                stats.blocked
            ),
            (2, 1, 1, KAFKA_MAX_BLOCK)
        );
        assert_eq!((buffer.len(), buffer.bytes()), (2, 2 * KIB));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pop_during_the_block_lets_the_pusher_in_with_the_exact_block_time() {
        let buffer = BoundedBuffer::new(limits(2, usize::MAX), WhenFull::kafka_default());
        buffer.try_push('a', 1).unwrap();
        buffer.try_push('b', 1).unwrap();
        let consumer = async {
            tokio::time::sleep(Duration::from_millis(12_345)).await;
            buffer.try_pop()
        };
        let (push, popped) = tokio::join!(buffer.push('c', 1), consumer);
        assert_eq!(popped, Some('a'));
        assert_eq!(push, Ok(pushed(vec![], Duration::from_millis(12_345))));
        assert_eq!(buffer.try_pop(), Some('b'));
        assert_eq!(buffer.try_pop(), Some('c'));
        assert_eq!(buffer.stats().blocked, Duration::from_millis(12_345));
    }

    #[test]
    fn reject_new_gives_the_new_item_back() {
        let buffer =
            BoundedBuffer::with_clock(limits(2, 10), WhenFull::RejectNew, FakeClock::new());
        assert_eq!(buffer.try_push("a", 6), Ok(pushed(vec![], Duration::ZERO)));
        assert_eq!(
            buffer.try_push("b", 5).unwrap_err(),
            rejected("b", RejectReason::Full, Duration::ZERO)
        );
        assert!(buffer.try_push("c", 4).is_ok());
        assert_eq!(buffer.try_pop(), Some("a"));
        assert_eq!(buffer.try_pop(), Some("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn drop_oldest_evicts_just_enough_and_returns_the_evicted_oldest_first() {
        let buffer = BoundedBuffer::new(limits(3, 10), WhenFull::DropOldest);
        for (item, bytes) in [(1, 3), (2, 3), (3, 3)] {
            assert_eq!(
                buffer.push(item, bytes).await,
                Ok(pushed(vec![], Duration::ZERO))
            );
        }
        // Count bound: one eviction.
        assert_eq!(buffer.try_push(4, 1), Ok(pushed(vec![1], Duration::ZERO)));
        // Byte bound: 2, 3, 4 hold 7 of 10 bytes; 9 more needs 2 and 3 gone.
        assert_eq!(
            buffer.push(5, 9).await,
            Ok(pushed(vec![2, 3], Duration::ZERO))
        );
        assert_eq!((buffer.len(), buffer.bytes()), (2, 10));
        assert_eq!(buffer.stats().dropped, 3);
        assert_eq!(buffer.try_pop(), Some(4));
        assert_eq!(buffer.try_pop(), Some(5));
    }

    #[test]
    fn blocked_pushers_are_served_in_arrival_order_head_of_line() {
        let runtime = paused_runtime();
        let _enter = runtime.enter();
        let buffer = BoundedBuffer::new(limits(10, 10), block(60));
        buffer.try_push("a", 5).unwrap();
        buffer.try_push("b", 5).unwrap();
        let mut big = Box::pin(buffer.push("big", 8));
        let mut small = Box::pin(buffer.push("small", 1));
        assert!(poll_once(big.as_mut()).is_pending());
        assert!(poll_once(small.as_mut()).is_pending());
        // Room for "small" but not for "big" ahead of it: neither goes in,
        // and no try_push slips past them.
        assert_eq!(buffer.try_pop(), Some("a"));
        assert!(poll_once(small.as_mut()).is_pending());
        assert_eq!(
            buffer.try_push("barger", 1).unwrap_err().reason,
            RejectReason::Full
        );
        assert!(poll_once(big.as_mut()).is_pending());
        assert_eq!(buffer.try_pop(), Some("b"));
        assert!(poll_once(big.as_mut()).is_ready());
        assert!(poll_once(small.as_mut()).is_ready());
        assert_eq!(buffer.try_pop(), Some("big"));
        assert_eq!(buffer.try_pop(), Some("small"));
    }

    #[test]
    fn a_dropped_push_leaves_nothing_behind_and_passes_its_space_on() {
        let runtime = paused_runtime();
        let _enter = runtime.enter();
        let buffer = BoundedBuffer::new(limits(1, 10), block(60));
        buffer.try_push(0, 1).unwrap();
        let mut first = Box::pin(buffer.push(1, 1));
        let mut second = Box::pin(buffer.push(2, 1));
        let mut third = Box::pin(buffer.push(3, 1));
        assert!(poll_once(first.as_mut()).is_pending());
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(poll_once(third.as_mut()).is_pending());
        // Dropped while still waiting.
        drop(first);
        // Granted space by the pop, then dropped before it could use it.
        assert_eq!(buffer.try_pop(), Some(0));
        drop(second);
        assert!(buffer.is_empty());
        assert_eq!(
            poll_once(third.as_mut()),
            Poll::Ready(Ok(pushed(vec![], Duration::ZERO)))
        );
        assert_eq!(buffer.try_pop(), Some(3));
        let stats = buffer.stats();
        assert_eq!(
            (
                stats.pushed,
                stats.popped,
                stats.cancelled,
                stats.blocked_pushes
            ),
            (2, 2, 2, 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_hands_pending_items_back_and_pop_drains_then_ends() {
        let buffer = BoundedBuffer::new(limits(1, 10), block(60));
        buffer.try_push("kept", 1).unwrap();
        let closer = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            buffer.close();
        };
        let (push, ()) = tokio::join!(buffer.push("pending", 1), closer);
        assert_eq!(
            push.unwrap_err(),
            rejected("pending", RejectReason::Closed, Duration::from_secs(2))
        );
        assert_eq!(
            buffer.try_push("late", 1).unwrap_err().reason,
            RejectReason::Closed
        );
        assert_eq!(buffer.pop().await, Some("kept"));
        assert_eq!(buffer.pop().await, None);
        assert_eq!(buffer.stats().rejected, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn pop_waits_for_a_push_and_for_close() {
        let buffer = BoundedBuffer::new(limits(4, 10), WhenFull::RejectNew);
        let producer = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            buffer.try_push(1, 1).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            buffer.close();
        };
        let consumer = async {
            let start = tokio::time::Instant::now();
            let first = buffer.pop().await;
            let at_first = start.elapsed();
            let second = buffer.pop().await;
            (first, at_first, second, start.elapsed())
        };
        let ((), got) = tokio::join!(producer, consumer);
        assert_eq!(
            got,
            (
                Some(1),
                Duration::from_secs(1),
                None,
                Duration::from_secs(2)
            )
        );
    }

    #[test]
    fn a_dropped_pop_loses_nothing() {
        let buffer =
            BoundedBuffer::with_clock(limits(4, 10), WhenFull::RejectNew, FakeClock::new());
        let mut waiting = Box::pin(buffer.pop());
        assert!(poll_once(waiting.as_mut()).is_pending());
        buffer.try_push(1, 1).unwrap();
        drop(waiting);
        let mut other = Box::pin(buffer.pop());
        assert_eq!(poll_once(other.as_mut()), Poll::Ready(Some(1)));
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            TryPush(usize),
            StartPush(usize),
            PollAll,
            Cancel(usize),
            Pop,
            Close,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => (0usize..24).prop_map(Op::TryPush),
                4 => (0usize..24).prop_map(Op::StartPush),
                4 => Just(Op::PollAll),
                1 => (0usize..1000).prop_map(Op::Cancel),
                5 => Just(Op::Pop),
                1 => Just(Op::Close),
            ]
        }

        fn policy() -> impl Strategy<Value = WhenFull> {
            prop_oneof![
                Just(WhenFull::RejectNew),
                Just(WhenFull::DropOldest),
                Just(block(3600)),
            ]
        }

        type PushFuture<'a> =
            Pin<Box<dyn Future<Output = Result<Pushed<u64>, Rejected<u64>>> + 'a>>;

        proptest! {
            /// Against a model queue: the bounds always hold, items come out in
            /// the order they went in, evictions are the oldest items, and
            /// every item is inside, popped, rejected, dropped or cancelled —
            /// exactly once, as the stats also say.
            #[test]
            fn bounded_fifo_and_nothing_lost_unreported(
                max_items in 0usize..6,
                max_bytes in 0usize..40,
                when_full in policy(),
                ops in prop::collection::vec(op(), 1..120),
            ) {
                let runtime = paused_runtime();
                let _enter = runtime.enter();
                let limits = limits(max_items, max_bytes);
                let buffer = BoundedBuffer::new(limits, when_full);
                let mut model: VecDeque<(u64, usize)> = VecDeque::new();
                let mut pending: Vec<(u64, usize, PushFuture<'_>)> = Vec::new();
                let (mut next_id, mut popped, mut rejected, mut dropped, mut cancelled) =
                    (0u64, 0u64, 0u64, 0u64, 0u64);

                let mut accept = |model: &mut VecDeque<(u64, usize)>,
                                  id: u64,
                                  bytes: usize,
                                  result: Result<Pushed<u64>, Rejected<u64>>|
                 -> Result<(), TestCaseError> {
                    match result {
                        Ok(Pushed { dropped: evicted, .. }) => {
                            for item in evicted {
                                prop_assert_eq!(model.pop_front().map(|(id, _)| id), Some(item));
                                dropped += 1;
                            }
                            model.push_back((id, bytes));
                        }
                        Err(refused) => {
                            prop_assert_eq!(refused.item, id);
                            rejected += 1;
                        }
                    }
                    Ok(())
                };

                for op in ops {
                    match op {
                        Op::TryPush(bytes) => {
                            let result = buffer.try_push(next_id, bytes);
                            accept(&mut model, next_id, bytes, result)?;
                            next_id += 1;
                        }
                        Op::StartPush(bytes) => {
                            let mut future: PushFuture<'_> = Box::pin(buffer.push(next_id, bytes));
                            match poll_once(future.as_mut()) {
                                Poll::Ready(result) => accept(&mut model, next_id, bytes, result)?,
                                Poll::Pending => pending.push((next_id, bytes, future)),
                            }
                            next_id += 1;
                        }
                        Op::PollAll => {
                            let mut still = Vec::new();
                            for (id, bytes, mut future) in pending.drain(..) {
                                match poll_once(future.as_mut()) {
                                    Poll::Ready(result) => accept(&mut model, id, bytes, result)?,
                                    Poll::Pending => still.push((id, bytes, future)),
                                }
                            }
                            pending = still;
                        }
                        Op::Cancel(index) => {
                            if !pending.is_empty() {
                                drop(pending.remove(index % pending.len()));
                                cancelled += 1;
                            }
                        }
                        Op::Pop => {
                            let got = buffer.try_pop();
                            prop_assert_eq!(got, model.pop_front().map(|(id, _)| id));
                            popped += u64::from(got.is_some());
                        }
                        Op::Close => buffer.close(),
                    }
                    prop_assert!(buffer.len() <= max_items);
                    prop_assert!(buffer.bytes() <= max_bytes);
                    prop_assert_eq!(buffer.len(), model.len());
                    prop_assert_eq!(buffer.bytes(), model.iter().map(|(_, b)| b).sum::<usize>());
                }
                cancelled += pending.len() as u64;
                drop(pending);
                let inside = model.len() as u64;
                for (id, _) in model.drain(..) {
                    prop_assert_eq!(buffer.try_pop(), Some(id));
                }
                prop_assert_eq!(buffer.try_pop(), None);
                let stats = buffer.stats();
                prop_assert_eq!(stats.popped, popped + inside);
                prop_assert_eq!(stats.rejected, rejected);
                prop_assert_eq!(stats.dropped, dropped);
                prop_assert_eq!(stats.cancelled, cancelled);
                prop_assert_eq!(stats.pushed, stats.popped + stats.dropped);
                prop_assert_eq!(stats.pushed + stats.rejected + stats.cancelled, next_id);
            }
        }
    }
}
