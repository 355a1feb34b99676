//! The embedded bus is durable: `kill -9` of spillway loses no accepted
//! event, and an event whose trigger was running when the process died (so
//! it was never acked) is delivered again after the restart (at least once),
//! including one whose trigger had already succeeded when the process died.

mod common;

use common::{free_port, wait_until, Receiver, Spillway};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn pipeline(port: u16, downstream: &str) -> String {
    let trigger = common::http_trigger("forward", downstream)
        + "      flowControl:\n        concurrency: fixed\n        maxInFlight: 4\n";
    common::orders_pipeline("", port, "", &trigger)
}

#[tokio::test]
async fn kill_9_loses_no_accepted_event_and_redelivers_unacked_ones() {
    // Holds every call: triggers run but never finish, so nothing is acked.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let data = tempfile::tempdir().expect("tempdir");
    let config = pipeline(port, &receiver.url);
    let mut first = Spillway::start_in(&config, data.path()).await;
    post_orders(port, 6).await;
    // 4 are in flight at the downstream (maxInFlight), 2 wait in the bus.
    wait_until("4 calls in flight", WAIT, || async {
        receiver.arrivals() >= 4
    })
    .await;
    first.kill();
    let held_before = receiver.arrivals();

    let mut second = Spillway::start_in(&config, data.path()).await;
    receiver.open();
    wait_until("every event acked after the restart", WAIT, || async {
        second.status().await["bus"]["messages"] == 0
    })
    .await;
    let mut ids: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["body"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids, ["o-0", "o-1", "o-2", "o-3", "o-4", "o-5"]);
    // The 4 calls that were running when the process died were redelivered:
    // at least 4 + 6 arrivals in total.
    assert!(held_before >= 4);
    assert!(
        receiver.arrivals() >= held_before + 6,
        "arrivals {} (held before the kill {held_before})",
        receiver.arrivals()
    );
    assert!(second.terminate().await.success());
}

#[tokio::test]
async fn a_crash_between_trigger_success_and_ack_redelivers_the_event() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let data = tempfile::tempdir().expect("tempdir");
    let config = pipeline(port, &receiver.url);
    let mut first = Spillway::start_crashing_at(
        &config,
        data.path(),
        spillway::failpoint::CrashPoint::AfterTriggerSuccess,
    )
    .await;
    let response = common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(r#"{"id":"o-1"}"#)
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 200);
    // The downstream answered 200, then the process died before the ack.
    let status = first.terminate_wait().await;
    assert!(!status.success(), "the crash point aborts: {status}");
    assert!(
        first.log_text().contains("after-trigger-success"),
        "died somewhere else:\n{}",
        first.log_text()
    );
    assert_eq!(receiver.arrivals(), 1);

    let mut second = Spillway::start_in(&config, data.path()).await;
    wait_until("the event is acked after the restart", WAIT, || async {
        second.status().await["bus"]["messages"] == 0
    })
    .await;
    // At least once: the downstream saw the same event twice, and nothing
    // else.
    let ids: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["body"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["o-1", "o-1"]);
    assert!(second.terminate().await.success());
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let receiver = Receiver::start(true).await;
    let data = tempfile::tempdir().expect("tempdir");
    let mut first = Spillway::start_in(&pipeline(free_port(), &receiver.url), data.path()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline(free_port(), &receiver.url)).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "--admin", "127.0.0.1:0", "-f"])
        .arg(&file)
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .expect("run a second spillway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is in use by another spillway process"),
        "{stderr}"
    );
    assert!(first.terminate().await.success());
}

/// A sensor removed from the config leaves a durable consumer behind that
/// holds its unacked events (and would hold every new one): on restart the
/// embedded bus deletes it, so the queue depth is no longer pinned.
#[tokio::test]
async fn a_sensor_removed_from_the_config_does_not_pin_the_bus() {
    let forward = Receiver::start(true).await;
    // Holds every call: the audit sensor never acks.
    let hold = Receiver::start(false).await;
    let port = free_port();
    let data = tempfile::tempdir().expect("tempdir");
    let kept = pipeline(port, &forward.url);
    let audit = common::sensor(
        "audit",
        "shop",
        "orders",
        &common::http_trigger("hold", &hold.url),
    );
    let mut first = Spillway::start_in(&format!("{kept}\n---\n{audit}"), data.path()).await;
    post_orders(port, 3).await;
    // The audit trigger's adaptive window starts at one call: one event in
    // its call, two waiting in the bus, all three unacked.
    wait_until("forwarded, and held by the audit sensor", WAIT, || async {
        forward.count().await >= 3
            && hold.arrivals() >= 1
            && first.status().await["bus"]["messages"] == 3
    })
    .await;
    first.kill();

    // Without any sensor (the consumers are down on purpose) nothing is
    // deleted: the events keep waiting for them.
    let sources_only: Vec<&str> = kept
        .split("\n---\n")
        .filter(|doc| !doc.contains("kind: Sensor"))
        .collect();
    let mut idle = Spillway::start_in(&sources_only.join("\n---\n"), data.path()).await;
    assert_eq!(idle.status().await["bus"]["messages"], 3);
    assert!(idle
        .log_text()
        .contains("keeping the bus's 2 durable consumer(s)"));
    assert!(idle.terminate().await.success());

    // Without the audit sensor, but also without --prune-consumers (the
    // file might just have been forgotten): listed, not deleted.
    let mut listed = Spillway::start_in(&kept, data.path()).await;
    assert_eq!(listed.status().await["bus"]["messages"], 3);
    let log = listed.log_text();
    assert!(
        log.contains(
            r#"durable consumer(s) ["audit-hold"] on the bus belong to no sensor trigger"#
        ),
        "{log}"
    );
    assert!(!log.contains("deleted durable consumer"), "{log}");
    assert!(listed.terminate().await.success());

    let mut second = Spillway::start_in_with(&kept, data.path(), &["--prune-consumers"]).await;
    wait_until("the audit sensor's events released", WAIT, || async {
        second.status().await["bus"]["messages"] == 0
    })
    .await;
    let log = second.log_text();
    assert!(
        log.contains(r#"deleted durable consumer "audit-hold""#),
        "{log}"
    );
    assert!(!log.contains(r#"deleted durable consumer "orders-forward""#));
    assert!(second.terminate().await.success());
}

/// POSTs orders `o-0` … `o-{n-1}` to the webhook on `port`; each must be
/// accepted (`200`).
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
        assert_eq!(response.status(), 200, "event {i}");
    }
}
