//! Invalid configs: each case is written to its own file, loaded with
//! `spillway::config::load`, and must report exactly the expected
//! diagnostics, each at its exact `LINE:COL` with a telling message.
//!
//! The YAML of each case is written flush-left after a leading newline,
//! which [`write_yaml`] drops, so line 1 is the first line of the document.

use spillway::config::{self, Config, Diagnostic, Severity};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use tempfile::NamedTempFile;

/// One expected diagnostic.
#[derive(Debug)]
struct Want {
    severity: Severity,
    line: u32,
    col: u32,
    /// Substrings the message must contain.
    text: &'static [&'static str],
}

fn error(line: u32, col: u32, text: &'static [&'static str]) -> Want {
    Want {
        severity: Severity::Error,
        line,
        col,
        text,
    }
}

fn warning(line: u32, col: u32, text: &'static [&'static str]) -> Want {
    Want {
        severity: Severity::Warning,
        line,
        col,
        text,
    }
}

/// Writes `yaml` (without its leading newline) to a new `.yaml` file.
fn write_yaml(yaml: &str) -> NamedTempFile {
    let mut file = tempfile::Builder::new()
        .prefix("spillway-config-")
        .suffix(".yaml")
        .tempfile()
        .expect("create temp file");
    file.write_all(yaml.strip_prefix('\n').unwrap_or(yaml).as_bytes())
        .expect("write temp file");
    file.flush().expect("flush temp file");
    file
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("  {d}\n"))
        .collect::<String>()
}

/// `diagnostics` (sorted by position, as `load` returns them) must be exactly
/// `want`, in order, all in `file`.
fn assert_diagnostics(file: &Path, diagnostics: &[Diagnostic], want: &[Want]) {
    let matches = |d: &Diagnostic, w: &Want| {
        d.file == file
            && d.severity == w.severity
            && d.pos.line == w.line
            && d.pos.col == w.col
            && w.text.iter().all(|t| d.message.contains(t))
    };
    let ok =
        diagnostics.len() == want.len() && diagnostics.iter().zip(want).all(|(d, w)| matches(d, w));
    assert!(
        ok,
        "diagnostics differ\nwanted:\n{}got:\n{}",
        want.iter()
            .map(|w| format!("  {:?} {}:{} {:?}\n", w.severity, w.line, w.col, w.text))
            .collect::<String>(),
        render(diagnostics)
    );
}

/// Loading `yaml` must fail with exactly the diagnostics in `want`.
fn expect_errors(yaml: &str, want: &[Want]) {
    let file = write_yaml(yaml);
    match config::load(&[file.path()]) {
        Ok(config) => panic!(
            "expected errors, but the config loaded: {}\nwarnings:\n{}",
            config.summary(),
            render(&config.warnings)
        ),
        Err(diagnostics) => assert_diagnostics(file.path(), &diagnostics, want),
    }
}

/// Loading `yaml` must succeed with exactly the warnings in `want`.
fn expect_ok(yaml: &str, want: &[Want]) -> Config {
    let file = write_yaml(yaml);
    match config::load(&[file.path()]) {
        Ok(config) => {
            assert_diagnostics(file.path(), &config.warnings, want);
            config
        }
        Err(diagnostics) => panic!(
            "expected the config to load, got:\n{}",
            render(&diagnostics)
        ),
    }
}

// ---------------------------------------------------------------- YAML syntax

#[test]
fn bad_yaml_unclosed_flow_sequence() {
    expect_errors(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: limits
data:
  keys: [a, b
"#,
        &[error(6, 9, &["invalid YAML", "unclosed bracket"])],
    );
}

#[test]
fn duplicate_yaml_key() {
    expect_errors(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: limits
  name: other
"#,
        &[error(5, 3, &["invalid YAML", "duplicate"])],
    );
}

// ----------------------------------------------------------- document headers

#[test]
fn unsupported_kind_workflow() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata:
  name: run-once
spec: {}
"#,
        &[error(2, 7, &["unsupported kind", "\"Workflow\""])],
    );
}

