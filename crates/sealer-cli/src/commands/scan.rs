//! `sealer scan`.

use anyhow::{Context, Result};
use sealer_dep_scanner::{ImageListFile, ScanOptions};
use sealer_fs_abstraction::{FileKind, Fs, RealFs};

use crate::cli::ScanArgs;

pub fn run(args: &ScanArgs) -> Result<()> {
    let options = ScanOptions {
        image_lists: read_lists(&args.image_lists)?,
        ignored_image_lists: read_lists(&args.ignored_image_lists)?,
        // Charts are also rendered when helm is on PATH (skipped quietly otherwise).
        helm: (!args.no_helm).then(|| "helm".into()),
    };
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
    for warning in &report.warnings {
        tell!("warning: {warning}");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if report.images.is_empty() {
        say!("no images found");
    }
    for finding in &report.images {
        if finding.runtime {
            // Named only in arguments, environment or configuration: started by a controller.
            say!("{} (runtime)", finding.reference);
        } else {
            say!("{}", finding.reference);
        }
        for source in &finding.sources {
            say!("    {source}");
        }
    }
    Ok(())
}

/// Reads the image lists given with `--image-list` / `--ignored-image-list`.
pub(crate) fn read_lists(paths: &[std::path::PathBuf]) -> Result<Vec<ImageListFile>> {
    paths
        .iter()
        .map(|path| {
            let (fs, name) = super::split_file(path)?;
            ImageListFile::read(&fs, &name)
                .with_context(|| format!("reading the image list {}", path.display()))
        })
        .collect()
}
