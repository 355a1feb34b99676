//! The core `nats` source against its own nats-server: with a full bus,
//! messages are dropped — every one counted as `bus_full`, logged in a few
//! rate-limited lines, never one line per message — and the accepted ones
//! all reach the trigger.

mod common;

use common::{metric, wait_until, NatsServer, Receiver, Spillway};
use std::time::Duration;

const SENT: usize = 2_000;
const BUS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_drops_counts_and_warns_without_flooding_the_log() {
    let nats = NatsServer::start().await;
    let receiver = Receiver::start(false).await;
    let source = format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: telemetry
spec:
  nats:
    readings:
      url: {}
      subject: "sensors.>"
      jsonBody: true
"#,
        nats.url
    );
    let config = format!(
        "{}---\n{source}---\n{}",
        common::eventbus(BUS as u64),
        common::sensor(
            "readings",
            "telemetry",
            "readings",
            &common::http_trigger("forward", &receiver.url)
        )
    );
    let spillway = Spillway::start(&config).await;
    let client = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    for i in 0..SENT {
        client
            .publish("sensors.a", format!(r#"{{"id":"r-{i}"}}"#).into())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    let outcome = |text: &str, outcome: &str| {
        metric(
            text,
            &format!(
                "spillway_source_events_total{{source=\"telemetry\",event=\"readings\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    wait_until("every message counted", Duration::from_secs(60), || async {
        let text = spillway.metrics().await;
        outcome(&text, "accepted") + outcome(&text, "bus_full") >= SENT as f64
    })
    .await;
    let text = spillway.metrics().await;
    // The trigger holds what it fetched (the downstream is stalled), so the
    // bus stays at its limit: exactly BUS accepted, the rest dropped.
    assert_eq!(outcome(&text, "accepted") as usize, BUS);
    assert_eq!(outcome(&text, "bus_full") as usize, SENT - BUS);
    let warnings = spillway
        .log_text()
        .lines()
        .filter(|l| l.contains("message(s) dropped"))
        .count();
    assert!(
        (1..=5).contains(&warnings),
        "{warnings} drop warning lines for {} drops",
        SENT - BUS
    );

    receiver.open();
    wait_until(
        "the accepted messages downstream",
        Duration::from_secs(60),
        || async { receiver.count().await >= BUS },
    )
    .await;
    let (unique, duplicates) = common::unique_body_ids(&receiver.bodies().await);
    assert_eq!((unique.len(), duplicates), (BUS, 0));
}
