//! Workflow semaphores from ConfigMaps (Argo's
//! `spec.synchronization.semaphore.configMapKeyRef`), and the per-template
//! pending/running counts.
//!
//! Guarantees:
//! - one [`Semaphore`] per ConfigMap key, shared by every WorkflowTemplate
//!   (and so every trigger) that names that key: `data[key]` bounds the
//!   workflows of all of them together, waiters are served FIFO;
//! - a semaphore's pending queue is bounded by the sum of the `maxPending`
//!   of the triggers that use it, and each trigger keeps its own share (the
//!   runner fetches no event it has no pending ticket for), so
//!   `PendingFull` does not happen in practice;
//! - [`SemaphoreRegistry::reload`] applies new limits at once: growing
//!   admits waiters, shrinking never stops a running workflow (new ones wait
//!   until the running count is under the new limit);
//! - `pending` and `running` of a [`WorkflowGate`] are exact at every
//!   instant: they are held by RAII guards.
//!
//! Not done here: adding or removing semaphores at runtime (the set of
//! semaphores is fixed at start-up; a reload only changes limits).

use crate::config::workflow::ConfigMap;
use crate::config::{Config, Located};
use spillway_flowctl::{AcquireError, Permit, Semaphore, DEFAULT_MAX_PENDING};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A ConfigMap key holding a semaphore limit: `workflow-semaphores/api-calls`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SemaphoreName {
    pub config_map: String,
    pub key: String,
}

impl fmt::Display for SemaphoreName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.config_map, self.key)
    }
}

/// Why a semaphore limit could not be read from the config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("ConfigMap {0:?} is not loaded")]
    NoConfigMap(String),
    #[error("ConfigMap {config_map:?} has no key {key:?}")]
    NoKey { config_map: String, key: String },
    #[error("semaphore limit {name} must be a positive integer, found {value:?}")]
    NotAPositiveInteger { name: String, value: String },
}

/// A limit that changed on reload, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitChange {
    pub name: SemaphoreName,
    pub from: usize,
    pub to: usize,
}

/// Every semaphore of the pipeline, by ConfigMap key, and the gate of every
/// WorkflowTemplate.
#[derive(Default)]
pub struct SemaphoreRegistry {
    semaphores: BTreeMap<SemaphoreName, Semaphore>,
    templates: BTreeMap<String, Arc<WorkflowGate>>,
}

/// A semaphore as seen by `/metrics` and `/api/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemaphoreView {
    pub name: SemaphoreName,
    pub limit: usize,
    pub running: usize,
    pub pending: usize,
    pub max_pending: usize,
}

/// A WorkflowTemplate as seen by `/metrics` and `/api/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkflowView {
    pub template: String,
    pub semaphore: Option<SemaphoreName>,
    pub pending: usize,
    pub running: usize,
}

impl SemaphoreRegistry {
    /// One semaphore per ConfigMap key named by a WorkflowTemplate, sized
    /// from the ConfigMap; its pending bound is the sum of the `maxPending`
    /// (default [`DEFAULT_MAX_PENDING`]) of the argoWorkflow triggers whose
    /// template uses it (0 for a semaphore no trigger uses).
    pub fn build(config: &Config) -> Result<Self, LimitError> {
        let mut max_pending: BTreeMap<&str, usize> = BTreeMap::new();
        for sensor in &config.sensors {
            for trigger in &sensor.doc.spec.triggers {
                let Some(name) = super::template_ref_of(&trigger.template) else {
                    continue;
                };
                let share = trigger
                    .flow_control
                    .as_ref()
                    .and_then(|f| f.value.max_pending.as_ref())
                    .map_or(DEFAULT_MAX_PENDING, |m| m.value as usize);
                *max_pending.entry(name).or_default() += share;
            }
        }
        // A semaphore's queue bound is the sum of its templates' shares.
        let mut bounds: BTreeMap<SemaphoreName, usize> = BTreeMap::new();
        for template in &config.workflow_templates {
            if let Some(name) = semaphore_name(&template.doc) {
                let share = max_pending
                    .get(template.doc.metadata.name())
                    .copied()
                    .unwrap_or(0);
                *bounds.entry(name).or_default() += share;
            }
        }
        let mut registry = SemaphoreRegistry::default();
        for (name, bound) in bounds {
            let limit = read_limit(&config.config_maps, &name)?;
            registry
                .semaphores
                .insert(name, Semaphore::new(limit, bound));
        }
        for template in &config.workflow_templates {
            let template_name = template.doc.metadata.name().to_string();
            let name = semaphore_name(&template.doc);
            let handle = name
                .as_ref()
                .and_then(|n| registry.semaphores.get(n))
                .cloned();
            registry.templates.insert(
                template_name.clone(),
                Arc::new(WorkflowGate {
                    template: template_name,
                    semaphore: name,
                    handle,
                    pending: Arc::default(),
                    running: Arc::default(),
                }),
            );
        }
        Ok(registry)
    }

