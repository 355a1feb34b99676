//! The `postgres` trigger against the real PostgreSQL on 127.0.0.1:5432
//! (db `test`, trust auth; `SPILLWAY_TEST_PG_URL` overrides the URL).
//!
//! Each test creates its own table and ledger table (unique names) and
//! drops both when it ends, even when it fails.

mod common;

use common::{free_port, metric, wait_until, Spillway};
use spillway::config::sensor::TriggerParameterSource;
use spillway::config::sensor::{PostgresParameter, PostgresTrigger as PostgresConfig};
use spillway::config::Spanned;
use spillway::event::Event;
use spillway::triggers::postgres::PostgresTrigger;
use spillway::triggers::TriggerError;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn pg_url() -> String {
    std::env::var("SPILLWAY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

async fn connect() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .expect("connect to PostgreSQL at SPILLWAY_TEST_PG_URL or 127.0.0.1:5432/test");
    tokio::spawn(connection);
    client
}

/// An orders table and a ledger table of this test, dropped on drop.
struct Tables {
    orders: String,
    ledger: String,
}

impl Tables {
    async fn create() -> Tables {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let tables = Tables {
            orders: format!("orders_{}", &suffix[..16]),
            ledger: format!("ledger_{}", &suffix[..16]),
        };
        connect()
            .await
            .batch_execute(&format!(
                "CREATE TABLE {} (order_id text PRIMARY KEY, total numeric NOT NULL, \
                 qty int, paid boolean, doc jsonb, pid int DEFAULT pg_backend_pid())",
                tables.orders
            ))
            .await
            .expect("create orders table");
        tables
    }

    async fn count(&self, sql: &str) -> i64 {
        let sql = sql
            .replace("{orders}", &self.orders)
            .replace("{ledger}", &self.ledger);
        connect()
            .await
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .get(0)
    }
}

impl Drop for Tables {
    fn drop(&mut self) {
        let sql = format!(
            "DROP TABLE IF EXISTS {}; DROP TABLE IF EXISTS {}",
            self.orders, self.ledger
        );
        // Drop cannot await, and may run inside a runtime: a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join();
    }
}

/// A pipeline webhook `shop/orders` → postgres trigger `store` connecting
/// with `connection` (a `url:` or `urlSecret:` line).
fn pipeline(port: u16, connection: &str, statement: &str, ledger: &str, extra: &str) -> String {
    let trigger = format!(
        r#"    - template:
        name: store
        postgres:
          {connection}
          statement: {statement}
          parameters:
            - src:
                dependencyName: order
                dataKey: body.id
            - src:
                dependencyName: order
                dataKey: body.total
            - src:
                dependencyName: order
                dataKey: body.qty
            - src:
                dependencyName: order
                dataKey: body.paid
            - src:
                dependencyName: order
                dataKey: body
          poolSize: 2
          timeout: 2s
          ledgerTable: {ledger}
{extra}"#
    );
    common::orders_pipeline("", port, "", &trigger)
}

fn insert_into(table: &str) -> String {
    format!("INSERT INTO {table} (order_id, total, qty, paid, doc) VALUES ($1, $2, $3, $4, $5)")
}

async fn post_order(port: u16, i: usize) {
    let response = common::client()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"id":"o-{i}","total":{i}.25,"qty":{i},"paid":true}}"#
        ))
        .send()
        .await
        .expect("POST /orders");
    assert_eq!(response.status(), 200, "order {i}");
}

fn invocations(metrics: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            r#"spillway_trigger_invocations_total{{sensor="orders",trigger="store",outcome="{outcome}"}}"#
        ),
    )
}

