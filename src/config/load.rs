//! Reads config files: YAML documents → typed kinds → [`Config`].
//!
//! Each document is dispatched on its `kind` header first and then decoded
//! into that kind's type, so an error message can name the field it is
//! about. A document that fails to decode still registers its name, so other
//! documents that reference it do not get follow-on "not found" errors.

use super::alerts::AlertRules;
use super::decode::decode;
use super::diagnostic::{Diagnostic, Diagnostics, Severity};
use super::eventbus::{Discard, EventBus, SettingsLimits, StreamConfigLimits, SyncInterval};
use super::fetch::FetchLimits;
use super::suggest::did_you_mean;
use super::yaml::{parse_documents, Node, Pos, Value};
use super::{validate, BusConfig, Config, Located};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The kinds spillway reads, with the apiVersion each must carry.
const KINDS: &[(&str, &str)] = &[
    ("EventBus", "argoproj.io/v1alpha1"),
    ("EventSource", "argoproj.io/v1alpha1"),
    ("Sensor", "argoproj.io/v1alpha1"),
    ("ConfigMap", "v1"),
    ("WorkflowTemplate", "argoproj.io/v1alpha1"),
    ("AlertRules", super::alerts::API_VERSION),
];

/// The kinds, for "expected one of" messages.
const KIND_LIST: &str = "EventBus, EventSource, Sensor, ConfigMap, WorkflowTemplate, AlertRules";

/// A document's name as written, kept even when the document failed to decode.
#[derive(Debug, Clone)]
pub(super) struct DocName {
    pub kind: &'static str,
    pub name: String,
    pub file: PathBuf,
    pub pos: Pos,
}

/// Everything read from the files, before cross-checks.
#[derive(Debug, Default)]
pub(super) struct Loaded {
    pub config: Config,
    pub bus_docs: Vec<Located<EventBus>>,
    pub alert_docs: Vec<Located<AlertRules>>,
    pub names: Vec<DocName>,
    /// Documents that failed to decode (their references are not checked).
    pub broken: Vec<DocName>,
    /// Where each Workflow resource's `spec.workflowTemplateRef.name` is
    /// written, by (file, position of the resource): resources decode to
    /// JSON, which keeps no positions, and a wrong name should be reported
    /// where it is written.
    pub template_ref_positions: HashMap<(PathBuf, Pos), Pos>,
}

/// How loading reaches beyond the files it is given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Timeouts of the `source.url` fetches.
    pub fetch: FetchLimits,
}

/// Loads and checks `files`. Returns the config and its warnings, or every
/// diagnostic (errors and warnings) when there is at least one error.
pub fn load<P: AsRef<Path>>(files: &[P]) -> Result<Config, Vec<Diagnostic>> {
    load_with(files, LoadOptions::default())
}

/// [`load`] with explicit [`LoadOptions`].
pub fn load_with<P: AsRef<Path>>(
    files: &[P],
    options: LoadOptions,
) -> Result<Config, Vec<Diagnostic>> {
    let mut loaded = Loaded::default();
    let mut diagnostics = Vec::new();
    for file in files {
        let file = file.as_ref();
        match std::fs::read_to_string(file) {
            Ok(text) => load_text(file, &text, &mut loaded, &mut diagnostics),
            Err(err) => diagnostics.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                pos: Pos { line: 1, col: 1 },
                message: format!("cannot read file: {err}"),
            }),
        }
    }
    super::artifact::resolve_sources(&mut loaded, options.fetch, &mut diagnostics);
    validate::check(&mut loaded, &mut diagnostics);
    diagnostics.sort_by(|a, b| (&a.file, a.pos).cmp(&(&b.file, b.pos)));
    if diagnostics.iter().any(|d| d.severity == Severity::Error) {
        return Err(diagnostics);
    }
    let mut config = loaded.config;
    config.warnings = diagnostics;
    Ok(config)
}

/// Loads the documents of one file's `text`.
pub(super) fn load_text(file: &Path, text: &str, loaded: &mut Loaded, out: &mut Vec<Diagnostic>) {
    let docs = match parse_documents(text) {
        Ok(docs) => docs,
        Err(err) => {
            out.push(Diagnostic {
                severity: Severity::Error,
                file: file.to_path_buf(),
                pos: err.pos,
                message: err.message,
            });
            return;
        }
    };
    let diags = Diagnostics::default();
    for doc in &docs {
        load_document(file, text, doc, loaded, &diags);
    }
    diags.drain_into(file, out);
}