#[test]
fn misspelt_kind_suggests_sensor() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Sensr
metadata:
  name: orders
spec: {}
"#,
        &[error(
            2,
            7,
            &["unsupported kind", "\"Sensr\"", "did you mean `Sensor`?"],
        )],
    );
}

#[test]
fn wrong_api_version() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1beta1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
"#,
        &[error(
            1,
            13,
            &[
                "apiVersion of an EventSource must be \"argoproj.io/v1alpha1\"",
                "v1beta1",
            ],
        )],
    );
}

#[test]
fn missing_metadata_name() {
    expect_errors(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  labels:
    app: shop
data:
  api-calls: "5"
"#,
        &[
            error(4, 3, &["a ConfigMap needs `metadata.name`"]),
            warning(4, 3, &["`labels` only has a meaning on Kubernetes"]),
        ],
    );
}

// ------------------------------------------------------------- unknown fields

#[test]
fn unknown_field_with_did_you_mean() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceNme: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[
            error(17, 7, &["missing required field `eventSourceName`"]),
            error(
                18,
                7,
                &[
                    "unknown field `eventSourceNme`",
                    "did you mean `eventSourceName`?",
                ],
            ),
        ],
    );
}

#[test]
fn unknown_field_lists_expected_fields() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
      colour: blue
"#,
        &[error(
            10,
            7,
            &[
                "unknown field `colour`",
                "expected one of: authSecret, endpoint, flowControl, maxPayloadSize, metadata, method, port, url",
            ],
        )],
    );
}

#[test]
fn kubernetes_only_fields_are_warnings() {
    let config = expect_ok(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
  namespace: argo-events
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  template:
    serviceAccountName: operate-workflow-sa
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: job
spec:
  serviceAccountName: workflow-runner
  templates:
    - name: main
      container:
        image: alpine:3.20
        command: [sh, -c, "true"]
"#,
        &[
            warning(
                5,
                3,
                &["field `namespace` only has a meaning on Kubernetes"],
            ),
            warning(
                17,
                3,
                &["field `template` only has a meaning on Kubernetes"],
            ),
            warning(
                33,
                3,
                &["field `serviceAccountName` only has a meaning on Kubernetes"],
            ),
        ],
    );
    assert_eq!(config.event_sources.len(), 1);
    assert_eq!(config.sensors.len(), 1);
    assert_eq!(config.workflow_templates.len(), 1);
}

#[test]
fn unsupported_argo_field_says_not_supported() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: call
        http:
          url: http://127.0.0.1:9/x
          secureHeaders:
            - name: token
"#,
        &[error(
            25,
            11,
            &[
                "`secureHeaders` is not supported",
                "secureHeaders read Kubernetes secrets",
            ],
        )],
    );
}

// -------------------------------------------------------------- EventSources

#[test]
fn webhook_port_out_of_range() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "99999"
      endpoint: /orders
"#,
        &[error(
            8,
            13,
            &["port must be a number from 1 to 65535", "\"99999\""],
        )],
    );
}

#[test]
fn webhook_same_port_endpoint_and_method() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
    orders-again:
      port: 12000
      endpoint: /orders
      method: post
"#,
        &[error(
            12,
            17,
            &["POST /orders on port 12000 is already served by shop/orders"],
        )],
    );
}

// ------------------------------------------------------------------- Sensors

#[test]
fn dependency_on_missing_event_source_suggests_near_name() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: orders
spec:
  webhook:
    created:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: backlog
spec:
  dependencies:
    - name: order
      eventSourceName: order
      eventName: created
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[error(
            18,
            24,
            &[
                "eventSourceName \"order\" does not match any loaded EventSource",
                "did you mean \"orders\"?",
            ],
        )],
    );
}

#[test]
fn dependency_on_missing_event_name() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: orders
spec:
  webhook:
    created:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: backlog
