//! Checks that need more than one document: unique names, references between
//! kinds, and values whose meaning depends on other values.
//!
//! References into a document that failed to decode are not reported (the
//! decode error already was), so one typo gives one error.

use super::diagnostic::{Diagnostic, Severity};
use super::eventsource::EventSource;
use super::flow_control::Problem;
use super::load::{DocName, Loaded};
use super::sensor::{JsonType, Sensor, Trigger, TriggerParameter, TriggerParameterSource};
use super::suggest::did_you_mean;
use super::workflow::{ConfigMap, WorkflowTemplate};
use super::yaml::Pos;
use super::{Located, Spanned};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Collects diagnostics for one file at a time.
struct Report<'a> {
    out: &'a mut Vec<Diagnostic>,
    /// [`Loaded::template_ref_positions`].
    template_ref_positions: &'a HashMap<(PathBuf, Pos), Pos>,
}

impl Report<'_> {
    fn error(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(Severity::Error, file, pos, message.into());
    }

    fn warning(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(Severity::Warning, file, pos, message.into());
    }

    fn push(&mut self, severity: Severity, file: &Path, pos: Pos, message: String) {
        self.out.push(Diagnostic {
            severity,
            file: file.to_path_buf(),
            pos,
            message,
        });
    }
}

pub(super) fn check(loaded: &mut Loaded, out: &mut Vec<Diagnostic>) {
    let template_ref_positions = std::mem::take(&mut loaded.template_ref_positions);
    let mut report = Report {
        out,
        template_ref_positions: &template_ref_positions,
    };
    unique_names(&loaded.names, &mut report);
    if loaded.bus_docs.len() > 1 {
        for bus in &loaded.bus_docs[1..] {
            let pos = bus.doc.metadata.name_pos(bus.pos);
            report.error(
                &bus.file,
                pos,
                "only one EventBus may be loaded (spillway runs one bus per process)",
            );
        }
    }
    let broken = |kind: &str, name: &str| {
        loaded
            .broken
            .iter()
            .any(|d| d.kind == kind && d.name == name)
    };
    for source in &loaded.config.event_sources {
        check_event_source(source, &mut report);
    }
    check_webhook_routes(&loaded.config.event_sources, &mut report);
    for sensor in &loaded.config.sensors {
        check_sensor(
            sensor,
            &loaded.config.event_sources,
            &loaded.config.workflow_templates,
            &broken,
            &mut report,
        );
    }
    for template in &loaded.config.workflow_templates {
        check_workflow_template(template, &loaded.config.config_maps, &broken, &mut report);
    }
}

fn unique_names(names: &[DocName], report: &mut Report<'_>) {
    let mut seen: HashMap<(&str, &str), &DocName> = HashMap::new();
    for doc in names {
        if let Some(first) = seen.get(&(doc.kind, doc.name.as_str())) {
            report.error(
                &doc.file,
                doc.pos,
                format!(
                    "duplicate {} name {:?} (first defined at {}:{})",
                    doc.kind,
                    doc.name,
                    first.file.display(),
                    first.pos
                ),
            );
        } else {
            seen.insert((doc.kind, doc.name.as_str()), doc);
        }
    }
}

fn check_event_source(source: &Located<EventSource>, report: &mut Report<'_>) {
    let file = &source.file;
    let spec = &source.doc.spec;
    let events = spec.event_names().len();
    if events == 0 {
        let pos = source.doc.metadata.name_pos(source.pos);
        report.error(
            file,
            pos,
            "this EventSource defines no events (add e.g. `webhook:`)",
        );
    }
    for (name, hook) in spec.webhook.iter().flat_map(|w| w.iter()) {
        check_event_name(file, name, report);
        match hook.port.value.trim().parse::<u16>() {
            Ok(0) | Err(_) => report.error(
                file,
                hook.port.pos,
                format!(
                    "port must be a number from 1 to 65535, found {:?}",
                    hook.port.value
                ),
            ),
            Ok(_) => {}
        }
        if !hook.endpoint.value.starts_with('/') {
            report.error(
                file,
                hook.endpoint.pos,
                format!(
                    "endpoint must start with '/', found {:?}",
                    hook.endpoint.value
                ),
            );
        }
        if let Some(method) = &hook.method {
            if http::Method::from_bytes(method.value.as_bytes()).is_err() {
                report.error(
                    file,
                    method.pos,
                    format!("invalid HTTP method {:?}", method.value),
                );
            }
        }
    }
    for (_, hook) in spec.webhook.iter().flat_map(|w| w.iter()) {
        report_problems(file, hook.problems(), report);
    }
    check_queue_sources(source, report);
    for (name, event) in spec.pubsub.iter().flat_map(|p| p.iter()) {
        check_event_name(file, name, report);
        report.warning(
            file,
            name.pos,
            "pubsub (Google Cloud) events are accepted but not run by spillway; \
             use a jetstream or amqp source for nak-based backpressure",
        );
        let _ = event;
    }
}