fn load_document(file: &Path, text: &str, doc: &Node, loaded: &mut Loaded, diags: &Diagnostics) {
    if !matches!(doc.value, Value::Map(_)) {
        diags.error(
            doc.pos,
            format!(
                "expected a Kubernetes-style document (apiVersion, kind, metadata, spec), found {}",
                doc.describe()
            ),
        );
        return;
    }
    let Some(kind_node) = doc.get("kind") else {
        diags.error(
            doc.pos,
            format!("missing `kind`; expected one of {KIND_LIST}"),
        );
        return;
    };
    let kind_text = kind_node.as_str().unwrap_or_default();
    let Some(&(kind, api_version)) = KINDS.iter().find(|(k, _)| *k == kind_text) else {
        let hint = did_you_mean(kind_text, KINDS.iter().map(|(k, _)| *k))
            .map(|h| format!("did you mean `{h}`?"))
            .unwrap_or_else(|| format!("expected one of {KIND_LIST}"));
        diags.error(
            kind_node.pos,
            format!("unsupported kind {}; {hint}", kind_node.describe()),
        );
        return;
    };
    match doc.get("apiVersion") {
        Some(node) if node.as_str() == Some(api_version) => {}
        Some(node) => diags.error(
            node.pos,
            format!(
                "apiVersion of {} {kind} must be {api_version:?}, found {}",
                article(kind),
                node.describe()
            ),
        ),
        None => diags.error(doc.pos, format!("missing `apiVersion` ({api_version:?})")),
    }
    let name_node = doc.get("metadata").and_then(|m| m.get("name"));
    let name = match name_node.and_then(Node::as_str) {
        Some(name) if is_valid_name(name) => Some(DocName {
            kind,
            name: name.to_string(),
            file: file.to_path_buf(),
            pos: name_node.map(|n| n.pos).unwrap_or(doc.pos),
        }),
        Some(name) => {
            diags.error(
                name_node.map(|n| n.pos).unwrap_or(doc.pos),
                format!(
                    "invalid name {name:?}: use lowercase letters, digits, '-' and '.', \
                     starting and ending with a letter or digit (at most 253 characters)"
                ),
            );
            None
        }
        None => {
            diags.error(
                doc.get("metadata").map(|m| m.pos).unwrap_or(doc.pos),
                format!("{} {kind} needs `metadata.name`", article(kind)),
            );
            None
        }
    };
    let errors_before = diags.error_count();
    let ok = match kind {
        "EventBus" => decode_document(file, doc, diags, &mut loaded.bus_docs),
        "EventSource" => decode_document(file, doc, diags, &mut loaded.config.event_sources),
        "Sensor" => decode_document(file, doc, diags, &mut loaded.config.sensors),
        "ConfigMap" => decode_document(file, doc, diags, &mut loaded.config.config_maps),
        "AlertRules" => decode_document(file, doc, diags, &mut loaded.alert_docs),
        _ => decode_document(file, doc, diags, &mut loaded.config.workflow_templates),
    };
    if kind == "EventBus" && ok {
        let stream = bus_limits(text, doc, diags);
        if let (Some(stream), Some(last)) = (stream, loaded.bus_docs.last()) {
            let url = last
                .doc
                .spec
                .jetstream
                .as_ref()
                .and_then(|j| j.url.as_ref())
                .map(|u| u.value.clone());
            if let (None, Some(pos)) = (&url, stream.replicas_pos) {
                diags.warning(
                    pos,
                    "`replicas` applies to a JetStream cluster (`jetstream.url`); the embedded bus \
                     is one machine and ignores it",
                );
            }
            if let Some(pos) = stream.sync_pos {
                sync_warning(url.is_some(), stream.sync, pos, diags);
            }
            loaded.config.bus = BusConfig {
                name: name.as_ref().map(|n| n.name.clone()).unwrap_or_default(),
                url,
                limits: stream.limits,
                replicas: stream.replicas,
                sync: stream.sync,
            };
        }
    }
    if kind == "AlertRules" && ok {
        if let Some(doc) = loaded.alert_docs.last() {
            if loaded.alert_docs.len() > 1 {
                diags.error(
                    doc.doc.metadata.name_pos(doc.pos),
                    "only one AlertRules document may be loaded; merge the rules into one",
                );
            }
            match doc.doc.spec.resolve() {
                Ok(alerting) => loaded.config.alerting = alerting,
                Err(problems) => {
                    for (pos, message) in problems {
                        diags.error(pos, message);
                    }
                }
            }
        }
    }
    if kind == "Sensor" && ok {
        record_template_refs(file, doc, &mut loaded.template_ref_positions);
        lift_inline_workflows(file, doc, diags, loaded);
    }
    if let Some(name) = name {
        if ok && diags.error_count() == errors_before {
            loaded.names.push(name);
        } else {
            loaded.broken.push(name.clone());
            loaded.names.push(name);
        }
    }
}

