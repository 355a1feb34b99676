//! Trigger resources that live outside the Sensor: Argo's `source.file`,
//! `source.url` and `source.configmap` (an `ArtifactLocation`).
//!
//! All are read **once, while the config loads** (so at start-up, never per
//! event), and become the trigger's inline `source.resource`; from there
//! validation and the runtime see one form only. A Workflow read this way
//! that carries its own `spec.templates` is lifted into a WorkflowTemplate
//! named `<sensor>/<trigger>` like an inline one.
//!
//! Argo reads the artifact again on every trigger invocation
//! (`sensors/listener.go` calls `FetchResource` per run). spillway does
//! not: a config's meaning must not change under a running sensor, and
//! `spillway validate` must check exactly what `spillway run` will run.
//! The price of a `url` is that start-up needs the network: an unreachable
//! server fails the start (and a SIGHUP reload) with the reason, and a
//! changed document is only picked up by a restart.
//!
//! Errors name the file (and line:column inside it) that is wrong:
//! - `file`: the path is absolute or relative to the directory of the file
//!   that names it; a missing, unreadable or non-YAML file is an error at
//!   `file.path`, a bad document an error inside that file;
//! - `url: {path, verifyCert}`: fetched with [`super::fetch`] (connect and
//!   total timeouts, [`MAX_RESOURCE_FILE`] cap, 2xx only). A bad URL, an
//!   unreachable or slow server, a non-2xx status or a too-large answer is
//!   an error at `url.path`; a bad document is reported at `URL:LINE:COL`.
//!   `verifyCert` absent means *verify* (Argo's zero value skips the check:
//!   a safer default here); an explicit `verifyCert: false` is honoured with
//!   a warning;
//! - `configmap`: `{name, key}` of a ConfigMap document loaded with the
//!   config; its value is the resource as YAML. Errors inside the value are
//!   reported in the ConfigMap's file at the line they are on.
//!
//! Not done: `source.git` (a repository checkout at start-up; check the
//! file out and use `file`), `s3` and `inline`; they are config errors that
//! say so (see `k8s_only`).

use super::decode::{decode, Spanned};
use super::diagnostic::{Diagnostic, Diagnostics, Severity};
use super::fetch::{self, FetchLimits};
use super::load::{embedded_origin, first_char_at, lift_workflow_spec, shift_tree, Loaded};
use super::sensor::{ArtifactLocation, TriggerTemplate};
use super::yaml::{parse_documents, Node, Pos, Value};
use std::path::{Path, PathBuf};

/// Largest resource file read (a Workflow is a few KiB; this stops a
/// mistaken path to a huge file from being read whole).
pub const MAX_RESOURCE_FILE: u64 = 1024 * 1024;

/// A resource document read from outside the Sensor.
struct Outside {
    /// The file its positions are in.
    file: PathBuf,
    node: Node,
}

/// Turns every trigger's (and `dlqTrigger`'s) `source.file` / `source.url`
/// / `source.configmap` into `source.resource`, reporting what cannot be
/// read. URLs are fetched within `limits`.
pub(super) fn resolve_sources(loaded: &mut Loaded, limits: FetchLimits, out: &mut Vec<Diagnostic>) {
    for index in 0..loaded.config.sensors.len() {
        let triggers = loaded.config.sensors[index].doc.spec.triggers.len();
        for t in 0..triggers {
            resolve_one(loaded, index, t, false, limits, out);
            resolve_one(loaded, index, t, true, limits, out);
        }
    }
}

/// The template of trigger `t` of sensor `index`, or of its `dlqTrigger`.
fn template_mut(
    loaded: &mut Loaded,
    index: usize,
    t: usize,
    dlq: bool,
) -> Option<&mut TriggerTemplate> {
    let trigger = &mut loaded.config.sensors[index].doc.spec.triggers[t];
    if dlq {
        trigger.dlq_trigger.as_mut().map(|d| &mut d.value.template)
    } else {
        Some(&mut trigger.template)
    }
}

fn source_mut(template: &mut TriggerTemplate) -> Option<&mut ArtifactLocation> {
    match (template.argo_workflow.as_mut(), template.k8s.as_mut()) {
        (Some(w), _) => w.value.source.as_mut(),
        (None, Some(k)) => Some(&mut k.value.source),
        (None, None) => None,
    }
}

fn resolve_one(
    loaded: &mut Loaded,
    index: usize,
    t: usize,
    dlq: bool,
    limits: FetchLimits,
    out: &mut Vec<Diagnostic>,
) {
    let sensor_file = loaded.config.sensors[index].file.clone();
    let sensor_name = loaded.config.sensors[index].doc.metadata.name().to_string();
    let Some(template) = template_mut(loaded, index, t, dlq) else {
        return;
    };
    let trigger_name = template.name.value.clone();
    let Some(source) = source_mut(template).filter(|s| s.resource.is_none()) else {
        return;
    };
    let source = source.clone();
    let Some((outside, at)) = read_source(&source, &sensor_file, loaded, limits, out) else {
        return;
    };
    let diags = Diagnostics::default();
    let mut value = match decode::<serde_json::Value>(&outside.node, &diags) {
        Ok(value) => value,
        Err(err) => {
            diags.error(err.pos.unwrap_or(outside.node.pos), err.message);
            diags.drain_into(&outside.file, out);
            return;
        }
    };
    // A dlqTrigger's Workflow is refused at start-up (only http, log and
    // store-for-later run as DLQ), so only top-level ones are lifted.
    if let (Some(spec_node), false) = (outside.node.get("spec"), dlq) {
        lift_workflow_spec(
            &outside.file,
            format!("{sensor_name}/{trigger_name}"),
            &mut value,
            spec_node,
            &diags,
            &mut loaded.names,
            &mut loaded.config.workflow_templates,
        );
    }
    diags.drain_into(&outside.file, out);
    if let Some(source) = template_mut(loaded, index, t, dlq).and_then(source_mut) {
        // Positions of the resource point at `file:`/`url:`/`configmap:` in the
        // Sensor, where validation reports about it.
        source.resource = Some(Spanned::new(value, at));
    }
}

