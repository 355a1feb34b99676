//! Dependency filters and transforms end to end through the binary:
//! webhook → bus → sensor (jq transform, then an `exprs` filter) → http
//! trigger → a downstream server in this test.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn pipeline(port: u16, downstream: &str) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "{port}"
      endpoint: /orders
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      transform:
        jq: '{{id: .body.id, kind: .body.kind, total: .body.total}}'
      filters:
        exprs:
          - expr: kind == 'order' && total >= 100
            fields:
              - name: kind
                path: kind
              - name: total
                path: total
  triggers:
    - template:
        name: forward
        http:
          url: {downstream}
          method: POST
"#
    )
}

fn filtered(metrics: &str, reason: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_sensor_events_filtered_total{{sensor="orders",trigger="forward",reason="{reason}"}}"#
        ),
    )
}

#[tokio::test]
async fn only_matching_events_arrive_and_they_arrive_transformed() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url)).await;
    let client = common::client();
    let events = [
        json!({"id": "a", "kind": "order", "total": 150, "note": "dropped by jq"}),
        json!({"id": "b", "kind": "order", "total": 50}),
        json!({"id": "c", "kind": "refund", "total": 500}),
        // No total: jq gives null, and `null >= 100` cannot be evaluated.
        json!({"id": "d", "kind": "order"}),
        json!({"id": "e", "kind": "order", "total": 100}),
    ];
    for event in &events {
        let response = client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(response.status(), 200);
    }
    wait_until("every event settled", WAIT, || async {
        let metrics = spillway.metrics().await;
        receiver.count().await >= 2
            && filtered(&metrics, "no_match") >= 2.0
            && filtered(&metrics, "error") >= 1.0
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(filtered(&metrics, "no_match"), 2.0, "b and c");
    assert_eq!(filtered(&metrics, "error"), 1.0, "d");
    let mut bodies = receiver.bodies().await;
    bodies.sort_by_key(|b| b["id"].as_str().unwrap_or_default().to_string());
    assert_eq!(
        bodies,
        vec![
            json!({"id": "a", "kind": "order", "total": 150}),
            json!({"id": "e", "kind": "order", "total": 100}),
        ]
    );
    assert!(
        spillway
            .log_text()
            .contains("event rejected: its dependency filter or transform failed"),
        "the error is logged"
    );
    spillway.terminate().await;
}

/// A sensor whose jq transform and Lua filter misbehave on demand
/// (`{"bomb": "..."}`), with `evaluation` as its `flowControl.evaluation`.
fn runaway_pipeline(port: u16, downstream: &str, evaluation: &str) -> String {
    format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "{port}"
      endpoint: /orders
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  flowControl:
    evaluation: {evaluation}
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      transform:
        jq: |
          if .body.bomb == "range" then {{a: [range(1e12)]}}
          elif .body.bomb == "recurse" then (def f: f; f)
          elif .body.bomb == "repeat" then {{a: [repeat(.)]}}
          elif .body.bomb == "last" then {{a: last(range(1e15))}}
          else .body end
      filters:
        script: |
          if event.bomb == "loop" then while true do end end
          if event.bomb == "slow-loop" then
            while true do local s = ("x"):rep(100000) end
          end
          if event.bomb == "pattern" then
            local s = ("a"):rep(200000)
            return s:find(("a*"):rep(12) .. "b") ~= nil
          end
          if event.bomb == "stuck" then
            -- thirty C calls of ~1.6e7 matching steps each, under the
            -- pattern bound, with too few instructions for the hook to run.
            local s = ("a"):rep(4000)
            for i = 1, 30 do s:find("a*b") end
          end
          return true
  triggers:
    - template:
        name: forward
        http:
          url: {downstream}
          method: POST
"#
    )
}