/// Decodes `doc` as a `T` and appends it to `into`; a decode error becomes
/// a diagnostic. Returns whether it decoded.
fn decode_document<T: serde::de::DeserializeOwned>(
    file: &Path,
    doc: &Node,
    diags: &Diagnostics,
    into: &mut Vec<Located<T>>,
) -> bool {
    match decode::<T>(doc, diags) {
        Ok(value) => {
            into.push(Located {
                file: file.to_path_buf(),
                pos: doc.pos,
                doc: value,
            });
            true
        }
        Err(err) => {
            diags.error(err.pos.unwrap_or(doc.pos), err.message);
            false
        }
    }
}

/// Records where every `resource:` under `node` (triggers, DLQ triggers)
/// names its WorkflowTemplate.
fn record_template_refs(file: &Path, node: &Node, into: &mut HashMap<(PathBuf, Pos), Pos>) {
    match &node.value {
        Value::Map(entries) => {
            for (key, value) in entries {
                if key.as_str() == Some("resource") {
                    let name = value
                        .get("spec")
                        .and_then(|s| s.get("workflowTemplateRef"))
                        .and_then(|r| r.get("name"));
                    if let Some(name) = name {
                        into.insert((file.to_path_buf(), value.pos), name.pos);
                    }
                }
                record_template_refs(file, value, into);
            }
        }
        Value::Seq(items) => {
            for item in items {
                record_template_refs(file, item, into);
            }
        }
        _ => {}
    }
}

/// Argo lets a trigger's Workflow (`argoWorkflow`, or `k8s` creating a
/// Workflow) carry its own `spec.templates` instead of naming a
/// WorkflowTemplate. Each such inline spec of the sensor just
/// decoded becomes a WorkflowTemplate named `<sensor>/<trigger>` (no
/// document can take that name: `/` is not allowed in names), decoded from
/// this file with its positions, and the Workflow is made to name it. From
/// there validation, semaphores, the executor and the metrics treat both
/// forms alike.
fn lift_inline_workflows(file: &Path, doc: &Node, diags: &Diagnostics, loaded: &mut Loaded) {
    let Some(sensor) = loaded.config.sensors.last_mut() else {
        return;
    };
    let sensor_name = sensor.doc.metadata.name().to_string();
    let trigger_nodes = doc.get("spec").and_then(|s| s.get("triggers"));
    let Some(Value::Seq(trigger_nodes)) = trigger_nodes.map(|t| &t.value) else {
        return;
    };
    for (trigger, node) in sensor.doc.spec.triggers.iter_mut().zip(trigger_nodes) {
        let template = &mut trigger.template;
        let (resource, key) = if let Some(workflow) = template.argo_workflow.as_mut() {
            let resource = workflow
                .value
                .source
                .as_mut()
                .and_then(|s| s.resource.as_mut());
            (resource, "argoWorkflow")
        } else if let Some(k8s) = template.k8s.as_mut() {
            (k8s.value.source.resource.as_mut(), "k8s")
        } else {
            continue;
        };
        let Some(resource) = resource else {
            continue;
        };
        let spec_node = node
            .get("template")
            .and_then(|t| t.get(key))
            .and_then(|w| w.get("source"))
            .and_then(|s| s.get("resource"))
            .and_then(|r| r.get("spec"));
        let Some(spec_node) = spec_node else {
            continue;
        };
        let name = format!("{sensor_name}/{}", template.name.value);
        lift_workflow_spec(
            file,
            name,
            &mut resource.value,
            spec_node,
            diags,
            &mut loaded.names,
            &mut loaded.config.workflow_templates,
        );
    }
}

