//! `nats:` events (Argo `NATSEventsSource`): a core NATS subscription.
//!
//! Core NATS has no acknowledgements, so there is nothing to push back on:
//! while the bus is full, messages are dropped, counted and logged (the
//! seed's "drop silently" case, except that spillway counts it).

use crate::config::decode::Spanned;
use crate::config::flow_control::Problem;
use serde::Deserialize;
use std::collections::BTreeMap;

/// One core NATS subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NatsEvent {
    /// `nats://host:port`.
    pub url: Spanned<String>,
    /// Subject to subscribe to (wildcards allowed).
    pub subject: Spanned<String>,
    /// Retries of the initial connection (Argo `Backoff`); afterwards the
    /// client reconnects on its own.
    pub connection_backoff: Option<Spanned<crate::config::sensor::Backoff>>,
    pub json_body: Option<bool>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl NatsEvent {
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if !self.url.value.starts_with("nats://") {
            out.push((
                self.url.pos,
                format!("url must start with nats://, found {:?}", self.url.value),
            ));
        }
        if self.subject.value.trim().is_empty() || self.subject.value.contains(' ') {
            out.push((
                self.subject.pos,
                format!(
                    "subject {:?} must be non-empty without spaces",
                    self.subject.value
                ),
            ));
        }
        out
    }
}
