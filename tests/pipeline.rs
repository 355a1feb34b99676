//! End to end through the real binary and real sockets: webhook → bus →
//! sensor → http trigger → a downstream server in this test.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// A pipeline with one webhook (`shop/orders`) and one http trigger that
/// maps `body.id` → `orderId` and `body.total` → `total` (a number: `useRawData`).
fn pipeline(port: u16, downstream: &str, max_msgs: u32, max_payload: u32) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      max_msgs: {max_msgs}
      max_msg_size: 1MiB
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "{port}"
      endpoint: /orders
      method: POST
      maxPayloadSize: {max_payload}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: forward
        http:
          url: {downstream}
          method: POST
          payload:
            - src:
                dependencyName: order
                dataKey: body.id
              dest: orderId
            - src:
                dependencyName: order
                dataKey: body.total
                useRawData: true
              dest: total
"#
    )
}

/// `spillway_source_events_total` of the `shop/orders` webhook for `outcome`.
fn source_events(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_total{{source="shop",event="orders",outcome="{outcome}"}}"#
        ),
    )
}

/// Successful invocations of the `forward` trigger.
fn trigger_successes(metrics: &str) -> f64 {
    metric(
        metrics,
        r#"spillway_trigger_invocations_total{sensor="orders",trigger="forward",outcome="success"}"#,
    )
}

async fn post(client: &reqwest::Client, port: u16, body: String) -> reqwest::Response {
    client
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST /orders")
}

#[tokio::test]
async fn every_accepted_event_reaches_the_trigger_once_with_the_mapped_payload() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, 1000, 1 << 20)).await;
    let client = common::client();
    const N: usize = 25;
    for i in 0..N {
        let response = post(
            &client,
            port,
            json!({"id": format!("o-{i}"), "total": i * 10}).to_string(),
        )
        .await;
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value = response.json().await.expect("JSON answer");
        assert!(
            answer["id"].is_string() && answer["seq"].as_u64() == Some(i as u64 + 1),
            "{answer}"
        );
    }
    wait_until("every trigger call", WAIT, || async {
        receiver.count().await >= N
    })
    .await;
    // Everything acked: nothing left on the bus, so no redelivery can add calls.
    wait_until("an empty bus", WAIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let mut bodies = receiver.bodies().await;
    bodies.sort_by_key(|b| b["total"].as_u64());
    let expected: Vec<_> = (0..N)
        .map(|i| json!({"orderId": format!("o-{i}"), "total": i * 10}))
        .collect();
    assert_eq!(bodies, expected);

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), N as f64);
    assert_eq!(trigger_successes(&metrics), N as f64);
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_bus_published_total{stream="default"}"#
        ),
        N as f64
    );
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_full_bus_answers_429_and_loses_no_accepted_event() {
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, 5, 1 << 20)).await;
    let client = common::client();
    for i in 0..5 {
        let response = post(
            &client,
            port,
            json!({"id": format!("ok-{i}"), "total": i}).to_string(),
        )
        .await;
        assert_eq!(response.status(), 200, "event {i}");
    }
    for i in 0..3 {
        let response = post(
            &client,
            port,
            json!({"id": format!("rejected-{i}"), "total": 100 + i}).to_string(),
        )
        .await;
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!(retry_after >= 1);
        assert_eq!(response.headers()["x-spillway-reason"], "bus_full");
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["reason"], "bus_full");
        assert!(body["error"].is_string());
    }
    let status = spillway.status().await;
    assert_eq!(status["bus"]["messages"], 5);
    assert_eq!(status["bus"]["limits"]["max_msgs"], 5);

    receiver.open();
    wait_until("the 5 accepted events downstream", WAIT, || async {
        receiver.count().await >= 5
    })
    .await;
    wait_until("an empty bus", WAIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let mut ids: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["orderId"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["ok-0", "ok-1", "ok-2", "ok-3", "ok-4"]);

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), 5.0);
    assert_eq!(source_events(&metrics, "bus_full"), 3.0);
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_bus_rejected_total{stream="default",reason="full"}"#
        ),
        3.0
    );
    assert_eq!(trigger_successes(&metrics), 5.0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn http_errors_follow_the_contract() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, 100, 64)).await;
    let client = common::client();

    let big = json!({"id": "x".repeat(100)}).to_string();
    let response = post(&client, port, big).await;
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["reason"], "too_large");

    let response = client
        .post(format!("http://127.0.0.1:{port}/elsewhere"))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.expect("JSON");
    assert_eq!(body["reason"], "not_found");

    let response = client
        .get(format!("http://127.0.0.1:{port}/orders"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");

    let response = post(&client, port, "not json".to_string()).await;
    assert_eq!(response.status(), 400);

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "too_large"), 1.0);
    assert_eq!(source_events(&metrics, "invalid"), 1.0);
    assert_eq!(source_events(&metrics, "accepted"), 0.0);
    assert_eq!(receiver.count().await, 0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn shutdown_finishes_in_flight_triggers_and_refuses_new_events() {
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, 100, 1 << 20)).await;
    let client = common::client();
    let response = post(
        &client,
        port,
        json!({"id": "in-flight", "total": 1}).to_string(),
    )
    .await;
    assert_eq!(response.status(), 200);
    wait_until("the trigger call to start", WAIT, || async {
        spillway.status().await["triggers"][0]["inflight"] == 1
    })
    .await;

    let pid = spillway_pid(&spillway);
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(sent.map(|s| s.success()).unwrap_or(false));
    // Events accepted before the signal is handled may still be delivered;
    // track them so the final check is exact either way.
    let mut accepted = vec![json!("in-flight")];
    let deadline = tokio::time::Instant::now() + WAIT;
    for attempt in 0.. {
        let id = format!("late-{attempt}");
        let r = post(&client, port, json!({"id": id}).to_string()).await;
        if r.status() == 503 {
            assert!(r.headers().contains_key("retry-after"));
            break;
        }
        assert_eq!(r.status(), 200);
        accepted.push(json!(id));
        assert!(tokio::time::Instant::now() < deadline, "never answered 503");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    receiver.open();
    let status = spillway.terminate_wait().await;
    assert!(status.success(), "exit status {status}");
    let ids: Vec<_> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["orderId"].clone())
        .collect();
    assert!(ids.contains(&json!("in-flight")), "{ids:?}");
    assert!(
        ids.iter().all(|id| accepted.contains(id)),
        "{ids:?} not all in {accepted:?}"
    );
}

fn spillway_pid(spillway: &Spillway) -> String {
    spillway.pid().to_string()
}
