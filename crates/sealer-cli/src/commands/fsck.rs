//! `sealer fsck`.

use anyhow::{Context, Result, bail};
use indicatif::BinaryBytes;
use sealer_image_store::{Digest, Store};

/// Manifests named per missing blob; the rest are counted.
const MAX_REFERRERS_SHOWN: usize = 3;
/// Problems named in the final error line; the rest are counted.
const MAX_SUMMARY: usize = 10;

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
    let missing = group_missing(&report.missing);
    for blob in &missing {
        say!("missing blob {}: {}", blob.digest, blob.describe());
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
    if report.cached > 0 {
        say!(
            "{} blobs belong to a registry's pull-through cache (kept by prune; its size limit evicts them)",
            report.cached
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
        missing
            .iter()
            .map(|blob| format!("missing {}", blob.digest)),
    );
    if problems.len() > MAX_SUMMARY {
        let more = problems.len() - MAX_SUMMARY;
        problems.truncate(MAX_SUMMARY);
        problems.push(format!("and {more} more"));
    }
    bail!(
        "the store {} is inconsistent: {}",
        location.display(),
        problems.join(", ")
    )
}

/// One missing blob and who needs it.
struct MissingBlob<'a> {
    digest: &'a Digest,
    /// Named by `index.json` itself (a top-level manifest or index is absent).
    named_in_index: bool,
    /// Manifests and indexes that reference it.
    referrers: Vec<&'a Digest>,
}

impl MissingBlob<'_> {
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.named_in_index {
            parts.push("named in index.json but absent".to_owned());
        }
        if !self.referrers.is_empty() {
            let count = self.referrers.len();
            let mut shown: Vec<String> = self
                .referrers
                .iter()
                .take(MAX_REFERRERS_SHOWN)
                .map(ToString::to_string)
                .collect();
            if count > MAX_REFERRERS_SHOWN {
                shown.push("…".to_owned());
            }
            let noun = if count == 1 { "manifest" } else { "manifests" };
            parts.push(format!("needed by {count} {noun} ({})", shown.join(", ")));
        }
        parts.join(", ")
    }
}

/// The fsck report's (referrer, missing blob) pairs as one entry per blob, in the order
/// the blobs were first found: one blob shared by thousands of manifests is one line.
fn group_missing(pairs: &[(Digest, Digest)]) -> Vec<MissingBlob<'_>> {
    let mut blobs: Vec<MissingBlob<'_>> = Vec::new();
    let mut position = std::collections::HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (referrer, missing) in pairs {
        if !seen.insert((referrer, missing)) {
            continue;
        }
        let at = *position.entry(missing).or_insert_with(|| {
            blobs.push(MissingBlob {
                digest: missing,
                named_in_index: false,
                referrers: Vec::new(),
            });
            blobs.len() - 1
        });
        let blob = &mut blobs[at];
        if referrer == missing {
            blob.named_in_index = true;
        } else {
            blob.referrers.push(referrer);
        }
    }
    blobs
}
