//! `sealer load`.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use indicatif::BinaryBytes;
use sealer_fs_abstraction::{InputSource, RealFs, STDIO_NAME};
use sealer_image_store::archive::{self, LoadOptions, LoadReport, Progress};
use sealer_image_store::{Reference, Store};

use crate::cli::LoadArgs;
use crate::progress::Bar;

pub fn run(store: &Store, args: &LoadArgs) -> Result<()> {
    let input = &args.input;
    let name: Option<Reference> = args.name.as_deref().map(str::parse).transpose()?;
    // `-`, `/dev/stdin`, a FIFO or `<(…)` are read as streams: `archive::load` reads in one
    // pass and stages blobs on disk, so memory stays flat whatever the archive's size.
    if input.as_os_str() == STDIO_NAME && std::io::stdin().is_terminal() {
        bail!("refusing to read an archive from a terminal: pipe one in, or give -i FILE");
    }
    let source =
        InputSource::open(input).with_context(|| format!("opening {}", input.display()))?;
    let bar = Bar::new("loading");
    let options = LoadOptions {
        name: name.as_ref(),
        progress: &bar,
        ..LoadOptions::default()
    };
    let report = match source {
        InputSource::Dir(dir) => {
            let context = || format!("loading OCI layout {}", input.display());
            let layout = RealFs::open_root(dir).with_context(context)?;
            archive::load_layout(store, &layout, options).with_context(context)?
        }
        InputSource::Stream { mut reader, len } => {
            let context = || match input.as_os_str() == STDIO_NAME {
                true => "loading an archive from stdin".to_owned(),
                false => format!("loading archive {}", input.display()),
            };
            if let Some(len) = len {
                bar.set_total(len);
            }
            archive::load(store, &mut reader, options).with_context(context)?
        }
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
