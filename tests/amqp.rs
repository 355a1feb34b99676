//! The `amqp` source against the real RabbitMQ (127.0.0.1:5672, guest/guest):
//! with a full bus it stops acking, so the unacked count stays within the
//! prefetch window and RabbitMQ keeps the backlog; every message still
//! reaches the trigger.
//!
//! RabbitMQ's unacked count is read with `rabbitmqctl list_queues` (the
//! management API is not enabled on the test machines); it is the broker's
//! own per-queue figure, read live from the queue process.

mod common;

use common::{metric, wait_until, Receiver, Spillway};
use futures_util::future::join_all;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const RABBITMQ: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Messages sent through: the issue's 20 000 by default (about 65 s on a
/// 2-core machine, where a delivery's durable append bounds the source at
/// prefetch/latency); `SPILLWAY_AMQP_MESSAGES` sets another count.
fn messages() -> usize {
    std::env::var("SPILLWAY_AMQP_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}
const PREFETCH: u64 = 10;

/// A uniquely named queue and auto-delete exchange, removed on drop (the
/// exchange goes with its last binding).
struct TestQueue {
    name: String,
}

impl Drop for TestQueue {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &self.name])
            .output();
    }
}

async fn declare(channel: &Channel, name: &str) {
    channel
        .exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    channel
        .queue_bind(
            name.into(),
            name.into(),
            "orders".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
}

/// Publishes `count` messages `{"id":"m-N"}` and waits for every confirm.
async fn publish(channel: &Channel, exchange: &str, bodies: impl Iterator<Item = String>) {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let mut confirms = Vec::new();
    for body in bodies {
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    "orders".into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("basic.publish"),
        );
        if confirms.len() == 1000 {
            for confirm in join_all(confirms.drain(..)).await {
                confirm.expect("publisher confirm");
            }
        }
    }
    for confirm in join_all(confirms).await {
        confirm.expect("publisher confirm");
    }
}

/// `(ready, unacked)` of `queue`, from the broker.
fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let output = Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        if fields.next()? != queue {
            return None;
        }
        Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
    })
}

fn amqp_source(name: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: rabbit
spec:
  amqp:
    orders:
      url: {RABBITMQ}
      exchangeName: {name}
      exchangeType: direct
      routingKey: orders
      jsonBody: true
      exchangeDeclare:
        durable: false
        autoDelete: true
      queueDeclare:
        name: {name}
        durable: false
        exclusive: false
      flowControl:
        qos:
          prefetchCount: {PREFETCH}
        maxBlock: 1s
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bus_stops_acking_and_rabbitmq_holds_the_backlog() {
    let messages = messages();
    let name = format!("spillway-test-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = TestQueue { name: name.clone() };
    assert!(
        Command::new("rabbitmqctl")
            .args(["-q", "list_queues", "name"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "rabbitmqctl is needed to read RabbitMQ's unacked count"
    );
    let connection = Connection::connect(RABBITMQ, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ at 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    declare(&channel, &name).await;
    publish(
        &channel,
        &name,
        (0..messages).map(|i| format!(r#"{{"id":"m-{i}"}}"#)),
    )
    .await;
    assert_eq!(queue_counts(&name), Some((messages as u64, 0)));

    // The downstream stalls first (the slowest possible trigger), so the
    // 500-event bus fills; it opens once RabbitMQ is seen holding the rest.
    let receiver = Receiver::start(false).await;
    let trigger = common::http_trigger("forward", &receiver.url);
    let config = format!(
        "{}---\n{}---\n{}",
        common::eventbus(500),
        amqp_source(&name),
        common::sensor("orders", "rabbit", "orders", &trigger)
    );
    let spillway = Spillway::start(&config).await;

    // Sample the broker (blocking rabbitmqctl, on its own thread) and the
    // bus depth (async, from /metrics) while the backlog drains.
    let done = Arc::new(AtomicBool::new(false));
    let bus_depth = Arc::new(AtomicU64::new(0));
    let max_unacked = Arc::new(AtomicU64::new(0));
    let held_while_full = Arc::new(AtomicBool::new(false));
    let poller = {
        let (done, depth, max_unacked, held, name) = (
            done.clone(),
            bus_depth.clone(),
            max_unacked.clone(),
            held_while_full.clone(),
            name.clone(),
        );
        std::thread::spawn(move || {
            let mut samples = 0;
            while !done.load(Ordering::SeqCst) {
                if let Some((ready, unacked)) = queue_counts(&name) {
                    max_unacked.fetch_max(unacked, Ordering::SeqCst);
                    if depth.load(Ordering::SeqCst) >= 450 && ready > 1000 {
                        held.store(true, Ordering::SeqCst);
                    }
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let sampler = {
        let (done, depth, admin) = (done.clone(), bus_depth.clone(), spillway.admin.clone());
        tokio::spawn(async move {
            let client = common::client();
            while !done.load(Ordering::SeqCst) {
                if let Ok(r) = client.get(format!("{admin}/metrics")).send().await {
                    let text = r.text().await.unwrap_or_default();
                    let messages = metric(&text, "spillway_bus_messages{stream=\"default\"}");
                    depth.store(messages as u64, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let outcome = |text: &str, outcome: &str| {
        metric(
            text,
            &format!(
                "spillway_source_events_total{{source=\"rabbit\",event=\"orders\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    wait_until("a full bus", Duration::from_secs(120), || async {
        bus_depth.load(Ordering::SeqCst) >= 500
    })
    .await;
    // A delivery refused for `maxBlock` (1 s here) is nack-requeued.
    wait_until(
        "a delivery requeued as bus_full",
        Duration::from_secs(60),
        || async { outcome(&spillway.metrics().await, "bus_full") >= 1.0 },
    )
    .await;
    let accepted = outcome(&spillway.metrics().await, "accepted") as u64;
    let (ready, unacked) = queue_counts(&name).expect("queue counts");
    assert!(
        unacked <= PREFETCH,
        "{unacked} unacked while the bus is full"
    );
    assert!(
        ready + unacked + accepted >= messages as u64 && ready > messages as u64 / 2,
        "RabbitMQ should hold the backlog: ready {ready}, unacked {unacked}, accepted {accepted}"
    );
    receiver.open();

    wait_until(
        "every message at the trigger",
        Duration::from_secs(180),
        || async { receiver.count().await >= messages },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    let samples = poller.join().expect("poller");
    sampler.await.expect("sampler");

    let (unique, duplicates) = common::unique_body_ids(&receiver.bodies().await);
    assert_eq!(unique.len(), messages, "{duplicates} duplicate(s)");
    assert!(samples >= 5, "only {samples} broker samples taken");
    let max_unacked = max_unacked.load(Ordering::SeqCst);
    assert!(
        max_unacked <= PREFETCH,
        "RabbitMQ had {max_unacked} unacked deliveries, more than the prefetch of {PREFETCH}"
    );
    assert!(
        held_while_full.load(Ordering::SeqCst),
        "never saw the bus full while RabbitMQ held the backlog"
    );
    let accepted = outcome(&spillway.metrics().await, "accepted");
    assert_eq!(accepted as usize, messages + duplicates);
    wait_until("an empty queue", Duration::from_secs(10), || async {
        queue_counts(&name) == Some((0, 0))
    })
    .await;
    eprintln!(
        "amqp: {messages} delivered, {duplicates} duplicate(s), max unacked {max_unacked} over {samples} samples"
    );
    let _ = channel
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await;
}
