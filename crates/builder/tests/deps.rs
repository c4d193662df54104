//! Dependency images (`--build-mode full`): the images the manifests name are pulled into the
//! store and carried in one `registry/` layer (an OCI layout keyed by full references), listed
//! in the `sealer.image.container.images` annotation; a rebuild downloads nothing.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::Duration;

use sealer_builder::engine::{
    BuildMode, BuildOptions, BuildReport, CONTAINER_IMAGES_ANNOTATION, ContainerImage, HookError,
    ImageListFile, NoObserver, ScanOptions, build, container_images, plan_images,
};
use sealer_builder::kubefile::parse;
use sealer_fs_abstraction::tar::{UnpackOptions, unpack};
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::model::PARTIAL_ANNOTATION;
use sealer_image_store::{
    EMBEDDED_LAYOUT_ANNOTATION, Manifest, ManifestDocument, Platform, Reference, Store,
    load_embedded,
};
use sealer_registry_client::{
    ClientOptions, CredentialStore, NoProgress, PlatformSelection, RegistryClient,
};
use sealer_test_harness::{ImageSpec, Registry, RegistryOptions, require_tools, seed_image};

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

/// Builds `kubefile` in `context` into `store` as `localhost/deps:1`, pulling with a real
/// registry client.
fn build_with(store: &Store, context: &RealFs, mode: BuildMode) -> BuildReport {
    build_file(
        store,
        context,
        mode,
        "FROM scratch\nCOPY manifests /manifests/\nCOPY imageList /imageList\n",
        "localhost/deps:1",
    )
}

/// Builds `kubefile` as `tag` for amd64, pulling with a real registry client.
fn build_file(
    store: &Store,
    context: &RealFs,
    mode: BuildMode,
    kubefile: &str,
    tag: &str,
) -> BuildReport {
    build_for(store, context, mode, kubefile, tag, vec![amd64()])
}

/// Builds `kubefile` as `tag` for `platforms`, pulling with a real registry client.
fn build_for(
    store: &Store,
    context: &RealFs,
    mode: BuildMode,
    kubefile: &str,
    tag: &str,
    platforms: Vec<Platform>,
) -> BuildReport {
    build_scanning(
        store,
        context,
        mode,
        kubefile,
        tag,
        platforms,
        ScanOptions::default(),
    )
}

/// [`build_for`] with the image scan's options (`--image-list`, `--ignored-image-list`).
fn build_scanning(
    store: &Store,
    context: &RealFs,
    mode: BuildMode,
    kubefile: &str,
    tag: &str,
    platforms: Vec<Platform>,
    scan: ScanOptions,
) -> BuildReport {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        read_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .unwrap();
    let pull = |reference: &str, platform: &Platform| -> Result<(), HookError> {
        let image: Reference = reference.parse()?;
        runtime.block_on(client.pull(
            store,
            &image,
            PlatformSelection::Only(platform.clone()),
            &NoProgress,
        ))?;
        Ok(())
    };
    let kubefile = parse(kubefile, "Kubefile").unwrap();
    let options = BuildOptions {
        tags: vec![tag.parse().unwrap()],
        platforms,
        pull: Some(&pull),
        build_mode: mode,
        scan,
        ..BuildOptions::default()
    };
    build(&kubefile, context, store, &options, &mut NoObserver).expect("build")
}

fn manifest(store: &Store, report: &BuildReport) -> Manifest {
    match store.read_manifest(&report.descriptor).unwrap() {
        ManifestDocument::Image(manifest) => *manifest,
        ManifestDocument::Index(_) => panic!("one platform makes a manifest"),
    }
}

