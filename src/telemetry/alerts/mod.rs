//! Built-in alert rules, evaluated in-process, sent to Alertmanager, and
//! exported as a Prometheus rule file.
//!
//! - [`rules`]: the seven rules as data (thresholds, `for:`, severity) and
//!   their PromQL; one definition feeds the evaluator, the export and the
//!   notifications, so they never disagree.
//! - [`sample`]: the snapshot of pipeline values a rule reads.
//! - [`evaluator`]: a pure state machine over snapshots with an injected
//!   clock (pending → firing after `for:` → resolved).
//! - [`notifier`]: a bounded queue and one task POSTing to Alertmanager's
//!   `/api/v2/alerts`, with retries.
//! - [`service`]: the periodic task tying them together, and the view
//!   `/api/v1/status` shows.
//! - [`export`]: the Prometheus rule file.
//!
//! Configuration (`kind: AlertRules`) is described in `docs/alerts.md`.

pub mod evaluator;
pub mod export;
pub mod notifier;
pub mod rules;
pub mod sample;
pub mod service;

pub use evaluator::{Alert, AlertState, Evaluator, Transition};
pub use notifier::{Notifier, NotifierConfig, PostableAlert};
pub use rules::{Condition, Rule, RuleId, RuleSet, Severity};
pub use sample::{Snapshot, Sources, Totals};
pub use service::{AlertStatus, Alerting, Notify};

#[cfg(test)]
mod tests;
