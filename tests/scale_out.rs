//! Scale-out on a NATS JetStream bus: several `spillway run` processes with
//! the same config share each trigger's durable consumer, so every event is
//! triggered at least once in total (not once per instance) and the work
//! splits between them; a killed instance's events go to the others after
//! `ackWait`; a NATS restart costs 503s with Retry-After, never an accepted
//! event; an R3 stream on a 3-node cluster survives losing a node.

mod common;

use common::{free_port, metric, wait_until, NatsServer, Receiver, Spillway};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const WAIT: Duration = Duration::from_secs(120);

/// The standard pipeline on JetStream at `nats`, webhook on `port`, one http
/// trigger to `downstream` whose events come back `ack_wait` after a crash.
fn pipeline(
    nats: &str,
    port: u16,
    downstream: &str,
    stream_settings: &str,
    ack_wait: &str,
) -> String {
    let bus = format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    url: {nats}\n    settings: |\n      max_msgs: 1000000\n{stream_settings}"
    );
    let trigger = common::http_trigger("forward", downstream)
        + &format!("      flowControl:\n        concurrency: fixed\n        maxInFlight: 16\n        ackWait: {ack_wait}\n");
    common::orders_pipeline(&bus, port, "", &trigger)
}

/// Successful trigger calls of one instance.
async fn successes(instance: &Spillway) -> f64 {
    metric(
        &instance.metrics().await,
        r#"spillway_trigger_invocations_total{sensor="orders",trigger="forward",outcome="success"}"#,
    )
}

/// What producers saw.
#[derive(Default)]
struct Sent {
    /// Ids answered 200: the bus holds them, so they must be triggered.
    accepted: BTreeSet<String>,
    /// Refusals that came without a `Retry-After`.
    without_retry_after: usize,
}

