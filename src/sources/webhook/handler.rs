//! Answers one webhook request (see the contract table in the module docs
//! of [`super`]). Checks run cheapest first: route, shutdown, credentials in
//! the headers, rate limit, shedding on a header priority, declared size;
//! then the body is read (size-capped, time-limited), its signature checked,
//! shedding on a body priority (`priority.path`) decided, and the event
//! published with its priority stamped, waiting up to `maxBlock` for bus
//! space.

use super::auth::AuthError;
use super::{Endpoint, PortState, Prioritizing};
use crate::event::Event;
use crate::priority::{Resolved, PRIORITY_HEADER};
use crate::sources::{publish_waiting, Waited};
use crate::telemetry::SourceOutcome;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::value::RawValue;
use spillway_bus::{Message, PublishError};
use spillway_flowctl::Decision;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `Retry-After` sent while shutting down or when the bus is unavailable.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);
/// `Retry-After` sent to shed requests: the backlog that caused shedding
/// takes a while to drain, so low-priority producers should stay away for
/// longer than a bus-full retry.
const SHED_RETRY_AFTER: Duration = Duration::from_secs(5);

pub(super) async fn handle(
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
    // Before the rate limit, so requests without credentials cannot use up
    // the budget of the producers that have them.
    let pending_signature = match endpoint.auth.check_headers(&headers) {
        Ok(pending) => pending,
        Err(err) => {
            count(SourceOutcome::Unauthorized);
            return unauthorized(&err);
        }
    };
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
    // A priority in the headers is known (and shed on) before the body is
    // read; one in the body only once it is parsed.
    let mut priority = None;
    if let Some(prioritizing) = &endpoint.priority {
        if let Some(resolved) = prioritizing.in_headers(&headers) {
            if let Some(response) = shed(&state, endpoint, prioritizing, &resolved) {
                return response;
            }
            priority = Some(resolved.priority);
        }
    }
    let body = match read_body(endpoint, &headers, body).await {
        Ok(body) => body,
        Err((outcome, response)) => {
            count(outcome);
            return response;
        }
    };
    if let Some(pending) = pending_signature {
        if let Err(err) = endpoint.auth.check_body(pending, &body) {
            count(SourceOutcome::Unauthorized);
            return unauthorized(&err);
        }
    }
    let hide_authorization = endpoint.auth.bearer.is_some();
    let data = match event_data(&headers, &body, hide_authorization, &endpoint.metadata) {
        Ok(data) => data,
        Err(message) => {
            count(SourceOutcome::Invalid);
            return error(StatusCode::BAD_REQUEST, "invalid", message);
        }
    };
    if let (Some(prioritizing), None) = (&endpoint.priority, priority) {
        // Only a priority read from the body needs the event as a tree.
        let tree = serde_json::from_slice(&data).unwrap_or(serde_json::Value::Null);
        let resolved = prioritizing.in_data(&tree);
        if let Some(response) = shed(&state, endpoint, prioritizing, &resolved) {
            return response;
        }
        priority = Some(resolved.priority);
    }
    let event = Event::new(&endpoint.source, "webhook", &endpoint.event, data);
    let id = event.context.id.clone();
    let mut message = event.to_message();
    if let Some(priority) = priority {
        message
            .headers
            .push((PRIORITY_HEADER.to_string(), priority.to_string()));
    }
    match publish(&state, endpoint, message).await {
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

/// The `429 shed` answer when `resolved`'s priority is shed at the bus's
/// current depth (counted, per priority too); `None` when it is admitted.
/// An unreadable priority value is warned about (throttled).
fn shed(
    state: &PortState,
    endpoint: &Endpoint,
    prioritizing: &Prioritizing,
    resolved: &Resolved,
) -> Option<Response> {
    if let Some(value) = &resolved.unreadable {
        if let Some(skipped) = prioritizing.unreadable_log.admit() {
            tracing::warn!(source = %endpoint.source, event = %endpoint.event, value = %value, skipped, "unreadable priority; using the default {}", resolved.priority);
        }
    }
    let shedder = prioritizing.shedder.as_ref()?;
    let priority = resolved.priority;
    let Decision::Shed {
        queue_depth_above, ..
    } = shedder.decide(priority, state.bus.stats().messages)
    else {
        return None;
    };
    state
        .metrics
        .source_event(&endpoint.source, &endpoint.event, SourceOutcome::Shed);
    state
        .metrics
        .source_shed(&endpoint.source, &endpoint.event, priority);
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "shed",
        format!(
            "priority {priority} is shed while the bus holds more than {queue_depth_above} events; retry later"
        ),
    );
    set_retry_after(&mut response, SHED_RETRY_AFTER);
    Some(response)
}

/// The whole body, at most `max_payload` bytes, within `body_read_timeout`;
/// otherwise the refusal and how to count it.
async fn read_body(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, (SourceOutcome, Response)> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > endpoint.max_payload) {
        return Err((SourceOutcome::TooLarge, too_large(endpoint.max_payload)));
    }
    let limit = usize::try_from(endpoint.max_payload).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(
        endpoint.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await;
    match read {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(err)) => {
            let over_limit = std::error::Error::source(&err)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over_limit {
                return Err((SourceOutcome::TooLarge, too_large(endpoint.max_payload)));
            }
            Err((
                SourceOutcome::Invalid,
                error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("cannot read body: {err}"),
                ),
            ))
        }
        Err(_elapsed) => {
            let mut response = error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the body was not received within {:?}",
                    endpoint.body_read_timeout
                ),
            );
            // The rest of the body is still on its way: the connection
            // cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err((SourceOutcome::Invalid, response))
        }
    }
}

