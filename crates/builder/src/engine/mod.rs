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
//! each named in [`BuildReport::warnings`] (see ARCHITECTURE.md, "What ADD takes from an
//! archive").
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
mod layer;
mod metadata;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sealer_fs_abstraction::{FileKind, Fs};
use sealer_image_store::model::media_type;
use sealer_image_store::{
    Descriptor, Digest, EMBEDDED_LAYOUT_ANNOTATION, Index, Manifest, Platform, Reference, Store,
    StoreError,
};
use sealer_layer_cache::{CacheEntry, CacheKey, InputDigest, InputHasher, LayerCache};
use serde_json::{Value, json};

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

use crate::engine::copy::{
    add_archive, add_sources, dest_path, detect_app, download_into, expand_sources, is_archive,
    parse_chmod, scratch_dir,
};
use crate::engine::layer::{BuiltLayer, LayerTree, Node, write_layer};
use crate::engine::run::{Rootfs, is_dir_in_layers};
use crate::kubefile::{
    AppSource, AppType, BuildArgs, CNI_LABEL_PREFIX, CSI_LABEL_PREFIX, Instruction,
    KUBE_VERSION_LABEL, Kubefile,
};

/// Pulls a missing base image into the store for one platform (the CLI passes a
/// registry-client pull); returns a message on failure.
pub type PullFn<'a> = &'a dyn Fn(&str, &Platform) -> std::result::Result<(), String>;

/// Downloads a remote source (an `http(s)://` URL of ADD or APP/CNI/CSI) into the writer,
/// as it arrives; returns a message on failure. ADD streams it into a file of the build's
/// scratch directory (memory stays bounded whatever the size); the content is part of the
/// step's cache key, so the download happens on every build.
pub type FetchFn<'a> = &'a dyn Fn(&str, &mut dyn std::io::Write) -> std::result::Result<(), String>;

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

