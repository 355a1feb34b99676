//! The webhook's ingress flow control through the real binary: the rate
//! limit and priority shedding answer 429 before the body is read, with the
//! reason and an honest `Retry-After`.

mod common;

use common::{free_port, metric, Receiver, Spillway};

/// One webhook with the given `flowControl:` lines (indented for the
/// block), feeding an http trigger towards `downstream`.
fn pipeline(port: u16, downstream: &str, flow_control: &str) -> String {
    let bus = "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    settings: |\n      max_msgs: 1000";
    common::orders_pipeline(
        bus,
        port,
        &format!("      flowControl:\n{flow_control}"),
        &common::http_trigger("forward", downstream),
    )
}

async fn post(port: u16, priority: Option<&str>) -> reqwest::Response {
    let mut request = common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(r#"{"id":"o-1"}"#);
    if let Some(p) = priority {
        request = request.header("x-priority", p);
    }
    request.send().await.expect("POST /orders")
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds")
}

fn source_events(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_total{{source="shop",event="orders",outcome="{outcome}"}}"#
        ),
    )
}

#[tokio::test]
async fn ingress_rate_limit_answers_429_with_the_exact_wait() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    // One per hour after a burst of 3: the test cannot be slow enough for
    // the next token to arrive.
    let flow = "        rateLimit: {requestsPerUnit: 1, unit: Hour, burst: 3}";
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, flow)).await;
    for i in 0..3 {
        assert_eq!(post(port, None).await.status(), 200, "request {i}");
    }
    let refused = post(port, None).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-spillway-reason"], "rate_limited");
    let wait = retry_after(&refused);
    assert!((3500..=3600).contains(&wait), "Retry-After {wait}");
    let body: serde_json::Value = refused.json().await.expect("JSON error body");
    assert_eq!(body["reason"], "rate_limited");

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), 3.0);
    assert_eq!(source_events(&metrics, "rate_limited"), 1.0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn low_priority_is_shed_while_the_bus_is_deep_and_priority_0_never() {
    // The downstream holds every call, so accepted events stay on the bus.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let flow = "        priority: {header: X-Priority, default: 5}\n        shedding: {queueDepthAbove: 2, shedPriorityAbove: 2}";
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url, flow)).await;
    // Depth 0, 1, 2: not above 2, everyone is admitted.
    for i in 0..3 {
        assert_eq!(post(port, None).await.status(), 200, "request {i}");
    }
    // Depth 3 > 2: priorities 3..9 (and the default 5) are shed.
    for priority in [None, Some("3"), Some("9"), Some("250"), Some("junk")] {
        let shed = post(port, priority).await;
        assert_eq!(shed.status(), 429, "priority {priority:?}");
        assert_eq!(shed.headers()["x-spillway-reason"], "shed");
        assert!(retry_after(&shed) >= 1);
    }
    // 0, 1 and 2 still get in, however deep the bus is.
    for priority in ["2", "1", "0", "0"] {
        assert_eq!(
            post(port, Some(priority)).await.status(),
            200,
            "priority {priority}"
        );
    }
    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), 7.0);
    assert_eq!(source_events(&metrics, "shed"), 5.0);
    assert_eq!(spillway.status().await["bus"]["messages"], 7);
    receiver.open();
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn flow_control_values_out_of_range_are_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    let flow = "        rateLimit: {requestsPerUnit: 0}\n        priority: {header: \"X Priority\", default: 12}\n        shedding: {queueDepthAbove: 2, shedPriorityAbove: 10}";
    std::fs::write(&file, pipeline(12000, "http://127.0.0.1:1/x", flow)).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("validate")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run validate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = file.display();
    for expected in [
        format!("{path}:21:38: requestsPerUnit must be at least 1"),
        format!("{path}:22:28: \"X Priority\" is not a valid HTTP header name"),
        format!("{path}:22:51: priority.default must be a priority from 0 (most important) to 9"),
        format!("{path}:23:59: shedPriorityAbove must be a priority from 0 (most important) to 9"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
