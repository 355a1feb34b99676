//! `spillway publish` against a running pipeline whose bus is too small for
//! the input: it waits out the 429s, resends, and every line arrives once.

mod common;

use common::{eventbus, free_port, http_trigger, orders_pipeline, wait_until, Receiver, Spillway};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn publish(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("publish")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spillway publish");
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("spillway publish")
}

/// 300 lines into a bus of 20 drained at 200/s: the bus answers 429 with
/// Retry-After, `publish` waits and resends, exits 0, and the downstream
/// gets each of the 300 exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn publish_waits_out_a_full_bus_and_loses_nothing() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let trigger = format!(
        "{}      rateLimit: {{requestsPerUnit: 200, unit: Second}}\n",
        http_trigger("forward", &receiver.url)
    );
    let _spillway = Spillway::start(&orders_pipeline(&eventbus(20), port, "", &trigger)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("events.jsonl");
    let lines: String = (0..300)
        .map(|i| format!("{{\"id\":\"e-{i}\"}}\n"))
        .collect();
    std::fs::write(&file, lines).expect("write events");
    let url = format!("http://127.0.0.1:{port}/orders");
    let file_arg = file.to_str().expect("utf-8 path").to_string();
    let output = tokio::task::spawn_blocking(move || {
        publish(&[&url, "--file", &file_arg, "--concurrency", "16"], None)
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("published: 300 accepted ("), "{stderr}");
    assert!(
        !stderr.contains("(0 resent"),
        "the bus never pushed back: {stderr}"
    );
    wait_until("300 events at the downstream", WAIT, || async {
        receiver.count().await >= 300
    })
    .await;
    let (unique, duplicates) = common::unique_body_ids(&receiver.bodies().await);
    assert_eq!((unique.len(), duplicates), (300, 0));
}

/// Events given with --data print the webhook's answer; a refused one (404)
/// is reported with its position and makes the exit code 1.
#[tokio::test(flavor = "multi_thread")]
async fn publish_reports_what_it_could_not_send() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let _spillway = Spillway::start(&orders_pipeline(
        "",
        port,
        "",
        &http_trigger("forward", &receiver.url),
    ))
    .await;
    let ok = format!("http://127.0.0.1:{port}/orders");
    let output = tokio::task::spawn_blocking(move || {
        publish(
            &[&ok, "--data", r#"{"id":"a"}"#, "--data", r#"{"id":"b"}"#],
            None,
        )
    })
    .await
    .expect("join");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stdout.lines().all(|l| l.contains("\"seq\":")), "{stdout}");

    let missing = format!("http://127.0.0.1:{port}/nowhere");
    let output = tokio::task::spawn_blocking(move || {
        publish(&[&missing, "--file", "-"], Some("{\"id\":\"c\"}\n"))
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stdin:1: 404"), "{stderr}");
    assert!(stderr.contains("0 accepted"), "{stderr}");
}
