//! The `file` source reading standard input (`path: "-"`) through the real
//! binary, into a bus far smaller than the input: the source reads only as
//! fast as the bus accepts, and every line reaches the trigger once.

mod common;

use common::{eventbus, free_port, http_trigger, sensor, wait_until, Receiver};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn stdin_lines_all_arrive_through_a_small_bus() {
    let receiver = Receiver::start(true).await;
    let config = format!(
        "{}---\napiVersion: argoproj.io/v1alpha1\nkind: EventSource\nmetadata:\n  name: input\nspec:\n  file:\n    lines:\n      path: \"-\"\n      jsonBody: true\n---\n{}",
        eventbus(10),
        sensor(
            "lines",
            "input",
            "lines",
            &format!(
                "{}      rateLimit: {{requestsPerUnit: 500, unit: Second}}\n",
                http_trigger("forward", &receiver.url)
            )
        )
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["run", "-f"])
        .arg(&file)
        .args(["--admin", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spillway");
    let mut stdin = child.stdin.take().expect("stdin");
    // Killed however the test ends.
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = KillOnDrop(child);
    // 300 lines into a bus of 10: the writes block while the bus is full
    // (the pipe fills), so write from a thread.
    let writer = std::thread::spawn(move || {
        for i in 0..300 {
            writeln!(stdin, r#"{{"id":"line-{i}"}}"#).expect("write a line");
        }
    });
    wait_until(
        "300 lines at the downstream",
        Duration::from_secs(60),
        || async { receiver.count().await >= 300 },
    )
    .await;
    writer.join().expect("writer");
    let bodies = receiver.bodies().await;
    let mut ids: Vec<String> = bodies
        .iter()
        .map(|b| b["body"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((ids.len(), bodies.len()), (300, 300), "each line once");
}
