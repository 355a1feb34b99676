//! `spillway storm --scenario midnight-spike`, shrunk to a few seconds (the
//! hidden scale flags): the whole machinery end to end — pipeline,
//! built-in downstream, storm, drain, checks — must PASS with nothing
//! lost, and Ctrl-C must shut it down cleanly.

use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The miniature: 3 s base, 6 s peak at 200/s, a 300-event bus, a 60/s
/// drain; the peak's priority 0-2 share (100/s) outruns the drain, so the
/// bus fills even with shedding on.
const MINIATURE: [&str; 6] = [
    "--scenario-scale",
    "0.1",
    "--scenario-bus-scale",
    "0.02",
    "--scenario-rate-scale",
    "0.2",
];

#[tokio::test]
async fn the_midnight_spike_in_miniature_passes_and_loses_nothing() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["storm", "--scenario", "midnight-spike"])
        .args(MINIATURE)
        .arg("--out")
        .arg(out.path())
        .output();
    let run = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the scenario finished within 2 minutes")
        .expect("run spillway storm --scenario");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let md = std::fs::read_to_string(out.path().join("scenario.md")).unwrap_or_default();
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nscenario.md:\n{md}"
    );
    assert!(md.starts_with("# Scenario: midnight-spike — PASS"), "{md}");
    assert!(!md.contains("| FAIL |"), "{md}");
    assert!(md.contains(" 0 lost"), "{md}");
    // The narration (lines starting `[  Ns]`) told the story once per
    // transition.
    let narration: Vec<&str> = stdout.lines().filter(|l| l.starts_with('[')).collect();
    for what in [
        "bus filling",
        "shedding priority > 2",
        "spike over",
        "drained in",
    ] {
        let told = narration.iter().filter(|l| l.contains(what)).count();
        assert_eq!(told, 1, "{what:?} once in:\n{stdout}");
    }
    // The storm's own report sits next to it, with the admin samples.
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("report.json")).expect("report.json"),
    )
    .expect("report JSON");
    assert!(
        report["totals"]["rejected_shed"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    assert!(out.path().join("queue_depth.svg").exists());
}

#[tokio::test]
async fn ctrl_c_stops_the_storm_and_the_pipeline_with_exit_130() {
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .args(["storm", "--scenario", "midnight-spike"])
        // Long enough to be interrupted mid-storm: 60 s of storm.
        .args(["--scenario-scale", "0.5", "--scenario-rate-scale", "0.1"])
        .arg("--out")
        .arg(out.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn spillway");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("storm:") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(started.ok(), Some(true), "the storm never started");
    let pid = child.id().expect("pid").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exited within 30 s of Ctrl-C")
        .expect("wait");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut err, &mut stderr).await;
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted: the pipeline was shut down"),
        "{stderr}"
    );
    // The pipeline shut down gracefully, not by dying with the process.
    assert!(stderr.contains("stopped"), "{stderr}");
    assert!(!out.path().join("scenario.md").exists());
}
