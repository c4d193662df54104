//! The local content-addressed image store of sealer.
//!
//! A [`Store`] is an OCI image layout on disk (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) that skopeo and umoci read directly. It keeps blobs verified and
//! manifests byte-exact, names images by full reference, resolves multi-arch indexes to a
//! platform, garbage-collects unreferenced content and checks itself ([`Store::fsck`]).
//! [`archive`] saves images to and loads them from oci-archive, docker-archive and OCI
//! layout directories, streaming.
//!
//! No network I/O happens here; registries are `sealer-registry-client`'s business. Every
//! file operation goes through a `sealer_fs_abstraction::Fs`.

#![deny(missing_docs)]

pub mod archive;
mod blob;
mod cached;
mod digest;
pub mod embedded;
mod error;
mod holds;
mod images;
mod ingest;
mod markers;
pub mod model;
pub mod reference;
mod repositories;
mod store;
#[cfg(feature = "test-support")]
pub mod testing;
mod upload;

pub use blob::{BlobStore, FsBlobStore, PutOutcome};
pub use cached::{CachedBlob, EvictReport, is_cached_entry};
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use embedded::{EMBEDDED_LAYOUT_ANNOTATION, EmbeddedReport, load_embedded};
pub use error::{Result, StoreError};
pub use holds::{DEFAULT_KEEP_FRESH, GcOptions};
pub use images::ImageSummary;
pub use ingest::{CommitReport, Ingest};
pub use model::{Descriptor, Index, Manifest, ManifestDocument, Platform};
pub use reference::{Reference, ReferenceError};
pub use repositories::entry_repository;
pub use store::{
    FsckReport, GcGuard, GcReport, ImageEntry, IndexSnapshot, MAX_MANIFEST_SIZE, QUARANTINE_DIR,
    Reachability, ResolvedImage, Store, choose_platform, is_manifest_type, platforms_of,
};
pub use upload::{BlobUpload, UploadCheckpoint};
