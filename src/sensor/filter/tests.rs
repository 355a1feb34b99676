//! Whole-dependency cases: YAML as a user writes it, compiled, applied to
//! events (well-formed and not).

use super::*;
use crate::config::decode::decode;
use crate::config::diagnostic::Diagnostics;
use crate::config::yaml::parse_documents;
use bytes::Bytes;

fn dependency(yaml: &str) -> Dependency {
    let nodes = parse_documents(yaml).expect("valid YAML");
    let diagnostics = Diagnostics::default();
    decode::<Dependency>(&nodes[0], &diagnostics).expect("a dependency")
}

fn pool() -> EvaluationPool {
    EvaluationPool::new(
        "test",
        crate::sensor::evaluation::EvaluationSettings::default(),
        None,
    )
}

fn compiled(yaml: &str) -> DependencyFilter {
    DependencyFilter::compile(&dependency(yaml), &pool())
        .expect("compiles")
        .expect("has filters")
}

fn event(data: &str, time: &str) -> Event {
    let mut event = Event::new("shop", "webhook", "orders", Bytes::from(data.to_string()));
    event.context.time = time.to_string();
    event
}

const NOON: &str = "2024-03-01T12:00:00.000Z";

#[tokio::test]
async fn every_kind_and_both_operators() {
    let all = |operator: &str| {
        format!(
            r#"
name: dep
eventSourceName: shop
eventName: orders
filtersLogicalOperator: {operator}
filters:
  context:
    type: webhook
  time:
    start: "09:00:00"
    stop: "17:00:00"
  data:
    - path: kind
      type: string
      value: ["order"]
  exprs:
    - expr: total > 10 && currency == 'EUR'
      fields:
        - {{name: total, path: total}}
        - {{name: currency, path: currency}}
  script: |
    return event.total < 1000
"#
        )
    };
    let and = compiled(&all("and"));
    let or = compiled(&all("or"));
    // (data, time, expected under and, expected under or; None = error)
    let cases = [
        (
            r#"{"kind":"order","total":50,"currency":"EUR"}"#,
            NOON,
            Some(true),
            Some(true),
        ),
        // Outside the time window: and fails, or passes on the other kinds.
        (
            r#"{"kind":"order","total":50,"currency":"EUR"}"#,
            "2024-03-01T20:00:00Z",
            Some(false),
            Some(true),
        ),
        (
            r#"{"kind":"refund","total":50,"currency":"EUR"}"#,
            NOON,
            Some(false),
            Some(true),
        ),
        (
            r#"{"kind":"order","total":5,"currency":"EUR"}"#,
            NOON,
            Some(false),
            Some(true),
        ),
        (
            r#"{"kind":"order","total":5000,"currency":"EUR"}"#,
            NOON,
            Some(false),
            Some(true),
        ),
        // Malformed: not JSON is an error whatever the operator.
        ("{not json", NOON, None, None),
        // A missing field: an error under and; under or, context and time pass.
        (r#"{"kind":"order"}"#, NOON, None, Some(true)),
        // Empty data passes data, exprs and script (Argo).
        ("", NOON, Some(true), Some(true)),
    ];
    for (i, (data, time, want_and, want_or)) in cases.iter().enumerate() {
        let got = and.apply(&mut event(data, time)).await;
        assert_eq!(
            got.as_ref().ok().copied(),
            *want_and,
            "and case {i}: {got:?}"
        );
        let got = or.apply(&mut event(data, time)).await;
        assert_eq!(got.as_ref().ok().copied(), *want_or, "or case {i}: {got:?}");
    }
}

#[tokio::test]
async fn or_with_every_kind_failing_or_erring() {
    let filter = compiled(
        r#"
name: dep
eventSourceName: shop
eventName: orders
filtersLogicalOperator: or
filters:
  context: {type: calendar}
  data:
    - {path: kind, type: string, value: ["order"]}
"#,
    );
    assert_eq!(
        filter
            .apply(&mut event(r#"{"kind":"refund"}"#, NOON))
            .await
            .ok(),
        Some(false)
    );
    assert!(filter
        .apply(&mut event(r#"{"other":1}"#, NOON))
        .await
        .is_err());
}

#[tokio::test]
async fn transform_runs_before_the_filters() {
    let filter = compiled(
        r#"
name: dep
eventSourceName: shop
eventName: orders
transform:
  jq: '{kind: .body.type, total: (.body.total * 2)}'
filters:
  data:
    - {path: total, type: number, value: ["100"], comparator: ">="}
"#,
    );
    let mut passing = event(r#"{"body":{"type":"order","total":60}}"#, NOON);
    assert_eq!(filter.apply(&mut passing).await.ok(), Some(true));
    assert_eq!(
        passing.data_json(),
        serde_json::json!({"kind": "order", "total": 120})
    );
    let mut failing = event(r#"{"body":{"type":"order","total":10}}"#, NOON);
    assert_eq!(filter.apply(&mut failing).await.ok(), Some(false));
    // The transform fails on this event (an object times 2 is a jq
    // error): rejected as an error.
    let mut broken = event(r#"{"body":{"type":"order","total":{"x":1}}}"#, NOON);
    assert!(matches!(
        filter.apply(&mut broken).await,
        Err(FilterError::Transform(_))
    ));
}

#[tokio::test]
async fn a_transform_alone_passes_everything() {
    let filter = compiled(
        r#"
name: dep
eventSourceName: shop
eventName: orders
filtersLogicalOperator: or
transform:
  script: |
    event.seen = true
    return event
"#,
    );
    let mut e = event(r#"{"a":1}"#, NOON);
    assert_eq!(filter.apply(&mut e).await.ok(), Some(true));
    assert_eq!(e.data_json(), serde_json::json!({"a": 1, "seen": true}));
}

#[tokio::test]
async fn endless_lua_filter_rejects_the_event_and_the_next_one_runs() {
    let filter = compiled(
        r#"
name: dep
eventSourceName: shop
eventName: orders
filters:
  script: |
    if event.loop then
      while true do end
    end
    return true
"#,
    );
    let err = filter
        .apply(&mut event(r#"{"loop":true}"#, NOON))
        .await
        .expect_err("the limit stops it");
    assert!(matches!(err, FilterError::ScriptLimit(_)), "{err}");
    assert_eq!(
        filter
            .apply(&mut event(r#"{"loop":false}"#, NOON))
            .await
            .ok(),
        Some(true)
    );
}

#[test]
fn nothing_to_do_compiles_to_none() {
    let dep =
        dependency("name: dep\neventSourceName: shop\neventName: orders\nfilters:\n  data: []\n");
    assert!(DependencyFilter::compile(&dep, &pool())
        .expect("compiles")
        .is_none());
}

#[test]
fn every_compile_problem_is_reported_with_its_position() {
    let dep = dependency(
        r#"name: dep
eventSourceName: shop
eventName: orders
transform:
  jq: '.a |'
filters:
  time: {start: "09:00", stop: "17:00", timezone: Nowhere/City}
  data:
    - {path: a, type: string, value: ["("]}
  exprs:
    - {expr: "a =~ 'x'", fields: [{name: a, path: a}]}
  script: "return ("
"#,
    );
    let problems = DependencyFilter::compile(&dep, &pool()).expect_err("five problems");
    let lines: Vec<u32> = problems.iter().map(|(pos, _)| pos.line).collect();
    assert_eq!(lines, vec![5, 7, 9, 11, 12], "{problems:?}");
}
