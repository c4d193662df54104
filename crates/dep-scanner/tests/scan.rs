//! The scanner against the fixture cluster tree (tests/fixtures/cluster) and `.tgz` charts built
//! here: exact findings, rules and lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::Path;

use sealer_dep_scanner::{ImageListFile, Rule, ScanOptions, ScanReport, scan};
use sealer_fs_abstraction::{Fs, RealFs};

const D1: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";
const D2: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000002";

fn fixture() -> RealFs {
    RealFs::open_root(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster")).unwrap()
}

/// `(reference, [(file, line, rule)])`.
type Image = (String, Vec<(String, usize, Rule)>);

/// One [`Image`] per finding.
fn images(report: &ScanReport) -> Vec<Image> {
    report
        .images
        .iter()
        .map(|finding| {
            (
                finding.reference.to_string(),
                finding
                    .sources
                    .iter()
                    .map(|source| (source.file.clone(), source.line, source.rule))
                    .collect(),
            )
        })
        .collect()
}

fn warnings(report: &ScanReport) -> Vec<(String, Option<usize>, String)> {
    report
        .warnings
        .iter()
        .map(|warning| (warning.file.clone(), warning.line, warning.message.clone()))
        .collect()
}

fn one(reference: &str, sources: &[(&str, usize, Rule)]) -> (String, Vec<(String, usize, Rule)>) {
    (
        reference.to_owned(),
        sources
            .iter()
            .map(|(file, line, rule)| ((*file).to_owned(), *line, *rule))
            .collect(),
    )
}

const INSTALL: &str = "manifests/install.yaml";
const CRS: &str = "manifests/crs/instances.yaml";
const LIST: &str = "manifests/imageList";
const VALUES: &str = "charts/web/values.yaml";
const TEMPLATE: &str = "charts/web/templates/deployment.yaml";
/// Lines of helm's output for the template, not of the template.
const RENDERED: &str = "charts/web/templates/deployment.yaml (rendered)";

#[test]
fn fixture_cluster_findings_are_exact() {
    let report = scan(&fixture(), &ScanOptions::default()).unwrap();
    use Rule::*;
    let expected = vec![
        one(
            "docker.io/bitnami/postgresql:16.2.0",
            &[(CRS, 7, ImageField)],
        ),
        // `tag: ""` in a chart's values: the chart's appVersion. The template's
        // `{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}`
        // resolves to the same from values.yaml and Chart.yaml, without helm.
        one(
            "docker.io/demo/web:2.4.1",
            &[(TEMPLATE, 14, TemplateValues), (VALUES, 3, HelmValues)],
        ),
        one(
            "docker.io/fluent/fluent-bit:3.0.4",
            &[(TEMPLATE, 16, TemplateLine)],
        ),
        one("docker.io/library/alpine:3.19", &[(CRS, 15, PodSpec)]),
        one("docker.io/library/busybox:1.36", &[(CRS, 15, PodSpec)]),
        one(
            "docker.io/library/busybox:latest",
            &[(LIST, 6, ImageList), (INSTALL, 59, PodSpec)],
        ),
        // Unquoted `tag: 1.20` stays 1.20.
        one("docker.io/library/nginx:1.20", &[(VALUES, 11, HelmValues)]),
        // The list, and the ConfigMap's `defaultImage` (a runtime image); its text block
        // only mentions `redis:7` in prose.
        one(
            "docker.io/library/nginx:1.25",
            &[(LIST, 3, ImageList), (INSTALL, 96, ConfigMap)],
        ),
        one(
            "docker.io/prom/postgres-exporter:v0.15.0",
            &[(CRS, 9, ImageField)],
        ),
        one(
            "gcr.io/kubebuilder/kube-rbac-proxy:v0.15.0",
            &[(INSTALL, 41, PodSpec)],
        ),
        one("ghcr.io/demo/controller:v1.4.0", &[(INSTALL, 37, PodSpec)]),
        one(
            &format!("ghcr.io/demo/exporter@{D2}"),
            &[(VALUES, 16, HelmValues)],
        ),
        one("quay.io/a/b:1.2", &[(VALUES, 8, HelmValues)]),
        one("quay.io/demo/backup:1.20", &[(CRS, 12, HelmValues)]),
        one("quay.io/demo/migrate:v1.4.0", &[(INSTALL, 33, PodSpec)]),
        one(
            "quay.io/prometheus/node-exporter:v1.8.0",
            &[("application/apps/monitoring/node-exporter.yaml", 8, PodSpec)],
        ),
        one(
            &format!("registry.k8s.io/kubectl:v1.30.0@{D1}"),
            &[(INSTALL, 76, PodSpec)],
        ),
        one("registry.k8s.io/pause:3.9", &[(LIST, 4, ImageList)]),
    ];
    assert_eq!(images(&report), expected);

    let warnings = warnings(&report);
    let places: Vec<(&str, Option<usize>)> = warnings
        .iter()
        .map(|(file, line, _)| (file.as_str(), *line))
        .collect();
    assert_eq!(places, [(CRS, Some(22)), (CRS, Some(24))], "{warnings:#?}");
    assert!(warnings[0].2.contains("templated image \"${CACHE_IMAGE}\""));
    assert!(warnings[1].2.contains("Not A Valid:Image"));
}

#[test]
fn image_lists_add_and_ignore() {
    let options = ScanOptions {
        image_lists: vec![ImageListFile {
            name: "extra.txt".to_owned(),
            text: "# extra\nquay.io/extra/one:1\n\nbusybox\n".to_owned(),
        }],
        ignored_image_lists: vec![ImageListFile {
            name: "ignored.txt".to_owned(),
            // A bare name drops every tag; a tagged one only that tag.
            text: "busybox # all tags\nnginx:1.20\nquay.io/demo/migrate:v9\n".to_owned(),
        }],
        helm: None,
    };
    let report = scan(&fixture(), &options).unwrap();
    let references: Vec<String> = report
        .images
        .iter()
        .map(|finding| finding.reference.to_string())
        .collect();
    assert!(references.contains(&"quay.io/extra/one:1".to_owned()));
    assert!(!references.iter().any(|r| r.contains("library/busybox")));
    assert!(!references.contains(&"docker.io/library/nginx:1.20".to_owned()));
    assert!(references.contains(&"docker.io/library/nginx:1.25".to_owned()));
    assert!(references.contains(&"quay.io/demo/migrate:v1.4.0".to_owned()));
    let extra = report
        .images
        .iter()
        .find(|finding| finding.reference.to_string() == "quay.io/extra/one:1")
        .unwrap();
    assert_eq!(extra.sources[0].file, "extra.txt");
    assert_eq!(extra.sources[0].line, 2);
    assert_eq!(extra.sources[0].rule, Rule::ExtraImageList);
}

/// A gzip'd tar of `(path, content)` entries, as `helm package` writes.
fn tgz(entries: &[(&str, &str)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(encoder);
    for (path, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn tgz_charts_and_subcharts_are_read_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let fs = RealFs::open_root(dir.path()).unwrap();
    fs.create_dir_all(Path::new("charts")).unwrap();
    let sub = tgz(&[
        (
            "db/Chart.yaml",
            "apiVersion: v2\nname: db\nversion: 1.0.0\nappVersion: 16.1\n",
        ),
        (
            "db/values.yaml",
            "image:\n  repository: postgres\n  tag: ''\n",
        ),
    ]);
    // The subchart travels as a .tgz inside the parent .tgz.
    let mut parent = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (path, content) in [
        (
            "app/Chart.yaml",
            "apiVersion: v2\nname: app\nversion: 2.0.0\n",
        ),
        (
            "app/values.yaml",
            "image:\n  registry: quay.io\n  repository: org/app\n  tag: 1.10\n",
        ),
        (
            "app/templates/job.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  template:\n    spec:\n      containers:\n      - name: x\n        image: \"alpine:3.20\"\n",
        ),
        ("app/README.md", "image: not-scanned:1\n"),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        parent
            .append_data(&mut header, path, content.as_bytes())
            .unwrap();
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(sub.len() as u64);
    header.set_mode(0o644);
    parent
        .append_data(&mut header, "app/charts/db-1.0.0.tgz", sub.as_slice())
        .unwrap();
    let parent = parent.into_inner().unwrap().finish().unwrap();
    let mut file = fs.create(Path::new("charts/app-2.0.0.tgz")).unwrap();
    file.write_all(&parent).unwrap();
    drop(file);
    // Not a chart: reported, not silently skipped.
    let mut file = fs.create(Path::new("charts/other.tgz")).unwrap();
    file.write_all(&tgz(&[("x/readme.yaml", "a: b\n")]))
        .unwrap();
    drop(file);

    let report = scan(&fs, &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one(
                "docker.io/library/alpine:3.20",
                // `{{ .Release.Name }}` happens to be valid YAML: the structural rules apply.
                &[("charts/app-2.0.0.tgz!/app/templates/job.yaml", 10, PodSpec)],
            ),
            // appVersion 16.1, unquoted, stays "16.1".
            one(
                "docker.io/library/postgres:16.1",
                &[(
                    "charts/app-2.0.0.tgz!/app/charts/db-1.0.0.tgz!/db/values.yaml",
                    2,
                    HelmValues
                )],
            ),
            one(
                "quay.io/org/app:1.10",
                &[("charts/app-2.0.0.tgz!/app/values.yaml", 3, HelmValues)],
            ),
        ]
    );
    assert_eq!(
        warnings(&report),
        vec![(
            "charts/other.tgz".to_owned(),
            None,
            "not scanned: an archive without Chart.yaml".to_owned()
        )]
    );
}

#[test]
fn a_plain_directory_is_scanned_whole_and_bad_yaml_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let fs = RealFs::open_root(dir.path()).unwrap();
    fs.write_atomic(
        Path::new("app.yml"),
        b"kind: List\nitems:\n- kind: StatefulSet\n  spec:\n    template:\n      spec:\n        containers:\n        - {name: a, image: \"redis:7.2\"}\n        volumes:\n        - name: data\n          image: {reference: quay.io/x/data:1, pullPolicy: IfNotPresent}\n",
    )
    .unwrap();
    fs.write_atomic(Path::new("bad.yaml"), b"a: [b\nc: d\n")
        .unwrap();
    // Not an image list: only `imageList` files are.
    fs.write_atomic(Path::new("images.txt"), b"# none\nquay.io/x/y:2\n")
        .unwrap();
    let report = scan(&fs, &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one("docker.io/library/redis:7.2", &[("app.yml", 8, PodSpec)]),
            // An image volume.
            one("quay.io/x/data:1", &[("app.yml", 11, PodSpec)]),
        ]
    );
    let warnings = warnings(&report);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].0, "bad.yaml");
    assert_eq!(warnings[0].1, Some(2));
    assert_eq!(
        warnings[0].2,
        "document not scanned: not YAML (illegal placement of ':' indicator)"
    );
}

