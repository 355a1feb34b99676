//! `spillway storm` against a real `spillway run`: the report's counts are
//! the pipeline's own (`spillway_source_events_total`), the admin API is
//! sampled into the report, and every accepted event id reaches the
//! downstream once.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use std::collections::HashSet;
use std::time::Duration;

fn source_events(metrics: &str, outcome: &str) -> u64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_total{{source="shop",event="orders",outcome="{outcome}"}}"#
        ),
    ) as u64
}

/// Runs `spillway storm` with `args` (plus `--out`), returns report.json.
async fn storm(args: &[&str], out: &std::path::Path) -> serde_json::Value {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("storm")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .await
        .expect("run spillway storm");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "storm failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("report:"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).expect("report.json"))
        .expect("report JSON")
}

#[tokio::test]
async fn storm_report_matches_the_pipeline_metrics() {
    // The downstream holds every call, so the 20-event bus fills and the
    // rest of the storm is answered 429 bus_full.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let bus = "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    settings: |\n      max_msgs: 20";
    let config = common::orders_pipeline(
        bus,
        port,
        "",
        &common::http_trigger("forward", &receiver.url),
    );
    let mut spillway = Spillway::start(&config).await;
    let out = tempfile::tempdir().expect("tempdir");

    let url = format!("http://127.0.0.1:{port}/orders");
    let report = storm(
        &[
            "--url",
            &url,
            "--admin",
            &spillway.admin,
            "--rate",
            "50",
            "--duration",
            "2s",
            "--timeout",
            "5s",
            "--payload-bytes",
            "300",
            "--priorities",
            "0:1,5:3",
        ],
        out.path(),
    )
    .await;
    let totals = &report["totals"];
    let count = |field: &str| totals[field].as_u64().unwrap_or(u64::MAX);
    // 50/s for 2 s, all sent (nothing outstanding for long).
    assert_eq!(count("sent"), 100);
    assert_eq!(count("dropped_by_generator"), 0);
    assert_eq!(
        count("accepted") + count("rejected_bus_full"),
        100,
        "{totals}"
    );
    assert_eq!(count("accepted"), 20, "the bus holds 20: {totals}");
    assert_eq!(
        count("errors") + count("server_errors") + count("client_errors"),
        0
    );

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), count("accepted"));
    assert_eq!(
        source_events(&metrics, "bus_full"),
        count("rejected_bus_full")
    );

    // Per-second buckets add up to the totals.
    let seconds = report["seconds"].as_array().expect("seconds");
    let sum = |field: &str| -> u64 { seconds.iter().filter_map(|b| b[field].as_u64()).sum() };
    assert_eq!(sum("sent"), 100);
    assert_eq!(sum("accepted"), 20);
    assert_eq!(seconds[0]["sent"], 50);
    assert_eq!(seconds[1]["sent"], 50);

    // The admin API was sampled: the bus reached its limit.
    let samples = report["admin"]["samples"].as_array().expect("samples");
    assert!(!samples.is_empty());
    assert!(
        samples.iter().any(|s| s["bus_messages"] == 20),
        "{samples:?}"
    );
    assert_eq!(samples[0]["bus_max_messages"], 20);
    for file in [
        "report.md",
        "rate.svg",
        "latency.svg",
        "queue_depth.svg",
        "lag.svg",
    ] {
        let text = std::fs::read_to_string(out.path().join(file)).expect(file);
        if file.ends_with(".svg") {
            roxmltree::Document::parse(&text).expect("well-formed SVG");
        }
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).expect("report.md");
    assert!(md.contains("| accepted (2xx) | 20 |"), "{md}");
    assert!(md.contains("| 429 bus_full | 80 |"), "{md}");

    // No loss: every accepted id reaches the downstream, once (the http
    // trigger posts the event with its body under "body").
    receiver.open();
    wait_until(
        "the downstream to get 20 events",
        Duration::from_secs(30),
        || async { receiver.count().await >= 20 },
    )
    .await;
    let bodies = receiver.bodies().await;
    let ids: HashSet<String> = bodies
        .iter()
        .filter_map(|b| b["body"]["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 20, "{bodies:?}");
    assert!(ids.iter().all(|id| id
        .strip_prefix("storm-")
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n < 100)));
    // The priority mix went out in the body (and in X-Priority).
    let priorities: HashSet<u64> = bodies
        .iter()
        .filter_map(|b| b["body"]["priority"].as_u64())
        .collect();
    assert!(
        priorities.is_subset(&HashSet::from([0, 5])),
        "{priorities:?}"
    );
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn closed_loop_honours_retry_after_and_counts_like_the_pipeline() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    // 10 events per second after a burst of 10: two workers answered at
    // once run into the limit and wait out its Retry-After.
    let config = common::orders_pipeline(
        "",
        port,
        "      flowControl:\n        rateLimit: {requestsPerUnit: 10, unit: Second, burst: 10}",
        &common::http_trigger("forward", &receiver.url),
    );
    let mut spillway = Spillway::start(&config).await;
    let out = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{port}/orders");
    let report = storm(
        &[
            "--url",
            &url,
            "--mode",
            "closed",
            "--concurrency",
            "2",
            "--duration",
            "2500ms",
            "--honor-retry-after",
        ],
        out.path(),
    )
    .await;
    let totals = &report["totals"];
    let count = |field: &str| totals[field].as_u64().unwrap_or(u64::MAX);
    assert_eq!(report["run"]["mode"], "closed");
    assert!(count("retries") >= 2, "each worker retried: {totals}");
    assert!(count("rejected_rate_limited") >= 2, "{totals}");
    // Every attempt (first or retry) got exactly one answer.
    assert_eq!(
        count("accepted") + count("rejected_rate_limited"),
        count("sent") + count("retries"),
        "{totals}"
    );
    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), count("accepted"));
    assert_eq!(
        source_events(&metrics, "rate_limited"),
        count("rejected_rate_limited")
    );
    assert!(report["admin"].is_null());
    assert!(!out.path().join("queue_depth.svg").exists());
    assert!(spillway.terminate().await.success());
}
