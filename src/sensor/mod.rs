//! Sensors: pull events from the bus, match them to dependencies, run
//! triggers, and ack the bus only after the trigger outcome.
//!
//! Each trigger of each sensor runs as its own [`TriggerRunner`] with its own
//! durable bus consumer, so a slow or failing trigger never delays another
//! (fan-out isolation). What a runner guarantees, and in which order its
//! limits apply, is in [`runner`].

pub mod condition;
pub mod evaluation;
pub mod filter;
pub mod reject;
mod retry;
pub mod runner;
pub mod transform;
pub mod workers;

pub use reject::RejectPolicy;
pub use retry::RetryPolicy;
pub use runner::{TriggerHandle, TriggerLimits, TriggerRunner};

pub use filter::DependencyFilter;
use std::sync::Arc;

/// A dependency as the runner matches it: bus subject plus its compiled
/// transform and filters (shared by the sensor's triggers).
#[derive(Debug, Clone)]
pub struct DependencyMatcher {
    pub name: String,
    pub subject: String,
    pub filters: Option<Arc<DependencyFilter>>,
}

#[cfg(test)]
mod tests;