    /// The gate of WorkflowTemplate `template`.
    pub fn gate(&self, template: &str) -> Option<Arc<WorkflowGate>> {
        self.templates.get(template).cloned()
    }

    /// Applies the semaphore limits of `config` (a re-read of the files).
    /// Returns the limits that changed and, separately, the semaphores
    /// whose new limit cannot be read (they keep their limit).
    pub fn reload(&self, config: &Config) -> (Vec<LimitChange>, Vec<LimitError>) {
        let mut changes = Vec::new();
        let mut problems = Vec::new();
        for (name, semaphore) in &self.semaphores {
            match read_limit(&config.config_maps, name) {
                Ok(to) => {
                    let from = semaphore.limit();
                    if from != to {
                        semaphore.set_limit(to);
                        changes.push(LimitChange {
                            name: name.clone(),
                            from,
                            to,
                        });
                    }
                }
                Err(err) => problems.push(err),
            }
        }
        (changes, problems)
    }

    pub fn semaphores(&self) -> Vec<SemaphoreView> {
        self.semaphores
            .iter()
            .map(|(name, s)| SemaphoreView {
                name: name.clone(),
                limit: s.limit(),
                running: s.running(),
                pending: s.pending(),
                max_pending: s.max_pending(),
            })
            .collect()
    }

    pub fn workflows(&self) -> Vec<WorkflowView> {
        self.templates
            .values()
            .map(|gate| WorkflowView {
                template: gate.template.clone(),
                semaphore: gate.semaphore.clone(),
                pending: gate.pending(),
                running: gate.running(),
            })
            .collect()
    }
}

/// The semaphore a WorkflowTemplate holds while it runs, if any.
fn semaphore_name(template: &crate::config::workflow::WorkflowTemplate) -> Option<SemaphoreName> {
    let key_ref = &template
        .spec
        .synchronization
        .as_ref()?
        .semaphore
        .as_ref()?
        .config_map_key_ref
        .value;
    Some(SemaphoreName {
        config_map: key_ref.name.value.clone(),
        key: key_ref.key.value.clone(),
    })
}

/// `data[key]` of the named ConfigMap as a limit (validation requires a
/// positive integer; a reloaded file may not hold one).
fn read_limit(
    config_maps: &[Located<ConfigMap>],
    name: &SemaphoreName,
) -> Result<usize, LimitError> {
    let map = config_maps
        .iter()
        .find(|m| m.doc.metadata.name() == name.config_map)
        .ok_or_else(|| LimitError::NoConfigMap(name.config_map.clone()))?;
    let value = map
        .doc
        .data
        .as_ref()
        .and_then(|d| d.get(&name.key))
        .ok_or_else(|| LimitError::NoKey {
            config_map: name.config_map.clone(),
            key: name.key.clone(),
        })?;
    match value.value.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n as usize),
        _ => Err(LimitError::NotAPositiveInteger {
            name: name.to_string(),
            value: value.value.clone(),
        }),
    }
}

/// The workflows of one WorkflowTemplate: the semaphore they hold (if any)
/// and how many are pending on it or running.
pub struct WorkflowGate {
    template: String,
    semaphore: Option<SemaphoreName>,
    handle: Option<Semaphore>,
    pending: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
}

impl WorkflowGate {
    /// A gate with no semaphore (tests and templates without
    /// `synchronization`).
    pub fn unlimited(template: &str) -> Arc<Self> {
        Arc::new(WorkflowGate {
            template: template.to_string(),
            semaphore: None,
            handle: None,
            pending: Arc::default(),
            running: Arc::default(),
        })
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// Whether workflows of this template can wait (Pending) for a slot.
    pub fn has_semaphore(&self) -> bool {
        self.handle.is_some()
    }

    /// The semaphore's limit in force, if the template has one.
    pub fn limit(&self) -> Option<usize> {
        self.handle.as_ref().map(Semaphore::limit)
    }

    /// Workflows waiting for the semaphore.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// Workflows holding their slot (running or about to).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits (counted as pending, FIFO) for the template's semaphore, then
    /// counts the workflow as running until the returned guard is dropped.
    /// Cancel safe: dropping the future leaves the queue.
    pub async fn acquire(&self) -> Result<Running, AcquireError> {
        let permit = match &self.handle {
            None => None,
            Some(semaphore) => {
                let _pending = Counted::new(&self.pending);
                Some(semaphore.acquire().await?)
            }
        };
        Ok(Running {
            _permit: permit,
            _count: Counted::new(&self.running),
        })
    }
}

/// A workflow holding its semaphore slot; dropping it frees the slot.
pub struct Running {
    // Field order: the count drops after the permit, so `running` never
    // reads lower than the semaphore's own count.
    _permit: Option<Permit>,
    _count: Counted,
}

/// One unit of a gauge, given back on drop.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Counted(Arc::clone(counter))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(limit: &str, max_pending: Option<u32>) -> Config {
        let flow = max_pending
            .map(|m| format!("      flowControl: {{maxPending: {m}}}\n"))
            .unwrap_or_default();
        let yaml = format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: workflow-semaphores}}
