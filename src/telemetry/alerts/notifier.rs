//! Sends alerts to an Alertmanager-compatible receiver: `POST` of a JSON
//! array of alerts in Alertmanager's `/api/v2/alerts` shape (`labels`,
//! `annotations`, `startsAt`, `endsAt`, `generatorURL`).
//!
//! Guarantees:
//! - `send` never blocks and never waits on the network: alerts go into a
//!   queue of at most `max_queue` alerts; when it is full the **oldest** is
//!   dropped (a firing alert is re-sent every `resendInterval`, so the
//!   newest state matters most), counted in
//!   `spillway_alert_notifications_total{outcome="dropped"}` and logged once
//!   per overflow streak;
//! - one task posts batches of at most [`MAX_BATCH`] alerts, in order. A
//!   connection error, timeout, 429 or 5xx is retried with exponential
//!   backoff (1 s doubling, [`MAX_RETRIES`] times); then the batch is given
//!   up (`outcome="failed"`, one log line). Any other non-2xx answer means
//!   the receiver refuses the payload: given up at once, logged.
//!
//! Not guaranteed: delivery of what is still queued at shutdown (firing
//! alerts carry an `endsAt`, so Alertmanager expires them on its own).

use crate::telemetry::{Metrics, NotificationOutcome};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Most alerts in one POST (Prometheus' batch size).
pub const MAX_BATCH: usize = 64;
/// Retries of a batch after a transient failure.
pub const MAX_RETRIES: u32 = 5;
/// Longest pause between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One alert as Alertmanager's `POST /api/v2/alerts` takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub starts_at: String,
    /// RFC 3339: the resolve time, or for a firing alert the time after
    /// which Alertmanager may consider it resolved if not re-sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(
        rename = "generatorURL",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub generator_url: Option<String>,
}

/// Where and how to notify.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifierConfig {
    /// The full endpoint, e.g. `http://alertmanager:9093/api/v2/alerts`.
    pub url: reqwest::Url,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Most alerts waiting to be sent.
    pub max_queue: usize,
    /// First retry pause (doubles per retry, at most 30 s).
    pub initial_backoff: Duration,
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: unreachable, timed out, 429 or 5xx.
    #[error("{0}")]
    Transient(String),
    /// The receiver refused the payload; retrying would not help.
    #[error("refused with {status}: {body}")]
    Refused { status: u16, body: String },
}

/// A bounded FIFO that drops its oldest entries when full.
#[derive(Debug)]
struct Queue {
    items: VecDeque<PostableAlert>,
    cap: usize,
}

impl Queue {
    /// Appends `alerts`; returns how many old ones were dropped for room.
    fn push(&mut self, alerts: Vec<PostableAlert>) -> usize {
        let mut dropped = 0;
        for alert in alerts {
            if self.items.len() >= self.cap {
                self.items.pop_front();
                dropped += 1;
            }
            if self.cap > 0 {
                self.items.push_back(alert);
            } else {
                dropped += 1;
            }
        }
        dropped
    }

    fn take(&mut self, max: usize) -> Vec<PostableAlert> {
        let n = self.items.len().min(max);
        self.items.drain(..n).collect()
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// An overflow streak is under way (logged once).
    overflowing: AtomicBool,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

impl Notifier {
    /// Starts the posting task; it stops when `stop` is cancelled.
    pub fn spawn(
        config: NotifierConfig,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        // Every outcome is on /metrics from the start, at 0.
        for outcome in [
            NotificationOutcome::Sent,
            NotificationOutcome::Failed,
            NotificationOutcome::Dropped,
        ] {
            metrics.alert_notifications(outcome, 0);
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                cap: config.max_queue,
            }),
            wake: Notify::new(),
            metrics,
            overflowing: AtomicBool::new(false),
        });
        let task = tokio::spawn(post_loop(Arc::clone(&shared), config, client, stop));
        (Notifier { shared }, task)
    }

    /// Queues `alerts` for sending. Never blocks; see the module docs for
    /// what happens when the queue is full.
    pub fn send(&self, alerts: Vec<PostableAlert>) {
        if alerts.is_empty() {
            return;
        }
        let dropped = self.shared.queue.lock().push(alerts);
        if dropped > 0 {
            self.shared
                .metrics
                .alert_notifications(NotificationOutcome::Dropped, dropped);
            if !self.shared.overflowing.swap(true, Ordering::AcqRel) {
                tracing::warn!(
                    "alert notification queue full; dropping the oldest notifications (counted in spillway_alert_notifications_total{{outcome=\"dropped\"}})"
                );
            }
        } else {
            self.shared.overflowing.store(false, Ordering::Release);
        }
        self.shared.wake.notify_one();
    }
}