spec:
  dependencies:
    - name: order
      eventSourceName: orders
      eventName: shipped
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[error(
            19,
            18,
            &[
                "EventSource \"orders\" has no event \"shipped\"",
                "it has: created",
            ],
        )],
    );
}

#[test]
fn bad_rate_limit_unit() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: source
spec:
  webhook:
    event:
      port: "12000"
      endpoint: /event
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: rate-limited
spec:
  rateLimit:
    requestsPerUnit: 10
    unit: fortnight
  dependencies:
    - name: e
      eventSourceName: source
      eventName: event
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[error(
            18,
            11,
            &[
                "unknown unit \"fortnight\"",
                "expected one of Second, Minute, Hour",
            ],
        )],
    );
}

#[test]
fn duplicate_sensor_names() {
    let yaml = r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
"#;
    let file = write_yaml(yaml);
    let diagnostics = config::load(&[file.path()]).expect_err("duplicate names must fail");
    assert_diagnostics(
        file.path(),
        &diagnostics,
        &[error(28, 9, &["duplicate Sensor name \"orders\""])],
    );
    let first = format!("(first defined at {}:14:9)", file.path().display());
    assert!(
        diagnostics[0].message.contains(&first),
        "message should point at the first Sensor {first}:\n{}",
        render(&diagnostics)
    );
}

#[test]
fn http_trigger_url_must_be_absolute() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: notify
        http:
          url: /notifications
"#,
        &[error(
            24,
            16,
            &[
                "url must be an absolute http:// or https:// URL",
                "\"/notifications\"",
            ],
        )],
    );
}

/// Shared by the two argoWorkflow cases: the trigger names `api-consumr`
/// (line 28, column 25) but only `api-consumer` is loaded.
const MISSING_WORKFLOW_TEMPLATE: &str = r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: source
spec:
  webhook:
    event:
      port: "12000"
      endpoint: /event
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: rate-limited
spec:
  dependencies:
    - name: e
      eventSourceName: source
      eventName: event
  triggers:
    - template:
        name: process
        argoWorkflow:
          operation: submit
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata:
                generateName: process-
              spec:
                workflowTemplateRef:
                  name: api-consumr
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  templates:
    - name: main
      container:
        command: [sh, -c, "true"]
"#;

#[test]
fn argo_workflow_trigger_names_missing_workflow_template() {
    let file = write_yaml(MISSING_WORKFLOW_TEMPLATE);
    let diagnostics = config::load(&[file.path()]).expect_err("missing template must fail");
    let errors: Vec<&Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert!(
        errors.len() == 1
            && errors[0].message.contains(
                "workflowTemplateRef \"api-consumr\" does not match any loaded WorkflowTemplate; \
                 did you mean \"api-consumer\"?"
            ),
        "got:\n{}",
        render(&diagnostics)
    );
}

#[test]
fn argo_workflow_missing_template_points_at_the_name() {
    expect_errors(
        MISSING_WORKFLOW_TEMPLATE,
        &[error(
            33,
            25,
            &["workflowTemplateRef \"api-consumr\" does not match any loaded WorkflowTemplate"],
        )],
    );
}

// ------------------------------------------- ConfigMaps and WorkflowTemplates

#[test]
fn semaphore_value_not_a_number() {
    expect_errors(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: workflow-semaphores
data:
  api-calls: "abc"
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  synchronization:
    semaphore:
      configMapKeyRef:
        name: workflow-semaphores
        key: api-calls
  templates:
    - name: main
      container:
        command: [sh, -c, "true"]
"#,
        &[error(
            6,
            14,
            &["semaphore limit \"api-calls\" must be a positive integer, found \"abc\""],
        )],
    );
}

