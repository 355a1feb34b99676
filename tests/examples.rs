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