/// The non-webhook kinds: names, per-kind values, and one name per event
/// across kinds (the name is the bus subject).
fn check_queue_sources(source: &Located<EventSource>, report: &mut Report<'_>) {
    let file = &source.file;
    let spec = &source.doc.spec;
    fn each<T>(
        map: &Option<super::values::NamedMap<T>>,
    ) -> impl Iterator<Item = (&Spanned<String>, &T)> {
        map.iter().flat_map(|m| m.iter())
    }
    let mut problems = Vec::new();
    for (name, event) in each(&spec.amqp) {
        check_event_name(file, name, report);
        problems.extend(event.problems());
    }
    for (name, event) in each(&spec.nats) {
        check_event_name(file, name, report);
        problems.extend(event.problems());
    }
    for (name, event) in each(&spec.calendar) {
        check_event_name(file, name, report);
        problems.extend(event.problems(name.pos));
    }
    for (name, event) in each(&spec.jetstream) {
        check_event_name(file, name, report);
        problems.extend(event.problems());
    }
    for (name, event) in each(&spec.file) {
        check_event_name(file, name, report);
        problems.extend(event.problems());
    }
    report_problems(file, problems, report);
    let mut seen: HashMap<&str, Pos> = HashMap::new();
    for name in spec.event_names() {
        if let Some(first) = seen.insert(&name.value, name.pos) {
            report.error(
                file,
                name.pos,
                format!(
                    "event name {:?} is already used in this EventSource (at {first}); \
                     event names must be unique across kinds",
                    name.value
                ),
            );
        }
    }
}

fn check_event_name(file: &Path, name: &Spanned<String>, report: &mut Report<'_>) {
    if name.value.is_empty() || name.value.contains(['.', '*', '>', ' ']) {
        report.error(
            file,
            name.pos,
            format!(
                "invalid event name {:?}: it becomes part of a bus subject, so it must be \
                 non-empty without '.', '*', '>' or spaces",
                name.value
            ),
        );
    }
}

/// Two webhook events may share a port but not the same endpoint and method.
fn check_webhook_routes(sources: &[Located<EventSource>], report: &mut Report<'_>) {
    let mut seen: HashMap<(String, String, String), (String, String)> = HashMap::new();
    for source in sources {
        let source_name = source.doc.metadata.name().to_string();
        for (event, hook) in source.doc.spec.webhook.iter().flat_map(|w| w.iter()) {
            let method = hook
                .method
                .as_ref()
                .map(|m| m.value.to_ascii_uppercase())
                .unwrap_or_else(|| "POST".to_string());
            // Compare the port as a number: "012000" and 12000 are one port.
            let port = hook.port.value.trim();
            let key = (
                port.parse::<u16>()
                    .map_or_else(|_| port.to_string(), |p| p.to_string()),
                hook.endpoint.value.clone(),
                method,
            );
            if let Some((other_source, other_event)) = seen.get(&key) {
                report.error(
                    &source.file,
                    hook.endpoint.pos,
                    format!(
                        "{} {} on port {} is already served by {other_source}/{other_event}",
                        key.2, key.1, key.0
                    ),
                );
            } else {
                seen.insert(key, (source_name.clone(), event.value.clone()));
            }
        }
    }
}

fn source_name(source: &Located<EventSource>) -> &str {
    source.doc.metadata.name()
}