#[test]
fn the_report_serialises_to_json() {
    let report = scan(&fixture(), &ScanOptions::default()).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(
        json["images"][0]["reference"],
        "docker.io/bitnami/postgresql:16.2.0"
    );
    assert_eq!(
        json["images"][0]["sources"][0],
        serde_json::json!({"file": CRS, "line": 7, "rule": "image-field"})
    );
    assert_eq!(json["warnings"][0]["line"], 22);
}

/// A stand-in for `helm`: renders the fixture's chart as helm would, or fails.
const FAKE_HELM: &str = r#"#!/bin/sh
[ "$1" = template ] && [ "$2" = sealer-scan ] || exit 2
case "$3" in
  */charts/web) ;;
  *) echo "Error: unexpected chart $3" >&2; exit 1 ;;
esac
[ -n "$FAIL" ] && { echo "Error: boom" >&2; exit 1; }
cat <<'OUT'
---
# Source: web/templates/deployment.yaml
apiVersion: apps/v1
kind: Deployment
metadata:
  name: sealer-scan-web
spec:
  template:
    spec:
      containers:
        - name: web
          image: "demo/web:2.4.1"
        - name: log-shipper
          image: docker.io/fluent/fluent-bit:3.0.4 # pinned
OUT
"#;

#[test]
fn charts_are_rendered_by_helm_when_it_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let tools = RealFs::open_root(dir.path()).unwrap();
    tools
        .write_atomic(Path::new("helm"), FAKE_HELM.as_bytes())
        .unwrap();
    tools.set_permissions(Path::new("helm"), 0o755).unwrap();
    let helm = dir.path().join("helm");
    let options = ScanOptions {
        helm: Some(helm.clone()),
        ..ScanOptions::default()
    };
    let report = scan(&fixture(), &options).unwrap();
    let images = images(&report);
    use Rule::*;
    let find = |reference: &str| images.iter().find(|(r, _)| r == reference).unwrap().clone();
    assert_eq!(
        find("docker.io/demo/web:2.4.1"),
        one(
            "docker.io/demo/web:2.4.1",
            &[
                (TEMPLATE, 14, TemplateValues),
                (RENDERED, 10, HelmTemplate),
                (VALUES, 3, HelmValues),
            ]
        )
    );
    assert_eq!(
        find("docker.io/fluent/fluent-bit:3.0.4"),
        one(
            "docker.io/fluent/fluent-bit:3.0.4",
            &[(TEMPLATE, 16, TemplateLine), (RENDERED, 12, HelmTemplate)]
        )
    );
    assert_eq!(report.images.len(), 18);

    // helm failing is a warning; the static findings stay.
    let failing = dir.path().join("failing-helm");
    tools
        .write_atomic(
            Path::new("failing-helm"),
            FAKE_HELM.replace("[ -n \"$FAIL\" ] && ", "").as_bytes(),
        )
        .unwrap();
    tools
        .set_permissions(Path::new("failing-helm"), 0o755)
        .unwrap();
    let report = scan(
        &fixture(),
        &ScanOptions {
            helm: Some(failing),
            ..ScanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report.images.len(), 18);
    assert!(
        report.warnings.iter().any(|warning| (
            warning.file.as_str(),
            warning.line,
            warning.message.as_str()
        ) == (
            "charts/web",
            None,
            "helm template failed: Error: boom"
        )),
        "{:?}",
        report.warnings
    );

    // A helm that cannot be started: the static scan alone, no warning.
    let report = scan(
        &fixture(),
        &ScanOptions {
            helm: Some(dir.path().join("no-such-helm")),
            ..ScanOptions::default()
        },
    )
    .unwrap();
    assert_eq!(report, scan(&fixture(), &ScanOptions::default()).unwrap());
}

