//! The `postgres` trigger (spillway extension): runs one SQL statement per
//! event, at most once per event id, so at-least-once redelivery never
//! applies an event twice.
//!
//! Each invocation is one transaction:
//!
//! ```sql
//! BEGIN;
//! INSERT INTO <ledgerTable> (trigger, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING;
//! -- only when that inserted a row: the configured statement with $1, $2 …
//! COMMIT;
//! ```
//!
//! Guarantees:
//! - an event id is applied at most once per trigger (`<sensor>/<trigger>`):
//!   a redelivered event finds its ledger row and commits without running
//!   the statement; two processes racing on the same event are serialised
//!   by the ledger's primary key (the second waits for the first's commit
//!   and then skips, or inserts if the first rolled back);
//! - the ledger row and the statement's effect commit together or not at
//!   all: a failed statement leaves no ledger row, so a retry runs it again;
//! - the ledger table (default `spillway_applied_events`, setting
//!   `ledgerTable`) is created with `CREATE TABLE IF NOT EXISTS` on the
//!   first connection: `(trigger text, event_id text, applied_at
//!   timestamptz, PRIMARY KEY (trigger, event_id))`;
//! - one transaction per trigger run: for a trigger fed by several
//!   dependencies (`conditions`), the statement runs once with each `$n`
//!   read from its own dependency's event, and the ledger's `event_id` is
//!   the run's event ids as a JSON array. The ledger then stops a second
//!   write of the same *pair* only: when a run that committed is retried
//!   anyway (its answer was lost to `timeout`), each event is retried with
//!   its own backoff and may meet a different partner, and the new pair is
//!   written (docs/postgres.md);
//! - parameters are sent in PostgreSQL's text format and converted by the
//!   server to whatever type the statement needs (`int`, `numeric`,
//!   `timestamptz`, `jsonb`, `uuid` …): a key's JSON value is read with its
//!   type (as if `useRawData: true`), a string is sent as is, numbers and
//!   booleans as their JSON text, objects and arrays as JSON text, JSON
//!   null as NULL; a dependency with no event in the run gives the default
//!   `value`, else NULL (`spillway validate` warns when `conditions` allow
//!   that);
//! - at most `poolSize` connections (default 4), see [`pool`]; `timeout`
//!   (default 5s) bounds one invocation: waiting for a connection,
//!   connecting, and the transaction.
//!
//! Errors: no answer within `timeout`, connection failures, and the
//! server's overload and shutdown states (SQLSTATE classes 08, 40, 53, 57,
//! and 55P03) are retryable *pushback*, so adaptive concurrency shrinks and
//! slow start restarts; data errors (22), constraint violations (23),
//! syntax and undefined objects (42), a placeholder count that does not
//! match `parameters`, and a parameter that finds nothing in its event (a
//! missing key without a default `value`) are permanent (the event goes to
//! the DLQ, with no retries); anything else is retryable.
//!
//! Not guaranteed: the ledger is never pruned by spillway. Its rows carry
//! `applied_at`; deleting rows older than the longest redelivery window
//! (bus `max_age`) keeps the guarantee. Idempotency is per event id: two
//! different events with the same payload are two rows.

pub mod pool;

use super::{params, DropReason, TriggerError};
use crate::config::sensor::{PostgresTrigger as PostgresConfig, TriggerParameterSource};
use crate::event::Event;
use bytes::BytesMut;
use pool::{Connection, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Format, IsNull, ToSql, Type};

/// Bound on one invocation when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a postgres trigger could not be built from its config.
#[derive(Debug, thiserror::Error)]
pub enum PostgresTriggerError {
    /// The message never contains the URL: it may hold a password.
    #[error("invalid postgres url: {0}")]
    Url(String),
    #[error("invalid ledgerTable {0:?}")]
    LedgerTable(String),
}