fn check_sensor(
    sensor: &Located<Sensor>,
    sources: &[Located<EventSource>],
    templates: &[Located<WorkflowTemplate>],
    broken: &impl Fn(&str, &str) -> bool,
    report: &mut Report<'_>,
) {
    let file = &sensor.file;
    let spec = &sensor.doc.spec;
    let sensor_pos = sensor.doc.metadata.name_pos(sensor.pos);
    if spec.dependencies.is_empty() {
        report.error(file, sensor_pos, "a Sensor needs at least one dependency");
    }
    if spec.triggers.is_empty() {
        report.error(file, sensor_pos, "a Sensor needs at least one trigger");
    }
    let mut dependency_names: HashMap<&str, Pos> = HashMap::new();
    for dep in &spec.dependencies {
        if let Some(first) = dependency_names.insert(&dep.name.value, dep.name.pos) {
            report.error(
                file,
                dep.name.pos,
                format!(
                    "duplicate dependency name {:?} (first at {first})",
                    dep.name.value
                ),
            );
        }
        let wanted = dep.event_source_name.value.as_str();
        if broken("EventSource", wanted) {
            continue;
        }
        match sources.iter().find(|s| source_name(s) == wanted) {
            None => {
                let hint = did_you_mean(wanted, sources.iter().map(source_name))
                    .map(|h| format!("; did you mean {h:?}?"))
                    .unwrap_or_else(|| {
                        if sources.is_empty() {
                            "; no EventSource is loaded (pass its file with -f)".to_string()
                        } else {
                            String::new()
                        }
                    });
                report.error(
                    file,
                    dep.event_source_name.pos,
                    format!(
                        "eventSourceName {wanted:?} does not match any loaded EventSource{hint}"
                    ),
                );
            }
            Some(source) => {
                let event = dep.event_name.value.as_str();
                let names: Vec<&str> = source
                    .doc
                    .spec
                    .event_names()
                    .into_iter()
                    .map(|n| n.value.as_str())
                    .collect();
                if !names.contains(&event) {
                    let hint = did_you_mean(event, names.iter().copied())
                        .map(|h| format!("; did you mean {h:?}?"))
                        .unwrap_or_else(|| format!("; it has: {}", names.join(", ")));
                    report.error(
                        file,
                        dep.event_name.pos,
                        format!("EventSource {wanted:?} has no event {event:?}{hint}"),
                    );
                }
            }
        }
        // Regexes, expressions, Lua, jq and timezones compile as they will
        // run. Nothing is evaluated here, so the pool never starts a thread.
        let evaluations = crate::sensor::evaluation::EvaluationPool::new(
            "validate",
            crate::sensor::evaluation::EvaluationSettings::default(),
            None,
        );
        if let Err(problems) = crate::sensor::DependencyFilter::compile(dep, &evaluations) {
            report_problems(file, problems, report);
        }
        for filter in dep.filters.iter().flat_map(|f| f.data.iter().flatten()) {
            let comparator = filter.comparator.as_ref();
            if let Some(c) = comparator.filter(|_| filter.kind.value == JsonType::Bool) {
                if c.value != super::sensor::Comparator::Equal {
                    report.warning(
                        file,
                        c.pos,
                        "Argo ignores `comparator` on bool filters: this filter passes when the value \
                         is one of `value` (list the other value instead to negate it)",
                    );
                }
            }
        }
    }
    if let Some(rate) = &spec.rate_limit {
        report_problems(file, rate.value.problems(), report);
    }
    if let Some(flow) = &spec.flow_control {
        report_problems(file, flow.value.problems(), report);
    }
    let mut trigger_names: HashMap<&str, Pos> = HashMap::new();
    for trigger in &spec.triggers {
        let name = &trigger.template.name;
        if let Some(first) = trigger_names.insert(&name.value, name.pos) {
            report.error(
                file,
                name.pos,
                format!("duplicate trigger name {:?} (first at {first})", name.value),
            );
        }
        check_trigger(file, trigger, &dependency_names, templates, broken, report);
        let names: Vec<&str> = spec
            .dependencies
            .iter()
            .map(|d| d.name.value.as_str())
            .collect();
        let (errors, warnings) = super::conditions::problems(trigger, &names);
        report_problems(file, errors, report);
        for (pos, message) in warnings {
            report.warning(file, pos, message);
        }
    }
}

fn report_problems(file: &Path, problems: Vec<Problem>, report: &mut Report<'_>) {
    for (pos, message) in problems {
        report.error(file, pos, message);
    }
}

