//! The build engine against a real store on a temporary directory: cache reuse, rebuild
//! boundaries, reproducibility, context confinement, RUN whiteouts, multi-platform, skopeo.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, SystemTime};

use flate2::read::GzDecoder;
use sealer_builder::engine::{
    BuildError, BuildMode, BuildOptions, BuildReport, HookError, ImageExtension, LayerCompression,
    NoObserver, StepOutcome, build,
};
use sealer_builder::kubefile::parse;
use sealer_fs_abstraction::tar::{UnpackOptions, unpack};
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::{ManifestDocument, Platform, Reference, Store};

/// A build context on a temporary directory.
struct Context {
    dir: tempfile::TempDir,
    fs: RealFs,
}

impl Context {
    fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = RealFs::open_root(dir.path()).expect("open context");
        let context = Self { dir, fs };
        for (path, content) in files {
            context.write(path, content);
        }
        context
    }

    fn write(&self, path: &str, content: &str) {
        let path = Path::new(path);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.fs.create_dir_all(parent).expect("mkdir");
        }
        self.fs
            .write_atomic(path, content.as_bytes())
            .expect("write");
    }

    /// Sets every file's mtime to `seconds` since the epoch.
    fn touch_all(&self, seconds: u64) {
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        for entry in self.fs.walk(Path::new(".")).expect("walk") {
            self.fs.set_modified(&entry.path, time).expect("set mtime");
        }
    }
}

struct TestStore {
    dir: tempfile::TempDir,
    store: Store,
}

fn store() -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_dir(dir.path()).expect("store");
    TestStore { dir, store }
}

fn tag(name: &str) -> Reference {
    name.parse().expect("reference")
}

fn options(tags: &[&str]) -> BuildOptions<'static> {
    BuildOptions {
        tags: tags.iter().map(|t| tag(t)).collect(),
        // The images of these manifests are not pulled (tests/deps.rs covers full mode).
        build_mode: BuildMode::Lite,
        ..BuildOptions::default()
    }
}

fn try_build(
    store: &Store,
    context: &Context,
    kubefile: &str,
    options: &BuildOptions<'_>,
) -> Result<BuildReport, BuildError> {
    let kubefile = parse(kubefile, "Kubefile").expect("parse");
    build(&kubefile, &context.fs, store, options, &mut NoObserver)
}

fn run_build(store: &Store, context: &Context, kubefile: &str, tags: &[&str]) -> BuildReport {
    try_build(store, context, kubefile, &options(tags)).expect("build")
}

/// The outcome of each layer step: `true` when cached.
fn layer_outcomes(report: &BuildReport) -> Vec<bool> {
    report
        .steps
        .iter()
        .filter_map(|(_, outcome)| match outcome {
            StepOutcome::Cached => Some(true),
            StepOutcome::Built(_) => Some(false),
            StepOutcome::Metadata(_) => None,
        })
        .collect()
}

/// Every blob file of the store.
fn blob_files(store: &TestStore) -> BTreeSet<String> {
    let fs = RealFs::open_root(store.dir.path()).expect("open store");
    fs.walk(Path::new("blobs"))
        .expect("walk")
        .into_iter()
        .map(|entry| entry.path.display().to_string())
        .collect()
}

const THREE_COPIES: &str = "\
FROM scratch
COPY a /a
COPY b /b
COPY c /c
";

fn abc() -> Context {
    Context::new(&[("a", "A"), ("b", "B"), ("c", "C")])
}

#[test]
fn a_no_op_rebuild_reuses_every_layer() {
    let store = store();
    let context = abc();
    let first = run_build(&store.store, &context, THREE_COPIES, &["x:1"]);
    assert_eq!(layer_outcomes(&first), vec![false, false, false]);
    assert_eq!(first.layers_built, 3);
    let blobs = blob_files(&store);
    let second = run_build(&store.store, &context, THREE_COPIES, &["x:1"]);
    assert_eq!(layer_outcomes(&second), vec![true, true, true]);
    assert_eq!(second.layers_built, 0);
    assert_eq!(second.descriptor.digest, first.descriptor.digest);
    assert_eq!(blob_files(&store), blobs, "no blob was written");
}

