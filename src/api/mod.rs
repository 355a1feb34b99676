//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/api/v1/status`,
//! `/api/v1/status/history` ([`history`]), the live dashboard at `/`
//! ([`dashboard`]), and the backlog replay API ([`backlog`]).
//!
//! Read-only views of the running pipeline, except the backlog replay.
//! Gauges that mirror the bus and the consumers are refreshed on each
//! request, so a scrape sees the state at that moment. The status
//! document's shape is [`status::Status`]; [`screen`] renders it for
//! `spillway status`.

mod backlog;
mod dashboard;
pub mod history;
pub mod screen;
pub mod status;

use crate::sensor::TriggerHandle;
use crate::sources::EventName;
use crate::telemetry::alerts::Alerting;
use crate::telemetry::Metrics;
use crate::triggers::workflow::semaphores::SemaphoreRegistry;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use spillway_bus::Bus;
use status::{
    BacklogStatus, BusStatus, LimitsStatus, ProcessStatus, SemaphoreStatus, SourceStatus, Status,
    TriggerStatus, WorkflowStatus,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the admin server reads from.
pub struct AdminState {
    pub stream: String,
    /// `embedded` or `jetstream`.
    pub backend: &'static str,
    pub bus: Arc<dyn Bus>,
    /// The embedded bus, when it is the one in use (its log's metrics and
    /// read-only state).
    pub embedded: Option<Arc<spillway_bus::segment_bus::SegmentBus>>,
    pub triggers: Vec<TriggerHandle>,
    /// Every configured event of every EventSource (their outcome counters
    /// are looked up by these names; the metric families cannot be listed).
    pub sources: Vec<EventName>,
    /// Workflow semaphores and per-template pending/running counts.
    pub workflows: Arc<SemaphoreRegistry>,
    pub metrics: Arc<Metrics>,
    pub alerts: Arc<Alerting>,
    /// Bus open and every source listening.
    pub ready: Arc<AtomicBool>,
    /// Shutdown has begun.
    pub draining: Arc<AtomicBool>,
    /// The data dir's backlog store and its replay into this pipeline's bus.
    pub backlog: Arc<crate::backlog::Replayer>,
    /// When the pipeline started (`uptime_seconds`: readers divide counter
    /// deltas by it to get rates, independent of their own clocks).
    pub started: std::time::Instant,
    /// The last few minutes of status documents ([`history::run`] fills it).
    pub history: history::History,
}

impl AdminState {
    fn refresh(&self) {
        self.metrics.refresh_process();
        self.metrics
            .refresh_bus(&self.stream, &self.bus.limits(), &self.bus.stats());
        if let Some(embedded) = &self.embedded {
            self.metrics
                .refresh_log(&self.stream, &embedded.log_stats());
        }
        self.metrics
            .set_backlog_events(self.backlog.store().events());
        for t in &self.triggers {
            self.metrics.refresh_trigger(
                &t.sensor,
                &t.trigger,
                &t.consumer.stats(),
                t.inflight(),
                t.concurrency_limit(),
            );
            if let Some(workers) = t.workers() {
                self.metrics
                    .set_trigger_workers(&t.sensor, &t.trigger, workers);
            }
        }
        for w in self.workflows.workflows() {
            self.metrics
                .set_workflows(&w.template, w.pending as u64, w.running as u64);
        }
        for s in self.workflows.semaphores() {
            self.metrics
                .set_semaphore_limit(&s.name.to_string(), s.limit as u64);
        }
    }
}

pub fn router(state: Arc<AdminState>) -> axum::Router {
    let backlog = axum::Router::new()
        .route("/api/v1/backlog", get(backlog::list))
        .route("/api/v1/backlog/{name}/replay", post(backlog::replay))
        .with_state(Arc::clone(&state.backlog));
    axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/status/history", get(status_history))
        .with_state(state)
        .merge(backlog)
        .merge(dashboard::router())
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    state.refresh();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let failed = state
        .embedded
        .as_ref()
        .and_then(|bus| bus.log_stats().failed);
    if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if let Some(reason) = failed {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event bus is read-only until restarted: {reason}\n"),
        )
            .into_response()
    } else if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(snapshot(&state)).into_response()
}

