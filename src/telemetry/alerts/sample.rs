//! What the evaluator looks at: one [`Snapshot`] of the values the pipeline
//! already tracks (bus stats, consumer stats, the latency histograms), read
//! at one evaluation.
//!
//! Collecting reads in-memory counters only (no I/O, no await); a JetStream
//! bus answers from its periodically refreshed snapshot. Pending workflows
//! are read from the semaphore registry itself, like consumer stats from
//! their handles, so the rules never depend on a `/metrics` scrape.

use crate::sensor::TriggerHandle;
use crate::telemetry::Metrics;
use crate::triggers::workflow::semaphores::SemaphoreRegistry;
use spillway_bus::Bus;
use std::time::Duration;

/// One stream's depth, bytes and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSample {
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
    pub max_msgs: Option<u64>,
    pub max_bytes: Option<u64>,
}

/// One trigger consumer's lag and oldest unacked event.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerSample {
    pub sensor: String,
    pub trigger: String,
    pub lag: u64,
    pub oldest_unacked_age: Duration,
}

/// A histogram's running totals (a mean over a window is Δsum / Δcount).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub sum: f64,
    pub count: u64,
}

/// Everything the rules read, at one instant.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    pub streams: Vec<StreamSample>,
    pub consumers: Vec<ConsumerSample>,
    /// Producer block time totals per source.
    pub producers: Vec<(String, Totals)>,
    /// Sensor processing latency totals per sensor.
    pub sensors: Vec<(String, Totals)>,
    /// Pending workflows per template.
    pub workflows: Vec<(String, u64)>,
}

/// Where a running pipeline's samples come from.
pub struct Sources {
    pub stream: String,
    pub bus: std::sync::Arc<dyn Bus>,
    pub triggers: Vec<TriggerHandle>,
    /// Event source names (producer block time is recorded per source).
    pub sources: Vec<String>,
    pub metrics: std::sync::Arc<Metrics>,
    /// The workflow templates' pending and running counts.
    pub workflows: std::sync::Arc<SemaphoreRegistry>,
}

impl Sources {
    /// Reads every value the rules need, now.
    pub fn collect(&self) -> Snapshot {
        let stats = self.bus.stats();
        let limits = self.bus.limits();
        let mut sensors: Vec<String> = self.triggers.iter().map(|t| t.sensor.clone()).collect();
        sensors.sort();
        sensors.dedup();
        Snapshot {
            streams: vec![StreamSample {
                stream: self.stream.clone(),
                messages: stats.messages,
                bytes: stats.bytes,
                max_msgs: limits.max_msgs,
                max_bytes: limits.max_bytes,
            }],
            consumers: self
                .triggers
                .iter()
                .map(|t| {
                    let c = t.consumer.stats();
                    ConsumerSample {
                        sensor: t.sensor.clone(),
                        trigger: t.trigger.clone(),
                        lag: c.pending,
                        oldest_unacked_age: c.oldest_unacked_age.unwrap_or_default(),
                    }
                })
                .collect(),
            producers: self
                .sources
                .iter()
                .map(|s| (s.clone(), self.metrics.producer_block_totals(s)))
                .collect(),
            sensors: sensors
                .into_iter()
                .map(|s| {
                    let totals = self.metrics.sensor_processing_totals(&s);
                    (s, totals)
                })
                .collect(),
            workflows: self
                .workflows
                .workflows()
                .into_iter()
                .map(|w| (w.template, w.pending as u64))
                .collect(),
        }
    }
}
