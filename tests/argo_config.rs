//! Config errors and warnings of Argo `k8s` triggers, trigger parameters
//! and resources kept outside the Sensor (`source.file`,
//! `source.configmap`): each at its exact `FILE:LINE:COL`.

use spillway::config::{self, Diagnostic, Severity};
use std::path::{Path, PathBuf};

/// A webhook source and a one-dependency sensor whose `triggers:` list is
/// `triggers` (indented by 4). Line 14 is the first line of `triggers`.
fn sensor(triggers: &str) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
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
  dependencies: [{{name: order, eventSourceName: shop, eventName: orders}}]
  triggers:
{triggers}"#
    )
}

/// Writes `text` as `name` in `dir` and loads it.
fn load(dir: &Path, name: &str, text: &str) -> (PathBuf, Result<config::Config, Vec<Diagnostic>>) {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    let result = config::load(std::slice::from_ref(&file));
    (file, result)
}

/// The diagnostics as `FILE:LINE:COL: severity: message` lines.
fn render(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(|d| d.to_string()).collect()
}

/// Loading `triggers` must fail with exactly one error per `want` entry
/// `(file, line, col, substrings)`, in order.
fn expect_errors(dir: &Path, text: &str, want: &[(Option<&Path>, u32, u32, &[&str])]) {
    let (file, result) = load(dir, "sensor.yaml", text);
    let diagnostics = match result {
        Ok(_) => panic!("expected errors, the config loaded"),
        Err(diagnostics) => diagnostics,
    };
    let errors: Vec<&Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let ok = errors.len() == want.len()
        && errors
            .iter()
            .zip(want)
            .all(|(d, (in_file, line, col, text))| {
                d.file == in_file.unwrap_or(&file)
                    && d.pos.line == *line
                    && d.pos.col == *col
                    && text.iter().all(|t| d.message.contains(t))
            });
    assert!(ok, "wanted {want:?}\ngot:\n{:#?}", render(&diagnostics));
}

#[test]
fn k8s_resource_kinds_and_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    expect_errors(
        dir.path(),
        &sensor(
            r#"    - template:
        name: update
        k8s:
          operation: update
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              spec: {templates: [{name: main, container: {command: [ls]}}]}
    - template:
        name: deploy
        k8s:
          source:
            resource: {apiVersion: apps/v1, kind: Deployment, metadata: {name: web}}
    - template:
        name: nothing
        k8s:
          operation: create
          source: {}
"#,
        ),
        &[
            (
                None,
                17,
                22,
                &[
                    "operation \"update\"",
                    "no Kubernetes API",
                    "`create` or `submit`",
                ],
            ),
            (
                None,
                27,
                23,
                &[
                    "kind \"Deployment\"",
                    "no Kubernetes API",
                    "Workflow",
                    "ConfigMap",
                ],
            ),
            (
                None,
                31,
                11,
                &["k8s trigger needs `source.resource`, `source.file` or `source.configmap`"],
            ),
        ],
    );
}

#[test]
fn git_and_url_sources_say_why_they_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (source, line_col, text) in [
        (
            r#"git: {url: "https://example.invalid/repo.git", filePath: wf.yaml}"#,
            (18, 13),
            &["git", "`file`"][..],
        ),
        (
            r#"url: {path: "https://example.invalid/wf.yaml", verifyCert: true}"#,
            (18, 13),
            &["fetched at start-up", "use `file`"][..],
        ),
    ] {
        expect_errors(
            dir.path(),
            &sensor(&format!(
                "    - template:\n        name: remote\n        k8s:\n          source:\n            {source}\n"
            )),
            &[
                // The source it has is not one spillway reads, so it has none.
                (None, 17, 11, &["k8s trigger needs `source.resource`"]),
                (None, line_col.0, line_col.1, text),
            ],
        );
    }
}