#[test]
fn semaphore_key_missing_from_config_map() {
    expect_errors(
        r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: workflow-semaphores
data:
  api-calls: "5"
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  synchronization:
    semaphore:
      configMapKeyRef:
        name: workflow-semaphores
        key: api-call
  templates:
    - name: main
      container:
        command: [sh, -c, "true"]
"#,
        &[error(
            17,
            14,
            &[
                "ConfigMap \"workflow-semaphores\" has no key \"api-call\"",
                "did you mean \"api-calls\"?",
            ],
        )],
    );
}

#[test]
fn semaphore_config_map_not_loaded() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  synchronization:
    semaphore:
      configMapKeyRef:
        name: workflow-semaphores
        key: api-calls
  templates:
    - name: main
      container:
        command: [sh, -c, "true"]
"#,
        &[error(
            9,
            15,
            &["configMapKeyRef names ConfigMap \"workflow-semaphores\", which is not loaded"],
        )],
    );
}

// ------------------------------------------------------------------ EventBus

#[test]
fn negative_max_msgs_inside_settings_block() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      max_bytes: 1GiB
      max_msgs: -5
      max_consumers: 100
"#,
        &[error(
            9,
            17,
            &["`max_msgs` must be a positive integer, found -5"],
        )],
    );
}

#[test]
fn unknown_key_inside_settings_block() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      max_msgs: 1000
      max_msg_sz: 1MiB
"#,
        &[error(
            9,
            7,
            &["unknown field `max_msg_sz`", "did you mean `max_msg_size`?"],
        )],
    );
}

#[test]
fn stream_config_bad_discard() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    streamConfig: |
      maxMsgs: 1000
      discard: sideways
"#,
        &[error(
            9,
            16,
            &[
                "unknown discard policy \"sideways\"",
                "expected one of new, old",
            ],
        )],
    );
}

#[test]
fn stream_replicas_out_of_range_and_ignored_by_the_embedded_bus() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    streamConfig: |
      replicas: 7
"#,
        &[error(
            8,
            17,
            &["`replicas` must be between 1 and 5", "found 7"],
        )],
    );
    let config = expect_ok(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |
      replicas: 3
"#,
        &[warning(
            8,
            17,
            &["`replicas` applies to a JetStream cluster"],
        )],
    );
    assert_eq!(config.bus.replicas, 3);
}

#[test]
fn sync_interval_sets_the_embedded_bus_policy_and_says_what_it_risks() {
    use spillway_bus::segment::SyncPolicy;
    use std::time::Duration;
    let bus = |body: &str| {
        format!(
            "apiVersion: argoproj.io/v1alpha1\nkind: EventBus\nmetadata:\n  name: default\nspec:\n  jetstream:\n{body}"
        )
    };
    let config = expect_ok(&bus("    settings: |\n      max_msgs: 10\n"), &[]);
    assert_eq!(config.bus.sync, SyncPolicy::Always);
    let config = expect_ok(
        &bus("    settings: |\n      sync_interval: 100ms\n"),
        &[warning(
            8,
            22,
            &["an OS crash or power loss can lose up to 100ms"],
        )],
    );
    assert_eq!(
        config.bus.sync,
        SyncPolicy::Interval(Duration::from_millis(100))
    );
    let config = expect_ok(
        &bus("    streamConfig: |\n      syncInterval: never\n"),
        &[warning(8, 21, &["the OS decides when to write them"])],
    );
    assert_eq!(config.bus.sync, SyncPolicy::Never);
    let config = expect_ok(&bus("    settings: |\n      sync_interval: always\n"), &[]);
    assert_eq!(config.bus.sync, SyncPolicy::Always);
    expect_ok(
        &bus("    url: nats://127.0.0.1:4222\n    settings: |\n      sync_interval: 1s\n"),
        &[warning(9, 22, &["applies to the embedded bus"])],
    );
    expect_errors(
        &bus("    settings: |\n      sync_interval: sometimes\n"),
        &[error(
            8,
            22,
            &[
                "invalid sync_interval \"sometimes\"",
                "`always`, `never` or a duration",
            ],
        )],
    );
    expect_errors(
        &bus("    settings: |\n      sync_interval: 0s\n"),
        &[error(8, 22, &["above zero"])],
    );
    expect_errors(
        &bus("    settings: |\n      sync_interval: always\n    streamConfig: |\n      syncInterval: never\n"),
        &[
            error(10, 21, &["`sync_interval` is set twice"]),
            warning(10, 21, &["the OS decides when to write them"]),
        ],
    );
}

