//! Metric definitions: every `spillway_*` series, in one place.
//!
//! Names and labels follow DESIGN.md's metric table. Components record
//! through the typed methods here (never by building names themselves), so
//! a name exists exactly once. Gauges that mirror bus and consumer state are
//! refreshed from their sources at scrape time ([`Metrics::refresh`]), so
//! they are exact at the moment of the scrape and cost nothing per event.
//!
//! Alert rules (evaluated in-process, exported for Prometheus) are in
//! [`alerts`]; the Grafana dashboard over these names in [`dashboard`].

pub mod alerts;
pub mod dashboard;
pub mod process;

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use spillway_bus::{BusStats, ConsumerStats, Limits};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

mod throttle;
pub use throttle::LogThrottle;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub stream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub stream: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceEventLabels {
    pub source: String,
    pub event: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceShedLabels {
    pub source: String,
    pub event: String,
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerShedLabels {
    pub sensor: String,
    pub trigger: String,
    pub priority: String,
}

/// An event of a multi-dependency trigger acked without running the
/// trigger: `reason` is `max_wait`, `max_events` or `reset`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiredLabels {
    pub sensor: String,
    pub trigger: String,
    pub dependency: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilteredLabels {
    pub sensor: String,
    pub trigger: String,
    pub reason: String,
}

/// Why a trigger acked an event unrun because of its dependency's filters
/// (`sensor_events_filtered_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilteredReason {
    /// The filters kept it out.
    NoMatch,
    /// A filter or the transform could not be evaluated on it.
    Error,
}

impl FilteredReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FilteredReason::NoMatch => "no_match",
            FilteredReason::Error => "error",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SensorLabels {
    pub sensor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    pub sensor: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TemplateLabels {
    pub template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub alertname: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerOutcomeLabels {
    pub sensor: String,
    pub trigger: String,
    pub outcome: String,
}

/// What a source did with one request (`source_events_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOutcome {
    Accepted,
    RateLimited,
    Shed,
    BusFull,
    TooLarge,
    Unauthorized,
    Invalid,
    Unavailable,
    /// A calendar tick the bus did not accept before the next tick was due.
    Missed,
}

impl SourceOutcome {
    pub const ALL: [SourceOutcome; 9] = [
        SourceOutcome::Accepted,
        SourceOutcome::RateLimited,
        SourceOutcome::Shed,
        SourceOutcome::BusFull,
        SourceOutcome::TooLarge,
        SourceOutcome::Unauthorized,
        SourceOutcome::Invalid,
        SourceOutcome::Unavailable,
        SourceOutcome::Missed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceOutcome::Accepted => "accepted",
            SourceOutcome::RateLimited => "rate_limited",
            SourceOutcome::Shed => "shed",
            SourceOutcome::BusFull => "bus_full",
            SourceOutcome::TooLarge => "too_large",
            SourceOutcome::Unauthorized => "unauthorized",
            SourceOutcome::Invalid => "invalid",
            SourceOutcome::Unavailable => "unavailable",
            SourceOutcome::Missed => "missed",
        }
    }
}

/// How one trigger invocation ended (`trigger_invocations_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerOutcome {
    Success,
    Failure,
    Retry,
    /// Retries used up (or a permanent failure); the DLQ trigger took it.
    Dlq,
    /// Rejected and dropped (`flowControl.onReject: drop`).
    Dropped,
    /// Stored for later: rejected with `onReject: backlog`, or taken by a
    /// store-for-later (`k8s` ConfigMap `backlog-`) trigger.
    Backlog,
}

impl TriggerOutcome {
    pub const ALL: [TriggerOutcome; 4] = [
        TriggerOutcome::Success,
        TriggerOutcome::Failure,
        TriggerOutcome::Retry,
        TriggerOutcome::Dlq,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TriggerOutcome::Success => "success",
            TriggerOutcome::Failure => "failure",
            TriggerOutcome::Retry => "retry",
            TriggerOutcome::Dlq => "dlq",
            TriggerOutcome::Dropped => "dropped",
            TriggerOutcome::Backlog => "backlog",
        }
    }
}

