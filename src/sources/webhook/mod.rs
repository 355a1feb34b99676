//! The `webhook` event source: HTTP endpoints that publish to the bus.
//!
//! Endpoints that share a port share one HTTP server. The answers follow
//! DESIGN.md's HTTP contract:
//!
//! | situation | answer |
//! |---|---|
//! | accepted (the bus holds the event) | `200 {"id","seq"}` |
//! | over `flowControl.rateLimit` | `429` + `Retry-After` (exact wait) + `X-Spillway-Reason: rate_limited` |
//! | shed by priority (`flowControl.shedding`, bus deeper than the threshold) | `429` + `Retry-After` + `X-Spillway-Reason: shed` |
//! | bus full, after waiting up to `flowControl.maxBlock` | `429` + `Retry-After` + `X-Spillway-Reason: bus_full` |
//! | body over `maxPayloadSize` / `max_msg_size` | `413` |
//! | body is not JSON | `400` |
//! | unknown path / wrong method | `404` / `405` (+ `Allow`) |
//! | shutting down, bus closed or failing | `503` + `Retry-After` |
//!
//! Guarantees: a `200` is sent only after [`Bus::publish`] returned a
//! sequence number; every other answer means the event was not accepted and
//! the producer still owns it. Every request is counted in
//! `spillway_source_events_total` with its outcome. Bodies are read with a
//! size cap, so a large or endless body cannot exhaust memory. Rate limit
//! and shedding are decided from the headers alone, before the body is read,
//! so refusing a storm costs almost nothing.

use crate::event::Event;
use crate::telemetry::{Metrics, SourceOutcome};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use spillway_bus::{Bus, PublishError};
use spillway_flowctl::{Decision, PriorityShedder, RateLimiter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Argo's default `maxPayloadSize` (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: u64 = 1 << 20;
/// `Retry-After` sent while shutting down or when the bus is unavailable.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// `Retry-After` sent to shed requests: the backlog that caused shedding
/// takes a while to drain, so low-priority producers should stay away for
/// longer than a bus-full retry.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(5);
/// Argo-style default priority of a request without the priority header.
pub const DEFAULT_PRIORITY: u8 = 5;

/// One endpoint: where it listens and which event it produces.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub source: String,
    pub event: String,
    pub path: String,
    pub method: Method,
    /// Largest body accepted (bytes).
    pub max_payload: u64,
    /// How long to wait for bus space before answering 429.
    pub max_block: Duration,
    /// Argo `metadata`, attached to every event.
    pub metadata: BTreeMap<String, String>,
    /// `flowControl.rateLimit`: requests over it get `429 rate_limited`.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// `flowControl.shedding` with the priority source.
    pub shedding: Option<Arc<Shedding>>,
}

/// Priority shedding of one endpoint.
#[derive(Debug)]
pub struct Shedding {
    /// Header carrying the request's priority (0 = most important).
    pub header: Option<axum::http::HeaderName>,
    /// Priority of requests without (or with an unreadable) header.
    pub default_priority: u8,
    pub shedder: PriorityShedder,
}

impl Shedding {
    /// The request's priority: the header's number, clamped to the lowest
    /// priority; anything unreadable counts as the default.
    fn priority(&self, headers: &HeaderMap) -> u8 {
        self.header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(self.default_priority, priority_from)
    }
}

