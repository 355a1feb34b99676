//! Dependency conditions end to end through the real binary: two webhook
//! endpoints feed one sensor with two dependencies and `conditions`; the
//! http trigger's payload takes parameters from both events; an event whose
//! partner never comes expires after `maxWait` and is counted.

mod common;

use common::{free_port, metric, wait_until, NatsServer, Receiver, Spillway};
use std::time::Duration;

fn pipeline(port: u16, downstream: &str) -> String {
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
    payments:
      port: "{port}"
      endpoint: /payments
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: checkout
spec:
  dependencies:
    - name: order-placed
      eventSourceName: shop
      eventName: orders
    - name: payment-received
      eventSourceName: shop
      eventName: payments
  triggers:
    - template:
        name: ship
        conditions: "order-placed && payment-received"
        http:
          url: {downstream}
          method: POST
          payload:
            - src: {{dependencyName: order-placed, dataKey: body.id}}
              dest: order
            - src: {{dependencyName: payment-received, dataKey: body.amount, useRawData: true}}
              dest: amount
      flowControl:
        correlation:
          maxWait: 2s
          maxEvents: 100
"#,
        bus = common::eventbus(1000)
    )
}

async fn post(port: u16, endpoint: &str, body: serde_json::Value) {
    let response = common::client()
        .post(format!("http://127.0.0.1:{port}/{endpoint}"))
        .json(&body)
        .send()
        .await
        .expect("webhook reachable");
    assert!(response.status().is_success(), "{}", response.status());
}

#[tokio::test]
async fn order_and_payment_run_the_trigger_once_per_pair_with_both_parameters() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let spillway = Spillway::start(&pipeline(port, &receiver.url)).await;
    post(port, "orders", serde_json::json!({"id": "o-1"})).await;
    post(port, "orders", serde_json::json!({"id": "o-2"})).await;
    post(port, "payments", serde_json::json!({"amount": 10})).await;
    post(port, "payments", serde_json::json!({"amount": 20})).await;
    wait_until("two shipments", Duration::from_secs(20), || async {
        receiver.count().await >= 2
    })
    .await;
    let mut bodies = receiver.bodies().await;
    bodies.sort_by_key(|b| b["order"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        bodies,
        [
            serde_json::json!({"order": "o-1", "amount": 10}),
            serde_json::json!({"order": "o-2", "amount": 20}),
        ]
    );

    // An order whose payment never comes waits maxWait (2s), then is acked
    // and counted; the trigger does not run for it.
    post(port, "orders", serde_json::json!({"id": "o-3"})).await;
    let series = r#"spillway_sensor_events_expired_total{sensor="checkout",trigger="ship",dependency="order-placed",reason="max_wait"} "#;
    wait_until("o-3 expired", Duration::from_secs(20), || async {
        metric(&spillway.metrics().await, series) >= 1.0
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(metric(&metrics, series), 1.0);
    assert_eq!(receiver.count().await, 2);
    // A payment after the expiry pairs with the next order, not with o-3.
    post(port, "payments", serde_json::json!({"amount": 30})).await;
    post(port, "orders", serde_json::json!({"id": "o-4"})).await;
    wait_until("the third shipment", Duration::from_secs(20), || async {
        receiver.count().await >= 3
    })
    .await;
    let bodies = receiver.bodies().await;
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[2], serde_json::json!({"order": "o-4", "amount": 30}));
}

/// A sensor with two dependencies and the given trigger `template_extra`
/// lines (indented by 8) under its template.
fn sensor_yaml(template_extra: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
    payments:
      port: "12000"
      endpoint: /payments
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: checkout
spec:
  dependencies:
    - name: order-placed
      eventSourceName: shop
      eventName: orders
    - name: payment-received
      eventSourceName: shop
      eventName: payments
  triggers:
    - template:
        name: ship
        log: {{}}
{template_extra}"#
    )
}

/// Loads `yaml`; the `FILE:LINE:COL: message` lines of its errors.
fn load_errors(yaml: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkout.yaml");
    std::fs::write(&path, yaml).expect("write config");
    match spillway::config::load(&[path.as_path()]) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| {
                let text = d.to_string();
                text.strip_prefix(&format!("{}:", path.display()))
                    .unwrap_or(&text)
                    .to_string()
            })
            .collect(),
    }
}

