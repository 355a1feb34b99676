//! The statistics snapshot behind the synchronous `stats()` calls.
//!
//! A background task refreshes, every `stats_interval`, the stream state
//! (depth, bytes, last sequence, consumer count; also a drain-rate sample)
//! and, for every consumer bound in this process, the sum over its
//! JetStream consumers of `num_pending` (lag) and `num_ack_pending`, plus the
//! publish time of the first message after each one's ack floor (the oldest
//! message it has not released, approximately: a message acked out of order
//! behind the floor but still held for another consumer counts as unacked).
//! A failed refresh keeps the previous snapshot.

use super::consumer::{CachedStats, ConsumerShared};
use super::error::unavailable;
use super::Inner;
use crate::BusError;
use std::sync::{Arc, Weak};
use std::time::SystemTime;
use tokio::task::JoinHandle;

/// Starts the refresher; it ends when the bus is dropped or closed.
pub(crate) fn spawn_refresher(inner: Weak<Inner>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(interval) = inner.upgrade().map(|i| i.options.stats_interval) else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            if inner.link.is_closed() {
                return;
            }
            match refresh_all(&inner).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("bus statistics refresh works again");
                    }
                    failing = false;
                }
                Err(err) => {
                    // One line per failure streak, not one per second.
                    if !failing {
                        tracing::warn!(%err, "bus statistics refresh failed; keeping the last snapshot");
                    }
                    failing = true;
                }
            }
        }
    })
}

/// Refreshes the stream state and every consumer bound in this process.
pub(crate) async fn refresh_all(inner: &Inner) -> Result<(), BusError> {
    inner.state(std::time::Duration::ZERO).await?;
    let consumers: Vec<Arc<ConsumerShared>> = inner.consumers.lock().values().cloned().collect();
    for shared in consumers {
        refresh_consumer(inner, &shared).await?;
    }
    Ok(())
}

/// Refreshes one consumer's cached figures from the server.
pub(crate) async fn refresh_consumer(
    inner: &Inner,
    shared: &ConsumerShared,
) -> Result<(), BusError> {
    let timeout = inner.options.request_timeout;
    let mut stats = CachedStats::default();
    for part in &shared.parts {
        let info = tokio::time::timeout(timeout, inner.stream.consumer_info(&part.durable))
            .await
            .map_err(|_| BusError::Unavailable("timed out reading consumer info".to_string()))?
            .map_err(|err| unavailable(format!("cannot read consumer {:?}", part.durable), err))?;
        stats.pending += info.num_pending;
        stats.ack_pending += info.num_ack_pending as u64;
        if info.num_pending + info.num_ack_pending as u64 == 0 {
            continue;
        }
        let filter = if part.filter.is_empty() {
            inner.space.to_nats(">")
        } else {
            part.filter.clone()
        };
        let first = inner
            .stream
            .raw_message_builder()
            .sequence(info.ack_floor.stream_sequence + 1)
            .next_by_subject(filter)
            .send();
        match tokio::time::timeout(timeout, first).await {
            Ok(Ok(msg)) => {
                let at = SystemTime::from(msg.time);
                stats.oldest = Some(stats.oldest.map_or(at, |o| o.min(at)));
            }
            Ok(Err(err)) => {
                tracing::debug!(%err, consumer = %part.durable, "no oldest unacked message found")
            }
            Err(_) => {
                tracing::debug!(consumer = %part.durable, "timed out looking for the oldest unacked message")
            }
        }
    }
    shared.set_cached(stats);
    Ok(())
}