pub struct PostgresTrigger {
    /// The ledger's `trigger` column: `<sensor>/<trigger>`.
    ledger_key: String,
    ledger_table: String,
    /// `host:port/db`, for messages (never the password).
    target: String,
    statement: String,
    parameters: Vec<TriggerParameterSource>,
    timeout: Duration,
    pool: Arc<Pool>,
    /// Set once the ledger table is known to exist; the lock makes one
    /// connection create it while the others wait (concurrent `CREATE
    /// TABLE IF NOT EXISTS` can fail on PostgreSQL's catalog).
    ledger_ready: tokio::sync::Mutex<bool>,
}

impl PostgresTrigger {
    /// A trigger for `config`; `url` is `config.url` or the resolved
    /// `urlSecret`. Connects lazily: a server that is down now only makes
    /// invocations fail (retryably) until it is up.
    pub fn new(
        sensor: &str,
        trigger: &str,
        config: &PostgresConfig,
        url: &str,
    ) -> Result<Self, PostgresTriggerError> {
        let mut pg_config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| PostgresTriggerError::Url(e.to_string()))?;
        pg_config.application_name("spillway");
        let ledger_table = config.ledger_table.as_ref().map_or_else(
            || crate::config::sensor::DEFAULT_LEDGER_TABLE.to_string(),
            |t| t.value.clone(),
        );
        // Validation checks this too; it is repeated because the name is
        // put into SQL text.
        if !crate::config::sensor::is_table_name(&ledger_table) {
            return Err(PostgresTriggerError::LedgerTable(ledger_table));
        }
        let pool_size = config
            .pool_size
            .as_ref()
            .map_or(crate::config::sensor::DEFAULT_POOL_SIZE, |s| s.value)
            .max(1) as usize;
        Ok(PostgresTrigger {
            ledger_key: format!("{sensor}/{trigger}"),
            ledger_table,
            target: describe_target(&pg_config),
            statement: config.statement.value.clone(),
            parameters: config
                .parameters
                .iter()
                .flatten()
                .map(|p| p.src.value.clone())
                .collect(),
            timeout: config
                .timeout
                .as_ref()
                .map_or(DEFAULT_TIMEOUT, |t| t.value.0),
            pool: Arc::new(Pool::new(pg_config, pool_size)),
            ledger_ready: tokio::sync::Mutex::new(false),
        })
    }

    pub async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError> {
        self.invoke_matched(&[(dependency, event)]).await
    }

    /// One transaction for the events of one trigger run: the statement's
    /// parameters read the event of their `dependencyName`, and the ledger
    /// records the run under its events' ids ([`ledger_id`]).
    pub async fn invoke_matched(&self, matched: &super::Matched<'_>) -> Result<(), TriggerError> {
        let values = self.values(matched)?;
        let id = ledger_id(matched);
        match tokio::time::timeout(self.timeout, self.apply(&id, &values)).await {
            Ok(result) => result,
            Err(_) => Err(TriggerError::Retryable {
                message: format!(
                    "postgres {}: no answer within {:?}",
                    self.target, self.timeout
                ),
                retry_after: None,
                pushback: Some(DropReason::Timeout),
            }),
        }
    }

    /// `$1`, `$2` … as text (`None` is NULL), each read from the event of
    /// its dependency with its JSON type (`useRawData` is implied: the
    /// server converts the text to the column's type). A dependency with no
    /// event in the run gives the default `value`, else NULL (validation
    /// warns when `conditions` allow that). A parameter that finds nothing
    /// in its event (a missing key without `value`) fails the event
    /// permanently: the same event would fail the same way on every retry,
    /// and a row with a silent NULL is worse than a DLQ entry.
    fn values(&self, matched: &super::Matched<'_>) -> Result<Vec<Option<String>>, TriggerError> {
        let data: Vec<serde_json::Value> = matched.iter().map(|(_, e)| e.data_json()).collect();
        self.parameters
            .iter()
            .enumerate()
            .map(|(n, src)| {
                let dependency = src.dependency_name.value.as_str();
                let Some(at) = matched.iter().position(|(d, _)| *d == dependency) else {
                    return Ok(src.value.clone());
                };
                let found =
                    params::resolve_source(src, matched[at].1, &data[at]).map_err(|reason| {
                        TriggerError::Permanent {
                            message: format!(
                                "postgres {}: parameter ${} (dependency {dependency:?}): {reason}",
                                self.target,
                                n + 1
                            ),
                        }
                    })?;
                Ok(match found.typed() {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some(s),
                    other => Some(other.to_string()),
                })
            })
            .collect()
    }

    async fn apply(&self, event_id: &str, values: &[Option<String>]) -> Result<(), TriggerError> {
        let mut slot = self.pool.get().await;
        let connection = match &mut slot.connection {
            Some(connection) => connection,
            empty => empty.insert(self.open().await?),
        };
        let result = self.transaction(connection, event_id, values).await;
        // After a server-side error the transaction was rolled back (the
        // ROLLBACK is queued before any later query): the connection is
        // clean. After a client-side error (I/O) it is not.
        match &result {
            Ok(()) => slot.reuse(),
            Err(err) if err.as_db_error().is_some() => slot.reuse(),
            Err(_) => {}
        }
        result.map_err(|err| self.classify(&err))
    }

    async fn transaction(
        &self,
        connection: &mut Connection,
        event_id: &str,
        values: &[Option<String>],
    ) -> Result<(), tokio_postgres::Error> {
        let transaction = connection.client.transaction().await?;
        let claimed = transaction
            .execute(&connection.claim, &[&self.ledger_key, &event_id])
            .await?;
        if claimed == 1 {
            let texts: Vec<Text<'_>> = values.iter().map(|v| Text(v.as_deref())).collect();
            let params: Vec<&(dyn ToSql + Sync)> =
                texts.iter().map(|t| t as &(dyn ToSql + Sync)).collect();
            transaction.execute(&connection.statement, &params).await?;
        } else {
            tracing::debug!(trigger = %self.ledger_key, id = %event_id, "event already applied; statement skipped");
        }
        transaction.commit().await
    }

    /// Connects, makes sure the ledger exists, prepares both statements.
    async fn open(&self) -> Result<Connection, TriggerError> {
        let client = self
            .pool
            .connect()
            .await
            .map_err(|err| self.classify(&err))?;
        self.ensure_ledger(&client).await?;
        let claim = client
            .prepare(&format!(
                "INSERT INTO {} (trigger, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                self.ledger_table
            ))
            .await
            .map_err(|err| self.ledger_error(&err))?;
        let statement = client
            .prepare(&self.statement)
            .await
            .map_err(|err| self.classify(&err))?;
        let placeholders = statement.params().len();
        if placeholders != self.parameters.len() {
            return Err(TriggerError::Permanent {
                message: format!(
                    "postgres {}: the statement has {placeholders} placeholder(s) but {} parameter(s) are configured",
                    self.target,
                    self.parameters.len()
                ),
            });
        }
        Ok(Connection {
            client,
            claim,
            statement,
        })
    }

    async fn ensure_ledger(&self, client: &tokio_postgres::Client) -> Result<(), TriggerError> {
        let mut ready = self.ledger_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let created = client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (\
                   trigger text NOT NULL, \
                   event_id text NOT NULL, \
                   applied_at timestamptz NOT NULL DEFAULT now(), \
                   PRIMARY KEY (trigger, event_id))",
                self.ledger_table
            ))
            .await;
        match created {
            Ok(()) => {}
            // Another process created it at the same moment (IF NOT EXISTS
            // does not serialise concurrent creators): it exists now.
            Err(err)
                if err.code().is_some_and(|c| {
                    *c == SqlState::UNIQUE_VIOLATION || *c == SqlState::DUPLICATE_TABLE
                }) => {}
            Err(err) => return Err(self.ledger_error(&err)),
        }
        *ready = true;
        Ok(())
    }

    /// Problems with the ledger are retryable whatever their SQLSTATE:
    /// they are not the event's fault.
    fn ledger_error(&self, err: &tokio_postgres::Error) -> TriggerError {
        TriggerError::Retryable {
            message: format!(
                "postgres {}: ledger table {}: {}",
                self.target,
                self.ledger_table,
                describe(err)
            ),
            retry_after: None,
            pushback: None,
        }
    }

    fn classify(&self, err: &tokio_postgres::Error) -> TriggerError {
        let message = format!("postgres {}: {}", self.target, describe(err));
        match err.code().map(|c| c.code()) {
            // No SQLSTATE: the connection failed or broke.
            None => TriggerError::Retryable {
                message,
                retry_after: None,
                pushback: Some(DropReason::Unavailable),
            },
            Some(code) => match classify_sqlstate(code) {
                Kind::Permanent => TriggerError::Permanent { message },
                Kind::Pushback(reason) => TriggerError::Retryable {
                    message,
                    retry_after: None,
                    pushback: Some(reason),
                },
                Kind::Retryable => TriggerError::Retryable {
                    message,
                    retry_after: None,
                    pushback: None,
                },
            },
        }
    }
}

