//! `flowControl.onReject`: what a trigger does with an event it could not
//! deliver.
//!
//! An event is **rejected** when the downstream could not take it — the
//! trigger failed with a retryable error (connection refused, timeout, 5xx,
//! 429/503 without a usable `Retry-After`) — and its `retryStrategy` steps
//! are used up. Then:
//!
//! | `onReject` | the event | counted as |
//! |---|---|---|
//! | `error` (default) | goes to the `dlqTrigger` if there is one; otherwise it is nak'ed back to the bus with a delay (the backoff continued, at most 10 min, or the downstream's `Retry-After`) and redelivered later. It keeps its place in the bus, so the bus fills and the sources answer 429 / nak: the error reaches the source. | `retry` (`dlq` with a DLQ trigger) |
//! | `drop` | acked and gone; one warning per 10 s with the count | `dropped` |
//! | `backlog` | written to the durable backlog store, then acked; `spillway backlog replay` brings it back to this trigger | `backlog` |
//!
//! `drop` and `backlog` are explicit choices and win over a `dlqTrigger`,
//! which then only takes permanent failures. A permanent failure (a 4xx) is
//! never a rejection: it goes to the DLQ trigger or is terminated, counted
//! `failure`. A full backlog store (or a disk error) makes `backlog` act as
//! `error`: the event stays on the bus, nothing is lost silently.
//!
//! A full in-flight window is not a rejection: the runner does not fetch,
//! the event stays on the bus, and that is the backpressure.

use crate::backlog::BacklogStore;
use std::fmt;
use std::sync::Arc;

/// The runtime form of `flowControl.onReject`.
#[derive(Clone, Default)]
pub enum RejectPolicy {
    /// Back to the bus (or to the DLQ trigger).
    #[default]
    Error,
    /// Acked, counted `dropped`.
    Drop,
    /// Stored in the backlog, counted `backlog`.
    Backlog(Arc<BacklogStore>),
}

impl fmt::Debug for RejectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectPolicy::Error => "error",
            RejectPolicy::Drop => "drop",
            RejectPolicy::Backlog(_) => "backlog",
        })
    }
}