#[tokio::test]
async fn every_event_writes_one_row_with_typed_values() {
    let tables = Tables::create().await;
    let port = free_port();
    let config = pipeline(
        port,
        &format!("url: {}", pg_url()),
        &insert_into(&tables.orders),
        &tables.ledger,
        "",
    );
    let mut spillway = Spillway::start(&config).await;
    for i in 0..20 {
        post_order(port, i).await;
    }
    wait_until("20 events acked", WAIT, || async {
        let status = spillway.status().await;
        invocations(&spillway.metrics().await, "success") == 20.0 && status["bus"]["messages"] == 0
    })
    .await;
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 20);
    assert_eq!(
        tables
            .count("SELECT count(DISTINCT order_id) FROM {orders}")
            .await,
        20
    );
    // Text parameters were converted by the server to each column's type.
    assert_eq!(
        tables
            .count(
                "SELECT count(*) FROM {orders} WHERE total = qty + 0.25 AND paid \
                 AND doc->>'id' = order_id"
            )
            .await,
        20
    );
    assert_eq!(
        tables
            .count("SELECT count(*) FROM {ledger} WHERE trigger = 'orders/store'")
            .await,
        20
    );
    let metrics = spillway.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"spillway_trigger_duration_seconds_count{sensor="orders",trigger="store"}"#
        ),
        20.0
    );
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn a_redelivered_event_writes_no_second_row() {
    let tables = Tables::create().await;
    let port = free_port();
    let data = tempfile::tempdir().expect("tempdir");
    let config = pipeline(
        port,
        &format!("url: {}", pg_url()),
        &insert_into(&tables.orders),
        &tables.ledger,
        "",
    );
    let mut first = Spillway::start_crashing_at(
        &config,
        data.path(),
        spillway::failpoint::CrashPoint::AfterTriggerSuccess,
    )
    .await;
    post_order(port, 7).await;
    // The row was committed, then the process died before the bus ack.
    let status = first.terminate_wait().await;
    assert!(!status.success(), "the crash point aborts: {status}");
    assert!(
        first.log_text().contains("after-trigger-success"),
        "died somewhere else:\n{}",
        first.log_text()
    );
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 1);

    let mut second = Spillway::start_in(&config, data.path()).await;
    wait_until("the redelivered event is acked", WAIT, || async {
        second.status().await["bus"]["messages"] == 0
    })
    .await;
    // The trigger ran again for the redelivery (a success: the ledger said
    // "already applied") and wrote nothing.
    assert_eq!(invocations(&second.metrics().await, "success"), 1.0);
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 1);
    assert_eq!(tables.count("SELECT count(*) FROM {ledger}").await, 1);
    assert!(second.terminate().await.success());
}

#[tokio::test]
async fn a_bad_column_is_permanent_and_the_event_is_terminated() {
    let tables = Tables::create().await;
    let port = free_port();
    let statement = format!(
        "INSERT INTO {} (order_id, total, qty, paid, no_such_column) VALUES ($1, $2, $3, $4, $5)",
        tables.orders
    );
    // The URL from a Secret (here its environment variable).
    let connection = "urlSecret: {name: pg, key: url}";
    let config = pipeline(port, connection, &statement, &tables.ledger, "");
    let mut spillway =
        Spillway::start_with(&config, &[], &[("SPILLWAY_SECRET_PG_URL", &pg_url())]).await;
    post_order(port, 1).await;
    wait_until("the event is terminated", WAIT, || async {
        invocations(&spillway.metrics().await, "failure") == 1.0
            && spillway.status().await["bus"]["messages"] == 0
    })
    .await;
    let metrics = spillway.metrics().await;
    // Permanent: not retried.
    assert_eq!(invocations(&metrics, "retry"), 0.0);
    assert_eq!(invocations(&metrics, "success"), 0.0);
    assert!(
        spillway.log_text().contains("no_such_column"),
        "the server's message is logged:\n{}",
        spillway.log_text()
    );
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 0);
    // The ledger row was rolled back with the failed statement.
    assert_eq!(tables.count("SELECT count(*) FROM {ledger}").await, 0);
    assert!(spillway.terminate().await.success());
}

#[tokio::test]
async fn an_unreachable_server_is_retryable_and_the_event_stays_on_the_bus() {
    let tables = Tables::create().await;
    let port = free_port();
    // Nothing listens there.
    let url = format!("postgres://postgres@127.0.0.1:{}/test", free_port());
    let retry = "      retryStrategy:\n        steps: 2\n        duration: 100ms\n";
    let config = pipeline(
        port,
        &format!("url: {url}"),
        &insert_into(&tables.orders),
        &tables.ledger,
        retry,
    );
    let mut spillway = Spillway::start(&config).await;
    post_order(port, 1).await;
    wait_until(
        "the steps are used up and the event goes back",
        WAIT,
        || async { invocations(&spillway.metrics().await, "retry") >= 2.0 },
    )
    .await;
    let metrics = spillway.metrics().await;
    assert_eq!(invocations(&metrics, "failure"), 0.0);
    assert_eq!(invocations(&metrics, "success"), 0.0);
    assert_eq!(spillway.status().await["bus"]["messages"], 1);
    assert!(
        spillway.log_text().contains("Connection refused")
            || spillway.log_text().contains("connection refused"),
        "{}",
        spillway.log_text()
    );
    assert!(spillway.terminate().await.success());
}

