//! Priority end to end through the real binary: a webhook reading the
//! priority from the JSON body sheds at ingress (`429 shed`, counted per
//! priority), and stamps the priority on the event so a sensor dispatches
//! its backlog higher priority first.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use std::time::Duration;

/// Webhook `shop/orders` with `webhook_flow` under its `flowControl:`, a
/// sensor with `sensor_flow` under its `flowControl:`, and one http trigger
/// (`maxInFlight: 1`) posting to `downstream`.
fn pipeline(port: u16, downstream: &str, webhook_flow: &str, sensor_flow: &str) -> String {
    format!(
        r#"{bus}---
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
      flowControl:
        {webhook_flow}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  flowControl:
    {sensor_flow}
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
      flowControl:
        maxInFlight: 1
"#,
        bus = common::eventbus(1000)
    )
}

/// POSTs `{"id": id, "priority": priority}` (no `priority` key for `None`).
async fn post(port: u16, id: &str, priority: Option<serde_json::Value>) -> reqwest::Response {
    let mut body = serde_json::json!({ "id": id });
    if let Some(priority) = priority {
        body["priority"] = priority;
    }
    common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .json(&body)
        .send()
        .await
        .expect("POST /orders")
}

fn source_events(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_total{{source="shop",event="orders",outcome="{outcome}"}}"#
        ),
    )
}

fn shed_at_source(metrics: &str, priority: u8) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_shed_total{{source="shop",event="orders",priority="{priority}"}}"#
        ),
    )
}

#[tokio::test]
async fn priority_from_the_body_sheds_3_and_accepts_0_while_the_bus_is_deep() {
    // The downstream holds every call, so accepted events stay on the bus.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let config = pipeline(
        port,
        &receiver.url,
        "priority: {path: body.priority, default: 5}\n        shedding: {queueDepthAbove: 2, shedPriorityAbove: 2}",
        "burst: 1",
    );
    let mut spillway = Spillway::start(&config).await;
    // Depth 0, 1, 2: not above 2, even priority 3 gets in.
    for i in 0..3 {
        let response = post(port, &format!("early-{i}"), Some(3.into())).await;
        assert_eq!(response.status(), 200, "request {i}");
    }
    // Depth 3 > 2: priority 3 is shed, and so are 9, a too-large number
    // (counts as 9), an unreadable one and a missing one (the default 5).
    let shed = [
        (Some(serde_json::json!(3)), 3),
        (Some(serde_json::json!("3")), 3),
        (Some(serde_json::json!(9)), 9),
        (Some(serde_json::json!(250)), 9),
        (Some(serde_json::json!("urgent")), 5),
        (None, 5),
    ];
    for (i, (priority, _)) in shed.iter().enumerate() {
        let response = post(port, &format!("shed-{i}"), priority.clone()).await;
        assert_eq!(response.status(), 429, "priority {priority:?}");
        assert_eq!(response.headers()["x-spillway-reason"], "shed");
        let body: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(body["reason"], "shed");
    }
    // Priority 0 (and 1, 2) get in however deep the bus is.
    for (i, priority) in [0, 0, 1, 2].into_iter().enumerate() {
        let response = post(port, &format!("important-{i}"), Some(priority.into())).await;
        assert_eq!(response.status(), 200, "priority {priority}");
    }
    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), 7.0);
    assert_eq!(source_events(&metrics, "shed"), 6.0);
    assert_eq!(shed_at_source(&metrics, 0), 0.0);
    assert_eq!(shed_at_source(&metrics, 3), 2.0);
    assert_eq!(shed_at_source(&metrics, 5), 2.0);
    assert_eq!(shed_at_source(&metrics, 9), 2.0);
    assert_eq!(spillway.status().await["bus"]["messages"], 7);
    receiver.open();
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_sensor_dispatches_its_backlog_by_the_stamped_priority() {
    let receiver = Receiver::start(false).await;
    let port = free_port();
    // The sensor sheds nothing at this depth, but shedding makes it read
    // the priority the webhook stamped and dispatch by it.
    let config = pipeline(
        port,
        &receiver.url,
        "priority: {header: X-Priority}",
        "shedding: {queueDepthAbove: 1000, shedPriorityAbove: 2}",
    );
    let mut spillway = Spillway::start(&config).await;
    let send = |id: &'static str, priority: &'static str| async move {
        common::client()
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("x-priority", priority)
            .json(&serde_json::json!({ "id": id }))
            .send()
            .await
            .expect("POST /orders")
            .status()
    };
    // The first event occupies the trigger's only slot (the downstream
    // holds it); the rest wait on the bus.
    assert_eq!(send("first", "5").await, 200);
    wait_until(
        "the first call reaches the downstream",
        Duration::from_secs(10),
        || {
            let receiver = receiver.clone();
            async move { receiver.arrivals() == 1 }
        },
    )
    .await;
    for (id, priority) in [
        ("low", "9"),
        ("normal", "5"),
        ("urgent", "0"),
        ("high", "1"),
    ] {
        assert_eq!(send(id, priority).await, 200, "{id}");
    }
    receiver.open();
    wait_until("every event is delivered", Duration::from_secs(10), || {
        let receiver = receiver.clone();
        async move { receiver.count().await == 5 }
    })
    .await;
    let order: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["body"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order, ["first", "urgent", "high", "normal", "low"]);
    let metrics = spillway.metrics().await;
    for priority in 0..=9 {
        let series = format!(
            r#"spillway_sensor_events_shed_total{{sensor="orders",trigger="forward",priority="{priority}"}}"#
        );
        assert_eq!(metric(&metrics, &series), 0.0, "priority {priority}");
    }
    assert!(spillway.terminate().await.success());
}
