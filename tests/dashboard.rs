//! The live dashboard at the admin server's `/`, loaded in headless
//! Chromium: the numbers it shows are the ones `/api/v1/status` reports, it
//! draws charts from the server's history and its own polls, and it says
//! "disconnected" (and keeps polling) when the status API is unreachable.
//!
//! Chromium runs with `--virtual-time-budget`: the page's timers run on a
//! virtual clock (five 1 s polls take well under a second of real time),
//! which is why the dashboard takes its rates from the server's
//! `uptime_seconds` and not from the browser's clock.
//!
//! Without `/usr/bin/chromium` the Chromium tests print why and pass
//! (`.ci/run` installs it). `SPILLWAY_UPDATE_SCREENSHOT=1` rewrites
//! `docs/dashboard.png` from the pipeline test.

mod common;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{free_port, wait_until, Receiver, Spillway};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const WAIT: Duration = Duration::from_secs(30);
/// The bus holds this many events; the downstream holds `IN_FLIGHT` of them.
const MAX_MSGS: u64 = 10;
const IN_FLIGHT: u64 = 2;

fn chromium_missing() -> bool {
    if Path::new(CHROMIUM).exists() {
        return false;
    }
    eprintln!(
        "SKIPPED: {CHROMIUM} not found; install Debian's `chromium` package (.ci/run does) to run the dashboard's browser tests"
    );
    true
}

/// Runs headless Chromium on `url` with `extra` arguments (e.g.
/// `--dump-dom`) and returns what it printed. Each run gets its own
/// profile directory so parallel tests do not collide.
async fn chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("chromium finished within 90 s")
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The page after five seconds of (virtual) time: about five polls.
async fn dump_dom(url: &str) -> String {
    chromium(url, &["--virtual-time-budget=5000", "--dump-dom"]).await
}

/// The text of the element carrying `data-field="name"` in a dumped DOM.
fn field(dom: &str, name: &str) -> String {
    let needle = format!("data-field=\"{name}\"");
    let at = dom
        .find(&needle)
        .unwrap_or_else(|| panic!("no {needle} on the page:\n{dom}"));
    let rest = &dom[at..];
    let open = rest.find('>').expect("end of the start tag") + 1;
    let close = rest[open..].find('<').expect("end of the element") + open;
    rest[open..close]
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
}

/// A displayed count (`1,234` → 1234).
fn number(dom: &str, name: &str) -> u64 {
    let text = field(dom, name);
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("{name} shows {text:?}, not a count"))
}

fn u64_at(status: &Value, pointer: &str) -> u64 {
    status
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("status has no count at {pointer}: {status}"))
}

/// Every built-in rule but QueueDepthExceeded is off, and that one fires
/// after 200 ms, so the alert panel is stable while the page is read.
const ALERT_RULES: &str = "apiVersion: spillway.io/v1alpha1
kind: AlertRules
metadata:
  name: alerts
spec:
  evaluationInterval: 100ms
  rules:
    QueueDepthExceeded:
      for: 200ms
    ConsumerLagIncreasing:
      enabled: false
    ProducerBlockTime:
      enabled: false
    EventAgeHigh:
      enabled: false
    SensorLatencyIncreasing:
      enabled: false
    WorkflowsPendingGrowing:
      enabled: false
    BusMemoryHigh:
      enabled: false
";

/// Webhook `shop/orders` → http trigger `orders/forward` to `downstream`,
/// [`IN_FLIGHT`] calls at a time, on a bus of [`MAX_MSGS`].
fn pipeline(port: u16, downstream: &str) -> String {
    let trigger = common::http_trigger("forward", downstream)
        + &format!(
            "      flowControl:\n        concurrency: fixed\n        maxInFlight: {IN_FLIGHT}\n"
        );
    format!(
        "{}\n---\n{ALERT_RULES}",
        common::orders_pipeline(&common::eventbus(MAX_MSGS), port, "", &trigger)
    )
}