#[test]
fn conditions_are_validated_against_the_dependencies_with_positions() {
    let unknown = load_errors(&sensor_yaml(
        "        conditions: \"order-placed && payment-recieved\"\n",
    ));
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(
        unknown[0].starts_with("30:21: ")
            && unknown[0].contains("\"payment-recieved\" is not a dependency")
            && unknown[0].contains("did you mean \"payment-received\""),
        "{unknown:?}"
    );

    let syntax = load_errors(&sensor_yaml("        conditions: order-placed & x\n"));
    assert_eq!(syntax.len(), 1, "{syntax:?}");
    assert!(
        syntax[0].starts_with("30:21: ") && syntax[0].contains("must be doubled"),
        "{syntax:?}"
    );

    let reset = load_errors(&sensor_yaml(
        "        conditionsReset:\n          - byTime:\n              cron: \"0 * * * *\"\n              timezone: Mars/Olympus\n",
    ));
    assert_eq!(reset.len(), 1, "{reset:?}");
    assert!(
        reset[0].starts_with("33:25: ") && reset[0].contains("unknown timezone"),
        "{reset:?}"
    );

    let fine = load_errors(&sensor_yaml(
        "        conditions: \"order-placed && (payment-received || order-placed)\"\n        conditionsReset:\n          - byTime:\n              cron: \"0 9 * * *\"\n              timezone: America/New_York\n",
    ));
    assert!(fine.is_empty(), "{fine:?}");
    // Argo's default without conditions: all dependencies must arrive.
    assert!(load_errors(&sensor_yaml("")).is_empty());
}

/// Two dependencies on the same webhook told apart by `data` filters, and
/// no `conditions` (Argo: all must arrive): one run with both events.
#[tokio::test]
async fn dependencies_sharing_an_event_source_are_told_apart_by_filters() {
    shared_source_pairs(common::eventbus(1000)).await;
}

/// The same on JetStream, where the trigger's consumer is made of one
/// durable JetStream consumer per distinct subject.
#[tokio::test]
async fn dependencies_sharing_an_event_source_on_jetstream() {
    let nats = NatsServer::start().await;
    let bus = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    url: {}\n",
        nats.url
    );
    shared_source_pairs(bus).await;
}

async fn shared_source_pairs(bus: String) {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let config = format!(
        r#"{bus}---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    events:
      port: "{port}"
      endpoint: /events
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: checkout
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: events
      filters:
        data:
          - {{path: body.kind, type: string, value: [order]}}
    - name: payment
      eventSourceName: shop
      eventName: events
      filters:
        data:
          - {{path: body.kind, type: string, value: [payment]}}
  triggers:
    - template:
        name: ship
        http:
          url: {url}
          method: POST
          payload:
            - src: {{dependencyName: order, dataKey: body.id}}
              dest: order
            - src: {{dependencyName: payment, dataKey: body.id}}
              dest: payment
"#,
        url = receiver.url
    );
    let _spillway = Spillway::start(&config).await;
    post(
        port,
        "events",
        serde_json::json!({"kind": "payment", "id": "p-1"}),
    )
    .await;
    post(
        port,
        "events",
        serde_json::json!({"kind": "refund", "id": "r-1"}),
    )
    .await;
    post(
        port,
        "events",
        serde_json::json!({"kind": "order", "id": "o-1"}),
    )
    .await;
    wait_until("one shipment", Duration::from_secs(20), || async {
        receiver.count().await >= 1
    })
    .await;
    assert_eq!(
        receiver.bodies().await,
        [serde_json::json!({"order": "o-1", "payment": "p-1"})]
    );
}

/// What a multi-dependency sensor cannot do yet is refused at start-up
/// with its position, never ignored.
#[test]
fn run_refuses_priority_dispatch_on_a_multi_dependency_sensor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("checkout.yaml");
    let yaml = sensor_yaml("").replace(
        "spec:\n  dependencies:",
        "spec:\n  flowControl:\n    shedding: {queueDepthAbove: 100, shedPriorityAbove: 3}\n  dependencies:",
    );
    std::fs::write(&path, yaml).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("run")
        .arg("-f")
        .arg(&path)
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .expect("run spillway");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:20:15: sensor flowControl.priority/shedding is not supported on a sensor with several dependencies", path.display())),
        "{stderr}"
    );
}

#[test]
fn correlation_bounds_on_a_single_dependency_sensor_are_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("single.yaml");
    let yaml = sensor_yaml("      flowControl:\n        correlation: {maxWait: 1m}\n").replace(
        "    - name: payment-received\n      eventSourceName: shop\n      eventName: payments\n",
        "",
    );
    std::fs::write(&path, yaml).expect("write config");
    let config = spillway::config::load(&[path.as_path()]).expect("loads");
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(":28:22: ") && warnings[0].contains("correlation has no effect"),
        "{warnings:?}"
    );
}
