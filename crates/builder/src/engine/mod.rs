//! The build engine: a parsed Kubefile and a build context become a cluster image in the
//! store.
//!
//! Per target platform: resolve the base (`FROM scratch`, or an image in the store, pulled
//! through [`BuildOptions::pull`] when missing), inherit its layers (by descriptor), env,
//! labels and sealer apps, then run the steps in order. Every COPY/ADD/APP/CNI/CSI/RUN step
//! makes one layer, or reuses the cached one: its key (crate `sealer-layer-cache`) chains
//! the base manifest digest (a constant for scratch), the layer format, and each layer
//! step's canonical text and inputs (the files it reads; for RUN its environment).
//!
//! Layers are reproducible: entries sorted, every mtime `SOURCE_DATE_EPOCH` (or 0), owner
//! 0:0, gzip at a fixed level with an empty header (or zstd at a fixed level); the config's `created` and history
//! times are the same epoch. So the same Kubefile and context give the same manifest digest
//! on any machine.
//!
//! ADD extracts local tar archives (gzip, zstd or plain) and streams `http(s)://` sources
//! into a scratch file. An archive entry named `.wh.*` is an error (it would be a whiteout
//! deleting a file of the base); device nodes, FIFOs and sockets in an archive are skipped,
//! each named in [`BuildReport::warnings`] (`copy::add_archive` says why).
//!
//! RUN runs `sh -c` on the build host in a temporary directory holding the rootfs so far
//! (every layer unpacked with whiteouts), and only for the host's platform: a RUN step for
//! another platform fails (the command would run with the host's binaries).
//!
//! After the steps (unless [`BuildMode::Lite`]), the rootfs's manifests/, charts/,
//! application/apps/ and imageList are scanned for images (crate `sealer-dep-scanner`); each
//! one the base's `registry/` does not already hold is pulled for the platform through
//! [`BuildOptions::pull`] when the store lacks it, and ONE layer holds them under `registry/`
//! as an OCI image layout keyed by full references, its blobs streamed from the store; it is
//! cached by the sorted `reference@digest` list. The list goes into the
//! [`CONTAINER_IMAGES_ANNOTATION`] manifest annotation.
//!
//! Everything goes into one `Ingest`: a failed build names nothing and adds no blob; cache
//! entries are recorded after the commit.

mod copy;
mod deps;
mod error;
mod image;
mod layer;
mod metadata;
mod run;
mod steps;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sealer_fs_abstraction::{Fs, error_chain};
use sealer_image_store::model::media_type;
use sealer_image_store::{
    Descriptor, Digest, EMBEDDED_LAYOUT_ANNOTATION, Index, Ingest, Platform, Reference, Store,
};
use sealer_layer_cache::{InputDigest, LayerCache};

pub use deps::{
    CONTAINER_IMAGES_ANNOTATION, ContainerImage, REGISTRY_DIR, carried_images, container_images,
};
pub use error::{BuildError, Result};
pub use layer::LayerCompression;
pub use metadata::{
    Application, EXTENSION_ANNOTATION, EXTENSION_SCHEMA_VERSION, ImageExtension, ImageKind, Launch,
    image_kinds,
};
/// How the rootfs is scanned for images ([`BuildOptions::scan`]), from `sealer-dep-scanner`.
pub use sealer_dep_scanner::{ImageListFile, ScanOptions};

use crate::engine::image::{ImageState, base_state, put_json, to_json_string, write_image};
use crate::engine::layer::write_layer;
use crate::engine::steps::{LayerReuse, Progress, StepEnv, run_step};
use crate::kubefile::{Base, BuildArgs, Kubefile};

