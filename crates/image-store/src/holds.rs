//! Holds on fresh blobs: a blob a registry just received (an uploaded layer before its
//! manifest, a mounted blob, a pull-through fill) is reached by no `index.json` entry yet,
//! so a plain mark and sweep would remove it under the feet of the push that needs it.
//! [`Store::hold_fresh`] records an empty marker `holds/<algorithm>-<hex>` whose mtime is
//! the time of the hold; [`Store::gc_with`] keeps unreferenced blobs whose hold is younger
//! than [`GcOptions::keep_fresh`] and removes older holds. Holds are per digest and only the
//! registry writes them, so blobs the CLI pulled and an `rmi` released are freed at once.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::error::Result;
use crate::markers::Markers;
use crate::store::Store;

/// The hold markers.
const HOLDS: Markers = Markers::new("holds");

/// How long a fresh blob is kept by default: a push that uploads its layers and then its
/// manifest finishes well within it.
pub const DEFAULT_KEEP_FRESH: Duration = Duration::from_secs(3600);

/// What [`Store::gc_with`] keeps besides what `index.json` reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Unreferenced blobs held ([`Store::hold_fresh`]) more recently than this are kept;
    /// older holds are removed. `Duration::ZERO`: no blob is kept for being fresh.
    pub keep_fresh: Duration,
    /// Blobs kept as they are (a manifest among them does not keep its children): `sealer
    /// prune` passes the layers of the build cache's entries, which no `index.json` entry
    /// may reach yet.
    pub extra_roots: Vec<Digest>,
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            keep_fresh: DEFAULT_KEEP_FRESH,
            extra_roots: Vec::new(),
        }
    }
}

impl Store {
    /// Holds the blob `digest` as fresh (see the module documentation), if it is present:
    /// under the GC lock, so a blob this returns `true` for is kept by every GC for
    /// [`GcOptions::keep_fresh`] from now. Holding it again restarts the period. Returns
    /// `false`, holding nothing, when the blob is absent.
    pub fn hold_fresh(&self, digest: &Digest) -> Result<bool> {
        let _gc = self.gc_lock()?;
        if self.blobs().stat(digest)?.is_none() {
            return Ok(false);
        }
        self.write_hold(digest)?;
        Ok(true)
    }

    /// Writes (or renews) the hold of `digest`; the caller holds the GC lock and knows the
    /// blob is present (an upload's commit, within the same lock as its rename).
    pub(crate) fn write_hold(&self, digest: &Digest) -> Result<()> {
        // Losing the marker in a crash costs nothing.
        HOLDS.write(self.fs().as_ref(), digest, SystemTime::now())
    }

    /// The digests held more recently than `keep_fresh`; removes the older holds. Called by
    /// GC under the GC lock.
    pub(crate) fn fresh_holds(&self, keep_fresh: Duration) -> Result<BTreeSet<Digest>> {
        let fs = self.fs().as_ref();
        let mut fresh = BTreeSet::new();
        for digest in HOLDS.list(fs)? {
            let age = fs
                .symlink_metadata(&HOLDS.path(&digest))?
                .modified
                .and_then(|modified| modified.elapsed().ok())
                .unwrap_or_default();
            if age < keep_fresh {
                fresh.insert(digest);
            } else {
                HOLDS.remove(fs, &digest)?;
            }
        }
        Ok(fresh)
    }
}
