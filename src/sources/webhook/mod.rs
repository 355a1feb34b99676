//! The `webhook` event source: HTTP endpoints that publish to the bus.
//!
//! Endpoints that share a port share one HTTP server. The answers follow
//! DESIGN.md's HTTP contract:
//!
//! | situation | answer |
//! |---|---|
//! | accepted (the bus holds the event) | `200 {"id","seq"}` |
//! | no or wrong bearer token (`authSecret`), missing or wrong body signature (`flowControl.signature`) | `401` |
//! | over `flowControl.rateLimit` | `429` + `Retry-After` (exact wait) + `X-Spillway-Reason: rate_limited` |
//! | shed by priority (`flowControl.shedding`, bus deeper than the threshold) | `429` + `Retry-After` + `X-Spillway-Reason: shed` |
//! | bus full, after waiting up to `flowControl.maxBlock` | `429` + `Retry-After` (the bus's drain estimate, ≥ 1 s) + `X-Spillway-Reason: bus_full` |
//! | body over `maxPayloadSize` / `max_msg_size` | `413` |
//! | body not sent within `flowControl.bodyReadTimeout` | `408` |
//! | body is not JSON | `400` |
//! | unknown path / wrong method | `404` / `405` (+ `Allow`) |
//! | shutting down, bus closed or failing | `503` + `Retry-After` |
//! | more than `flowControl.maxConnections` connections open | `503` + `Retry-After: 1`, connection closed ([`server`]) |
//!
//! Guarantees: a `200` is sent only after [`Bus::publish`](spillway_bus::Bus::publish)
//! returned a sequence number; every other answer means the event was not
//! accepted and the producer still owns it. Every request that reaches an
//! endpoint is counted in `spillway_source_events_total` with its outcome
//! (a `408` counts as `invalid`). Bodies are read with a size cap and a
//! time limit, headers with a time limit, and connections are capped per
//! port, so slow or huge requests cannot exhaust memory, tasks or sockets.
//! Authentication, rate limit and shedding are decided from the headers
//! alone, before the body is read, so refusing a storm costs almost
//! nothing; only a body signature, and shedding on a priority read from the
//! body (`flowControl.priority.path`), need the body.
//!
//! With `flowControl.priority` or `shedding`, the priority resolved for a
//! request is stamped on its bus message as the `spillway-priority` header
//! (see [`crate::priority`]), for the sensors' shedding and dispatch order;
//! every shed request is also counted per priority in
//! `spillway_source_events_shed_total`.
//!
//! Files: `handler.rs` answers one request, `auth.rs` checks credentials,
//! `server.rs` runs a port's connections, `build.rs` turns the config into
//! ports.

mod auth;
mod build;
mod handler;
pub mod server;

pub use auth::{Auth, AuthError, SignatureCheck, DEFAULT_SIGNATURE_HEADER};
pub use build::{ports, BuildError, Port};
pub use handler::{error, set_retry_after};
pub use server::{serve, ServerLimits};

use crate::priority::{PriorityFrom, PrioritySource, Resolved, DEFAULT_PRIORITY};
use crate::telemetry::LogThrottle;
use crate::telemetry::Metrics;
use axum::http::{HeaderMap, Method};
use spillway_bus::Bus;
use spillway_flowctl::{PriorityShedder, RateLimiter};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

/// Argo's default `maxPayloadSize` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;
/// Default `flowControl.bodyReadTimeout`.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// One endpoint: where it listens and which event it produces.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub source: String,
    pub event: String,
    pub path: String,
    pub method: Method,
    /// Largest body accepted (bytes).
    pub max_payload: u64,
    /// How long a client may take to send the body before getting 408.
    pub body_read_timeout: Duration,
    /// How long to wait for bus space before answering 429.
    pub max_block: Duration,
    /// Argo `metadata`, attached to every event.
    pub metadata: BTreeMap<String, String>,
    /// `authSecret` and `flowControl.signature`: without them, 401.
    pub auth: Auth,
    /// `flowControl.rateLimit`: requests over it get `429 rate_limited`.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// `flowControl.priority` and `flowControl.shedding`.
    pub priority: Option<Arc<Prioritizing>>,
}

/// An endpoint's priorities: where they come from and what is shed.
#[derive(Debug)]
pub struct Prioritizing {
    /// `flowControl.priority`; without it every request has priority
    /// [`DEFAULT_PRIORITY`].
    pub source: Option<PrioritySource>,
    /// `flowControl.shedding`.
    pub shedder: Option<PriorityShedder>,
    /// Warnings about unreadable priority values, at most one per interval.
    pub unreadable_log: LogThrottle,
}

impl Prioritizing {
    /// The request's priority when the headers are enough to know it;
    /// `None` when it is in the body.
    fn in_headers(&self, headers: &HeaderMap) -> Option<Resolved> {
        match &self.source {
            None => Some(Resolved {
                priority: DEFAULT_PRIORITY,
                unreadable: None,
            }),
            Some(source) => match &source.from {
                PriorityFrom::Header(name) => {
                    Some(source.in_text(headers.get(name.as_str()).and_then(|v| v.to_str().ok())))
                }
                PriorityFrom::Path(_) => None,
            },
        }
    }

    /// The priority at the configured path of the event `data`.
    fn in_data(&self, data: &serde_json::Value) -> Resolved {
        match &self.source {
            Some(source) => source.in_data(data),
            None => Resolved {
                priority: DEFAULT_PRIORITY,
                unreadable: None,
            },
        }
    }
}

/// Shared state of one port's server.
pub struct PortState {
    pub endpoints: Vec<Endpoint>,
    pub bus: Arc<dyn Bus>,
    pub metrics: Arc<Metrics>,
    /// Set on shutdown: every request gets 503.
    pub draining: Arc<AtomicBool>,
}

/// The axum router serving `state`'s endpoints.
pub fn router(state: Arc<PortState>) -> axum::Router {
    axum::Router::new()
        .fallback(handler::handle)
        .with_state(state)
}
