//! The [`Store`]: an OCI image layout on an [`Fs`] with tags, resolution, GC and fsck
//! (`maintenance.rs`: the GC lock, GC, fsck; `index_cache.rs`: the parsed `index.json`
//! reused while the file is unchanged).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sealer_fs_abstraction::{ErrorChain, Fs, RealFs};

use crate::blob::{BlobStore, FsBlobStore};
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::ingest::Ingest;
use crate::model::{
    Descriptor, Index, Manifest, ManifestDocument, Platform, REF_NAME_ANNOTATION, media_type,
};
use crate::reference::Reference;

mod index_cache;
mod maintenance;

use self::index_cache::{IndexCache, IndexStamp};
pub use self::maintenance::{FsckReport, GcGuard, GcReport};

/// `oci-layout` content.
const OCI_LAYOUT: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_JSON: &str = "index.json";
/// Serialises `index.json` read-modify-write cycles across processes.
const INDEX_LOCK: &str = "index.json.lock";
/// Held by prune while it sweeps and by ingests while they commit.
pub(crate) const GC_LOCK: &str = "gc.lock";
/// Largest manifest the store reads (registries cap them at 4 MiB).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Where imports stage their blobs (see [`Ingest`]).
pub(crate) const INGEST_DIR: &str = "ingest";
/// Where registry uploads are written (see `BlobUpload`).
pub(crate) const UPLOAD_DIR: &str = "uploads";
/// Directories of in-progress work whose crash leftovers `gc` removes.
const WORK_DIRS: [&str; 2] = [INGEST_DIR, UPLOAD_DIR];
/// Nested indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 8;
/// Where `fsck` moves blobs whose content does not hash to their name.
pub const QUARANTINE_DIR: &str = "quarantine";

/// An image named in the store's `index.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageEntry {
    /// The full reference (`registry/repository:tag`), or `None` for an untagged entry.
    pub name: Option<String>,
    /// What the name points to: a manifest or an index.
    pub descriptor: Descriptor,
}

/// An image resolved down to one platform's manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The store's name for it, when it has one.
    pub name: Option<String>,
    /// The entry the reference named (an index for multi-arch images).
    pub top: Descriptor,
    /// The indexes walked from `top` down to the manifest (empty for a single-platform
    /// image), `top` first.
    pub indexes: Vec<Descriptor>,
    /// The single-platform manifest chosen.
    pub manifest_descriptor: Descriptor,
    /// That manifest, parsed.
    pub manifest: Manifest,
}

/// The local image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/`) that
/// skopeo, umoci and containerd read as `oci:ROOT:NAME`. Tags are `index.json` entries
/// annotated with `org.opencontainers.image.ref.name` = the full reference.
///
/// Every write is atomic and verified: blobs are hashed while written and renamed into place
/// only on a digest match; `index.json` is replaced atomically under a file lock, so
/// concurrent processes lose no update and a crash leaves the old or the new state.
#[derive(Debug, Clone)]
pub struct Store {
    fs: Arc<dyn Fs>,
    blobs: FsBlobStore,
    /// The last `index.json` read or written, shared by clones.
    index_cache: Arc<IndexCache>,
}

/// `index.json` parsed, with its entries found by name and by digest in O(1). Obtained from
/// [`Store::index_snapshot`]; immutable, so it can be held while the store changes.
#[derive(Debug)]
pub struct IndexSnapshot {
    index: Index,
    by_name: HashMap<String, usize>,
    by_digest: HashMap<Digest, usize>,
}

impl IndexSnapshot {
    fn new(index: Index) -> Self {
        let mut by_name = HashMap::with_capacity(index.manifests.len());
        let mut by_digest = HashMap::with_capacity(index.manifests.len());
        for (at, entry) in index.manifests.iter().enumerate() {
            // The first entry wins, as a scan in order would find it.
            if let Some(name) = entry.ref_name() {
                by_name.entry(name.to_owned()).or_insert(at);
            }
            by_digest.entry(entry.digest.clone()).or_insert(at);
        }
        Self {
            index,
            by_name,
            by_digest,
        }
    }

    /// The whole `index.json`.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The entry named `name` (a full reference with its tag:
    /// `docker.io/library/nginx:latest`).
    pub fn by_name(&self, name: &str) -> Option<&Descriptor> {
        self.by_name
            .get(name)
            .and_then(|&at| self.index.manifests.get(at))
    }