// One fixture per class of issue 11 (tests/fixtures/classes/<n>-…): exact findings, rules,
// lines and warnings.

fn class(name: &str) -> RealFs {
    RealFs::open_root(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/classes")
            .join(name),
    )
    .unwrap()
}

fn warning(file: &str, line: Option<usize>, message: &str) -> (String, Option<usize>, String) {
    (file.to_owned(), line, message.to_owned())
}

/// 1: a chart scanned as the root (its own `charts/` are subcharts whose values come through
/// the parent's), and what a cluster tree leaves outside its areas is named.
#[test]
fn class_1_a_chart_root_with_subcharts_and_files_outside_the_areas() {
    let report = scan(&class("1-chart-root"), &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            // `tag: ""`: the appVersion, in values.yaml and through the template.
            one(
                "docker.io/example/shop:3.1.0",
                &[
                    ("templates/deployment.yaml", 10, TemplateValues),
                    ("values.yaml", 2, HelmValues)
                ]
            ),
            // The subchart's own default...
            one(
                "docker.io/library/postgres:16.1",
                &[("charts/db/values.yaml", 2, HelmValues)]
            ),
            // ...and what its template renders with the parent's `db.image.tag`.
            one(
                "docker.io/library/postgres:16.3",
                &[("charts/db/templates/statefulset.yaml", 10, TemplateValues)]
            ),
        ]
    );
    assert_eq!(warnings(&report), vec![]);

    let report = scan(&class("1-loose"), &ScanOptions::default()).unwrap();
    assert_eq!(
        images(&report),
        vec![one(
            "quay.io/example/app:1.0",
            &[("manifests/app.yaml", 8, PodSpec)]
        )]
    );
    assert_eq!(
        warnings(&report),
        vec![
            warning(
                "addons/metrics",
                None,
                "not scanned: a Helm chart outside charts/ (move it there to have its images found)"
            ),
            warning(
                "extra.yaml",
                None,
                "not scanned: Kubernetes YAML outside manifests/, charts/ and application/apps/ \
                 (move it there to have its images found)"
            ),
        ]
    );
}