#[test]
fn no_cache_rebuilds_to_the_same_digest() {
    let store = store();
    let context = abc();
    let first = run_build(&store.store, &context, THREE_COPIES, &["x:1"]);
    let mut opts = options(&["x:1"]);
    opts.no_cache = true;
    let second = try_build(&store.store, &context, THREE_COPIES, &opts).expect("build");
    assert_eq!(layer_outcomes(&second), vec![false, false, false]);
    assert_eq!(second.descriptor.digest, first.descriptor.digest);
}

#[test]
fn a_changed_copy_source_rebuilds_that_layer_and_the_later_ones_only() {
    let store = store();
    let context = abc();
    let first = run_build(&store.store, &context, THREE_COPIES, &["x:1"]);
    context.write("b", "B2");
    let second = run_build(&store.store, &context, THREE_COPIES, &["x:1"]);
    assert_eq!(layer_outcomes(&second), vec![true, false, false]);
    assert_ne!(second.descriptor.digest, first.descriptor.digest);
}

#[test]
fn a_different_base_rebuilds_every_layer() {
    let store = store();
    let base_context = Context::new(&[("base.txt", "one")]);
    run_build(
        &store.store,
        &base_context,
        "FROM scratch\nCOPY base.txt /\n",
        &["base:1"],
    );
    let context = abc();
    let child = "FROM base:1\nCOPY a /a\nCOPY b /b\n";
    let first = run_build(&store.store, &context, child, &["child:1"]);
    assert_eq!(layer_outcomes(&first), vec![false, false]);
    assert_eq!(
        layer_outcomes(&run_build(&store.store, &context, child, &["child:1"])),
        vec![true, true]
    );
    base_context.write("base.txt", "two");
    run_build(
        &store.store,
        &base_context,
        "FROM scratch\nCOPY base.txt /\n",
        &["base:1"],
    );
    let rebuilt = run_build(&store.store, &context, child, &["child:1"]);
    assert_eq!(layer_outcomes(&rebuilt), vec![false, false]);
    assert_ne!(rebuilt.descriptor.digest, first.descriptor.digest);
}

#[test]
fn two_stores_and_different_mtimes_give_the_same_digest() {
    let kubefile = "FROM scratch\nCOPY manifests /manifests/\nLABEL k=v\nCOPY a b /x/\n";
    let files = [
        ("manifests/app.yaml", "kind: Pod\n"),
        ("a", "A"),
        ("b", "B"),
    ];
    let one = Context::new(&files);
    one.touch_all(1_000_000);
    let two = Context::new(&files);
    two.touch_all(2_000_000_000);
    let first = run_build(&store().store, &one, kubefile, &["r:1"]);
    let second = run_build(&store().store, &two, kubefile, &["r:1"]);
    assert_eq!(first.descriptor.digest, second.descriptor.digest);
    let mut opts = options(&["r:1"]);
    opts.source_date_epoch = Some(1_700_000_000);
    let dated = try_build(&store().store, &one, kubefile, &opts).expect("build");
    assert_ne!(
        dated.descriptor.digest, first.descriptor.digest,
        "SOURCE_DATE_EPOCH counts"
    );
}