/// What a [`PullFn`] or [`FetchFn`] hook fails with: the caller's own error (a registry
/// client's, a downloader's), kept whole as the `source` of the [`BuildError`], so its
/// causes (refused, TLS, HTTP status) stay walkable.
pub type HookError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Pulls a missing base image into the store for one platform (the CLI passes a
/// registry-client pull).
pub type PullFn<'a> = &'a dyn Fn(&str, &Platform) -> std::result::Result<(), HookError>;

/// Downloads a remote source (an `http(s)://` URL of ADD or APP/CNI/CSI) into the writer,
/// as it arrives. ADD streams it into a file of the build's scratch directory (memory stays
/// bounded whatever the size); the content is part of the step's cache key, so the download
/// happens on every build.
pub type FetchFn<'a> =
    &'a dyn Fn(&str, &mut dyn std::io::Write) -> std::result::Result<(), HookError>;

/// How to build.
#[derive(Default)]
pub struct BuildOptions<'a> {
    /// Names given to the result (none: an unnamed entry).
    pub tags: Vec<Reference>,
    /// `--build-arg` values.
    pub build_args: BuildArgs,
    /// `--label` values (they win over LABEL).
    pub labels: BTreeMap<String, String>,
    /// `--annotation` values: manifest annotations.
    pub annotations: BTreeMap<String, String>,
    /// Target platforms (empty: the host's). More than one makes an OCI index.
    pub platforms: Vec<Platform>,
    /// Build every layer even when the cache has it (the new layers are still recorded).
    pub no_cache: bool,
    /// `SOURCE_DATE_EPOCH`: every mtime and timestamp (default 0).
    pub source_date_epoch: Option<u64>,
    /// Layer compression (default gzip).
    pub compression: LayerCompression,
    /// Pulls a base image that is not in the store.
    pub pull: Option<PullFn<'a>>,
    /// Downloads the `http(s)://` sources of APP/CNI/CSI (none: they are refused).
    pub fetch: Option<FetchFn<'a>>,
    /// Whether the images the rootfs needs are pulled and carried in a `registry/` layer.
    pub build_mode: BuildMode,
    /// How the rootfs is scanned for the images it needs: the `helm` binary charts are
    /// rendered with (`None`: charts are only read statically; a helm that cannot start is
    /// skipped), image lists added (`--image-list`) and removed (`--ignored-image-list`).
    /// `sealer scan` takes the same options, so both decide alike.
    pub scan: ScanOptions,
}

/// `--build-mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BuildMode {
    /// After the steps, scan the rootfs, pull every image it needs for the platform, and add
    /// one layer holding them under `registry/` (an OCI image layout).
    #[default]
    Full,
    /// No image scan, pull or `registry/` layer.
    Lite,
}

/// What a finished step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Its layer came from the cache.
    Cached,
    /// Its layer was built.
    Built(Duration),
    /// It changes metadata only (no layer).
    Metadata(Duration),
}

/// A step as reported to a [`BuildObserver`].
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// 1-based.
    pub number: usize,
    /// Steps of the Kubefile.
    pub total: usize,
    /// The platform being built.
    pub platform: Platform,
    /// The step's canonical text.
    pub text: String,
}

/// Receives progress; the CLI prints it.
pub trait BuildObserver {
    /// A step starts.
    fn step_started(&mut self, _step: &StepInfo) {}
    /// A step finished.
    fn step_finished(&mut self, _step: &StepInfo, _outcome: StepOutcome) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct NoObserver;

impl BuildObserver for NoObserver {}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The image: a manifest, or an index for several platforms.
    pub descriptor: Descriptor,
    /// Each platform's manifest.
    pub manifests: Vec<(Platform, Descriptor)>,
    /// Every step, per platform, in order, with its outcome.
    pub steps: Vec<(StepInfo, StepOutcome)>,
    /// Layers built (not taken from the cache).
    pub layers_built: usize,
    /// Layers taken from the cache.
    pub layers_cached: usize,
    /// What the build skipped and why (special files in ADDed archives), also logged.
    pub warnings: Vec<String>,
}

