//! Putting stored events back on the bus, gradually.
//!
//! Two halves, so that only the process that owns the data dir touches its
//! store and its bus:
//! - [`Replayer`] (inside `spillway run`, behind
//!   `POST /api/v1/backlog/{name}/replay`) replays **one** record: reads it,
//!   publishes it to the bus addressed to the trigger that stored it, and
//!   deletes it only after the bus accepted it.
//! - [`replay_all`] (inside `spillway backlog replay`) walks the records
//!   listed at its start, oldest first, paced by a [`GradualDrain`] (seed
//!   `GradualDrain`: starts slow, ×1.1 per interval, up to the max rate).
//!
//! Guarantees:
//! - a record is removed only after the bus accepted its event, so an
//!   interrupted replay loses nothing; resuming replays what is left. The
//!   only possible duplicate is the one record whose publish was accepted
//!   when the `spillway run` process itself died before deleting it (the
//!   server finishes a replay even if the client goes away);
//! - a full bus is waited out (its `retry_after`) and restarts the ramp from
//!   the initial rate: the bus just said the pipeline is not keeping up;
//! - records that cannot be replayed (damaged, addressed to a trigger the
//!   running pipeline does not have, too large for the bus) are skipped,
//!   reported, and left in the store;
//! - records stored during the replay are not part of it (no replay loop
//!   when the downstream is still down).

use super::record::Record;
use super::store::{BacklogStore, StoreError};
use super::REPLAY_TO_HEADER;
use async_trait::async_trait;
use spillway_bus::{Bus, PublishError};
use spillway_flowctl::{Clock, GradualDrain};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the running pipeline's trigger named in a record does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// Runs the event (http, log, …): replayable.
    Runs,
    /// A store-for-later trigger: replaying to it would store it again.
    StoresForLater,
}

/// Why one record was not replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The bus is full; try again after `retry_after`.
    #[error("bus full; retry after {retry_after:?}")]
    Full { retry_after: Duration },
    /// Already replayed or removed (by a concurrent replay, say).
    #[error("{0}")]
    Gone(String),
    /// Cannot be replayed as it is; left in the store.
    #[error("{0}")]
    Skipped(String),
    /// The pipeline cannot publish now (stopping, bus failing, unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// Replays one record at a time into the running pipeline.
#[async_trait]
pub trait ReplaySource: Send + Sync {
    /// Names of the stored records, oldest first.
    async fn names(&self) -> Result<Vec<String>, Refused>;
    /// Publishes record `name` and removes it; the bus sequence number.
    async fn replay(&self, name: &str) -> Result<u64, Refused>;
}

/// The server half: one data dir's store and the pipeline's bus.
pub struct Replayer {
    store: Arc<BacklogStore>,
    bus: Arc<dyn Bus>,
    /// `sensor/trigger` → what that trigger is, for the running config.
    targets: HashMap<String, TargetKind>,
}

impl Replayer {
    pub fn new(
        store: Arc<BacklogStore>,
        bus: Arc<dyn Bus>,
        targets: HashMap<String, TargetKind>,
    ) -> Self {
        Replayer {
            store,
            bus,
            targets,
        }
    }

    pub fn store(&self) -> &Arc<BacklogStore> {
        &self.store
    }

    fn check_target(&self, name: &str, record: &Record) -> Result<String, Refused> {
        let target = super::target(&record.sensor, &record.trigger);
        match self.targets.get(&target) {
            Some(TargetKind::Runs) => Ok(target),
            Some(TargetKind::StoresForLater) => Err(Refused::Skipped(format!(
                "{name}: trigger {:?} of sensor {:?} stores events for later itself, so replaying would only store it again; \
                 give that trigger the action that should process the events (same name), restart, and replay",
                record.trigger, record.sensor
            ))),
            None => Err(Refused::Skipped(format!(
                "{name}: the running pipeline has no trigger {:?} in sensor {:?} to replay it to",
                record.trigger, record.sensor
            ))),
        }
    }
}

#[async_trait]
impl ReplaySource for Replayer {
    async fn names(&self) -> Result<Vec<String>, Refused> {
        let store = Arc::clone(&self.store);
        let entries = tokio::task::spawn_blocking(move || store.entries())
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        Ok(entries.into_iter().map(|e| e.name).collect())
    }

