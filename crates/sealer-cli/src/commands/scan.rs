//! `sealer scan`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealer_builder::engine::{BuildOptions, ImagePlan, plan_images};
use sealer_builder::kubefile::DEFAULT_NAME;
use sealer_dep_scanner::{Finding, ImageListFile, ScanOptions, ScanReport};
use sealer_fs_abstraction::{FileKind, Fs, RealFs};
use sealer_image_store::Store;

use super::build::{Fetcher, open_context, pairs, parse_platforms};
use crate::cli::ScanArgs;

pub fn run(root: Option<&Path>, args: &ScanArgs) -> Result<()> {
    let options = scan_options(&args.image_lists, &args.ignored_image_lists, args.no_helm)?;
    let is_context = !args.tree
        && (args.file.is_some()
            || RealFs::open_root(&args.dir).is_ok_and(|dir| {
                dir.metadata(Path::new(DEFAULT_NAME))
                    .is_ok_and(|metadata| metadata.kind == FileKind::File)
            }));
    if is_context {
        let plan = plan_context(root, args, options)?;
        return print_plan(&plan, args.json);
    }
    let single = match args.dir.file_name() {
        Some(_) => {
            let (fs, name) = super::split_file(&args.dir)
                .with_context(|| format!("opening {}", args.dir.display()))?;
            let metadata = fs
                .metadata(&name)
                .with_context(|| format!("opening {}", args.dir.display()))?;
            (metadata.kind == FileKind::File).then_some((fs, name))
        }
        None => None,
    };
    let report = if let Some((fs, name)) = single {
        // One file: scanned in its directory, named by its file name.
        sealer_dep_scanner::scan_file(&fs, &name, &options)
    } else {
        let fs = RealFs::open_root(&args.dir)
            .with_context(|| format!("opening {}", args.dir.display()))?;
        sealer_dep_scanner::scan(&fs, &options)
    }
    .with_context(|| format!("scanning {}", args.dir.display()))?;
    print_report(&report, args.json)
}

/// The images `sealer build` of the context would carry: the build engine's own plan, with
/// the store the build would use (an absent store is an empty one: everything is pulled).
fn plan_context(root: Option<&Path>, args: &ScanArgs, scan: ScanOptions) -> Result<ImagePlan> {
    let (context, kubefile) = open_context(&args.dir, args.file.as_deref())?;
    let fetcher = Fetcher::new(&args.registry.ca_files);
    let fetch = |url: &str, into: &mut dyn Write| fetcher.fetch(url, into);
    let options = BuildOptions {
        build_args: pairs("--build-arg", &args.build_args)?,
        platforms: parse_platforms(args.platform.as_deref())?,
        fetch: Some(&fetch),
        scan,
        ..BuildOptions::default()
    };
    let empty;
    let store = match super::open_store(root, Store::open_existing) {
        Ok(store) => store,
        Err(_) => {
            empty = RealFs::temp_dir("sealer-scan-").context("making an empty store")?;
            Store::open_dir(empty.path())?
        }
    };
    plan_images(&kubefile, &context, &store, &options)
        .with_context(|| format!("scanning the build context {}", args.dir.display()))
}

fn print_plan(plan: &ImagePlan, json: bool) -> Result<()> {
    for warning in &plan.warnings {
        tell!("warning: {warning}");
    }
    // The same file warns once, whatever the number of platforms.
    let mut warned = std::collections::BTreeSet::new();
    for platform in &plan.platforms {
        for warning in &platform.scan_warnings {
            if warned.insert(warning.to_string()) {
                tell!("warning: {warning}");
            }
        }
    }
    if json {
        say!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    let several = plan.platforms.len() > 1;
    for platform in &plan.platforms {
        if several {
            say!("{}:", platform.platform);
        }
        if platform.images.is_empty() {
            say!("no images to carry");
        }
        for image in &platform.images {
            let state = if image.present {
                "in the store"
            } else {
                "to pull"
            };
            print_finding(&image.finding, state)?;
        }
        for reference in &platform.inherited {
            say!("{reference} (carried by the base image)");
        }
        let to_pull = platform
            .images
            .iter()
            .filter(|image| !image.present)
            .count();
        say!(
            "{} images to carry, {to_pull} to pull",
            platform.images.len()
        );
    }
    Ok(())
}

fn print_report(report: &ScanReport, json: bool) -> Result<()> {
    for warning in &report.warnings {
        tell!("warning: {warning}");
    }
    if json {
        say!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    if report.images.is_empty() {
        say!("no images found");
    }
    for finding in &report.images {
        print_finding(finding, "")?;
    }
    Ok(())
}

/// A reference (marked when only runtime rules found it, and with `state` when given) and
/// the places that name it.
fn print_finding(finding: &Finding, state: &str) -> Result<()> {
    let mut marks = Vec::new();
    if finding.runtime {
        // Named only in arguments, environment or configuration: started by a controller.
        marks.push("runtime");
    }
    if !state.is_empty() {
        marks.push(state);
    }
    if marks.is_empty() {
        say!("{}", finding.reference);
    } else {
        say!("{} ({})", finding.reference, marks.join(", "));
    }
    for source in &finding.sources {
        say!("    {source}");
    }
    Ok(())
}

/// The scan options of `--image-list`, `--ignored-image-list` and `--no-helm` (charts are
/// rendered when helm is on PATH, skipped quietly otherwise), for `scan` and `build` alike.
pub(crate) fn scan_options(
    image_lists: &[PathBuf],
    ignored_image_lists: &[PathBuf],
    no_helm: bool,
) -> Result<ScanOptions> {
    Ok(ScanOptions {
        image_lists: read_lists(image_lists)?,
        ignored_image_lists: read_lists(ignored_image_lists)?,
        helm: (!no_helm).then(|| "helm".into()),
    })
}

/// Reads the image lists given with `--image-list` / `--ignored-image-list`.
fn read_lists(paths: &[PathBuf]) -> Result<Vec<ImageListFile>> {
    paths
        .iter()
        .map(|path| {
            let (fs, name) = super::split_file(path)?;
            ImageListFile::read(&fs, &name)
                .with_context(|| format!("reading the image list {}", path.display()))
        })
        .collect()
}
