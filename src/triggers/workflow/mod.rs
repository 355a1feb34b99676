//! The `argoWorkflow` trigger (`operation: submit`): runs the entry template
//! of the Workflow's `workflowTemplateRef` on this machine. A Workflow with
//! its own `spec.templates` runs the same way: the config loader turns its
//! spec into a WorkflowTemplate named `<sensor>/<trigger>` and points the
//! Workflow at it. A `k8s` trigger whose resource is a `Workflow`
//! (`operation: create` or `submit`) is the same trigger
//! ([`as_argo_workflow`]): same executor, same semaphores.
//!
//! Per event:
//! 1. the trigger's parameters are applied to the Workflow resource (Argo
//!    `src.dependencyName`/`dataKey`/`contextKey`/`value` → `dest`, e.g.
//!    `spec.arguments.parameters.0.value`);
//! 2. the workflow's parameters are the WorkflowTemplate's
//!    `spec.arguments.parameters` overridden by the resource's; the entry
//!    template's `inputs.parameters` take the workflow parameter of the same
//!    name, else their own `value`;
//! 3. `{{workflow.parameters.X}}`, `{{inputs.parameters.X}}` and
//!    `{{workflow.name}}` are substituted in `command`, `args`, `source`
//!    and `env` values (a parameter without a value fails the workflow;
//!    other `{{…}}` text is left as is);
//! 4. the entry template runs as a child process ([`executor`]) with the
//!    event JSON (`{"context": {…}, "data": …}`) on stdin, for at most
//!    `activeDeadlineSeconds` (the smallest of the Workflow's, the
//!    WorkflowTemplate's and the entry template's).
//!
//! Exit code 0 is success; anything else, or the deadline, is a retryable
//! failure (the sensor's `retryStrategy`, then `dlqTrigger`); a command
//! that does not exist or a parameter without a value is permanent.
//!
//! Waiting for the template's semaphore ([`semaphores`]) is done by the
//! sensor's runner before [`WorkflowTrigger::invoke`], so a pending
//! workflow keeps its bus message unacked and counts against `maxPending`.
//!
//! Not done: multi-step templates (`steps`, `dag`), container images (the
//! command runs on this machine; `image` is ignored with a warning).

pub mod executor;
pub mod semaphores;

use super::{params, TriggerError};
use crate::config::sensor::{ArgoWorkflowTrigger, K8sTrigger, TriggerParameter, TriggerTemplate};
use crate::config::workflow::{Template, WorkflowTemplate};
use crate::event::Event;
use crate::json_path;
use executor::{ExecError, Program};
use semaphores::WorkflowGate;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Bytes of a workflow's output kept (the tail); the rest is counted.
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Bytes of output quoted in a failure message.
const FAILURE_OUTPUT: usize = 1024;
/// Trigger-level parameter destinations that point into the Workflow, for
/// an `argoWorkflow` and a `k8s` trigger.
pub const RESOURCE_PREFIXES: [&str; 2] = ["argoWorkflow.source.resource.", "k8s.source.resource."];

/// The WorkflowTemplate a trigger's Workflow resource names, if any.
pub fn template_ref(trigger: &ArgoWorkflowTrigger) -> Option<&str> {
    named_template(&trigger.source.as_ref()?.resource.as_ref()?.value)
}

/// `spec.workflowTemplateRef.name` of a Workflow resource.
pub fn named_template(resource: &Value) -> Option<&str> {
    resource
        .get("spec")?
        .get("workflowTemplateRef")?
        .get("name")?
        .as_str()
}

/// The WorkflowTemplate a trigger template runs: its `argoWorkflow`'s, or
/// its `k8s` trigger's when that creates a `Workflow`.
pub fn template_ref_of(template: &TriggerTemplate) -> Option<&str> {
    if let Some(workflow) = &template.argo_workflow {
        return template_ref(&workflow.value);
    }
    let k8s = template.k8s.as_ref()?;
    if k8s.value.resource_kind() != "Workflow" {
        return None;
    }
    named_template(&k8s.value.source.resource.as_ref()?.value)
}