fn source(key: &str) -> PostgresParameter {
    PostgresParameter {
        src: Spanned::new(
            TriggerParameterSource {
                dependency_name: Spanned::new("order".to_string(), Default::default()),
                data_key: Some(Spanned::new(key.to_string(), Default::default())),
                context_key: None,
                value: None,
                data_template: None,
                context_template: None,
                use_raw_data: None,
            },
            Default::default(),
        ),
    }
}

fn direct_trigger(tables: &Tables, pool_size: u32) -> PostgresTrigger {
    trigger_with(&insert_into(&tables.orders), tables, pool_size)
}

fn trigger_with(statement: &str, tables: &Tables, pool_size: u32) -> PostgresTrigger {
    let config = PostgresConfig {
        url: None,
        url_secret: None,
        statement: Spanned::new(statement.to_string(), Default::default()),
        parameters: Some(vec![
            source("body.id"),
            source("body.total"),
            source("body.qty"),
            source("body.paid"),
            source("body"),
        ]),
        pool_size: Some(Spanned::new(pool_size, Default::default())),
        timeout: None,
        ledger_table: Some(Spanned::new(tables.ledger.clone(), Default::default())),
    };
    PostgresTrigger::new("orders", "store", &config, &pg_url()).expect("trigger")
}

fn order_event(i: usize) -> Event {
    let data = format!(r#"{{"body":{{"id":"o-{i}","total":{i},"qty":{i},"paid":false}}}}"#);
    Event::new("shop", "webhook", "orders", bytes::Bytes::from(data))
}

#[tokio::test]
async fn two_instances_racing_on_the_same_events_write_each_row_once() {
    let tables = Tables::create().await;
    // Two triggers with the same sensor/trigger name stand for two
    // processes: separate pools, one ledger.
    let a = Arc::new(direct_trigger(&tables, 4));
    let b = Arc::new(direct_trigger(&tables, 4));
    let events: Vec<Arc<Event>> = (0..40).map(|i| Arc::new(order_event(i))).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for event in &events {
        for trigger in [&a, &b] {
            let (trigger, event) = (Arc::clone(trigger), Arc::clone(event));
            tasks.spawn(async move { trigger.invoke("order", &event).await });
        }
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task"), Ok(()));
    }
    // And once more, one after the other: still no second row.
    for event in &events {
        assert_eq!(a.invoke("order", event).await, Ok(()));
    }
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 40);
    assert_eq!(tables.count("SELECT count(*) FROM {ledger}").await, 40);
}

#[tokio::test]
async fn a_value_the_column_cannot_take_is_permanent() {
    let tables = Tables::create().await;
    let trigger = direct_trigger(&tables, 1);
    let data = r#"{"body":{"id":"o-1","total":"not a number","qty":1,"paid":true}}"#;
    let event = Event::new("shop", "webhook", "orders", bytes::Bytes::from(data));
    match trigger.invoke("order", &event).await {
        Err(TriggerError::Permanent { message }) => {
            assert!(message.contains("22P02"), "{message}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    // The connection is reused after the rolled-back transaction, and the
    // event id is not marked applied: the same event id, fixed, goes in.
    let fixed = Event {
        context: event.context.clone(),
        data: bytes::Bytes::from(r#"{"body":{"id":"o-1","total":3,"qty":1,"paid":true}}"#),
    };
    assert_eq!(trigger.invoke("order", &fixed).await, Ok(()));
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 1);
}

#[tokio::test]
async fn no_more_connections_than_the_pool_size() {
    let tables = Tables::create().await;
    // Each insert holds its connection for 50 ms, so 20 at once all wait
    // on the pool; the rows record the backend (connection) that wrote them.
    let statement = format!(
        "INSERT INTO {} (order_id, total, qty, paid, doc) \
         SELECT $1, $2, $3, $4, $5 FROM pg_sleep(0.05)",
        tables.orders
    );
    let trigger = Arc::new(trigger_with(&statement, &tables, 2));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let trigger = Arc::clone(&trigger);
        tasks.spawn(async move { trigger.invoke("order", &order_event(i)).await });
    }
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.expect("task"), Ok(()));
    }
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 20);
    assert_eq!(
        tables
            .count("SELECT count(DISTINCT pid) FROM {orders}")
            .await,
        2
    );
}