fn check_trigger(
    file: &Path,
    trigger: &Trigger,
    dependencies: &HashMap<&str, Pos>,
    templates: &[Located<WorkflowTemplate>],
    broken: &impl Fn(&str, &str) -> bool,
    report: &mut Report<'_>,
) {
    let template = &trigger.template;
    let kinds = [
        template.http.as_ref().map(|t| t.pos),
        template.log.as_ref().map(|t| t.pos),
        template.argo_workflow.as_ref().map(|t| t.pos),
        template.k8s.as_ref().map(|t| t.pos),
        template.postgres.as_ref().map(|t| t.pos),
    ];
    let count = kinds.iter().flatten().count();
    if count == 0 {
        report.error(
            file,
            template.name.pos,
            "trigger template needs one of: http, log, argoWorkflow, k8s, postgres",
        );
    } else if count > 1 {
        report.error(
            file,
            template.name.pos,
            "trigger template has more than one of http, log, argoWorkflow, k8s, postgres; use one per trigger",
        );
    }
    if let Some(rate) = &trigger.rate_limit {
        report_problems(file, rate.value.problems(), report);
    }
    if let Some(flow) = &trigger.flow_control {
        report_problems(file, flow.value.problems(), report);
    }
    if let Some(policy) = &trigger.policy {
        if let Some(status) = &policy.value.status {
            if template.http.is_none() {
                report.warning(
                    file,
                    policy.pos,
                    "policy.status only applies to http triggers; ignored here",
                );
            }
            for code in &status.allow {
                if !(100..=599).contains(&code.value) {
                    report.error(
                        file,
                        code.pos,
                        format!("{} is not an HTTP status (100-599)", code.value),
                    );
                }
            }
        }
    }
    if let Some(dlq) = &trigger.dlq_trigger {
        if let Some(nested) = &dlq.value.dlq_trigger {
            report.error(
                file,
                nested.pos,
                "a dlqTrigger cannot have a dlqTrigger of its own",
            );
        }
        check_trigger(file, &dlq.value, dependencies, templates, broken, report);
    }
    if let Some(retry) = &trigger.retry_strategy {
        if let Some(factor) = &retry.value.factor {
            if !(factor.value >= 1.0 && factor.value.is_finite()) {
                report.error(file, factor.pos, "retryStrategy.factor must be at least 1");
            }
        }
        if let Some(jitter) = &retry.value.jitter {
            if !(0.0..=1.0).contains(&jitter.value) {
                report.error(
                    file,
                    jitter.pos,
                    "retryStrategy.jitter must be between 0 and 1",
                );
            }
        }
    }
    let mut parameters: Vec<&TriggerParameter> = trigger.parameters.iter().flatten().collect();
    // A payload parameter may have an empty `dest`: its value is the whole body.
    let mut payload: Vec<&TriggerParameter> = Vec::new();
    check_trigger_level_dests(file, trigger, report);
    if let Some(http) = &template.http {
        payload.extend(http.value.payload.iter().flatten());
        parameters.extend(http.value.parameters.iter().flatten());
        for parameter in http.value.parameters.iter().flatten() {
            // Untrimmed: the run reads `dest` as written, so " url" would
            // be valid here and set nothing there.
            let dest = parameter.dest.value.as_str();
            // An empty dest is reported once, with the other parameters'.
            if !dest.trim().is_empty() && !crate::triggers::http::is_settable(dest) {
                report.error(
                    file,
                    parameter.dest.pos,
                    format!(
                        "parameter dest {:?}: http parameters set `url`, `method` or `headers.NAME` \
                         (the parts of the request built per event)",
                        parameter.dest.value
                    ),
                );
            }
        }
        match reqwest::Url::parse(&http.value.url.value) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => report.error(
                file,
                http.value.url.pos,
                format!(
                    "url must be an absolute http:// or https:// URL, found {:?}",
                    http.value.url.value
                ),
            ),
        }
        if let Some(method) = &http.value.method {
            if http::Method::from_bytes(method.value.as_bytes()).is_err() {
                report.error(
                    file,
                    method.pos,
                    format!("invalid HTTP method {:?}", method.value),
                );
            }
        }
        if let Some(timeout) = &http.value.timeout {
            if timeout.value == 0 {
                report.error(file, timeout.pos, "timeout must be at least 1 second");
            }
        }
    }
    let mut sources: Vec<&TriggerParameterSource> = Vec::new();
    if let Some(postgres) = &template.postgres {
        report_problems(file, postgres.value.problems(postgres.pos), report);
        if let Some(first) = trigger.parameters.iter().flatten().next() {
            report.warning(
                file,
                first.src.pos,
                "trigger parameters do not apply to a postgres trigger ($1, $2 … come from postgres.parameters); ignored",
            );
        }
        sources.extend(
            postgres
                .value
                .parameters
                .iter()
                .flatten()
                .map(|p| &p.src.value),
        );
    }
    if let Some(workflow) = &template.argo_workflow {
        parameters.extend(workflow.value.parameters.iter().flatten());
        refuse_dests_into_templates(
            file,
            workflow.value.parameters.iter().flatten(),
            trigger.parameters.iter().flatten(),
            "argoWorkflow.source.resource.",
            report,
        );
        if let Some(op) = &workflow.value.operation {
            if op.value != "submit" {
                report.error(
                    file,
                    op.pos,
                    format!(
                        "argoWorkflow operation {:?} is not supported; use `submit`",
                        op.value
                    ),
                );
            }
        }
        let resource = workflow
            .value
            .source
            .as_ref()
            .and_then(|s| s.resource.as_ref());
        let loaded_elsewhere = workflow
            .value
            .source
            .as_ref()
            .is_some_and(|s| s.is_loaded_elsewhere());
        match resource {
            // A `file`, `url` or `configmap` that did not load was reported by the loader.
            None if loaded_elsewhere => {}
            None => report.error(
                file,
                workflow.pos,
                "argoWorkflow needs `source.resource` (a Workflow)",
            ),
            Some(resource) => check_workflow_resource(file, resource, templates, broken, report),
        }
    }
    if let Some(k8s) = &template.k8s {
        parameters.extend(k8s.value.parameters.iter().flatten());
        if k8s.value.resource_kind() == "Workflow" {
            refuse_dests_into_templates(
                file,
                k8s.value.parameters.iter().flatten(),
                trigger.parameters.iter().flatten(),
                "k8s.source.resource.",
                report,
            );
        }
        let source = &k8s.value.source;
        match &source.resource {
            // A `file`, `url` or `configmap` that did not load was reported by the loader.
            None if source.is_loaded_elsewhere() => {}
            None => report.error(
                file,
                k8s.pos,
                "k8s trigger needs `source.resource`, `source.file`, `source.url` or `source.configmap`",
            ),
            Some(resource) => {
                let kind = resource
                    .value
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("");
                match kind {
                    "Workflow" => {
                        if let Some(op) = &k8s.value.operation {
                            if op.value != "create" && op.value != "submit" {
                                report.error(
                                    file,
                                    op.pos,
                                    format!(
                                        "operation {:?} changes a live Kubernetes object (no Kubernetes API here); \
                                         a Workflow is run with `create` or `submit`",
                                        op.value
                                    ),
                                );
                            }
                        }
                        check_workflow_resource(file, resource, templates, broken, report)
                    }
                    "ConfigMap" => report_problems(file, k8s.value.config_map_problems(), report),
                    other => report.error(
                        file,
                        resource.pos,
                        format!(
                            "k8s trigger resource of kind {other:?} cannot run here (no Kubernetes API); \
                             supported kinds: Workflow (runs on the local executor), ConfigMap (stored for later)"
                        ),
                    ),
                }
            }
        }
    }
    for parameter in parameters {
        check_dependency_name(file, &parameter.src.value, dependencies, report);
        check_source_paths(file, &parameter.src.value, report);
        if parameter.dest.value.trim().is_empty() {
            report.error(file, parameter.dest.pos, "parameter dest must not be empty");
        }
    }
    for parameter in payload {
        check_dependency_name(file, &parameter.src.value, dependencies, report);
        check_source_paths(file, &parameter.src.value, report);
    }
    for source in sources {
        check_dependency_name(file, source, dependencies, report);
        check_source_paths(file, source, report);
    }
}

