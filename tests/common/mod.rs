//! Helpers for end-to-end tests: run the real `spillway` binary on
//! ephemeral ports, and an HTTP receiver that stands in for a downstream.

#![allow(dead_code)]

use axum::extract::State;
use axum::http::StatusCode;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

/// An HTTP client for tests.
pub fn client() -> reqwest::Client {
    spillway::install_tls_provider();
    reqwest::Client::new()
}

/// A port that was free a moment ago (the OS picks it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Polls `condition` every 20 ms until it holds or `limit` passes.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `spillway run` process, killed on drop.
pub struct Spillway {
    child: Child,
    pub admin: String,
    pub log: PathBuf,
    /// The config file given with `-f` (rewrite it, then [`Spillway::reload`]).
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Spillway {
    /// Writes `config` to a temp file, starts `spillway run`, waits for `/readyz`.
    pub async fn start(config: &str) -> Spillway {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        Spillway::launch(config, dir, &data, &[], &[]).await
    }

    /// Like [`Spillway::start`], with extra `spillway run` arguments and
    /// environment variables (e.g. `--secrets-dir`, `SPILLWAY_SECRET_…`).
    pub async fn start_with(config: &str, args: &[&str], envs: &[(&str, &str)]) -> Spillway {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        Spillway::launch(config, dir, &data, args, envs).await
    }

    /// Like [`Spillway::start`], with the bus in `data_dir` (to restart on
    /// the same bus).
    pub async fn start_in(config: &str, data_dir: &std::path::Path) -> Spillway {
        Spillway::start_in_with(config, data_dir, &[]).await
    }

    /// Like [`Spillway::start_in`], with extra `spillway run` arguments.
    pub async fn start_in_with(
        config: &str,
        data_dir: &std::path::Path,
        args: &[&str],
    ) -> Spillway {
        let dir = tempfile::tempdir().expect("tempdir");
        Spillway::launch(config, dir, data_dir, args, &[]).await
    }

    /// Like [`Spillway::start_in`], armed to abort at a crash point
    /// (`SPILLWAY_CRASH_AT`, see `spillway::failpoint`).
    pub async fn start_crashing_at(
        config: &str,
        data_dir: &std::path::Path,
        point: spillway::failpoint::CrashPoint,
    ) -> Spillway {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = [(spillway::failpoint::CRASH_AT_ENV, point.name())];
        Spillway::launch(config, dir, data_dir, &[], &env).await
    }

    async fn launch(
        config: &str,
        dir: tempfile::TempDir,
        data_dir: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Spillway {
        match Spillway::try_launch(config, dir, data_dir, args, envs).await {
            Ok(spillway) => spillway,
            Err(why) => panic!("{why}"),
        }
    }

    async fn try_launch(
        config: &str,
        dir: tempfile::TempDir,
        data_dir: &std::path::Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Spillway, String> {
        let file = dir.path().join("pipeline.yaml");
        std::fs::write(&file, config).expect("write config");
        let log = dir.path().join("spillway.log");
        let admin_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_spillway"))
            .arg("run")
            .arg("-f")
            .arg(&file)
            .arg("--admin")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--grace")
            .arg("10s")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn spillway");
        let mut spillway = Spillway {
            child,
            admin: format!("http://127.0.0.1:{admin_port}"),
            log,
            config: file,
            _dir: dir,
        };
        let ready = format!("{}/readyz", spillway.admin);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client().get(&ready).send().await {
                if r.status().is_success() {
                    return Ok(spillway);
                }
            }
            if let Ok(Some(status)) = spillway.child.try_wait() {
                return Err(format!(
                    "spillway exited with {status}:\n{}",
                    spillway.log_text()
                ));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spillway not ready:\n{}",
                spillway.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Like [`Spillway::start`], starting again while the process exits
    /// during start-up (a bus that is not ready yet), for up to `limit`.
    pub async fn start_retrying(config: &str, limit: Duration) -> Spillway {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = dir.path().join("data");
            match Spillway::try_launch(config, dir, &data, &[], &[]).await {
                Ok(spillway) => return spillway,
                Err(why) if tokio::time::Instant::now() >= deadline => panic!("{why}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub async fn status(&self) -> serde_json::Value {
        client()
            .get(format!("{}/api/v1/status", self.admin))
            .send()
            .await
            .expect("GET /api/v1/status")
            .json()
            .await
            .expect("status JSON")
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.terminate_wait().await
    }

    /// Sends SIGHUP: spillway re-reads [`Spillway::config`].
    pub fn reload(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(&pid)
            .status();
        assert!(
            sent.map(|s| s.success()).unwrap_or(false),
            "kill -{name} failed"
        );
    }

    /// Waits for the process to exit (after a signal was sent, or a crash point).
    pub async fn terminate_wait(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "spillway did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Spillway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name{labels}` in Prometheus text, 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A downstream HTTP server that records JSON bodies. While closed, requests
/// wait (a slow downstream) until [`Receiver::open`]; while refusing
/// ([`Receiver::set_refusing`]) it answers `503` at once and records nothing
/// (a downstream that is down).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    /// The headers of each recorded body, in the same order.
    headers: Arc<Mutex<Vec<axum::http::HeaderMap>>>,
    gate: Arc<Semaphore>,
    /// Requests received, counted on arrival (before the gate).
    arrivals: Arc<std::sync::atomic::AtomicUsize>,
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub async fn start(open: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let receiver = Receiver {
            url: format!("http://{addr}/hook"),
            bodies: Arc::new(Mutex::new(Vec::new())),
            headers: Arc::new(Mutex::new(Vec::new())),
            gate: Arc::new(Semaphore::new(if open {
                Semaphore::MAX_PERMITS
            } else {
                0
            })),
            arrivals: Arc::default(),
            refusing: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        receiver
    }

    /// While `true`, every request gets `503` and is not recorded.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    pub async fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().await.clone()
    }

    /// The headers of each request [`Receiver::bodies`] holds, in order.
    pub async fn headers(&self) -> Vec<axum::http::HeaderMap> {
        self.headers.lock().await.clone()
    }

    pub async fn count(&self) -> usize {
        self.bodies.lock().await.len()
    }

    /// Requests that reached the receiver, answered or still held.
    pub fn arrivals(&self) -> usize {
        self.arrivals.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    receiver
        .arrivals
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    if receiver.refusing.load(std::sync::atomic::Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    // Waits while the gate is closed; the permit is not consumed.
    if let Ok(permit) = receiver.gate.acquire().await {
        drop(permit);
    }
    let value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    // Both locks at once, so the n-th body and the n-th headers match.
    let mut bodies = receiver.bodies.lock().await;
    receiver.headers.lock().await.push(headers);
    bodies.push(value);
    StatusCode::OK
}

/// A `nats-server -js` of this test's own: ephemeral port, temp store,
/// killed on drop.
pub struct NatsServer {
    pub url: String,
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
    _store: tempfile::TempDir,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(&[]).await
    }

    /// A server with extra command-line arguments (cluster settings).
    async fn start_with(extra: &[String]) -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        args.push(port.to_string());
        args.push("-sd".into());
        args.push(store.path().display().to_string());
        args.extend(extra.iter().cloned());
        let mut server = NatsServer {
            url: format!("nats://127.0.0.1:{port}"),
            port,
            args,
            child: None,
            _store: store,
        };
        server.resume().await;
        server
    }

    /// Stops the server (SIGKILL); its store survives for [`resume`](Self::resume).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let child = Command::new("/usr/sbin/nats-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn /usr/sbin/nats-server (apt install nats-server)");
        self.child = Some(child);
        let port = self.port;
        wait_until("nats-server to listen", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }

    /// A JetStream cluster of `nodes` servers on loopback ports; node `i`
    /// is named `n{i}`.
    pub async fn cluster(nodes: usize) -> Vec<NatsServer> {
        let routes: Vec<u16> = (0..nodes).map(|_| free_port()).collect();
        let all_routes = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let extra = [
                "--name".to_string(),
                format!("n{i}"),
                "--cluster_name".to_string(),
                "spillway-test".to_string(),
                "--cluster".to_string(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_string(),
                all_routes.clone(),
            ];
            servers.push(NatsServer::start_with(&extra).await);
        }
        servers
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The tests' standard pipeline: webhook `shop/orders` on `port` (with
/// `webhook_extra` lines appended under the event, e.g. a `flowControl:`
/// block) → sensor `orders` with `triggers` (YAML list items, indented by
/// 4). `eventbus` is a whole EventBus document, or empty for the default.
pub fn orders_pipeline(eventbus: &str, port: u16, webhook_extra: &str, triggers: &str) -> String {
    let bus = if eventbus.is_empty() {
        String::new()
    } else {
        format!("{eventbus}\n---\n")
    };
    format!(
        r#"{bus}apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "{port}"
      endpoint: /orders
      method: POST
{webhook_extra}
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
  triggers:
{triggers}
"#
    )
}

/// One http trigger `name` posting events to `url`, as a `triggers:` item.
pub fn http_trigger(name: &str, url: &str) -> String {
    format!(
        "    - template:\n        name: {name}\n        http:\n          url: {url}\n          method: POST\n"
    )
}

/// An `EventBus` document whose embedded bus holds at most `max_msgs` events.
pub fn eventbus(max_msgs: u64) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    settings: |\n      max_msgs: {max_msgs}\n"
    )
}

/// A Sensor `name` on `source`/`event` with `triggers` (YAML list items,
/// indented by 4, e.g. from [`http_trigger`]).
pub fn sensor(name: &str, source: &str, event: &str, triggers: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: {name}
spec:
  dependencies:
    - name: dep
      eventSourceName: {source}
      eventName: {event}
  triggers:
{triggers}
"#
    )
}

/// The `body.id` of every body a [`Receiver`] got, sorted, and how many
/// were duplicates of an earlier one.
pub fn unique_body_ids(
    bodies: &[serde_json::Value],
) -> (std::collections::BTreeSet<String>, usize) {
    let mut unique = std::collections::BTreeSet::new();
    let mut duplicates = 0;
    for body in bodies {
        let id = body["body"]["id"].as_str().unwrap_or_default().to_string();
        if !unique.insert(id) {
            duplicates += 1;
        }
    }
    (unique, duplicates)
}
