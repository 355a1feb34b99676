//! Config errors and warnings of Argo `k8s` triggers, trigger parameters
//! and resources kept outside the Sensor (`source.file`, `source.url`,
//! `source.configmap`): each at its exact `FILE:LINE:COL`.

use spillway::config::fetch::FetchLimits;
use spillway::config::{self, Diagnostic, LoadOptions, Severity};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

type Loaded = (PathBuf, Result<config::Config, Vec<Diagnostic>>);

/// Writes `text` as `name` in `dir` and loads it.
fn load(dir: &Path, name: &str, text: &str) -> Loaded {
    load_with(dir, name, text, LoadOptions::default())
}

fn load_with(dir: &Path, name: &str, text: &str, options: LoadOptions) -> Loaded {
    let file = dir.join(name);
    std::fs::write(&file, text).expect("write config");
    let result = config::load_with(std::slice::from_ref(&file), options);
    (file, result)
}

/// The diagnostics as `FILE:LINE:COL: severity: message` lines.
fn render(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(|d| d.to_string()).collect()
}

/// Loading `triggers` must fail with exactly one error per `want` entry
/// `(file, line, col, substrings)`, in order.
fn expect_errors(dir: &Path, text: &str, want: &[(Option<&Path>, u32, u32, &[&str])]) {
    assert_errors(load(dir, "sensor.yaml", text), want);
}

/// The loaded config must have failed with exactly one error per `want`
/// entry, as for [`expect_errors`].
fn assert_errors((file, result): Loaded, want: &[(Option<&Path>, u32, u32, &[&str])]) {
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
                &["k8s trigger needs `source.resource`, `source.file`, `source.url` or `source.configmap`"],
            ),
        ],
    );
}

#[test]
fn git_sources_say_why_they_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    expect_errors(
        dir.path(),
        &sensor(
            "    - template:\n        name: remote\n        k8s:\n          source:\n            git: {url: \"https://example.invalid/repo.git\", filePath: wf.yaml}\n",
        ),
        &[
            // The source it has is not one spillway reads, so it has none.
            (None, 17, 11, &["k8s trigger needs `source.resource`"]),
            (None, 18, 13, &["git", "`file`"]),
        ],
    );
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

/// A Workflow carrying its own templates, as served by [`ResourceServer`].
const SERVED_WORKFLOW: &str = "apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {generateName: served-}
spec:
  templates:
    - name: main
      container: {command: [echo, served]}
";