/// A `k8s` trigger that creates a `Workflow`, seen as the `argoWorkflow`
/// submit it means here: same resource, same parameters.
pub fn as_argo_workflow(k8s: &K8sTrigger) -> ArgoWorkflowTrigger {
    ArgoWorkflowTrigger {
        operation: None,
        source: Some(k8s.source.clone()),
        parameters: k8s.parameters.clone(),
        args: None,
    }
}

/// Why an argoWorkflow trigger cannot be built from its config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowTriggerError {
    #[error("argoWorkflow needs `source.resource` with `spec.workflowTemplateRef.name` or `spec.templates`")]
    NoTemplateRef,
    #[error("WorkflowTemplate {0:?} is not loaded")]
    UnknownTemplate(String),
    #[error("WorkflowTemplate {template:?} has no template {entry:?}")]
    NoEntry { template: String, entry: String },
    #[error(
        "template {0:?} has neither `container` nor `script`; only those run on the local executor"
    )]
    NotRunnable(String),
    #[error("parameter dest {0:?}: trigger-level parameters must point into `argoWorkflow.source.resource.` (or `k8s.source.resource.`)")]
    Dest(String),
}

/// A runnable argoWorkflow trigger.
pub struct WorkflowTrigger {
    gate: Arc<WorkflowGate>,
    resource: Value,
    /// `dest` relative to the Workflow resource.
    parameters: Vec<TriggerParameter>,
    /// The WorkflowTemplate's `spec.arguments.parameters`.
    defaults: BTreeMap<String, Option<String>>,
    entry: Entry,
    /// From the WorkflowTemplate and its entry template.
    template_deadline: Option<Duration>,
    generate_name: String,
}

/// The entry template, not yet rendered for an event.
struct Entry {
    program: Program,
    inputs: Vec<(String, Option<String>)>,
}

