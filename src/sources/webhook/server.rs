//! The HTTP/1 server of one webhook port, with the connection-level abuse
//! limits (`flowControl.headerReadTimeout`, `flowControl.maxConnections`).
//!
//! Guarantees:
//! - At most `max_connections` connections are served at once. A connection
//!   over the limit is accepted, sent a `503` (`Retry-After: 1`,
//!   `X-Spillway-Reason: too_many_connections`) if the socket takes it
//!   without waiting, and closed; the accept loop never waits for a free
//!   slot, so connections already open keep being served and new ones get
//!   a quick answer instead of a connect timeout.
//! - A client must send a request's headers within `header_read_timeout`
//!   after connecting, and after each response (hyper starts the timer
//!   whenever a connection waits for a request), or the connection is
//!   closed. A slowloris client, or an idle kept-alive one, therefore holds
//!   a slot for at most that long.
//! - Accept errors (out of file descriptors, a connection reset before it
//!   was accepted) never stop the loop; persistent ones are logged at most
//!   every [`LOG_EVERY`].
//! - On `stop`, the listener closes, idle connections close, requests in
//!   flight finish (the body timeout and `maxBlock` bound them), then
//!   [`serve`] returns.
//!
//! Not guaranteed: that a refused client reads the `503`. It is written
//! before the request is read, so closing may reset the connection and the
//! client may see a reset instead; both mean "retry later".

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default `flowControl.headerReadTimeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `flowControl.maxConnections`: below the usual 1024 open-file
/// limit, leaving room for the bus's files and outgoing trigger connections.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 512;
/// Repeated accept-loop warnings are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Pause after an accept error that is not about one connection (EMFILE):
/// retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The connection-level limits of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub header_read_timeout: Duration,
    pub max_connections: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Serves `router` on `listener` under `limits` until `stop`, then waits
/// for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stop: CancellationToken,
) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let refusal = refusal_response(port, limits.max_connections);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut full_warning = Throttle::default();
    let mut accept_warning = Throttle::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) if is_per_connection(&err) => continue,
            Err(err) => {
                if accept_warning.due() {
                    tracing::warn!(port, "webhook cannot accept connections: {err}");
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if full_warning.due() {
                tracing::warn!(
                    port,
                    "webhook has {} connections open (flowControl.maxConnections); answering 503 to new ones",
                    limits.max_connections
                );
            }
            refuse(&stream, &refusal);
            continue;
        };
        // Events are small requests answered one by one: Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            // Timeouts and client resets are the client's business (and
            // would be a log line per connection under attack).
            if let Err(err) = result {
                tracing::debug!(port, "webhook connection ended: {err}");
            }
        });
    }
    drop(listener);
    // Every connection task holds a slot until it ends.
    let _ = slots.acquire_many(limits.max_connections).await;
}

/// Writes `response` if the socket takes it at once, then closes.
fn refuse(stream: &TcpStream, response: &[u8]) {
    let _ = stream.try_write(response);
}

/// The raw `503` for connections over the limit (JSON body, like every
/// other error of the webhook).
fn refusal_response(port: u16, max_connections: u32) -> Vec<u8> {
    let body = serde_json::json!({
        "error": format!("port {port} has its maximum of {max_connections} connections open; retry later"),
        "reason": "too_many_connections",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         x-spillway-reason: too_many_connections\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Errors that concern one connection, not the listener.
fn is_per_connection(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        err.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

/// "At most once per [`LOG_EVERY`]" for one warning.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        let due = self.last.is_none_or(|last| now - last >= LOG_EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: ServerLimits) -> (u16, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let router = Router::new().fallback(|| async { "ok" });
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, router, limits, stop.clone()));
        (port, stop, server)
    }

    /// One request on `stream`; the answer's first bytes, or "" when the
    /// server closed the connection.
    async fn get(stream: &mut TcpStream) -> String {
        if stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .is_err()
        {
            return String::new();
        }
        let mut buf = vec![0; 1024];
        let n = stream.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads until the peer closes; what was read before.
    async fn read_to_close(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn connections_over_the_limit_get_503_and_the_others_are_still_served() {
        let (port, stop, server) = start(ServerLimits {
            header_read_timeout: Duration::from_secs(60),
            max_connections: 2,
        })
        .await;
        let mut first = TcpStream::connect(("127.0.0.1", port)).await.expect("1");
        let mut second = TcpStream::connect(("127.0.0.1", port)).await.expect("2");
        // Both are being served (a response proves the slot was taken).
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        assert!(get(&mut second).await.starts_with("HTTP/1.1 200"));
        let mut third = TcpStream::connect(("127.0.0.1", port)).await.expect("3");
        let refused = read_to_close(&mut third).await;
        assert!(
            refused.starts_with("HTTP/1.1 503") && refused.contains("too_many_connections"),
            "{refused}"
        );
        // The open connections keep working.
        assert!(get(&mut first).await.starts_with("HTTP/1.1 200"));
        // A closed connection frees its slot.
        drop(second);
        let mut fourth = loop {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("4");
            let answer = get(&mut s).await;
            if answer.starts_with("HTTP/1.1 200") {
                break s;
            }
            // The server may not have seen the close yet.
            tokio::task::yield_now().await;
        };
        assert!(get(&mut fourth).await.starts_with("HTTP/1.1 200"));
        stop.cancel();
        drop(first);
        drop(fourth);
        server.await.expect("server task");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_header_is_cut_off_at_the_header_timeout() {
        let (port, stop, server) = start(ServerLimits {
            header_read_timeout: Duration::from_secs(5),
            max_connections: 10,
        })
        .await;
        let mut slow = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let started = Instant::now();
        slow.write_all(b"GET / HT").await.expect("write");
        let closed = read_to_close(&mut slow).await;
        assert!(!closed.contains("200"), "{closed}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(5) && waited < Duration::from_secs(6),
            "{waited:?}"
        );
        stop.cancel();
        server.await.expect("server task");
    }
}