    /// The first entry (named or not) that points to `digest`.
    pub fn by_digest(&self, digest: &Digest) -> Option<&Descriptor> {
        self.by_digest
            .get(digest)
            .and_then(|&at| self.index.manifests.get(at))
    }
}

impl Store {
    /// Opens the layout rooted at `fs`, creating it when the root is empty.
    pub fn open(fs: Arc<dyn Fs>) -> Result<Self> {
        let store = Self {
            blobs: FsBlobStore::new(fs.clone()),
            fs,
            index_cache: Arc::default(),
        };
        store.init()?;
        Ok(store)
    }

    /// Opens (creating if needed) the store in the directory `root`.
    pub fn open_dir(root: &Path) -> Result<Self> {
        let fs = RealFs::create_root(root)?;
        Self::open(Arc::new(fs))
    }

    /// Opens the store in the existing directory `root` without creating anything: for
    /// read-only use, where a mistyped path must not become a new empty store.
    pub fn open_existing(root: &Path) -> Result<Self> {
        let fs = RealFs::open_root(root)?;
        if !fs.exists(Path::new(OCI_LAYOUT))? {
            return Err(StoreError::Layout {
                path: root.to_path_buf(),
                reason: "not an image store (it has no oci-layout file)".to_owned(),
            });
        }
        Self::open(Arc::new(fs))
    }

    /// The default root: `$SEALER_ROOT`, else `$XDG_DATA_HOME/sealer`, else
    /// `~/.local/share/sealer`.
    pub fn default_root() -> Option<PathBuf> {
        let non_empty = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
        if let Some(root) = non_empty("SEALER_ROOT") {
            return Some(PathBuf::from(root));
        }
        if let Some(data) = non_empty("XDG_DATA_HOME") {
            return Some(PathBuf::from(data).join("sealer"));
        }
        non_empty("HOME").map(|home| PathBuf::from(home).join(".local/share/sealer"))
    }

    fn init(&self) -> Result<()> {
        let layout = Path::new(OCI_LAYOUT);
        if self.fs.exists(layout)? {
            let content = self.fs.read(layout)?;
            let value: serde_json::Value = serde_json::from_slice(&content).map_err(|error| {
                self.layout_error(OCI_LAYOUT, format!("not JSON: {}", ErrorChain(&error)))
            })?;
            let version = value.get("imageLayoutVersion").and_then(|v| v.as_str());
            if version != Some("1.0.0") {
                return Err(self.layout_error(
                    OCI_LAYOUT,
                    format!("unsupported imageLayoutVersion {version:?}, expected \"1.0.0\""),
                ));
            }
        } else {
            self.fs.write_atomic(layout, OCI_LAYOUT_CONTENT)?;
        }
        self.fs.create_dir_all(Path::new("blobs/sha256"))?;
        if !self.fs.exists(Path::new(INDEX_JSON))? {
            let _lock = self.fs.lock(Path::new(INDEX_LOCK))?;
            if !self.fs.exists(Path::new(INDEX_JSON))? {
                self.write_index(&Index::empty())?;
            }
        }
        Ok(())
    }

    fn layout_error(&self, file: &str, reason: String) -> StoreError {
        StoreError::Layout {
            path: self.fs.display_path(Path::new(file)),
            reason,
        }
    }

    /// The filesystem the store lives on.
    pub fn fs(&self) -> &Arc<dyn Fs> {
        &self.fs
    }

    /// Where the store is, for messages.
    pub fn location(&self) -> PathBuf {
        self.fs.display_path(Path::new("."))
    }

    /// The blob store.
    pub fn blobs(&self) -> &FsBlobStore {
        &self.blobs
    }

