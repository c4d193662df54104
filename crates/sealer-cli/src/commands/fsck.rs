//! `sealer fsck`.

use anyhow::{Context, Result, bail};
use indicatif::BinaryBytes;
use sealer_image_store::Store;

pub fn run(store: &Store) -> Result<()> {
    let location = store.location();
    let report = store
        .fsck()
        .with_context(|| format!("checking {}", location.display()))?;
    say!(
        "checked {} blobs ({}) in {}",
        report.checked,
        BinaryBytes(report.bytes),
        location.display()
    );
    for digest in &report.corrupt {
        match report.quarantined.iter().find(|(moved, _)| moved == digest) {
            Some((_, moved_to)) => say!(
                "corrupt blob {digest}: its content does not hash to its name (moved to {}; load or pull the image again)",
                location.join(moved_to).display()
            ),
            None => say!("corrupt blob {digest}: its content does not hash to its name"),
        }
    }
    for (referrer, missing) in &report.missing {
        if referrer == missing {
            say!("missing blob {missing}: named in index.json but absent");
        } else {
            say!("missing blob {missing}: referenced by {referrer}");
        }
    }
    if report.absent_platforms > 0 {
        say!(
            "{} platforms of multi-arch images are not in the store (not an error)",
            report.absent_platforms
        );
    }
    if report.absent_partial > 0 {
        say!(
            "{} blobs of pull-through cached images were never fetched (not an error)",
            report.absent_partial
        );
    }
    if report.unreferenced > 0 || report.leftovers > 0 {
        say!(
            "{} unreferenced blobs and {} leftovers of interrupted writes (`sealer prune` removes them)",
            report.unreferenced,
            report.leftovers
        );
    }
    if report.is_clean() {
        say!("store is consistent");
        return Ok(());
    }
    let mut problems: Vec<String> = report
        .corrupt
        .iter()
        .map(|digest| format!("corrupt {digest}"))
        .collect();
    problems.extend(
        report
            .missing
            .iter()
            .map(|(_, missing)| format!("missing {missing}")),
    );
    bail!(
        "the store {} is inconsistent: {}",
        location.display(),
        problems.join(", ")
    )
}