    async fn replay(&self, name: &str) -> Result<u64, Refused> {
        let store = Arc::clone(&self.store);
        let owned = name.to_string();
        let record = tokio::task::spawn_blocking(move || store.read(&owned))
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?
            .map_err(|e| match e {
                StoreError::NotFound(_) => Refused::Gone(e.to_string()),
                StoreError::Corrupt { .. } | StoreError::InvalidName(_) => {
                    Refused::Skipped(e.to_string())
                }
                other => Refused::Unavailable(other.to_string()),
            })?;
        let target = self.check_target(name, &record)?;
        let mut message = record.event.to_message();
        message.headers.push((REPLAY_TO_HEADER.to_string(), target));
        let seq = match self.bus.publish(message).await {
            Ok(seq) => seq,
            Err(PublishError::Full { retry_after, .. }) => {
                return Err(Refused::Full { retry_after })
            }
            Err(PublishError::TooLarge { size, max, .. }) => {
                return Err(Refused::Skipped(format!(
                    "{name}: the event is {size} bytes, over the bus max_msg_size {max}"
                )))
            }
            Err(err @ (PublishError::Closed { .. } | PublishError::Unavailable { .. })) => {
                return Err(Refused::Unavailable(err.to_string()))
            }
        };
        let store = Arc::clone(&self.store);
        let owned = name.to_string();
        let removed = tokio::task::spawn_blocking(move || store.remove(&owned)).await;
        match removed {
            Ok(Ok(())) | Ok(Err(StoreError::NotFound(_))) => {}
            Ok(Err(err)) => {
                tracing::error!("backlog record {name} was replayed (bus seq {seq}) but could not be removed, so a later replay sends it again: {err}")
            }
            Err(err) => {
                tracing::error!("backlog record {name} was replayed (bus seq {seq}) but its removal did not run: {err}")
            }
        }
        Ok(seq)
    }
}

/// Where a replay run stands (also its final report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records listed at the start.
    pub total: usize,
    /// Published and removed.
    pub replayed: usize,
    /// Gone before their turn (replayed or removed by someone else).
    pub gone: usize,
    /// Left in the store, with the reason.
    pub skipped: Vec<String>,
    /// Times the bus was full (each restarts the ramp).
    pub bus_full: usize,
}

impl ReplayReport {
    /// Records handled so far, whatever the outcome.
    pub fn done(&self) -> usize {
        self.replayed + self.gone + self.skipped.len()
    }
}

/// Why a replay run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{reason} (after {} of {} records; run it again to resume)", report.done(), report.total)]
    Unavailable {
        reason: String,
        report: ReplayReport,
    },
    #[error("interrupted after {} of {} records; run it again to resume", report.done(), report.total)]
    Interrupted { report: ReplayReport },
}