#[test]
fn sources_outside_the_context_are_refused() {
    let outer = tempfile::tempdir().expect("tempdir");
    let outer_fs = RealFs::open_root(outer.path()).expect("open");
    outer_fs
        .write_atomic(Path::new("secret"), b"s")
        .expect("write");
    outer_fs.create_dir_all(Path::new("ctx")).expect("mkdir");
    outer_fs
        .write_atomic(Path::new("ctx/ok"), b"ok")
        .expect("write");
    outer_fs
        .symlink(Path::new("../secret"), Path::new("ctx/up"))
        .expect("symlink");
    let secret_abs = outer.path().join("secret");
    outer_fs
        .symlink(&secret_abs, Path::new("ctx/abs"))
        .expect("symlink");
    let context = Context {
        fs: RealFs::open_root(outer.path().join("ctx")).expect("open ctx"),
        dir: outer,
    };
    let store = store();
    for (kubefile, source) in [
        ("FROM scratch\nCOPY ../secret /x\n", "../secret"),
        ("FROM scratch\nCOPY up /x\n", "up"),
        ("FROM scratch\nCOPY abs /x\n", "abs"),
        ("FROM scratch\nCOPY ok /\nAPP a local://up\n", "up"),
    ] {
        let error = try_build(&store.store, &context, kubefile, &options(&["e:1"]))
            .expect_err(kubefile)
            .to_string();
        assert!(
            error.contains("is not inside the build context") && error.contains(source),
            "{kubefile}: {error}"
        );
        assert!(error.starts_with("Kubefile:"), "names the step: {error}");
    }
    assert!(
        store.store.images().expect("images").is_empty(),
        "a failed build names nothing"
    );
    let _ = &context.dir;
}

