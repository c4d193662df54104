//! `sealer build`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sealer_builder::engine::{
    BuildMode, BuildObserver, BuildOptions, LayerCompression, StepInfo, StepOutcome, build,
};
use sealer_builder::kubefile::{self, DEFAULT_NAME};
use sealer_dep_scanner::ScanOptions;
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
fn pairs(flag: &str, values: &[String]) -> Result<BTreeMap<String, String>> {
    values
        .iter()
        .map(|value| match value.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
            _ => bail!("{flag} {value:?}: expected KEY=VALUE"),
        })
        .collect()
}

pub fn run(store: &Store, args: &BuildArgs) -> Result<()> {
    let context = RealFs::open_root(&args.context)
        .with_context(|| format!("opening the build context {}", args.context.display()))?;
    let kubefile = match &args.file {
        Some(file) => {
            let (fs, name) = split_file(file)?;
            let parsed = kubefile::parse_file(&fs, &name);
            parsed.with_context(|| format!("reading {}", file.display()))?
        }
        None => kubefile::parse_file(&context, Path::new(DEFAULT_NAME))
            .with_context(|| format!("reading {}/{DEFAULT_NAME}", args.context.display()))?,
    };
    for warning in &kubefile.warnings {
        tell!("{warning}");
    }
    let platforms = match &args.platform {
        Some(list) => list
            .split(',')
            .map(|text| Platform::parse(text.trim()))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
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
    let pull = |reference: &str, platform: &Platform| -> Result<(), String> {
        let image: Reference = reference.parse().map_err(|e| format!("{e}"))?;
        let client =
            registry_client(image.registry(), &args.registry, 4).map_err(|e| format!("{e:#}"))?;
        let runtime = match pull_runtime.get() {
            Some(runtime) => runtime,
            None => {
                let made = runtime().map_err(|e| format!("{e:#}"))?;
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
        // The whole chain: a transport error's cause (refused, DNS, TLS) is deep in it.
        pulled
            .map(|_| ())
            .map_err(|e| format!("pulling: {}", sealer_registry_client::error_chain(&e)))
    };
    let downloader = std::cell::OnceCell::new();
    let fetch = |url: &str, into: &mut dyn std::io::Write| -> Result<(), String> {
        let downloader = match downloader.get() {
            Some(downloader) => downloader,
            None => {
                let made =
                    Downloader::new(&args.registry.ca_files).map_err(|e| format!("{e:#}"))?;
                downloader.get_or_init(|| made)
            }
        };
        tell!("Downloading {url}");
        downloader.get_into(url, into).map_err(|e| format!("{e:#}"))
    };
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
        // The image scan also renders charts when helm is on PATH (skipped otherwise).
        scan: ScanOptions {
            image_lists: super::scan::read_lists(&args.image_lists)?,
            ignored_image_lists: super::scan::read_lists(&args.ignored_image_lists)?,
            helm: Some("helm".into()),
        },
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
