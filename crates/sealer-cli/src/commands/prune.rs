//! `sealer prune`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_image_store::Store;

pub fn run(store: &Store) -> Result<()> {
    let report = store
        .gc()
        .with_context(|| format!("pruning {}", store.location().display()))?;
    for digest in &report.removed {
        say!("removed {digest}");
    }
    say!(
        "Removed {} blobs ({}), {} leftovers of interrupted writes",
        report.removed.len(),
        BinaryBytes(report.bytes),
        report.leftovers
    );
    Ok(())
}
