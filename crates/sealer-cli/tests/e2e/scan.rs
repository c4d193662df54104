//! `sealer scan`: the table, warnings on stderr, `--json`, `--image-list` and
//! `--ignored-image-list`, over the dep-scanner's fixture cluster tree.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dep-scanner/tests/fixtures/cluster")
}

#[test]
fn scan_prints_images_with_provenance_and_warnings_on_stderr() {
    let temp = tempfile::tempdir().unwrap();
    let sealer = Sealer::new(temp.path().join("store"));
    let fixture = fixture();
    let output = sealer.run(&["scan", arg(&fixture)]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|line| *line == "docker.io/library/busybox:latest")
        .unwrap();
    assert_eq!(
        lines[at + 1..at + 3],
        [
            "    manifests/imageList:6 (image-list)",
            "    manifests/install.yaml:59 (pod-spec)"
        ]
    );
    assert!(lines.contains(&"docker.io/library/nginx:1.20"));
    assert!(lines.contains(&"    charts/web/values.yaml:11 (helm-values)"));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("warning: manifests/crs/instances.yaml:22: templated image"),
        "{stderr}"
    );
    // The chart template's `{{ .Values… }}` image resolves from its values: no warning.
    assert!(!stderr.contains("charts/web/templates"), "{stderr}");
    assert!(lines.contains(&"    charts/web/templates/deployment.yaml:14 (template-values)"));
    // The store is not touched: scanning needs none.
    assert!(!temp.path().join("store").exists());
}

#[test]
fn scan_json_with_added_and_ignored_lists() {
    let temp = tempfile::tempdir().unwrap();
    let sealer = Sealer::new(temp.path().join("store"));
    let extra = temp.path().join("extra.txt");
    std::fs::write(&extra, "# more\nquay.io/extra/one:1\n").unwrap();
    let ignored = temp.path().join("ignored.txt");
    std::fs::write(&ignored, "busybox\n").unwrap();
    let fixture = fixture();
    let stdout = sealer.ok(&[
        "scan",
        arg(&fixture),
        "--json",
        "--image-list",
        arg(&extra),
        "--ignored-image-list",
        arg(&ignored),
    ]);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let references: Vec<&str> = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["reference"].as_str().unwrap())
        .collect();
    assert!(references.contains(&"quay.io/extra/one:1"));
    assert!(references.contains(&"quay.io/demo/backup:1.20"));
    assert!(
        !references
            .iter()
            .any(|r| r.starts_with("docker.io/library/busybox"))
    );
    let extra_image = report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|image| image["reference"] == "quay.io/extra/one:1")
        .unwrap();
    assert_eq!(extra_image["sources"][0]["line"], 2);
    assert_eq!(extra_image["sources"][0]["rule"], "extra-image-list");
    assert_eq!(report["warnings"].as_array().unwrap().len(), 2);

    let missing = sealer.fails(&["scan", arg(&temp.path().join("nope"))]);
    assert!(missing.contains("nope"), "{missing}");
}

#[test]
fn scan_one_file_marks_runtime_images_and_says_when_there_are_none() {
    let temp = tempfile::tempdir().unwrap();
    let sealer = Sealer::new(temp.path().join("store"));
    let operator = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
        "../dep-scanner/tests/fixtures/real/argo-workflows/workflow-controller-deployment.yaml",
    );
    // One file: scanned on its own, named by its file name.
    let stdout = sealer.ok(&["scan", arg(&operator)]);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "docker.io/argoproj/argoexec:v3.0.10 (runtime)",
            "    workflow-controller-deployment.yaml:28 (arg)",
            "docker.io/argoproj/workflow-controller:v3.0.10",
            "    workflow-controller-deployment.yaml:17 (pod-spec)",
        ]
    );
    let report: Value =
        serde_json::from_str(&sealer.ok(&["scan", arg(&operator), "--json"])).unwrap();
    assert_eq!(report["images"][0]["runtime"], true);
    assert_eq!(report["images"][1]["runtime"], false);

    let empty = temp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert_eq!(sealer.ok(&["scan", arg(&empty)]), "no images found\n");
}
