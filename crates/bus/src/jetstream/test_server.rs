//! A throwaway `nats-server -js` for tests: free port, temporary store,
//! killed on drop. Uses the Debian binary at `/usr/sbin/nats-server`
//! (override with `NATS_SERVER_BIN`).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_BIN: &str = "/usr/sbin/nats-server";

/// A running `nats-server -js` with its own store directory.
pub(crate) struct TestServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server on a free port and waits until JetStream answers.
    pub(crate) fn start() -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut server = TestServer {
            port,
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no graceful shutdown, like a crash).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn spawn(&mut self) {
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| DEFAULT_BIN.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("server log");
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.store())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {bin}: {err}"));
        self.child = Some(child);
        wait_ready(self.port, self.dir.path());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Waits until the server sends an `INFO` line announcing JetStream.
fn wait_ready(port: u16, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            let mut line = String::new();
            if BufReader::new(stream).read_line(&mut line).is_ok()
                && line.starts_with("INFO")
                && line.contains("\"jetstream\":true")
            {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("nats-server on port {port} did not become ready:\n{log}");
}