async fn post(port: u16, body: &serde_json::Value) {
    let response = common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn runaway_scripts_and_jq_are_rejected_and_the_next_event_passes() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&runaway_pipeline(
        port,
        &receiver.url,
        "{timeout: 200ms, threads: 1}",
    ))
    .await;
    let bombs = [
        "loop",
        "slow-loop",
        "pattern",
        "range",
        "recurse",
        "repeat",
        "last",
    ];
    post(port, &json!({"id": "before"})).await;
    for bomb in bombs {
        post(port, &json!({"id": bomb, "bomb": bomb})).await;
    }
    post(port, &json!({"id": "after"})).await;
    wait_until("every event settled", WAIT, || async {
        receiver.count().await >= 2
            && filtered(&spillway.metrics().await, "error") >= bombs.len() as f64
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(filtered(&metrics, "error"), bombs.len() as f64);
    let mut ids: Vec<String> = receiver
        .bodies()
        .await
        .iter()
        .map(|b| b["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["after", "before"], "the normal events pass");
    // The rejections share one throttled warning; the first is the loop.
    // (Each reason is asserted by the unit tests of the evaluators.)
    let log = spillway.log_text();
    assert!(log.contains("stopped after 1000000 instructions"), "{log}");
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_evaluation_threads_abandoned{sensor="orders"}"#
        ),
        0.0,
        "every runaway stopped by itself"
    );
    spillway.terminate().await;
}

#[tokio::test]
async fn a_stuck_evaluation_is_abandoned_and_later_events_wait_until_it_returns() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let mut spillway = Spillway::start(&runaway_pipeline(
        port,
        &receiver.url,
        "{timeout: 50ms, threads: 1, maxAbandoned: 0}",
    ))
    .await;
    // The stuck evaluation holds the only thread and is rejected at its
    // deadline; the next event finds no thread (maxAbandoned: 0, so it was
    // not replaced): capacity, not its fault, so it goes back to the bus.
    post(port, &json!({"id": "stuck", "bomb": "stuck"})).await;
    post(port, &json!({"id": "no-thread"})).await;
    wait_until("one rejected, one put back", WAIT, || async {
        filtered(&spillway.metrics().await, "error") >= 1.0
            && spillway.log_text().contains("event put back on the bus")
    })
    .await;
    let log = spillway.log_text();
    assert!(
        log.contains("did not finish within its 50ms deadline"),
        "{log}"
    );
    assert!(log.contains("abandoned and NOT replaced"), "{log}");
    assert!(log.contains("no evaluation thread is left"), "{log}");
    // When the C calls end the thread rejoins and events pass again.
    wait_until("the abandoned thread came back", WAIT, || async {
        spillway.log_text().contains("rejoined the pool")
    })
    .await;
    post(port, &json!({"id": "after"})).await;
    wait_until("the put-back event and the next one pass", WAIT, || async {
        receiver.count().await >= 2
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(filtered(&metrics, "error"), 1.0);
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_evaluation_threads_abandoned{sensor="orders"}"#
        ),
        0.0
    );
    let mut bodies = receiver.bodies().await;
    bodies.sort_by_key(|b| b["id"].as_str().map(str::to_string));
    assert_eq!(
        bodies,
        vec![json!({"id": "after"}), json!({"id": "no-thread"})]
    );
    spillway.terminate().await;
}

/// Argo data filter rules and gjson paths through the binary: a query
/// path, an escaped key and an unanchored regex decide which events pass,
/// a missing query result is an error, and a payload `dataKey`/`dest` use
/// a query and an escaped dot.
#[tokio::test]
async fn argo_data_filters_on_gjson_paths() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let downstream = &receiver.url;
    let yaml = format!(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "{port}"
      endpoint: /orders
      method: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      filters:
        data:
          - path: 'body.items.#(sku=="gift").qty'
            type: number
            value: ["1"]
            comparator: ">="
          - path: 'body.meta\.source'
            type: string
            value: ["shop"]
  triggers:
    - template:
        name: forward
        http:
          url: {downstream}
          method: POST
          payload:
            - src: {{dependencyName: order, dataKey: 'body.id'}}
              dest: id
            - src: {{dependencyName: order, dataKey: 'body.items.#(qty>0)#.sku|0'}}
              dest: 'first\.sku'
"#
    );
    let mut spillway = Spillway::start(&yaml).await;
    let client = common::client();
    let events = [
        // Passes: a gift with qty 1, and "shop" matches inside "webshop".
        json!({"id": "a", "meta.source": "webshop", "items": [{"sku": "pen", "qty": 2}, {"sku": "gift", "qty": 1}]}),
        // No gift: the query finds nothing, the path is missing → error.
        json!({"id": "b", "meta.source": "webshop", "items": [{"sku": "pen", "qty": 1}]}),
        // qty 0 < 1 → no match.
        json!({"id": "c", "meta.source": "webshop", "items": [{"sku": "gift", "qty": 0}]}),
        // "mail" does not contain "shop" → no match.
        json!({"id": "d", "meta.source": "mail", "items": [{"sku": "gift", "qty": 3}]}),
    ];
    for event in &events {
        let response = client
            .post(format!("http://127.0.0.1:{port}/orders"))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await
            .expect("POST /orders");
        assert_eq!(response.status(), 200);
    }
    wait_until("every event settled", WAIT, || async {
        let metrics = spillway.metrics().await;
        receiver.count().await >= 1
            && filtered(&metrics, "no_match") >= 2.0
            && filtered(&metrics, "error") >= 1.0
    })
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(filtered(&metrics, "no_match"), 2.0, "c and d");
    assert_eq!(filtered(&metrics, "error"), 1.0, "b");
    assert_eq!(
        receiver.bodies().await,
        vec![json!({"id": "a", "first.sku": "pen"})]
    );
    spillway.terminate().await;
}
