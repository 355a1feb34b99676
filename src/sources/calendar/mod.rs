//! The `calendar` event source (Argo's `CalendarEventSource`): an event on
//! every tick of a cron `schedule` or a fixed `interval`.
//!
//! A tick that the bus cannot take is not queued: it waits for bus space
//! until the next tick is due and is then counted as missed
//! (`source_events_total{outcome="missed"}`, with a rate-limited warning).
//! So at most one tick is ever in hand, however long the bus stays full.
//! Ticks overtaken while the process was not running them (a stalled
//! machine) are counted missed too, except the latest, which fires late —
//! unlike Argo, there is no unbounded catch-up.
//!
//! Time comes from a [`TokioClock`] anchored to a wall-clock start, so
//! tests run the real loop on paused tokio time and assert exact counts.
//!
//! Event data: `{"eventTime": RFC 3339 in the calendar's timezone,
//! "metadata": {...}}` (Argo's `CalendarEventData` fields).

mod schedule;

pub use schedule::{Rule, Schedule};

use super::{publish_waiting, EventName, LogThrottle, Running, SourceContext, Waited};
use crate::event::Event;
use crate::telemetry::SourceOutcome;
use chrono::{DateTime, Utc};
use spillway_bus::PublishError;
use spillway_flowctl::{Clock, TokioClock};
use std::collections::BTreeMap;
use std::time::Duration;

/// At most one "missed" warning line per this interval.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The runnable form of one `calendar` event.
#[derive(Debug, Clone)]
pub struct CalendarSource {
    pub name: EventName,
    pub schedule: Schedule,
    pub metadata: BTreeMap<String, String>,
}

impl CalendarSource {
    /// Ticks from now on, on the process's tokio time.
    pub fn start(self, ctx: SourceContext) -> Running {
        tracing::info!("calendar source {} started", self.name);
        tokio::spawn(self.run(ctx, Utc::now(), TokioClock::new()))
    }

