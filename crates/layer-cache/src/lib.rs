//! Reuses build layers when the base image, the instruction and its inputs are unchanged.
//!
//! A build walks its Kubefile computing one [`CacheKey`] per instruction:
//!
//! ```text
//! key₀ = CacheKey::base(base manifest digest)      (CacheKey::scratch() for FROM scratch)
//! keyₙ = keyₙ₋₁.next(resolved instruction text, input digest)
//! ```
//!
//! where the input digest is [`InputHasher`] over the files a COPY/ADD/APP reads (paths,
//! contents, permission bits, symlink targets — not mtimes, not owners),
//! [`InputDigest::of_env`] for a RUN (its command is in the text; its environment sorted),
//! and [`InputDigest::none`] otherwise. Seeding with the base image's manifest digest fixes
//! sealer v0.8's flaw (its chain started empty, so a new base reused stale layers).
//!
//! [`LayerCache`] maps keys to the layers steps produced (`cache/layers/` in the image
//! store; lookups verify the blob is still there) and owns the per-context [`StatCache`],
//! which lets an unchanged context be hashed from `stat` alone.
//!
//! For the build engine, per step:
//!
//! ```no_run
//! # use sealer_layer_cache::*;
//! # fn step(store: &sealer_image_store::Store, context: &dyn sealer_fs_abstraction::Fs,
//! #         parent: &CacheKey, text: &str, sources: &[&std::path::Path])
//! #         -> Result<(), CacheError> {
//! let cache = LayerCache::open(store)?;
//! let mut stat = cache.load_stat_cache(context)?;          // once per build
//! let mut input = InputHasher::new();
//! for source in sources {
//!     input.add_path(context, source, &mut stat)?;          // glob-expanded, ${ARCH} replaced
//! }
//! let key = parent.next(text, &input.finish());
//! match cache.get(&key)? {
//!     Some(entry) => { /* reuse entry.layer / entry.diff_id */ }
//!     None => { /* build the layer, put its blob in the store, then: */
//!         // cache.put(&key, &CacheEntry { layer, diff_id, created_by: text.to_owned() })?;
//!     }
//! }
//! cache.save_stat_cache(context, &mut stat)?;               // once, at the end
//! # Ok(()) }
//! ```
//!
//! Every file operation goes through `sealer_fs_abstraction::Fs` (the store's, and the build
//! context's).

#![deny(missing_docs)]

mod error;
mod index;
mod key;
mod stat;

pub use error::{CacheError, Result};
pub use index::{CACHE_DIR, CacheEntry, LayerCache, PruneReport, prune};
pub use key::{CacheKey, InputDigest, InputHasher, KEY_VERSION};
pub use stat::{HashStats, StatCache};
