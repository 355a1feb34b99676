//! The same pipeline on a NATS JetStream bus (`EventBus.spec.jetstream.url`)
//! behaves as on the embedded bus: a full stream answers `429 bus_full`, and
//! every accepted event reaches the trigger once the downstream opens.

mod common;

use common::{free_port, metric, wait_until, NatsServer, Receiver, Spillway};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn pipeline(nats: &str, port: u16, downstream: &str) -> String {
    let bus = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    url: {nats}\n    settings: |\n      max_msgs: 5"
    );
    common::orders_pipeline(&bus, port, "", &common::http_trigger("forward", downstream))
}

#[tokio::test]
async fn a_full_jetstream_bus_answers_429_and_loses_no_accepted_event() {
    let nats = NatsServer::start().await;
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(&nats.url, port, &receiver.url)).await;
    let client = common::client();
    let post = |i: usize| {
        client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"o-{i}"}}"#))
            .send()
    };
    for i in 0..5 {
        assert_eq!(post(i).await.expect("POST").status(), 200, "event {i}");
    }
    let refused = post(5).await.expect("POST");
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-spillway-reason"], "bus_full");
    assert!(refused.headers().contains_key("retry-after"));

    receiver.open();
    wait_until("5 events downstream", WAIT, || async {
        receiver.count().await >= 5
    })
    .await;
    let mut ids: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["body"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["o-0", "o-1", "o-2", "o-3", "o-4"]);
    wait_until("an empty stream", WAIT, || async {
        spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_source_events_total{source="shop",event="orders",outcome="bus_full"}"#
        ),
        1.0
    );
    assert!(spillway.terminate().await.success());
}
