//! Triggers: what a sensor does with an event. One folder per kind.
//!
//! A trigger answers `Ok` (done: the sensor acks the bus) or a
//! [`TriggerError`] that says whether trying again can help and, when the
//! downstream said so (`Retry-After`), how long to wait first. Retry policy
//! and acking live in the sensor, not here.

pub mod backlog;
pub mod http;
pub mod log;
pub mod params;
pub mod postgres;
pub mod workflow;

use crate::event::Event;
use async_trait::async_trait;
pub use spillway_flowctl::DropReason;
use std::sync::Arc;
use std::time::Duration;

/// Why a trigger invocation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// A transient failure (timeout, connection refused, 5xx, 429).
    #[error("{message}")]
    Retryable {
        message: String,
        /// The downstream's own `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
        /// Set when the failure says the downstream is overloaded (429, 503,
        /// timeout): the signal adaptive concurrency backs off on.
        pushback: Option<DropReason>,
    },
    /// Trying again with the same event cannot succeed (e.g. a 4xx).
    #[error("{message}")]
    Permanent { message: String },
}

/// An error and its sources on one line (`outer: cause: root cause`), as
/// trigger failure messages show them.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A trigger implemented outside this crate: by a program embedding
/// spillway, or by a test that needs to see exactly when it was called.
#[async_trait]
pub trait CustomTrigger: Send + Sync + 'static {
    /// Runs the trigger for `event`, which satisfied dependency `dependency`.
    async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError>;

    /// Runs the trigger once for the events that met a multi-dependency
    /// trigger's `conditions`. By default, [`CustomTrigger::invoke`] for
    /// each of them in turn, stopping at the first failure.
    async fn invoke_matched(&self, matched: &Matched<'_>) -> Result<(), TriggerError> {
        for (dependency, event) in matched {
            self.invoke(dependency, event).await?;
        }
        Ok(())
    }
}

/// The events of one trigger run, as `(dependency name, event)`: exactly
/// one for a single-dependency sensor; for a trigger with `conditions`, the
/// oldest waiting event of each dependency that had one when the condition
/// became true (see [`crate::sensor::runner`]'s correlation stage).
pub type Matched<'a> = [(&'a str, &'a Event)];

/// A runnable trigger.
pub enum Trigger {
    Log(log::LogTrigger),
    Http(http::HttpTrigger),
    Workflow(workflow::WorkflowTrigger),
    /// Store for later (`k8s` ConfigMap `generateName: backlog-`).
    Backlog(backlog::BacklogTrigger),
    /// spillway extension: one idempotent SQL statement per event.
    Postgres(postgres::PostgresTrigger),
    Custom(Arc<dyn CustomTrigger>),
}

impl Trigger {
    /// Runs the trigger for `event`, which satisfied dependency `dependency`.
    pub async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError> {
        self.invoke_matched(&[(dependency, event)]).await
    }

    /// Runs the trigger once for `matched` (see [`Matched`]). Kinds that
    /// handle one event at a time (log, store-for-later) take each in turn.
    pub async fn invoke_matched(&self, matched: &Matched<'_>) -> Result<(), TriggerError> {
        match self {
            Trigger::Log(t) => {
                for (dependency, event) in matched {
                    t.invoke(dependency, event);
                }
                Ok(())
            }
            Trigger::Http(t) => t.invoke_matched(matched).await,
            Trigger::Workflow(t) => t.invoke_matched(matched).await,
            Trigger::Backlog(t) => {
                for (_, event) in matched {
                    t.invoke(event).await?;
                }
                Ok(())
            }
            Trigger::Postgres(t) => t.invoke_matched(matched).await,
            Trigger::Custom(t) => t.invoke_matched(matched).await,
        }
    }

    /// The workflow semaphore (and pending/running counts) the sensor
    /// must hold around [`Trigger::invoke`]; `None` for other kinds.
    pub fn workflow_gate(&self) -> Option<&Arc<workflow::semaphores::WorkflowGate>> {
        match self {
            Trigger::Workflow(t) => Some(t.gate()),
            _ => None,
        }
    }
}