/// What became of alert notifications (`alert_notifications_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationOutcome {
    /// Alertmanager accepted it.
    Sent,
    /// Given up after the retries, or refused by Alertmanager.
    Failed,
    /// Pushed out of the full notification queue.
    Dropped,
}

impl NotificationOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationOutcome::Sent => "sent",
            NotificationOutcome::Failed => "failed",
            NotificationOutcome::Dropped => "dropped",
        }
    }
}

type FloatGauge = Gauge<f64, AtomicU64>;
type FloatCounter = Counter<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type TotalsFamily<L> = Family<L, TotalsHistogram, fn() -> TotalsHistogram>;

fn latency_histogram() -> Histogram {
    // 1 ms … ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latency_totals_histogram() -> TotalsHistogram {
    TotalsHistogram {
        inner: latency_histogram(),
        totals: Arc::default(),
    }
}

/// A histogram that also keeps its running sum and count readable, for the
/// alert rules (prometheus-client only exposes them to its own tests).
#[derive(Clone, Debug)]
pub struct TotalsHistogram {
    inner: Histogram,
    totals: Arc<Mutex<alerts::Totals>>,
}

impl TotalsHistogram {
    pub fn observe(&self, value: f64) {
        self.inner.observe(value);
        let mut totals = self.totals.lock();
        totals.sum += value;
        totals.count += 1;
    }

    pub fn totals(&self) -> alerts::Totals {
        *self.totals.lock()
    }
}

impl prometheus_client::metrics::TypedMetric for TotalsHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for TotalsHistogram {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        self.inner.encode(encoder)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        self.inner.metric_type()
    }
}

fn trigger_duration_histogram() -> Histogram {
    // 0.25 ms … ~33 s: a database insert on localhost takes well under 1 ms,
    // which the 1 ms first bucket of the other latencies could not resolve.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 18))
}

fn age_histogram() -> Histogram {
    // 1 ms … ~4.6 h: events can sit in a full bus for a long time.
    Histogram::new(exponential_buckets(0.001, 2.0, 24))
}