/// Lifts the inline `spec.templates` of the Workflow `resource` (whose
/// spec is `spec_node`, in `file`) into a WorkflowTemplate called `name`
/// and makes the Workflow name it. A `k8s` resource of another kind, or a
/// Workflow that already names a template, is left alone.
pub(super) fn lift_workflow_spec(
    file: &Path,
    name: String,
    resource: &mut serde_json::Value,
    spec_node: &Node,
    diags: &Diagnostics,
    names: &mut Vec<DocName>,
    templates: &mut Vec<Located<super::workflow::WorkflowTemplate>>,
) {
    let kind = resource.get("kind").and_then(|k| k.as_str());
    if kind.is_some_and(|k| k != "Workflow") {
        return;
    }
    let Some(spec) = resource.get_mut("spec") else {
        return;
    };
    if spec.get("workflowTemplateRef").is_some() || spec.get("templates").is_none() {
        return;
    }
    let decoded = match decode::<super::workflow::WorkflowSpec>(spec_node, diags) {
        Ok(decoded) => decoded,
        Err(err) => {
            diags.error(err.pos.unwrap_or(spec_node.pos), err.message);
            return;
        }
    };
    spec["workflowTemplateRef"] = serde_json::json!({ "name": name });
    names.push(DocName {
        kind: "WorkflowTemplate",
        name: name.clone(),
        file: file.to_path_buf(),
        pos: spec_node.pos,
    });
    templates.push(Located {
        file: file.to_path_buf(),
        pos: spec_node.pos,
        doc: super::workflow::WorkflowTemplate {
            api_version: "argoproj.io/v1alpha1".to_string(),
            kind: "WorkflowTemplate".to_string(),
            metadata: super::values::ObjectMeta {
                name: Some(super::decode::Spanned::new(name, spec_node.pos)),
                ..Default::default()
            },
            spec: decoded,
        },
    });
}

/// Kubernetes object names: DNS subdomain rules (lowercase alphanumerics,
/// `-` and `.`), which also keeps them safe in bus subjects and file names.
fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// The stream an EventBus document asks for.
struct StreamSettings {
    limits: spillway_bus::Limits,
    replicas: usize,
    /// Where `replicas` was set, if it was.
    replicas_pos: Option<Pos>,
    sync: spillway_bus::segment::SyncPolicy,
    /// Where `sync_interval` was set, if it was.
    sync_pos: Option<Pos>,
}

/// What a `sync_interval` other than `always` risks, or that a JetStream
/// server ignores it (its own `jetstream { sync_interval }` decides).
fn sync_warning(
    jetstream: bool,
    sync: spillway_bus::segment::SyncPolicy,
    pos: Pos,
    diags: &Diagnostics,
) {
    use spillway_bus::segment::SyncPolicy;
    if jetstream {
        diags.warning(
            pos,
            "`sync_interval` applies to the embedded bus; a JetStream server syncs as its own \
             `jetstream { sync_interval }` says",
        );
        return;
    }
    match sync {
        SyncPolicy::Always => {}
        SyncPolicy::Interval(d) => diags.warning(
            pos,
            format!(
                "producers are answered before their events are on disk: an OS crash or power \
                 loss can lose up to {} of accepted events (a process crash loses none)",
                humantime::format_duration(d)
            ),
        ),
        SyncPolicy::Never => diags.warning(
            pos,
            "producers are answered before their events are on disk and the OS decides when \
             to write them: an OS crash or power loss can lose accepted events (a process \
             crash loses none)",
        ),
    }
}

/// Most replicas JetStream allows for a stream.
const MAX_REPLICAS: i64 = 5;

