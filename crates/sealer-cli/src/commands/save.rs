//! `sealer save`.

use std::io::{BufWriter, Write};

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_fs_abstraction::AtomicFile;
use sealer_image_store::Store;
use sealer_image_store::archive::{self, ArchiveFormat, SaveOptions};

use super::{parse_platform, split_file};
use crate::cli::{Format, SaveArgs};
use crate::progress::Bar;

pub fn run(store: &Store, args: &SaveArgs) -> Result<()> {
    let output = &args.output;
    let context = || format!("saving to {}", output.display());
    let platform = parse_platform(args.platform.as_deref())?;
    let (fs, name) = split_file(output).with_context(context)?;
    // Written next to the destination and renamed over it only when complete: a failed
    // save leaves no partial file behind.
    let file = AtomicFile::create(&fs, &name).with_context(context)?;
    let mut writer = BufWriter::with_capacity(1 << 20, file);
    let bar = Bar::new("saving");
    let options = SaveOptions {
        format: match args.format {
            Format::OciArchive => ArchiveFormat::OciArchive,
            Format::DockerArchive => ArchiveFormat::DockerArchive,
        },
        platform: platform.as_ref(),
        progress: &bar,
    };
    let report = archive::save(store, &args.images, &mut writer, options).with_context(context)?;
    writer.flush().with_context(context)?;
    let file = writer
        .into_inner()
        .map_err(|error| error.into_error())
        .with_context(context)?;
    file.commit().with_context(context)?;
    bar.finish();
    for (name, digest) in &report.images {
        say!("Saved image {name} ({digest})");
    }
    say!(
        "Wrote {} ({} blobs, {})",
        output.display(),
        report.blobs,
        BinaryBytes(report.bytes)
    );
    Ok(())
}
