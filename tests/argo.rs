//! The Argo-shaped sensors of `examples/argo/` through the real binary:
//! `k8s` triggers creating Workflows, parameterised from webhook and
//! calendar events, whose scripts append the values they received to a
//! file the test reads. Only the ports and that file's path are changed.

mod common;

use common::{client, free_port, metric, wait_until, Spillway};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/argo")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn post(port: u16, endpoint: &str, body: serde_json::Value) {
    let response = client()
        .post(format!("http://127.0.0.1:{port}{endpoint}"))
        .json(&body)
        .send()
        .await
        .expect("POST to the webhook");
    assert_eq!(response.status(), 200, "{body}");
}

fn invocations(metrics: &str, sensor: &str, trigger: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_trigger_invocations_total{{sensor="{sensor}",trigger="{trigger}",outcome="{outcome}"}}"#
        ),
    )
}

#[tokio::test]
async fn webhook_sensor_runs_its_k8s_workflow_with_the_event_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("orders.log");
    let port = free_port();
    let config = example("webhook-workflow.yaml")
        .replace("12000", &port.to_string())
        .replace("/tmp/spillway-argo-orders.log", &log.display().to_string());
    let spillway = Spillway::start(&config).await;
    // No order id and no default: the parameter fails, so the event fails
    // permanently (no workflow, no retries).
    post(
        port,
        "/orders",
        serde_json::json!({"type": "purchase", "order": {"customer": "x"}}),
    )
    .await;
    // Filtered out by the dependency's data filter.
    post(
        port,
        "/orders",
        serde_json::json!({"type": "refund", "order": {"id": "o-9", "customer": "z"}}),
    )
    .await;
    post(
        port,
        "/orders",
        serde_json::json!({"type": "purchase", "order": {"id": "o-1", "customer": "ada"}}),
    )
    .await;
    // No customer: the template renders nothing, so its `value` is used.
    post(
        port,
        "/orders",
        serde_json::json!({"type": "purchase", "order": {"id": "o-2"}}),
    )
    .await;
    wait_until("two workflows and one failure", LIMIT, || async {
        let metrics = spillway.metrics().await;
        lines(&log).len() >= 2 && invocations(&metrics, "orders", "process-order", "failure") >= 1.0
    })
    .await;
    wait_until("an empty bus", LIMIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let mut got = lines(&log);
    got.sort();
    assert_eq!(got, ["o-1 ADA", "o-2 anonymous"]);
    let metrics = spillway.metrics().await;
    assert_eq!(
        invocations(&metrics, "orders", "process-order", "success"),
        2.0
    );
    assert_eq!(
        invocations(&metrics, "orders", "process-order", "failure"),
        1.0
    );
    assert_eq!(
        invocations(&metrics, "orders", "process-order", "retry"),
        0.0
    );
    let text = spillway.log_text();
    assert!(
        text.contains("body.order.id"),
        "the failure names the parameter:\n{text}"
    );
    // The lifted inline template runs under the trigger's name.
    assert!(
        metrics.contains(r#"template="orders/process-order""#),
        "{metrics}"
    );
}

#[tokio::test]
async fn calendar_sensor_submits_its_workflow_template_with_context_and_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("reports.log");
    let config = example("calendar-workflow.yaml")
        .replace("interval: 1h", "interval: 1s")
        .replace("/tmp/spillway-argo-reports.log", &log.display().to_string());
    let spillway = Spillway::start(&config).await;
    wait_until("a report", LIMIT, || async { !lines(&log).is_empty() }).await;
    let first = lines(&log).remove(0);
    let fields: Vec<&str> = first.split(' ').collect();
    assert_eq!(fields.len(), 3, "{first}");
    // `prepend`: the template's value before the resource's "-report".
    assert_eq!(fields[0], "usage-report");
    // contextKey: source (the EventSource's name).
    assert_eq!(fields[1], "calendar");
    // dataKey: eventTime, an RFC 3339 time.
    assert!(
        chrono::DateTime::parse_from_rfc3339(fields[2]).is_ok(),
        "{first}"
    );
    let metrics = spillway.metrics().await;
    assert!(
        metrics.contains(r#"template="usage-report""#),
        "the WorkflowTemplate's gauges are there:\n{metrics}"
    );
}

#[tokio::test]
async fn workflows_from_a_file_and_a_configmap_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("greetings.log");
    let resource: PathBuf = dir.path().join("hello-workflow.json");
    let log_text = log.display().to_string();
    std::fs::write(
        &resource,
        example("resources/hello-workflow.json")
            .replace("/tmp/spillway-argo-greetings.log", &log_text),
    )
    .expect("write the resource file");
    let port = free_port();
    let config = example("file-workflow.yaml")
        .replace("12001", &port.to_string())
        .replace("/tmp/spillway-argo-greetings.log", &log_text)
        .replace(
            "path: resources/hello-workflow.json",
            &format!("path: {}", resource.display()),
        );
    let _spillway = Spillway::start(&config).await;
    post(port, "/greet", serde_json::json!({"name": "ada"})).await;
    wait_until("both workflows", LIMIT, || async { lines(&log).len() >= 2 }).await;
    let mut got = lines(&log);
    got.sort();
    assert_eq!(got, ["bye ada", "hello ada"]);
}

