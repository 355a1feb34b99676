//! The `jetstream` source against its own nats-server: while spillway's bus
//! is full it naks with a delay, so the upstream consumer's pending count
//! holds the backlog; once the trigger drains the bus, every message
//! arrives (unique ids counted; duplicates, from redelivery of a message
//! whose ack was lost, are counted and reported, never required to be 0
//! by the at-least-once contract, but none are expected here).

mod common;

use async_nats::jetstream::{self, consumer::pull, stream};
use common::{metric, wait_until, NatsServer, Receiver, Spillway};
use std::time::Duration;

const BATCH: u64 = 50;

/// Messages sent through: the issue's 20 000 by default (about 30 s: the
/// durable bus append bounds the drain); `SPILLWAY_JETSTREAM_MESSAGES` sets
/// another count.
fn messages() -> usize {
    std::env::var("SPILLWAY_JETSTREAM_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn source(url: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: upstream
spec:
  jetstream:
    orders:
      url: {url}
      stream: UP
      consumer: spillway
      subject: "orders.>"
      ackWaitTime: 30s
      batchSize: {BATCH}
      jsonBody: true
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_naks_and_the_upstream_stream_holds_the_backlog() {
    let messages = messages();
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url.as_str())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "UP".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("create upstream stream");
    let mut acks = Vec::new();
    for i in 0..messages {
        acks.push(
            js.publish("orders.new", format!(r#"{{"id":"m-{i}"}}"#).into())
                .await
                .expect("publish"),
        );
        if acks.len() == 1000 {
            for ack in futures_util::future::join_all(
                acks.drain(..).map(std::future::IntoFuture::into_future),
            )
            .await
            {
                ack.expect("PubAck");
            }
        }
    }
    for ack in
        futures_util::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
            .await
    {
        ack.expect("PubAck");
    }

    let receiver = Receiver::start(false).await;
    let config = format!(
        "{}---\n{}---\n{}",
        common::eventbus(500),
        source(&nats.url),
        common::sensor(
            "orders",
            "upstream",
            "orders",
            &common::http_trigger("forward", &receiver.url)
        )
    );
    let spillway = Spillway::start(&config).await;
    let outcome = |text: &str, outcome: &str| {
        metric(
            text,
            &format!(
                "spillway_source_events_total{{source=\"upstream\",event=\"orders\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    wait_until("a full bus and a nak", Duration::from_secs(120), || async {
        let text = spillway.metrics().await;
        metric(&text, "spillway_bus_messages{stream=\"default\"}") >= 500.0
            && outcome(&text, "bus_full") >= 1.0
    })
    .await;
    let accepted = outcome(&spillway.metrics().await, "accepted") as u64;
    let mut upstream: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("UP")
        .await
        .expect("stream")
        .get_consumer("spillway")
        .await
        .expect("consumer");
    let info = upstream.info().await.expect("consumer info").clone();
    assert!(
        info.num_ack_pending as u64 <= BATCH,
        "{} unacked upstream, more than the batch of {BATCH}",
        info.num_ack_pending
    );
    assert!(
        info.num_pending > messages as u64 / 2
            && info.num_pending + info.num_ack_pending as u64 + accepted >= messages as u64,
        "the upstream consumer should hold the backlog: pending {}, ack pending {}, accepted {accepted}",
        info.num_pending,
        info.num_ack_pending
    );

    receiver.open();
    wait_until(
        "every message at the trigger",
        Duration::from_secs(180),
        || async { receiver.count().await >= messages },
    )
    .await;
    let (unique, duplicates) = common::unique_body_ids(&receiver.bodies().await);
    assert_eq!(unique.len(), messages, "{duplicates} duplicate(s)");
    let upstream = tokio::sync::Mutex::new(upstream);
    wait_until(
        "an empty upstream consumer",
        Duration::from_secs(30),
        || async {
            let mut upstream = upstream.lock().await;
            let info = upstream.info().await.expect("consumer info");
            info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
    let accepted = outcome(&spillway.metrics().await, "accepted");
    assert_eq!(accepted as usize, messages + duplicates);
    eprintln!("jetstream source: {messages} delivered, {duplicates} duplicate(s)");
}