/// Every spillway metric, registered under the `spillway_` prefix.
pub struct Metrics {
    registry: Registry,
    bus_messages: Family<StreamLabels, Gauge>,
    bus_bytes: Family<StreamLabels, Gauge>,
    bus_max_messages: Family<StreamLabels, Gauge>,
    bus_max_bytes: Family<StreamLabels, Gauge>,
    bus_published: Family<StreamLabels, Counter>,
    bus_rejected: Family<ReasonLabels, Counter>,
    bus_discarded: Family<StreamLabels, Counter>,
    bus_log_syncs: Family<StreamLabels, Counter>,
    bus_log_sync_seconds: Family<StreamLabels, FloatCounter>,
    bus_log_write_errors: Family<StreamLabels, Counter>,
    bus_log_segments: Family<StreamLabels, Gauge>,
    bus_log_disk_bytes: Family<StreamLabels, Gauge>,
    bus_log_failed: Family<StreamLabels, Gauge>,
    consumer_lag: Family<TriggerLabels, Gauge>,
    consumer_ack_pending: Family<TriggerLabels, Gauge>,
    oldest_unacked_age: Family<TriggerLabels, FloatGauge>,
    event_age: HistogramFamily<SensorLabels>,
    source_events: Family<SourceEventLabels, Counter>,
    source_events_shed: Family<SourceShedLabels, Counter>,
    sensor_events_shed: Family<TriggerShedLabels, Counter>,
    sensor_events_filtered: Family<FilteredLabels, Counter>,
    sensor_events_expired: Family<ExpiredLabels, Counter>,
    evaluation_threads_abandoned: Family<SensorLabels, Gauge>,
    producer_block: TotalsFamily<SourceLabels>,
    sensor_processing: TotalsFamily<SensorLabels>,
    trigger_invocations: Family<TriggerOutcomeLabels, Counter>,
    trigger_duration: HistogramFamily<TriggerLabels>,
    trigger_inflight: Family<TriggerLabels, Gauge>,
    trigger_concurrency_limit: Family<TriggerLabels, Gauge>,
    trigger_workers: Family<TriggerLabels, Gauge>,
    workflows_pending: Family<TemplateLabels, Gauge>,
    workflows_running: Family<TemplateLabels, Gauge>,
    semaphore_limit: Family<NameLabels, Gauge>,
    backlog_events: Gauge,
    alerts_firing: Family<AlertLabels, Gauge>,
    alert_notifications: Family<OutcomeLabels, Counter>,
    process_resident_memory: Gauge,
    /// Serialises [`Metrics::refresh`] so counters mirrored from bus totals
    /// are never advanced twice for the same delta.
    refresh_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spillway");
        let m = Metrics {
            bus_messages: Family::default(),
            bus_bytes: Family::default(),
            bus_max_messages: Family::default(),
            bus_max_bytes: Family::default(),
            bus_published: Family::default(),
            bus_rejected: Family::default(),
            bus_discarded: Family::default(),
            bus_log_syncs: Family::default(),
            bus_log_sync_seconds: Family::default(),
            bus_log_write_errors: Family::default(),
            bus_log_segments: Family::default(),
            bus_log_disk_bytes: Family::default(),
            bus_log_failed: Family::default(),
            consumer_lag: Family::default(),
            consumer_ack_pending: Family::default(),
            oldest_unacked_age: Family::default(),
            event_age: Family::new_with_constructor(age_histogram),
            source_events: Family::default(),
            source_events_shed: Family::default(),
            sensor_events_shed: Family::default(),
            sensor_events_filtered: Family::default(),
            sensor_events_expired: Family::default(),
            evaluation_threads_abandoned: Family::default(),
            producer_block: Family::new_with_constructor(latency_totals_histogram),
            sensor_processing: Family::new_with_constructor(latency_totals_histogram),
            trigger_invocations: Family::default(),
            trigger_duration: Family::new_with_constructor(trigger_duration_histogram),
            trigger_inflight: Family::default(),
            trigger_concurrency_limit: Family::default(),
            trigger_workers: Family::default(),
            workflows_pending: Family::default(),
            workflows_running: Family::default(),
            semaphore_limit: Family::default(),
            backlog_events: Gauge::default(),
            alerts_firing: Family::default(),
            alert_notifications: Family::default(),
            process_resident_memory: Gauge::default(),
            refresh_lock: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "bus_messages",
            "Messages held by the bus (queue depth)",
            m.bus_messages.clone(),
        );
        registry.register("bus_bytes", "Bytes held by the bus", m.bus_bytes.clone());
        registry.register(
            "bus_max_messages",
            "The bus max_msgs limit (0 = unlimited)",
            m.bus_max_messages.clone(),
        );
        registry.register(
            "bus_max_bytes",
            "The bus max_bytes limit (0 = unlimited)",
            m.bus_max_bytes.clone(),
        );
        registry.register(
            "bus_published",
            "Messages accepted by the bus",
            m.bus_published.clone(),
        );
        registry.register(
            "bus_rejected",
            "Publishes refused by the bus, by reason",
            m.bus_rejected.clone(),
        );
        registry.register(
            "bus_discarded",
            "Messages deleted by discard: old or max_age before every consumer released them",
            m.bus_discarded.clone(),
        );
        registry.register(
            "bus_log_syncs",
            "fdatasync calls of the embedded bus's segment log (one per group commit under sync_interval: always)",
            m.bus_log_syncs.clone(),
        );
        registry.register(
            "bus_log_sync_seconds",
            "Time spent in those fdatasync calls (divide by bus_log_syncs for the mean)",
            m.bus_log_sync_seconds.clone(),
        );
        registry.register(
            "bus_log_write_errors",
            "Failed writes and syncs of the embedded bus's segment log",
            m.bus_log_write_errors.clone(),
        );
        registry.register(
            "bus_log_segments",
            "Segment files of the embedded bus (one open file each)",
            m.bus_log_segments.clone(),
        );
        registry.register(
            "bus_log_disk_bytes",
            "Bytes of records and headers in the embedded bus's segment files",
            m.bus_log_disk_bytes.clone(),
        );
        registry.register(
            "bus_log_failed",
            "1 once the embedded bus's log turned read-only after a failed write or sync (every publish fails until a restart)",
            m.bus_log_failed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Messages not yet delivered to a trigger's consumer",
            m.consumer_lag.clone(),
        );
        registry.register(
            "consumer_ack_pending",
            "Messages delivered to a trigger and not yet acked",
            m.consumer_ack_pending.clone(),
        );
        registry.register(
            "oldest_unacked_age_seconds",
            "Age of the oldest message a trigger has not released",
            m.oldest_unacked_age.clone(),
        );
        registry.register(
            "event_age_seconds",
            "Time from ingest to trigger start (message age)",
            m.event_age.clone(),
        );
        registry.register(
            "source_events",
            "Requests handled by event sources, by outcome",
            m.source_events.clone(),
        );
        registry.register(
            "source_events_shed",
            "Requests shed by a source's flowControl.shedding, by priority",
            m.source_events_shed.clone(),
        );
        registry.register(
            "sensor_events_shed",
            "Events a trigger acked without running (sensor flowControl.shedding), by priority",
            m.sensor_events_shed.clone(),
        );
        registry.register(
            "sensor_events_filtered",
            "Events a trigger acked without running because of its dependency's filters, by reason (no_match, error)",
            m.sensor_events_filtered.clone(),
        );
        registry.register(
            "sensor_events_expired",
            "Events a trigger with conditions acked unrun: waited maxWait, overflowed maxEvents, or dropped by conditionsReset",
            m.sensor_events_expired.clone(),
        );
        registry.register(
            "evaluation_threads_abandoned",
            "Evaluation threads (Lua script, jq) abandoned in an evaluation that did not stop at its deadline and not back yet",
            m.evaluation_threads_abandoned.clone(),
        );
        registry.register(
            "producer_block_seconds",
            "Time producers waited for bus space",
            m.producer_block.clone(),
        );
        registry.register(
            "sensor_processing_seconds",
            "Time from delivery to the trigger outcome (sensor latency)",
            m.sensor_processing.clone(),
        );
        registry.register(
            "trigger_invocations",
            "Trigger invocations by outcome",
            m.trigger_invocations.clone(),
        );
        registry.register(
            "trigger_duration_seconds",
            "Time one trigger invocation took (the downstream's latency as spillway sees it)",
            m.trigger_duration.clone(),
        );
        registry.register(
            "trigger_inflight",
            "Trigger invocations running now",
            m.trigger_inflight.clone(),
        );
        registry.register(
            "trigger_concurrency_limit",
            "Most trigger invocations allowed at once",
            m.trigger_concurrency_limit.clone(),
        );
        registry.register(
            "trigger_workers",
            "Workers of an autoscaled trigger (flowControl.autoscale)",
            m.trigger_workers.clone(),
        );
        registry.register(
            "workflows_pending",
            "Workflows waiting on a semaphore, per template",
            m.workflows_pending.clone(),
        );
        registry.register(
            "workflows_running",
            "Workflows running, per template",
            m.workflows_running.clone(),
        );
        registry.register(
            "semaphore_limit",
            "Workflows a semaphore admits at once",
            m.semaphore_limit.clone(),
        );
        registry.register(
            "backlog_events",
            "Events stored for later (onReject: backlog)",
            m.backlog_events.clone(),
        );
        registry.register(
            "alerts_firing",
            "Firing alerts per built-in rule",
            m.alerts_firing.clone(),
        );
        registry.register(
            "alert_notifications",
            "Alerts sent to Alertmanager, by outcome",
            m.alert_notifications.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory of the spillway process (RSS)",
            m.process_resident_memory.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn source_event(&self, source: &str, event: &str, outcome: SourceOutcome) {
        self.source_events
            .get_or_create(&SourceEventLabels {
                source: source.to_string(),
                event: event.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    /// Counts one request of `priority` shed at a source (it is also
    /// counted in `source_events_total{outcome="shed"}`).
    pub fn source_shed(&self, source: &str, event: &str, priority: u8) {
        self.source_events_shed
            .get_or_create(&SourceShedLabels {
                source: source.to_string(),
                event: event.to_string(),
                priority: priority.to_string(),
            })
            .inc();
    }

    /// Counts one event a trigger acked unrun because of its dependency's filters.
    pub fn sensor_filtered(&self, sensor: &str, trigger: &str, reason: FilteredReason) {
        self.sensor_events_filtered
            .get_or_create(&FilteredLabels {
                sensor: sensor.to_string(),
                trigger: trigger.to_string(),
                reason: reason.as_str().to_string(),
            })
            .inc();
    }

    /// Sets how many of `sensor`'s evaluation threads are abandoned.
    pub fn evaluation_threads_abandoned(&self, sensor: &str, abandoned: usize) {
        self.evaluation_threads_abandoned
            .get_or_create(&SensorLabels {
                sensor: sensor.to_string(),
            })
            .set(i64::try_from(abandoned).unwrap_or(i64::MAX));
    }

    /// Counts one event of `priority` a trigger shed (acked unrun).
    pub fn sensor_shed(&self, sensor: &str, trigger: &str, priority: u8) {
        self.sensor_events_shed
            .get_or_create(&TriggerShedLabels {
                sensor: sensor.to_string(),
                trigger: trigger.to_string(),
                priority: priority.to_string(),
            })
            .inc();
    }

    /// Counts one waiting event of `dependency` acked without running the
    /// trigger (see [`ExpiredLabels`]).
    pub fn sensor_expired(&self, sensor: &str, trigger: &str, dependency: &str, reason: &str) {
        self.sensor_events_expired
            .get_or_create(&ExpiredLabels {
                sensor: sensor.to_string(),
                trigger: trigger.to_string(),
                dependency: dependency.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn producer_blocked(&self, source: &str, waited: Duration) {
        self.producer_block
            .get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .observe(waited.as_secs_f64());
    }

    pub fn event_age(&self, sensor: &str, age: Duration) {
        self.event_age
            .get_or_create(&SensorLabels {
                sensor: sensor.to_string(),
            })
            .observe(age.as_secs_f64());
    }

    pub fn sensor_processing(&self, sensor: &str, took: Duration) {
        self.sensor_processing
            .get_or_create(&SensorLabels {
                sensor: sensor.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn trigger_duration(&self, sensor: &str, trigger: &str, took: Duration) {
        self.trigger_duration
            .get_or_create(&TriggerLabels {
                sensor: sensor.to_string(),
                trigger: trigger.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn trigger_invocation(&self, sensor: &str, trigger: &str, outcome: TriggerOutcome) {
        self.trigger_invocations
            .get_or_create(&TriggerOutcomeLabels {
                sensor: sensor.to_string(),
                trigger: trigger.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    /// Running totals of `producer_block_seconds{source}`.
    pub fn producer_block_totals(&self, source: &str) -> alerts::Totals {
        let labels = SourceLabels {
            source: source.to_string(),
        };
        self.producer_block
            .get(&labels)
            .map_or_else(alerts::Totals::default, |h| h.totals())
    }

    /// Running totals of `sensor_processing_seconds{sensor}`.
    pub fn sensor_processing_totals(&self, sensor: &str) -> alerts::Totals {
        let labels = SensorLabels {
            sensor: sensor.to_string(),
        };
        self.sensor_processing
            .get(&labels)
            .map_or_else(alerts::Totals::default, |h| h.totals())
    }

    /// Invocations of one trigger so far, per outcome.
    pub fn trigger_invocations_of(&self, sensor: &str, trigger: &str) -> Vec<(&'static str, u64)> {
        TriggerOutcome::ALL
            .iter()
            .map(|outcome| {
                let labels = TriggerOutcomeLabels {
                    sensor: sensor.to_string(),
                    trigger: trigger.to_string(),
                    outcome: outcome.as_str().to_string(),
                };
                let count = self.trigger_invocations.get(&labels).map_or(0, |c| c.get());
                (outcome.as_str(), count)
            })
            .collect()
    }

    /// Events of one source event so far, per outcome (every outcome, zeros
    /// included, so readers see a stable set of keys).
    pub fn source_events_of(&self, source: &str, event: &str) -> Vec<(&'static str, u64)> {
        SourceOutcome::ALL
            .iter()
            .map(|outcome| {
                let labels = SourceEventLabels {
                    source: source.to_string(),
                    event: event.to_string(),
                    outcome: outcome.as_str().to_string(),
                };
                let count = self.source_events.get(&labels).map_or(0, |c| c.get());
                (outcome.as_str(), count)
            })
            .collect()
    }

    /// Records the workflow executor's queue of one template.
    pub fn set_workflows(&self, template: &str, pending: u64, running: u64) {
        let labels = TemplateLabels {
            template: template.to_string(),
        };
        set_gauge(&self.workflows_pending.get_or_create(&labels), pending);
        set_gauge(&self.workflows_running.get_or_create(&labels), running);
    }

    /// Records a semaphore's limit (ConfigMap value).
    pub fn set_semaphore_limit(&self, name: &str, limit: u64) {
        let labels = NameLabels {
            name: name.to_string(),
        };
        set_gauge(&self.semaphore_limit.get_or_create(&labels), limit);
    }

    /// Records how many events the backlog store holds.
    pub fn set_backlog_events(&self, events: u64) {
        set_gauge(&self.backlog_events, events);
    }

    /// Sets `alerts_firing{alertname, severity}`.
    pub fn set_alerts_firing(&self, alertname: &str, severity: &str, firing: usize) {
        let labels = AlertLabels {
            alertname: alertname.to_string(),
            severity: severity.to_string(),
        };
        set_gauge(&self.alerts_firing.get_or_create(&labels), firing as u64);
    }

    /// Counts `alerts` alert notifications with `outcome`.
    pub fn alert_notifications(&self, outcome: NotificationOutcome, alerts: usize) {
        let labels = OutcomeLabels {
            outcome: outcome.as_str().to_string(),
        };
        self.alert_notifications
            .get_or_create(&labels)
            .inc_by(alerts as u64);
    }

    /// Mirrors the process' resident memory (where the OS tells it).
    pub fn refresh_process(&self) {
        if let Some(rss) = process::resident_memory_bytes() {
            set_gauge(&self.process_resident_memory, rss);
        }
    }

    /// Mirrors bus state into the `bus_*` series.
    pub fn refresh_bus(&self, stream: &str, limits: &Limits, stats: &BusStats) {
        let _guard = self.refresh_lock.lock();
        let labels = StreamLabels {
            stream: stream.to_string(),
        };
        set_gauge(&self.bus_messages.get_or_create(&labels), stats.messages);
        set_gauge(&self.bus_bytes.get_or_create(&labels), stats.bytes);
        set_gauge(
            &self.bus_max_messages.get_or_create(&labels),
            limits.max_msgs.unwrap_or(0),
        );
        set_gauge(
            &self.bus_max_bytes.get_or_create(&labels),
            limits.max_bytes.unwrap_or(0),
        );
        advance(&self.bus_published.get_or_create(&labels), stats.published);
        advance(&self.bus_discarded.get_or_create(&labels), stats.discarded);
        for (reason, total) in [
            ("full", stats.rejected_full),
            ("too_large", stats.rejected_too_large),
        ] {
            let labels = ReasonLabels {
                stream: stream.to_string(),
                reason: reason.to_string(),
            };
            advance(&self.bus_rejected.get_or_create(&labels), total);
        }
    }

    /// Mirrors the embedded bus's segment log into the `bus_log_*` series.
    pub fn refresh_log(&self, stream: &str, stats: &spillway_bus::segment::LogStats) {
        let _guard = self.refresh_lock.lock();
        let labels = StreamLabels {
            stream: stream.to_string(),
        };
        advance(&self.bus_log_syncs.get_or_create(&labels), stats.syncs);
        let seconds = self.bus_log_sync_seconds.get_or_create(&labels);
        let delta = stats.sync_time.as_secs_f64() - seconds.get();
        if delta > 0.0 {
            seconds.inc_by(delta);
        }
        advance(
            &self.bus_log_write_errors.get_or_create(&labels),
            stats.write_errors,
        );
        set_gauge(
            &self.bus_log_segments.get_or_create(&labels),
            stats.segments,
        );
        set_gauge(
            &self.bus_log_disk_bytes.get_or_create(&labels),
            stats.disk_bytes,
        );
        set_gauge(
            &self.bus_log_failed.get_or_create(&labels),
            u64::from(stats.failed.is_some()),
        );
    }

    /// Mirrors one trigger's consumer and window into its series.
    pub fn refresh_trigger(
        &self,
        sensor: &str,
        trigger: &str,
        stats: &ConsumerStats,
        inflight: usize,
        limit: usize,
    ) {
        let labels = TriggerLabels {
            sensor: sensor.to_string(),
            trigger: trigger.to_string(),
        };
        set_gauge(&self.consumer_lag.get_or_create(&labels), stats.pending);
        set_gauge(
            &self.consumer_ack_pending.get_or_create(&labels),
            stats.ack_pending,
        );
        self.oldest_unacked_age
            .get_or_create(&labels)
            .set(stats.oldest_unacked_age.map_or(0.0, |d| d.as_secs_f64()));
        set_gauge(
            &self.trigger_inflight.get_or_create(&labels),
            inflight as u64,
        );
        set_gauge(
            &self.trigger_concurrency_limit.get_or_create(&labels),
            limit as u64,
        );
    }

    /// The worker count of a trigger with `flowControl.autoscale`.
    pub fn set_trigger_workers(&self, sensor: &str, trigger: &str, workers: usize) {
        let labels = TriggerLabels {
            sensor: sensor.to_string(),
            trigger: trigger.to_string(),
        };
        set_gauge(&self.trigger_workers.get_or_create(&labels), workers as u64);
    }
}

fn set_gauge(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

/// Moves a counter up to `total` (counters mirrored from a source of truth).
fn advance(counter: &Counter, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_total_suffix() {
        let metrics = Metrics::new();
        metrics.source_event("shop", "orders", SourceOutcome::Accepted);
        metrics.refresh_bus("default", &Limits::default(), &BusStats::default());
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"spillway_source_events_total{source="shop",event="orders",outcome="accepted"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"spillway_bus_max_messages{stream="default"} 100000"#),
            "{text}"
        );
    }

    #[test]
    fn source_events_of_lists_every_outcome_of_one_event() {
        let metrics = Metrics::new();
        for _ in 0..3 {
            metrics.source_event("shop", "orders", SourceOutcome::Accepted);
        }
        metrics.source_event("shop", "orders", SourceOutcome::BusFull);
        metrics.source_event("shop", "refunds", SourceOutcome::Shed);
        let orders = metrics.source_events_of("shop", "orders");
        assert_eq!(orders.len(), SourceOutcome::ALL.len());
        let count = |outcome: SourceOutcome| {
            orders
                .iter()
                .find(|(o, _)| *o == outcome.as_str())
                .map(|(_, n)| *n)
        };
        assert_eq!(count(SourceOutcome::Accepted), Some(3));
        assert_eq!(count(SourceOutcome::BusFull), Some(1));
        assert_eq!(count(SourceOutcome::Shed), Some(0), "other event's shed");
        assert!(metrics
            .source_events_of("nope", "orders")
            .iter()
            .all(|(_, n)| *n == 0));
    }

    #[test]
    fn mirrored_counters_advance_to_the_total() {
        let metrics = Metrics::new();
        let mut stats = BusStats {
            published: 5,
            ..BusStats::default()
        };
        metrics.refresh_bus("default", &Limits::default(), &stats);
        stats.published = 7;
        metrics.refresh_bus("default", &Limits::default(), &stats);
        assert!(metrics
            .encode()
            .contains(r#"spillway_bus_published_total{stream="default"} 7"#));
    }

    #[test]
    fn the_segment_log_is_mirrored_into_bus_log_series() {
        let metrics = Metrics::new();
        let mut stats = spillway_bus::segment::LogStats {
            syncs: 4,
            sync_time: Duration::from_millis(500),
            segments: 3,
            disk_bytes: 4096,
            ..Default::default()
        };
        metrics.refresh_log("default", &stats);
        stats.syncs = 6;
        stats.sync_time = Duration::from_millis(750);
        stats.write_errors = 1;
        stats.failed = Some("fdatasync failed".into());
        metrics.refresh_log("default", &stats);
        let text = metrics.encode();
        for line in [
            r#"spillway_bus_log_syncs_total{stream="default"} 6"#,
            r#"spillway_bus_log_sync_seconds_total{stream="default"} 0.75"#,
            r#"spillway_bus_log_write_errors_total{stream="default"} 1"#,
            r#"spillway_bus_log_segments{stream="default"} 3"#,
            r#"spillway_bus_log_disk_bytes{stream="default"} 4096"#,
            r#"spillway_bus_log_failed{stream="default"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