/// 2: an alias bomb is a warning of its document; the documents around it are scanned.
#[test]
fn class_2_an_alias_bomb_is_a_warning_and_the_scan_goes_on() {
    let report = scan(&class("2-alias-bomb"), &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one("quay.io/example/after:1", &[("bomb.yaml", 25, PodSpec)]),
            one("quay.io/example/before:1", &[("bomb.yaml", 7, PodSpec)]),
        ]
    );
    assert_eq!(
        warnings(&report),
        vec![warning(
            "bomb.yaml",
            Some(13),
            "document not scanned: aliases expand beyond the limit (10000 aliases, 4194304 \
             bytes per document): an alias bomb?"
        )]
    );
}

/// 3: one invalid document loses only itself; 9: `image: ""` is warned about.
#[test]
fn class_3_one_invalid_document_keeps_its_neighbours() {
    let report = scan(&class("3-bad-document"), &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one("quay.io/example/first:1", &[("install.yaml", 6, PodSpec)]),
            one("quay.io/example/third:1", &[("install.yaml", 20, PodSpec)]),
        ]
    );
    assert_eq!(
        warnings(&report),
        vec![
            warning(
                "install.yaml",
                Some(11),
                "document not scanned: not YAML (while parsing a flow mapping, did not find \
                 expected ',' or '}')"
            ),
            warning("install.yaml", Some(21), "empty image \"\""),
        ]
    );
}