#[test]
fn manifests_images_are_carried_in_a_registry_layer() {
    require_tools!("docker-registry", "skopeo");
    let a = Registry::start(RegistryOptions::anonymous()).unwrap();
    let b = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded_a = seed_image(
        &a.host(),
        "team/app:1",
        &ImageSpec::new("unused:1", &[4096, 20_000], 1),
        None,
    )
    .unwrap();
    // B's is multi-arch: the cluster image keeps its index (clients pin that digest).
    let mut spec_b = ImageSpec::new("unused:1", &[8192], 2);
    spec_b.platforms.push(Platform::new("linux", "arm64", None));
    let seeded_b = seed_image(&b.host(), "team/app:1", &spec_b, None).unwrap();
    assert_ne!(seeded_a.manifest_digest, seeded_b.manifest_digest);
    let ref_a = format!("{}/team/app:1", a.host());
    let ref_b = format!("{}/team/app:1", b.host());

    let context_dir = tempfile::tempdir().unwrap();
    let context = RealFs::open_root(context_dir.path()).unwrap();
    context.create_dir_all(Path::new("manifests")).unwrap();
    context
        .write_atomic(
            Path::new("manifests/app.yaml"),
            format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n      - name: a\n        image: {ref_a}\n      - name: b\n        image: \"{ref_b}\"\n"
            )
            .as_bytes(),
        )
        .unwrap();
    context
        .write_atomic(
            Path::new("imageList"),
            format!("# again\n{ref_a}\n").as_bytes(),
        )
        .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();

    let first = build_with(&store, &context, BuildMode::Full);
    let image = manifest(&store, &first);
    assert_eq!(
        image.layers.len(),
        3,
        "two COPY layers and the registry layer"
    );
    assert!(a.blob_gets(None) > 0 && b.blob_gets(None) > 0);

    // The annotation lists both, with their full references.
    let listed = container_images(&image).unwrap();
    let mut expected: Vec<ContainerImage> = [&ref_a, &ref_b]
        .iter()
        .map(|image| ContainerImage {
            image: (*image).clone(),
            app_name: String::new(),
            platform: "linux/amd64".to_owned(),
        })
        .collect();
    expected.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    assert!(image.annotations.contains_key(CONTAINER_IMAGES_ANNOTATION));

    // The registry layer is an OCI layout holding both refs, digests as seeded.
    let layer = image.layers.last().unwrap();
    let unpacked = tempfile::tempdir().unwrap();
    let target = RealFs::open_root(unpacked.path()).unwrap();
    let blob = store.fs().open(&layer.digest.blob_path()).unwrap();
    let options = UnpackOptions {
        whiteouts: true,
        skip_special: true,
        preserve_mtime: false,
    };
    // A plain tar: the blobs in it are compressed already.
    assert_eq!(layer.media_type, "application/vnd.oci.image.layer.v1.tar");
    unpack(&target, Path::new("."), blob, &options).unwrap();
    let layout = Store::open_dir(&unpacked.path().join("registry")).unwrap();
    assert_eq!(
        layer
            .annotations
            .get(EMBEDDED_LAYOUT_ANNOTATION)
            .map(String::as_str),
        Some("registry")
    );
    for (reference, seeded) in [(&ref_a, &seeded_a), (&ref_b, &seeded_b)] {
        let resolved = layout.resolve(reference, Some(&amd64())).unwrap();
        assert_eq!(resolved.top.digest.to_string(), seeded.manifest_digest);
        assert_eq!(
            resolved.manifest_descriptor.digest.to_string(),
            seeded.platforms[0].manifest_digest
        );
        // Only the build platform is carried: a multi-arch entry says it is partial.
        assert_eq!(
            resolved.top.annotations.contains_key(PARTIAL_ANNOTATION),
            seeded.platforms.len() > 1
        );
        layout
            .read_verified(&resolved.manifest_descriptor.digest)
            .unwrap();
        layout
            .read_verified(&resolved.manifest.config.digest)
            .unwrap();
        for layer in &resolved.manifest.layers {
            layout.read_verified(&layer.digest).unwrap();
        }
    }
    let names: Vec<String> = layout
        .index()
        .unwrap()
        .manifests
        .iter()
        .filter_map(|entry| entry.ref_name().map(str::to_owned))
        .collect();
    let mut both = vec![ref_a.clone(), ref_b.clone()];
    both.sort();
    assert_eq!(names, both, "index entries sorted by reference");

    // `load_embedded` imports them into an empty store under their source names.
    let served_dir = tempfile::tempdir().unwrap();
    let served = Store::open_dir(served_dir.path()).unwrap();
    let loaded = load_embedded(&store, "localhost/deps:1", &served, None).unwrap();
    assert_eq!((loaded.layers, loaded.layers_held), (1, 0));
    let mut expected_images = vec![
        (ref_a.clone(), seeded_a.manifest_digest.parse().unwrap()),
        (ref_b.clone(), seeded_b.manifest_digest.parse().unwrap()),
    ];
    expected_images.sort();
    assert_eq!(loaded.images, expected_images, "sorted by name");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let check = served.fsck().unwrap();
    assert!(check.is_clean(), "{check:?}");
    let again = load_embedded(&store, "localhost/deps:1", &served, None).unwrap();
    assert_eq!(
        again.commit.blobs_added, 0,
        "a second import writes nothing"
    );
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    // Everything held already: the layer is not read again, the same images are reported.
    assert_eq!(again.layers_held, 1);
    assert_eq!(again.images, loaded.images);
    // A tag of the target moved by the import is named in a warning.
    let b_entry = served.lookup(&ref_b).unwrap().descriptor;
    served.tag(&ref_a.parse().unwrap(), &b_entry).unwrap();
    let moved = load_embedded(&store, "localhost/deps:1", &served, None).unwrap();
    assert_eq!(moved.layers_held, 0, "a moved tag means importing again");
    assert_eq!(moved.warnings.len(), 1, "{:?}", moved.warnings);
    assert!(
        moved.warnings[0].starts_with(&format!("{ref_a} pointed to {}", seeded_b.manifest_digest)),
        "{:?}",
        moved.warnings
    );
    assert_eq!(
        served.lookup(&ref_a).unwrap().descriptor.digest.to_string(),
        seeded_a.manifest_digest
    );
    // A blob lost from the target: the layer is read again and the blob comes back.
    let lost: sealer_image_store::Digest = seeded_b.platforms[0].blob_digests[1].parse().unwrap();
    served.fs().remove_file(&lost.blob_path()).unwrap();
    let repaired = load_embedded(&store, "localhost/deps:1", &served, None).unwrap();
    assert_eq!(repaired.layers_held, 0);
    assert_eq!(repaired.commit.blobs_added, 1);
    let check = served.fsck().unwrap();
    assert!(check.is_clean(), "{check:?}");
    // A blob truncated in the target is not held either: the layer is read again and the
    // verified blob replaces the short one.
    let whole = served.fs().read(&lost.blob_path()).unwrap();
    served
        .fs()
        .write_atomic(&lost.blob_path(), &whole[..whole.len() / 2])
        .unwrap();
    let repaired = load_embedded(&store, "localhost/deps:1", &served, None).unwrap();
    assert_eq!(repaired.layers_held, 0);
    assert_eq!(repaired.commit.blobs_added, 1);
    assert_eq!(served.fs().read(&lost.blob_path()).unwrap(), whole);
    let check = served.fsck().unwrap();
    assert!(check.is_clean(), "{check:?}");

    // A rebuild downloads nothing and reuses the registry layer.
    let (gets_a, gets_b) = (a.blob_gets(None), b.blob_gets(None));
    let second = build_with(&store, &context, BuildMode::Full);
    assert_eq!(second.descriptor.digest, first.descriptor.digest);
    assert_eq!(second.layers_built, 0);
    assert_eq!(a.blob_gets(None), gets_a);
    assert_eq!(b.blob_gets(None), gets_b);

    // A truncated blob of a dependency image makes it incomplete: the rebuild pulls that
    // blob again (one GET), and the same image comes out.
    let cut: sealer_image_store::Digest = seeded_a.blob_digests[1].parse().unwrap();
    let whole = store.fs().read(&cut.blob_path()).unwrap();
    store
        .fs()
        .write_atomic(&cut.blob_path(), &whole[..whole.len() / 2])
        .unwrap();
    let third = build_with(&store, &context, BuildMode::Full);
    assert_eq!(third.descriptor.digest, first.descriptor.digest);
    assert_eq!(a.blob_gets(None), gets_a + 1);
    assert_eq!(store.fs().read(&cut.blob_path()).unwrap(), whole);
    let gets_a = a.blob_gets(None);

    // A child image: the base's registry/ already holds both, nothing is added, the list is
    // inherited.
    context
        .write_atomic(Path::new("extra.yaml"), b"kind: ConfigMap\n")
        .unwrap();
    let child = build_file(
        &store,
        &context,
        BuildMode::Full,
        "FROM localhost/deps:1\nCOPY extra.yaml /manifests/\n",
        "localhost/child:1",
    );
    let child_image = manifest(&store, &child);
    assert_eq!(child_image.layers.len(), 4, "the base's three and the COPY");
    assert_eq!(child_image.layers[..3], image.layers[..]);
    assert_eq!(container_images(&child_image).unwrap(), listed);
    assert_eq!(a.blob_gets(None), gets_a);
    assert_eq!(b.blob_gets(None), gets_b);

    // Lite: no registry layer, no annotation.
    let lite = build_with(&store, &context, BuildMode::Lite);
    let lite_image = manifest(&store, &lite);
    assert_eq!(lite_image.layers.len(), 2);
    assert!(
        !lite_image
            .annotations
            .contains_key(CONTAINER_IMAGES_ANNOTATION)
    );
}

