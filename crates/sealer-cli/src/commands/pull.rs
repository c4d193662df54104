//! `sealer pull`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_image_store::{Reference, Store};
use sealer_registry_client::PlatformSelection;

use super::{parse_platform, registry_client, runtime};
use crate::cli::PullArgs;
use crate::progress::Transfers;

pub fn run(store: &Store, args: &PullArgs) -> Result<()> {
    let image = Reference::parse_user_input(&args.image)?;
    let platforms = match parse_platform(args.platform.as_deref())? {
        Some(platform) => PlatformSelection::Only(platform),
        None if args.all_platforms => PlatformSelection::All,
        None => PlatformSelection::Host,
    };
    let client = registry_client(image.registry(), &args.registry, args.transfer.jobs)?;
    let progress = Transfers::new(args.transfer.quiet);
    let report = runtime()?
        .block_on(client.pull(store, &image, platforms, &progress))
        .with_context(|| format!("pulling {image}"))?;
    progress.clear();
    say!("Pulled {} ({})", report.reference, report.digest);
    if !report.platforms.is_empty() {
        let names: Vec<String> = report.platforms.iter().map(ToString::to_string).collect();
        say!("Platforms: {}", names.join(", "));
    }
    say!(
        "{} blobs fetched ({}), {} already present",
        report.blobs_fetched,
        BinaryBytes(report.bytes_fetched),
        report.blobs_present
    );
    if report.resumes > 0 {
        say!(
            "{} downloads resumed after a dropped connection",
            report.resumes
        );
    }
    Ok(())
}
