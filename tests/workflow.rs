//! argoWorkflow triggers through the real binary: workflows are `sh`
//! scripts that record their own concurrency (a counter under a `mkdir`
//! lock, every value it takes appended to `seen`) and wait for a `go` file,
//! so each test decides when workflows may finish.

mod common;

use common::{client, free_port, metric, orders_pipeline, wait_until, Spillway};
use std::path::{Path, PathBuf};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// The shared directory of one test's workflows.
struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    fn new() -> Workdir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("count"), "0").expect("count file");
        Workdir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Lets every workflow (waiting or later) finish.
    fn go(&self) {
        std::fs::write(self.path("go"), "").expect("go file");
    }

    /// Every concurrency value a workflow saw when it started.
    fn seen(&self, file: &str) -> Vec<u32> {
        read_lines(&self.path(file))
            .iter()
            .map(|l| l.trim().parse().expect("a count"))
            .collect()
    }

    /// The event JSON each finished workflow read from stdin.
    fn done(&self) -> Vec<serde_json::Value> {
        read_lines(&self.path("done"))
            .iter()
            .map(|l| serde_json::from_str(l).expect("event JSON on stdin"))
            .collect()
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// A workflow script: count up, wait for `go`, sleep `hold`, count down,
/// log stdin to `done`. Every wait gives up after 60 s (or once the test's
/// directory is gone), so nothing outlives a failed test for long.
fn script(dir: &Path, hold: &str) -> String {
    let d = dir.display();
    format!(
        r#"D={d}
lock() {{ i=0; until mkdir "$D/lock" 2>/dev/null; do [ -d "$D" ] && [ $i -lt 6000 ] || exit 1; sleep 0.01; i=$((i+1)); done; }}
lock
n=$(( $(cat "$D/count") + 1 )); echo $n > "$D/count"; echo $n >> "$D/seen"
rmdir "$D/lock"
i=0; while [ ! -e "$D/go" ]; do [ -d "$D" ] && [ $i -lt 1200 ] || exit 1; sleep 0.05; i=$((i+1)); done
sleep {hold}
lock
n=$(( $(cat "$D/count") - 1 )); echo $n > "$D/count"
{{ cat; echo; }} >> "$D/done"
rmdir "$D/lock"
"#
    )
}

/// The seed's ConfigMap and WorkflowTemplate (limit `limit`), with the
/// template running `script` as a `script:` template.
fn seed_documents(limit: u32, script: &str) -> String {
    let source: String = script.lines().map(|l| format!("          {l}\n")).collect();
    format!(
        r#"---
apiVersion: v1
kind: ConfigMap
metadata:
  name: workflow-semaphores
data:
  api-calls: "{limit}"
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  synchronization:
    semaphore:
      configMapKeyRef:
        name: workflow-semaphores
        key: api-calls
  templates:
    - name: main
      script:
        image: alpine:3.20
        command: [sh]
        source: |
{source}"#
    )
}

/// An argoWorkflow trigger submitting an `api-consumer` Workflow, with
/// `flow` lines under the trigger (e.g. a `flowControl:` block).
fn workflow_trigger(flow: &str) -> String {
    format!(
        r#"    - template:
        name: consume
        argoWorkflow:
          operation: submit
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: api-consumer-
              spec:
                workflowTemplateRef:
                  name: api-consumer
{flow}"#
    )
}

/// POSTs `{"n": n}` for each `n`, all at once; returns the statuses.
async fn post_all(port: u16, ns: impl Iterator<Item = usize>) -> Vec<u16> {
    let url = format!("http://127.0.0.1:{port}/orders");
    let requests = ns.map(|n| {
        let url = url.clone();
        tokio::spawn(async move {
            client()
                .post(&url)
                .body(format!(r#"{{"n":{n}}}"#))
                .send()
                .await
                .expect("POST")
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for request in requests.collect::<Vec<_>>() {
        statuses.push(request.await.expect("join"));
    }
    statuses
}

async fn gauge(spillway: &Spillway, series: &str) -> f64 {
    metric(&spillway.metrics().await, series)
}

const PENDING: &str = r#"spillway_workflows_pending{template="api-consumer"}"#;
const RUNNING: &str = r#"spillway_workflows_running{template="api-consumer"}"#;
const SEMAPHORE: &str = r#"spillway_semaphore_limit{name="workflow-semaphores/api-calls"}"#;

/// Issue 7: `api-calls: "5"`, 50 events: never more than 5 run, pending
/// goes 45 → 0, all 50 finish with their event on stdin.
#[tokio::test]
async fn semaphore_of_five_runs_fifty_workflows_five_at_a_time() {
    let work = Workdir::new();
    let port = free_port();
    let config = orders_pipeline("", port, "", &workflow_trigger(""))
        + &seed_documents(5, &script(work.dir.path(), "0.2"));
    let spillway = Spillway::start(&config).await;
    assert!(
        spillway
            .log_text()
            .contains("`image` is ignored for: api-consumer/main (alpine:3.20)"),
        "{}",
        spillway.log_text()
    );

    let statuses = post_all(port, 0..50).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    wait_until("5 running and 45 pending", LIMIT, || async {
        let text = spillway.metrics().await;
        metric(&text, RUNNING) == 5.0 && metric(&text, PENDING) == 45.0
    })
    .await;
    assert_eq!(gauge(&spillway, SEMAPHORE).await, 5.0);
    let status = spillway.status().await;
    assert_eq!(status["semaphores"][0]["running"], 5, "{status}");
    assert_eq!(status["semaphores"][0]["pending"], 45, "{status}");
    assert_eq!(status["triggers"][0]["pending"], 45, "{status}");
    wait_until(
        "the 5 running workflows to count themselves",
        LIMIT,
        || async { work.seen("seen").len() == 5 },
    )
    .await;

    work.go();
    let highest_pending = std::cell::Cell::new(45.0_f64);
    wait_until("all 50 workflows to finish", LIMIT, || async {
        let text = spillway.metrics().await;
        highest_pending.set(highest_pending.get().max(metric(&text, PENDING)));
        work.done().len() == 50 && metric(&text, PENDING) == 0.0 && metric(&text, RUNNING) == 0.0
    })
    .await;
    assert_eq!(highest_pending.get(), 45.0, "pending never grows past 45");

    let seen = work.seen("seen");
    assert_eq!(seen.len(), 50);
    assert_eq!(
        seen.iter().max(),
        Some(&5),
        "never more than 5 at once: {seen:?}"
    );
    let mut ns: Vec<u64> = work
        .done()
        .iter()
        .map(|e| e["data"]["body"]["n"].as_u64().expect("the posted n"))
        .collect();
    ns.sort_unstable();
    assert_eq!(
        ns,
        (0..50).collect::<Vec<u64>>(),
        "each event ran exactly once"
    );
    let text = spillway.metrics().await;
    assert_eq!(
        metric(
            &text,
            r#"spillway_trigger_invocations_total{sensor="orders",trigger="consume",outcome="success"}"#
        ),
        50.0
    );
}

/// Issue 7: SIGHUP with the limit changed 5 → 2: the running workflows
/// finish, and from then on at most 2 run.
#[tokio::test]
async fn sighup_shrinks_the_limit_without_killing_running_workflows() {
    let work = Workdir::new();
    let port = free_port();
    let script = script(work.dir.path(), "0.3");
    let config = orders_pipeline("", port, "", &workflow_trigger("")) + &seed_documents(5, &script);
    let spillway = Spillway::start(&config).await;

    let statuses = post_all(port, 0..20).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    wait_until("5 running and 15 pending", LIMIT, || async {
        let text = spillway.metrics().await;
        metric(&text, RUNNING) == 5.0 && metric(&text, PENDING) == 15.0
    })
    .await;
    wait_until(
        "the 5 running workflows to count themselves",
        LIMIT,
        || async { work.seen("seen").len() == 5 },
    )
    .await;

    let shrunk = config.replace(r#"api-calls: "5""#, r#"api-calls: "2""#);
    assert_ne!(shrunk, config);
    std::fs::write(&spillway.config, shrunk).expect("rewrite the config");
    spillway.reload();
    wait_until("the new limit", LIMIT, || async {
        gauge(&spillway, SEMAPHORE).await == 2.0
    })
    .await;
    assert!(
        spillway
            .log_text()
            .contains("semaphore workflow-semaphores/api-calls limit 5 → 2"),
        "{}",
        spillway.log_text()
    );
    let text = spillway.metrics().await;
    assert_eq!(
        metric(&text, RUNNING),
        5.0,
        "shrinking kills no running workflow"
    );
    assert_eq!(metric(&text, PENDING), 15.0);
    // Nothing starts meanwhile: every later start is recorded in `seen`
    // again, which is now empty.
    std::fs::rename(work.path("seen"), work.path("seen-before")).expect("rename");

    work.go();
    wait_until("all 20 workflows to finish", LIMIT, || async {
        work.done().len() == 20
    })
    .await;
    assert_eq!(work.seen("seen-before"), [1, 2, 3, 4, 5]);
    let after = work.seen("seen");
    assert_eq!(after.len(), 15, "{after:?}");
    assert!(
        after.iter().all(|&n| n <= 2),
        "at most 2 at once after the reload: {after:?}"
    );
}

/// Issue 7: the pending queue full → the trigger stops pulling → the bus
/// fills → the webhook answers 429; once workflows run again, every
/// accepted event is processed.
#[tokio::test]
async fn full_pending_queue_pushes_back_to_the_webhook() {
    let work = Workdir::new();
    let port = free_port();
    let bus = r#"apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      max_msgs: 8"#;
    let flow = "      flowControl:\n        maxPending: 3\n";
    let config = orders_pipeline(bus, port, "", &workflow_trigger(flow))
        + &seed_documents(1, &script(work.dir.path(), "0"));
    let spillway = Spillway::start(&config).await;

    // 1 running + 3 pending are fetched; the other 4 wait in the bus.
    for n in 0..8 {
        assert_eq!(post_all(port, n..n + 1).await, [200], "event {n}");
        let accepted = n + 1;
        wait_until("the runner to take what it can", LIMIT, || async {
            let text = spillway.metrics().await;
            let fetched = metric(&text, RUNNING) + metric(&text, PENDING);
            fetched == (accepted as f64).min(4.0)
        })
        .await;
    }
    let status = spillway.status().await;
    assert_eq!(status["bus"]["messages"], 8, "{status}");
    assert_eq!(status["triggers"][0]["pending"], 3, "{status}");
    assert_eq!(status["triggers"][0]["max_pending"], 3, "{status}");
    assert_eq!(
        status["triggers"][0]["ack_pending"], 4,
        "the runner stopped pulling: {status}"
    );
    assert_eq!(status["triggers"][0]["lag"], 4, "{status}");

    let refused = client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .body(r#"{"n":99}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused
            .headers()
            .get("x-spillway-reason")
            .and_then(|v| v.to_str().ok()),
        Some("bus_full")
    );
    assert!(refused.headers().contains_key("retry-after"));
    let text = spillway.metrics().await;
    assert_eq!(
        metric(&text, PENDING),
        3.0,
        "pending never passes maxPending"
    );
    assert_eq!(metric(&text, RUNNING), 1.0);

    work.go();
    wait_until("every accepted event to run", LIMIT, || async {
        work.done().len() == 8
    })
    .await;
    let seen = work.seen("seen");
    assert!(seen.iter().all(|&n| n == 1), "one at a time: {seen:?}");
    assert_eq!(post_all(port, 100..101).await, [200], "room again");
    wait_until("the last event to run", LIMIT, || async {
        work.done().len() == 9
    })
    .await;
}

/// Argo's other form: the Workflow carries its own `spec.templates` (and
/// semaphore) instead of naming a WorkflowTemplate. It runs the same way,
/// under the name `<sensor>/<trigger>`: 6 events, `limit: "2"`, never more
/// than 2 at once, all 6 finish.
#[tokio::test]
async fn an_inline_workflow_spec_runs_with_its_own_semaphore() {
    let work = Workdir::new();
    let port = free_port();
    let source: String = script(work.dir.path(), "0.1")
        .lines()
        .map(|l| format!("                        {l}\n"))
        .collect();
    let trigger = format!(
        r#"    - template:
        name: consume
        argoWorkflow:
          operation: submit
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: inline-
              spec:
                entrypoint: work
                synchronization:
                  semaphore:
                    configMapKeyRef:
                      name: inline-limits
                      key: workers
                templates:
                  - name: work
                    script:
                      command: [sh]
                      source: |
{source}---
apiVersion: v1
kind: ConfigMap
metadata:
  name: inline-limits
data:
  workers: "2"
"#
    );
    let spillway = Spillway::start(&orders_pipeline("", port, "", &trigger)).await;
    let statuses = post_all(port, 0..6).await;
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let running = r#"spillway_workflows_running{template="orders/consume"}"#;
    let pending = r#"spillway_workflows_pending{template="orders/consume"}"#;
    wait_until("2 running and 4 pending", LIMIT, || async {
        let text = spillway.metrics().await;
        metric(&text, running) == 2.0 && metric(&text, pending) == 4.0
    })
    .await;
    work.go();
    wait_until("all 6 workflows to finish", LIMIT, || async {
        work.done().len() == 6
    })
    .await;
    let seen = work.seen("seen");
    assert_eq!(seen.len(), 6);
    assert_eq!(seen.iter().max(), Some(&2), "at most 2 at once: {seen:?}");
}
