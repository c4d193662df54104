//! `sealer build`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sealer_builder::engine::{
    BuildMode, BuildObserver, BuildOptions, HookError, LayerCompression, StepInfo, StepOutcome,
    build,
};
use sealer_builder::kubefile::{self, DEFAULT_NAME, Kubefile};
use sealer_fs_abstraction::RealFs;
use sealer_image_store::{Platform, Reference, Store};
use sealer_registry_client::PlatformSelection;

use super::{registry_client, runtime, split_file};
use crate::cli::{BuildArgs, BuildModeArg, LayerCompressionArg};
use crate::download::Downloader;
use crate::progress::Transfers;

/// Prints one line per finished step; a spinner on stderr while a step runs (terminals
/// only).
struct Steps {
    spinner: Option<ProgressBar>,
    quiet: bool,
    multi_platform: bool,
}

impl Steps {
    fn label(&self, step: &StepInfo) -> String {
        let platform = if self.multi_platform {
            format!("[{}] ", step.platform)
        } else {
            String::new()
        };
        format!(
            "{platform}STEP {}/{}: {}",
            step.number, step.total, step.text
        )
    }
}

impl BuildObserver for Steps {
    fn step_started(&mut self, step: &StepInfo) {
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(self.label(step));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.spinner = Some(bar);
    }

    fn step_finished(&mut self, step: &StepInfo, outcome: StepOutcome) {
        if let Some(spinner) = self.spinner.take() {
            spinner.finish_and_clear();
        }
        let result = match outcome {
            StepOutcome::Cached => "CACHED".to_owned(),
            StepOutcome::Built(took) | StepOutcome::Metadata(took) => {
                format!("{:.2}s", took.as_secs_f64())
            }
        };
        let _ = writeln!(std::io::stdout(), "{}  {result}", self.label(step));
    }
}

/// `KEY=VALUE` pairs of a repeatable flag.
pub(super) fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => bail!("{flag} {value:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Opens the build context `dir` and parses its Kubefile (`file`, default
/// `dir/Kubefile`); its warnings go to stderr.
pub(super) fn open_context(dir: &Path, file: Option<&Path>) -> Result<(RealFs, Kubefile)> {
    let context = RealFs::open_root(dir)
        .with_context(|| format!("opening the build context {}", dir.display()))?;
    let kubefile = match file {
        Some(file) => {
            let (fs, name) = split_file(file)?;
            let parsed = kubefile::parse_file(&fs, &name);
            parsed.with_context(|| format!("reading {}", file.display()))?
        }
        None => kubefile::parse_file(&context, Path::new(DEFAULT_NAME))
            .with_context(|| format!("reading {}/{DEFAULT_NAME}", dir.display()))?,
    };
    for warning in &kubefile.warnings {
        tell!("{warning}");
    }
    Ok((context, kubefile))
}

/// `--platform`'s comma-separated list (empty: the host's).
pub(super) fn parse_platforms(list: Option<&str>) -> Result<Vec<Platform>> {
    match list {
        Some(list) => Ok(list
            .split(',')
            .map(|text| Platform::parse(text.trim()))
            .collect::<Result<Vec<_>, _>>()?),
        None => Ok(Vec::new()),
    }
}

/// The engine's fetch hook: downloads `http(s)://` sources, the downloader made on first
/// use.
pub(super) struct Fetcher<'a> {
    ca_files: &'a [PathBuf],
    downloader: std::cell::OnceCell<Downloader>,
}

impl<'a> Fetcher<'a> {
    pub(super) fn new(ca_files: &'a [PathBuf]) -> Self {
        Self {
            ca_files,
            downloader: std::cell::OnceCell::new(),
        }
    }

    pub(super) fn fetch(&self, url: &str, into: &mut dyn Write) -> Result<(), HookError> {
        let downloader = match self.downloader.get() {
            Some(downloader) => downloader,
            None => {
                let made = Downloader::new(self.ca_files)?;
                self.downloader.get_or_init(|| made)
            }
        };
        tell!("Downloading {url}");
        Ok(downloader.get_into(url, into)?)
    }
}

pub fn run(store: &Store, args: &BuildArgs) -> Result<()> {
    let (context, kubefile) = open_context(&args.context, args.file.as_deref())?;
    let platforms = parse_platforms(args.platform.as_deref())?;
    let tags = args
        .tags
        .iter()
        .map(|tag| {
            tag.parse::<Reference>()
                .with_context(|| format!("-t {tag}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let source_date_epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(text) if !text.is_empty() => Some(
            text.parse::<u64>()
                .with_context(|| format!("SOURCE_DATE_EPOCH={text}: expected seconds"))?,
        ),
        _ => None,
    };
    let pull_runtime = std::cell::OnceCell::new();
    let pull = |reference: &str, platform: &Platform| -> Result<(), HookError> {
        let image: Reference = reference.parse()?;
        let client = registry_client(image.registry(), &args.registry, 4)?;
        let runtime = match pull_runtime.get() {
            Some(runtime) => runtime,
            None => {
                let made = runtime()?;
                pull_runtime.get_or_init(|| made)
            }
        };
        tell!("Pulling {image} ({platform})");
        let progress = Transfers::new(args.quiet);
        let pulled = runtime.block_on(client.pull(
            store,
            &image,
            PlatformSelection::Only(platform.clone()),
            &progress,
        ));
        progress.clear();
        // The error itself: its causes (refused, DNS, TLS) are printed with the chain.
        Ok(pulled.map(drop)?)
    };
    let fetcher = Fetcher::new(&args.registry.ca_files);
    let fetch = |url: &str, into: &mut dyn Write| fetcher.fetch(url, into);
    let options = BuildOptions {
        tags,
        build_args: pairs("--build-arg", &args.build_args)?,
        labels: pairs("--label", &args.labels)?,
        annotations: pairs("--annotation", &args.annotations)?,
        platforms,
        no_cache: args.no_cache,
        source_date_epoch,
        compression: match args.compression {
            LayerCompressionArg::Gzip => LayerCompression::Gzip,
            LayerCompressionArg::Zstd => LayerCompression::Zstd,
        },
        pull: Some(&pull),
        fetch: Some(&fetch),
        build_mode: match args.build_mode {
            BuildModeArg::Full => BuildMode::Full,
            BuildModeArg::Lite => BuildMode::Lite,
        },
        scan: super::scan::scan_options(&args.image_lists, &args.ignored_image_lists, false)?,
    };
    let mut steps = Steps {
        spinner: None,
        quiet: args.quiet,
        multi_platform: options.platforms.len() > 1,
    };
    let report = build(&kubefile, &context, store, &options, &mut steps)?;
    say!(
        "{} layers built, {} from the cache",
        report.layers_built,
        report.layers_cached
    );
    for tag in &options.tags {
        say!("Tagged {tag}");
    }
    say!("{}", report.descriptor.digest);
    Ok(())
}