#[test]
fn a_multi_platform_cluster_image_carries_each_platform_and_serves_them_together() {
    require_tools!("docker-registry", "skopeo");
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let mut spec = ImageSpec::new("unused:1", &[3_000, 7_000], 51);
    spec.platforms.push(Platform::new("linux", "arm64", None));
    let seeded = seed_image(&upstream.host(), "multi/app:2", &spec, None).unwrap();
    let reference = format!("{}/multi/app:2", upstream.host());

    let context_dir = tempfile::tempdir().unwrap();
    let context = RealFs::open_root(context_dir.path()).unwrap();
    context
        .write_atomic(Path::new("imageList"), format!("{reference}\n").as_bytes())
        .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let arm64 = Platform::new("linux", "arm64", None);
    build_for(
        &store,
        &context,
        BuildMode::Full,
        "FROM scratch\nCOPY imageList /imageList\n",
        "localhost/multi-cluster:1",
        vec![amd64(), arm64.clone()],
    );

    // Each platform's image carries that platform's image; served together, the index
    // (the digest clients pin) has both, and nothing is missing.
    let served_dir = tempfile::tempdir().unwrap();
    let served = Store::open_dir(served_dir.path()).unwrap();
    let loaded = load_embedded(&store, "localhost/multi-cluster:1", &served, None).unwrap();
    assert_eq!(loaded.layers, 2);
    assert_eq!(
        loaded.images,
        vec![(reference.clone(), seeded.manifest_digest.parse().unwrap())]
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let platforms: Vec<String> = served
        .image_manifests(&reference)
        .unwrap()
        .into_iter()
        .map(|(descriptor, _)| descriptor.platform.unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    for (platform, expected) in [
        (amd64(), &seeded.platforms[0]),
        (arm64, &seeded.platforms[1]),
    ] {
        let resolved = served.resolve(&reference, Some(&platform)).unwrap();
        assert_eq!(
            resolved.manifest_descriptor.digest.to_string(),
            expected.manifest_digest
        );
    }
    let entry = served.lookup(&reference).unwrap();
    let reach = served.reachable(&[entry.descriptor]).unwrap();
    assert!(
        reach.missing.is_empty() && reach.absent_partial.is_empty(),
        "{reach:?}"
    );
    assert_eq!(reach.absent_platforms, 0);
    // Imported again: both layers are held already, neither is read.
    let again = load_embedded(&store, "localhost/multi-cluster:1", &served, None).unwrap();
    assert_eq!((again.layers, again.layers_held), (2, 2));
    assert_eq!(again.images, loaded.images);
}

/// Seeds one small single-layer image per name into `upstream` (seeds `seed`, `seed + 1`, …);
/// returns their full references.
fn seed_small_images(upstream: &Registry, names: &[&str], seed: u64) -> Vec<String> {
    names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let spec = ImageSpec::new("unused:1", &[2_000], seed + index as u64);
            seed_image(&upstream.host(), name, &spec, None).unwrap();
            format!("{}/{name}", upstream.host())
        })
        .collect()
}

