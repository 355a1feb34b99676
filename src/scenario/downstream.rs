//! The built-in slow downstream of the scenarios: an HTTP server that takes
//! a fixed time per request, records which storm ids it received, and
//! answers `200`.
//!
//! Each POST body is read as JSON; the event id is `body.id` (an event as
//! an http trigger without `payload` sends it: the webhook's body wrapped
//! with its headers) or `id`, and counts when it is `storm-<n>`. Ids go into
//! a fixed-size [`IdSet`] (memory fixed at start, see its bounds); a second
//! arrival of the same id is counted as a duplicate (at-least-once
//! delivery allows them), anything else (no storm id, or an id past the
//! set's capacity) as untracked.
//!
//! Guarantees: every request is answered after `latency` (the server keeps
//! no queue of its own: hyper holds one task per open connection, and the
//! trigger's in-flight window bounds the connections). The server stops
//! when its token is cancelled.

use crate::storm::tracker::{IdSet, Inserted};
use axum::extract::State;
use axum::http::StatusCode;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the downstream saw.
pub struct Received {
    pub ids: IdSet,
    requests: AtomicU64,
    duplicates: AtomicU64,
    untracked: AtomicU64,
}

impl Received {
    fn new(capacity: u64) -> Received {
        Received {
            ids: IdSet::new(capacity),
            requests: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Storm ids received more than once (each extra arrival counts).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Requests without a storm id the set could hold.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }

    /// Counts one request's body.
    pub fn record(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match storm_id(body).map(|id| self.ids.insert(id)) {
            Some(Inserted::New) => {}
            Some(Inserted::Again) => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Some(Inserted::Untracked) | None => {
                self.untracked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The number `n` of a body carrying `"id": "storm-<n>"` at `body.id` or `id`.
pub fn storm_id(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = value
        .pointer("/body/id")
        .or_else(|| value.get("id"))?
        .as_str()?;
    id.strip_prefix("storm-")?.parse().ok()
}

/// A running downstream.
pub struct Downstream {
    pub addr: SocketAddr,
    pub received: Arc<Received>,
}

impl Downstream {
    /// The URL triggers post to.
    pub fn url(&self) -> String {
        format!("http://{}/sink", self.addr)
    }
}

#[derive(Clone)]
struct AppState {
    received: Arc<Received>,
    latency: Duration,
}

/// Listens on `listen` (port 0 picks one), answering every POST after
/// `latency`; records ids below `capacity`. Stops when `stop` is cancelled.
pub async fn start(
    listen: SocketAddr,
    latency: Duration,
    capacity: u64,
    stop: CancellationToken,
) -> std::io::Result<Downstream> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let received = Arc::new(Received::new(capacity));
    let state = AppState {
        received: received.clone(),
        latency,
    };
    let app = axum::Router::new()
        .fallback(axum::routing::post(receive))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::warn!("downstream: server stopped: {err}");
        }
    });
    Ok(Downstream { addr, received })
}

async fn receive(State(state): State<AppState>, body: axum::body::Bytes) -> StatusCode {
    tokio::time::sleep(state.latency).await;
    state.received.record(&body);
    StatusCode::OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_from_the_event_or_the_body() {
        assert_eq!(
            storm_id(br#"{"body":{"id":"storm-12"},"headers":{}}"#),
            Some(12)
        );
        assert_eq!(storm_id(br#"{"id":"storm-7"}"#), Some(7));
        assert_eq!(storm_id(br#"{"id":"order-7"}"#), None);
        assert_eq!(storm_id(b"not json"), None);
    }

    #[test]
    fn duplicates_and_strangers_are_counted_apart() {
        let r = Received::new(10);
        r.record(br#"{"id":"storm-1"}"#);
        r.record(br#"{"id":"storm-1"}"#);
        r.record(br#"{"id":"storm-99"}"#);
        r.record(b"{}");
        assert_eq!((r.requests(), r.duplicates(), r.untracked()), (4, 1, 2));
        assert_eq!(r.ids.len(), 1);
    }
}