/// The sampled status documents, oldest first (see [`history`]).
async fn status_history(State(state): State<Arc<AdminState>>) -> Response {
    axum::Json(state.history.samples()).into_response()
}

/// The status document of this moment.
fn snapshot(state: &AdminState) -> Status {
    let stats = state.bus.stats();
    let limits = state.bus.limits();
    let triggers = state
        .triggers
        .iter()
        .map(|t| {
            let c = t.consumer.stats();
            TriggerStatus {
                sensor: t.sensor.clone(),
                trigger: t.trigger.clone(),
                consumer: t.consumer.name().to_string(),
                lag: c.pending,
                ack_pending: c.ack_pending,
                redelivered: c.redelivered,
                oldest_unacked_age_seconds: c.oldest_unacked_age.map(|d| d.as_secs_f64()),
                inflight: t.inflight(),
                concurrency_limit: t.concurrency_limit(),
                max_in_flight: t.max_in_flight(),
                workers: t.workers(),
                invocations: state
                    .metrics
                    .trigger_invocations_of(&t.sensor, &t.trigger)
                    .into_iter()
                    .map(|(outcome, n)| (outcome.to_string(), n))
                    .collect(),
                workflow_template: t.workflow_template().map(str::to_string),
                pending: t.pending(),
                max_pending: t.max_pending(),
            }
        })
        .collect();
    let workflows = state
        .workflows
        .workflows()
        .into_iter()
        .map(|w| WorkflowStatus {
            template: w.template,
            semaphore: w.semaphore.map(|s| s.to_string()),
            pending: w.pending,
            running: w.running,
        })
        .collect();
    let semaphores = state
        .workflows
        .semaphores()
        .into_iter()
        .map(|s| SemaphoreStatus {
            name: s.name.to_string(),
            limit: s.limit,
            running: s.running,
            pending: s.pending,
            max_pending: s.max_pending,
        })
        .collect();
    Status {
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        ready: state.ready.load(Ordering::Acquire),
        draining: state.draining.load(Ordering::Acquire),
        bus: BusStatus {
            stream: state.stream.clone(),
            backend: state.backend.to_string(),
            messages: stats.messages,
            bytes: stats.bytes,
            published: stats.published,
            rejected_full: stats.rejected_full,
            rejected_too_large: stats.rejected_too_large,
            discarded: stats.discarded,
            last_seq: stats.last_seq,
            consumers: stats.consumers,
            limits: LimitsStatus {
                max_msgs: limits.max_msgs,
                max_bytes: limits.max_bytes,
                max_msg_size: limits.max_msg_size,
                max_consumers: limits.max_consumers,
                max_age_seconds: limits.max_age.map(|d| d.as_secs_f64()),
                discard: match limits.discard {
                    spillway_bus::DiscardPolicy::New => "new",
                    spillway_bus::DiscardPolicy::Old => "old",
                }
                .to_string(),
            },
        },
        triggers,
        alerts: state.alerts.status(),
        process: ProcessStatus {
            resident_memory_bytes: crate::telemetry::process::resident_memory_bytes(),
        },
        workflows,
        semaphores,
        backlog: BacklogStatus {
            events: state.backlog.store().events(),
            bytes: state.backlog.store().bytes(),
        },
        sources: state
            .sources
            .iter()
            .map(|name| SourceStatus {
                source: name.source.clone(),
                event: name.event.clone(),
                outcomes: state
                    .metrics
                    .source_events_of(&name.source, &name.event)
                    .into_iter()
                    .map(|(outcome, n)| (outcome.to_string(), n))
                    .collect(),
            })
            .collect(),
    }
}
