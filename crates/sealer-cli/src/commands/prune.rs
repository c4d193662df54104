//! `sealer prune`.

use anyhow::{Context, Result};
use indicatif::BinaryBytes;
use sealer_image_store::{GcOptions, Store};
use sealer_layer_cache::LayerCache;

use crate::cli::PruneArgs;

pub fn run(store: &Store, args: &PruneArgs) -> Result<()> {
    let pruning = || format!("pruning {}", store.location().display());
    // Build-cache entries whose layer no image uses go first; the layers of the entries left
    // (used by images, or added by a concurrent build meanwhile) are kept by the sweep.
    let cache = LayerCache::open(store).with_context(pruning)?;
    let cached = cache.prune_unused().with_context(pruning)?;
    let options = GcOptions {
        keep_fresh: args.keep_fresh.0,
        extra_roots: cache.layer_digests().with_context(pruning)?,
    };
    let report = store.gc_with(&options).with_context(pruning)?;
    for digest in &report.removed {
        say!("removed {digest}");
    }
    say!(
        "Removed {} blobs ({}), {} leftovers of interrupted writes, {} build cache entries",
        report.removed.len(),
        BinaryBytes(report.bytes),
        report.leftovers,
        cached.removed
    );
    if report.kept_cached > 0 {
        say!(
            "Kept {} blobs of a registry's pull-through cache (its cache.max_size evicts them)",
            report.kept_cached
        );
    }
    if report.kept_fresh > 0 {
        say!(
            "Kept {} unreferenced blobs a registry received within {:?} (--keep-fresh)",
            report.kept_fresh,
            args.keep_fresh.0
        );
    }
    Ok(())
}