/// Publishes, waiting up to the endpoint's `max_block` for space when the
/// bus is full (a full bus refuses at once, so the wait starts with the
/// request); the time held goes to `producer_block_seconds`.
async fn publish(
    state: &PortState,
    endpoint: &Endpoint,
    message: Message,
) -> Result<u64, PublishError> {
    let deadline = Instant::now() + endpoint.max_block;
    let waited = publish_waiting(
        &*state.bus,
        &state.metrics,
        &endpoint.source,
        message,
        Some(deadline),
        None,
    )
    .await;
    match waited {
        Waited::Accepted(seq) => Ok(seq),
        Waited::Refused(err) => Err(err),
        // No stop token was given.
        Waited::Stopped(message) => Err(PublishError::Closed { message }),
    }
}

/// Argo's webhook event data: `{"header": {name: [values]}, "body": <json>, "metadata": {...}}`.
/// With a bearer `authSecret`, the `Authorization` header is left out: it
/// holds the endpoint's secret, which must not travel on to the bus, the
/// triggers and their logs.
/// Argo's webhook event data, `{"body": …, "header": …, "metadata": …}`,
/// as JSON bytes. The body is checked to be JSON and embedded as its own
/// text: parsing it into a tree only to print it again cost ≈ 10 % of the
/// ingest CPU (docs/BENCHMARKS.md, HTTP ceiling).
/// `hide_authorization`: the bearer token checked by the endpoint stays out
/// of the event.
fn event_data(
    headers: &HeaderMap,
    body: &Bytes,
    hide_authorization: bool,
    metadata: &BTreeMap<String, String>,
) -> Result<Bytes, String> {
    #[derive(serde::Serialize)]
    struct WebhookData<'a> {
        body: Option<&'a RawValue>,
        header: BTreeMap<&'a str, Vec<String>>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        metadata: &'a BTreeMap<String, String>,
    }
    let body_json: Option<&RawValue> = if body.is_empty() {
        None
    } else {
        Some(serde_json::from_slice(body).map_err(|err| format!("body is not valid JSON: {err}"))?)
    };
    let mut header_map: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION && hide_authorization {
            continue;
        }
        header_map
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let data = WebhookData {
        body: body_json,
        header: header_map,
        metadata,
    };
    serde_json::to_vec(&data)
        .map(Bytes::from)
        .map_err(|err| format!("cannot encode the event: {err}"))
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

fn unauthorized(err: &AuthError) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, "unauthorized", err.to_string());
    if matches!(err, AuthError::MissingBearer | AuthError::WrongBearer) {
        // RFC 6750: a 401 for a bearer token names the scheme.
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(
        headers: &HeaderMap,
        body: &str,
        hide: bool,
        metadata: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let metadata = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = event_data(headers, &Bytes::from(body.to_string()), hide, &metadata)?;
        Ok(serde_json::from_slice(&bytes).expect("event data is JSON"))
    }

    #[test]
    fn event_data_is_argos_shape_with_the_body_as_sent() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer s3cret"),
        );
        let body = " {\"id\": \"o-1\", \"total\": 12.50, \"tags\": [\"a\"]}\n";
        assert_eq!(
            data(&headers, body, true, &[("team", "shop")]),
            Ok(json!({
                "body": {"id": "o-1", "total": 12.50, "tags": ["a"]},
                "header": {"x-a": ["1", "2"]},
                "metadata": {"team": "shop"},
            }))
        );
        // Without a bearer check the header is the producer's business.
        let kept = data(&headers, body, false, &[]).expect("valid");
        assert_eq!(kept["header"]["authorization"], json!(["Bearer s3cret"]));
        assert!(kept.get("metadata").is_none());
    }

    #[test]
    fn empty_bodies_are_null_and_bad_json_is_refused() {
        let headers = HeaderMap::new();
        assert_eq!(
            data(&headers, "", false, &[]),
            Ok(json!({"body": null, "header": {}}))
        );
        for bad in ["{", "{\"a\":1} trailing", "nul", "\"unterminated"] {
            let err = data(&headers, bad, false, &[]).expect_err(bad);
            assert!(err.starts_with("body is not valid JSON"), "{bad}: {err}");
        }
    }
}