/// Resolves `spec.jetstream.settings` and `streamConfig` into bus limits.
/// `None` when they contain errors (already reported).
fn bus_limits(text: &str, doc: &Node, diags: &Diagnostics) -> Option<StreamSettings> {
    let jetstream = doc.get("spec").and_then(|s| s.get("jetstream"));
    let mut stream = StreamSettings {
        limits: spillway_bus::Limits::default(),
        replicas: 1,
        replicas_pos: None,
        sync: spillway_bus::segment::SyncPolicy::Always,
        sync_pos: None,
    };
    let mut ok = true;
    let mut set_by: Vec<(&'static str, Pos)> = Vec::new();
    let mut note = |field: &'static str, pos: Pos, diags: &Diagnostics| {
        if let Some((_, first)) = set_by.iter().find(|(f, _)| *f == field) {
            diags.error(
                pos,
                format!("`{field}` is set twice (first at {first}); keep one"),
            );
        }
        set_by.push((field, pos));
    };
    if let Some(node) = jetstream.and_then(|j| j.get("settings")) {
        match embedded::<SettingsLimits>(text, node, diags) {
            Some(s) => {
                let max_msg_size = match (s.max_msg_size, s.max_payload) {
                    (Some(a), Some(b)) => {
                        diags.error(
                            b.pos,
                            format!(
                                "`max_payload` and `max_msg_size` (at {}) mean the same; keep one",
                                a.pos
                            ),
                        );
                        Some(a)
                    }
                    (a, b) => a.or(b),
                };
                apply(
                    &mut stream,
                    LimitFields {
                        max_msgs: s.max_msgs,
                        max_bytes: s.max_bytes,
                        max_msg_size,
                        max_consumers: s.max_consumers,
                        max_age: s.max_age,
                        discard: s.discard,
                        replicas: s.replicas,
                        sync_interval: s.sync_interval,
                    },
                    diags,
                    &mut note,
                );
            }
            None => ok = false,
        }
    }
    if let Some(node) = jetstream.and_then(|j| j.get("streamConfig")) {
        match embedded::<StreamConfigLimits>(text, node, diags) {
            Some(s) => apply(
                &mut stream,
                LimitFields {
                    max_msgs: s.max_msgs,
                    max_bytes: s.max_bytes,
                    max_msg_size: s.max_msg_size,
                    max_consumers: s.max_consumers,
                    max_age: s.max_age,
                    discard: s.discard,
                    replicas: s.replicas,
                    sync_interval: s.sync_interval,
                },
                diags,
                &mut note,
            ),
            None => ok = false,
        }
    }
    if let Some(node) = jetstream.and_then(|j| j.get("maxPayload")) {
        if let Ok(size) = decode::<super::values::ByteSize>(node, diags) {
            note("max_msg_size", node.pos, diags);
            stream.limits.max_msg_size = Some(size.0);
        }
    }
    ok.then_some(stream)
}

struct LimitFields {
    max_msgs: Option<super::Spanned<i64>>,
    max_bytes: Option<super::Spanned<super::values::ByteSize>>,
    max_msg_size: Option<super::Spanned<super::values::ByteSize>>,
    max_consumers: Option<super::Spanned<i64>>,
    max_age: Option<super::Spanned<super::values::GoDuration>>,
    discard: Option<super::Spanned<Discard>>,
    replicas: Option<super::Spanned<i64>>,
    sync_interval: Option<super::Spanned<SyncInterval>>,
}

fn apply(
    stream: &mut StreamSettings,
    fields: LimitFields,
    diags: &Diagnostics,
    note: &mut impl FnMut(&'static str, Pos, &Diagnostics),
) {
    let limits = &mut stream.limits;
    let positive = |name: &'static str, v: &super::Spanned<i64>| -> Option<u64> {
        if v.value > 0 {
            Some(v.value as u64)
        } else {
            diags.error(
                v.pos,
                format!("`{name}` must be a positive integer, found {}", v.value),
            );
            None
        }
    };
    if let Some(v) = fields.max_msgs {
        note("max_msgs", v.pos, diags);
        limits.max_msgs = positive("max_msgs", &v).or(limits.max_msgs);
    }
    if let Some(v) = fields.max_consumers {
        note("max_consumers", v.pos, diags);
        limits.max_consumers = positive("max_consumers", &v).or(limits.max_consumers);
    }
    if let Some(v) = fields.max_bytes {
        note("max_bytes", v.pos, diags);
        limits.max_bytes = Some(v.value.0);
    }
    if let Some(v) = fields.max_msg_size {
        note("max_msg_size", v.pos, diags);
        limits.max_msg_size = Some(v.value.0);
    }
    if let Some(v) = fields.max_age {
        note("max_age", v.pos, diags);
        limits.max_age = (!v.value.0.is_zero()).then_some(v.value.0);
    }
    if let Some(v) = fields.replicas {
        note("replicas", v.pos, diags);
        if (1..=MAX_REPLICAS).contains(&v.value) {
            stream.replicas = v.value as usize;
            stream.replicas_pos = Some(v.pos);
        } else {
            diags.error(
                v.pos,
                format!(
                    "`replicas` must be between 1 and {MAX_REPLICAS} (JetStream's limit), found {}",
                    v.value
                ),
            );
        }
    }
    if let Some(v) = fields.sync_interval {
        note("sync_interval", v.pos, diags);
        stream.sync_pos = Some(v.pos);
        stream.sync = match v.value {
            SyncInterval::Always => spillway_bus::segment::SyncPolicy::Always,
            SyncInterval::Every(d) => spillway_bus::segment::SyncPolicy::Interval(d),
            SyncInterval::Never => spillway_bus::segment::SyncPolicy::Never,
        };
    }
    if let Some(v) = fields.discard {
        note("discard", v.pos, diags);
        limits.discard = match v.value {
            Discard::New => spillway_bus::DiscardPolicy::New,
            Discard::Old => {
                diags.warning(
                    v.pos,
                    "`discard: old` deletes the oldest events when the bus is full, even unprocessed \
                     ones; each is counted in spillway_bus_discarded_total",
                );
                spillway_bus::DiscardPolicy::Old
            }
        };
    }
}