async fn post_loop(
    shared: Arc<Shared>,
    config: NotifierConfig,
    client: reqwest::Client,
    stop: CancellationToken,
) {
    loop {
        let batch = shared.queue.lock().take(MAX_BATCH);
        if batch.is_empty() {
            tokio::select! {
                _ = shared.wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        let mut backoff = config.initial_backoff;
        let mut retries = 0;
        loop {
            match post(&client, &config, &batch).await {
                Ok(()) => {
                    shared
                        .metrics
                        .alert_notifications(NotificationOutcome::Sent, batch.len());
                    break;
                }
                Err(NotifyError::Transient(reason)) if retries < MAX_RETRIES => {
                    if retries == 0 {
                        tracing::warn!(url = %config.url, "alert notification failed ({reason}); retrying");
                    }
                    retries += 1;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(err) => {
                    tracing::error!(
                        url = %config.url,
                        "giving up on {} alert notification(s): {err}",
                        batch.len()
                    );
                    shared
                        .metrics
                        .alert_notifications(NotificationOutcome::Failed, batch.len());
                    break;
                }
            }
        }
    }
}

/// One POST of `batch`.
async fn post(
    client: &reqwest::Client,
    config: &NotifierConfig,
    batch: &[PostableAlert],
) -> Result<(), NotifyError> {
    let response = client
        .post(config.url.clone())
        .timeout(config.timeout)
        .json(batch)
        .send()
        .await
        .map_err(|e| NotifyError::Transient(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(NotifyError::Transient(format!("answered {status}")));
    }
    // Only the start of the body: enough to say why, bounded in size.
    let body = response.text().await.unwrap_or_default();
    Err(NotifyError::Refused {
        status: status.as_u16(),
        body: body.chars().take(200).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use std::sync::atomic::AtomicUsize;

    fn alert(name: &str) -> PostableAlert {
        PostableAlert {
            labels: BTreeMap::from([("alertname".to_string(), name.to_string())]),
            annotations: BTreeMap::new(),
            starts_at: "2024-01-01T00:00:00Z".into(),
            ends_at: None,
            generator_url: None,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let mut queue = Queue {
            items: VecDeque::new(),
            cap: 2,
        };
        assert_eq!(queue.push(vec![alert("a"), alert("b")]), 0);
        assert_eq!(queue.push(vec![alert("c")]), 1);
        let names: Vec<_> = queue
            .take(10)
            .into_iter()
            .map(|a| a.labels["alertname"].clone())
            .collect();
        assert_eq!(names, ["b", "c"]);
    }

    #[test]
    fn serializes_in_alertmanager_shape() {
        let mut a = alert("QueueDepthExceeded");
        a.ends_at = Some("2024-01-01T00:05:00Z".into());
        a.generator_url = Some("http://127.0.0.1:9470/api/v1/status".into());
        let json = serde_json::to_value(vec![a]).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{
                "labels": {"alertname": "QueueDepthExceeded"},
                "annotations": {},
                "startsAt": "2024-01-01T00:00:00Z",
                "endsAt": "2024-01-01T00:05:00Z",
                "generatorURL": "http://127.0.0.1:9470/api/v1/status"
            }])
        );
    }

    /// A receiver that answers 503 to its first `failures` requests.
    async fn receiver(
        failures: usize,
    ) -> (
        reqwest::Url,
        Arc<Mutex<Vec<Vec<PostableAlert>>>>,
        Arc<AtomicUsize>,
    ) {
        let received: Arc<Mutex<Vec<Vec<PostableAlert>>>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let (r, c) = (Arc::clone(&received), Arc::clone(&calls));
        let app = axum::Router::new().route(
            "/api/v2/alerts",
            axum::routing::post(move |axum::Json(batch): axum::Json<Vec<PostableAlert>>| {
                let (r, c) = (Arc::clone(&r), Arc::clone(&c));
                async move {
                    if c.fetch_add(1, Ordering::SeqCst) < failures {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    r.lock().push(batch);
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let url = reqwest::Url::parse(&format!("http://{addr}/api/v2/alerts")).expect("url");
        (url, received, calls)
    }

    fn config(url: reqwest::Url) -> NotifierConfig {
        NotifierConfig {
            url,
            timeout: Duration::from_secs(5),
            max_queue: 100,
            initial_backoff: Duration::from_millis(10),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn retries_a_503_and_delivers_in_order() {
        crate::install_tls_provider();
        let (url, received, calls) = receiver(2).await;
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (notifier, task) = Notifier::spawn(
            config(url),
            reqwest::Client::new(),
            Arc::clone(&metrics),
            stop.clone(),
        );
        notifier.send(vec![alert("first")]);
        wait_for("first delivery", || received.lock().len() == 1).await;
        notifier.send(vec![alert("second")]);
        wait_for("second delivery", || received.lock().len() == 2).await;
        let names: Vec<_> = received
            .lock()
            .iter()
            .flatten()
            .map(|a| a.labels["alertname"].clone())
            .collect();
        assert_eq!(names, ["first", "second"]);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(metrics
            .encode()
            .contains(r#"spillway_alert_notifications_total{outcome="sent"} 2"#));
        stop.cancel();
        let _ = task.await;
    }

    #[tokio::test]
    async fn gives_up_after_the_retries_and_counts_it() {
        crate::install_tls_provider();
        let (url, received, calls) = receiver(usize::MAX).await;
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let (notifier, task) = Notifier::spawn(
            config(url),
            reqwest::Client::new(),
            Arc::clone(&metrics),
            stop.clone(),
        );
        notifier.send(vec![alert("lost")]);
        wait_for("the batch to be given up", || {
            metrics
                .encode()
                .contains(r#"spillway_alert_notifications_total{outcome="failed"} 1"#)
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1 + MAX_RETRIES as usize);
        assert!(received.lock().is_empty());
        stop.cancel();
        let _ = task.await;
    }
}