/// `dataKey` and `contextKey` are gjson paths: one spillway cannot
/// evaluate would never find anything, so it is refused here.
fn check_source_paths(file: &Path, source: &TriggerParameterSource, report: &mut Report<'_>) {
    let keys = [
        ("dataKey", &source.data_key),
        ("contextKey", &source.context_key),
    ];
    for (field, key) in keys {
        let Some(key) = key else { continue };
        if let Err(err) = crate::json_path::Path::parse(&key.value) {
            report.error(file, key.pos, format!("{field} {:?}: {err}", key.value));
        }
    }
}

/// Trigger-level `parameters` (Argo `Trigger.parameters`) have a `dest` in
/// the whole trigger template. An http trigger reads `http.url`,
/// `http.method` and `http.headers.NAME`, a workflow trigger its resource;
/// any other `dest` would be silently ignored, so it is an error. Kinds that
/// read no trigger-level parameters (log, store-for-later) get a warning
/// (postgres warns on its own).
fn check_trigger_level_dests(file: &Path, trigger: &Trigger, report: &mut Report<'_>) {
    let template = &trigger.template;
    let runs_workflow = template.argo_workflow.is_some()
        || template
            .k8s
            .as_ref()
            .is_some_and(|k| k.value.resource_kind() == "Workflow");
    for parameter in trigger.parameters.iter().flatten() {
        let dest = &parameter.dest;
        if dest.value.trim().is_empty() {
            // Reported with the other parameters' empty dests.
            continue;
        }
        if template.http.is_some() {
            let inner = dest
                .value
                .strip_prefix(crate::triggers::http::TRIGGER_LEVEL_PREFIX);
            if !inner.is_some_and(crate::triggers::http::is_settable) {
                report.error(
                    file,
                    dest.pos,
                    format!(
                        "parameter dest {:?}: trigger parameters of an http trigger set `http.url`, \
                         `http.method` or `http.headers.NAME`",
                        dest.value
                    ),
                );
            }
        } else if runs_workflow {
            let prefixes = crate::triggers::workflow::RESOURCE_PREFIXES;
            if !prefixes.iter().any(|p| dest.value.starts_with(p)) {
                report.error(
                    file,
                    dest.pos,
                    format!(
                        "parameter dest {:?}: trigger parameters of a workflow trigger must point into \
                         `{}` (or `{}`)",
                        dest.value, prefixes[0], prefixes[1]
                    ),
                );
            }
        } else if template.log.is_some() || template.k8s.is_some() {
            report.warning(
                file,
                parameter.src.pos,
                "trigger parameters do not apply to this trigger kind (only http and workflow triggers read them); ignored",
            );
            return;
        }
    }
}

