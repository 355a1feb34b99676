//! The admin HTTP server: `/metrics`, `/healthz`, `/readyz`, `/api/v1/status`,
//! and the backlog replay API ([`backlog`]).
//!
//! Read-only views of the running pipeline, except the backlog replay. Gauges
//! that mirror the bus and the consumers are refreshed on each request, so a
//! scrape sees the state at that moment.

mod backlog;

use crate::sensor::TriggerHandle;
use crate::telemetry::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use spillway_bus::Bus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the admin server reads from.
pub struct AdminState {
    pub stream: String,
    pub backend: &'static str,
    pub bus: Arc<dyn Bus>,
    pub triggers: Vec<TriggerHandle>,
    pub metrics: Arc<Metrics>,
    /// Bus open and every source listening.
    pub ready: Arc<AtomicBool>,
    /// Shutdown has begun.
    pub draining: Arc<AtomicBool>,
    /// The data dir's backlog store and its replay into this pipeline's bus.
    pub backlog: Arc<crate::backlog::Replayer>,
}

impl AdminState {
    fn refresh(&self) {
        self.metrics
            .refresh_bus(&self.stream, &self.bus.limits(), &self.bus.stats());
        self.metrics.refresh_backlog(self.backlog.store().events());
        for t in &self.triggers {
            self.metrics.refresh_trigger(
                &t.sensor,
                &t.trigger,
                &t.consumer.stats(),
                t.inflight(),
                t.concurrency_limit(),
            );
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
        .with_state(state)
        .merge(backlog)
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
    if state.draining.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let stats = state.bus.stats();
    let limits = state.bus.limits();
    let triggers: Vec<_> = state
        .triggers
        .iter()
        .map(|t| {
            let c = t.consumer.stats();
            json!({
                "sensor": t.sensor,
                "trigger": t.trigger,
                "consumer": t.consumer.name(),
                "lag": c.pending,
                "ack_pending": c.ack_pending,
                "redelivered": c.redelivered,
                "oldest_unacked_age_seconds": c.oldest_unacked_age.map(|d| d.as_secs_f64()),
                "inflight": t.inflight(),
                "concurrency_limit": t.concurrency_limit(),
                "max_in_flight": t.max_in_flight(),
            })
        })
        .collect();
    axum::Json(json!({
        "ready": state.ready.load(Ordering::Acquire),
        "draining": state.draining.load(Ordering::Acquire),
        "bus": {
            "stream": state.stream,
            "backend": state.backend,
            "messages": stats.messages,
            "bytes": stats.bytes,
            "published": stats.published,
            "rejected_full": stats.rejected_full,
            "rejected_too_large": stats.rejected_too_large,
            "discarded": stats.discarded,
            "last_seq": stats.last_seq,
            "consumers": stats.consumers,
            "limits": {
                "max_msgs": limits.max_msgs,
                "max_bytes": limits.max_bytes,
                "max_msg_size": limits.max_msg_size,
                "max_consumers": limits.max_consumers,
                "max_age_seconds": limits.max_age.map(|d| d.as_secs_f64()),
                "discard": match limits.discard {
                    spillway_bus::DiscardPolicy::New => "new",
                    spillway_bus::DiscardPolicy::Old => "old",
                },
            },
        },
        "triggers": triggers,
        "backlog": {
            "events": state.backlog.store().events(),
            "bytes": state.backlog.store().bytes(),
        },
    }))
    .into_response()
}