#[test]
fn missing_sources_and_globs() {
    let store = store();
    let context = Context::new(&[("m/a.yaml", "a"), ("m/b.yaml", "b"), ("m/c.txt", "c")]);
    let error = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY nope /x\n",
        &options(&[]),
    )
    .expect_err("missing")
    .to_string();
    assert!(error.contains("does not exist"), "{error}");
    let error = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY m/*.yaml /x\n",
        &options(&[]),
    )
    .expect_err("two sources need a dir")
    .to_string();
    assert!(
        error.contains("directory destination ending with /"),
        "{error}"
    );
    let report = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY m/*.yaml /x/\n",
        &options(&["g:1"]),
    )
    .expect("glob build");
    let root = unpacked(&store.store, &report.descriptor.digest.to_string());
    let fs = RealFs::open_root(root.path()).expect("open");
    assert!(fs.exists(Path::new("x/a.yaml")).expect("stat"));
    assert!(fs.exists(Path::new("x/b.yaml")).expect("stat"));
    assert!(!fs.exists(Path::new("x/c.txt")).expect("stat"));
}

#[test]
fn a_file_copied_onto_an_image_directory_goes_into_it() {
    let store = store();
    let context = Context::new(&[("bin/sh", "sh"), ("tool", "t"), ("extra.yaml", "x")]);
    run_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY bin /bin\n",
        &["base:1"],
    );
    let kubefile = "FROM base:1\nCOPY tool /bin\nCOPY extra.yaml /manifests/\nCOPY tool manifests\nCOPY tool /single\n";
    let report = run_build(&store.store, &context, kubefile, &["child:1"]);
    let root = unpacked(&store.store, &report.descriptor.digest.to_string());
    let fs = RealFs::open_root(root.path()).expect("open");
    assert_eq!(fs.read(Path::new("bin/tool")).expect("bin/tool"), b"t");
    assert_eq!(fs.read(Path::new("bin/sh")).expect("bin/sh"), b"sh");
    assert_eq!(
        fs.read(Path::new("manifests/tool"))
            .expect("manifests/tool"),
        b"t"
    );
    assert_eq!(
        fs.read(Path::new("single")).expect("a new name is a file"),
        b"t"
    );
}

/// Unpacks every layer of `reference` (host platform) with whiteouts into a temp dir.
fn unpacked(store: &Store, reference: &str) -> tempfile::TempDir {
    let resolved = store.resolve(reference, None).expect("resolve");
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = RealFs::open_root(dir.path()).expect("open");
    let options = UnpackOptions {
        whiteouts: true,
        skip_special: true,
        preserve_mtime: false,
    };
    for layer in &resolved.manifest.layers {
        let blob = store.read_verified(&layer.digest).expect("layer");
        unpack(
            &fs,
            Path::new("."),
            GzDecoder::new(blob.as_slice()),
            &options,
        )
        .expect("unpack");
    }
    dir
}

fn layer_names(store: &Store, digest: &sealer_image_store::Digest) -> Vec<String> {
    let blob = store.read_verified(digest).expect("layer");
    let mut archive = tar::Archive::new(GzDecoder::new(blob.as_slice()));
    archive
        .entries()
        .expect("entries")
        .map(|entry| {
            entry
                .expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect()
}

#[test]
fn a_run_that_deletes_a_base_file_yields_a_whiteout() {
    let store = store();
    let context = Context::new(&[("etc/passwd", "root:x:0:0\n"), ("etc/keep", "k")]);
    run_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY etc /etc\n",
        &["base:1"],
    );
    let kubefile =
        "FROM base:1\nENV GREETING=hello\nRUN rm etc/passwd && echo \"$GREETING\" > etc/new\n";
    let report = run_build(&store.store, &context, kubefile, &["child:1"]);
    let resolved = store.store.resolve("child:1", None).expect("resolve");
    let run_layer = &resolved.manifest.layers[1];
    let names = layer_names(&store.store, &run_layer.digest);
    assert!(names.contains(&"etc/.wh.passwd".to_owned()), "{names:?}");
    assert!(names.contains(&"etc/new".to_owned()), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "etc/keep"),
        "unchanged files stay out: {names:?}"
    );
    let root = unpacked(&store.store, &report.descriptor.digest.to_string());
    let fs = RealFs::open_root(root.path()).expect("open");
    assert!(
        !fs.exists(Path::new("etc/passwd")).expect("stat"),
        "the whiteout hides it"
    );
    assert_eq!(fs.read(Path::new("etc/new")).expect("new"), b"hello\n");
    assert_eq!(fs.read(Path::new("etc/keep")).expect("keep"), b"k");
    // A no-op rebuild takes the RUN layer from the cache.
    let again = run_build(&store.store, &context, kubefile, &["child:1"]);
    assert_eq!(layer_outcomes(&again), vec![true]);
    assert_eq!(again.descriptor.digest, report.descriptor.digest);
}

#[test]
fn a_run_layer_holds_exactly_the_changes() {
    let store = store();
    let context = Context::new(&[
        ("opt/tree/a", "a"),
        ("opt/tree/sub/b", "b"),
        ("opt/script", "echo"),
        ("opt/same", "same"),
    ]);
    run_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY opt /opt\n",
        &["base:1"],
    );
    let kubefile = "FROM base:1\nRUN rm -r opt/tree && chmod 0755 opt/script && ln -s /etc/os-release opt/link && mkdir -p opt/new/dir\n";
    run_build(&store.store, &context, kubefile, &["child:1"]);
    let resolved = store.store.resolve("child:1", None).expect("resolve");
    let names = layer_names(&store.store, &resolved.manifest.layers[1].digest);
    assert_eq!(
        names,
        vec![
            "opt/",
            "opt/.wh.tree",
            "opt/link",
            "opt/new/",
            "opt/new/dir/",
            "opt/script"
        ],
        "one whiteout for the deleted tree, the mode change, the new link and dirs"
    );
    let root = unpacked(&store.store, "child:1");
    let fs = RealFs::open_root(root.path()).expect("open");
    assert!(!fs.exists(Path::new("opt/tree")).expect("stat"));
    assert_eq!(
        fs.read_link(Path::new("opt/link")).expect("link"),
        Path::new("/etc/os-release"),
        "absolute symlinks are stored verbatim"
    );
    assert_eq!(
        fs.symlink_metadata(Path::new("opt/script"))
            .expect("stat")
            .mode
            & 0o777,
        0o755
    );
}

#[test]
fn a_failing_run_names_its_step_and_changes_nothing() {
    let store = store();
    let context = Context::new(&[("a", "A")]);
    let error = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY a /a\nRUN exit 3\n",
        &options(&["f:1"]),
    )
    .expect_err("fails")
    .to_string();
    assert!(error.starts_with("Kubefile:3:1: RUN failed"), "{error}");
    assert!(store.store.images().expect("images").is_empty());
}

const APP_KUBEFILE: &str = r#"FROM scratch
KUBEVERSION >=1.20.0
COPY manifests /manifests/
APP nginx local://charts/nginx
APP web local://web.yaml
CNI calico local://calico.yaml
APPENV web MODE=prod
LAUNCH ["nginx", "web"]
"#;

fn app_context() -> Context {
    Context::new(&[
        ("manifests/ns.yaml", "kind: Namespace\n"),
        ("charts/nginx/Chart.yaml", "name: nginx\n"),
        ("charts/nginx/values.yaml", "image: nginx\n"),
        (
            "charts/nginx/templates/deployment.yaml",
            "kind: Deployment\n",
        ),
        ("web.yaml", "kind: Deployment\n"),
        ("calico.yaml", "kind: DaemonSet\n"),
    ])
}

#[test]
fn apps_labels_and_the_sealer_extension() {
    let store = store();
    let context = app_context();
    let report = run_build(&store.store, &context, APP_KUBEFILE, &["apps:1"]);
    let resolved = store.store.resolve("apps:1", None).expect("resolve");
    let extension = ImageExtension::of_manifest(&resolved.manifest)
        .expect("annotated")
        .expect("valid");
    let apps: Vec<(&str, &str)> = extension
        .applications
        .iter()
        .map(|app| (app.name.as_str(), app.app_type.as_str()))
        .collect();
    assert_eq!(
        apps,
        vec![("nginx", "helm"), ("web", "kube"), ("calico", "kube")]
    );
    assert_eq!(extension.launch.app_names, vec!["nginx", "web"]);
    assert_eq!(
        extension.applications[0].cmds,
        vec!["helm install nginx application/apps/nginx"]
    );
    assert_eq!(
        extension.applications[1]
            .env
            .get("MODE")
            .map(String::as_str),
        Some("prod")
    );
    let config: serde_json::Value = serde_json::from_slice(
        &store
            .store
            .read_verified(&resolved.manifest.config.digest)
            .expect("config"),
    )
    .expect("json");
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["cluster.alpha.sealer.io/kube-cni-calico"], "true");
    assert_eq!(
        labels["app.alpha.sealer.io/supported-kube-version"],
        ">=1.20.0"
    );
    let root = unpacked(&store.store, &report.descriptor.digest.to_string());
    let fs = RealFs::open_root(root.path()).expect("open");
    for path in [
        "manifests/ns.yaml",
        "application/apps/nginx/Chart.yaml",
        "application/apps/nginx/templates/deployment.yaml",
        "application/apps/web/web.yaml",
    ] {
        assert!(fs.exists(Path::new(path)).expect("stat"), "{path}");
    }
    // A child inherits the apps: LAUNCH may name them.
    let child = run_build(
        &store.store,
        &context,
        "FROM apps:1\nLAUNCH [\"calico\"]\n",
        &["child:1"],
    );
    let resolved = store.store.resolve("child:1", None).expect("resolve");
    let extension = ImageExtension::of_manifest(&resolved.manifest)
        .expect("annotated")
        .expect("valid");
    assert_eq!(extension.applications.len(), 3);
    assert_eq!(extension.launch.app_names, vec!["calico"]);
    assert_eq!(child.layers_built, 0);
}

#[test]
fn remote_app_sources_come_through_the_fetch_hook_and_key_on_their_content() {
    let store = store();
    let context = Context::new(&[("local.yaml", "kind: Service\n")]);
    let kubefile = "FROM scratch\nAPP web local://local.yaml https://example.com/m/web.yaml?v=1\nLAUNCH [\"web\"]\n";
    let error = try_build(&store.store, &context, kubefile, &options(&["w:1"]))
        .expect_err("no fetch hook")
        .to_string();
    assert!(
        error.contains("cannot be downloaded by this build"),
        "{error}"
    );
    let content = std::cell::RefCell::new(b"kind: Deployment\n".to_vec());
    let fetch = |url: &str, into: &mut dyn std::io::Write| -> Result<(), HookError> {
        assert_eq!(url, "https://example.com/m/web.yaml?v=1");
        Ok(into.write_all(&content.borrow())?)
    };
    let mut opts = options(&["w:1"]);
    opts.fetch = Some(&fetch);
    let first = try_build(&store.store, &context, kubefile, &opts).expect("build");
    assert_eq!(layer_outcomes(&first), vec![false]);
    let resolved = store.store.resolve("w:1", None).expect("resolve");
    let extension = ImageExtension::of_manifest(&resolved.manifest)
        .expect("annotated")
        .expect("valid");
    assert_eq!(extension.applications[0].app_type, "kube");
    assert_eq!(
        extension.applications[0].launchfiles,
        vec!["local.yaml", "web.yaml"]
    );
    let again = try_build(&store.store, &context, kubefile, &opts).expect("build");
    assert_eq!(layer_outcomes(&again), vec![true], "same content: cached");
    *content.borrow_mut() = b"kind: StatefulSet\n".to_vec();
    let changed = try_build(&store.store, &context, kubefile, &opts).expect("build");
    assert_eq!(
        layer_outcomes(&changed),
        vec![false],
        "new content: rebuilt"
    );
    let root = unpacked(&store.store, "w:1");
    let fs = RealFs::open_root(root.path()).expect("open");
    assert_eq!(
        fs.read(Path::new("application/apps/web/web.yaml"))
            .expect("downloaded"),
        b"kind: StatefulSet\n"
    );
}

#[test]
fn add_extracts_archives_and_downloads_urls() {
    let store = store();
    let context = Context::new(&[("notes.txt", "n")]);
    // A gzipped tar made with the tar crate, written into the context.
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(5);
    header.set_mode(0o755);
    header.set_cksum();
    builder
        .append_data(&mut header, "bin/kubectl", &b"#!/sh"[..])
        .expect("append");
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    let gz = gz.finish().expect("gzip");
    context
        .fs
        .write_atomic(Path::new("tools.tar.gz"), &gz)
        .expect("write");
    let fetch = |url: &str, into: &mut dyn std::io::Write| -> Result<(), HookError> {
        assert_eq!(url, "https://example.com/calico.yaml");
        Ok(into.write_all(b"kind: DaemonSet\n")?)
    };
    let mut opts = options(&["add:1"]);
    opts.fetch = Some(&fetch);
    let kubefile = "FROM scratch\nADD tools.tar.gz /opt\nADD notes.txt https://example.com/calico.yaml /docs/\n";
    let report = try_build(&store.store, &context, kubefile, &opts).expect("build");
    let root = unpacked(&store.store, &report.descriptor.digest.to_string());
    let fs = RealFs::open_root(root.path()).expect("open");
    assert_eq!(
        fs.read(Path::new("opt/bin/kubectl")).expect("extracted"),
        b"#!/sh"
    );
    assert_eq!(
        fs.symlink_metadata(Path::new("opt/bin/kubectl"))
            .expect("stat")
            .mode
            & 0o777,
        0o755
    );
    assert_eq!(fs.read(Path::new("docs/notes.txt")).expect("copied"), b"n");
    assert_eq!(
        fs.read(Path::new("docs/calico.yaml")).expect("downloaded"),
        b"kind: DaemonSet\n"
    );
    let again = try_build(&store.store, &context, kubefile, &opts).expect("build");
    assert_eq!(layer_outcomes(&again), vec![true, true]);
    let error = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY https://example.com/calico.yaml /x\n",
        &opts,
    )
    .expect_err("COPY of a URL")
    .to_string();
    assert!(error.contains("COPY cannot download a URL"), "{error}");
}

/// A plain tar of `entries`: (path, entry type, content).
fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(*kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, path, *data)
            .expect("append");
    }
    builder.into_inner().expect("tar")
}

#[test]
fn add_refuses_whiteout_names_in_archives() {
    let store = store();
    let context = Context::new(&[("etc/keep.conf", "base")]);
    context
        .fs
        .write_atomic(
            Path::new("patch.tar"),
            &tar_of(&[
                ("etc/new.conf", tar::EntryType::Regular, b"new"),
                ("etc/.wh.keep.conf", tar::EntryType::Regular, b""),
            ]),
        )
        .expect("write");
    run_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY etc /etc\n",
        &["base:1"],
    );
    let blobs = blob_files(&store);
    let error = try_build(
        &store.store,
        &context,
        "FROM base:1\nADD patch.tar /\n",
        &options(&["patched:1"]),
    )
    .expect_err("a whiteout in an ADDed archive")
    .to_string();
    assert!(
        error.contains("ADD patch.tar") && error.contains("etc/.wh.keep.conf"),
        "{error}"
    );
    assert!(error.contains("whiteout"), "{error}");
    assert!(store.store.lookup("patched:1").is_err());
    assert_eq!(blob_files(&store), blobs, "a failed build stores nothing");
}

#[test]
fn add_skips_special_files_of_archives_with_a_warning_each() {
    let store = store();
    let context = Context::new(&[]);
    context
        .fs
        .write_atomic(
            Path::new("dev.tar"),
            &tar_of(&[
                ("opt/tool", tar::EntryType::Regular, b"bin"),
                ("opt/pipe", tar::EntryType::Fifo, b""),
                ("dev/null", tar::EntryType::Char, b""),
                ("dev/sda", tar::EntryType::Block, b""),
            ]),
        )
        .expect("write");
    let report = try_build(
        &store.store,
        &context,
        "FROM scratch\nADD dev.tar /\n",
        &options(&["dev:1"]),
    )
    .expect("build");
    for name in ["opt/pipe", "dev/null", "dev/sda"] {
        assert_eq!(
            report
                .warnings
                .iter()
                .filter(|warning| warning.contains(name) && warning.contains("ADD dev.tar"))
                .count(),
            1,
            "{name}: {:?}",
            report.warnings
        );
    }
    assert_eq!(report.warnings.len(), 3, "{:?}", report.warnings);
    let layer = &store
        .store
        .resolve("dev:1", None)
        .expect("resolve")
        .manifest
        .layers[0];
    let names = layer_names(&store.store, &layer.digest);
    assert!(
        names.iter().any(|name| name.ends_with("opt/tool")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|name| name.ends_with("pipe") || name.ends_with("null") || name.ends_with("sda")),
        "{names:?}"
    );
}

#[test]
fn several_platforms_make_an_index_and_foreign_runs_fail() {
    let store = store();
    let context = Context::new(&[("bin/amd64/tool", "x86"), ("bin/arm64/tool", "arm")]);
    let mut opts = options(&["multi:1"]);
    opts.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let report = try_build(
        &store.store,
        &context,
        "FROM scratch\nCOPY bin /all/\nCOPY bin/${ARCH}/tool /bin/tool\n",
        &opts,
    )
    .expect("build");
    assert_eq!(
        layer_outcomes(&report),
        vec![false, false, true, false],
        "the second platform reuses the layer of the step without ${{ARCH}}"
    );
    let entry = store.store.lookup("multi:1").expect("lookup");
    let ManifestDocument::Index(index) =
        store.store.read_manifest(&entry.descriptor).expect("read")
    else {
        panic!("expected an index");
    };
    assert_eq!(index.manifests.len(), 2);
    assert_eq!(report.manifests.len(), 2);
    assert_ne!(report.manifests[0].1.digest, report.manifests[1].1.digest);
    let host = Platform::host();
    let foreign = if host.architecture == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    opts.platforms = vec![Platform::new("linux", foreign, None)];
    let error = try_build(&store.store, &context, "FROM scratch\nRUN true\n", &opts)
        .expect_err("foreign RUN")
        .to_string();
    assert!(error.contains("RUN runs on the build host"), "{error}");
}

#[test]
fn zstd_layers_are_reproducible_and_run_reads_them() {
    let context = Context::new(&[("etc/passwd", "root\n"), ("a", "A")]);
    let kubefile = "FROM scratch\nCOPY etc /etc\nRUN rm etc/passwd\n";
    let mut opts = options(&["z:1"]);
    opts.compression = LayerCompression::Zstd;
    let one = store();
    let first = try_build(&one.store, &context, kubefile, &opts).expect("build");
    let second = try_build(&store().store, &context, kubefile, &opts).expect("build");
    assert_eq!(first.descriptor.digest, second.descriptor.digest);
    let resolved = one.store.resolve("z:1", None).expect("resolve");
    assert!(
        resolved
            .manifest
            .layers
            .iter()
            .all(|layer| layer.media_type == "application/vnd.oci.image.layer.v1.tar+zstd")
    );
    let gzip = try_build(&one.store, &context, kubefile, &options(&["g:1"])).expect("build");
    assert_eq!(
        layer_outcomes(&gzip),
        vec![false, false],
        "the compression is in the key"
    );
    assert_ne!(gzip.descriptor.digest, first.descriptor.digest);
}

#[test]
fn skopeo_reads_the_result() {
    if !sealer_test_harness::require_tool("skopeo") {
        return;
    }
    let store = store();
    let context = app_context();
    run_build(&store.store, &context, APP_KUBEFILE, &["localhost/apps:v1"]);
    let location = format!("oci:{}:localhost/apps:v1", store.dir.path().display());
    let output = std::process::Command::new("skopeo")
        .args(["inspect", &location])
        .output()
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        inspected["Labels"]["cluster.alpha.sealer.io/kube-cni-calico"],
        "true"
    );
    let mut raw = Vec::new();
    std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &location])
        .output()
        .expect("run skopeo")
        .stdout
        .as_slice()
        .read_to_end(&mut raw)
        .expect("read");
    assert!(String::from_utf8_lossy(&raw).contains("sealer.image.extension"));
}

/// FROM a multi-arch image the store holds for other platforms only: pulled for the
/// platform when a pull is possible, else an error naming the platforms it carries.
#[test]
fn a_base_without_the_platform_is_pulled_or_named_with_its_carried_platforms() {
    let store = store();
    let mut spec =
        sealer_image_store::testing::ImageSpec::new("docker.io/library/base:1", &[100], 7);
    spec.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let top = sealer_image_store::testing::write_image(&store.store, &spec).expect("base");
    let ManifestDocument::Index(index) = store.store.read_manifest(&top).expect("index") else {
        panic!("not an index");
    };
    let arm64 = &index.manifests[1];
    assert_eq!(
        arm64.platform.as_ref().expect("platform").architecture,
        "arm64"
    );
    // Removed by hand: what a pull of amd64 only leaves.
    let hex = arm64.digest.to_string().replace("sha256:", "");
    #[allow(clippy::disallowed_methods)]
    std::fs::remove_file(store.dir.path().join("blobs/sha256").join(hex)).expect("remove");

    let context = abc();
    let kubefile = "FROM base:1\nCOPY a /a\n";
    let mut options = options(&["child:1"]);
    options.platforms = vec![Platform::new("linux", "arm64", None)];
    let error = try_build(&store.store, &context, kubefile, &options)
        .expect_err("no pull, no arm64")
        .to_string();
    assert!(
        error.contains("does not carry it") && error.contains("it carries: linux/amd64"),
        "{error}"
    );
    let asked = std::sync::Mutex::new(Vec::new());
    let pull = |reference: &str, platform: &Platform| -> Result<(), HookError> {
        asked
            .lock()
            .expect("lock")
            .push(format!("{reference} {platform}"));
        Err("offline".into())
    };
    options.pull = Some(&pull);
    let error = try_build(&store.store, &context, kubefile, &options).expect_err("the pull fails");
    // The hook's own error is the source, printed with the chain.
    let error = sealer_registry_client::error_chain(&error);
    assert!(error.contains("offline"), "{error}");
    assert_eq!(*asked.lock().expect("lock"), ["base:1 linux/arm64"]);
}