/// An HTTP server on an ephemeral port serving trigger resources:
/// `/wf.yaml` ([`SERVED_WORKFLOW`], counted), `/misspelt.yaml` (a Workflow
/// with `contianer` on line 6), `/not-yaml` (an unclosed flow sequence),
/// `/big` (one byte over the cap, with `Content-Length`), `/big-chunked`
/// (the same without it), `/slow` (never answers); anything else is 404.
struct ResourceServer {
    base: String,
    workflow_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl ResourceServer {
    /// Serves over plain HTTP.
    async fn start() -> ResourceServer {
        let workflow_requests = Arc::new(AtomicUsize::new(0));
        let app = resource_routes(Arc::clone(&workflow_requests));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ResourceServer {
            base,
            workflow_requests,
            task,
        }
    }

    /// Serves over HTTPS with the self-signed certificate of
    /// `tests/fixtures/self-signed-127.0.0.1.*.pem` (for 127.0.0.1, valid
    /// for 100 years; no client trusts it).
    async fn start_tls() -> ResourceServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        spillway::install_tls_provider();
        let certs = CertificateDer::pem_slice_iter(include_bytes!(
            "fixtures/self-signed-127.0.0.1.crt.pem"
        ))
        .collect::<Result<Vec<_>, _>>()
        .expect("test certificate");
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("fixtures/self-signed-127.0.0.1.key.pem"))
                .expect("test key");
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let workflow_requests = Arc::new(AtomicUsize::new(0));
        let app = resource_routes(Arc::clone(&workflow_requests));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("https://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here.
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ResourceServer {
            base,
            workflow_requests,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The routes of [`ResourceServer`]; `/wf.yaml` requests are counted in
/// `workflow_requests`.
fn resource_routes(workflow_requests: Arc<AtomicUsize>) -> axum::Router {
    use axum::routing::get;
    let counter = workflow_requests;
    let over_cap = config::MAX_RESOURCE_FILE as usize + 1;
    axum::Router::new()
            .route(
                "/wf.yaml",
                get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async { SERVED_WORKFLOW }
                }),
            )
            .route(
                "/misspelt.yaml",
                get(|| async {
                    "apiVersion: argoproj.io/v1alpha1\nkind: Workflow\nspec:\n  templates:\n    - name: main\n      contianer: {command: [ls]}\n"
                }),
            )
            .route(
                "/not-yaml",
                get(|| async { "kind: Workflow\nspec: [unclosed\n" }),
            )
            .route("/big", get(move || async move { "#".repeat(over_cap) }))
            .route(
                "/big-chunked",
                get(move || async move {
                    // Streamed in 64 KiB chunks: no Content-Length to refuse early.
                    let chunks = (0..over_cap.div_ceil(65536)).map(move |i| {
                        let len = (over_cap - i * 65536).min(65536);
                        Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![b'#'; len]))
                    });
                    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .route("/slow", get(std::future::pending::<&'static str>))
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A sensor whose one trigger is a `k8s` trigger with `source.url: {url}`
/// (flow mapping text) on line 18, column 13.
fn url_trigger(url: &str) -> String {
    sensor(&format!(
        "    - template:\n        name: from-url\n        k8s:\n          source:\n            url: {url}\n"
    ))
}

/// Loads `text` on a blocking thread: the fetch must not wait on the
/// runtime that serves the resource (a SIGHUP reload loads the same way).
async fn load_blocking(dir: &Path, text: String, options: LoadOptions) -> Loaded {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || load_with(&dir, "sensor.yaml", &text, options))
        .await
        .expect("load task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_source_is_fetched_once_at_load_and_its_templates_lifted() {
    let server = ResourceServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The same URL for a `k8s` and an `argoWorkflow` trigger.
    let mut text = url_trigger(&format!("{{path: \"{}\"}}", server.url("/wf.yaml")));
    text.push_str(&format!(
        "    - template:\n        name: via-argo\n        argoWorkflow:\n          operation: submit\n          source: {{url: {{path: \"{}\"}}}}\n",
        server.url("/wf.yaml")
    ));
    let (_, result) = load_blocking(dir.path(), text, LoadOptions::default()).await;
    let config = result.unwrap_or_else(|d| panic!("loads: {:#?}", render(&d)));
    assert!(
        config.warnings.is_empty(),
        "{:#?}",
        render(&config.warnings)
    );
    let k8s = &config.sensors[0].doc.spec.triggers[0]
        .template
        .k8s
        .as_ref()
        .expect("k8s")
        .value;
    let resource = &k8s.source.resource.as_ref().expect("resource").value;
    assert_eq!(resource["kind"], "Workflow");
    // The served templates became the WorkflowTemplate `<sensor>/<trigger>`.
    assert_eq!(
        resource["spec"]["workflowTemplateRef"]["name"],
        "orders/from-url"
    );
    let lifted = config
        .workflow_templates
        .iter()
        .find(|t| t.doc.metadata.name() == "orders/from-url")
        .expect("lifted template");
    assert_eq!(lifted.file, PathBuf::from(server.url("/wf.yaml")));
    let argo = &config.sensors[0].doc.spec.triggers[1]
        .template
        .argo_workflow
        .as_ref()
        .expect("argoWorkflow")
        .value;
    let resource = &argo
        .source
        .as_ref()
        .and_then(|s| s.resource.as_ref())
        .expect("resource")
        .value;
    assert_eq!(
        resource["spec"]["workflowTemplateRef"]["name"],
        "orders/via-argo"
    );
    // Once per trigger naming it, at load; running reads the resource.
    assert_eq!(server.workflow_requests.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_source_failures_are_errors_at_the_path() {
    let server = ResourceServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let over = config::MAX_RESOURCE_FILE + 1;
    let announced = format!("announced {over} bytes");
    let cases: [(String, &[&str]); 9] = [
        (
            server.url("/missing"),
            &["/missing", "answered 404 Not Found"],
        ),
        (server.url("/big"), &["/big", &announced]),
        (
            server.url("/big-chunked"),
            &["longer than a resource may be"],
        ),
        (
            format!("http://127.0.0.1:{closed_port}/wf.yaml"),
            &["cannot connect"],
        ),
        ("not a url".to_string(), &["not a URL"]),
        (
            "ftp://example.invalid/wf.yaml".to_string(),
            &["scheme `ftp`"],
        ),
        (
            format!("http://ops:hunter2@127.0.0.1:{closed_port}/wf.yaml"),
            &["http://***@127.0.0.1", "cannot connect"],
        ),
        // The port does not parse: the password is hidden all the same.
        (
            "http://ops:hunter2@127.0.0.1:99999/wf.yaml".to_string(),
            &["http://***@127.0.0.1:99999/wf.yaml", "not a URL"],
        ),
        // A presigned URL's signature is a credential too.
        (
            format!("http://127.0.0.1:{closed_port}/wf.yaml?X-Amz-Signature=hunter2"),
            &["/wf.yaml?***", "cannot connect"],
        ),
    ];
    for (url, text) in cases {
        let loaded = load_blocking(
            dir.path(),
            url_trigger(&format!("{{path: \"{url}\"}}")),
            LoadOptions::default(),
        )
        .await;
        let mut want = vec!["source.url"];
        want.extend_from_slice(text);
        if let Err(diagnostics) = &loaded.1 {
            assert!(
                render(diagnostics).iter().all(|d| !d.contains("hunter2")),
                "{:#?}",
                render(diagnostics)
            );
        }
        assert_errors(loaded, &[(None, 18, 25, &want)]);
    }
}

/// A server that accepts and never answers costs the load exactly the
/// fetch timeout (200 ms here), then is an error at the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_never_answers_times_out() {
    let server = ResourceServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LoadOptions {
        fetch: FetchLimits {
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_millis(200),
        },
    };
    let text = url_trigger(&format!("{{path: \"{}\"}}", server.url("/slow")));
    assert_errors(
        load_blocking(dir.path(), text, options).await,
        &[(
            None,
            18,
            25,
            &[
                "source.url",
                "/slow",
                "no complete answer in time",
                "200ms in all",
            ],
        )],
    );
}

/// Errors inside the fetched document are reported at `URL:LINE:COL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_inside_a_fetched_document_are_at_url_line_col() {
    let server = ResourceServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let misspelt = PathBuf::from(server.url("/misspelt.yaml"));
    assert_errors(
        load_blocking(
            dir.path(),
            url_trigger(&format!("{{path: \"{}\"}}", misspelt.display())),
            LoadOptions::default(),
        )
        .await,
        &[
            (Some(&misspelt), 5, 13, &["needs `container` or `script`"]),
            (
                Some(&misspelt),
                6,
                7,
                &["contianer", "did you mean `container`"],
            ),
        ],
    );
    let not_yaml = PathBuf::from(server.url("/not-yaml"));
    assert_errors(
        load_blocking(
            dir.path(),
            url_trigger(&format!("{{path: \"{}\"}}", not_yaml.display())),
            LoadOptions::default(),
        )
        .await,
        &[(Some(&not_yaml), 2, 7, &["invalid YAML", "unclosed bracket"])],
    );
}

/// Over HTTPS with a certificate nobody trusts: refused by default
/// (`verifyCert` absent means verify) with the reason at the path;
/// `verifyCert: false` accepts it, with a warning at the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_verifies_the_certificate_unless_verify_cert_is_false() {
    let server = ResourceServer::start_tls().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = server.url("/wf.yaml");
    assert_errors(
        load_blocking(
            dir.path(),
            url_trigger(&format!("{{path: \"{url}\"}}")),
            LoadOptions::default(),
        )
        .await,
        &[(
            None,
            18,
            25,
            &["source.url", "https://", "cannot connect", "UnknownIssuer"],
        )],
    );
    assert_eq!(server.workflow_requests.load(Ordering::SeqCst), 0);
    let source = format!("{{path: \"{url}\", verifyCert: false}}");
    // `false` is where the flag's value starts on line 18.
    let flag_col = 13 + "url: ".len() + source.find("false").expect("flag");
    let (_, result) = load_blocking(dir.path(), url_trigger(&source), LoadOptions::default()).await;
    let config = result.unwrap_or_else(|d| panic!("loads: {:#?}", render(&d)));
    let warnings: Vec<(u32, u32)> = config
        .warnings
        .iter()
        .map(|w| (w.pos.line, w.pos.col))
        .collect();
    assert_eq!(
        warnings,
        [(18, flag_col as u32)],
        "{:#?}",
        render(&config.warnings)
    );
    assert!(config.warnings[0].message.contains("not checked"));
    assert_eq!(server.workflow_requests.load(Ordering::SeqCst), 1);
    let k8s = &config.sensors[0].doc.spec.triggers[0]
        .template
        .k8s
        .as_ref()
        .expect("k8s")
        .value;
    assert_eq!(k8s.resource_kind(), "Workflow");
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
