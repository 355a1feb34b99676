//! Publishing from a source that can wait: the event is offered to the bus
//! until it is accepted, a deadline passes, or the source is stopped.
//!
//! Guarantees: the message is never dropped here; a refusal hands it back
//! inside the [`PublishError`]. Waiting uses [`Bus::wait_for_space`], never
//! a busy loop, and no single wait is longer than the bus's `retry_after`
//! estimate, so a freed slot is noticed promptly. Every call records in
//! `spillway_producer_block_seconds{source}` the time it was held waiting
//! for space: 0 when there was room at once (the durable append itself is
//! not blocking), so the histogram's quantiles and mean are over all
//! publishes, as Kafka's producer block time is.

use crate::telemetry::Metrics;
use spillway_bus::{Bus, Message, PublishError};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Longest single wait between two offers of the same message.
const MAX_WAIT_STEP: Duration = Duration::from_secs(1);

/// How a [`publish_waiting`] call ended.
#[derive(Debug)]
pub enum Waited {
    /// The bus holds the event under this sequence number.
    Accepted(u64),
    /// Refused; the last error (with the message) is inside.
    Refused(PublishError),
    /// `stop` was cancelled while the bus was full; the message is handed back.
    Stopped(Message),
}

/// Offers `message` to `bus` until accepted, or until `deadline` (never when
/// `None`) passes with the bus still full, or `stop` (if any) is cancelled.
/// Refusals other than [`PublishError::Full`] return at once.
pub async fn publish_waiting(
    bus: &dyn Bus,
    metrics: &Metrics,
    source: &str,
    mut message: Message,
    deadline: Option<Instant>,
    stop: Option<&CancellationToken>,
) -> Waited {
    let mut blocked_since: Option<Instant> = None;
    let outcome = loop {
        match bus.publish(message).await {
            Ok(seq) => break Waited::Accepted(seq),
            Err(PublishError::Full {
                message: returned,
                limit,
                retry_after,
            }) => {
                let now = Instant::now();
                blocked_since.get_or_insert(now);
                if deadline.is_some_and(|d| now >= d) {
                    break Waited::Refused(PublishError::Full {
                        message: returned,
                        limit,
                        retry_after,
                    });
                }
                if stop.is_some_and(CancellationToken::is_cancelled) {
                    break Waited::Stopped(returned);
                }
                message = returned;
                let mut step = retry_after.clamp(Duration::from_millis(1), MAX_WAIT_STEP);
                if let Some(deadline) = deadline {
                    step = step.min(deadline - now);
                }
                match stop {
                    Some(stop) => tokio::select! {
                        _ = bus.wait_for_space(step) => {}
                        _ = stop.cancelled() => {}
                    },
                    None => bus.wait_for_space(step).await,
                }
            }
            Err(other) => break Waited::Refused(other),
        }
    };
    let blocked = blocked_since.map_or(Duration::ZERO, |since| since.elapsed());
    metrics.producer_blocked(source, blocked);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use spillway_bus::memory::MemoryBus;
    use spillway_bus::{ConsumerConfig, Limits};

    fn message(n: u32) -> Message {
        Message {
            subject: "s.e".into(),
            headers: Vec::new(),
            payload: bytes::Bytes::from(n.to_string()),
        }
    }

    fn one_slot() -> Limits {
        Limits {
            max_msgs: Some(1),
            ..Limits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_space_then_is_accepted() {
        let bus = MemoryBus::new(one_slot());
        let consumer = bus
            .consumer(ConsumerConfig::new("c"))
            .await
            .expect("consumer");
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        assert!(matches!(
            publish_waiting(&*bus, &metrics, "s", message(1), None, Some(&stop)).await,
            Waited::Accepted(1)
        ));
        let acker = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let batch = consumer
                .fetch(1, Duration::from_secs(1))
                .await
                .expect("fetch");
            consumer.ack(batch[0].seq).await.expect("ack");
        });
        let started = Instant::now();
        let second = publish_waiting(&*bus, &metrics, "s", message(2), None, Some(&stop)).await;
        assert!(matches!(second, Waited::Accepted(2)), "{second:?}");
        assert!(started.elapsed() >= Duration::from_secs(3));
        // The first publish found room: recorded as 0 s; the second waited.
        let block = metrics.producer_block_totals("s");
        assert_eq!(block.count, 2);
        assert!(block.sum >= 3.0, "{block:?}");
        acker.await.expect("acker");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_hands_the_message_back() {
        let bus = MemoryBus::new(one_slot());
        let _consumer = bus
            .consumer(ConsumerConfig::new("c"))
            .await
            .expect("consumer");
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        assert!(matches!(
            publish_waiting(&*bus, &metrics, "s", message(1), None, Some(&stop)).await,
            Waited::Accepted(1)
        ));
        let deadline = Instant::now() + Duration::from_secs(2);
        match publish_waiting(
            &*bus,
            &metrics,
            "s",
            message(2),
            Some(deadline),
            Some(&stop),
        )
        .await
        {
            Waited::Refused(PublishError::Full { message, .. }) => {
                assert_eq!(message.payload, "2");
                assert!(Instant::now() >= deadline);
            }
            other => panic!("expected Full, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stop_hands_the_message_back() {
        let bus = MemoryBus::new(one_slot());
        let _consumer = bus
            .consumer(ConsumerConfig::new("c"))
            .await
            .expect("consumer");
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        assert!(matches!(
            publish_waiting(&*bus, &metrics, "s", message(1), None, Some(&stop)).await,
            Waited::Accepted(1)
        ));
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            stopper.cancel();
        });
        match publish_waiting(&*bus, &metrics, "s", message(2), None, Some(&stop)).await {
            Waited::Stopped(message) => assert_eq!(message.payload, "2"),
            other => panic!("expected Stopped, got {other:?}"),
        }
    }
}
