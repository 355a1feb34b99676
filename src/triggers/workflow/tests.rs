//! The argoWorkflow trigger on real child processes: parameters, rendering,
//! exit codes and deadlines.

use super::semaphores::WorkflowGate;
use super::*;
use crate::config::Config;

/// Loads `yaml` as one config file.
pub(super) fn config_from(yaml: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, yaml).expect("write config");
    match crate::config::load(&[file]) {
        Ok(config) => config,
        Err(diagnostics) => panic!("invalid test config: {diagnostics:?}"),
    }
}

/// A pipeline whose trigger `run` submits a Workflow of `template` (a
/// WorkflowTemplate document body under `spec:`), with `extra` lines under
/// `argoWorkflow:`.
fn pipeline(template_spec: &str, extra: &str) -> Config {
    config_from(&format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: WorkflowTemplate
metadata: {{name: job}}
spec:
{template_spec}
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
              metadata: {{generateName: job-}}
              spec:
                workflowTemplateRef: {{name: job}}
                arguments:
                  parameters:
                    - name: order
{extra}"#
    ))
}

fn build(config: &Config) -> WorkflowTrigger {
    let trigger = &config.sensors[0].doc.spec.triggers[0];
    let workflow = &trigger
        .template
        .argo_workflow
        .as_ref()
        .expect("argoWorkflow")
        .value;
    WorkflowTrigger::new(
        trigger,
        workflow,
        &config.workflow_templates,
        WorkflowGate::unlimited("job"),
    )
    .expect("build trigger")
}

fn event(body: &str) -> Event {
    Event::new(
        "shop",
        "webhook",
        "orders",
        bytes::Bytes::from(body.to_string()),
    )
}

const PARAMETER: &str = r#"          parameters:
            - src: {dependencyName: order, dataKey: id}
              dest: spec.arguments.parameters.0.value
"#;

#[tokio::test]
async fn parameters_reach_args_inputs_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = pipeline(
        &format!(
            r#"  arguments:
    parameters:
      - name: greeting
        value: hello
  templates:
    - name: main
      inputs:
        parameters:
          - name: order
      container:
        image: alpine:3.20
        command: [sh, -c]
        args: ["printf '%s %s %s ' '{{{{workflow.parameters.greeting}}}}' '{{{{inputs.parameters.order}}}}' \"$WHO\" > {out}; cat >> {out}"]
        env:
          - name: WHO
            value: "{{{{workflow.name}}}}"
"#,
            out = out.display()
        ),
        PARAMETER,
    );
    let trigger = build(&config);
    let event = event(r#"{"id":"o-7"}"#);
    trigger
        .invoke("order", &event)
        .await
        .expect("workflow succeeded");
    let written = std::fs::read_to_string(&out).expect("output file");
    let (args, stdin) = written.split_at(written.find('{').expect("event JSON"));
    let words: Vec<&str> = args.split_whitespace().collect();
    assert_eq!(words[..2], ["hello", "o-7"]);
    assert!(
        words[2].starts_with("job-") && words[2].len() == "job-".len() + 5,
        "{args}"
    );
    let stdin: serde_json::Value = serde_json::from_str(stdin).expect("stdin is JSON");
    assert_eq!(stdin["data"]["id"], "o-7");
    assert_eq!(stdin["context"]["id"], event.context.id.as_str());
}