/// Reads the document `source` points to, with the position in the Sensor
/// file that names it. `None` (after reporting) when it cannot be read.
fn read_source(
    source: &ArtifactLocation,
    sensor_file: &Path,
    loaded: &Loaded,
    limits: FetchLimits,
    out: &mut Vec<Diagnostic>,
) -> Option<(Outside, Pos)> {
    let error = |out: &mut Vec<Diagnostic>, file: &Path, pos: Pos, message: String| {
        out.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            pos,
            message,
        });
    };
    if let Some(spec) = &source.url {
        let written = &spec.value.path;
        let shown = fetch::shown(&written.value);
        let verify_cert = match &spec.value.verify_cert {
            Some(verify) if !verify.value => {
                out.push(Diagnostic {
                    severity: Severity::Warning,
                    file: sensor_file.to_path_buf(),
                    pos: verify.pos,
                    message: format!(
                        "verifyCert: false: the certificate of {shown} is not checked, so anyone on the way can change the resource"
                    ),
                });
                false
            }
            _ => true,
        };
        let text = match fetch::fetch(&written.value, verify_cert, limits) {
            Ok(text) => text,
            Err(why) => {
                error(
                    out,
                    sensor_file,
                    written.pos,
                    format!("source.url {shown}: {why}"),
                );
                return None;
            }
        };
        // Positions inside the document are reported as `URL:LINE:COL`.
        let origin = PathBuf::from(shown);
        let node = one_document(&text, &origin, out)?;
        return Some((Outside { file: origin, node }, spec.pos));
    }
    if let Some(spec) = &source.file {
        let written = &spec.value.path;
        let path = sensor_file
            .parent()
            .unwrap_or(Path::new("."))
            .join(&written.value);
        let text = match read_limited(&path) {
            Ok(text) => text,
            Err(why) => {
                error(
                    out,
                    sensor_file,
                    written.pos,
                    format!("source.file {}: {why}", path.display()),
                );
                return None;
            }
        };
        let node = one_document(&text, &path, out)?;
        return Some((Outside { file: path, node }, spec.pos));
    }
    let selector = source.configmap.as_ref()?;
    let (name, key) = (&selector.value.name, &selector.value.key);
    let map = loaded
        .config
        .config_maps
        .iter()
        .find(|m| m.doc.metadata.name() == name.value);
    let Some(map) = map else {
        let decoded_badly = loaded
            .broken
            .iter()
            .any(|d| d.kind == "ConfigMap" && d.name == name.value);
        if !decoded_badly {
            error(
                out,
                sensor_file,
                name.pos,
                format!(
                    "source.configmap names ConfigMap {:?}, which is not loaded (add its document to the config files)",
                    name.value
                ),
            );
        }
        return None;
    };
    let Some(value) = map.doc.data.as_ref().and_then(|d| d.get(&key.value)) else {
        error(
            out,
            sensor_file,
            key.pos,
            format!("ConfigMap {:?} has no key {:?}", name.value, key.value),
        );
        return None;
    };
    let mut node = one_document(&value.value, &map.file, out)?;
    // Report positions where the value's lines are in the ConfigMap's file.
    if let Ok(text) = std::fs::read_to_string(&map.file) {
        let (mut lines, cols) = embedded_origin(&text, value.pos);
        let leading_blank = value.value.chars().take_while(|c| *c == '\n').count() as u32;
        if !matches!(first_char_at(&text, value.pos), Some('|') | Some('>')) {
            lines = lines.saturating_sub(leading_blank);
        }
        shift_tree(&mut node, lines, cols);
    }
    Some((
        Outside {
            file: map.file.clone(),
            node,
        },
        selector.pos,
    ))
}

/// The file's text, refusing files over [`MAX_RESOURCE_FILE`].
fn read_limited(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_RESOURCE_FILE {
        return Err(format!(
            "{size} bytes is more than a resource may be ({MAX_RESOURCE_FILE} bytes)"
        ));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// The single mapping document of `text` (from `file`).
fn one_document(text: &str, file: &Path, out: &mut Vec<Diagnostic>) -> Option<Node> {
    let report = |out: &mut Vec<Diagnostic>, pos: Pos, message: String| {
        out.push(Diagnostic {
            severity: Severity::Error,
            file: file.to_path_buf(),
            pos,
            message,
        });
    };
    let mut docs = match parse_documents(text) {
        Ok(docs) => docs,
        Err(err) => {
            report(out, err.pos, err.message);
            return None;
        }
    };
    match docs.len() {
        1 => {}
        0 => {
            report(
                out,
                Pos { line: 1, col: 1 },
                "expected a resource (one YAML or JSON document), found nothing".to_string(),
            );
            return None;
        }
        n => {
            report(
                out,
                docs[1].pos,
                format!("expected one resource document, found {n}"),
            );
            return None;
        }
    }
    let node = docs.pop()?;
    if !matches!(node.value, Value::Map(_)) {
        report(
            out,
            node.pos,
            format!(
                "expected a resource (a mapping with apiVersion, kind, metadata, spec), found {}",
                node.describe()
            ),
        );
        return None;
    }
    Some(node)
}
