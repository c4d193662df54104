//! `sealer push`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_image_store::{Reference, Store};

use super::{registry_client, runtime};
use crate::cli::PushArgs;
use crate::progress::Transfers;

pub fn run(store: &Store, args: &PushArgs) -> Result<()> {
    let destination: Reference = match &args.destination {
        Some(destination) => Reference::parse_user_input(destination)?,
        None => args
            .source
            .parse()
            .with_context(|| format!("{} is not an image name: give a destination", args.source))?,
    };
    let client = registry_client(destination.registry(), &args.registry, args.transfer.jobs)?;
    let progress = Transfers::new(args.transfer.quiet);
    let report = runtime()?
        .block_on(client.push(store, &args.source, &destination, &progress))
        .with_context(|| format!("pushing {} to {destination}", args.source))?;
    progress.clear();
    say!("Pushed {} ({})", report.destination, report.digest);
    say!(
        "{} blobs uploaded ({}), {} mounted, {} already there",
        report.blobs_uploaded,
        BinaryBytes(report.bytes_uploaded),
        report.blobs_mounted,
        report.blobs_existing
    );
    Ok(())
}