    /// The tick loop: wall time is `start` plus `clock`'s elapsed time.
    pub async fn run(self, ctx: SourceContext, start: DateTime<Utc>, clock: TokioClock) {
        let missed_warn = LogThrottle::new(WARN_EVERY);
        let count = |outcome| {
            ctx.metrics
                .source_event(&self.name.source, &self.name.event, outcome)
        };
        let at = |time: DateTime<Utc>| {
            clock.instant_at((time - start).to_std().unwrap_or(Duration::ZERO))
        };
        let now = || start + chrono::Duration::from_std(clock.now()).unwrap_or_default();
        let mut due = self.schedule.next_after(start, start);
        while let Some(tick) = due {
            tokio::select! {
                _ = tokio::time::sleep_until(at(tick)) => {}
                _ = ctx.stop.cancelled() => return,
            }
            let mut tick = tick;
            let mut next = self.schedule.next_after(start, tick);
            // Ticks overtaken while this loop was not running are missed;
            // only the latest due one fires (late).
            while let Some(following) = next.filter(|t| *t <= now()) {
                count(SourceOutcome::Missed);
                tick = following;
                next = self.schedule.next_after(start, tick);
            }
            let data = serde_json::json!({
                "eventTime": tick.with_timezone(&self.schedule.timezone).to_rfc3339(),
                "metadata": self.metadata,
            });
            let event = Event::new(
                &self.name.source,
                "calendar",
                &self.name.event,
                bytes::Bytes::from(data.to_string()),
            );
            let waited = publish_waiting(
                &*ctx.bus,
                &ctx.metrics,
                &self.name.source,
                event.to_message(),
                next.map(at),
                Some(&ctx.stop),
            )
            .await;
            match waited {
                Waited::Accepted(_) => count(SourceOutcome::Accepted),
                Waited::Refused(PublishError::TooLarge { size, max, .. }) => {
                    count(SourceOutcome::TooLarge);
                    tracing::warn!(
                        "calendar source {}: tick event of {size} bytes exceeds the bus max_msg_size {max}",
                        self.name
                    );
                }
                Waited::Refused(_) | Waited::Stopped(_) => {
                    count(SourceOutcome::Missed);
                    if let Some(n) = missed_warn.occurred() {
                        tracing::warn!(
                            "calendar source {}: {n} tick(s) missed: the bus did not accept them before the next tick was due",
                            self.name
                        );
                    }
                }
            }
            due = next;
        }
        tracing::info!(
            "calendar source {}: the schedule has no further ticks",
            self.name
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode::Spanned;
    use crate::config::eventsource::calendar::CalendarEvent;
    use crate::config::values::GoDuration;
    use crate::config::yaml::Pos;
    use crate::telemetry::Metrics;
    use spillway_bus::memory::MemoryBus;
    use spillway_bus::{Bus, ConsumerConfig, Limits};
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    fn source(schedule: Option<&str>, interval: Option<Duration>) -> CalendarSource {
        let config = CalendarEvent {
            schedule: schedule.map(|s| Spanned::new(s.to_string(), Pos::default())),
            interval: interval.map(|d| Spanned::new(GoDuration(d), Pos::default())),
            timezone: None,
            exclusion_dates: None,
            metadata: None,
        };
        CalendarSource {
            name: EventName {
                source: "cal".into(),
                event: "tick".into(),
            },
            schedule: Schedule::from_config(&config, Pos::default()).expect("valid"),
            metadata: BTreeMap::new(),
        }
    }

    fn outcome(metrics: &Metrics, outcome: &str) -> u64 {
        let series = format!(
            "spillway_source_events_total{{source=\"cal\",event=\"tick\",outcome=\"{outcome}\"}} "
        );
        metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn run_for(
        source: CalendarSource,
        bus: Arc<dyn Bus>,
        start: DateTime<Utc>,
        how_long: Duration,
    ) -> Arc<Metrics> {
        let metrics = Arc::new(Metrics::new());
        let ctx = SourceContext {
            bus,
            metrics: Arc::clone(&metrics),
            stop: CancellationToken::new(),
        };
        let stop = ctx.stop.clone();
        let task = tokio::spawn(source.run(ctx, start, TokioClock::new()));
        tokio::time::sleep(how_long).await;
        stop.cancel();
        task.await.expect("calendar task");
        metrics
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_bus_misses_ticks_instead_of_queueing_them() {
        let bus = MemoryBus::new(Limits {
            max_msgs: Some(3),
            ..Limits::default()
        });
        // A consumer that never acks: the bus stays full after 3 events.
        let _consumer = bus
            .consumer(ConsumerConfig::new("slow"))
            .await
            .expect("consumer");
        let start = Utc::now();
        let metrics = run_for(
            source(None, Some(Duration::from_secs(10))),
            bus.clone(),
            start,
            Duration::from_secs(105),
        )
        .await;
        // Ticks at 10 s … 100 s: 3 accepted, 6 missed at the next tick,
        // and the one at 100 s still waiting when stopped at 105 s.
        assert_eq!(outcome(&metrics, "accepted"), 3);
        assert_eq!(outcome(&metrics, "missed"), 7);
        assert_eq!(bus.stats().messages, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn cron_ticks_exactly_on_schedule() {
        let bus = MemoryBus::new(Limits::default());
        let consumer = bus
            .consumer(ConsumerConfig::new("c"))
            .await
            .expect("consumer");
        let start = DateTime::parse_from_rfc3339("2024-01-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let metrics = run_for(
            source(Some("*/15 * * * *"), None),
            bus.clone(),
            start,
            Duration::from_secs(61 * 60),
        )
        .await;
        assert_eq!(outcome(&metrics, "accepted"), 4);
        assert_eq!(outcome(&metrics, "missed"), 0);
        let events = consumer
            .fetch(10, Duration::from_millis(1))
            .await
            .expect("fetch");
        let times: Vec<String> = events
            .iter()
            .map(|m| {
                let data: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
                data["eventTime"].as_str().unwrap_or_default().to_string()
            })
            .collect();
        assert_eq!(
            times,
            [
                "2024-01-01T00:15:00+00:00",
                "2024-01-01T00:30:00+00:00",
                "2024-01-01T00:45:00+00:00",
                "2024-01-01T01:00:00+00:00"
            ]
        );
    }
}