// ---------------------------------------------------- several errors, one run

#[test]
fn three_independent_errors_in_one_file() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
      methd: POST
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: warehouse
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: workflow-semaphores
data:
  api-calls: "0"
---
apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata:
  name: api-consumer
spec:
  synchronization:
    semaphore:
      configMapKeyRef:
        name: workflow-semaphores
        key: api-calls
  templates:
    - name: main
      container:
        command: [sh, -c, "true"]
"#,
        &[
            error(10, 7, &["unknown field `methd`", "did you mean `method`?"]),
            error(
                19,
                24,
                &["eventSourceName \"warehouse\" does not match any loaded EventSource"],
            ),
            error(
                31,
                14,
                &["semaphore limit \"api-calls\" must be a positive integer, found \"0\""],
            ),
        ],
    );
}

// -------------------------------------------------------------------- the CLI

#[test]
fn validate_exits_2_and_prints_file_line_col() {
    let file = write_yaml(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "99999"
      endpoint: /orders
"#,
    );
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .arg("validate")
        .arg("-f")
        .arg(file.path())
        .output()
        .expect("run spillway validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let located = format!("{}:8:13: ", file.path().display());
    assert!(
        stderr.contains(&format!("{located}port must be a number from 1 to 65535")),
        "stderr should contain `{located}port must be …`\nstderr:\n{stderr}"
    );
}

// ----------------------------------------------- known loader bugs (ignored)

#[test]
fn settings_block_with_leading_blank_line() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec:
  jetstream:
    settings: |

      max_msgs: -5
"#,
        &[error(
            9,
            17,
            &["`max_msgs` must be a positive integer, found -5"],
        )],
    );
}

#[test]
fn webhook_same_port_written_differently() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
    orders-again:
      port: "012000"
      endpoint: /orders
"#,
        &[error(
            12,
            17,
            &["/orders on port", "is already served by shop/orders"],
        )],
    );
}

#[test]
fn retry_factor_below_one_points_at_factor() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
      retryStrategy:
        steps: 3
        factor: 0.5
"#,
        &[error(26, 17, &["retryStrategy.factor must be at least 1"])],
    );
}

/// gjson paths spillway cannot evaluate are refused at load, each at the
/// path it is in (data filter `path`, `exprs` field `path`, `dataKey`),
/// never left to silently find nothing.
#[test]
fn unsupported_gjson_paths_are_refused_where_they_are_written() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      filters:
        data:
          - path: body.items.@pretty
            type: string
            value: [x]
          - path: 'body.items.#(sku=="a".price'
            type: number
            value: ["1"]
          - path: body.items.#(sku=="a").price
            type: number
            value: ["1"]
        exprs:
          - expr: n > 1
            fields: [{name: n, path: "!true"}]
  triggers:
    - template:
        name: call
        http:
          url: http://127.0.0.1:9/x
          payload:
            - src: {dependencyName: order, dataKey: body..id}
              dest: id
            - src: {dependencyName: order, dataKey: 'body.metadata\.name'}
              dest: name
"#,
        &[
            error(
                22,
                19,
                &[
                    "filter path \"body.items.@pretty\"",
                    "@pretty is not supported",
                    "at character 12",
                ],
            ),
            error(25, 19, &["'(' is never closed by ')'", "at character 13"]),
            error(33, 38, &["field path \"!true\"", "JSON literals"]),
            error(
                40,
                53,
                &["dataKey \"body..id\"", "empty key (at character 6"],
            ),
        ],
    );
}

