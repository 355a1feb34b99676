//! The `/api/v1/status` document: one typed shape, written by the admin
//! server and read by `spillway status`, so the two cannot drift apart.
//!
//! Every field is filled from live state at the moment of the request; no
//! field is cached. Fields are added, never renamed (scripts read them).

use crate::telemetry::alerts::AlertStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Seconds since the pipeline started, on the server's monotonic
    /// clock: rates are counter deltas over uptime deltas, and a smaller
    /// uptime than before means a restart (counters began again).
    #[serde(default)]
    pub uptime_seconds: f64,
    pub ready: bool,
    pub draining: bool,
    pub bus: BusStatus,
    pub triggers: Vec<TriggerStatus>,
    /// Pending and firing alerts.
    #[serde(default)]
    pub alerts: Vec<AlertStatus>,
    #[serde(default)]
    pub process: ProcessStatus,
    #[serde(default)]
    pub workflows: Vec<WorkflowStatus>,
    #[serde(default)]
    pub semaphores: Vec<SemaphoreStatus>,
    #[serde(default)]
    pub backlog: BacklogStatus,
    /// Every configured event of every EventSource, with its outcomes.
    #[serde(default)]
    pub sources: Vec<SourceStatus>,
}

/// One event of an EventSource (`<source>.<event>` on the bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub event: String,
    /// Requests or messages so far per outcome (`accepted`, and the
    /// refusals: `rate_limited`, `bus_full`, `shed` answer 429 on a
    /// webhook; `too_large`, `unauthorized`, `invalid`, `unavailable`,
    /// `missed`), as in `spillway_source_events_total{outcome}`.
    pub outcomes: BTreeMap<String, u64>,
}

/// The backlog store (events stored for later).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BacklogStatus {
    pub events: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusStatus {
    pub stream: String,
    /// `embedded` or `jetstream`.
    pub backend: String,
    /// Queue depth: events not yet released by every trigger.
    pub messages: u64,
    pub bytes: u64,
    pub published: u64,
    pub rejected_full: u64,
    pub rejected_too_large: u64,
    pub discarded: u64,
    pub last_seq: u64,
    pub consumers: u64,
    pub limits: LimitsStatus,
}

/// The EventBus limits; `null` means unlimited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsStatus {
    pub max_msgs: Option<u64>,
    pub max_bytes: Option<u64>,
    pub max_msg_size: Option<u64>,
    pub max_consumers: Option<u64>,
    pub max_age_seconds: Option<f64>,
    /// `new` or `old`.
    pub discard: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerStatus {
    pub sensor: String,
    pub trigger: String,
    pub consumer: String,
    /// Events matching the trigger not yet delivered (consumer lag).
    pub lag: u64,
    pub ack_pending: u64,
    pub redelivered: u64,
    pub oldest_unacked_age_seconds: Option<f64>,
    pub inflight: usize,
    pub concurrency_limit: usize,
    pub max_in_flight: usize,
    /// Worker count of a trigger with `flowControl.autoscale`.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Invocations so far per outcome (success, failure, retry, dlq).
    #[serde(default)]
    pub invocations: BTreeMap<String, u64>,
    /// The WorkflowTemplate an argoWorkflow trigger runs.
    #[serde(default)]
    pub workflow_template: Option<String>,
    /// Fetched events waiting for a pending place (workflow triggers).
    #[serde(default)]
    pub pending: usize,
    /// `flowControl.maxPending` of a workflow trigger.
    #[serde(default)]
    pub max_pending: Option<usize>,
}

/// One WorkflowTemplate's workflows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowStatus {
    pub template: String,
    /// `configmap/key` of the semaphore it holds, if any.
    pub semaphore: Option<String>,
    pub pending: usize,
    pub running: usize,
}

/// One ConfigMap semaphore.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemaphoreStatus {
    /// `configmap/key`.
    pub name: String,
    pub limit: usize,
    pub running: usize,
    pub pending: usize,
    pub max_pending: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Resident memory (RSS), where the OS reports it.
    pub resident_memory_bytes: Option<u64>,
}
