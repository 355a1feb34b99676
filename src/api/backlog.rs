//! The admin API of the backlog store, used by `spillway backlog replay`:
//!
//! - `GET /api/v1/backlog` → `{"events", "bytes", "names": [oldest first]}`
//! - `POST /api/v1/backlog/{name}/replay` → `200 {"name", "seq"}` once the
//!   bus accepted the event and the record is removed; `429` +
//!   `Retry-After` (`reason: bus_full`) when the bus is full; `404` when
//!   the record is gone; `409` when it cannot be replayed (damaged, no such
//!   trigger, too large) and stays stored; `503` when the bus cannot take
//!   it now.
//!
//! A replay runs to completion even if the client disconnects mid-request,
//! so a record is never published without being removed afterwards.

use crate::backlog::{Refused, ReplaySource, Replayer};
use crate::sources::webhook::{error, set_retry_after};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// `Retry-After` of a `503`.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

pub async fn list(State(replayer): State<Arc<Replayer>>) -> Response {
    match replayer.names().await {
        Ok(names) => axum::Json(json!({
            "events": replayer.store().events(),
            "bytes": replayer.store().bytes(),
            "names": names,
        }))
        .into_response(),
        Err(refused) => answer(refused),
    }
}

pub async fn replay(State(replayer): State<Arc<Replayer>>, Path(name): Path<String>) -> Response {
    let task_name = name.clone();
    // Its own task: a client that goes away must not cancel the removal
    // between a successful publish and the record's deletion.
    let outcome = tokio::spawn(async move { replayer.replay(&task_name).await }).await;
    match outcome {
        Ok(Ok(seq)) => axum::Json(json!({"name": name, "seq": seq})).into_response(),
        Ok(Err(refused)) => answer(refused),
        Err(join) => answer(Refused::Unavailable(format!(
            "replay of {name} failed: {join}"
        ))),
    }
}

fn answer(refused: Refused) -> Response {
    match refused {
        Refused::Full { retry_after } => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "bus_full",
                format!("bus full; retry after {retry_after:?}"),
            );
            set_retry_after(&mut response, retry_after);
            response
        }
        Refused::Gone(why) => error(StatusCode::NOT_FOUND, "not_found", why),
        Refused::Skipped(why) => error(StatusCode::CONFLICT, "not_replayable", why),
        Refused::Unavailable(why) => {
            let mut response = error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
            set_retry_after(&mut response, UNAVAILABLE_RETRY_AFTER);
            response
        }
    }
}
