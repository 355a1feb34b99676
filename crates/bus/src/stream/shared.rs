//! [`Shared<B>`]: a [`Stream`] behind its lock, plus the waits both embedded
//! backends need (a fetch waiting for messages or timers, a producer
//! waiting for space). The lock is never held across an `.await`.

use super::{later, ConsumerDeleted, ConsumerId, Stream};
use crate::Limits;
use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What a bus and all its consumer handles share.
pub(crate) struct Shared<B> {
    pub limits: Limits,
    /// Notified whenever a held message is released or removed, and on close.
    space: Arc<Notify>,
    /// The whole stream and every consumer.
    state: Mutex<Stream<B>>,
}

impl<B> Shared<B> {
    /// An empty stream enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        let space = Arc::new(Notify::new());
        Shared {
            limits,
            state: Mutex::new(Stream::new(limits, Arc::clone(&space), Instant::now())),
            space,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Stream<B>> {
        self.state.lock()
    }

    /// `Consumer::ack` / `term` of consumer `id`, now.
    pub(crate) fn settle(&self, id: ConsumerId, seq: u64) {
        self.state.lock().settle(id, seq, Instant::now());
    }

    /// `Consumer::nak` of consumer `id`, now.
    pub(crate) fn nak(&self, id: ConsumerId, seq: u64, delay: Duration) {
        self.state.lock().nak(id, seq, delay, Instant::now());
    }

    /// `Consumer::in_progress` of consumer `id`, now.
    pub(crate) fn in_progress(&self, id: ConsumerId, seq: u64) {
        self.state.lock().in_progress(id, seq, Instant::now());
    }

    /// `Consumer::stats` of consumer `id`, with timers applied first.
    pub(crate) fn consumer_stats(&self, id: ConsumerId) -> crate::ConsumerStats {
        let mut st = self.state.lock();
        let now = Instant::now();
        st.maintain(now);
        st.consumer_stats(id, now)
    }

    /// Waits up to `max_wait` for `take` to hand out something for consumer
    /// `id` (woken by `wake` and by the consumer's redelivery timers).
    /// `take` runs under the lock after `maintain`; what it returns counts
    /// as delivered, so it must not be lost: this returns right after a
    /// non-empty `take`, with no `.await` in between (cancel-safe). Returns
    /// empty on timeout and when the stream is closed, [`ConsumerDeleted`]
    /// once the consumer is gone (a waiting fetch is woken by the delete).
    pub(crate) async fn fetch<T>(
        &self,
        id: ConsumerId,
        wake: &Notify,
        max_wait: Duration,
        mut take: impl FnMut(&mut Stream<B>, Instant) -> Vec<T>,
    ) -> Result<Vec<T>, ConsumerDeleted> {
        let deadline = later(Instant::now(), max_wait);
        loop {
            let notified = wake.notified();
            tokio::pin!(notified);
            // Register before looking at the state (no lost wake-up).
            notified.as_mut().enable();
            let now = Instant::now();
            let next_timer = {
                let mut st = self.state.lock();
                if !st.consumers.contains_key(&id) {
                    return Err(ConsumerDeleted);
                }
                if st.closed {
                    return Ok(Vec::new());
                }
                st.maintain(now);
                // Marked delivered only here, synchronously, right before
                // returning: dropping the future never loses a message.
                let batch = take(&mut st, now);
                if !batch.is_empty() {
                    return Ok(batch);
                }
                st.consumers.get(&id).and_then(|c| c.next_timer())
            };
            if now >= deadline {
                return Ok(Vec::new());
            }
            let wake_at = next_timer.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// [`Bus::wait_for_space`](crate::Bus::wait_for_space): resolves on a
    /// release, on close, when lazy expiry or a give-up makes room, or at
    /// `timeout`.
    pub(crate) async fn wait_for_space(&self, timeout: Duration) {
        let deadline = later(Instant::now(), timeout);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Register before looking at the state, so a release between the
            // check and the await is not missed.
            notified.as_mut().enable();
            let now = Instant::now();
            let next = {
                let mut st = self.state.lock();
                if st.closed {
                    return;
                }
                let held = st.msgs.len();
                st.maintain(now);
                if st.msgs.len() < held {
                    // Expiry or a max_deliver give-up just made room.
                    return;
                }
                st.next_event()
            };
            if now >= deadline {
                return;
            }
            let wake_at = next.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                _ = &mut notified => return,
                _ = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }
}