/// Decodes YAML that is embedded in a string (or written as a mapping),
/// reporting positions in the outer file.
fn embedded<T: for<'a> Deserialize<'a>>(text: &str, node: &Node, diags: &Diagnostics) -> Option<T> {
    let inner = match &node.value {
        Value::Str(s) => {
            let (mut line_shift, col_shift) = embedded_origin(text, node.pos);
            // serde-saphyr places a block scalar at its first non-blank
            // line; blank lines before it are still lines of the string.
            let leading_blank_lines = s.chars().take_while(|c| *c == '\n').count() as u32;
            if !matches!(first_char_at(text, node.pos), Some('|') | Some('>')) {
                line_shift = line_shift.saturating_sub(leading_blank_lines);
            }
            let mut docs = match parse_documents(s) {
                Ok(docs) => docs,
                Err(err) => {
                    diags.error(shift_pos(err.pos, line_shift, col_shift), err.message);
                    return None;
                }
            };
            if docs.len() > 1 {
                diags.error(node.pos, "expected one YAML document in this string");
                return None;
            }
            let mut inner = docs.pop().unwrap_or(Node::new(node.pos, Value::Null));
            shift_tree(&mut inner, line_shift, col_shift);
            inner
        }
        _ => node.clone(),
    };
    match decode::<T>(&inner, diags) {
        Ok(value) => Some(value),
        Err(err) => {
            diags.error(err.pos.unwrap_or(node.pos), err.message);
            None
        }
    }
}

/// Where line 1, column 1 of a string value's content sits in the file, as
/// (lines to add, columns to add). Block scalars (`|`, `>`) start on the next
/// line at its indentation; quoted and plain scalars start at the value.
pub(super) fn embedded_origin(text: &str, pos: Pos) -> (u32, u32) {
    let line_index = pos.line.saturating_sub(1) as usize;
    let line = text.lines().nth(line_index).unwrap_or("");
    let rest: String = line
        .chars()
        .skip(pos.col.saturating_sub(1) as usize)
        .collect();
    match rest.chars().next() {
        Some('|') | Some('>') => {
            let next = text.lines().nth(line_index + 1).unwrap_or("");
            let indent = next.chars().take_while(|c| *c == ' ').count() as u32;
            (pos.line, indent)
        }
        Some('"') | Some('\'') => (pos.line.saturating_sub(1), pos.col),
        _ => (pos.line.saturating_sub(1), pos.col.saturating_sub(1)),
    }
}

/// The character of `text` at `pos`.
pub(super) fn first_char_at(text: &str, pos: Pos) -> Option<char> {
    let line = text.lines().nth(pos.line.saturating_sub(1) as usize)?;
    line.chars().nth(pos.col.saturating_sub(1) as usize)
}

fn shift_pos(pos: Pos, lines: u32, cols: u32) -> Pos {
    Pos {
        line: pos.line + lines,
        col: pos.col + cols,
    }
}

pub(super) fn shift_tree(node: &mut Node, lines: u32, cols: u32) {
    node.pos = shift_pos(node.pos, lines, cols);
    match &mut node.value {
        Value::Seq(items) => items.iter_mut().for_each(|n| shift_tree(n, lines, cols)),
        Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
            shift_tree(k, lines, cols);
            shift_tree(v, lines, cols);
        }),
        _ => {}
    }
}

/// "a" or "an" before a kind name.
fn article(kind: &str) -> &'static str {
    if kind.starts_with(['A', 'E', 'I', 'O', 'U']) {
        "an"
    } else {
        "a"
    }
}