/// A parameter must take its value from a dependency of its sensor.
fn check_dependency_name(
    file: &Path,
    source: &TriggerParameterSource,
    dependencies: &HashMap<&str, Pos>,
    report: &mut Report<'_>,
) {
    let dep = &source.dependency_name;
    if !dependencies.contains_key(dep.value.as_str()) {
        let hint = did_you_mean(&dep.value, dependencies.keys().copied())
            .map(|h| format!("; did you mean {h:?}?"))
            .unwrap_or_default();
        report.error(
            file,
            dep.pos,
            format!(
                "dependencyName {:?} is not a dependency of this sensor{hint}",
                dep.value
            ),
        );
    }
}

/// The program a workflow runs is built once, at start-up, from its
/// template: a per-event value written into `spec.templates` would be
/// silently ignored, so such a `dest` is an error. `own` are the trigger
/// kind's parameters (dests relative to the resource), `trigger_level` the
/// trigger's (dests under `resource_prefix`).
fn refuse_dests_into_templates<'a>(
    file: &Path,
    own: impl Iterator<Item = &'a TriggerParameter>,
    trigger_level: impl Iterator<Item = &'a TriggerParameter>,
    resource_prefix: &str,
    report: &mut Report<'_>,
) {
    let under_prefix = format!("{resource_prefix}spec.templates");
    let dests = own
        .map(|p| (&p.dest, "spec.templates"))
        .chain(trigger_level.map(|p| (&p.dest, under_prefix.as_str())))
        .filter(|(dest, prefix)| dest.value.starts_with(prefix));
    for (dest, _) in dests {
        report.error(
            file,
            dest.pos,
            format!(
                "parameter dest {:?} points into the workflow's templates, which are fixed at start-up; \
                 pass the value as a workflow argument (`spec.arguments.parameters.N.value`) and use \
                 `{{{{workflow.parameters.NAME}}}}` in the template",
                dest.value
            ),
        );
    }
}