/// A build context holding one file `path` with `text`.
fn context_with(path: &str, text: &str) -> (tempfile::TempDir, RealFs) {
    let dir = tempfile::tempdir().unwrap();
    let context = RealFs::open_root(dir.path()).unwrap();
    if let Some(parent) = Path::new(path).parent() {
        context.create_dir_all(parent).unwrap();
    }
    context
        .write_atomic(Path::new(path), text.as_bytes())
        .unwrap();
    (dir, context)
}

/// Images an operator starts at runtime (named in its container's arguments and environment,
/// not in an `image:` key) are carried like the rest: a cluster built from such manifests
/// has them offline.
#[test]
fn runtime_images_from_args_and_env_are_carried() {
    require_tools!("docker-registry", "skopeo");
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let references = seed_small_images(
        &upstream,
        &["team/operator:1", "team/engine:1", "team/helper:1"],
        60,
    );
    let (_context_dir, context) = context_with(
        "manifests/operator.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: operator\nspec:\n  template:\n    spec:\n      containers:\n      - name: operator\n        image: {}\n        args: [--engine-image, {}, --image-pull-policy=Always]\n        env:\n        - {{name: HELPER_IMAGE, value: \"{}\"}}\n",
            references[0], references[1], references[2]
        ),
    );
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let report = build_file(
        &store,
        &context,
        BuildMode::Full,
        "FROM scratch\nCOPY manifests /manifests/\n",
        "localhost/operator-cluster:1",
    );
    let mut listed: Vec<String> = container_images(&manifest(&store, &report))
        .unwrap()
        .into_iter()
        .map(|image| image.image)
        .collect();
    listed.sort();
    let mut expected = references.clone();
    expected.sort();
    assert_eq!(listed, expected);
}