/// The state of one platform's image while its steps run.
struct ImageState {
    layers: Vec<Descriptor>,
    diff_ids: Vec<Value>,
    history: Vec<Value>,
    labels: BTreeMap<String, String>,
    extension: ImageExtension,
    key: CacheKey,
    /// The dependency images of the base's `registry/` (its annotation).
    images: Vec<ContainerImage>,
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
    // A plan's layers are read back once and dropped: compressing them only costs. The
    // cache keys still name the build's compression, so RUN layers cached by a build are
    // found.
    let layer_compression = if plan {
        LayerCompression::Uncompressed
    } else {
        options.compression
    };
    let mut plans = Vec::new();
    let platforms = if options.platforms.is_empty() {
        vec![Platform::host()]
    } else {
        options.platforms.clone()
    };
    let epoch = options.source_date_epoch.unwrap_or(0);
    let cache = LayerCache::open(store)?;
    let mut stat = cache.load_stat_cache(context)?;
    let ingest = store.begin_ingest()?;
    let base = kubefile.expand_from(&options.build_args)?;
    let mut report = BuildReport {
        descriptor: Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256(b""), 0),
        manifests: Vec::new(),
        steps: Vec::new(),
        layers_built: 0,
        layers_cached: 0,
        warnings: Vec::new(),
    };
    let mut new_entries: Vec<(CacheKey, CacheEntry)> = Vec::new();

    for platform in &platforms {
        let arch = platform.architecture.as_str();
        let mut state = if base.node.is_scratch() {
            ImageState {
                layers: Vec::new(),
                diff_ids: Vec::new(),
                history: Vec::new(),
                labels: BTreeMap::new(),
                extension: ImageExtension::default(),
                key: CacheKey::scratch(),
                images: Vec::new(),
            }
        } else {
            match base_state(store, &base.node.image, platform, options) {
                Ok(state) => state,
                Err(BuildError::Base { reference, message }) if plan => {
                    report.warnings.push(format!(
                        "base image {reference} ({platform}): {message}; its files and the images it carries are left out (sealer pull {reference} first)"
                    ));
                    ImageState {
                        layers: Vec::new(),
                        diff_ids: Vec::new(),
                        history: Vec::new(),
                        labels: BTreeMap::new(),
                        extension: ImageExtension::default(),
                        key: CacheKey::scratch(),
                        images: Vec::new(),
                    }
                }
                Err(error) => return Err(error),
            }
        };
        state.key = state.key.next(
            &format!(
                "# layers: tar+{}, mtime {epoch}",
                options.compression.name()
            ),
            &InputDigest::none(),
        );
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
        let mut app_types: BTreeMap<String, AppType> = BTreeMap::new();

        for (index, step) in expanded.steps.iter().enumerate() {
            let span = &step.instruction.span;
            let instruction = step.instruction.node.with_arch(arch);
            let text = instruction.to_string();
            let info = StepInfo {
                number: index + 1,
                total,
                platform: platform.clone(),
                text: text.clone(),
            };
            observer.step_started(&info);
            let started = Instant::now();
            // A plan never runs commands: a RUN step whose layer neither this run nor the
            // cache has is skipped.
            let run_unknown = match &instruction {
                Instruction::Run(_) if plan => {
                    let key = state
                        .key
                        .next(&text, &InputDigest::of_env(step.env.clone()));
                    !new_entries.iter().any(|(made, _)| *made == key) && cache.get(&key)?.is_none()
                }
                _ => false,
            };
            let mut layer_step = |state: &mut ImageState,
                                  key: CacheKey,
                                  make: &mut dyn FnMut() -> Result<BuiltLayer>|
             -> Result<StepOutcome> {
                // A layer this build already made (another platform's identical step).
                if let Some((_, entry)) = new_entries.iter().find(|(made, _)| *made == key) {
                    let entry = entry.clone();
                    push_layer(state, &entry.layer, &entry.diff_id, &text, epoch);
                    state.key = key;
                    return Ok(StepOutcome::Cached);
                }
                if !options.no_cache
                    && let Some(entry) = cache.get(&key)?
                {
                    push_layer(state, &entry.layer, &entry.diff_id, &text, epoch);
                    state.key = key;
                    return Ok(StepOutcome::Cached);
                }
                let built = make()?;
                push_layer(state, &built.descriptor, &built.diff_id, &text, epoch);
                new_entries.push((
                    key.clone(),
                    CacheEntry {
                        layer: built.descriptor,
                        diff_id: built.diff_id,
                        created_by: text.clone(),
                    },
                ));
                state.key = key;
                Ok(StepOutcome::Built(started.elapsed()))
            };
            let outcome = match &instruction {
                Instruction::From(_) | Instruction::Arg(_) | Instruction::Maintainer(_) => {
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::Copy(copy) | Instruction::Add(copy) => {
                    let keyword = instruction.keyword();
                    let is_add = matches!(instruction, Instruction::Add(_));
                    let (urls, locals): (Vec<String>, Vec<String>) =
                        copy.sources.iter().cloned().partition(|source| {
                            matches!(AppSource::parse(source), Some(AppSource::Remote(_)))
                        });
                    if !urls.is_empty() && !is_add {
                        return Err(BuildError::at(
                            span,
                            "COPY cannot download a URL: use ADD, or APP with http(s):// sources",
                        ));
                    }
                    let chmod = parse_chmod(span, copy.chmod.as_deref())?;
                    let sources = expand_sources(context, span, keyword, &locals)?;
                    let mut input = InputHasher::new();
                    for source in &sources {
                        input.add_path(context, source, &mut stat)?;
                    }
                    // Downloads are streamed into files here, removed after the step.
                    let mut scratch = None;
                    let mut downloads = Vec::new();
                    for (index, url) in urls.iter().enumerate() {
                        let name = remote_file_name(url).ok_or_else(|| {
                            BuildError::at(span, format!("ADD {url} names no file"))
                        })?;
                        let fetch = options.fetch.ok_or_else(|| {
                            BuildError::at(span, format!("ADD {url}: this build cannot download"))
                        })?;
                        let fs = match &scratch {
                            Some((_, fs)) => std::sync::Arc::clone(fs),
                            None => {
                                let (dir, fs) = scratch_dir("sealer-build-download-")?;
                                scratch = Some((dir, std::sync::Arc::clone(&fs)));
                                fs
                            }
                        };
                        let file = PathBuf::from(index.to_string());
                        let (len, digest) =
                            download_into(fetch, url, fs.as_ref(), &file).map_err(|message| {
                                BuildError::at(span, format!("ADD downloading {url}: {message}"))
                            })?;
                        input.add_bytes("remote", url.as_bytes());
                        input.add_bytes("content", digest.to_string().as_bytes());
                        downloads.push((name, fs, file, len));
                    }
                    let count = sources.len() + downloads.len();
                    if count > 1 && !copy.dest.ends_with('/') {
                        return Err(BuildError::at(
                            span,
                            format!(
                                "{keyword} with more than one source file needs a directory destination ending with /, not {:?}",
                                copy.dest
                            ),
                        ));
                    }
                    let key = state.key.next(&text, &input.finish());
                    let layers = state.layers.clone();
                    let mut warnings = Vec::new();
                    let outcome = layer_step(&mut state, key, &mut || {
                        // Docker's rule: a file copied onto a directory of the image goes
                        // into it, even without a trailing `/`.
                        let single_file = count == 1
                            && match sources.as_slice() {
                                [source] => context.metadata(source)?.kind == FileKind::File,
                                _ => true,
                            };
                        let dest = if single_file
                            && !copy.dest.ends_with('/')
                            && is_dir_in_layers(&ingest, &layers, &copy.dest)?
                        {
                            format!("{}/", copy.dest)
                        } else {
                            copy.dest.clone()
                        };
                        let mut tree = LayerTree::default();
                        let mut plain = Vec::new();
                        let mut extracted = Vec::new();
                        for source in &sources {
                            if is_add && is_archive(context, source)? {
                                let into = format!("{}/", dest.trim_end_matches('/'));
                                extracted.push(add_archive(
                                    context,
                                    &mut tree,
                                    span,
                                    source,
                                    &into,
                                    &mut warnings,
                                )?);
                            } else {
                                plain.push(source.clone());
                            }
                        }
                        if !plain.is_empty() {
                            add_sources(context, &mut tree, span, keyword, &plain, &dest, chmod)?;
                        }
                        for (name, fs, file, len) in &downloads {
                            let target = if dest.ends_with('/') {
                                dest_path(&dest).join(name)
                            } else {
                                dest_path(&dest)
                            };
                            tree.insert(
                                target,
                                Node::Extern {
                                    fs: fs.clone(),
                                    source: file.clone(),
                                    mode: chmod.unwrap_or(0o600),
                                    len: *len,
                                },
                            );
                        }
                        let written =
                            write_layer(&tree, context, epoch, layer_compression, &ingest);
                        drop(extracted);
                        written
                    })?;
                    drop(scratch);
                    report.warnings.append(&mut warnings);
                    outcome
                }
                Instruction::App(app) | Instruction::Cni(app) | Instruction::Csi(app) => {
                    let keyword = instruction.keyword();
                    let mut locals = Vec::new();
                    let mut remotes = Vec::new();
                    for source in app.parsed_sources() {
                        match source {
                            AppSource::Local(path) => locals.push(path),
                            AppSource::Remote(url) => remotes.push(url),
                        }
                    }
                    let sources = expand_sources(context, span, keyword, &locals)?;
                    let app_dir = PathBuf::from("application/apps").join(&app.name);
                    let dest = format!("{}/", app_dir.display());
                    let mut tree = LayerTree::default();
                    add_sources(context, &mut tree, span, keyword, &sources, &dest, None)?;
                    let mut input = InputHasher::new();
                    for source in &sources {
                        input.add_path(context, source, &mut stat)?;
                    }
                    for url in &remotes {
                        let name = remote_file_name(url).ok_or_else(|| {
                            BuildError::at(
                                span,
                                format!("{keyword} {}: {url} names no file", app.name),
                            )
                        })?;
                        let Some(fetch) = options.fetch else {
                            return Err(BuildError::at(
                                span,
                                format!(
                                    "{keyword} {}: remote sources ({url}) cannot be downloaded by this build",
                                    app.name
                                ),
                            ));
                        };
                        // App sources are manifests and scripts: read whole, as the app
                        // type detection reads them.
                        let mut data = Vec::new();
                        fetch(url, &mut data).map_err(|message| {
                            BuildError::at(
                                span,
                                format!("{keyword} {}: downloading {url}: {message}", app.name),
                            )
                        })?;
                        input.add_bytes("remote", url.as_bytes());
                        input.add_bytes("content", Digest::sha256(&data).to_string().as_bytes());
                        tree.insert(app_dir.join(name), Node::Data(data.into(), 0o644));
                    }
                    let detected = detect_app(&tree, &app_dir);
                    let key = state.key.next(&text, &input.finish());
                    let outcome = layer_step(&mut state, key, &mut || {
                        write_layer(&tree, context, epoch, layer_compression, &ingest)
                    })?;
                    let (app_type, files) = match detected {
                        Some((app_type, files)) => {
                            app_types.insert(app.name.clone(), app_type);
                            (Some(app_type), files)
                        }
                        None => (None, Vec::new()),
                    };
                    let prefix = match &instruction {
                        Instruction::Cni(_) => Some(CNI_LABEL_PREFIX),
                        Instruction::Csi(_) => Some(CSI_LABEL_PREFIX),
                        _ => None,
                    };
                    if let Some(prefix) = prefix {
                        state
                            .labels
                            .insert(format!("{prefix}{}", app.name), "true".to_owned());
                    }
                    set_app(&mut state.extension, &app.name, app_type, files);
                    outcome
                }
                Instruction::Run(command) => {
                    let key = state
                        .key
                        .next(&text, &InputDigest::of_env(step.env.clone()));
                    let layers = state.layers.clone();
                    if run_unknown {
                        // A plan never runs commands: only a layer an earlier build cached
                        // shows what this one makes.
                        report.warnings.push(format!(
                            "step {} ({platform}): {text}: not run, so the files it makes are not scanned (a build caches its layer; scan again after one)",
                            index + 1
                        ));
                        state.key = key;
                        observer.step_finished(&info, StepOutcome::Metadata(started.elapsed()));
                        report
                            .steps
                            .push((info, StepOutcome::Metadata(started.elapsed())));
                        continue;
                    }
                    layer_step(&mut state, key, &mut || {
                        let host = Platform::host();
                        if platform.os != host.os || platform.architecture != host.architecture {
                            return Err(BuildError::at(
                                span,
                                format!(
                                    "RUN runs on the build host ({host}), so it cannot build for {platform}: build that platform on a {platform} host, or move the command's output into the build context and COPY it"
                                ),
                            ));
                        }
                        let rootfs = Rootfs::materialise(&ingest, &layers)?;
                        let tree = rootfs.run(span, command, &step.env)?;
                        write_layer(&tree, rootfs.fs(), epoch, layer_compression, &ingest)
                    })?
                }
                Instruction::Env(_) => StepOutcome::Metadata(started.elapsed()),
                Instruction::Label(pairs) => {
                    for pair in &pairs.pairs {
                        state.labels.insert(pair.key.clone(), pair.value.clone());
                    }
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::KubeVersion(range) => {
                    state
                        .labels
                        .insert(KUBE_VERSION_LABEL.to_owned(), range.clone());
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::AppCmds(cmds) => {
                    app_entry(&mut state.extension, &cmds.app).cmds = cmds.commands.clone();
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::AppEnv(env) => {
                    let entry = app_entry(&mut state.extension, &env.app);
                    for pair in &env.vars {
                        entry.env.insert(pair.key.clone(), pair.value.clone());
                    }
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::Launch(apps) => {
                    state.extension.launch.app_names = apps.clone();
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::Cmds(cmds) => {
                    state.extension.launch.cmds = cmds.clone();
                    StepOutcome::Metadata(started.elapsed())
                }
                Instruction::Cmd(command) => {
                    let text = match command {
                        crate::kubefile::Command::Shell(text) => text.clone(),
                        crate::kubefile::Command::Exec(args) => args.join(" "),
                    };
                    state.extension.launch.cmds.push(text);
                    StepOutcome::Metadata(started.elapsed())
                }
            };
            if matches!(outcome, StepOutcome::Cached) {
                report.layers_cached += 1;
            } else if matches!(outcome, StepOutcome::Built(_)) {
                report.layers_built += 1;
            }
            if let StepOutcome::Metadata(_) = outcome
                && !matches!(instruction, Instruction::From(_) | Instruction::Arg(_))
            {
                state.history.push(json!({
                    "created": metadata::rfc3339(epoch),
                    "created_by": text,
                    "empty_layer": true,
                }));
            }
            observer.step_finished(&info, outcome);
            report.steps.push((info, outcome));
        }
        kubefile.check_app_types(|name| app_types.get(name).copied())?;
        state.extension.env = expanded.env.iter().cloned().collect();
        for (key, value) in &options.labels {
            state.labels.insert(key.clone(), value.clone());
        }
        let mut annotations = options.annotations.clone();
        if options.build_mode == BuildMode::Full || plan {
            let inherited = state
                .images
                .iter()
                .map(|image| image.image.clone())
                .collect();
            let found = deps::find_images(&ingest, &state.layers, &inherited, &options.scan)?;
            if plan {
                let mut images = Vec::new();
                for (finding, app) in found.images {
                    let present =
                        deps::present(store, &finding.reference.to_string(), platform)?.is_some();
                    images.push(PlannedImage {
                        finding,
                        app,
                        present,
                    });
                }
                plans.push(PlatformImages {
                    platform: platform.clone(),
                    images,
                    inherited: found.inherited,
                    scan_warnings: found.warnings,
                });
                continue;
            }
            let images = deps::collect(store, found, platform, options.pull)?;
            if !images.is_empty() {
                let text = deps::cache_text(&images);
                let key = state.key.next(&text, &InputDigest::none());
                let made = new_entries
                    .iter()
                    .find(|(made, _)| *made == key)
                    .map(|(_, entry)| entry.clone());
                let cached = match made {
                    Some(entry) => Some(entry),
                    None if !options.no_cache => cache.get(&key)?,
                    None => None,
                };
                if let Some(entry) = cached {
                    push_layer(&mut state, &entry.layer, &entry.diff_id, &text, epoch);
                    report.layers_cached += 1;
                } else {
                    let tree = deps::registry_tree(store, &images)?;
                    // Its blobs are compressed already: compressing them again only costs.
                    let mut built = write_layer(
                        &tree,
                        store.fs().as_ref(),
                        epoch,
                        LayerCompression::Uncompressed,
                        &ingest,
                    )?;
                    // Marks the layer for `load_embedded` (`registry serve --image`).
                    built.descriptor.annotations.insert(
                        EMBEDDED_LAYOUT_ANNOTATION.to_owned(),
                        deps::REGISTRY_DIR.to_owned(),
                    );
                    push_layer(&mut state, &built.descriptor, &built.diff_id, &text, epoch);
                    new_entries.push((
                        key.clone(),
                        CacheEntry {
                            layer: built.descriptor,
                            diff_id: built.diff_id,
                            created_by: text.clone(),
                        },
                    ));
                    report.layers_built += 1;
                }
                state.key = key;
                state
                    .images
                    .extend(images.into_iter().map(|image| image.entry));
            }
        }
        if !state.images.is_empty() {
            annotations.insert(
                CONTAINER_IMAGES_ANNOTATION.to_owned(),
                to_json_string(&state.images)?,
            );
        }
        let descriptor = write_image(&ingest, &state, platform, epoch, &annotations)?;
        report.manifests.push((platform.clone(), descriptor));
    }

    if plan {
        // Nothing of a plan is kept: the ingest is dropped, no cache entry is recorded.
        return Ok(Done { report, plans });
    }
    report.descriptor = if report.manifests.len() == 1 {
        let (_, descriptor) = &report.manifests[0];
        descriptor.clone()
    } else {
        let mut index = Index::empty();
        index.manifests = report
            .manifests
            .iter()
            .map(|(platform, descriptor)| {
                let mut entry = descriptor.clone();
                entry.platform = Some(platform.clone());
                entry
            })
            .collect();
        let bytes = to_json(&index)?;
        let digest = ingest.put_bytes(&bytes)?;
        Descriptor::new(media_type::OCI_INDEX, digest, bytes.len() as u64)
    };
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
    for (key, entry) in &new_entries {
        cache.put(key, entry)?;
    }
    cache.save_stat_cache(context, &mut stat)?;
    Ok(Done { report, plans })
}

/// The file name a downloaded source gets: the last segment of the URL's path.
fn remote_file_name(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    let (_, path) = path.split_once('/')?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty() && name != "." && name != "..").then(|| name.to_owned())
}

/// Appends a layer and its history entry.
fn push_layer(
    state: &mut ImageState,
    layer: &Descriptor,
    diff_id: &Digest,
    text: &str,
    epoch: u64,
) {
    state.layers.push(layer.clone());
    state.diff_ids.push(Value::String(diff_id.to_string()));
    state.history.push(json!({
        "created": metadata::rfc3339(epoch),
        "created_by": text,
    }));
}

/// The app `name` of `extension`, added when missing.
fn app_entry<'e>(extension: &'e mut ImageExtension, name: &str) -> &'e mut Application {
    let position = match extension
        .applications
        .iter()
        .position(|app| app.name == name)
    {
        Some(position) => position,
        None => {
            extension.applications.push(Application {
                name: name.to_owned(),
                ..Application::default()
            });
            extension.applications.len() - 1
        }
    };
    &mut extension.applications[position]
}

/// Records a (re)defined app with its detected type, launch files and default commands.
fn set_app(
    extension: &mut ImageExtension,
    name: &str,
    app_type: Option<AppType>,
    files: Vec<String>,
) {
    let dir = format!("application/apps/{name}");
    let cmds = match app_type {
        Some(AppType::Kube) => files
            .iter()
            .map(|file| format!("kubectl apply -f {dir}/{file}"))
            .collect(),
        Some(AppType::Helm) => files
            .iter()
            .map(|chart| {
                let path = if chart == "." {
                    dir.clone()
                } else {
                    format!("{dir}/{chart}")
                };
                format!("helm install {name} {path}")
            })
            .collect(),
        Some(AppType::Shell) => files
            .iter()
            .map(|file| format!("bash {dir}/{file}"))
            .collect(),
        None => Vec::new(),
    };
    let entry = app_entry(extension, name);
    entry.app_type = match app_type {
        Some(AppType::Helm) => "helm",
        Some(AppType::Kube) => "kube",
        Some(AppType::Shell) => "shell",
        None => "",
    }
    .to_owned();
    entry.launchfiles = files;
    entry.cmds = cmds;
}

/// The state inherited from the base image `reference` for `platform` (pulled when missing
/// and a pull function is given).
fn base_state(
    store: &Store,
    reference: &str,
    platform: &Platform,
    options: &BuildOptions<'_>,
) -> Result<ImageState> {
    let resolved = match store.resolve(reference, Some(platform)) {
        Ok(resolved) => resolved,
        // Absent, or a multi-arch image without this platform: pulled for it when possible.
        Err(error @ (StoreError::ImageNotFound(_) | StoreError::PlatformNotCarried { .. })) => {
            let Some(pull) = options.pull else {
                return Err(BuildError::Base {
                    reference: reference.to_owned(),
                    message: match error {
                        StoreError::ImageNotFound(_) => {
                            "not in the store (pull it first)".to_owned()
                        }
                        carried => carried.to_string(),
                    },
                });
            };
            pull(reference, platform).map_err(|message| BuildError::Base {
                reference: reference.to_owned(),
                message,
            })?;
            store.resolve(reference, Some(platform))?
        }
        Err(error) => return Err(error.into()),
    };
    let config: Value = serde_json::from_slice(
        &store.read_verified(&resolved.manifest.config.digest)?,
    )
    .map_err(|error| BuildError::Base {
        reference: reference.to_owned(),
        message: format!("its config is not valid JSON: {error}"),
    })?;
    let mut extension = match ImageExtension::of_manifest(&resolved.manifest) {
        Some(Ok(extension)) => extension,
        Some(Err(message)) => {
            return Err(BuildError::Base {
                reference: reference.to_owned(),
                message,
            });
        }
        None => ImageExtension::default(),
    };
    // The base's launch is not inherited (a Kubefile states its own); its apps and env are.
    extension.launch = Launch::default();
    if let Some(env) = config.pointer("/config/Env").and_then(Value::as_array) {
        for pair in env.iter().filter_map(Value::as_str) {
            if let Some((key, value)) = pair.split_once('=') {
                extension.env.insert(key.to_owned(), value.to_owned());
            }
        }
    }
    let labels = config
        .pointer("/config/Labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if diff_ids.len() != resolved.manifest.layers.len() {
        return Err(BuildError::Base {
            reference: reference.to_owned(),
            message: format!(
                "its config lists {} diff_ids for {} layers",
                diff_ids.len(),
                resolved.manifest.layers.len()
            ),
        });
    }
    let images = container_images(&resolved.manifest).map_err(|message| BuildError::Base {
        reference: reference.to_owned(),
        message,
    })?;
    let history = config
        .pointer("/history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    Ok(ImageState {
        layers: resolved.manifest.layers.clone(),
        diff_ids,
        history,
        labels,
        extension,
        key: CacheKey::base(&resolved.manifest_descriptor.digest),
        images,
    })
}

fn to_json_string(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|error| BuildError::Io {
        what: "encoding JSON".to_owned(),
        source: std::io::Error::other(error),
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| BuildError::Io {
        what: "encoding JSON".to_owned(),
        source: std::io::Error::other(error),
    })
}

/// Writes the config and manifest of one platform's image; returns the manifest descriptor.
fn write_image(
    ingest: &sealer_image_store::Ingest<'_>,
    state: &ImageState,
    platform: &Platform,
    epoch: u64,
    annotations: &BTreeMap<String, String>,
) -> Result<Descriptor> {
    let env: Vec<String> = state
        .extension
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut config = json!({
        "created": metadata::rfc3339(epoch),
        "architecture": platform.architecture,
        "os": platform.os,
    });
    if let Some(variant) = &platform.variant {
        config["variant"] = Value::String(variant.clone());
    }
    config["config"] = json!({ "Env": env, "Labels": state.labels });
    config["rootfs"] = json!({ "type": "layers", "diff_ids": state.diff_ids });
    config["history"] = Value::Array(state.history.clone());
    let config_bytes = to_json(&config)?;
    let config_digest = ingest.put_bytes(&config_bytes)?;
    let mut extension = state.extension.clone();
    extension.schema_version = EXTENSION_SCHEMA_VERSION.to_owned();
    if extension.image_type.is_empty() {
        extension.image_type = "kube-installer".to_owned();
    }
    let mut manifest_annotations = annotations.clone();
    manifest_annotations.insert(
        EXTENSION_ANNOTATION.to_owned(),
        serde_json::to_string(&extension).map_err(|error| BuildError::Io {
            what: "encoding JSON".to_owned(),
            source: std::io::Error::other(error),
        })?,
    );
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_owned()),
        artifact_type: None,
        config: Descriptor::new(
            media_type::OCI_CONFIG,
            config_digest,
            config_bytes.len() as u64,
        ),
        layers: state.layers.clone(),
        subject: None,
        annotations: manifest_annotations,
        extra: serde_json::Map::new(),
    };
    let bytes = to_json(&manifest)?;
    let digest = ingest.put_bytes(&bytes)?;
    Ok(Descriptor::new(
        media_type::OCI_MANIFEST,
        digest,
        bytes.len() as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::remote_file_name;

    #[test]
    fn remote_file_names() {
        assert_eq!(
            remote_file_name("https://x.io/a/calico.yaml?x=1#f").as_deref(),
            Some("calico.yaml")
        );
        assert_eq!(remote_file_name("https://x.io/").as_deref(), None);
        assert_eq!(remote_file_name("https://x.io").as_deref(), None);
        assert_eq!(remote_file_name("http://x.io/a/..").as_deref(), None);
    }
}
