//! `sealer scan`.

use anyhow::{Context, Result};
use sealer_dep_scanner::{ImageListFile, ScanOptions};
use sealer_fs_abstraction::RealFs;

use crate::cli::ScanArgs;

pub fn run(args: &ScanArgs) -> Result<()> {
    let options = ScanOptions {
        image_lists: read_lists(&args.image_lists)?,
        ignored_image_lists: read_lists(&args.ignored_image_lists)?,
        // Charts are also rendered when helm is on PATH (skipped quietly otherwise).
        helm: (!args.no_helm).then(|| "helm".into()),
    };
    let fs =
        RealFs::open_root(&args.dir).with_context(|| format!("opening {}", args.dir.display()))?;
    let report = sealer_dep_scanner::scan(&fs, &options)
        .with_context(|| format!("scanning {}", args.dir.display()))?;
    for warning in &report.warnings {
        tell!("warning: {warning}");
    }
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for finding in &report.images {
        say!("{}", finding.reference);
        for source in &finding.sources {
            say!("    {source}");
        }
    }
    Ok(())
}

fn read_lists(paths: &[std::path::PathBuf]) -> Result<Vec<ImageListFile>> {
    paths
        .iter()
        .map(|path| {
            let (fs, name) = super::split_file(path)?;
            ImageListFile::read(&fs, &name)
                .with_context(|| format!("reading the image list {}", path.display()))
        })
        .collect()
}