/// `--ignored-image-list` drops a false runtime finding from what the build carries, and
/// `--image-list` adds an image no file names: the build takes the scan's options.
#[test]
fn image_lists_add_and_drop_what_the_build_carries() {
    require_tools!("docker-registry", "skopeo");
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let references = seed_small_images(
        &upstream,
        &["team/operator:1", "team/engine:1", "team/extra:1"],
        80,
    );
    let (_context_dir, context) = context_with(
        "manifests/operator.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: operator\nspec:\n  template:\n    spec:\n      containers:\n      - name: operator\n        image: {}\n        args: [--engine-image, {}]\n",
            references[0], references[1]
        ),
    );
    let list = |name: &str, text: &str| ImageListFile {
        name: name.to_owned(),
        text: text.to_owned(),
    };
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let report = build_scanning(
        &store,
        &context,
        BuildMode::Full,
        "FROM scratch\nCOPY manifests /manifests/\n",
        "localhost/listed-cluster:1",
        vec![amd64()],
        ScanOptions {
            image_lists: vec![list("extra.txt", &format!("{}\n", references[2]))],
            ignored_image_lists: vec![list("ignored.txt", &format!("{}\n", references[1]))],
            helm: None,
        },
    );
    let mut listed: Vec<String> = container_images(&manifest(&store, &report))
        .unwrap()
        .into_iter()
        .map(|image| image.image)
        .collect();
    listed.sort();
    let mut expected = vec![references[0].clone(), references[2].clone()];
    expected.sort();
    assert_eq!(listed, expected);
    // The dropped image was never pulled.
    assert!(store.lookup(&references[1]).is_err());
}

/// A cluster image whose rootfs is a Helm chart (`Chart.yaml` at its root): the chart's
/// images are carried too.
#[test]
fn a_rootfs_that_is_a_chart_carries_its_images() {
    require_tools!("docker-registry", "skopeo");
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let spec = ImageSpec::new("unused:1", &[2_000], 70);
    seed_image(&upstream.host(), "team/web:3", &spec, None).unwrap();
    let context_dir = tempfile::tempdir().unwrap();
    let context = RealFs::open_root(context_dir.path()).unwrap();
    context.create_dir_all(Path::new("chart")).unwrap();
    context
        .write_atomic(
            Path::new("chart/Chart.yaml"),
            b"apiVersion: v2\nname: web\nversion: 1.0.0\nappVersion: \"3\"\n",
        )
        .unwrap();
    context
        .write_atomic(
            Path::new("chart/values.yaml"),
            format!(
                "image:\n  repository: {}/team/web\n  tag: \"\"\n",
                upstream.host()
            )
            .as_bytes(),
        )
        .unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let report = build_file(
        &store,
        &context,
        BuildMode::Full,
        "FROM scratch\nCOPY chart /\n",
        "localhost/chart-cluster:1",
    );
    let listed: Vec<String> = container_images(&manifest(&store, &report))
        .unwrap()
        .into_iter()
        .map(|image| image.image)
        .collect();
    assert_eq!(listed, [format!("{}/team/web:3", upstream.host())]);
}