/// Argo ignores `comparator` on bool filters; spillway does the same (Argo
/// configs give Argo results) and says so.
#[test]
fn a_comparator_on_a_bool_filter_is_a_warning() {
    expect_ok(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      filters:
        data:
          - {path: body.paid, type: bool, value: ["true"], comparator: "!="}
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[warning(
            22,
            72,
            &["Argo ignores `comparator` on bool filters"],
        )],
    );
}

#[test]
fn number_filter_points_at_the_bad_value() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      filters:
        data:
          - path: body.total
            type: number
            value:
              - "10"
              - ten
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[error(
            26,
            17,
            &["\"ten\" is not a number, but the filter type is number"],
        )],
    );
}

#[test]
fn filters_and_transforms_that_do_not_compile_point_at_their_values() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
      transform:
        jq: ".body |"
      filters:
        time: {start: "09:00", stop: "7pm", timezone: Mars/Olympus}
        data:
          - {path: body.kind, type: string, value: ["(order"]}
        exprs:
          - expr: total =~ "1"
            fields: [{name: total, path: body.total}]
        script: "return ("
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[
            error(21, 13, &["jq program", "does not parse"]),
            error(23, 38, &["\"7pm\" is not a time of day"]),
            error(23, 55, &["unknown timezone \"Mars/Olympus\""]),
            error(25, 53, &["\"(order\" is not a valid regular expression"]),
            error(27, 19, &["the govaluate operator \"=~\" is not supported"]),
            error(29, 17, &["Lua filter script does not compile"]),
        ],
    );
}

#[test]
fn missing_api_version_is_one_error() {
    expect_errors(
        r#"
kind: ConfigMap
metadata:
  name: limits
"#,
        &[error(1, 1, &["missing `apiVersion`"])],
    );
}

#[test]
fn no_diagnostic_at_line_zero() {
    let file = write_yaml(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata:
  name: default
spec: {}
---
apiVersion: argoproj.io/v1alpha1
kind: EventBus
metadata: {}
spec: {}
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata: {}
spec: {}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata: {}
spec:
  dependencies: []
  triggers: []
"#,
    );
    let diagnostics = config::load(&[file.path()]).expect_err("must fail");
    // (message, first and last line of the document it is about)
    let wanted = [
        ("only one EventBus may be loaded", 7, 10),
        ("an EventBus needs `metadata.name`", 9, 9),
        ("this EventSource defines no events", 12, 15),
        ("an EventSource needs `metadata.name`", 14, 14),
        ("a Sensor needs `metadata.name`", 19, 19),
        ("a Sensor needs at least one dependency", 17, 22),
        ("a Sensor needs at least one trigger", 17, 22),
    ];
    let ok = diagnostics.len() == wanted.len()
        && wanted.iter().all(|(text, first, last)| {
            diagnostics.iter().any(|d| {
                d.message.contains(text) && (*first..=*last).contains(&d.pos.line) && d.pos.col >= 1
            })
        });
    assert!(ok, "got:\n{}", render(&diagnostics));
}

// ------------------------------------------------ store for later (issue 7)

#[test]
fn store_for_later_configmap_must_be_the_backlog_one() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: backlog
spec:
  dependencies:
    - name: order
      eventSourceName: orders
      eventName: created
  triggers:
    - template:
        name: store-for-later
        k8s:
          operation: update
          source:
            resource:
              apiVersion: v1
              kind: ConfigMap
              metadata:
                name: fixed
              data:
                event: ""
          parameters:
            - src: {dependencyName: order, dataKey: body}
              dest: data.event
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: orders
spec:
  webhook:
    created:
      port: "12000"
      endpoint: /orders
      method: POST
"#,
        &[
            error(14, 22, &["operation \"update\"", "use `create`"]),
            error(17, 15, &["generateName: backlog-"]),
            error(17, 15, &["remove `metadata.name`"]),
            error(24, 20, &["parameters are not supported", "data.event"]),
        ],
    );
}