/// `examples/argo/webhook-http.yaml` against real receivers: payload values
/// are text unless `useRawData`, `http.parameters` set a header from the
/// event, the trigger-level `http.url` parameter routes by a template (its
/// default when the template renders nothing), and `dest: ""` forwards the
/// webhook body as the whole request body.
#[tokio::test]
async fn http_triggers_apply_parameters_like_argo() {
    let [normal, high, forwarded] = [
        common::Receiver::start(true).await,
        common::Receiver::start(true).await,
        common::Receiver::start(true).await,
    ];
    let port = free_port();
    let config = example("webhook-http.yaml")
        .replace("12001", &port.to_string())
        .replace("http://127.0.0.1:12002/hook", &normal.url)
        .replace("http://127.0.0.1:12004/hook", &high.url)
        .replace("http://127.0.0.1:12003/hook", &forwarded.url);
    let spillway = Spillway::start(&config).await;
    let orders = [
        serde_json::json!({"id": "o-1", "total": 42, "priority": "high", "lines": [{"sku": "a"}]}),
        serde_json::json!({"id": "o-2", "total": 7.5, "lines": []}),
    ];
    for order in &orders {
        post(port, "/orders", order.clone()).await;
    }
    wait_until("both triggers ran for both orders", LIMIT, || async {
        high.count().await == 1 && normal.count().await == 1 && forwarded.count().await == 2
    })
    .await;
    assert_eq!(
        high.bodies().await,
        [
            serde_json::json!({"order": {"id": "o-1", "total": "42", "amount": 42}, "lines": r#"[{"sku":"a"}]"#})
        ]
    );
    assert_eq!(
        normal.bodies().await,
        [serde_json::json!({"order": {"id": "o-2", "total": "7.5", "amount": 7.5}, "lines": "[]"})]
    );
    let mut bodies = forwarded.bodies().await;
    bodies.sort_by_key(|b| b["id"].as_str().map(str::to_string));
    assert_eq!(bodies, orders);
    // The header is the event's id: a UUID, one per event.
    let mut ids = Vec::new();
    for receiver in [&high, &normal] {
        let headers = receiver.headers().await;
        let id = headers[0]
            .get("x-event-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "X-Event-Id {id:?}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
    let metrics = spillway.metrics().await;
    assert_eq!(
        invocations(&metrics, "orders-http", "notify", "success"),
        2.0
    );
    assert_eq!(
        invocations(&metrics, "orders-http", "forward", "success"),
        2.0
    );
}