data: {{api-calls: "{limit}"}}
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {{name: api-consumer}}
spec:
  synchronization:
    semaphore:
      configMapKeyRef: {{name: workflow-semaphores, key: api-calls}}
  templates:
    - name: main
      container: {{command: [sh, -c, "true"]}}
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {{name: also-api}}
spec:
  synchronization:
    semaphore:
      configMapKeyRef: {{name: workflow-semaphores, key: api-calls}}
  templates:
    - name: main
      container: {{command: [sh, -c, "true"]}}
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {{name: shop}}
spec:
  webhook:
    orders: {{port: "12000", endpoint: /orders, method: POST}}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {{name: orders}}
spec:
  dependencies:
    - {{name: order, eventSourceName: shop, eventName: orders}}
  triggers:
    - template:
        name: run
        argoWorkflow:
          operation: submit
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata: {{generateName: run-}}
              spec:
                workflowTemplateRef: {{name: api-consumer}}
{flow}"#
        );
        super::super::tests::config_from(&yaml)
    }

    fn name() -> SemaphoreName {
        SemaphoreName {
            config_map: "workflow-semaphores".into(),
            key: "api-calls".into(),
        }
    }

    #[test]
    fn templates_naming_one_key_share_one_semaphore() {
        let registry = SemaphoreRegistry::build(&config("5", Some(40))).expect("build");
        let views = registry.semaphores();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].name, name());
        assert_eq!(views[0].limit, 5);
        // api-consumer's trigger says 40; also-api has no trigger.
        assert_eq!(views[0].max_pending, 40);
        let a = registry.gate("api-consumer").expect("gate");
        let b = registry.gate("also-api").expect("gate");
        let held: Vec<Running> = (0..5)
            .map(|i| {
                let gate = if i % 2 == 0 { &a } else { &b };
                futures_now(gate.acquire()).expect("free slot")
            })
            .collect();
        assert_eq!((a.running(), b.running()), (3, 2));
        assert_eq!(registry.semaphores()[0].running, 5);
        drop(held);
        assert_eq!((a.running(), b.running()), (0, 0));
    }

    #[tokio::test]
    async fn reload_shrinks_without_preempting_and_grows_at_once() {
        let registry = SemaphoreRegistry::build(&config("2", None)).expect("build");
        let gate = registry.gate("api-consumer").expect("gate");
        let first = gate.acquire().await.expect("slot");
        let second = gate.acquire().await.expect("slot");
        let (changes, problems) = registry.reload(&config("1", None));
        assert!(problems.is_empty());
        assert_eq!(
            changes,
            [LimitChange {
                name: name(),
                from: 2,
                to: 1
            }]
        );
        assert_eq!(gate.running(), 2, "shrinking kills nobody");
        let waiter = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move { gate.acquire().await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        wait_for(|| gate.pending() == 1).await;
        drop(first);
        tokio::task::yield_now().await;
        assert_eq!(gate.pending(), 1, "still one running under a limit of 1");
        let (changes, _) = registry.reload(&config("3", None));
        assert_eq!(changes.len(), 1);
        waiter.await.expect("join").expect("admitted after growing");
        drop(second);
        assert_eq!((gate.pending(), gate.running()), (0, 0));
        assert!(registry.reload(&config("3", None)).0.is_empty());
    }

    #[test]
    fn a_bad_reloaded_limit_keeps_the_old_one() {
        let registry = SemaphoreRegistry::build(&config("2", None)).expect("build");
        let mut broken = config("2", None);
        broken.config_maps[0]
            .doc
            .data
            .as_mut()
            .expect("data")
            .insert(
                "api-calls".into(),
                crate::config::Spanned::new("lots".into(), Default::default()),
            );
        let (changes, problems) = registry.reload(&broken);
        assert!(changes.is_empty());
        assert_eq!(
            problems,
            [LimitError::NotAPositiveInteger {
                name: "workflow-semaphores/api-calls".into(),
                value: "lots".into()
            }]
        );
        assert_eq!(registry.semaphores()[0].limit, 2);
    }

    /// Polls a future that must be ready at once.
    fn futures_now<F: std::future::Future>(future: F) -> F::Output {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
        {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("expected to be ready at once"),
        }
    }

    async fn wait_for(condition: impl Fn() -> bool) {
        for _ in 0..1000 {
            if condition() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never held");
    }
}
