//! Every shipped example config must load without errors, and the CLI must
//! accept the quickstart.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Every `*.yaml` file under `dir`, recursively, in a stable order.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "yaml") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

#[test]
fn every_example_loads_on_its_own() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let files = yaml_files(&examples);
    assert!(
        files.len() >= 8,
        "expected the quickstart and the seed examples under {}, found {files:?}",
        examples.display()
    );
    let mut failures = Vec::new();
    for file in &files {
        if let Err(diagnostics) = spillway::config::load(std::slice::from_ref(file)) {
            let lines: Vec<String> = diagnostics.iter().map(|d| format!("  {d}")).collect();
            failures.push(format!("{}:\n{}", file.display(), lines.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} example(s) failed to load:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn validate_accepts_the_quickstart() {
    let output = Command::new(env!("CARGO_BIN_EXE_spillway"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["validate", "-f", "examples/quickstart.yaml"])
        .output()
        .expect("run spillway validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "spillway validate failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.starts_with("ok:"),
        "stdout should start with `ok:`\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

/// The pipeline the Kubernetes example mounts (`data."pipeline.yaml"` of
/// its ConfigMap) is a valid spillway config.
#[test]
fn the_kubernetes_pipeline_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/kubernetes/pipeline-configmap.yaml"))
        .expect("read the ConfigMap");
    #[derive(serde::Deserialize)]
    struct ConfigMap {
        data: std::collections::BTreeMap<String, String>,
    }
    let map: ConfigMap = serde_saphyr::from_str(&text).expect("a ConfigMap");
    let pipeline = &map.data["pipeline.yaml"];
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(&file, pipeline).expect("write the pipeline");
    let config = spillway::config::load(std::slice::from_ref(&file)).unwrap_or_else(|errors| {
        let lines: Vec<String> = errors.iter().map(|d| format!("  {d}")).collect();
        panic!("{}", lines.join("\n"))
    });
    assert_eq!(config.bus.replicas, 3);
    assert_eq!(config.bus.url.as_deref(), Some("nats://nats:4222"));
}

/// The 3-node cluster configs are valid for the nats-server on this machine.
#[test]
fn the_nats_cluster_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for node in 1..=3 {
        let conf = root.join(format!("deploy/nats/nats-{node}.conf"));
        let output = Command::new("/usr/sbin/nats-server")
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .expect("run nats-server -t (apt install nats-server)");
        assert!(
            output.status.success(),
            "{}: {}",
            conf.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
