//! Issue 7, store for later: rejected events go to the durable backlog
//! store, `spillway backlog list` shows them, and `spillway backlog replay`
//! puts them back through the running pipeline, resumable after a kill.

mod common;

use common::*;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

fn spillway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_spillway"))
}

/// Posts `count` events `{"n": i}` to the webhook, 16 at a time; every one
/// must be accepted.
async fn publish(port: u16, count: usize) {
    let client = client();
    let url = format!("http://127.0.0.1:{port}/orders");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let client = client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            for n in (worker..count).step_by(16) {
                let response = client
                    .post(&url)
                    .body(format!("{{\"n\":{n}}}"))
                    .send()
                    .await
                    .expect("POST event");
                assert_eq!(response.status(), 200, "event {n}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("publisher task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_are_replayed_gradually_each_delivered_once_across_a_killed_replay() {
    let receiver = Receiver::start(true).await;
    receiver.set_refusing(true);
    let port = free_port();
    let triggers = format!(
        "{}      flowControl:\n        onReject: backlog\n",
        http_trigger("api", &receiver.url)
    );
    let config = orders_pipeline("", port, "", &triggers);
    let data = tempfile::tempdir().expect("tempdir");
    let pipeline = Spillway::start_in(&config, data.path()).await;

    // Downstream down: every event is rejected and stored, none is lost.
    publish(port, 1000).await;
    wait_until(
        "1000 events in the backlog",
        Duration::from_secs(120),
        || async { metric(&pipeline.metrics().await, "spillway_backlog_events ") == 1000.0 },
    )
    .await;
    let metrics = pipeline.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_trigger_invocations_total{sensor="orders",trigger="api",outcome="backlog"}"#
        ),
        1000.0
    );
    wait_until(
        "the bus to release them",
        Duration::from_secs(30),
        || async {
            metric(
                &pipeline.metrics().await,
                r#"spillway_bus_messages{stream="default"}"#,
            ) == 0.0
        },
    )
    .await;
    assert_eq!(receiver.count().await, 0);

    let list = spillway()
        .args(["backlog", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("spillway backlog list");
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{listed}");
    assert!(listed.contains(": 1000 event(s), "), "{listed}");
    assert!(listed.contains("orders/api"), "{listed}");

    // Downstream back. A first replay is killed part-way; a second finishes.
    receiver.set_refusing(false);
    let replay_args = [
        "backlog",
        "replay",
        "--admin",
        pipeline.admin.as_str(),
        "--rate",
        "100",
        "--max-rate",
        "1000",
    ];
    let mut first = spillway()
        .args(replay_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spillway backlog replay");
    wait_until("part of the replay", Duration::from_secs(60), || async {
        receiver.count().await >= 300
    })
    .await;
    first.kill().expect("kill the first replay");
    let _ = first.wait();
    let stored_after_kill = metric(&pipeline.metrics().await, "spillway_backlog_events ");
    assert!(
        stored_after_kill > 0.0 && stored_after_kill < 1000.0,
        "{stored_after_kill} left after the kill"
    );

    let second = spillway()
        .args(replay_args)
        .output()
        .expect("spillway backlog replay");
    let report = String::from_utf8_lossy(&second.stdout);
    assert!(
        second.status.success(),
        "{report}\n{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(report.contains("replayed "), "{report}");

    wait_until(
        "every replayed event delivered",
        Duration::from_secs(60),
        || async {
            let metrics = pipeline.metrics().await;
            metric(&metrics, "spillway_backlog_events ") == 0.0
                && metric(&metrics, r#"spillway_bus_messages{stream="default"}"#) == 0.0
                && receiver.count().await >= 1000
        },
    )
    .await;
    let bodies = receiver.bodies().await;
    let numbers: HashSet<u64> = bodies
        .iter()
        .filter_map(|b| b["body"]["n"].as_u64())
        .collect();
    assert_eq!(numbers.len(), 1000, "distinct events delivered");
    assert_eq!(bodies.len(), 1000, "each event delivered exactly once");
}

/// Seed 07 verbatim: the store-for-later trigger keeps every event; replay
/// refuses to send them back to a trigger that would only store them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_store_for_later_trigger_keeps_events_and_replay_says_why_it_skips_them() {
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/seed/07-store-for-later.yaml"
    ))
    .expect("read seed 07");
    let port = free_port();
    let config = seed.replace("port: \"12000\"", &format!("port: \"{port}\""));
    let pipeline = Spillway::start(&config).await;
    publish(port, 3).await;
    // The gauge counts a record from the moment its space is reserved; the
    // listing shows it once it is written and synced.
    wait_until("3 stored events", Duration::from_secs(30), || async {
        let listing: serde_json::Value = common::client()
            .get(format!("{}/api/v1/backlog", pipeline.admin))
            .send()
            .await
            .expect("GET /api/v1/backlog")
            .json()
            .await
            .expect("backlog listing");
        metric(&pipeline.metrics().await, "spillway_backlog_events ") == 3.0
            && listing["names"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    let replay = spillway()
        .args(["backlog", "replay", "--admin", pipeline.admin.as_str()])
        .output()
        .expect("spillway backlog replay");
    let report = String::from_utf8_lossy(&replay.stdout);
    assert_eq!(replay.status.code(), Some(1), "{report}");
    assert!(report.contains("3 left in the store"), "{report}");
    assert!(report.contains("would only store it again"), "{report}");
    assert_eq!(
        metric(&pipeline.metrics().await, "spillway_backlog_events "),
        3.0
    );
}

#[test]
fn replay_without_a_running_pipeline_says_what_it_needs() {
    let port = free_port();
    let output = spillway()
        .args(["backlog", "replay", "--admin"])
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("spillway backlog replay");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the running pipeline"),
        "{stderr}"
    );
    assert!(stderr.contains("spillway run"), "{stderr}");
}