async fn post_order(client: &reqwest::Client, port: u16, i: usize) -> reqwest::StatusCode {
    client
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"id":"o-{i}"}}"#))
        .send()
        .await
        .expect("POST /orders")
        .status()
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary_without_caching() {
    let port = free_port();
    let receiver = Receiver::start(true).await;
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url)).await;
    let client = common::client();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/style.css", "text/css; charset=utf-8"),
    ] {
        let response = client
            .get(format!("{}{path}", spillway.admin))
            .send()
            .await
            .expect("GET asset");
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], content_type, "{path}");
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache", "{path}");
        // No CDN, no external fonts: everything comes from this server. (The
        // SVG namespace is a name, not something fetched.)
        let body = response
            .text()
            .await
            .expect("asset body")
            .replace("\"http://www.w3.org/2000/svg\"", "");
        assert!(
            !body.contains("http://") && !body.contains("https://"),
            "{path} refers to another host"
        );
    }
    let missing = client
        .get(format!("{}/dashboard/nope.js", spillway.admin))
        .send()
        .await
        .expect("GET missing asset");
    assert_eq!(missing.status(), 404);

    // The history the page starts from: one sample a second, oldest first.
    wait_until("two history samples", WAIT, || async {
        let history: Value = client
            .get(format!("{}/api/v1/status/history", spillway.admin))
            .send()
            .await
            .expect("GET history")
            .json()
            .await
            .expect("history JSON");
        history.as_array().is_some_and(|h| h.len() >= 2)
    })
    .await;
    let history: Vec<Value> = client
        .get(format!("{}/api/v1/status/history", spillway.admin))
        .send()
        .await
        .expect("GET history")
        .json()
        .await
        .expect("history JSON");
    let uptimes: Vec<f64> = history
        .iter()
        .map(|s| s["uptime_seconds"].as_f64().expect("uptime_seconds"))
        .collect();
    assert!(
        uptimes.windows(2).all(|w| w[0] < w[1]),
        "history is oldest first: {uptimes:?}"
    );
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn the_dashboard_in_chromium_shows_what_the_status_api_reports() {
    if chromium_missing() {
        return;
    }
    let screenshot = std::env::var_os("SPILLWAY_UPDATE_SCREENSHOT").is_some_and(|v| v == "1");
    // Holds every call: IN_FLIGHT events stay in flight, the rest wait on the bus.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url)).await;
    let client = common::client();

    // Fill the bus at a walking pace (the charts show the ramp), then keep
    // offering events it refuses: 429 bus_full while the page is read.
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    for i in 0..MAX_MSGS as usize {
        pace.tick().await;
        assert_eq!(post_order(&client, port, i).await, 200, "event {i}");
    }
    let offered = Arc::new(AtomicUsize::new(0));
    let load = {
        let client = client.clone();
        let offered = Arc::clone(&offered);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            loop {
                pace.tick().await;
                let i = offered.fetch_add(1, Ordering::SeqCst);
                post_order(&client, port, MAX_MSGS as usize + i).await;
            }
        })
    };
    wait_until("the downstream holding its window", WAIT, || async {
        receiver.arrivals() == IN_FLIGHT as usize
    })
    .await;
    wait_until("QueueDepthExceeded firing", WAIT, || async {
        let status = spillway.status().await;
        status["alerts"]
            .as_array()
            .is_some_and(|a| a.iter().any(|a| a["state"] == "firing"))
    })
    .await;
    if screenshot {
        // Half a minute of history, so the charts have a story to show.
        wait_until("30 s of uptime", Duration::from_secs(60), || async {
            spillway.status().await["uptime_seconds"].as_f64() >= Some(30.0)
        })
        .await;
    }

    let before = spillway.status().await;
    let dom = dump_dom(&format!("{}/", spillway.admin)).await;
    let after = spillway.status().await;

    assert_eq!(field(&dom, "connection"), "live");
    assert_eq!(field(&dom, "state"), "ready");
    assert_eq!(field(&dom, "bus.stream"), before["bus"]["stream"]);
    // Values that stay put while the page is read must match exactly.
    for (name, pointer) in [
        ("bus.messages", "/bus/messages"),
        ("bus.limits.max_msgs", "/bus/limits/max_msgs"),
        ("bus.published", "/bus/published"),
        ("trigger.orders/forward.lag", "/triggers/0/lag"),
        (
            "trigger.orders/forward.ack_pending",
            "/triggers/0/ack_pending",
        ),
        ("trigger.orders/forward.inflight", "/triggers/0/inflight"),
        (
            "trigger.orders/forward.concurrency_limit",
            "/triggers/0/concurrency_limit",
        ),
        (
            "trigger.orders/forward.max_in_flight",
            "/triggers/0/max_in_flight",
        ),
        ("trigger.orders/forward.pending", "/triggers/0/pending"),
        (
            "trigger.orders/forward.success",
            "/triggers/0/invocations/success",
        ),
        (
            "source.shop/orders.accepted",
            "/sources/0/outcomes/accepted",
        ),
        (
            "source.shop/orders.rate_limited",
            "/sources/0/outcomes/rate_limited",
        ),
        ("source.shop/orders.shed", "/sources/0/outcomes/shed"),
    ] {
        assert_eq!(
            number(&dom, name),
            u64_at(&after, pointer),
            "{name} on the page vs {pointer}"
        );
        assert_eq!(
            u64_at(&before, pointer),
            u64_at(&after, pointer),
            "{pointer} moved"
        );
    }
    // And they are the pipeline's real state, not just equal to each other.
    assert_eq!(number(&dom, "bus.messages"), MAX_MSGS);
    assert_eq!(number(&dom, "trigger.orders/forward.inflight"), IN_FLIGHT);
    assert_eq!(
        number(&dom, "trigger.orders/forward.lag"),
        MAX_MSGS - IN_FLIGHT
    );
    assert_eq!(number(&dom, "source.shop/orders.accepted"), MAX_MSGS);
    // Refusals keep coming while the page polls: between the two readings.
    let bus_full = number(&dom, "source.shop/orders.bus_full");
    let (low, high) = (
        u64_at(&before, "/sources/0/outcomes/bus_full"),
        u64_at(&after, "/sources/0/outcomes/bus_full"),
    );
    assert!(
        low > 0 && (low..=high).contains(&bus_full),
        "bus_full on the page {bus_full}, status {low}..={high}"
    );
    let firing = |s: &Value| {
        s["alerts"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|a| a["state"] == "firing").count()) as u64
    };
    assert_eq!(number(&dom, "alerts.firing"), firing(&after));
    assert_eq!(number(&dom, "alerts.firing"), 1);
    assert!(dom.contains("data-alert=\"QueueDepthExceeded\""));
    // Live: the page holds the server's history plus its own polls, and
    // drew a line per series (depth and max_msgs at least).
    let history_len = before["uptime_seconds"].as_f64().unwrap_or(0.0).floor() as u64;
    let samples = number(&dom, "samples");
    assert!(
        samples >= (history_len + 3).min(300),
        "{samples} samples on the page, server up {history_len} s"
    );
    assert!(
        dom.matches("class=\"line").count() >= 6,
        "charts have lines"
    );
    assert_ne!(field(&dom, "rate.refused"), "–", "a 429 rate is shown");

    if screenshot {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png");
        let arg = format!("--screenshot={}", path.display());
        chromium(
            &format!("{}/", spillway.admin),
            &["--virtual-time-budget=3000", "--window-size=1280,900", &arg],
        )
        .await;
        assert!(path.exists(), "screenshot written to {}", path.display());
    }
    load.abort();
    receiver.open();
    assert!(spillway.terminate().await.success());
}