/// Builds `kubefile` with the files of `context` (the build context: sources cannot leave
/// it) into `store`.
pub fn build(
    kubefile: &Kubefile,
    context: &dyn Fs,
    store: &Store,
    options: &BuildOptions<'_>,
    observer: &mut dyn BuildObserver,
) -> Result<BuildReport> {
    run_build(kubefile, context, store, options, observer, Run::Build).map(|done| done.report)
}

/// The images a [`build`] of `kubefile` with these options would pull and carry, per
/// platform, decided by the same steps and the same scan as the build, without building:
/// nothing is added to the store or the layer cache. COPY/ADD/APP steps are read from
/// `context` (remote sources through [`BuildOptions::fetch`]); a RUN step's files are known
/// only when the layer cache has its layer (an earlier build), otherwise the plan says so in
/// [`ImagePlan::warnings`]. A base image must be in the store ([`BuildOptions::pull`] is
/// used when given); without it the plan warns that the base's files and carried images are
/// left out.
pub fn plan_images(
    kubefile: &Kubefile,
    context: &dyn Fs,
    store: &Store,
    options: &BuildOptions<'_>,
) -> Result<ImagePlan> {
    let done = run_build(
        kubefile,
        context,
        store,
        options,
        &mut NoObserver,
        Run::Plan,
    )?;
    Ok(ImagePlan {
        platforms: done.plans,
        warnings: done.report.warnings,
    })
}

/// What [`plan_images`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImagePlan {
    /// One entry per target platform, in the build's order.
    pub platforms: Vec<PlatformImages>,
    /// What the plan could not take into account (RUN steps without a cached layer, a base
    /// image missing from the store) and the build's own warnings.
    pub warnings: Vec<String>,
}

/// The images a build carries for one platform.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlatformImages {
    /// `os/arch[/variant]`.
    #[serde(serialize_with = "display")]
    pub platform: Platform,
    /// What the build pulls (those not [`PlannedImage::present`]) and carries in `registry/`.
    pub images: Vec<PlannedImage>,
    /// Images the rootfs names that the base image carries already (neither pulled nor
    /// carried again).
    pub inherited: Vec<String>,
    /// What the dependency scan could not use (a file, a line, why).
    pub scan_warnings: Vec<sealer_dep_scanner::Warning>,
}

/// One image a build carries.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedImage {
    /// The reference, where it was found and whether only runtime rules found it.
    #[serde(flatten)]
    pub finding: sealer_dep_scanner::Finding,
    /// The app whose files name it (empty: not an app's).
    pub app: String,
    /// Whether the store holds it complete for the platform already (the build does not
    /// pull it).
    pub present: bool,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> std::result::Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Whether [`run_build`] builds, or only plans the images ([`plan_images`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Run {
    Build,
    Plan,
}

/// What [`run_build`] did.
struct Done {
    report: BuildReport,
    /// [`Run::Plan`]: the images of each platform.
    plans: Vec<PlatformImages>,
}

/// The build's steps, for [`build`] and [`plan_images`]: one path, so both decide alike.
fn run_build(
    kubefile: &Kubefile,
    context: &dyn Fs,
    store: &Store,
    options: &BuildOptions<'_>,
    observer: &mut dyn BuildObserver,
    run: Run,
) -> Result<Done> {
    let plan = run == Run::Plan;
    let platforms = if options.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        options.platforms.clone()
    };
    let cache = LayerCache::open(store)?;
    let stat = cache.load_stat_cache(context)?;
    let ingest = store.begin_ingest()?;
    let base = kubefile.expand_from(&options.build_args)?;
    let env = StepEnv {
        context,
        store,
        options,
        ingest: &ingest,
        epoch: options.source_date_epoch.unwrap_or(0),
        // A plan's layers are read back once and dropped: compressing them only costs. The
        // cache keys still name the build's compression, so RUN layers cached by a build
        // are found.
        layer_compression: if plan {
            LayerCompression::Uncompressed
        } else {
            options.compression
        },
        plan,
    };
    let mut progress = Progress {
        layers: LayerReuse::new(&cache, options.no_cache, env.epoch),
        stat,
        report: BuildReport {
            descriptor: Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256(b""), 0),
            manifests: Vec::new(),
            steps: Vec::new(),
            layers_built: 0,
            layers_cached: 0,
            warnings: Vec::new(),
        },
        plans: Vec::new(),
    };
    for platform in &platforms {
        build_platform(
            &env,
            &mut progress,
            kubefile,
            &base.node,
            platform,
            observer,
        )?;
    }
    let Progress {
        layers,
        mut stat,
        mut report,
        plans,
    } = progress;
    if plan {
        // Nothing of a plan is kept: the ingest is dropped, no cache entry is recorded.
        return Ok(Done { report, plans });
    }
    report.descriptor = image_descriptor(&ingest, &report.manifests)?;
    let roots: Vec<(Option<Reference>, Descriptor)> = if options.tags.is_empty() {
        vec![(None, report.descriptor.clone())]
    } else {
        options
            .tags
            .iter()
            .map(|tag| (Some(tag.clone()), report.descriptor.clone()))
            .collect()
    };
    ingest.commit(&roots)?;
    for (key, entry) in &layers.into_made() {
        cache.put(key, entry)?;
    }
    cache.save_stat_cache(context, &mut stat)?;
    Ok(Done { report, plans })
}

