//! `sealer save`.

use std::io::{BufWriter, IsTerminal, Write};

use anyhow::{Context, Result, bail};
use indicatif::BinaryBytes;
use sealer_fs_abstraction::OutputTarget;
use sealer_image_store::Store;
use sealer_image_store::archive::{self, ArchiveFormat, SaveOptions};

use super::parse_platform;
use crate::cli::{Format, SaveArgs};
use crate::progress::Bar;

pub fn run(store: &Store, args: &SaveArgs) -> Result<()> {
    let output = &args.output;
    let context = || format!("saving to {}", output.display());
    let platform = parse_platform(args.platform.as_deref())?;
    // A regular file is written next to the destination and renamed over it only when
    // complete (a failed save leaves no partial file behind); a device, FIFO or socket is
    // written into where it is; `-` is stdout.
    let target = OutputTarget::resolve(output).with_context(context)?;
    let to_stdout = target.is_stdout();
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write an archive to a terminal: redirect stdout or give -o FILE");
    }
    let file = target.open().with_context(context)?;
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
    // The archive went to stdout: the summary must not be appended to it.
    let mut lines = vec![];
    for (name, digest) in &report.images {
        lines.push(format!("Saved image {name} ({digest})"));
    }
    lines.push(format!(
        "Wrote {} ({} blobs, {})",
        if to_stdout {
            "the archive to stdout".to_owned()
        } else {
            output.display().to_string()
        },
        report.blobs,
        BinaryBytes(report.bytes)
    ));
    for line in lines {
        if to_stdout {
            tell!("{line}");
        } else {
            say!("{line}");
        }
    }
    Ok(())
}
