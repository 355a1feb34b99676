//! `kind: ConfigMap` (semaphore limits) and `kind: WorkflowTemplate` (what a
//! workflow runs and which semaphore it holds), as Argo Workflows writes them.

use super::decode::Spanned;
use super::values::ObjectMeta;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMap {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub data: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowTemplate {
    /// Checked by the loader before decoding (so not required here twice).
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: WorkflowSpec,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Name of the template to run; default: the first one.
    pub entrypoint: Option<Spanned<String>>,
    pub templates: Vec<Template>,
    pub synchronization: Option<Synchronization>,
    pub arguments: Option<Arguments>,
    /// Kill the workflow after this many seconds.
    pub active_deadline_seconds: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Synchronization {
    pub semaphore: Option<SemaphoreRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SemaphoreRef {
    pub config_map_key_ref: Spanned<ConfigMapKeyRef>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    pub name: Spanned<String>,
    pub key: Spanned<String>,
    pub optional: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arguments {
    pub parameters: Option<Vec<Parameter>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Parameter {
    pub name: Spanned<String>,
    pub value: Option<String>,
}

/// One workflow template: a `container` or a `script`, run as a child process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub name: Spanned<String>,
    pub container: Option<Spanned<Container>>,
    pub script: Option<Spanned<Script>>,
    pub inputs: Option<Arguments>,
    pub active_deadline_seconds: Option<Spanned<u64>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// Ignored outside Kubernetes (the command runs on this machine).
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Option<Vec<EnvVar>>,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Script {
    pub image: Option<String>,
    pub command: Option<Vec<String>>,
    pub source: String,
    pub env: Option<Vec<EnvVar>>,
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    pub value: Option<String>,
}