/// The image of a build: its one manifest, or an index of the platforms' manifests
/// (written into `ingest`).
fn image_descriptor(
    ingest: &Ingest<'_>,
    manifests: &[(Platform, Descriptor)],
) -> Result<Descriptor> {
    if let [(_, descriptor)] = manifests {
        return Ok(descriptor.clone());
    }
    let mut index = Index::empty();
    index.manifests = manifests
        .iter()
        .map(|(platform, descriptor)| {
            let mut entry = descriptor.clone();
            entry.platform = Some(platform.clone());
            entry
        })
        .collect();
    put_json(ingest, media_type::OCI_INDEX, &index)
}

/// Builds (or plans) the image of one platform: base, steps, carried images, then its
/// config and manifest into the ingest.
fn build_platform(
    env: &StepEnv<'_>,
    progress: &mut Progress<'_>,
    kubefile: &Kubefile,
    base: &Base<String>,
    platform: &Platform,
    observer: &mut dyn BuildObserver,
) -> Result<()> {
    let options = env.options;
    let mut state = start_state(env, progress, base, platform)?;
    let base_env: Vec<(String, String)> = state
        .extension
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let inherited: Vec<&str> = state
        .extension
        .applications
        .iter()
        .map(|app| app.name.as_str())
        .collect();
    kubefile.check_app_names(&inherited)?;
    let expanded = kubefile.expand(&options.build_args, &base_env)?;
    let total = expanded.steps.len();
    for (index, step) in expanded.steps.iter().enumerate() {
        let info = StepInfo {
            number: index + 1,
            total,
            platform: platform.clone(),
            text: step
                .instruction
                .node
                .with_arch(&platform.architecture)
                .to_string(),
        };
        run_step(env, progress, &mut state, step, info, observer)?;
    }
    kubefile.check_app_types(|name| state.app_types.get(name).copied())?;
    state.extension.env = expanded.env.iter().cloned().collect();
    for (key, value) in &options.labels {
        state.labels.insert(key.clone(), value.clone());
    }
    let mut annotations = options.annotations.clone();
    if options.build_mode == BuildMode::Full || env.plan {
        let inherited = state
            .images
            .iter()
            .map(|image| image.image.clone())
            .collect();
        let found = deps::find_images(env.ingest, &state.layers, &inherited, &options.scan)?;
        if env.plan {
            progress
                .plans
                .push(plan_platform(env.store, platform, found)?);
            return Ok(());
        }
        carry_images(env, progress, &mut state, platform, found)?;
    }
    if !state.images.is_empty() {
        annotations.insert(
            CONTAINER_IMAGES_ANNOTATION.to_owned(),
            to_json_string(&state.images)?,
        );
    }
    let descriptor = write_image(env.ingest, &state, platform, env.epoch, &annotations)?;
    progress
        .report
        .manifests
        .push((platform.clone(), descriptor));
    Ok(())
}