/// An inline Workflow `spec.templates` is checked like a WorkflowTemplate,
/// with positions in the Sensor's file: a template with nothing to run
/// (line 25) and a semaphore naming a ConfigMap that is not loaded (line 22).
#[test]
fn inline_workflow_spec_is_checked_with_its_positions() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: e
      eventSourceName: source
      eventName: event
  triggers:
    - template:
        name: process
        argoWorkflow:
          operation: submit
          source:
            resource:
              kind: Workflow
              spec:
                synchronization:
                  semaphore:
                    configMapKeyRef:
                      name: limits
                      key: workers
                templates:
                  - name: work
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: source
spec:
  webhook:
    event:
      port: "12000"
      endpoint: /event
"#,
        &[
            error(
                22,
                29,
                &["configMapKeyRef names ConfigMap \"limits\", which is not loaded"],
            ),
            error(25, 27, &["template needs `container` or `script`"]),
        ],
    );
}

#[test]
fn priority_takes_exactly_one_of_header_and_path() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
      flowControl:
        priority: {header: X-Priority, path: body.priority}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  flowControl:
    priority: {default: 3}
    shedding: {queueDepthAbove: 100, shedPriorityAbove: 2}
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: by-path
spec:
  flowControl:
    priority: {path: body..priority}
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[
            error(11, 46, &["one of `header` or `path`, not both"]),
            error(19, 15, &["priority needs `header`", "or `path`"]),
            error(36, 22, &["priority path \"body..priority\" is not a usable gjson path: empty key (at character 6"]),
        ],
    );
}

/// Review finding: per-event values written into a workflow's templates
/// would be ignored (the program is fixed at start-up), and an autoscale
/// `max` above the window bound would allow that many invocations at once.
#[test]
fn workflow_template_dests_and_huge_autoscale_max_are_refused() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: e
      eventSourceName: source
      eventName: event
  triggers:
    - template:
        name: process
        argoWorkflow:
          operation: submit
          source:
            resource:
              kind: Workflow
              spec:
                templates:
                  - name: work
                    script: {command: [sh], source: "true"}
          parameters:
            - src: {dependencyName: e, dataKey: body.x}
              dest: spec.templates.0.script.source
      flowControl:
        autoscale: {max: 200000, lagThreshold: 10}
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: source
spec:
  webhook:
    event:
      port: "12000"
      endpoint: /event
"#,
        &[
            error(24, 21, &["points into the workflow's templates"]),
            error(26, 26, &["autoscale max must be at most 100000"]),
        ],
    );
}

// ------------------------------------------------------------ postgres trigger

#[test]
fn postgres_trigger_settings_are_checked_at_their_positions() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: store
        postgres:
          url: postgres://postgres@127.0.0.1:5432/test
          urlSecret:
            name: pg
            key: url
          statement: "  "
          parameters:
            - src:
                dependencyName: ordr
                dataKey: body.id
          poolSize: 0
          timeout: 0s
          ledgerTable: Bad-Name
    - template:
        name: nowhere
        postgres:
          url: "host=/tmp port=notaport"
          statement: SELECT 1
"#,
        &[
            error(26, 13, &["one of `url` and `urlSecret`, not both"]),
            error(28, 22, &["statement must not be empty"]),
            error(
                31,
                33,
                &["dependencyName \"ordr\"", "did you mean \"order\""],
            ),
            error(33, 21, &["poolSize must be between 1 and 64"]),
            error(34, 20, &["timeout must be more than 0"]),
            error(
                35,
                24,
                &["ledgerTable \"Bad-Name\"", "lowercase table name"],
            ),
            error(39, 16, &["invalid postgres url"]),
        ],
    );
}

#[test]
fn postgres_trigger_needs_a_url() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: store
        postgres:
          statement: SELECT 1
"#,
        &[error(24, 11, &["postgres needs `url`", "or `urlSecret`"])],
    );
}