/// A Workflow resource must name a loaded WorkflowTemplate (or carry its own templates).
fn check_workflow_resource(
    file: &Path,
    resource: &Spanned<serde_json::Value>,
    templates: &[Located<WorkflowTemplate>],
    broken: &impl Fn(&str, &str) -> bool,
    report: &mut Report<'_>,
) {
    let kind = resource.value.get("kind").and_then(|k| k.as_str());
    if kind != Some("Workflow") {
        report.error(
            file,
            resource.pos,
            format!("expected a resource of kind Workflow, found {kind:?}"),
        );
        return;
    }
    let spec = resource.value.get("spec");
    match crate::triggers::workflow::named_template(&resource.value) {
        Some(name) => {
            let names = || templates.iter().map(|t| t.doc.metadata.name());
            if !names().any(|n| n == name) && !broken("WorkflowTemplate", name) {
                let hint = did_you_mean(name, names())
                    .map(|h| format!("; did you mean {h:?}?"))
                    .unwrap_or_default();
                let pos = report
                    .template_ref_positions
                    .get(&(file.to_path_buf(), resource.pos))
                    .copied()
                    .unwrap_or(resource.pos);
                report.error(
                    file,
                    pos,
                    format!("workflowTemplateRef {name:?} does not match any loaded WorkflowTemplate{hint}"),
                );
            }
        }
        None => {
            let inline = spec.and_then(|s| s.get("templates")).is_some();
            if !inline {
                report.error(
                    file,
                    resource.pos,
                    "the Workflow needs `spec.workflowTemplateRef.name` or inline `spec.templates`",
                );
            }
        }
    }
}

fn check_workflow_template(
    template: &Located<WorkflowTemplate>,
    config_maps: &[Located<ConfigMap>],
    broken: &impl Fn(&str, &str) -> bool,
    report: &mut Report<'_>,
) {
    let file = &template.file;
    let spec = &template.doc.spec;
    let pos = template.doc.metadata.name_pos(template.pos);
    if spec.templates.is_empty() {
        report.error(file, pos, "a WorkflowTemplate needs at least one template");
    }
    for t in &spec.templates {
        match (&t.container, &t.script) {
            (None, None) => report.error(
                file,
                t.name.pos,
                "template needs `container` or `script` (what the local executor runs)",
            ),
            (Some(_), Some(_)) => report.error(
                file,
                t.name.pos,
                "template has both `container` and `script`; use one",
            ),
            (Some(c), None) => {
                if c.value.command.as_ref().is_none_or(|c| c.is_empty()) {
                    report.error(
                        file,
                        c.pos,
                        "container needs `command` (spillway runs it as a local process; the image is not pulled)",
                    );
                }
            }
            (None, Some(_)) => {}
        }
    }
    if let Some(entry) = &spec.entrypoint {
        if !spec.templates.iter().any(|t| t.name.value == entry.value) {
            report.error(
                file,
                entry.pos,
                format!("entrypoint {:?} is not one of the templates", entry.value),
            );
        }
    }
    let Some(semaphore) = spec
        .synchronization
        .as_ref()
        .and_then(|s| s.semaphore.as_ref())
    else {
        return;
    };
    let key_ref = &semaphore.config_map_key_ref.value;
    let map_name = key_ref.name.value.as_str();
    if broken("ConfigMap", map_name) {
        return;
    }
    let map = config_maps
        .iter()
        .find(|m| m.doc.metadata.name() == map_name);
    let Some(map) = map else {
        let hint = did_you_mean(map_name, config_maps.iter().map(|m| m.doc.metadata.name()))
            .map(|h| format!("; did you mean {h:?}?"))
            .unwrap_or_default();
        report.error(
            file,
            key_ref.name.pos,
            format!("configMapKeyRef names ConfigMap {map_name:?}, which is not loaded{hint}"),
        );
        return;
    };
    let key = key_ref.key.value.as_str();
    match map.doc.data.as_ref().and_then(|d| d.get(key)) {
        None => {
            let keys: Vec<&str> = map.doc.data.iter().flat_map(|d| d.keys()).map(String::as_str).collect();
            let hint = did_you_mean(key, keys.iter().copied())
                .map(|h| format!("; did you mean {h:?}?"))
                .unwrap_or_default();
            report.error(
                file,
                key_ref.key.pos,
                format!("ConfigMap {map_name:?} has no key {key:?}{hint}"),
            );
        }
        Some(value) => match value.value.trim().parse::<u32>() {
            Ok(n) if n > 0 => {}
            _ => report.error(
                &map.file,
                value.pos,
                format!(
                    "semaphore limit {key:?} must be a positive integer, found {:?} (used by WorkflowTemplate at {}:{})",
                    value.value,
                    file.display(),
                    key_ref.key.pos
                ),
            ),
        },
    }
}