    /// Starts an all-or-nothing import (a load or a pull): see [`Ingest`].
    pub fn begin_ingest(&self) -> Result<Ingest<'_>> {
        Ingest::begin(self)
    }

    // ---- index.json ----

    /// The current `index.json` (a copy: [`Store::index_snapshot`] shares it instead).
    pub fn index(&self) -> Result<Index> {
        Ok(self.index_snapshot()?.index().clone())
    }

    /// The current `index.json`, parsed and indexed. It is read again only when the file
    /// changed since it was last read or written through this store or a clone of it (its
    /// inode, length or modification time differ: another process wrote it), so a lookup
    /// costs one `stat`, however many entries there are.
    pub fn index_snapshot(&self) -> Result<Arc<IndexSnapshot>> {
        let stamped_at = SystemTime::now();
        let stamp = self.index_stamp()?;
        if let Some(snapshot) = self.index_cache.get(&stamp) {
            return Ok(snapshot);
        }
        // Stamped before reading: the content is at least as new as the stamp, so a
        // write in between shows up as a changed stamp at the next call.
        let snapshot = Arc::new(IndexSnapshot::new(self.read_index_file()?));
        self.index_cache.set(stamp, stamped_at, snapshot.clone());
        Ok(snapshot)
    }

    fn index_stamp(&self) -> Result<IndexStamp> {
        Ok(IndexStamp::of(&self.fs.metadata(Path::new(INDEX_JSON))?))
    }

    fn read_index_file(&self) -> Result<Index> {
        let bytes = self.fs.read(Path::new(INDEX_JSON))?;
        serde_json::from_slice(&bytes).map_err(|error| {
            self.layout_error(
                INDEX_JSON,
                format!("not a valid image index: {}", ErrorChain(&error)),
            )
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let bytes = serde_json::to_vec(index).map_err(|error| {
            self.layout_error(INDEX_JSON, format!("cannot encode: {}", ErrorChain(&error)))
        })?;
        self.fs.write_atomic(Path::new(INDEX_JSON), &bytes)?;
        Ok(())
    }

    /// Reads, changes and atomically rewrites `index.json` under an exclusive file lock, so
    /// concurrent updates (from other processes too) are never lost.
    pub fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _lock = self.fs.lock(Path::new(INDEX_LOCK))?;
        // Read from the file, never the cache: a stale base would lose another process's
        // update.
        let mut index = self.read_index_file()?;
        let result = change(&mut index)?;
        self.write_index(&index)?;
        // Stamped under the lock, so the stamp is this write's: readers see it at once.
        let stamped_at = SystemTime::now();
        match self.index_stamp() {
            Ok(stamp) => {
                self.index_cache
                    .set(stamp, stamped_at, Arc::new(IndexSnapshot::new(index)))
            }
            // The write happened; the next read goes to the file.
            Err(error) => {
                tracing::debug!(error = %ErrorChain(&error), "cannot stamp the index.json just written");
                self.index_cache.clear();
            }
        }
        Ok(result)
    }

    /// Every entry of `index.json`, in order.
    pub fn images(&self) -> Result<Vec<ImageEntry>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .map(|descriptor| ImageEntry {
                name: descriptor.ref_name().map(str::to_owned),
                descriptor,
            })
            .collect())
    }

    /// Names `descriptor` as `name` (which must carry a tag), replacing what the name pointed
    /// to. The manifest must be in the store. Returns the previous target.
    pub fn tag(&self, name: &Reference, descriptor: &Descriptor) -> Result<Option<Descriptor>> {
        let tagged = name.tagged_name().ok_or_else(|| {
            StoreError::ImageNotFound(format!("{name}: a tag is needed to name an image"))
        })?;
        if self.blobs.stat(&descriptor.digest)?.is_none() {
            return Err(StoreError::BlobNotFound(descriptor.digest.clone()));
        }
        let mut entry = descriptor.clone();
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), tagged.clone());
        self.update_index(|index| Ok(set_entry(index, &tagged, entry)))
    }

    /// Removes a name. The content stays until `gc` finds it unreferenced.
    pub fn untag(&self, name: &Reference) -> Result<Descriptor> {
        let tagged = name
            .tagged_name()
            .ok_or_else(|| StoreError::ImageNotFound(name.to_string()))?;
        self.update_index(|index| {
            let at = index
                .manifests
                .iter()
                .position(|entry| entry.ref_name() == Some(tagged.as_str()))
                .ok_or_else(|| StoreError::ImageNotFound(tagged.clone()))?;
            Ok(index.manifests.remove(at))
        })
    }

    /// Removes every `index.json` entry (named or not) that points to `digest`; returns the
    /// removed entries.
    pub fn remove_entries(&self, digest: &Digest) -> Result<Vec<Descriptor>> {
        self.update_index(|index| {
            let (removed, kept) = index
                .manifests
                .drain(..)
                .partition(|entry| &entry.digest == digest);
            index.manifests = kept;
            Ok(removed)
        })
    }

    // ---- manifests ----

    /// Stores a manifest or index byte-exact. An image manifest's config and layers must
    /// already be in the store; an index's entries may be absent (single-platform pulls).
    pub fn put_manifest(
        &self,
        bytes: &[u8],
        declared_media_type: Option<&str>,
    ) -> Result<Descriptor> {
        let digest = Digest::sha256(bytes);
        let (media_type, document) = parse_manifest(&digest, bytes, declared_media_type)?;
        if let ManifestDocument::Image(manifest) = &document {
            for child in std::iter::once(&manifest.config).chain(&manifest.layers) {
                if self.blobs.stat(&child.digest)?.is_none() {
                    return Err(StoreError::MissingChild {
                        parent: digest,
                        child: child.digest.clone(),
                    });
                }
            }
        }
        self.blobs
            .put(&digest, Some(bytes.len() as u64), &mut &bytes[..])?;
        Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
    }

    /// Reads a small blob (a manifest or config) and verifies its digest.
    pub fn read_verified(&self, digest: &Digest) -> Result<Vec<u8>> {
        let size = self
            .blobs
            .stat(digest)?
            .ok_or_else(|| StoreError::BlobNotFound(digest.clone()))?;
        if size > MAX_MANIFEST_SIZE {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: MAX_MANIFEST_SIZE,
                actual: size,
            });
        }
        let bytes = self.fs.read(&digest.blob_path())?;
        verify_bytes(digest, &bytes)?;
        Ok(bytes)
    }

    /// Reads and parses a manifest or index.
    pub fn read_manifest(&self, descriptor: &Descriptor) -> Result<ManifestDocument> {
        let bytes = self.read_verified(&descriptor.digest)?;
        Ok(parse_manifest(&descriptor.digest, &bytes, Some(&descriptor.media_type))?.1)
    }

    // ---- lookup and resolution ----

    /// Finds what `reference` names: a full or short name (`nginx` means
    /// `docker.io/library/nginx:latest`), `name@digest`, a digest, or a unique prefix of
    /// the digest of a stored entry (as listed by `sealer images`).
    pub fn lookup(&self, reference: &str) -> Result<ImageEntry> {
        let snapshot = self.index_snapshot()?;
        if let Ok(digest) = reference.parse::<Digest>() {
            return self.entry_for_digest(&snapshot, &digest, reference);
        }
        if let Ok(parsed) = reference.parse::<Reference>() {
            if let Some(digest) = parsed.digest() {
                return self.entry_for_digest(&snapshot, digest, reference);
            }
            if let Some(tagged) = parsed.tagged_name()
                && let Some(descriptor) = snapshot.by_name(&tagged)
            {
                return Ok(ImageEntry {
                    name: Some(tagged),
                    descriptor: descriptor.clone(),
                });
            }
        }
        let prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if prefix.len() >= 4 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: BTreeMap<&Digest, &Descriptor> = snapshot
                .index()
                .manifests
                .iter()
                .filter(|entry| entry.digest.hex().starts_with(prefix))
                .map(|entry| (&entry.digest, entry))
                .collect();
            match matches.len() {
                0 => {}
                1 => {
                    return matches
                        .into_values()
                        .next()
                        .map(|descriptor| ImageEntry {
                            name: descriptor.ref_name().map(str::to_owned),
                            descriptor: descriptor.clone(),
                        })
                        .ok_or_else(|| StoreError::ImageNotFound(reference.to_owned()));
                }
                _ => return Err(StoreError::Ambiguous(reference.to_owned())),
            }
        }
        Err(StoreError::ImageNotFound(reference.to_owned()))
    }

    fn entry_for_digest(
        &self,
        snapshot: &IndexSnapshot,
        digest: &Digest,
        reference: &str,
    ) -> Result<ImageEntry> {
        if let Some(descriptor) = snapshot.by_digest(digest) {
            return Ok(ImageEntry {
                name: None,
                descriptor: descriptor.clone(),
            });
        }
        // Not named, but it may be a manifest inside a multi-arch image.
        if self.blobs.stat(digest)?.is_none() {
            return Err(StoreError::ImageNotFound(reference.to_owned()));
        }
        let bytes = self.read_verified(digest)?;
        let (media_type, _) = parse_manifest(digest, &bytes, None)?;
        Ok(ImageEntry {
            name: None,
            descriptor: Descriptor::new(media_type, digest.clone(), bytes.len() as u64),
        })
    }

    /// Resolves `reference` to one platform's manifest: an index is narrowed to the entry
    /// for `platform` (default: this machine's).
    pub fn resolve(&self, reference: &str, platform: Option<&Platform>) -> Result<ResolvedImage> {
        let entry = self.lookup(reference)?;
        let wanted = platform.cloned().unwrap_or_else(Platform::host);
        let mut current = entry.descriptor.clone();
        let mut indexes = Vec::new();
        for _ in 0..MAX_INDEX_DEPTH {
            match self.read_manifest(&current)? {
                ManifestDocument::Image(manifest) => {
                    return Ok(ResolvedImage {
                        name: entry.name,
                        top: entry.descriptor,
                        indexes,
                        manifest_descriptor: current,
                        manifest: *manifest,
                    });
                }
                ManifestDocument::Index(index) => {
                    let next = choose_platform(&index, &wanted).cloned().ok_or_else(|| {
                        StoreError::PlatformNotFound {
                            reference: reference.to_owned(),
                            platform: wanted.to_string(),
                            available: platforms_of(&index),
                        }
                    })?;
                    if self.blobs.stat(&next.digest)?.is_none() {
                        return Err(StoreError::PlatformNotCarried {
                            reference: reference.to_owned(),
                            platform: next
                                .platform
                                .as_ref()
                                .map_or_else(|| wanted.to_string(), ToString::to_string),
                            carried: self.carried_platforms(&index)?.join(", "),
                        });
                    }
                    indexes.push(std::mem::replace(&mut current, next));
                }
            }
        }
        Err(StoreError::ImageNotFound(format!(
            "{reference}: indexes nested too deeply"
        )))
    }

    /// The platforms of `index` whose manifests are in the store (`none` when none is).
    pub fn carried_platforms(&self, index: &Index) -> Result<Vec<String>> {
        let mut carried = Vec::new();
        for entry in &index.manifests {
            if let Some(platform) = &entry.platform
                && self.blobs.stat(&entry.digest)?.is_some()
            {
                carried.push(platform.to_string());
            }
        }
        if carried.is_empty() {
            carried.push("none".to_owned());
        }
        Ok(carried)
    }

    /// When `digest` is a platform manifest that a multi-arch image of `index.json` lists but
    /// the store does not carry: that image's name (or digest), the platform, and the
    /// platforms it carries. `None` when no top-level index lists it as absent. For the
    /// "not found" answers (a registry's 404), so they say which platforms there are.
    pub fn absent_platform(&self, digest: &Digest) -> Result<Option<StoreError>> {
        if self.blobs.stat(digest)?.is_some() {
            return Ok(None);
        }
        for entry in self.index()?.manifests {
            if !matches!(
                entry.media_type.as_str(),
                media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST
            ) || self.blobs.stat(&entry.digest)?.is_none()
            {
                continue;
            }
            let ManifestDocument::Index(index) = self.read_manifest(&entry)? else {
                continue;
            };
            let Some(listed) = index.manifests.iter().find(|child| child.digest == *digest) else {
                continue;
            };
            return Ok(Some(StoreError::PlatformNotCarried {
                reference: entry
                    .ref_name()
                    .map_or_else(|| entry.digest.to_string(), str::to_owned),
                platform: listed
                    .platform
                    .as_ref()
                    .map_or_else(|| "an unnamed platform".to_owned(), ToString::to_string),
                carried: self.carried_platforms(&index)?.join(", "),
            }));
        }
        Ok(None)
    }

    /// Every image manifest `reference` names that is in the store: the image itself, or
    /// each platform of a multi-arch image whose manifest is present (its descriptor carries
    /// the platform the index gives it).
    pub fn image_manifests(&self, reference: &str) -> Result<Vec<(Descriptor, Manifest)>> {
        let entry = self.lookup(reference)?;
        let mut found = Vec::new();
        let mut pending = vec![(entry.descriptor, 0usize)];
        while let Some((descriptor, depth)) = pending.pop() {
            if depth >= MAX_INDEX_DEPTH {
                return Err(StoreError::ImageNotFound(format!(
                    "{reference}: indexes nested too deeply"
                )));
            }
            match self.read_manifest(&descriptor)? {
                ManifestDocument::Image(manifest) => found.push((descriptor, *manifest)),
                ManifestDocument::Index(index) => {
                    // In index order (the stack pops the last pushed first).
                    for child in index.manifests.into_iter().rev() {
                        if self.blobs.stat(&child.digest)?.is_some() {
                            pending.push((child, depth + 1));
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    /// Every blob reachable from `roots`, and the blobs they need that are absent. Index
    /// entries that are absent are partial multi-arch images, counted separately, as are
    /// the absent blobs below a root annotated [`crate::model::PARTIAL_ANNOTATION`].
    pub fn reachable(&self, roots: &[Descriptor]) -> Result<Reachability> {
        let mut reach = Reachability::default();
        let mut pending: Vec<(Descriptor, Option<Digest>, bool, bool)> = roots
            .iter()
            .map(|root| {
                let partial = root
                    .annotations
                    .get(crate::model::PARTIAL_ANNOTATION)
                    .is_some_and(|value| value == "true");
                (root.clone(), None, false, partial)
            })
            .collect();
        while let Some((descriptor, parent, from_index, partial)) = pending.pop() {
            if reach.present.contains(&descriptor.digest) {
                continue;
            }
            if self.blobs.stat(&descriptor.digest)?.is_none() {
                match (parent, from_index) {
                    (Some(_), true) => reach.absent_platforms += 1,
                    (Some(parent), false) if partial => reach
                        .absent_partial
                        .push((parent, descriptor.digest.clone())),
                    (Some(parent), false) => {
                        reach.missing.push((parent, descriptor.digest.clone()))
                    }
                    (None, _) => reach
                        .missing
                        .push((descriptor.digest.clone(), descriptor.digest.clone())),
                }
                continue;
            }
            reach.present.insert(descriptor.digest.clone());
            if is_manifest_type(&descriptor.media_type) {
                let document = self.read_manifest(&descriptor)?;
                let is_index = matches!(document, ManifestDocument::Index(_));
                for child in document.children() {
                    pending.push((
                        child.clone(),
                        Some(descriptor.digest.clone()),
                        is_index,
                        partial,
                    ));
                }
            }
        }
        Ok(reach)
    }
}

/// The result of [`Store::reachable`].
#[derive(Debug, Clone, Default)]
pub struct Reachability {
    /// Reachable blobs that are present.
    pub present: BTreeSet<Digest>,
    /// Needed blobs that are absent: (referrer, missing blob).
    pub missing: Vec<(Digest, Digest)>,
    /// Index entries not present (platforms never fetched).
    pub absent_platforms: usize,
    /// Blobs not present below partial entries (a pull-through cache fetched only what was
    /// asked for): (referrer, absent blob). Not an inconsistency, but such an image cannot
    /// be exported.
    pub absent_partial: Vec<(Digest, Digest)>,
}

/// Whether a descriptor's media type is a manifest or index (whose children matter).
pub fn is_manifest_type(media_type: &str) -> bool {
    media_type::is_index(media_type) || media_type::is_manifest(media_type)
}

/// Parses a manifest, naming it in errors.
pub(crate) fn parse_manifest(
    digest: &Digest,
    bytes: &[u8],
    declared: Option<&str>,
) -> Result<(String, ManifestDocument)> {
    ManifestDocument::parse(bytes, declared).map_err(|source| StoreError::Manifest {
        digest: digest.clone(),
        source,
    })
}

/// Checks that `bytes` hash to `digest`.
pub(crate) fn verify_bytes(digest: &Digest, bytes: &[u8]) -> Result<()> {
    let actual = Digest::of(digest.algorithm(), bytes);
    if &actual != digest {
        return Err(StoreError::DigestMismatch {
            what: format!("blob {digest}"),
            expected: digest.clone(),
            actual,
        });
    }
    Ok(())
}

/// Replaces the entry named `name` (or appends one); returns the previous target.
pub(crate) fn set_entry(index: &mut Index, name: &str, entry: Descriptor) -> Option<Descriptor> {
    match index
        .manifests
        .iter_mut()
        .find(|existing| existing.ref_name() == Some(name))
    {
        Some(existing) => Some(std::mem::replace(existing, entry)),
        None => {
            index.manifests.push(entry);
            None
        }
    }
}

/// The entry of `index` for `wanted`, preferring an exact variant match.
pub fn choose_platform<'i>(index: &'i Index, wanted: &Platform) -> Option<&'i Descriptor> {
    let candidates = index.manifests.iter().filter(|entry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|platform| platform.satisfies(wanted))
    });
    let mut first = None;
    for candidate in candidates {
        let exact = candidate.platform.as_ref().map(|p| &p.variant) == Some(&wanted.variant);
        if exact {
            return Some(candidate);
        }
        first.get_or_insert(candidate);
    }
    first
}

/// The platforms of an index, for messages.
pub fn platforms_of(index: &Index) -> String {
    let names: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|entry| entry.platform.as_ref().map(ToString::to_string))
        .collect();
    if names.is_empty() {
        "no platform entries".to_owned()
    } else {
        names.join(", ")
    }
}