/// The references of a plan's one platform, with whether each is in the store.
fn plan_of(store: &Store, context: &RealFs, kubefile: &str) -> (Vec<(String, bool)>, Vec<String>) {
    let kubefile = parse(kubefile, "Kubefile").unwrap();
    let options = BuildOptions {
        platforms: vec![Platform::host()],
        ..BuildOptions::default()
    };
    let plan = plan_images(&kubefile, context, store, &options).unwrap();
    assert_eq!(plan.platforms.len(), 1);
    let images = plan.platforms[0]
        .images
        .iter()
        .map(|image| (image.finding.reference.to_string(), image.present))
        .collect();
    (images, plan.warnings)
}

/// A plan follows the build's steps (COPY and APP place files where the scan looks), never
/// runs a command (a RUN step's files count once a build cached its layer, and the plan says
/// so until then), and writes nothing to the store.
#[test]
fn a_plan_takes_the_builds_steps_and_runs_no_command() {
    let (_context_dir, context) = context_with(
        "apps/web/web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: example.invalid/team/web:1\n",
    );
    let kubefile = "FROM scratch\nAPP web local://apps/web\nRUN mkdir -p manifests && printf 'apiVersion: v1\\nkind: Pod\\nmetadata:\\n  name: made\\nspec:\\n  containers:\\n  - name: made\\n    image: example.invalid/team/made:2\\n' > manifests/made.yaml\n";
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();

    let (images, warnings) = plan_of(&store, &context, kubefile);
    assert_eq!(
        images,
        [("example.invalid/team/web:1".to_owned(), false)],
        "the APP's file is scanned where the build puts it; the RUN's is not made"
    );
    assert!(
        warnings
            .iter()
            .any(|warning| warning.contains("RUN") && warning.contains("not run")),
        "{warnings:?}"
    );
    assert!(store.images().unwrap().is_empty(), "a plan adds no image");

    // A lite build runs the command and caches its layer: the plan then sees its file.
    build_for(
        &store,
        &context,
        BuildMode::Lite,
        kubefile,
        "localhost/run-cluster:1",
        vec![Platform::host()],
    );
    let (images, warnings) = plan_of(&store, &context, kubefile);
    assert_eq!(
        images,
        [
            ("example.invalid/team/made:2".to_owned(), false),
            ("example.invalid/team/web:1".to_owned(), false),
        ]
    );
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// A base image missing from the store is named in the plan's warnings (its files and the
/// images it carries are unknown), not an error.
#[test]
fn a_plan_without_its_base_image_says_what_it_left_out() {
    let (_context_dir, context) = context_with(
        "manifests/web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: example.invalid/team/web:1\n",
    );
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let (images, warnings) = plan_of(
        &store,
        &context,
        "FROM example.invalid/base/kubernetes:1.30\nCOPY manifests /manifests/\n",
    );
    assert_eq!(images, [("example.invalid/team/web:1".to_owned(), false)]);
    assert!(
        warnings
            .iter()
            .any(|warning| warning.contains("example.invalid/base/kubernetes:1.30")),
        "{warnings:?}"
    );
}

/// A base image the pull hook cannot fetch is a warning of the plan too (with the pull's
/// reason), not an error: a plan never fails for want of a registry.
#[test]
fn a_plan_whose_base_image_cannot_be_pulled_says_why() {
    let (_context_dir, context) = context_with(
        "manifests/web.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: web\n    image: example.invalid/team/web:1\n",
    );
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(store_dir.path()).unwrap();
    let pull = |_: &str, _: &Platform| -> Result<(), HookError> {
        Err("the registry cannot be reached".into())
    };
    let kubefile = parse(
        "FROM example.invalid/base/kubernetes:1.30\nCOPY manifests /manifests/\n",
        "Kubefile",
    )
    .unwrap();
    let options = BuildOptions {
        platforms: vec![Platform::host()],
        pull: Some(&pull),
        ..BuildOptions::default()
    };
    let plan = plan_images(&kubefile, &context, &store, &options).unwrap();
    assert!(
        plan.warnings.iter().any(|warning| {
            warning.contains("example.invalid/base/kubernetes:1.30")
                && warning.contains("the registry cannot be reached")
        }),
        "{:?}",
        plan.warnings
    );
}
