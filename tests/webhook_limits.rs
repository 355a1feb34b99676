//! The webhook's defences through the real binary: authentication (bearer
//! `authSecret`, HMAC body signature), abuse limits (body size, header and
//! body timeouts, connection cap), `maxBlock`, and a producer that honours
//! `Retry-After` getting every event delivered through a small bus.

mod common;

use common::{free_port, metric, wait_until, Receiver, Spillway};
use hmac::{KeyInit, Mac};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(60);

fn bus(max_msgs: u32) -> String {
    format!(
        "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n    settings: |\n      max_msgs: {max_msgs}"
    )
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}/orders")
}

fn source_events(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_source_events_total{{source="shop",event="orders",outcome="{outcome}"}}"#
        ),
    )
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds")
}

/// The ids (`body.id`) of the events the receiver got, without repeats.
async fn delivered_ids(receiver: &Receiver) -> BTreeSet<String> {
    receiver
        .bodies()
        .await
        .iter()
        .filter_map(|b| b["body"]["id"].as_str().map(str::to_string))
        .collect()
}

/// `GitHub`'s `X-Hub-Signature-256` value for `body` under `key`.
fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// Reads from `stream` until the server closes it; what it sent before.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bearer_token_and_body_signature_are_required() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let secrets = tempfile::tempdir().expect("tempdir");
    // A mounted-Secret layout for the token, an environment variable for the
    // HMAC key: both ways of providing a secret.
    std::fs::create_dir(secrets.path().join("hook-auth")).expect("mkdir");
    std::fs::write(secrets.path().join("hook-auth/token"), "s3cret-token\n").expect("write");
    let extra = "      authSecret: {name: hook-auth, key: token}\n      flowControl:\n        signature:\n          secret: {name: hook-hmac, key: key}\n          header: X-Signature";
    let config = common::orders_pipeline(
        &bus(1000),
        port,
        extra,
        &common::http_trigger("forward", &receiver.url),
    );
    let secrets_dir = secrets.path().to_str().expect("utf-8 path");
    let mut spillway = Spillway::start_with(
        &config,
        &["--secrets-dir", secrets_dir],
        &[("SPILLWAY_SECRET_HOOK_HMAC_KEY", "hmac-key")],
    )
    .await;
    let client = common::client();
    let body = r#"{"id":"signed-1"}"#;
    let good_signature = sign(b"hmac-key", body.as_bytes());
    let cases: [(&str, Option<&str>, Option<String>); 5] = [
        ("no bearer token", None, Some(good_signature.clone())),
        (
            "wrong bearer token",
            Some("Bearer s3cret-tokem"),
            Some(good_signature.clone()),
        ),
        ("no signature", Some("Bearer s3cret-token"), None),
        (
            "signature of another body",
            Some("Bearer s3cret-token"),
            Some(sign(b"hmac-key", br#"{"id":"other"}"#)),
        ),
        (
            "signature with another key",
            Some("Bearer s3cret-token"),
            Some(sign(b"hmac-kez", body.as_bytes())),
        ),
    ];
    for (case, bearer, signature) in cases {
        let mut request = client.post(url(port)).body(body);
        if let Some(bearer) = bearer {
            request = request.header("authorization", bearer);
        }
        if let Some(signature) = signature {
            request = request.header("x-signature", signature);
        }
        let response = request.send().await.expect("POST");
        assert_eq!(response.status(), 401, "{case}");
        assert_eq!(response.headers()["x-spillway-reason"], "unauthorized");
        let error: serde_json::Value = response.json().await.expect("JSON error body");
        assert_eq!(error["reason"], "unauthorized", "{case}");
        assert!(error["error"].is_string(), "{case}");
    }
    let accepted = client
        .post(url(port))
        .header("authorization", "Bearer s3cret-token")
        .header("x-signature", &good_signature)
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 200);

    wait_until("the signed event downstream", WAIT, || async {
        receiver.count().await >= 1
    })
    .await;
    let delivered = receiver.bodies().await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["body"]["id"], "signed-1");
    // The bearer token is the endpoint's secret: it does not travel on.
    assert!(delivered[0]["header"].get("authorization").is_none());
    assert!(delivered[0]["header"].get("x-signature").is_some());

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "unauthorized"), 5.0);
    assert_eq!(source_events(&metrics, "accepted"), 1.0);
    let log = spillway.log_text();
    for secret in ["s3cret-token", "hmac-key"] {
        assert!(!log.contains(secret), "the log shows a secret:\n{log}");
    }
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_missing_secret_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    let config = common::orders_pipeline(
        "",
        free_port(),
        "      authSecret: {name: hook-auth, key: token}",
        &common::http_trigger("forward", "http://127.0.0.1:1/x"),
    );
    std::fs::write(&file, config).expect("write");
    let secrets = dir.path().join("secrets");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("run")
        .arg("-f")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--admin")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--secrets-dir")
        .arg(&secrets)
        .env_remove("SPILLWAY_SECRET_HOOK_AUTH_TOKEN")
        .output()
        .expect("run spillway");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "{}:11:19: webhook shop/orders: authSecret: secret \"hook-auth\" key \"token\" not found: \
         set the environment variable SPILLWAY_SECRET_HOOK_AUTH_TOKEN or create the file {}",
        file.display(),
        secrets.join("hook-auth").join("token").display()
    );
    assert!(
        stderr.contains(&expected),
        "missing {expected:?} in:\n{stderr}"
    );
}