/// The state a platform's steps start from: scratch, or the base image (a plan without it
/// warns and starts from scratch), keyed on the layer format.
fn start_state(
    env: &StepEnv<'_>,
    progress: &mut Progress<'_>,
    base: &Base<String>,
    platform: &Platform,
) -> Result<ImageState> {
    let mut state = if base.is_scratch() {
        ImageState::scratch()
    } else {
        match base_state(env.store, &base.image, platform, env.options) {
            Ok(state) => state,
            Err(BuildError::Base { reference, message }) if env.plan => {
                plan_without_base(progress, &reference, platform, &message)
            }
            Err(BuildError::BasePull {
                reference, source, ..
            }) if env.plan => {
                plan_without_base(progress, &reference, platform, &error_chain(&*source))
            }
            Err(error) => return Err(error),
        }
    };
    state.key = state.key.next(
        &format!(
            "# layers: tar+{}, mtime {}",
            env.options.compression.name(),
            env.epoch
        ),
        &InputDigest::none(),
    );
    Ok(state)
}

/// A plan goes on without a base it cannot read or pull, and says so.
fn plan_without_base(
    progress: &mut Progress<'_>,
    reference: &str,
    platform: &Platform,
    why: &str,
) -> ImageState {
    progress.report.warnings.push(format!(
        "base image {reference} ({platform}): {why}; its files and the images it carries are left out (sealer pull {reference} first)"
    ));
    ImageState::scratch()
}

/// A plan's images of one platform, each marked present when the store holds it already.
fn plan_platform(
    store: &Store,
    platform: &Platform,
    found: deps::FoundImages,
) -> Result<PlatformImages> {
    let mut images = Vec::new();
    for (finding, app) in found.images {
        let present = deps::present(store, &finding.reference.to_string(), platform)?.is_some();
        images.push(PlannedImage {
            finding,
            app,
            present,
        });
    }
    Ok(PlatformImages {
        platform: platform.clone(),
        images,
        inherited: found.inherited,
        scan_warnings: found.warnings,
    })
}

/// Pulls the images the rootfs needs and adds the one `registry/` layer holding them
/// (reused like any layer, keyed by the sorted `reference@digest` list).
fn carry_images(
    env: &StepEnv<'_>,
    progress: &mut Progress<'_>,
    state: &mut ImageState,
    platform: &Platform,
    found: deps::FoundImages,
) -> Result<()> {
    let images = deps::collect(env.store, found, platform, env.options.pull)?;
    if images.is_empty() {
        return Ok(());
    }
    let text = deps::cache_text(&images);
    let key = state.key.next(&text, &InputDigest::none());
    let outcome = progress
        .layers
        .reuse_or_build(state, key, &text, Instant::now(), &mut || {
            let tree = deps::registry_tree(env.store, &images)?;
            // Its blobs are compressed already: compressing them again only costs.
            let mut built = write_layer(
                &tree,
                env.store.fs().as_ref(),
                env.epoch,
                LayerCompression::Uncompressed,
                env.ingest,
            )?;
            // Marks the layer for `load_embedded` (`registry serve --image`).
            built.descriptor.annotations.insert(
                EMBEDDED_LAYOUT_ANNOTATION.to_owned(),
                deps::REGISTRY_DIR.to_owned(),
            );
            Ok(built)
        })?;
    match outcome {
        StepOutcome::Cached => progress.report.layers_cached += 1,
        _ => progress.report.layers_built += 1,
    }
    state
        .images
        .extend(images.into_iter().map(|image| image.entry));
    Ok(())
}