#[test]
fn parameter_templates_and_operations_are_checked_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trigger = |parameter: &str| {
        sensor(&format!(
            r#"    - template:
        name: log
        log: {{}}
      parameters:
        - {parameter}
"#
        ))
    };
    expect_errors(
        dir.path(),
        &trigger(
            r#"{src: {dependencyName: order, dataTemplate: "{{ .Input.body | nosuch }}"}, dest: x}"#,
        ),
        &[(None, 18, 55, &["invalid Go template", "nosuch"])],
    );
    expect_errors(
        dir.path(),
        &trigger(r#"{src: {dependencyName: order, contextTemplate: "{{ .Input.id "}, dest: x}"#),
        &[(None, 18, 58, &["invalid Go template", "unclosed action"])],
    );
    expect_errors(
        dir.path(),
        &trigger(r#"{src: {dependencyName: order, dataKey: a}, dest: x, operation: merge}"#),
        &[(None, 18, 74, &["merge", "overwrite", "append", "prepend"])],
    );
}

#[test]
fn file_sources_report_the_path_and_errors_inside_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file_trigger = |path: &str| {
        sensor(&format!(
            "    - template:\n        name: from-file\n        k8s:\n          source:\n            file: {{path: {path}}}\n"
        ))
    };
    expect_errors(
        dir.path(),
        &file_trigger("no/such/workflow.yaml"),
        &[(None, 18, 26, &["source.file", "no/such/workflow.yaml"])],
    );
    // A relative path is relative to the config file; an error inside the
    // resource is reported in the resource's own file.
    let resource = dir.path().join("wf.yaml");
    std::fs::write(
        &resource,
        "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nspec:\n  templates:\n    - name: main\n      contianer: {command: [ls]}\n",
    )
    .expect("write resource");
    expect_errors(
        dir.path(),
        &file_trigger("wf.yaml"),
        &[
            // The template without its misspelt `container` is checked too.
            (Some(&resource), 5, 13, &["needs `container` or `script`"]),
            (
                Some(&resource),
                6,
                7,
                &["contianer", "did you mean `container`"],
            ),
        ],
    );
    std::fs::write(&resource, "kind: Workflow\n---\nkind: Workflow\n").expect("write resource");
    expect_errors(
        dir.path(),
        &file_trigger("wf.yaml"),
        &[(Some(&resource), 3, 1, &["one resource document, found 2"])],
    );
}

#[test]
fn configmap_sources_name_the_map_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with_map = |name: &str, key: &str| {
        format!(
            r#"{}---
apiVersion: v1
kind: ConfigMap
metadata: {{name: workflows}}
data:
  wf: |
    apiVersion: argoproj.io/v1alpha1
    kind: Workflow
    spec:
      templates:
        - name: main
          container: {{command: [ls], imagePullPolicy: Always}}
          bogus: 1
"#,
            sensor(&format!(
                "    - template:\n        name: from-map\n        k8s:\n          source:\n            configmap: {{name: {name}, key: {key}}}\n"
            ))
        )
    };
    expect_errors(
        dir.path(),
        &with_map("workflowz", "wf"),
        &[(None, 18, 31, &["ConfigMap \"workflowz\"", "not loaded"])],
    );
    expect_errors(
        dir.path(),
        &with_map("workflows", "nope"),
        &[(None, 18, 47, &["has no key \"nope\""])],
    );
    // Errors inside the value are at their line in the ConfigMap's file.
    expect_errors(
        dir.path(),
        &with_map("workflows", "wf"),
        &[(None, 31, 11, &["bogus"])],
    );
}

#[test]
fn kubernetes_only_fields_warn_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {name: shop, labels: {team: a}}
spec:
  replicas: 2
  service: {ports: [{port: 12000, targetPort: 12000}]}
  template: {serviceAccountName: sa}
  webhook:
    orders: {port: "12000", endpoint: /orders, method: POST}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {name: orders}
spec:
  template: {serviceAccountName: operate-workflow-sa}
  replicas: 1
  dependencies: [{name: order, eventSourceName: shop, eventName: orders}]
  triggers:
    - template:
        name: run
        k8s:
          operation: create
          patchStrategy: application/merge-patch+json
          liveObject: false
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata: {generateName: run-}
              spec:
                serviceAccountName: operate-workflow-sa
                templates: [{name: main, container: {command: [ls]}}]
"#;
    let (_, result) = load(dir.path(), "sensor.yaml", text);
    let config = result.unwrap_or_else(|d| panic!("loads: {:#?}", render(&d)));
    let warnings: Vec<(u32, u32)> = config
        .warnings
        .iter()
        .map(|w| (w.pos.line, w.pos.col))
        .collect();
    assert_eq!(
        warnings,
        [
            (3, 24),
            (5, 3),
            (6, 3),
            (7, 3),
            (15, 3),
            (16, 3),
            (23, 11),
            (24, 11),
            (31, 17)
        ],
        "{:#?}",
        render(&config.warnings)
    );
    assert!(config
        .warnings
        .iter()
        .all(|w| w.severity == Severity::Warning
            && w.message.contains("only has a meaning on Kubernetes")));
}

