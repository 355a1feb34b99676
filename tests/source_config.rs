//! Config errors of the non-webhook event sources: each reported as
//! `FILE:LINE:COL: message` at the offending value, all in one pass.

use std::io::Write;

fn diagnostics(yaml: &str) -> Vec<String> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(yaml.as_bytes()).expect("write");
    match spillway::config::load(&[file.path().to_path_buf()]) {
        Ok(_) => Vec::new(),
        Err(diagnostics) => diagnostics
            .iter()
            .map(|d| format!("{}:{}", d.pos, d.message))
            .collect(),
    }
}

#[test]
fn every_source_problem_is_reported_at_its_position() {
    let found = diagnostics(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: feeds
spec:
  amqp:
    orders:
      url: http://rabbit
      exchangeName: shop
      exchangeType: fanout-ish
      routingKey: orders
      consume:
        autoAck: true
      flowControl:
        qos:
          prefetchCount: 0
  calendar:
    nightly:
      schedule: "0 25 * * *"
      timezone: Mars/Olympus
      exclusionDates: ["2026-12-25"]
    orders:
      interval: 10s
  jetstream:
    payments:
      url: nats://127.0.0.1:4222
      stream: PAY.MENTS
      consumer: spillway
      batchSize: 0
"#,
    );
    let expect = [
        ("8:12", "url must start with amqp://"),
        ("10:21", "unknown exchangeType \"fanout-ish\""),
        ("13:18", "autoAck: true would acknowledge"),
        ("16:26", "prefetchCount must be at least 1"),
        ("19:17", "invalid cron schedule"),
        ("20:17", "unknown timezone"),
        ("21:24", "EXDATE:"),
        ("22:5", "event name \"orders\" is already used"),
        ("27:15", "stream \"PAY.MENTS\""),
        ("29:18", "batchSize must be at least 1"),
    ];
    for (at, text) in expect {
        assert!(
            found
                .iter()
                .any(|d| d.starts_with(&format!("{at}:")) && d.contains(text)),
            "missing {at}: {text} in {found:#?}"
        );
    }
    assert_eq!(found.len(), expect.len(), "{found:#?}");
}

#[test]
fn argo_fields_spillway_cannot_honour_say_why() {
    let found = diagnostics(
        r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: feeds
spec:
  nats:
    telemetry:
      url: nats://127.0.0.1:4222
      subject: telemetry
      tls: {}
"#,
    );
    assert!(
        found.len() == 1 && found[0].contains("TLS to NATS is not supported"),
        "{found:#?}"
    );
}