impl WorkflowTrigger {
    /// Builds the trigger for `config`, running a template of `templates`
    /// and holding `gate` (the template's semaphore).
    pub fn new(
        trigger: &crate::config::sensor::Trigger,
        config: &ArgoWorkflowTrigger,
        templates: &[crate::config::Located<WorkflowTemplate>],
        gate: Arc<WorkflowGate>,
    ) -> Result<Self, WorkflowTriggerError> {
        let name = template_ref(config).ok_or(WorkflowTriggerError::NoTemplateRef)?;
        let template = templates
            .iter()
            .find(|t| t.doc.metadata.name() == name)
            .map(|t| &t.doc)
            .ok_or_else(|| WorkflowTriggerError::UnknownTemplate(name.to_string()))?;
        let resource = config
            .source
            .as_ref()
            .and_then(|s| s.resource.as_ref())
            .map(|r| r.value.clone())
            .unwrap_or(Value::Null);
        let entry_name = resource
            .get("spec")
            .and_then(|s| s.get("entrypoint"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| template.spec.entrypoint.as_ref().map(|e| e.value.clone()));
        let entry =
            match &entry_name {
                Some(entry) => template
                    .spec
                    .templates
                    .iter()
                    .find(|t| &t.name.value == entry)
                    .ok_or_else(|| WorkflowTriggerError::NoEntry {
                        template: name.to_string(),
                        entry: entry.clone(),
                    })?,
                None => template.spec.templates.first().ok_or_else(|| {
                    WorkflowTriggerError::NoEntry {
                        template: name.to_string(),
                        entry: "(first)".to_string(),
                    }
                })?,
            };
        // Argo applies the trigger-level parameters to the template first,
        // then the resource's own, so the latter win on the same `dest`.
        let trigger_level = trigger.parameters.as_deref().unwrap_or_default();
        let mut parameters = params::rebase(trigger_level, &RESOURCE_PREFIXES)
            .map_err(WorkflowTriggerError::Dest)?;
        parameters.extend(config.parameters.iter().flatten().cloned());
        let template_deadline = [
            template.spec.active_deadline_seconds.as_ref(),
            entry.active_deadline_seconds.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|s| Duration::from_secs(s.value))
        .min();
        let generate_name = resource
            .get("metadata")
            .and_then(|m| m.get("generateName"))
            .and_then(Value::as_str)
            .map_or_else(|| format!("{name}-"), str::to_string);
        Ok(WorkflowTrigger {
            gate,
            resource,
            parameters,
            defaults: named_values(template.spec.arguments.as_ref()),
            entry: Entry::from_template(entry)?,
            template_deadline,
            generate_name,
        })
    }

    /// The template's semaphore and pending/running counts.
    pub fn gate(&self) -> &Arc<WorkflowGate> {
        &self.gate
    }

    /// Runs the workflow for `event` (the semaphore slot is already held).
    pub async fn invoke(&self, dependency: &str, event: &Event) -> Result<(), TriggerError> {
        self.invoke_matched(&[(dependency, event)]).await
    }

    /// Runs one workflow for the events of one trigger run: parameters read
    /// the event of their `dependencyName`; stdin carries the first event
    /// (`context`, `data`) and, for several, `dependencies` with each
    /// event by dependency name.
    pub async fn invoke_matched(&self, matched: &super::Matched<'_>) -> Result<(), TriggerError> {
        let Some((_, event)) = matched.first() else {
            return Ok(());
        };
        let rendered = self.render(matched)?;
        let mut input = serde_json::json!({
            "context": event.context,
            "data": event.data_json(),
        });
        if matched.len() > 1 {
            let by_dependency: serde_json::Map<String, Value> = matched
                .iter()
                .map(|(dependency, event)| {
                    let one =
                        serde_json::json!({"context": event.context, "data": event.data_json()});
                    (dependency.to_string(), one)
                })
                .collect();
            input["dependencies"] = Value::Object(by_dependency);
        }
        let input = bytes::Bytes::from(input.to_string());
        let name = &rendered.name;
        match executor::run(&rendered.program, input, rendered.deadline, OUTPUT_LIMIT).await {
            Ok(done) if done.success() => {
                tracing::debug!(workflow = %name, template = self.gate.template(), output = %done.output.text(), "workflow succeeded");
                Ok(())
            }
            Ok(done) => Err(TriggerError::Retryable {
                message: format!(
                    "workflow {name} ({}) failed: {}; output: {}",
                    self.gate.template(),
                    done.status,
                    tail(&done.output.text())
                ),
                retry_after: None,
                pushback: None,
            }),
            Err(ExecError::DeadlineExceeded { deadline, output }) => Err(TriggerError::Retryable {
                message: format!(
                    "workflow {name} ({}) exceeded activeDeadlineSeconds ({}s) and was killed; output: {}",
                    self.gate.template(),
                    deadline.as_secs(),
                    tail(&output.text())
                ),
                retry_after: None,
                pushback: None,
            }),
            Err(err @ (ExecError::NoCommand | ExecError::Spawn { .. })) => {
                let permanent = match &err {
                    ExecError::Spawn { source, .. } => matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                    ),
                    _ => true,
                };
                let message = format!("workflow {name} ({}): {err}", self.gate.template());
                if permanent {
                    Err(TriggerError::Permanent { message })
                } else {
                    Err(TriggerError::Retryable {
                        message,
                        retry_after: None,
                        pushback: None,
                    })
                }
            }
            Err(err) => Err(TriggerError::Retryable {
                message: format!("workflow {name} ({}): {err}", self.gate.template()),
                retry_after: None,
                pushback: None,
            }),
        }
    }