#[test]
fn a_dlq_trigger_may_keep_its_resource_in_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("backlog.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: backlog-}\n",
    )
    .expect("write resource");
    let text = sensor(
        r#"    - template:
        name: log
        log: {}
      dlqTrigger:
        template:
          name: keep
          k8s:
            operation: create
            source: {file: {path: backlog.yaml}}
"#,
    );
    let (_, result) = load(dir.path(), "sensor.yaml", &text);
    let config = result.unwrap_or_else(|d| panic!("loads: {:#?}", render(&d)));
    let dlq = &config.sensors[0].doc.spec.triggers[0]
        .dlq_trigger
        .as_ref()
        .expect("dlqTrigger")
        .value;
    let k8s = &dlq.template.k8s.as_ref().expect("k8s").value;
    assert_eq!(k8s.resource_kind(), "ConfigMap");
}

/// http triggers read parameters into `url`, `method` and `headers.NAME`
/// (`http.` before them for trigger-level ones); any other `dest` would be
/// ignored, so it is an error at its position. A payload parameter may
/// have an empty `dest` (its value is the whole body, as in Argo).
#[test]
fn http_parameter_dests_are_checked_at_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    expect_errors(
        dir.path(),
        &sensor(
            r#"    - template:
        name: call
        http:
          url: http://127.0.0.1:1/hook
          parameters:
            - {src: {dependencyName: order, dataKey: body.url}, dest: url}
            - {src: {dependencyName: order, value: PUT}, dest: method}
            - {src: {dependencyName: order, contextKey: id}, dest: headers.X-Event-Id}
            - {src: {dependencyName: order, value: "9"}, dest: timeout}
            - {src: {dependencyName: order, value: x}, dest: "headers.bad header"}
          payload:
            - {src: {dependencyName: order, dataKey: body, useRawData: true}, dest: ""}
      parameters:
        - {src: {dependencyName: order, dataKey: body.path}, dest: http.url, operation: append}
        - {src: {dependencyName: order, value: x}, dest: url}
        - {src: {dependencyName: order, value: x}, dest: http.payload.0.dest}
"#,
        ),
        &[
            (
                None,
                22,
                64,
                &["dest \"timeout\"", "`url`, `method` or `headers.NAME`"],
            ),
            (None, 23, 62, &["dest \"headers.bad header\""]),
            (
                None,
                28,
                58,
                &["dest \"url\"", "`http.url`", "`http.headers.NAME`"],
            ),
            (None, 29, 58, &["dest \"http.payload.0.dest\""]),
        ],
    );
    // The same parameters with settable dests load.
    let (_, loaded) = load(
        dir.path(),
        "ok.yaml",
        &sensor(
            r#"    - template:
        name: call
        http:
          url: http://127.0.0.1:1/hook
          parameters:
            - {src: {dependencyName: order, contextKey: id}, dest: headers.X-Event-Id}
      parameters:
        - {src: {dependencyName: order, dataKey: body.path}, dest: http.url, operation: append}
"#,
        ),
    );
    if let Err(diagnostics) = loaded {
        panic!("expected to load:\n{:#?}", render(&diagnostics));
    }
}

/// A workflow trigger reads trigger-level parameters into its resource
/// only; a `dest` elsewhere is refused at load, not when the sensor starts.
#[test]
fn workflow_trigger_level_dests_must_point_into_the_resource() {
    let dir = tempfile::tempdir().expect("tempdir");
    expect_errors(
        dir.path(),
        &sensor(
            r#"    - template:
        name: run
        argoWorkflow:
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              spec: {templates: [{name: main, container: {command: ["true"]}}]}
      parameters:
        - {src: {dependencyName: order, dataKey: body.id}, dest: argoWorkflow.source.resource.metadata.name}
        - {src: {dependencyName: order, dataKey: body.id}, dest: spec.arguments.parameters.0.value}
"#,
        ),
        &[(
            None,
            24,
            66,
            &[
                "dest \"spec.arguments.parameters.0.value\"",
                "`argoWorkflow.source.resource.`",
            ],
        )],
    );
}