/// Replays every record listed now, one at a time, at the pace of `drain`;
/// `progress` sees the report after each record. Stops at `stop`.
pub async fn replay_all<C: Clock>(
    source: &dyn ReplaySource,
    drain: &GradualDrain<C>,
    progress: &mut (dyn FnMut(&ReplayReport) + Send),
    stop: &CancellationToken,
) -> Result<ReplayReport, ReplayError> {
    let names = source
        .names()
        .await
        .map_err(|refused| ReplayError::Unavailable {
            reason: refused.to_string(),
            report: ReplayReport::default(),
        })?;
    let mut report = ReplayReport {
        total: names.len(),
        ..ReplayReport::default()
    };
    progress(&report);
    for name in names {
        loop {
            tokio::select! {
                _ = drain.until_ready() => {}
                _ = stop.cancelled() => return Err(ReplayError::Interrupted { report }),
            }
            match source.replay(&name).await {
                Ok(_) => report.replayed += 1,
                Err(Refused::Gone(_)) => report.gone += 1,
                Err(Refused::Skipped(why)) => report.skipped.push(why),
                Err(Refused::Full { retry_after }) => {
                    report.bus_full += 1;
                    drain.reset();
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => continue,
                        _ = stop.cancelled() => return Err(ReplayError::Interrupted { report }),
                    }
                }
                Err(Refused::Unavailable(reason)) => {
                    return Err(ReplayError::Unavailable { reason, report })
                }
            }
            break;
        }
        progress(&report);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backlog::BacklogLimits;
    use crate::event::Event;
    use parking_lot::Mutex;
    use spillway_bus::memory::MemoryBus;
    use spillway_bus::{ConsumerConfig, Limits};
    use spillway_flowctl::{SlowStart, TokioClock};
    use std::collections::HashSet;
    use tokio::time::Instant;

    /// A store holding `n` events for `orders/api`, a bus, and the replayer.
    fn setup(n: usize, bus_limits: Limits) -> (tempfile::TempDir, Arc<MemoryBus>, Replayer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(BacklogStore::open(dir.path(), BacklogLimits::default()).unwrap());
        for i in 0..n {
            let record = Record {
                sensor: "orders".into(),
                trigger: "api".into(),
                reason: "downstream down".into(),
                stored_at: std::time::SystemTime::now(),
                event: Event::new(
                    "shop",
                    "webhook",
                    "orders",
                    bytes::Bytes::from(format!("{{\"n\":{i}}}")),
                ),
            };
            store.put(&record).unwrap();
        }
        let bus = MemoryBus::new(bus_limits);
        let targets = HashMap::from([
            ("orders/api".to_string(), TargetKind::Runs),
            ("orders/keep".to_string(), TargetKind::StoresForLater),
        ]);
        let replayer = Replayer::new(store, Arc::clone(&bus) as Arc<dyn Bus>, targets);
        (dir, bus, replayer)
    }

    /// Records when each replay was asked for; cancels `stop` after `stop_after`.
    struct Timed<'a> {
        inner: &'a Replayer,
        start: Instant,
        calls: Mutex<Vec<Duration>>,
        stop_after: Option<(usize, CancellationToken)>,
    }

    #[async_trait]
    impl ReplaySource for Timed<'_> {
        async fn names(&self) -> Result<Vec<String>, Refused> {
            self.inner.names().await
        }
        async fn replay(&self, name: &str) -> Result<u64, Refused> {
            let calls = {
                let mut calls = self.calls.lock();
                calls.push(self.start.elapsed());
                calls.len()
            };
            let result = self.inner.replay(name).await;
            if let Some((after, stop)) = &self.stop_after {
                if calls == *after {
                    stop.cancel();
                }
            }
            result
        }
    }

    fn timed(inner: &Replayer, stop_after: Option<(usize, CancellationToken)>) -> Timed<'_> {
        Timed {
            inner,
            start: Instant::now(),
            calls: Mutex::new(Vec::new()),
            stop_after,
        }
    }

    /// Ids of every event on the bus, drained through one consumer.
    async fn ids_on_bus(bus: &Arc<MemoryBus>) -> Vec<String> {
        let consumer = bus.consumer(ConsumerConfig::new("check")).await.unwrap();
        let mut ids = Vec::new();
        loop {
            let batch = consumer.fetch(1000, Duration::ZERO).await.unwrap();
            if batch.is_empty() {
                return ids;
            }
            for message in batch {
                assert_eq!(message.header(REPLAY_TO_HEADER), Some("orders/api"));
                ids.push(Event::from_received(&message).unwrap().context.id);
                consumer.ack(message.seq).await.unwrap();
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn replays_all_1000_on_the_gradual_drain_ramp() {
        let (_dir, bus, replayer) = setup(1000, Limits::default());
        let drain = GradualDrain::with_clock(SlowStart::default(), TokioClock::new()).unwrap();
        let source = timed(&replayer, None);
        let mut reports = 0;
        let report = replay_all(
            &source,
            &drain,
            &mut |_| reports += 1,
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(report.replayed, 1000);
        assert_eq!(reports, 1001);
        assert_eq!(replayer.store().entries().unwrap().len(), 0);
        assert_eq!(replayer.store().events(), 0);
        // Seed GradualDrain: 10/s, ×1.1 per second, int(rate) per second.
        let calls = source.calls.lock().clone();
        let mut per_second = vec![0usize; calls.last().unwrap().as_secs() as usize + 1];
        for at in &calls {
            per_second[at.as_secs() as usize] += 1;
        }
        assert_eq!(per_second[..10], [10, 11, 12, 13, 14, 16, 17, 19, 21, 23]);
        let last = per_second.len() - 1;
        for (k, &count) in per_second[..last].iter().enumerate() {
            assert_eq!(
                count,
                SlowStart::default().rate_at(k as u64).floor() as usize,
                "second {k}"
            );
        }
        assert_eq!(per_second.iter().sum::<usize>(), 1000);
        let ids = ids_on_bus(&bus).await;
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_replay_resumes_without_loss_or_duplicates() {
        let (_dir, bus, replayer) = setup(1000, Limits::default());
        let ramp = SlowStart {
            initial_rate: 100.0,
            ..SlowStart::default()
        };
        let stop = CancellationToken::new();
        let first = timed(&replayer, Some((400, stop.clone())));
        let drain = GradualDrain::new(ramp).unwrap();
        let interrupted = replay_all(&first, &drain, &mut |_| {}, &stop).await;
        let Err(ReplayError::Interrupted { report }) = interrupted else {
            panic!("expected an interruption, got {interrupted:?}");
        };
        // The stop came while the 400th was in flight: it still completed
        // (accepted and removed), and nothing after it was started.
        assert_eq!(report.replayed, 400);
        assert_eq!(replayer.store().entries().unwrap().len(), 600);
        assert_eq!(bus.stats().messages, 400);

        let drain = GradualDrain::new(ramp).unwrap();
        let second = timed(&replayer, None);
        let report = replay_all(&second, &drain, &mut |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!((report.total, report.replayed), (600, 600));
        let ids = ids_on_bus(&bus).await;
        assert_eq!(ids.len(), 1000);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bus_is_waited_out_and_restarts_the_ramp() {
        let limits = Limits {
            max_msgs: Some(5),
            ..Limits::default()
        };
        let (_dir, bus, replayer) = setup(8, limits);
        let consumer = bus.consumer(ConsumerConfig::new("slow")).await.unwrap();
        // Frees the bus 10 s in.
        let freeing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            for message in consumer.fetch(5, Duration::ZERO).await.unwrap() {
                consumer.ack(message.seq).await.unwrap();
            }
        });
        let drain = GradualDrain::new(SlowStart::default()).unwrap();
        let source = timed(&replayer, None);
        let report = replay_all(&source, &drain, &mut |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        freeing.await.unwrap();
        assert_eq!(report.replayed, 8);
        assert!(report.bus_full >= 1);
        let calls = source.calls.lock().clone();
        // Five fit at 10/s; the sixth is refused until the bus has room.
        assert_eq!(calls[4], Duration::from_millis(400));
        assert!(calls.last().unwrap() >= &Duration::from_secs(10));
        assert_eq!(replayer.store().entries().unwrap().len(), 0);
    }

    #[tokio::test]
    async fn unreplayable_records_are_skipped_and_kept() {
        let (dir, _bus, replayer) = setup(0, Limits::default());
        let store = replayer.store();
        let mut record = Record {
            sensor: "orders".into(),
            trigger: "keep".into(),
            reason: String::new(),
            stored_at: std::time::SystemTime::now(),
            event: Event::new(
                "shop",
                "webhook",
                "orders",
                bytes::Bytes::from_static(b"{}"),
            ),
        };
        let stores_again = store.put(&record).unwrap();
        record.trigger = "gone".into();
        let unknown = store.put(&record).unwrap();
        std::fs::write(dir.path().join("backlog/backlog-zzzzz"), b"half a rec").unwrap();
        let drain = GradualDrain::new(SlowStart::default()).unwrap();
        let report = replay_all(&replayer, &drain, &mut |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.replayed, 0);
        assert_eq!(report.skipped.len(), 3, "{:?}", report.skipped);
        let text = report.skipped.join("\n");
        assert!(
            text.contains(&stores_again) && text.contains("store it again"),
            "{text}"
        );
        assert!(
            text.contains(&unknown) && text.contains("no trigger \"gone\""),
            "{text}"
        );
        assert!(text.contains("backlog-zzzzz"), "{text}");
        assert_eq!(store.entries().unwrap().len(), 3);
    }
}