/// A priority number as flowctl takes it: anything past the lowest priority
/// counts as the lowest, so an out-of-range value can never buy precedence.
pub fn priority_from(number: u64) -> u8 {
    spillway_flowctl::clamp_priority(u8::try_from(number).unwrap_or(u8::MAX))
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
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(state): State<Arc<PortState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    let on_path: Vec<&Endpoint> = state.endpoints.iter().filter(|e| e.path == path).collect();
    if on_path.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no endpoint at {path}"),
        );
    }
    let Some(endpoint) = on_path.iter().find(|e| e.method == method) else {
        let allow: Vec<&str> = on_path.iter().map(|e| e.method.as_str()).collect();
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} accepts {}", allow.join(", ")),
        );
        if let Ok(value) = HeaderValue::from_str(&allow.join(", ")) {
            response.headers_mut().insert(header::ALLOW, value);
        }
        return response;
    };
    let count = |outcome| {
        state
            .metrics
            .source_event(&endpoint.source, &endpoint.event, outcome)
    };
    if state.draining.load(Ordering::Acquire) {
        count(SourceOutcome::Unavailable);
        return unavailable("shutting down");
    }
    if let Some(rate) = &endpoint.rate_limit {
        if let Err(limited) = rate.check() {
            count(SourceOutcome::RateLimited);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("over the rate limit of {}; retry later", rate.limit()),
            );
            set_retry_after(&mut response, limited.wait);
            return response;
        }
    }
    if let Some(shedding) = &endpoint.shedding {
        let priority = shedding.priority(&headers);
        let depth = state.bus.stats().messages;
        if let Decision::Shed {
            queue_depth_above, ..
        } = shedding.shedder.decide(priority, depth)
        {
            count(SourceOutcome::Shed);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "shed",
                format!(
                    "priority {priority} is shed while the bus holds more than {queue_depth_above} events; retry later"
                ),
            );
            set_retry_after(&mut response, SHED_RETRY_AFTER);
            return response;
        }
    }
    let limit = usize::try_from(endpoint.max_payload).unwrap_or(usize::MAX);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > endpoint.max_payload) {
        count(SourceOutcome::TooLarge);
        return too_large(endpoint.max_payload);
    }
    let body = match axum::body::to_bytes(body, limit).await {
        Ok(body) => body,
        Err(err) => {
            let over_limit = std::error::Error::source(&err)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                count(SourceOutcome::TooLarge);
                return too_large(endpoint.max_payload);
            }
            count(SourceOutcome::Invalid);
            return error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("cannot read body: {err}"),
            );
        }
    };
    let data = match event_data(&headers, &body, &endpoint.metadata) {
        Ok(data) => data,
        Err(message) => {
            count(SourceOutcome::Invalid);
            return error(StatusCode::BAD_REQUEST, "invalid", message);
        }
    };
    let event = Event::new(&endpoint.source, "webhook", &endpoint.event, data);
    let id = event.context.id.clone();
    match publish(&state, endpoint, event).await {
        Ok(seq) => {
            count(SourceOutcome::Accepted);
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({"id": id, "seq": seq})),
            )
                .into_response()
        }
        Err(PublishError::Full {
            retry_after, limit, ..
        }) => {
            count(SourceOutcome::BusFull);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "bus_full",
                format!("the event bus is full ({limit} reached); retry later"),
            );
            set_retry_after(&mut response, retry_after);
            response
        }
        Err(PublishError::TooLarge { size, max, .. }) => {
            count(SourceOutcome::TooLarge);
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("event of {size} bytes exceeds the bus max_msg_size of {max} bytes"),
            )
        }
        Err(PublishError::Closed { .. }) => {
            count(SourceOutcome::Unavailable);
            unavailable("the event bus is closed")
        }
        Err(PublishError::Unavailable { reason, .. }) => {
            count(SourceOutcome::Unavailable);
            tracing::warn!(source = %endpoint.source, event = %endpoint.event, "bus unavailable: {reason}");
            unavailable("the event bus is unavailable")
        }
    }
}

/// Publishes, waiting up to the endpoint's `max_block` for space when the
/// bus is full. The wait is recorded in `producer_block_seconds`.
async fn publish(
    state: &PortState,
    endpoint: &Endpoint,
    event: Event,
) -> Result<u64, PublishError> {
    let started = Instant::now();
    let deadline = started + endpoint.max_block;
    let mut message = event.to_message();
    let result = loop {
        match state.bus.publish(message).await {
            Err(PublishError::Full {
                message: returned,
                limit,
                retry_after,
            }) => {
                let now = Instant::now();
                if now >= deadline {
                    break Err(PublishError::Full {
                        message: returned,
                        limit,
                        retry_after,
                    });
                }
                message = returned;
                state.bus.wait_for_space(deadline - now).await;
            }
            other => break other,
        }
    };
    state
        .metrics
        .producer_blocked(&endpoint.source, started.elapsed());
    result
}

/// Argo's webhook event data: `{"header": {name: [values]}, "body": <json>, "metadata": {...}}`.
fn event_data(
    headers: &HeaderMap,
    body: &Bytes,
    metadata: &BTreeMap<String, String>,
) -> Result<Bytes, String> {
    let body_json: serde_json::Value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body).map_err(|err| format!("body is not valid JSON: {err}"))?
    };
    let mut header_map: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        header_map
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let mut data = serde_json::json!({"header": header_map, "body": body_json});
    if !metadata.is_empty() {
        data["metadata"] = serde_json::json!(metadata);
    }
    Ok(Bytes::from(data.to_string()))
}

/// Every error body is `{"error": …, "reason": …}`.
pub fn error(status: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let mut response = (
        status,
        axum::Json(serde_json::json!({"error": message.into(), "reason": reason})),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(reason) {
        response.headers_mut().insert("x-spillway-reason", value);
    }
    response
}

fn too_large(max: u64) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("body exceeds the maximum of {max} bytes"),
    )
}

fn unavailable(why: &str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    set_retry_after(&mut response, UNAVAILABLE_RETRY_AFTER);
    response
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
pub fn set_retry_after(response: &mut Response, after: Duration) {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(spillway_flowctl::retry_after_secs(after)),
    );
}