#[test]
fn trigger_parameters_on_a_postgres_trigger_are_a_warning() {
    expect_ok(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: store
        postgres:
          url: postgres://postgres@127.0.0.1:5432/test
          statement: INSERT INTO orders (id) VALUES ($1)
          parameters:
            - src:
                dependencyName: order
                dataKey: body.id
      parameters:
        - src:
            dependencyName: order
            dataKey: body.id
          dest: id
"#,
        &[warning(
            32,
            13,
            &["do not apply to a postgres trigger", "postgres.parameters"],
        )],
    );
}

/// A postgres trigger whose `conditions` can run it without the event a
/// parameter reads would write NULL there: a warning per such dependency,
/// at its first parameter without a default. `&&` (or no `conditions`)
/// requires every event, and a default `value` fills the gap: no warning.
#[test]
fn postgres_parameters_of_dependencies_conditions_do_not_require_warn() {
    let sensor = |conditions: &str| {
        format!(
            r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders: {{port: "12000", endpoint: /orders}}
    payments: {{port: "12000", endpoint: /payments}}
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  dependencies:
    - {{name: order, eventSourceName: shop, eventName: orders}}
    - {{name: payment, eventSourceName: shop, eventName: payments}}
  triggers:
    - template:
        name: store
{conditions}        postgres:
          url: postgres://postgres@127.0.0.1:5432/test
          statement: INSERT INTO paid (id, amount, note) VALUES ($1, $2, $3)
          parameters:
            - src: {{dependencyName: order, dataKey: body.id}}
            - src: {{dependencyName: payment, dataKey: body.amount}}
            - src: {{dependencyName: payment, dataKey: body.note, value: none}}
"#
        )
    };
    expect_ok(
        &sensor("        conditions: \"order || payment\"\n"),
        &[
            warning(
                26,
                20,
                &[
                    "conditions \"order || payment\"",
                    "without an event of \"order\"",
                    "$1",
                    "NULL",
                ],
            ),
            warning(27, 20, &["without an event of \"payment\"", "$2"]),
        ],
    );
    expect_ok(&sensor("        conditions: \"order && payment\"\n"), &[]);
    expect_ok(&sensor(""), &[]);
}

/// The same refusal for a `k8s` trigger whose resource is a Workflow.
#[test]
fn k8s_workflow_template_dests_are_refused() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: s
spec:
  dependencies:
    - name: e
      eventSourceName: source
      eventName: event
  triggers:
    - template:
        name: process
        k8s:
          operation: create
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              spec:
                templates:
                  - name: work
                    script: {command: [sh], source: "true"}
          parameters:
            - src: {dependencyName: e, dataKey: body.x}
              dest: spec.templates.0.script.source
---
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: source
spec:
  webhook:
    event:
      port: "12000"
      endpoint: /event
"#,
        &[error(25, 21, &["points into the workflow's templates"])],
    );
}

#[test]
fn evaluation_settings_out_of_range_point_at_each_value() {
    expect_errors(
        r#"
apiVersion: argoproj.io/v1alpha1
kind: EventSource
metadata:
  name: shop
spec:
  webhook:
    orders:
      port: "12000"
      endpoint: /orders
---
apiVersion: argoproj.io/v1alpha1
kind: Sensor
metadata:
  name: orders
spec:
  flowControl:
    evaluation:
      timeout: 0s
      threads: 0
      maxQueued: 0
      maxAbandoned: 65
      maxThreads: 2
  dependencies:
    - name: order
      eventSourceName: shop
      eventName: orders
  triggers:
    - template:
        name: log
        log: {}
"#,
        &[
            error(18, 16, &["evaluation timeout must be longer than 0s"]),
            error(19, 16, &["evaluation threads must be between 1 and 64"]),
            error(20, 18, &["maxQueued must be between 1 and 100000"]),
            error(21, 21, &["maxAbandoned must be at most 64"]),
            error(
                22,
                7,
                &["unknown field `maxThreads`", "did you mean `threads`"],
            ),
        ],
    );
}