#[tokio::test]
async fn oversized_bodies_get_413_without_being_read_whole() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let config = common::orders_pipeline(
        &bus(1000),
        port,
        "",
        &common::http_trigger("forward", &receiver.url),
    );
    let mut spillway = Spillway::start(&config).await;
    const TEN_MIB: usize = 10 << 20;
    // Declared up front, and chunked (size unknown until read).
    let heads = [
        format!("POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: {TEN_MIB}\r\n\r\n"),
        "POST /orders HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
    ];
    for (i, head) in heads.into_iter().enumerate() {
        let chunked = i == 1;
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let (mut read, mut write) = stream.into_split();
        // The body is sent while the answer is read; the server stops
        // reading at the limit, so sending fails part-way, which is fine.
        let sender = tokio::spawn(async move {
            write.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..TEN_MIB / chunk.len() {
                if chunked {
                    write
                        .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                        .await?;
                    write.write_all(&chunk).await?;
                    write.write_all(b"\r\n").await?;
                } else {
                    write.write_all(&chunk).await?;
                }
            }
            if chunked {
                write.write_all(b"0\r\n\r\n").await?;
            }
            Ok::<_, std::io::Error>(())
        });
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("too_large") {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains(r#""reason":"too_large""#),
            "chunked: {chunked}: {answer}"
        );
        drop(read);
        let _ = tokio::time::timeout(WAIT, sender).await;
    }
    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "too_large"), 2.0);
    assert_eq!(spillway.status().await["bus"]["messages"], 0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_others_are_served() {
    let receiver = Receiver::start(true).await;
    let port = free_port();
    let flow = "      flowControl:\n        headerReadTimeout: 1s\n        bodyReadTimeout: 1s\n        maxConnections: 4";
    let config = common::orders_pipeline(
        &bus(1000),
        port,
        flow,
        &common::http_trigger("forward", &receiver.url),
    );
    let mut spillway = Spillway::start(&config).await;

    // Slowloris: headers one byte at a time, never finished.
    let mut slowloris = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let trickle = tokio::spawn(async move {
        let head = b"POST /orders HTTP/1.1\r\nhost: x\r\n";
        let filler = b"x-filler: a\r\n";
        for byte in head.iter().chain(filler.iter().cycle()) {
            if slowloris.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Whatever the server sent (a 408, or nothing) ends with a close.
            let mut buf = [0u8; 256];
            if let Ok(Ok(0)) =
                tokio::time::timeout(Duration::from_millis(1), slowloris.read(&mut buf)).await
            {
                break;
            }
        }
    });
    // Meanwhile the endpoint serves everyone else.
    let client = common::client();
    for i in 0..5 {
        let response = client
            .post(url(port))
            .body(format!(r#"{{"id":"fast-{i}"}}"#))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 200, "request {i}");
    }
    tokio::time::timeout(WAIT, trickle)
        .await
        .expect("the slowloris connection was never closed")
        .expect("trickle task");

    // A body that stops half-way gets 408 after bodyReadTimeout.
    let mut stalled = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stalled
        .write_all(b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"id\":")
        .await
        .expect("write");
    let answer = read_until_closed(&mut stalled).await;
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains(r#""reason":"body_timeout""#),
        "{answer}"
    );

    // maxConnections: 4 open connections take every slot; a fifth is
    // refused at once, and the open ones are still served.
    drop(client);
    let mut open = Vec::new();
    for i in 0..4 {
        open.push(hold_slot(port, &format!("held-{i}")).await);
    }
    let mut refused = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let answer = read_until_closed(&mut refused).await;
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too_many_connections"),
        "{answer}"
    );
    assert!(request_on(&mut open[0], "still-served")
        .await
        .starts_with("HTTP/1.1 200"));
    drop(open);

    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), 10.0);
    assert_eq!(source_events(&metrics, "invalid"), 1.0);
    assert!(spillway.terminate().await.success());
}

