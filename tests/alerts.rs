//! Alerting end to end through the real binary: a bus kept full fires
//! QueueDepthExceeded (status, metric, log, Alertmanager), draining it
//! resolves the alert; and the exported Prometheus rules and Grafana
//! dashboard parse and name only metrics that `/metrics` serves.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(30);

/// An Alertmanager stand-in: records every alert POSTed to
/// `/api/v2/alerts`, with the time it arrived.
#[derive(Clone, Default)]
struct Alertmanager {
    received: Arc<Mutex<Vec<(SystemTime, Value)>>>,
}

impl Alertmanager {
    async fn start() -> (Alertmanager, String) {
        let am = Alertmanager::default();
        let received = Arc::clone(&am.received);
        let app = axum::Router::new().route(
            "/api/v2/alerts",
            axum::routing::post(move |axum::Json(batch): axum::Json<Vec<Value>>| {
                let received = Arc::clone(&received);
                async move {
                    let now = SystemTime::now();
                    received.lock().extend(batch.into_iter().map(|a| (now, a)));
                    axum::http::StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind alertmanager");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (am, format!("http://{addr}"))
    }

    /// Alerts named `name`, as received.
    fn alerts(&self, name: &str) -> Vec<(SystemTime, Value)> {
        self.received
            .lock()
            .iter()
            .filter(|(_, a)| a["labels"]["alertname"] == name)
            .cloned()
            .collect()
    }
}

fn time(value: &Value) -> SystemTime {
    humantime::parse_rfc3339(value.as_str().expect("a time string"))
        .unwrap_or_else(|e| panic!("{value} is not RFC 3339: {e}"))
}

/// Whether `alert` (received at `at`) says resolved: its `endsAt` is not
/// in the future. A firing alert's `endsAt` is minutes ahead.
fn is_resolved(at: SystemTime, alert: &Value) -> bool {
    time(&alert["endsAt"]) <= at + Duration::from_secs(5)
}

fn alert_rules(alertmanager: &str) -> String {
    format!(
        r#"apiVersion: spillway.io/v1alpha1
kind: AlertRules
metadata:
  name: alerts
spec:
  evaluationInterval: 100ms
  alertmanager:
    url: {alertmanager}
  rules:
    QueueDepthExceeded:
      for: 300ms
"#
    )
}

#[tokio::test]
async fn a_full_embedded_bus_fires_queue_depth_exceeded_and_draining_resolves_it() {
    full_bus_alert_cycle("", "embedded").await;
}

#[tokio::test]
async fn a_full_jetstream_bus_fires_queue_depth_exceeded_and_draining_resolves_it() {
    let nats = common::NatsServer::start().await;
    full_bus_alert_cycle(&format!("    url: {}\n", nats.url), "jetstream").await;
}

/// Fills a bus of 5 (`url_line` picks the backend) behind a closed
/// downstream, checks every place the alert shows up, then drains it.
async fn full_bus_alert_cycle(url_line: &str, backend: &str) {
    let (alertmanager, am_url) = Alertmanager::start().await;
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let bus = format!("apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n{url_line}    settings: |\n      max_msgs: 5");
    let config = format!(
        "{}\n---\n{}",
        common::orders_pipeline(
            &bus,
            port,
            "",
            &common::http_trigger("forward", &receiver.url)
        ),
        alert_rules(&am_url)
    );
    let mut spillway = Spillway::start(&config).await;
    let client = common::client();
    // 5 events with the downstream closed: depth 5 > 90% of max_msgs 5.
    for i in 0..5 {
        let answer = client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .body(format!(r#"{{"id":"o-{i}"}}"#))
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.status(), 200);
    }

    wait_until("a firing alert at Alertmanager", WAIT, || async {
        !alertmanager.alerts("QueueDepthExceeded").is_empty()
    })
    .await;
    let (at, firing) = alertmanager.alerts("QueueDepthExceeded")[0].clone();
    assert_eq!(firing["labels"]["severity"], "critical");
    assert_eq!(firing["labels"]["stream"], "default");
    assert!(
        !is_resolved(at, &firing),
        "first notification must be firing: {firing}"
    );
    assert!(time(&firing["startsAt"]) <= at);
    assert!(firing["annotations"]["summary"]
        .as_str()
        .is_some_and(|s| s.contains("bus default holds 5 messages")));
    assert!(firing["generatorURL"]
        .as_str()
        .is_some_and(|u| u.ends_with("/api/v1/status")));

    let status = spillway.status().await;
    assert_eq!(status["bus"]["backend"], backend);
    let alerts = status["alerts"].as_array().expect("alerts").clone();
    assert!(
        alerts
            .iter()
            .any(|a| a["alertname"] == "QueueDepthExceeded" && a["state"] == "firing"),
        "{status}"
    );
    let metrics = spillway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_alerts_firing{alertname="QueueDepthExceeded",severity="critical"}"#
        ),
        1.0
    );

    // `spillway status` shows it on one screen.
    let screen = spillway_output(&["status", "--admin", &spillway.admin, "--interval", "200ms"]);
    for expected in [
        "depth                  5 / 5              (100.0%)",
        "orders/forward",
        "ALERTS 1 firing",
        "FIRING   critical  QueueDepthExceeded {stream=default}",
    ] {
        assert!(
            screen.contains(expected),
            "missing {expected:?} in:\n{screen}"
        );
    }

    receiver.open();
    wait_until("a resolved notification", WAIT, || async {
        alertmanager
            .alerts("QueueDepthExceeded")
            .iter()
            .any(|(at, a)| is_resolved(*at, a))
    })
    .await;
    let notifications = alertmanager.alerts("QueueDepthExceeded");
    let last = &notifications.last().expect("notifications").1;
    assert_eq!(last["labels"]["stream"], "default");
    assert_eq!(last["startsAt"], firing["startsAt"]);
    assert!(spillway.status().await["alerts"]
        .as_array()
        .is_some_and(|a| a.is_empty()));
    assert_eq!(
        metric(
            &spillway.metrics().await,
            r#"spillway_alerts_firing{alertname="QueueDepthExceeded",severity="critical"}"#
        ),
        0.0
    );
    assert!(spillway.terminate().await.success());
    // One log line per transition.
    let log = spillway.log_text();
    assert_eq!(
        log.matches(r#"alert QueueDepthExceeded{stream="default"} firing"#)
            .count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches(r#"alert QueueDepthExceeded{stream="default"} resolved"#)
            .count(),
        1,
        "{log}"
    );
}

fn spillway_output(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(args)
        .output()
        .expect("run spillway");
    assert!(
        output.status.success(),
        "spillway {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Metric families `/metrics` declares (`# TYPE name kind`).
fn declared(metrics: &str) -> BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn exported_rules_and_dashboard_parse_and_name_only_served_metrics() {
    use spillway::telemetry::alerts::export::{metric_names, RuleFile};

    let rules_text = spillway_output(&["alerts", "export"]);
    let rules: RuleFile = serde_saphyr::from_str(&rules_text).expect("rule file is YAML");
    let group = &rules.groups[0];
    let names: Vec<&str> = group.rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(
        names,
        [
            "QueueDepthExceeded",
            "ConsumerLagIncreasing",
            "ProducerBlockTime",
            "EventAgeHigh",
            "SensorLatencyIncreasing",
            "WorkflowsPendingGrowing",
            "BusMemoryHigh"
        ]
    );
    for rule in &group.rules {
        assert!(!rule.expr.is_empty() && !rule.for_duration.is_empty());
        assert!(["critical", "high", "medium"].contains(&rule.labels["severity"].as_str()));
        assert!(!rule.annotations["summary"].is_empty());
    }
    let dashboard: Value =
        serde_json::from_str(&spillway_output(&["dashboard", "export"])).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let dashboard_exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().expect("targets").clone())
        .map(|t| t["expr"].as_str().expect("expr").to_string())
        .collect();

    // A pipeline that has every kind of series: an event through a
    // trigger, a workflow template with a semaphore, an Alertmanager.
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let config = format!(
        "{}\n---\n{}\n---\n{}",
        common::orders_pipeline("", port, "", &common::http_trigger("forward", &receiver.url)),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: workflow-semaphores\ndata:\n  api-calls: \"5\"\n---\napiVersion: argoproj.io/v1alpha1\nkind: WorkflowTemplate\nmetadata:\n  name: api-consumer\nspec:\n  synchronization:\n    semaphore:\n      configMapKeyRef:\n        name: workflow-semaphores\n        key: api-calls\n  templates:\n    - name: main\n      script:\n        source: \"true\"",
        alert_rules(&format!("http://127.0.0.1:{}", free_port()))
    );
    let mut spillway = Spillway::start(&config).await;
    let answer = common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .body(r#"{"id":"o-1"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), 200);
    wait_until("the event downstream", WAIT, || async {
        receiver.count().await == 1
    })
    .await;
    let served = declared(&spillway.metrics().await);
    let mut missing = Vec::new();
    for expr in group
        .rules
        .iter()
        .map(|r| r.expr.clone())
        .chain(dashboard_exprs)
    {
        for name in metric_names(&expr) {
            if !served.contains(&name) {
                missing.push(format!("{name} (in {expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not on /metrics: {missing:#?}\nserved: {served:#?}"
    );
    assert!(spillway.terminate().await.success());
}

#[test]
fn alerts_export_uses_the_configured_thresholds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("alerts.yaml");
    std::fs::write(
        &file,
        "apiVersion: spillway.io/v1alpha1\nkind: AlertRules\nmetadata:\n  name: alerts\nspec:\n  rules:\n    QueueDepthExceeded:\n      above: 5000\n      ratioOfMax: 0.5\n      for: 1m\n    BusMemoryHigh:\n      enabled: false\n",
    )
    .expect("write");
    let text = spillway_output(&["alerts", "export", "-f", file.to_str().expect("path")]);
    let rules: spillway::telemetry::alerts::export::RuleFile =
        serde_saphyr::from_str(&text).expect("YAML");
    let depth = &rules.groups[0].rules[0];
    assert_eq!(depth.alert, "QueueDepthExceeded");
    assert!(depth
        .expr
        .starts_with("spillway_bus_messages > 5000 or (spillway_bus_messages > 0.5 *"));
    assert_eq!(depth.for_duration, "1m");
    assert!(rules.groups[0]
        .rules
        .iter()
        .all(|r| r.alert != "BusMemoryHigh"));
}

#[test]
fn bad_alert_rules_are_reported_with_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("alerts.yaml");
    std::fs::write(
        &file,
        "apiVersion: spillway.io/v1alpha1\nkind: AlertRules\nmetadata:\n  name: alerts\nspec:\n  evaluationInterval: 10ms\n  alertmanager:\n    url: ftp://nowhere\n  rules:\n    QueueDepthExceded:\n      above: 5\n    BusMemoryHigh:\n      ratioOfMax: 1.5\n",
    )
    .expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["validate", "-f", file.to_str().expect("path")])
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = file.display();
    for expected in [
        format!("{path}:6:23: evaluationInterval must be at least 100ms"),
        format!(
            "{path}:8:10: alertmanager url \"ftp://nowhere\" must start with http:// or https://"
        ),
        format!("{path}:10:5: unknown field `QueueDepthExceded`"),
        format!("{path}:13:19: ratioOfMax must be above 0 and at most 1, found 1.5"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