/// 4: only `imageList` files are image lists; `NOTES.txt` and other text are not.
#[test]
fn class_4_text_files_are_not_image_lists() {
    let report = scan(&class("4-text"), &ScanOptions::default()).unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one(
                "quay.io/example/app-listed:2",
                &[("application/apps/demo/imageList", 1, ImageList)]
            ),
            one("quay.io/example/listed:1", &[("imageList", 2, ImageList)]),
        ]
    );
    assert_eq!(warnings(&report), vec![]);
    // A plain folder: its `NOTES.txt` ("hello", "world") names no images either.
    let report = scan(&class("4-plain"), &ScanOptions::default()).unwrap();
    assert_eq!(
        images(&report),
        vec![one("quay.io/example/plain:1", &[("app.yaml", 8, PodSpec)])]
    );
    assert_eq!(warnings(&report), vec![]);
}

/// 5: images operators start at runtime, each by its own rule, and nothing that is not an
/// image (`Always`, addresses, paths, URLs, prose, names without tag or host).
#[test]
fn class_5_runtime_images_from_args_env_configmaps_and_fields() {
    let report = scan(&class("5-runtime"), &ScanOptions::default()).unwrap();
    use Rule::*;
    const F: &str = "operator.yaml";
    let expected = vec![
        one("docker.io/example/tools:2.0", &[(F, 26, Env)]),
        one("docker.io/library/busybox:1.36", &[(F, 21, Arg)]),
        one(
            "docker.io/longhornio/longhorn-engine:v1.6.0",
            &[(F, 66, CrdField)],
        ),
        one(
            "docker.io/longhornio/longhorn-instance-manager:v1.6.0",
            &[(F, 67, CrdField)],
        ),
        one("docker.io/x/engine:v1", &[(F, 14, Arg)]),
        one(
            "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:0000000000000000000000000000000000000000000000000000000000000003",
            &[(F, 52, ConfigMap)],
        ),
        // Both from one line of a script.
        one("ghcr.io/example/job-runner:6", &[(F, 43, Arg)]),
        one("ghcr.io/example/job:5", &[(F, 43, Arg)]),
        one("mirror.example.com/library/upstream:3", &[(F, 30, Env)]),
        one("mirror.example.com/x/default:1", &[(F, 56, ConfigMap)]),
        one("quay.io/cephcsi/cephcsi:v3.11.0", &[(F, 51, ConfigMap)]),
        one("quay.io/example/backup:2.1", &[(F, 71, HelmValues)]),
        one("quay.io/example/helper:1", &[(F, 37, PodSpec)]),
        one("quay.io/example/operator:v1.2.0", &[(F, 10, PodSpec)]),
        one(
            "quay.io/prometheus-operator/prometheus-config-reloader:v0.92.0",
            &[(F, 15, Arg)],
        ),
        one("registry.example.com/x/upstream:9", &[(F, 59, ConfigMap)]),
        one(
            "registry.k8s.io/sig-storage/csi-attacher:v4.5.0",
            &[(F, 24, Env)],
        ),
    ];
    assert_eq!(images(&report), expected);
    assert_eq!(warnings(&report), vec![]);
    // Marked: only runtime rules found it.
    let runtime: Vec<(String, bool)> = report
        .images
        .iter()
        .map(|finding| (finding.reference.to_string(), finding.runtime))
        .collect();
    assert!(runtime.contains(&("docker.io/x/engine:v1".to_owned(), true)));
    assert!(runtime.contains(&("quay.io/example/operator:v1.2.0".to_owned(), false)));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["images"][4]["reference"], "docker.io/x/engine:v1");
    assert_eq!(json["images"][4]["runtime"], true);
    assert_eq!(json["images"][4]["sources"][0]["rule"], "arg");
    assert_eq!(
        json["images"][10]["reference"],
        "quay.io/cephcsi/cephcsi:v3.11.0"
    );
    assert_eq!(json["images"][10]["sources"][0]["rule"], "configmap");

    // A false one is dropped by an ignore list.
    let options = ScanOptions {
        ignored_image_lists: vec![ImageListFile {
            name: "ignored".to_owned(),
            text: "mirror.example.com/x/default\n".to_owned(),
        }],
        ..ScanOptions::default()
    };
    let report = scan(&class("5-runtime"), &options).unwrap();
    assert_eq!(report.images.len(), expected.len() - 1);
}

