use super::*;
use crate::telemetry::Metrics;
use spillway_bus::memory::MemoryBus;
use spillway_bus::{Bus, ConsumerConfig, Limits};
use std::io::Write;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

fn source(path: &str, follow: bool) -> FileSource {
    FileSource {
        name: EventName {
            source: "files".into(),
            event: "lines".into(),
        },
        path: path.to_string(),
        follow,
        json_body: false,
        metadata: BTreeMap::new(),
    }
}

async fn reader(path: &std::path::Path) -> Box<dyn AsyncBufRead + Send + Unpin> {
    Box::new(BufReader::new(
        tokio::fs::File::open(path).await.expect("open"),
    ))
}

fn body(message: &spillway_bus::Received) -> String {
    let data: serde_json::Value = serde_json::from_slice(&message.payload).expect("json");
    data["body"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn reads_only_as_fast_as_the_bus_accepts_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.txt");
    std::fs::write(&path, "a\nb\n\nc\nd\ne").expect("write");
    let bus = MemoryBus::new(Limits {
        max_msgs: Some(2),
        ..Limits::default()
    });
    let consumer = bus
        .consumer(ConsumerConfig::new("c"))
        .await
        .expect("consumer");
    let metrics = Arc::new(Metrics::new());
    let ctx = SourceContext {
        bus: bus.clone(),
        metrics,
        stop: CancellationToken::new(),
    };
    let task = tokio::spawn(source("in.txt", false).run(reader(&path).await, ctx));
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let batch = consumer
            .fetch(1, Duration::from_secs(10))
            .await
            .expect("fetch");
        assert_eq!(batch.len(), 1, "a line should arrive within 10 s");
        // The source waits on the full bus: never more than 2 held.
        assert!(bus.stats().messages <= 2);
        seen.push(body(&batch[0]));
        consumer.ack(batch[0].seq).await.expect("ack");
    }
    task.await.expect("file task");
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn follows_appended_lines_and_skips_overlong_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("log.txt");
    std::fs::write(&path, "first\n").expect("write");
    let bus = MemoryBus::new(Limits {
        max_msg_size: Some(400),
        ..Limits::default()
    });
    let consumer = bus
        .consumer(ConsumerConfig::new("c"))
        .await
        .expect("consumer");
    let metrics = Arc::new(Metrics::new());
    let ctx = SourceContext {
        bus: bus.clone(),
        metrics: Arc::clone(&metrics),
        stop: CancellationToken::new(),
    };
    let stop = ctx.stop.clone();
    let task = tokio::spawn(source("log.txt", true).run(reader(&path).await, ctx));
    let first = consumer
        .fetch(1, Duration::from_secs(10))
        .await
        .expect("fetch");
    assert_eq!(first.iter().map(body).collect::<Vec<_>>(), ["first"]);
    {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("append");
        write!(file, "{}\nsec", "x".repeat(1000)).expect("append");
        file.flush().expect("flush");
        // The rest of a line written in two pieces arrives whole.
        writeln!(file, "ond").expect("append");
    }
    let second = consumer
        .fetch(1, Duration::from_secs(10))
        .await
        .expect("fetch");
    assert_eq!(second.iter().map(body).collect::<Vec<_>>(), ["second"]);
    stop.cancel();
    task.await.expect("file task");
    assert!(metrics.encode().contains(
        "spillway_source_events_total{source=\"files\",event=\"lines\",outcome=\"too_large\"} 1"
    ));
}