/// Posts events `ids` to the webhooks on `ports` (round robin) from
/// `producers` concurrent tasks. A refused or failed request is retried
/// (after its Retry-After, or on the next port) until one answers 200, so
/// every id ends up accepted exactly once from the producer's point of view.
async fn produce(ports: Arc<Vec<u16>>, ids: Vec<String>, producers: usize, sent: Arc<Mutex<Sent>>) {
    let queue = Arc::new(Mutex::new(ids));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..producers {
        let (queue, ports, sent) = (queue.clone(), ports.clone(), sent.clone());
        tasks.spawn(async move {
            let client = common::client();
            let mut turn = worker;
            loop {
                let Some(id) = queue.lock().await.pop() else {
                    return;
                };
                loop {
                    turn += 1;
                    let port = ports[turn % ports.len()];
                    let response = client
                        .post(format!("http://127.0.0.1:{port}/orders"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"id":"{id}"}}"#))
                        .send()
                        .await;
                    let response = match response {
                        Ok(r) => r,
                        // That instance is gone: try the next one.
                        Err(_) => continue,
                    };
                    let status = response.status().as_u16();
                    if status == 200 {
                        sent.lock().await.accepted.insert(id.clone());
                        break;
                    }
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    if retry_after.is_none() {
                        sent.lock().await.without_retry_after += 1;
                    }
                    // Honour Retry-After, capped so the test stays short.
                    let wait = retry_after.unwrap_or(1).min(1);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// The distinct ids the downstream received, and how many arrivals were
/// repeats of an earlier one.
async fn received(receiver: &Receiver) -> (BTreeSet<String>, usize) {
    common::unique_body_ids(&receiver.bodies().await)
}

async fn wait_for_all(receiver: &Receiver, want: usize) {
    wait_until(
        &format!("{want} distinct events downstream"),
        WAIT,
        || async {
            // Counting is cheap; collecting the distinct ids is not.
            receiver.count().await >= want && received(receiver).await.0.len() >= want
        },
    )
    .await;
}

#[tokio::test]
async fn two_instances_split_the_work_and_trigger_each_event_once() {
    let nats = NatsServer::start().await;
    let receiver = Receiver::start(true).await;
    let ports = Arc::new(vec![free_port(), free_port()]);
    let mut first = Spillway::start(&pipeline(&nats.url, ports[0], &receiver.url, "", "30s")).await;
    let mut second =
        Spillway::start(&pipeline(&nats.url, ports[1], &receiver.url, "", "30s")).await;

    const EVENTS: usize = 20_000;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let started = std::time::Instant::now();
    produce(ports.clone(), ids("o", EVENTS), 32, sent.clone()).await;
    eprintln!("produced in {:?}", started.elapsed());
    assert_eq!(sent.lock().await.accepted.len(), EVENTS);
    assert_eq!(sent.lock().await.without_retry_after, 0);
    wait_for_all(&receiver, EVENTS).await;
    eprintln!("delivered in {:?}", started.elapsed());

    let (_, duplicates) = received(&receiver).await;
    let m1 = first.metrics().await;
    let m2 = second.metrics().await;
    let interesting = |m: &str| {
        m.lines()
            .filter(|l| l.contains("invocations_total") || l.contains("redeliver"))
            .map(String::from)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        duplicates,
        0,
        "no instance died, so nothing is redelivered\n{}\n{}\n{}",
        interesting(&m1),
        interesting(&m2),
        first
            .log_text()
            .lines()
            .filter(|l| l.contains("WARN"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let (a, b) = (successes(&first).await, successes(&second).await);
    assert_eq!(a + b, EVENTS as f64);
    for (name, share) in [("first", a), ("second", b)] {
        assert!(
            share > 0.2 * EVENTS as f64,
            "the {name} instance triggered only {share} of {EVENTS} (first {a}, second {b})"
        );
    }
    assert!(first.terminate().await.success());
    assert!(second.terminate().await.success());
}

#[tokio::test]
async fn a_killed_instance_loses_no_accepted_event() {
    let nats = NatsServer::start().await;
    // Slow enough that the killed instance has calls in flight.
    let receiver = Receiver::start(true).await;
    let ports = Arc::new(vec![free_port(), free_port()]);
    let mut doomed = Spillway::start(&pipeline(&nats.url, ports[0], &receiver.url, "", "3s")).await;
    let mut survivor =
        Spillway::start(&pipeline(&nats.url, ports[1], &receiver.url, "", "3s")).await;

    const EVENTS: usize = 4_000;
    let sent = Arc::new(Mutex::new(Sent::default()));
    let producing = tokio::spawn(produce(ports.clone(), ids("o", EVENTS), 16, sent.clone()));
    wait_until("the doomed instance to be busy", WAIT, || async {
        successes(&doomed).await >= 200.0
    })
    .await;
    doomed.kill();
    producing.await.expect("producers");

    let sent = sent.lock().await;
    assert_eq!(sent.accepted.len(), EVENTS);
    assert_eq!(
        sent.without_retry_after, 0,
        "every refusal says when to retry"
    );
    wait_for_all(&receiver, EVENTS).await;
    let (seen, duplicates) = received(&receiver).await;
    let missing: Vec<_> = sent
        .accepted
        .iter()
        .filter(|id| !seen.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted but never triggered: {missing:?}"
    );
    // What the killed instance had in flight arrives twice, and so can an
    // event whose keep-alive was late by more than ackWait (3 s here) on a
    // loaded machine: at least once, never lost.
    eprintln!("{duplicates} duplicate deliveries after the kill");
    assert!(survivor.terminate().await.success());
}

#[tokio::test]
async fn a_nats_restart_answers_503_meanwhile_and_loses_no_accepted_event() {
    let mut nats = NatsServer::start().await;
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(&nats.url, port, &receiver.url, "", "30s")).await;
    let client = common::client();
    let post = |id: String| {
        client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"id":"{id}"}}"#))
            .send()
    };
    for i in 0..100 {
        let response = post(format!("before-{i}")).await.expect("POST");
        assert_eq!(response.status(), 200);
    }

    nats.stop();
    // While the server is away nothing is stored, so nothing is accepted.
    let response = post("during".into()).await.expect("POST");
    assert_eq!(response.status(), 503, "{:?}", response.text().await);
    let response = post("during".into()).await.expect("POST");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(response.headers()["x-spillway-reason"], "unavailable");

    nats.resume().await;
    // After the reconnect the same producer gets through again.
    wait_until("the webhook to accept again", WAIT, || async {
        post("after-0".into())
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    for i in 1..100 {
        let response = post(format!("after-{i}")).await.expect("POST");
        assert_eq!(response.status(), 200, "after-{i}");
    }
    wait_for_all(&receiver, 200).await;
    let (seen, _) = received(&receiver).await;
    // No assertion on "during": a 503 means "not confirmed", not "not
    // stored". When the publish left before the client saw the connection
    // drop, async-nats resends it after the reconnect and the server may
    // store it; the producer's retry then makes a duplicate (at-least-once),
    // never a loss. Seen once under load (CI-like), so not asserted.
    for i in 0..100 {
        assert!(seen.contains(&format!("before-{i}")), "before-{i}");
        assert!(seen.contains(&format!("after-{i}")), "after-{i}");
    }
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn an_r3_stream_on_a_3_node_cluster_survives_losing_a_node() {
    let mut cluster = NatsServer::cluster(3).await;
    let urls = cluster
        .iter()
        .map(|s| s.url.clone())
        .collect::<Vec<_>>()
        .join(",");
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let config = pipeline(&urls, port, &receiver.url, "      replicas: 3\n", "30s");
    // The cluster elects its JetStream meta leader after the routes connect.
    let mut spillway = Spillway::start_retrying(&config, WAIT).await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    let ports = Arc::new(vec![port]);
    produce(ports.clone(), ids("a", 300), 8, sent.clone()).await;
    // Losing one of three replicas keeps a quorum: the stream goes on.
    cluster[2].stop();
    produce(ports, ids("b", 300), 8, sent.clone()).await;
    assert_eq!(sent.lock().await.accepted.len(), 600);
    wait_for_all(&receiver, 600).await;
    assert!(spillway.terminate().await.success());
}