/// A stand-in for `helm` rendering the 7-resolved chart: every image resolved.
const CACHE_HELM: &str = r#"#!/bin/sh
[ "$1" = template ] || exit 2
cat <<'OUT'
---
# Source: cache/templates/statefulset.yaml
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: sealer-scan-cache
spec:
  template:
    spec:
      containers:
        - name: redis
          image: mirror.example.com:5000/bitnami/redis:7.2.4-debian-12-r9
        - name: metrics
          image: mirror.example.com:5000/bitnami/redis-exporter@sha256:00000000000000000000000000000000000000000000000000000000000000aa
        - name: sidecar
          image: docker.io/library/busybox:1.36
OUT
"#;

/// 7: templated images resolved from the chart's values (image helpers over a values shape,
/// `global.imageRegistry`, a digest beside a tag) or by helm are not warned about; 6: what
/// helm rendered is named as rendered output, with its line there.
#[test]
fn class_6_7_resolved_templates_are_not_warned_and_rendered_lines_say_so() {
    use Rule::*;
    let registry = "mirror.example.com:5000/bitnami";
    let exporter = format!(
        "{registry}/redis-exporter@sha256:00000000000000000000000000000000000000000000000000000000000000aa"
    );
    let report = scan(&class("7-resolved"), &ScanOptions::default()).unwrap();
    assert_eq!(
        images(&report),
        vec![
            one(&exporter, &[("values.yaml", 11, HelmValues)]),
            one(
                &format!("{registry}/redis:7.2.4-debian-12-r9"),
                &[("values.yaml", 5, HelmValues)]
            ),
        ]
    );
    // Only the sidecar's helper is not resolved statically.
    assert_eq!(
        warnings(&report),
        vec![warning(
            "templates/statefulset.yaml",
            Some(14),
            "templated image \"{{ include \\\"cache.sidecar.image\\\" . }}\" (not resolved; \
             render it or list it)"
        )]
    );

    let dir = tempfile::tempdir().unwrap();
    let tools = RealFs::open_root(dir.path()).unwrap();
    tools
        .write_atomic(Path::new("helm"), CACHE_HELM.as_bytes())
        .unwrap();
    tools.set_permissions(Path::new("helm"), 0o755).unwrap();
    let options = ScanOptions {
        helm: Some(dir.path().join("helm")),
        ..ScanOptions::default()
    };
    let report = scan(&class("7-resolved"), &options).unwrap();
    const RENDERED: &str = "templates/statefulset.yaml (rendered)";
    assert_eq!(
        images(&report),
        vec![
            one(
                "docker.io/library/busybox:1.36",
                &[(RENDERED, 14, HelmTemplate)]
            ),
            one(
                &exporter,
                &[
                    (RENDERED, 12, HelmTemplate),
                    ("values.yaml", 11, HelmValues)
                ]
            ),
            one(
                &format!("{registry}/redis:7.2.4-debian-12-r9"),
                &[(RENDERED, 10, HelmTemplate), ("values.yaml", 5, HelmValues)]
            ),
        ]
    );
    assert_eq!(warnings(&report), vec![]);
}

