//! `sealer load`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_fs_abstraction::{FileKind, Fs, RealFs};
use sealer_image_store::archive::{self, LoadOptions, LoadReport, Progress};
use sealer_image_store::{Reference, Store};

use super::split_file;
use crate::cli::LoadArgs;
use crate::progress::Bar;

pub fn run(store: &Store, args: &LoadArgs) -> Result<()> {
    let input = &args.input;
    let name: Option<Reference> = args.name.as_deref().map(str::parse).transpose()?;
    let (fs, file_name) =
        split_file(input).with_context(|| format!("opening {}", input.display()))?;
    let metadata = fs
        .metadata(&file_name)
        .with_context(|| format!("opening {}", input.display()))?;
    let bar = Bar::new("loading");
    let options = LoadOptions {
        name: name.as_ref(),
        progress: &bar,
        ..LoadOptions::default()
    };
    let report = if metadata.kind == FileKind::Dir {
        let context = || format!("loading OCI layout {}", input.display());
        let layout = RealFs::open_root(input).with_context(context)?;
        archive::load_layout(store, &layout, options).with_context(context)?
    } else {
        let context = || format!("loading archive {}", input.display());
        let mut file = fs.open(&file_name).with_context(context)?;
        bar.set_total(metadata.len);
        archive::load(store, &mut file, options).with_context(context)?
    };
    bar.finish();
    print_report(&report)
}

fn print_report(report: &LoadReport) -> Result<()> {
    for warning in &report.warnings {
        tell!("warning: {warning}");
    }
    for (name, digest) in &report.images {
        match name {
            Some(name) => say!("Loaded image {name} ({digest})"),
            None => say!("Loaded image {digest} (unnamed)"),
        }
    }
    let commit = &report.commit;
    say!(
        "{} blobs added ({}), {} already present",
        commit.blobs_added,
        BinaryBytes(commit.bytes_added),
        commit.blobs_reused
    );
    if commit.absent_platforms > 0 {
        tell!(
            "warning: {} platforms of multi-arch images were not in the input and are not loaded",
            commit.absent_platforms
        );
    }
    Ok(())
}
