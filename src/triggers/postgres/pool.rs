//! A small bounded connection pool for one postgres trigger.
//!
//! Guarantees: at most `size` connections exist at once (open, idle or
//! being opened): a caller takes one of `size` permits before it gets or
//! opens a connection, and the permit goes back with the connection. When
//! every permit is taken, callers wait in FIFO order (tokio's semaphore);
//! the trigger's `timeout` bounds the wait, and the sensor's concurrency
//! limit bounds how many wait. The idle list therefore never holds more
//! than `size` connections.
//!
//! A connection goes back to the idle list only when its user says it is
//! in a known state ([`PooledConnection::reuse`]); one dropped mid-way (a
//! timeout cancelled the invocation, an I/O error) is closed instead.
//! Connections are opened lazily, so a server that is down at start-up
//! does not stop spillway: every invocation retries the connect.
//!
//! Not guaranteed: idle connections are not health-checked before use; a
//! server restart fails the first invocation on each of them (retryable)
//! and they are replaced.

use parking_lot::Mutex;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, NoTls, Statement};

/// One open connection with the statements prepared on it.
pub struct Connection {
    pub client: Client,
    /// The ledger insert: `(trigger, event_id)`, 1 row when it is new.
    pub claim: Statement,
    /// The user's statement.
    pub statement: Statement,
}

/// Opens connections to one server, at most `size` at a time.
pub struct Pool {
    config: tokio_postgres::Config,
    permits: Arc<Semaphore>,
    /// Bounded by `size` (see the module doc).
    idle: Mutex<Vec<Connection>>,
}

impl Pool {
    pub fn new(config: tokio_postgres::Config, size: usize) -> Pool {
        Pool {
            config,
            permits: Arc::new(Semaphore::new(size)),
            idle: Mutex::new(Vec::with_capacity(size)),
        }
    }

    /// Waits for a permit, then hands out an idle connection, or `None`
    /// in the slot when the caller must open one ([`Pool::connect`]).
    pub async fn get(self: &Arc<Self>) -> PooledConnection {
        // The semaphore is never closed, so acquiring cannot fail; if it
        // ever were, proceeding without a permit would break the bound.
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the pool semaphore is never closed"));
        let connection = loop {
            let Some(connection) = self.idle.lock().pop() else {
                break None;
            };
            if !connection.client.is_closed() {
                break Some(connection);
            }
        };
        PooledConnection {
            pool: Arc::clone(self),
            connection,
            reusable: false,
            _permit: permit,
        }
    }

    /// Opens a new connection; its I/O runs on a task of its own that ends
    /// when the client is dropped or the server closes the connection.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("postgres connection closed: {err}");
            }
        });
        Ok(client)
    }
}

/// A connection slot taken from the pool: holds a permit, and maybe a
/// connection. Dropping it returns the permit, and the connection too if
/// [`PooledConnection::reuse`] was called.
pub struct PooledConnection {
    pool: Arc<Pool>,
    pub connection: Option<Connection>,
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl PooledConnection {
    /// The connection is between transactions: it may serve another call.
    pub fn reuse(&mut self) {
        self.reusable = true;
    }
}

impl Drop for PooledConnection {
    fn drop(&mut self) {
        if let (true, Some(connection)) = (self.reusable, self.connection.take()) {
            if !connection.client.is_closed() {
                self.pool.idle.lock().push(connection);
            }
        }
    }
}