/// What the stand-in admin server answers.
#[derive(Clone)]
struct FakeAdmin {
    assets: Arc<[(String, String, String)]>,
    status: Arc<String>,
    /// Status requests answered 503 before the first 200.
    refuse_first: usize,
    requests: Arc<AtomicUsize>,
}

async fn fake_asset(State(fake): State<FakeAdmin>, uri: axum::http::Uri) -> Response {
    match fake.assets.iter().find(|(path, _, _)| *path == uri.path()) {
        Some((_, content_type, body)) => {
            ([(header::CONTENT_TYPE, content_type.clone())], body.clone()).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn fake_status(State(fake): State<FakeAdmin>) -> Response {
    let n = fake.requests.fetch_add(1, Ordering::SeqCst);
    if n < fake.refuse_first {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        fake.status.as_str().to_string(),
    )
        .into_response()
}

/// Serves the real dashboard assets and a status API that answers 503 to
/// the first `refuse_first` requests (and to every history request).
async fn fake_admin(
    assets: Arc<[(String, String, String)]>,
    status: Arc<String>,
    refuse_first: usize,
) -> (String, Arc<AtomicUsize>) {
    let requests = Arc::new(AtomicUsize::new(0));
    let fake = FakeAdmin {
        assets,
        status,
        refuse_first,
        requests: Arc::clone(&requests),
    };
    let app = axum::Router::new()
        .route("/api/v1/status", axum::routing::get(fake_status))
        .route(
            "/api/v1/status/history",
            axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        )
        .fallback(fake_asset)
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake admin");
    let addr = listener.local_addr().expect("fake admin addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), requests)
}

#[tokio::test]
async fn the_dashboard_says_disconnected_and_keeps_polling_until_the_server_answers() {
    if chromium_missing() {
        return;
    }
    // Take the real page and a real status document from spillway, then
    // stop it: a stand-in server plays an admin server that went away.
    let port = free_port();
    let receiver = Receiver::start(true).await;
    let mut spillway = Spillway::start(&pipeline(port, &receiver.url)).await;
    let client = common::client();
    let mut assets = Vec::new();
    for path in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let response = client
            .get(format!("{}{path}", spillway.admin))
            .send()
            .await
            .expect("GET asset");
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("content type")
            .to_string();
        let body = response.text().await.expect("asset body");
        assets.push((path.to_string(), content_type, body));
    }
    let status = spillway.status().await;
    assert!(spillway.terminate().await.success());
    let assets: Arc<[_]> = assets.into();
    let status = Arc::new(status.to_string());

    // Never answers: the page says so and keeps asking, once a second.
    let (down, requests) = fake_admin(Arc::clone(&assets), Arc::clone(&status), usize::MAX).await;
    let dom = dump_dom(&format!("{down}/")).await;
    assert_eq!(
        field(&dom, "connection"),
        "disconnected (HTTP 503), retrying"
    );
    assert_eq!(field(&dom, "bus.messages"), "–", "nothing made up");
    assert!(
        requests.load(Ordering::SeqCst) >= 4,
        "kept polling: {} requests",
        requests.load(Ordering::SeqCst)
    );

    // Comes back after three refusals: the page shows it live again.
    let (back, requests) = fake_admin(assets, status, 3).await;
    let dom = dump_dom(&format!("{back}/")).await;
    assert!(requests.load(Ordering::SeqCst) >= 4);
    assert_eq!(field(&dom, "connection"), "live");
    assert_eq!(field(&dom, "bus.stream"), "default");
    assert_eq!(number(&dom, "bus.limits.max_msgs"), MAX_MSGS);
}