/// The ledger's `event_id` for a trigger run: the event's id, or for
/// several events (a trigger with `conditions`) their ids in the run's
/// dependency order as a JSON array (`["o-1","p-7"]`): unlike a separator,
/// it cannot make one event's id equal to a pair's.
fn ledger_id(matched: &super::Matched<'_>) -> String {
    let ids: Vec<&str> = matched.iter().map(|(_, e)| e.context.id.as_str()).collect();
    match ids.as_slice() {
        [one] => (*one).to_string(),
        _ => serde_json::Value::from(ids).to_string(),
    }
}

/// What a SQLSTATE means for the event that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The same event will fail the same way.
    Permanent,
    /// The server is overloaded, shutting down or unreachable.
    Pushback(DropReason),
    Retryable,
}

fn classify_sqlstate(code: &str) -> Kind {
    match code {
        // query_canceled: statement_timeout, or a cancel by the operator.
        "57014" => Kind::Pushback(DropReason::Timeout),
        "55P03" => Kind::Pushback(DropReason::Unavailable),
        _ => match code.get(..2) {
            // data exception, integrity constraint, syntax / access rule,
            // feature not supported, WITH CHECK OPTION.
            Some("22" | "23" | "42" | "0A" | "44") => Kind::Permanent,
            // connection exception, transaction rollback (serialization,
            // deadlock), insufficient resources (too many connections),
            // operator intervention (admin shutdown, cannot connect now).
            Some("08" | "40" | "53" | "57") => Kind::Pushback(DropReason::Unavailable),
            _ => Kind::Retryable,
        },
    }
}