/// 9: one file scans on its own; sources are sorted by file and line; `image: ""` warns.
#[test]
fn class_9_one_file_sorted_sources_and_empty_images() {
    let fs = class("9-single");
    let report =
        sealer_dep_scanner::scan_file(&fs, Path::new("deploy.yaml"), &ScanOptions::default())
            .unwrap();
    use Rule::*;
    assert_eq!(
        images(&report),
        vec![
            one("quay.io/example/main:1", &[("deploy.yaml", 13, PodSpec)]),
            one(
                "quay.io/example/tool:1",
                &[
                    ("deploy.yaml", 10, PodSpec),
                    ("deploy.yaml", 15, PodSpec),
                    ("deploy.yaml", 22, ImageField)
                ]
            ),
        ]
    );
    assert_eq!(
        warnings(&report),
        vec![warning("deploy.yaml", Some(24), "empty image \"\"")]
    );
    let empty = tempfile::tempdir().unwrap();
    let report = scan(
        &RealFs::open_root(empty.path()).unwrap(),
        &ScanOptions::default(),
    )
    .unwrap();
    assert_eq!(report, ScanReport::default());
}

// Real public manifests (tests/fixtures/real, see its README): the complete image set each
// needs, runtime images included, and nothing else.

fn real(path: &str) -> ScanReport {
    let fs = RealFs::open_root(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real"))
        .unwrap();
    let report =
        sealer_dep_scanner::scan_file(&fs, Path::new(path), &ScanOptions::default()).unwrap();
    assert_eq!(warnings(&report), vec![], "{path}");
    report
}

#[test]
fn real_cert_manager_controller_starts_the_acme_solver() {
    const F: &str = "cert-manager/cert-manager.yaml";
    use Rule::*;
    assert_eq!(
        images(&real(F)),
        vec![
            one(
                "quay.io/jetstack/cert-manager-acmesolver:v1.19.4",
                &[(F, 111, Arg)]
            ),
            one(
                "quay.io/jetstack/cert-manager-cainjector:v1.19.4",
                &[(F, 42, PodSpec)]
            ),
            one(
                "quay.io/jetstack/cert-manager-controller:v1.19.4",
                &[(F, 105, PodSpec)]
            ),
            one(
                "quay.io/jetstack/cert-manager-webhook:v1.19.4",
                &[(F, 187, PodSpec)]
            ),
        ]
    );
}

#[test]
fn real_longhorn_manager_and_driver_deployer_start_engine_and_csi_images() {
    const F: &str = "longhorn/longhorn.yaml";
    use Rule::*;
    assert_eq!(
        images(&real(F)),
        vec![
            one(
                "docker.io/longhornio/backing-image-manager:v1.7.0-rc2",
                &[(F, 42, Arg)]
            ),
            one("docker.io/longhornio/csi-attacher:v4.6.1", &[(F, 168, Env)]),
            one(
                "docker.io/longhornio/csi-node-driver-registrar:v2.10.1",
                &[(F, 172, Env)]
            ),
            one(
                "docker.io/longhornio/csi-provisioner:v4.0.1",
                &[(F, 170, Env)]
            ),
            one("docker.io/longhornio/csi-resizer:v1.11.1", &[(F, 174, Env)]),
            one(
                "docker.io/longhornio/csi-snapshotter:v7.0.2",
                &[(F, 176, Env)]
            ),
            one(
                "docker.io/longhornio/livenessprobe:v2.12.0",
                &[(F, 178, Env)]
            ),
            one(
                "docker.io/longhornio/longhorn-engine:v1.7.0-rc2",
                &[(F, 36, Arg)]
            ),
            one(
                "docker.io/longhornio/longhorn-instance-manager:v1.7.0-rc2",
                &[(F, 38, Arg)]
            ),
            one(
                "docker.io/longhornio/longhorn-manager:v1.7.0-rc2",
                &[
                    (F, 27, PodSpec),
                    (F, 46, Arg),
                    (F, 140, PodSpec),
                    (F, 144, PodSpec),
                    (F, 151, Arg)
                ]
            ),
            one(
                "docker.io/longhornio/longhorn-share-manager:v1.7.0-rc2",
                &[(F, 40, Arg), (F, 93, PodSpec)]
            ),
            one(
                "docker.io/longhornio/longhorn-ui:v1.7.0-rc2",
                &[(F, 223, PodSpec)]
            ),
            one(
                "docker.io/longhornio/support-bundle-kit:v0.0.40",
                &[(F, 44, Arg)]
            ),
        ]
    );
}

#[test]
fn real_knative_serving_queue_proxy_from_its_configmap() {
    const F: &str = "knative-serving/serving-core.yaml";
    use Rule::*;
    assert_eq!(
        images(&real(F)),
        vec![one(
            "gcr.io/knative-releases/knative.dev/serving/cmd/queue@sha256:a3cc71ce80dbc6df8781f15eac2cf3531a4c9815271799afd8776bef9e6aeaf2",
            &[(F, 12, ImageField), (F, 26, ConfigMap)]
        )]
    );
}

#[test]
fn real_prometheus_operator_starts_the_config_reloader() {
    const F: &str = "prometheus-operator/prometheusOperator-deployment.yaml";
    use Rule::*;
    assert_eq!(
        images(&real(F)),
        vec![
            one(
                "quay.io/brancz/kube-rbac-proxy:v0.13.1",
                &[(F, 56, PodSpec)]
            ),
            one(
                "quay.io/prometheus-operator/prometheus-config-reloader:v0.60.1",
                &[(F, 32, Arg)]
            ),
            one(
                "quay.io/prometheus-operator/prometheus-operator:v0.60.1",
                &[(F, 33, PodSpec)]
            ),
        ]
    );
}

#[test]
fn real_argo_workflow_controller_starts_the_executor() {
    const F: &str = "argo-workflows/workflow-controller-deployment.yaml";
    use Rule::*;
    assert_eq!(
        images(&real(F)),
        vec![
            one("docker.io/argoproj/argoexec:v3.0.10", &[(F, 28, Arg)]),
            one(
                "docker.io/argoproj/workflow-controller:v3.0.10",
                &[(F, 17, PodSpec)]
            ),
        ]
    );
}