/// One keep-alive POST on `stream`; the start of the answer, "" if the
/// server closed the connection.
async fn request_on(stream: &mut TcpStream, id: &str) -> String {
    let body = format!(r#"{{"id":"{id}"}}"#);
    let request = format!(
        "POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A connection that holds one of the port's slots: its request (event
/// `id`) was answered 200. Connections the server just closed may still
/// hold slots for a moment, so a refused attempt is retried.
async fn hold_slot(port: u16, id: &str) -> TcpStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if request_on(&mut stream, id)
            .await
            .starts_with("HTTP/1.1 200")
        {
            return stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no connection slot freed up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn max_block_waits_for_space_then_gives_up_with_an_honest_retry_after() {
    // The downstream holds every call: two events fill the bus.
    let receiver = Receiver::start(false).await;
    let port = free_port();
    let config = common::orders_pipeline(
        &bus(2),
        port,
        "      flowControl:\n        maxBlock: 2s",
        &common::http_trigger("forward", &receiver.url),
    );
    let mut spillway = Spillway::start(&config).await;
    let client = common::client();
    let post = |id: &str| {
        client
            .post(url(port))
            .body(format!(r#"{{"id":"{id}"}}"#))
            .send()
    };
    for id in ["a", "b"] {
        assert_eq!(post(id).await.expect("POST").status(), 200);
    }
    let block = |metrics: &str, stat: &str| {
        metric(
            metrics,
            &format!(r#"spillway_producer_block_seconds_{stat}{{source="shop"}}"#),
        )
    };
    let rejected_full = |metrics: &str| {
        metric(
            metrics,
            r#"spillway_bus_rejected_total{stream="default",reason="full"}"#,
        )
    };
    // Two publishes that found room: recorded as 0 s blocked.
    assert_eq!(block(&spillway.metrics().await, "count"), 2.0);
    assert_eq!(block(&spillway.metrics().await, "sum"), 0.0);

    // Nothing frees space: after maxBlock, 429 bus_full.
    let refused = post("c").await.expect("POST");
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["x-spillway-reason"], "bus_full");
    // Nothing has drained yet, so the bus cannot promise a time: its idle
    // estimate, 5 s.
    assert_eq!(retry_after(&refused), 5);
    let metrics = spillway.metrics().await;
    assert_eq!(block(&metrics, "count"), 3.0);
    assert!(block(&metrics, "sum") >= 2.0, "{metrics}");
    let rejected_before = rejected_full(&metrics);

    // Space frees while a request waits: it is accepted.
    let waiting = tokio::spawn(post("d"));
    // The bus refusing its first attempt proves it arrived at a full bus.
    wait_until("the request to meet the full bus", WAIT, || async {
        rejected_full(&spillway.metrics().await) > rejected_before
    })
    .await;
    receiver.open();
    let accepted = waiting.await.expect("task").expect("POST");
    assert_eq!(accepted.status(), 200);

    let metrics = spillway.metrics().await;
    assert_eq!(block(&metrics, "count"), 4.0);
    assert_eq!(source_events(&metrics, "accepted"), 3.0);
    assert_eq!(source_events(&metrics, "bus_full"), 1.0);
    wait_until("a, b and d downstream", WAIT, || async {
        delivered_ids(&receiver).await.len() == 3
    })
    .await;
    assert_eq!(
        delivered_ids(&receiver).await,
        ["a", "b", "d"].map(String::from).into_iter().collect()
    );
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_producer_that_honours_retry_after_gets_every_event_through() {
    const EVENTS: usize = 300;
    const PRODUCERS: usize = 30;
    let receiver = Receiver::start(true).await;
    let port = free_port();
    // The trigger drains 100 events/s; the producers send far faster.
    let trigger = format!(
        "{}      rateLimit: {{requestsPerUnit: 100, unit: Second}}\n",
        common::http_trigger("forward", &receiver.url)
    );
    let config = common::orders_pipeline(&bus(100), port, "", &trigger);
    let mut spillway = Spillway::start(&config).await;

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let client = common::client();
        producers.spawn(async move {
            let mut refusals = Vec::new();
            for i in (p..EVENTS).step_by(PRODUCERS) {
                loop {
                    let response = client
                        .post(url(port))
                        .body(format!(r#"{{"id":"e-{i}"}}"#))
                        .send()
                        .await
                        .expect("POST");
                    if response.status() == 200 {
                        break;
                    }
                    assert_eq!(response.status(), 429);
                    assert_eq!(response.headers()["x-spillway-reason"], "bus_full");
                    let wait = retry_after(&response);
                    refusals.push(wait);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
            }
            refusals
        });
    }
    let mut refusals = Vec::new();
    while let Some(result) = producers.join_next().await {
        refusals.extend(result.expect("producer"));
    }
    assert!(!refusals.is_empty(), "the bus never filled");
    // The bus's drain estimate: at least 1 s, at most its 60 s cap. (How
    // long exactly depends on how fast this machine drains; the estimate
    // itself is unit-tested in the bus.)
    assert!(
        refusals.iter().all(|w| (1..=60).contains(w)),
        "{refusals:?}"
    );

    wait_until("every event downstream", WAIT, || async {
        delivered_ids(&receiver).await.len() == EVENTS
    })
    .await;
    let expected: BTreeSet<String> = (0..EVENTS).map(|i| format!("e-{i}")).collect();
    assert_eq!(delivered_ids(&receiver).await, expected);
    let metrics = spillway.metrics().await;
    assert_eq!(source_events(&metrics, "accepted"), EVENTS as f64);
    assert_eq!(source_events(&metrics, "bus_full"), refusals.len() as f64);
    assert!(spillway.terminate().await.success());
}

#[test]
fn auth_and_limit_values_out_of_range_are_config_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.yaml");
    let extra = r#"      authSecret: {name: Hook_Auth, key: "../token"}
      flowControl:
        signature: {secret: {name: ok, key: k}, header: "X Sig"}
        headerReadTimeout: 0s
        bodyReadTimeout: 0s
        maxConnections: 0"#;
    let config = common::orders_pipeline(
        "",
        12000,
        extra,
        &common::http_trigger("forward", "http://127.0.0.1:1/x"),
    );
    std::fs::write(&file, config).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("validate")
        .arg("-f")
        .arg(&file)
        .output()
        .expect("run validate");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let path = file.display();
    for expected in [
        format!("{path}:11:26: invalid secret name \"Hook_Auth\""),
        format!("{path}:11:42: invalid secret key \"../token\""),
        format!("{path}:13:57: \"X Sig\" is not a valid HTTP header name"),
        format!("{path}:14:28: headerReadTimeout must be greater than zero"),
        format!("{path}:15:26: bodyReadTimeout must be greater than zero"),
        format!("{path}:16:25: maxConnections must be at least 1"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}
