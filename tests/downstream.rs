//! Triggers that listen to their downstream, through the real binary and
//! real HTTP servers: a `429 + Retry-After` pauses the trigger (and is not a
//! retry step); a downstream that always fails gets exactly `steps` attempts,
//! then the event goes to the `dlqTrigger`.
//!
//! Timing assertions are lower bounds only (a pause may be longer on a busy
//! machine, never shorter), so they cannot flake on a slow runner.

mod common;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{free_port, metric, wait_until, Spillway};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(30);

/// A downstream that refuses its first `refusals` calls with `status` (and
/// `Retry-After: 1` when `status` is 429), recording each call.
#[derive(Clone)]
struct Downstream {
    url: String,
    refusals: usize,
    status: StatusCode,
    calls: Arc<Mutex<Vec<(Instant, String, StatusCode)>>>,
}

impl Downstream {
    async fn start(refusals: usize, status: StatusCode) -> Downstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind downstream");
        let addr = listener.local_addr().expect("downstream addr");
        let downstream = Downstream {
            url: format!("http://{addr}/api"),
            refusals,
            status,
            calls: Arc::new(Mutex::new(Vec::new())),
        };
        let app = axum::Router::new()
            .route("/api", axum::routing::post(answer))
            .with_state(downstream.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        downstream
    }

    async fn calls(&self) -> Vec<(Instant, String, StatusCode)> {
        self.calls.lock().await.clone()
    }
}

async fn answer(
    State(downstream): State<Downstream>,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    let id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["body"]["id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut calls = downstream.calls.lock().await;
    let status = if calls.len() < downstream.refusals {
        downstream.status
    } else {
        StatusCode::OK
    };
    calls.push((Instant::now(), id, status));
    let mut headers = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        headers.insert("retry-after", "1".parse().expect("header value"));
    }
    (status, headers)
}

fn pipeline(port: u16, trigger: &str) -> String {
    common::orders_pipeline("", port, "", trigger)
}

async fn post_orders(port: u16, n: usize) {
    let client = common::client();
    for i in 0..n {
        let response = client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"o-{i}"}}"#))
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(response.status(), 200);
    }
}

fn invocations(metrics: &str, trigger: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_trigger_invocations_total{{sensor="orders",trigger="{trigger}",outcome="{outcome}"}}"#
        ),
    )
}

#[tokio::test]
async fn retry_after_pauses_the_trigger_and_every_event_arrives_once() {
    let downstream = Downstream::start(3, StatusCode::TOO_MANY_REQUESTS).await;
    let port = free_port();
    let trigger = common::http_trigger("api", &downstream.url);
    let mut spillway = Spillway::start(&pipeline(port, &trigger)).await;
    post_orders(port, 5).await;
    wait_until("5 accepted calls downstream", WAIT, || async {
        downstream
            .calls()
            .await
            .iter()
            .filter(|c| c.2 == StatusCode::OK)
            .count()
            >= 5
    })
    .await;
    let calls = downstream.calls().await;
    // No request reached the downstream before a Retry-After had elapsed.
    for (i, refused) in calls
        .iter()
        .enumerate()
        .filter(|c| c.1 .2 != StatusCode::OK)
    {
        for later in &calls[i + 1..] {
            let gap = later.0 - refused.0;
            assert!(
                gap >= Duration::from_millis(990),
                "a call came {gap:?} after a 429 with Retry-After: 1"
            );
        }
    }
    let mut ids: Vec<&str> = calls
        .iter()
        .filter(|c| c.2 == StatusCode::OK)
        .map(|c| c.1.as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, ["o-0", "o-1", "o-2", "o-3", "o-4"]);
    wait_until("an empty bus", WAIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(invocations(&metrics, "api", "success"), 5.0);
    assert_eq!(invocations(&metrics, "api", "retry"), 3.0);
    // The default retryStrategy is one attempt: had the pauses been counted
    // as retry steps, events would have failed.
    assert_eq!(invocations(&metrics, "api", "failure"), 0.0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_failing_downstream_gets_exactly_steps_attempts_then_the_dlq() {
    let failing = Downstream::start(usize::MAX, StatusCode::INTERNAL_SERVER_ERROR).await;
    let dlq = Downstream::start(0, StatusCode::OK).await;
    let port = free_port();
    let trigger = format!(
        r#"    - template:
        name: api
        http:
          url: {}
          method: POST
      flowControl:
        concurrency: gradient
      retryStrategy:
        steps: 3
        duration: 200ms
        factor: 2
      dlqTrigger:
        template:
          name: dead-letters
          http:
            url: {}
            method: POST
"#,
        failing.url, dlq.url
    );
    let mut spillway = Spillway::start(&pipeline(port, &trigger)).await;
    post_orders(port, 2).await;
    wait_until("2 DLQ calls", WAIT, || async {
        dlq.calls().await.len() >= 2
    })
    .await;
    wait_until("an empty bus", WAIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let calls = failing.calls().await;
    for id in ["o-0", "o-1"] {
        let times: Vec<Instant> = calls.iter().filter(|c| c.1 == id).map(|c| c.0).collect();
        assert_eq!(times.len(), 3, "attempts for {id}");
        // Backoff 200 ms then 400 ms (no jitter), at least.
        assert!(times[1] - times[0] >= Duration::from_millis(195));
        assert!(times[2] - times[1] >= Duration::from_millis(395));
    }
    let mut dead: Vec<String> = dlq.calls().await.into_iter().map(|c| c.1).collect();
    dead.sort();
    assert_eq!(dead, ["o-0", "o-1"]);
    let metrics = spillway.metrics().await;
    assert_eq!(invocations(&metrics, "api", "dlq"), 2.0);
    assert_eq!(invocations(&metrics, "api", "retry"), 4.0);
    assert!(spillway.terminate().await.success());
}

/// `flowControl.autoscale` end to end: 45 events behind a downstream that
/// holds every request. One worker takes the first, the lag of 44 asks for
/// ceil(44 / 10) = 5 workers, so exactly 5 requests wait at the downstream
/// (the window of 16 would allow more), and the worker count shows on
/// `/metrics` and `/api/v1/status`.
#[tokio::test]
async fn autoscaled_workers_follow_the_lag() {
    let receiver = common::Receiver::start(false).await;
    let port = free_port();
    let trigger = format!(
        "{}          timeout: 60\n      flowControl:\n        concurrency: fixed\n        maxInFlight: 16\n        autoscale: {{min: 1, max: 8, lagThreshold: 10, pollingInterval: 1s}}\n",
        common::http_trigger("slow", &receiver.url)
    );
    let spillway = Spillway::start(&pipeline(port, &trigger)).await;
    post_orders(port, 45).await;
    wait_until("5 requests at the downstream", WAIT, || async {
        receiver.arrivals() == 5
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_trigger_workers{sensor="orders",trigger="slow"}"#
        ),
        5.0
    );
    let status = spillway.status().await;
    assert_eq!(status["triggers"][0]["workers"], 5);
    // Polls keep coming every second; the count holds (scale-down waits for
    // the 300 s window), so no sixth request starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.arrivals(), 5);
    receiver.open();
    wait_until("all 45 delivered", WAIT, || async {
        receiver.count().await == 45
    })
    .await;
}