/// The server's message and SQLSTATE, or the client error's chain.
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} (SQLSTATE {})", db.message(), db.code().code());
    }
    super::error_chain(err)
}

/// `host:port/db` of a connection config, without user or password.
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// A parameter in PostgreSQL's text format: the server parses it with the
/// input function of whatever type the statement expects.
#[derive(Debug)]
struct Text<'a>(Option<&'a str>);

impl ToSql for Text<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            Some(text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.to_sql(ty, out)
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }
}

#[cfg(test)]
mod tests {
    use super::{classify_sqlstate, Kind};
    use spillway_flowctl::DropReason;

    #[test]
    fn sqlstates_map_to_retry_kinds() {
        // unique_violation, undefined_column, syntax_error, invalid_text_representation
        for code in ["23505", "42703", "42601", "22P02"] {
            assert_eq!(classify_sqlstate(code), Kind::Permanent, "{code}");
        }
        // too_many_connections, admin_shutdown, serialization_failure,
        // deadlock_detected, cannot_connect_now
        for code in ["53300", "57P01", "40001", "40P01", "57P03"] {
            assert_eq!(
                classify_sqlstate(code),
                Kind::Pushback(DropReason::Unavailable),
                "{code}"
            );
        }
        assert_eq!(
            classify_sqlstate("57014"),
            Kind::Pushback(DropReason::Timeout)
        );
        assert_eq!(classify_sqlstate("XX000"), Kind::Retryable);
    }
}