#[tokio::test]
async fn a_script_runs_with_its_command() {
    let config = pipeline(
        r#"  templates:
    - name: main
      script:
        command: [sh]
        source: |
          test "{{workflow.parameters.order}}" = "o-1" || exit 9
"#,
        PARAMETER,
    );
    let trigger = build(&config);
    trigger
        .invoke("order", &event(r#"{"id":"o-1"}"#))
        .await
        .expect("o-1 passes");
    let err = trigger
        .invoke("order", &event(r#"{"id":"o-2"}"#))
        .await
        .expect_err("o-2 fails");
    assert!(
        matches!(&err, TriggerError::Retryable { message, .. } if message.contains("exit status: 9")),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_parameter_without_a_value_is_permanent() {
    let config = pipeline(
        r#"  templates:
    - name: main
      container:
        command: [sh, -c, "echo {{workflow.parameters.order}}"]
"#,
        "",
    );
    let err = build(&config)
        .invoke("order", &event("{}"))
        .await
        .expect_err("no value");
    assert!(
        matches!(&err, TriggerError::Permanent { message } if message.contains("workflow.parameters.order has no value")),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_deadline_fails_the_workflow_and_output_is_quoted() {
    let config = pipeline(
        r#"  activeDeadlineSeconds: 1
  templates:
    - name: main
      container:
        command: [sh, -c, "echo started; sleep 30"]
"#,
        "",
    );
    let err = build(&config)
        .invoke("order", &event("{}"))
        .await
        .expect_err("deadline");
    match err {
        TriggerError::Retryable { message, .. } => {
            assert!(message.contains("activeDeadlineSeconds (1s)"), "{message}");
            assert!(message.ends_with("output: started"), "{message}");
        }
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_missing_command_is_permanent() {
    let config = pipeline(
        r#"  templates:
    - name: main
      container:
        command: [/nonexistent/spillway-workflow]
"#,
        "",
    );
    let err = build(&config)
        .invoke("order", &event("{}"))
        .await
        .expect_err("missing");
    assert!(matches!(err, TriggerError::Permanent { .. }), "{err:?}");
}

#[test]
fn placeholders_substitute_and_unknown_ones_stay() {
    let workflow = BTreeMap::from([("a".to_string(), Some("1".to_string()))]);
    let inputs = BTreeMap::from([("b".to_string(), None)]);
    let scope = Scope {
        workflow: &workflow,
        inputs: &inputs,
        name: "wf-abcde",
    };
    assert_eq!(
        scope.substitute("x{{ workflow.parameters.a }}y{{workflow.name}}{{steps.z}}{{"),
        Ok("x1ywf-abcde{{steps.z}}{{".to_string())
    );
    assert_eq!(
        scope.substitute("{{inputs.parameters.b}}"),
        Err("inputs.parameters.b has no value".to_string())
    );
}

/// A `k8s` trigger creating a Workflow builds the same trigger as an
/// `argoWorkflow` submit: its parameters, trigger-level ones pointing into
/// `k8s.source.resource.`, operations and templates all reach the process;
/// a parameter that finds nothing fails the event for good.
#[tokio::test]
async fn a_k8s_workflow_runs_with_its_parameters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let config = config_from(&format!(
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
  dependencies:
    - {{name: order, eventSourceName: shop, eventName: orders}}
  triggers:
    - template:
        name: run
        k8s:
          operation: create
          source:
            resource:
              apiVersion: argoproj.io/v1alpha1
              kind: Workflow
              metadata: {{generateName: run-}}
              spec:
                arguments:
                  parameters: [{{name: id, value: "id-"}}, {{name: who}}, {{name: how}}]
                templates:
                  - name: main
                    container:
                      command: [sh, -c]
                      args: ["echo '{{{{workflow.parameters.id}}}} {{{{workflow.parameters.who}}}} {{{{workflow.parameters.how}}}}' > {out}"]
          parameters:
            - src: {{dependencyName: order, dataKey: body.id}}
              dest: spec.arguments.parameters.0.value
              operation: append
            - src: {{dependencyName: order, dataTemplate: "{{{{ .Input.body.who | upper }}}}"}}
              dest: spec.arguments.parameters.1.value
      parameters:
        - src: {{dependencyName: order, contextKey: type}}
          dest: k8s.source.resource.spec.arguments.parameters.2.value
"#,
        out = out.display()
    ));
    let trigger = &config.sensors[0].doc.spec.triggers[0];
    let k8s = &trigger.template.k8s.as_ref().expect("k8s").value;
    assert_eq!(template_ref_of(&trigger.template), Some("orders/run"));
    let workflow = WorkflowTrigger::new(
        trigger,
        &as_argo_workflow(k8s),
        &config.workflow_templates,
        WorkflowGate::unlimited("orders/run"),
    )
    .expect("build trigger");
    workflow
        .invoke("order", &event(r#"{"body": {"id": "o-7", "who": "ada"}}"#))
        .await
        .expect("workflow succeeded");
    let written = std::fs::read_to_string(&out).expect("output file");
    assert_eq!(written.trim(), "id-o-7 ADA webhook");
    let err = workflow
        .invoke("order", &event(r#"{"body": {"who": "ada"}}"#))
        .await
        .expect_err("no body.id");
    match err {
        TriggerError::Permanent { message } => {
            assert!(message.contains("body.id"), "{message}")
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
}
