//! Configuration: Argo Events YAML in, a checked [`Config`] out.
//!
//! [`load`] reads multi-document YAML files holding `EventBus`,
//! `EventSource`, `Sensor`, `ConfigMap` and `WorkflowTemplate` documents,
//! and spillway's own `AlertRules` ([`alerts`]).
//! It guarantees:
//!
//! - every problem it can find is reported, each as `FILE:LINE:COL: message`
//!   ([`Diagnostic`]); a [`Config`] is returned only when there are no errors;
//! - unknown fields are errors with a "did you mean" hint; Kubernetes-only
//!   Argo fields are warnings ([`k8s_only`]);
//! - cross references are checked: sensor dependencies name existing event
//!   sources and events, semaphores name existing ConfigMap keys holding a
//!   positive integer, workflow triggers name loaded WorkflowTemplates;
//! - trigger resources kept outside the Sensor (`source.file`, `source.url`,
//!   `source.configmap`) are read here, once, bounded in time and size
//!   ([`fetch`]), so what loads is exactly what runs.
//!
//! It never panics on bad input.

pub mod alerts;
mod artifact;
pub mod conditions;
pub mod decode;
pub mod diagnostic;
pub mod eventbus;
pub mod eventsource;
pub mod fetch;
pub mod flow_control;
pub mod k8s_only;
mod load;
pub mod sensor;
pub mod suggest;
mod validate;
pub mod values;
pub mod workflow;
pub mod yaml;

pub use artifact::MAX_RESOURCE_FILE;
pub use decode::Spanned;
pub use diagnostic::{Diagnostic, Severity};
pub use load::{load, load_with, LoadOptions};

use std::path::PathBuf;

/// A document together with the file it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Located<T> {
    pub file: PathBuf,
    /// Where the document starts.
    pub pos: yaml::Pos,
    pub doc: T,
}

/// The event bus to run, resolved from the `EventBus` document (or defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct BusConfig {
    /// `metadata.name` of the EventBus (`default` when none was given).
    pub name: String,
    /// A JetStream server to use instead of the embedded bus.
    pub url: Option<String>,
    pub limits: spillway_bus::Limits,
    /// JetStream stream replicas (1 unless the EventBus says otherwise).
    pub replicas: usize,
    /// When the embedded bus syncs (`sync_interval`; `Always` by default).
    pub sync: spillway_bus::segment::SyncPolicy,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            name: "default".to_string(),
            url: None,
            limits: spillway_bus::Limits::default(),
            replicas: 1,
            sync: spillway_bus::segment::SyncPolicy::Always,
        }
    }
}

/// A loaded, checked configuration.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub bus: BusConfig,
    pub event_sources: Vec<Located<eventsource::EventSource>>,
    pub sensors: Vec<Located<sensor::Sensor>>,
    pub config_maps: Vec<Located<workflow::ConfigMap>>,
    pub workflow_templates: Vec<Located<workflow::WorkflowTemplate>>,
    /// The alert rules and Alertmanager, from the `AlertRules` document
    /// (the built-in defaults without one).
    pub alerting: alerts::AlertingConfig,
    /// Warnings found while loading (Kubernetes-only fields, risky settings).
    pub warnings: Vec<Diagnostic>,
}

impl Config {
    /// One line saying what was loaded, for `spillway validate`.
    pub fn summary(&self) -> String {
        let webhooks: usize = self
            .event_sources
            .iter()
            .filter_map(|s| s.doc.spec.webhook.as_ref())
            .map(|w| w.len())
            .sum();
        let triggers: usize = self.sensors.iter().map(|s| s.doc.spec.triggers.len()).sum();
        format!(
            "ok: {} event source(s) ({} webhook endpoint(s)), {} sensor(s) with {} trigger(s), \
             {} ConfigMap(s), {} WorkflowTemplate(s); bus {:?} ({}), {} warning(s)",
            self.event_sources.len(),
            webhooks,
            self.sensors.len(),
            triggers,
            self.config_maps.len(),
            self.workflow_templates.len(),
            self.bus.name,
            match &self.bus.url {
                Some(url) => format!("JetStream at {url}"),
                None => "embedded".to_string(),
            },
            self.warnings.len()
        )
    }
}