/// A parameter that finds nothing in its event (a missing key, no default)
/// fails the event permanently, naming the parameter: no row with a
/// silent NULL, and no retries that could only fail the same way.
#[tokio::test]
async fn a_missing_key_without_default_is_a_permanent_failure() {
    let tables = Tables::create().await;
    let trigger = direct_trigger(&tables, 1);
    let data = r#"{"body":{"id":"o-1","total":3,"paid":true}}"#;
    let event = Event::new("shop", "webhook", "orders", bytes::Bytes::from(data));
    match trigger.invoke("order", &event).await {
        Err(TriggerError::Permanent { message }) => assert!(
            message.contains("parameter $3") && message.contains("body.qty"),
            "{message}"
        ),
        other => panic!("expected a permanent error, got {other:?}"),
    }
    // Refused before a connection was opened: no row, and not even the
    // ledger table yet.
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 0);
}

fn source_of(dependency: &str, key: &str, default: Option<&str>) -> PostgresParameter {
    let mut parameter = source(key);
    parameter.src.value.dependency_name.value = dependency.to_string();
    parameter.src.value.value = default.map(str::to_string);
    parameter
}

/// A trigger fed by two dependencies runs its statement once per run, each
/// `$n` from its own dependency's event (not once per event with the other
/// dependency's values NULL); the run is idempotent on its events' ids. A
/// run without one dependency's event (`conditions: a || b`) gives that
/// dependency's parameters their default, else NULL.
#[tokio::test]
async fn a_run_of_two_dependencies_writes_one_row_with_both_values() {
    let tables = Tables::create().await;
    let config = PostgresConfig {
        url: None,
        url_secret: None,
        statement: Spanned::new(
            format!(
                "INSERT INTO {} (order_id, total, qty) VALUES ($1, $2, $3)",
                tables.orders
            ),
            Default::default(),
        ),
        parameters: Some(vec![
            source_of("order", "body.id", None),
            source_of("payment", "body.amount", Some("0")),
            source_of("payment", "body.qty", None),
        ]),
        pool_size: None,
        timeout: None,
        ledger_table: Some(Spanned::new(tables.ledger.clone(), Default::default())),
    };
    let trigger = spillway::triggers::Trigger::Postgres(
        PostgresTrigger::new("orders", "store", &config, &pg_url()).expect("trigger"),
    );
    let event =
        |data: &str| Event::new("shop", "webhook", "x", bytes::Bytes::from(data.to_string()));
    let order = event(r#"{"body":{"id":"o-1"}}"#);
    let payment = event(r#"{"body":{"amount":12.5,"qty":2}}"#);
    let both: &[(&str, &Event)] = &[("order", &order), ("payment", &payment)];
    assert_eq!(trigger.invoke_matched(both).await, Ok(()));
    assert_eq!(
        trigger.invoke_matched(both).await,
        Ok(()),
        "redelivered run"
    );
    let only_order = event(r#"{"body":{"id":"o-2"}}"#);
    assert_eq!(
        trigger.invoke_matched(&[("order", &only_order)]).await,
        Ok(())
    );
    assert_eq!(tables.count("SELECT count(*) FROM {orders}").await, 2);
    assert_eq!(
        tables
            .count(
                "SELECT count(*) FROM {orders} WHERE order_id = 'o-1' AND total = 12.5 AND qty = 2"
            )
            .await,
        1
    );
    assert_eq!(
        tables
            .count("SELECT count(*) FROM {orders} WHERE order_id = 'o-2' AND total = 0 AND qty IS NULL")
            .await,
        1
    );
    let run_id = serde_json::json!([order.context.id, payment.context.id]).to_string();
    assert_eq!(
        tables
            .count(&format!(
                "SELECT count(*) FROM {{ledger}} WHERE event_id = '{run_id}'"
            ))
            .await,
        1
    );
}