    /// The program, name and deadline of the workflow for `event`.
    fn render(&self, matched: &super::Matched<'_>) -> Result<Rendered, TriggerError> {
        let mut resource = self.resource.clone();
        params::apply_matched(&self.parameters, matched, &mut resource).map_err(|e| {
            TriggerError::Permanent {
                message: format!("workflow of {}: {e}", self.gate.template()),
            }
        })?;
        let spec = resource.get("spec");
        let mut workflow = self.defaults.clone();
        for parameter in spec
            .and_then(|s| s.get("arguments"))
            .and_then(|a| a.get("parameters"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = parameter.get("name").and_then(Value::as_str) {
                let value = parameter.get("value").map(json_path::to_plain_string);
                if value.is_some() || !workflow.contains_key(name) {
                    workflow.insert(name.to_string(), value);
                }
            }
        }
        let inputs: BTreeMap<String, Option<String>> = self
            .entry
            .inputs
            .iter()
            .map(|(name, default)| {
                let value = workflow.get(name).cloned().flatten().or(default.clone());
                (name.clone(), value)
            })
            .collect();
        let name = resource
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .map_or_else(
                || {
                    // Argo's generateName suffix: five random lowercase letters.
                    let suffix: String = std::iter::repeat_with(fastrand::lowercase)
                        .take(5)
                        .collect();
                    format!("{}{suffix}", self.generate_name)
                },
                str::to_string,
            );
        let scope = Scope {
            workflow: &workflow,
            inputs: &inputs,
            name: &name,
        };
        let permanent = |message: String| TriggerError::Permanent {
            message: format!("workflow {name} ({}): {message}", self.gate.template()),
        };
        let program = &self.entry.program;
        let program = Program {
            argv: program
                .argv
                .iter()
                .map(|a| scope.substitute(a))
                .collect::<Result<_, _>>()
                .map_err(permanent)?,
            script: match &program.script {
                Some(source) => Some(scope.substitute(source).map_err(permanent)?),
                None => None,
            },
            env: program
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), scope.substitute(v)?)))
                .collect::<Result<_, String>>()
                .map_err(permanent)?,
            working_dir: program.working_dir.clone(),
        };
        let resource_deadline = spec
            .and_then(|s| s.get("activeDeadlineSeconds"))
            .and_then(Value::as_u64)
            .map(Duration::from_secs);
        let deadline = [self.template_deadline, resource_deadline]
            .into_iter()
            .flatten()
            .min();
        Ok(Rendered {
            program,
            name,
            deadline,
        })
    }
}

struct Rendered {
    program: Program,
    name: String,
    deadline: Option<Duration>,
}

impl Entry {
    fn from_template(template: &Template) -> Result<Self, WorkflowTriggerError> {
        let env_of = |env: &Option<Vec<crate::config::workflow::EnvVar>>| {
            env.iter()
                .flatten()
                .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let program = if let Some(container) = &template.container {
            let c = &container.value;
            Program {
                argv: c
                    .command
                    .iter()
                    .flatten()
                    .chain(c.args.iter().flatten())
                    .cloned()
                    .collect(),
                script: None,
                env: env_of(&c.env),
                working_dir: c.working_dir.as_ref().map(Into::into),
            }
        } else if let Some(script) = &template.script {
            let s = &script.value;
            Program {
                // Argo's script templates name their interpreter; `sh` when not.
                argv: s.command.clone().unwrap_or_else(|| vec!["sh".to_string()]),
                script: Some(s.source.clone()),
                env: env_of(&s.env),
                working_dir: s.working_dir.as_ref().map(Into::into),
            }
        } else {
            return Err(WorkflowTriggerError::NotRunnable(
                template.name.value.clone(),
            ));
        };
        Ok(Entry {
            program,
            inputs: named_values(template.inputs.as_ref()).into_iter().collect(),
        })
    }
}

/// `parameters: [{name, value}]` as a map.
fn named_values(
    arguments: Option<&crate::config::workflow::Arguments>,
) -> BTreeMap<String, Option<String>> {
    arguments
        .and_then(|a| a.parameters.as_ref())
        .into_iter()
        .flatten()
        .map(|p| (p.name.value.clone(), p.value.clone()))
        .collect()
}

/// The last [`FAILURE_OUTPUT`] bytes of `text`, on a character boundary.
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(FAILURE_OUTPUT);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].trim_end()
}

/// The values `{{…}}` placeholders resolve to.
struct Scope<'a> {
    workflow: &'a BTreeMap<String, Option<String>>,
    inputs: &'a BTreeMap<String, Option<String>>,
    name: &'a str,
}

impl Scope<'_> {
    /// `text` with the known placeholders replaced; `Err` names a
    /// parameter that has no value.
    fn substitute(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let Some(close) = rest[open..].find("}}") else {
                break;
            };
            out.push_str(&rest[..open]);
            let whole = &rest[open..open + close + 2];
            let key = whole[2..whole.len() - 2].trim();
            let found = if key == "workflow.name" {
                Some(Some(self.name.to_string()))
            } else if let Some(name) = key.strip_prefix("workflow.parameters.") {
                Some(self.workflow.get(name).cloned().flatten())
            } else {
                key.strip_prefix("inputs.parameters.")
                    .map(|name| self.inputs.get(name).cloned().flatten())
            };
            match found {
                Some(Some(value)) => out.push_str(&value),
                Some(None) => return Err(format!("{key} has no value")),
                None => out.push_str(whole),
            }
            rest = &rest[open + close + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
