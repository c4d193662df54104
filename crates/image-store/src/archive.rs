//! Saving images to archives and loading them back, streaming.
//!
//! * **oci-archive** (default): a tar of an OCI image layout, multi-arch indexes included.
//!   `skopeo inspect oci-archive:FILE:NAME` reads it with the same manifest digests.
//! * **docker-archive**: `docker save`'s format (`manifest.json`, `<config>.json`,
//!   uncompressed `<diffid>.tar` layers), one platform per image.
//! * **OCI layout directories** load too ([`load_layout`]).
//!
//! Memory stays flat whatever the size: blobs stream through fixed buffers. Loads go through
//! an [`Ingest`]: every blob is verified against its digest and the store changes only when
//! the whole archive was read and found complete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sealer_fs_abstraction::Fs;

use crate::blob::{BlobStore, COPY_BUFFER, copy_hashing};
use crate::digest::{Algorithm, Digest};
use crate::error::StoreError;
use crate::ingest::{CommitReport, Ingest};
use crate::model::{
    Descriptor, Manifest, ManifestDocument, Platform, REF_NAME_ANNOTATION, media_type,
};
use crate::reference::Reference;
use crate::store::{MAX_MANIFEST_SIZE, Store, is_manifest_type, parse_manifest};

/// Why saving or loading failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reading the archive failed.
    #[error("reading the archive: {0}")]
    Read(#[source] io::Error),
    /// Writing the archive failed.
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
    /// The archive is not of a known format or is inconsistent.
    #[error("{entry}: {reason}")]
    Invalid {
        /// The archive entry (or file) at fault.
        entry: String,
        /// What was expected.
        reason: String,
    },
    /// The requested export cannot be made.
    #[error("{0}")]
    Unsupported(String),
}

type Result<T, E = ArchiveError> = std::result::Result<T, E>;

fn invalid(entry: impl Into<String>, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Invalid {
        entry: entry.into(),
        reason: reason.into(),
    }
}

/// Archive formats [`save`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout.
    #[default]
    OciArchive,
    /// `docker save`'s format.
    DockerArchive,
}

/// Receives progress in bytes (the CLI draws a bar from it).
pub trait Progress: Send + Sync {
    /// The total, when known.
    fn set_total(&self, bytes: u64);
    /// `bytes` more were processed.
    fn advance(&self, bytes: u64);
}

/// Progress that goes nowhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// Options of [`save`].
#[derive(Clone, Copy)]
pub struct SaveOptions<'a> {
    /// The format.
    pub format: ArchiveFormat,
    /// For docker-archive: the platform to export from multi-arch images (default: host).
    pub platform: Option<&'a Platform>,
    /// Progress sink.
    pub progress: &'a dyn Progress,
}

impl Default for SaveOptions<'_> {
    fn default() -> Self {
        Self {
            format: ArchiveFormat::OciArchive,
            platform: None,
            progress: &NoProgress,
        }
    }
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    /// The images, with the digest of what was written for each (the top manifest or index
    /// for oci-archive, the platform manifest for docker-archive).
    pub images: Vec<(String, Digest)>,
    /// Blob entries written.
    pub blobs: usize,
    /// Bytes of blob content written.
    pub bytes: u64,
}

/// The first bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Options of [`load`] and [`load_layout`].
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// A name for the image when the archive holds exactly one (overrides its own name).
    pub name: Option<&'a Reference>,
    /// Progress sink (bytes of archive read).
    pub progress: &'a dyn Progress,
    /// For [`load`]: read the layout under this directory of the archive (`registry` for a
    /// cluster image's `registry/` layer) and ignore the entries outside it.
    pub directory: Option<&'a str>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        Self {
            name: None,
            progress: &NoProgress,
            directory: None,
        }
    }
}

/// What a load added.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The images, by name when they have one (`repository@digest` for a digest-pinned
    /// one, which is stored unnamed), with their top digest.
    pub images: Vec<(Option<String>, Digest)>,
    /// Blob accounting.
    pub commit: CommitReport,
    /// Warnings (for example names that could not be parsed).
    pub warnings: Vec<String>,
}

// ---------------------------------------------------------------- save

/// Writes the images named by `references` to `out` in `options.format`. Every blob is
/// re-hashed while written: content corrupted on disk aborts the save.
pub fn save(
    store: &Store,
    references: &[String],
    out: &mut dyn Write,
    options: SaveOptions<'_>,
) -> Result<SaveReport> {
    if references.is_empty() {
        return Err(ArchiveError::Unsupported("no image to save".to_owned()));
    }
    match options.format {
        ArchiveFormat::OciArchive => save_oci(store, references, out, options.progress),
        ArchiveFormat::DockerArchive => save_docker(store, references, out, options),
    }
}

fn save_oci(
    store: &Store,
    references: &[String],
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> Result<SaveReport> {
    let mut index = crate::model::Index::empty();
    let mut report = SaveReport::default();
    for reference in references {
        let entry = store.lookup(reference)?;
        let mut descriptor = entry.descriptor.clone();
        descriptor.annotations.remove(REF_NAME_ANNOTATION);
        if let Some(name) = &entry.name {
            descriptor
                .annotations
                .insert(REF_NAME_ANNOTATION.to_owned(), name.clone());
        }
        report.images.push((
            entry.name.clone().unwrap_or_else(|| reference.clone()),
            descriptor.digest.clone(),
        ));
        if !index.manifests.contains(&descriptor) {
            index.manifests.push(descriptor);
        }
    }
    let reach = store.reachable(&index.manifests)?;
    // A partial image (a pull-through cache entry) cannot be exported either.
    if let Some((parent, child)) = reach.missing.first().or(reach.absent_partial.first()) {
        return Err(StoreError::MissingChild {
            parent: parent.clone(),
            child: child.clone(),
        }
        .into());
    }
    if reach.absent_platforms > 0 {
        tracing::warn!(
            count = reach.absent_platforms,
            "some platforms of a multi-arch image are not in the store and are not saved"
        );
    }
    let mut sizes = Vec::with_capacity(reach.present.len());
    for digest in &reach.present {
        let size = store
            .blobs()
            .stat(digest)?
            .ok_or_else(|| StoreError::BlobNotFound(digest.clone()))?;
        sizes.push((digest, size));
    }
    progress.set_total(sizes.iter().map(|(_, size)| size).sum());
    let mut tar = TarWriter::new(out);
    tar.directory("blobs/")?;
    for algorithm in reach
        .present
        .iter()
        .map(Digest::algorithm)
        .collect::<BTreeSet<_>>()
    {
        tar.directory(&format!("blobs/{}/", algorithm.name()))?;
    }
    tar.file_bytes("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    for (digest, size) in sizes {
        let mut blob = store.blobs().open(digest)?;
        let path = digest.blob_path();
        tar.file_verified(&path.to_string_lossy(), size, &mut blob, digest, progress)?;
        report.blobs += 1;
        report.bytes += size;
    }
    let index_bytes =
        serde_json::to_vec(&index).map_err(|error| ArchiveError::Write(error.into()))?;
    tar.file_bytes("index.json", &index_bytes)?;
    tar.finish()?;
    Ok(report)
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn save_docker(
    store: &Store,
    references: &[String],
    out: &mut dyn Write,
    options: SaveOptions<'_>,
) -> Result<SaveReport> {
    let mut report = SaveReport::default();
    let mut images = Vec::new();
    let mut plan: Vec<DockerExportPlan> = Vec::new();
    for reference in references {
        let resolved = store.resolve(reference, options.platform)?;
        let config_bytes = store.read_verified(&resolved.manifest.config.digest)?;
        let diff_ids = diff_ids(&config_bytes).map_err(|reason| {
            invalid(
                format!("config {}", resolved.manifest.config.digest),
                reason,
            )
        })?;
        if diff_ids.len() != resolved.manifest.layers.len() {
            return Err(invalid(
                format!("image {reference}"),
                "its config lists a different number of layers than its manifest",
            ));
        }
        let layers: Vec<(Descriptor, Digest)> = resolved
            .manifest
            .layers
            .iter()
            .cloned()
            .zip(diff_ids)
            .collect();
        let name = resolved.name.clone().unwrap_or_else(|| reference.clone());
        report
            .images
            .push((name.clone(), resolved.manifest_descriptor.digest.clone()));
        plan.push(DockerExportPlan {
            config: resolved.manifest.config.digest.clone(),
            layers,
            name,
        });
    }
    let total: u64 = plan
        .iter()
        .flat_map(|image| image.layers.iter().map(|(layer, _)| layer.size))
        .sum();
    options.progress.set_total(total);

    let mut tar = TarWriter::new(out);
    let mut written = BTreeSet::new();
    // Compressed layers are expanded into a scratch import (never committed) so their size
    // is known before their tar header is written.
    let scratch = store.begin_ingest()?;
    for DockerExportPlan {
        config: config_digest,
        layers,
        name,
    } in plan
    {
        let config_name = format!("{}.json", config_digest.hex());
        if written.insert(config_name.clone()) {
            let bytes = store.read_verified(&config_digest)?;
            tar.file_bytes(&config_name, &bytes)?;
        }
        let mut layer_names = Vec::new();
        for (layer, diff_id) in layers {
            let layer_name = format!("{}.tar", diff_id.hex());
            layer_names.push(layer_name.clone());
            if !written.insert(layer_name.clone()) {
                options.progress.advance(layer.size);
                continue;
            }
            let blob = store.blobs().open(&layer.digest)?;
            match layer_compression(&layer.media_type) {
                Compression::None => {
                    let mut blob = blob;
                    tar.file_verified(
                        &layer_name,
                        layer.size,
                        &mut blob,
                        &layer.digest,
                        options.progress,
                    )?;
                }
                Compression::Gzip => {
                    let mut decoder = flate2::read::MultiGzDecoder::new(ProgressReader::new(
                        blob,
                        options.progress,
                    ));
                    let (digest, size) = scratch.put_unknown(
                        Algorithm::Sha256,
                        &mut decoder,
                        &format!("layer {}", layer.digest),
                    )?;
                    if digest != diff_id {
                        return Err(StoreError::DigestMismatch {
                            what: format!("uncompressed layer {}", layer.digest),
                            expected: diff_id,
                            actual: digest,
                        }
                        .into());
                    }
                    let mut expanded = scratch.open(&digest)?;
                    tar.file_verified(&layer_name, size, &mut expanded, &digest, &NoProgress)?;
                }
                Compression::Other(kind) => {
                    return Err(ArchiveError::Unsupported(format!(
                        "layer {} is {kind}-compressed; docker-archive export handles uncompressed and gzip layers",
                        layer.digest
                    )));
                }
            }
            report.blobs += 1;
            report.bytes += layer.size;
        }
        images.push(DockerArchiveImage {
            config: config_name,
            repo_tags: Some(vec![name]),
            layers: layer_names,
        });
    }
    drop(scratch);
    let manifest =
        serde_json::to_vec(&images).map_err(|error| ArchiveError::Write(error.into()))?;
    tar.file_bytes("manifest.json", &manifest)?;
    tar.finish()?;
    Ok(report)
}

/// One image of a docker-archive export: its config, its layers with their diff ids, its name.
struct DockerExportPlan {
    config: Digest,
    layers: Vec<(Descriptor, Digest)>,
    name: String,
}

enum Compression {
    None,
    Gzip,
    Other(&'static str),
}

fn layer_compression(media_type: &str) -> Compression {
    if media_type.ends_with("gzip") {
        Compression::Gzip
    } else if media_type.ends_with("zstd") {
        Compression::Other("zstd")
    } else {
        Compression::None
    }
}

fn diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(Deserialize)]
    struct Config {
        rootfs: RootFs,
    }
    #[derive(Deserialize)]
    struct RootFs {
        diff_ids: Vec<Digest>,
    }
    serde_json::from_slice::<Config>(config)
        .map(|config| config.rootfs.diff_ids)
        .map_err(|error| format!("no valid rootfs.diff_ids: {error}"))
}

/// Writes tar entries with deterministic headers (mtime 0, uid/gid 0), streaming blob
/// content through the store's pipelined hashing copy (tar's own copy uses 8 KiB writes).
struct TarWriter<'w> {
    out: &'w mut dyn Write,
}

impl<'w> TarWriter<'w> {
    fn new(out: &'w mut dyn Write) -> Self {
        Self { out }
    }

    fn header(&mut self, path: &str, size: u64, kind: tar::EntryType, mode: u32) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if path.len() > 100 {
            // GNU long name: a `././@LongLink` entry carrying the name.
            let mut long = tar::Header::new_gnu();
            let name = b"././@LongLink";
            long.as_gnu_mut()
                .ok_or_else(|| ArchiveError::Unsupported("GNU header".to_owned()))?
                .name[..name.len()]
                .copy_from_slice(name);
            long.set_entry_type(tar::EntryType::GNULongName);
            long.set_mode(0o644);
            long.set_size(path.len() as u64 + 1);
            long.set_cksum();
            self.out
                .write_all(long.as_bytes())
                .map_err(ArchiveError::Write)?;
            let mut name_bytes = path.as_bytes().to_vec();
            name_bytes.push(0);
            self.out
                .write_all(&name_bytes)
                .map_err(ArchiveError::Write)?;
            self.pad(name_bytes.len() as u64)?;
            let truncated = &path.as_bytes()[..100];
            header
                .as_gnu_mut()
                .ok_or_else(|| ArchiveError::Unsupported("GNU header".to_owned()))?
                .name
                .copy_from_slice(truncated);
        } else {
            header.set_path(path).map_err(ArchiveError::Write)?;
        }
        header.set_cksum();
        self.out
            .write_all(header.as_bytes())
            .map_err(ArchiveError::Write)
    }

    fn pad(&mut self, len: u64) -> Result<()> {
        let remainder = (len % 512) as usize;
        if remainder != 0 {
            self.out
                .write_all(&[0u8; 512][..512 - remainder])
                .map_err(ArchiveError::Write)?;
        }
        Ok(())
    }

    fn directory(&mut self, path: &str) -> Result<()> {
        self.header(path, 0, tar::EntryType::Directory, 0o755)
    }

    fn file_bytes(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.header(path, data.len() as u64, tar::EntryType::Regular, 0o644)?;
        self.out.write_all(data).map_err(ArchiveError::Write)?;
        self.pad(data.len() as u64)
    }

    /// Streams `size` bytes of `source`, checking they hash to `digest`.
    fn file_verified(
        &mut self,
        path: &str,
        size: u64,
        source: &mut dyn Read,
        digest: &Digest,
        progress: &dyn Progress,
    ) -> Result<()> {
        self.header(path, size, tar::EntryType::Regular, 0o644)?;
        let what = || format!("blob {digest}");
        let mut counted = ProgressReader::new(source.take(size), progress);
        let (actual, copied) = copy_hashing(
            &mut counted,
            &mut *self.out,
            digest.algorithm(),
            Some(size),
            &what,
        )?;
        if copied != size {
            return Err(StoreError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual: copied,
            }
            .into());
        }
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                what: format!("blob {digest} in the store (run `sealer fsck`)"),
                expected: digest.clone(),
                actual,
            }
            .into());
        }
        self.pad(size)
    }

    fn finish(self) -> Result<()> {
        self.out
            .write_all(&[0u8; 1024])
            .map_err(ArchiveError::Write)?;
        self.out.flush().map_err(ArchiveError::Write)
    }
}

// ---------------------------------------------------------------- load

/// A reader that reports the bytes it yields.
struct ProgressReader<'p, R> {
    inner: R,
    progress: &'p dyn Progress,
}

impl<'p, R> ProgressReader<'p, R> {
    fn new(inner: R, progress: &'p dyn Progress) -> Self {
        Self { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.progress.advance(read as u64);
        Ok(read)
    }
}

/// Loads an oci-archive or docker-archive (optionally gzip-compressed) from `input`. The
/// format is recognised from the entries: `index.json` (OCI, also in Docker 25+ saves)
/// wins over `manifest.json`.
pub fn load(store: &Store, input: &mut dyn Read, options: LoadOptions<'_>) -> Result<LoadReport> {
    let mut counted = ProgressReader::new(input, options.progress);
    // Only the magic is read ahead: a plain tar is then read with no buffer in between (its
    // blob content goes from `input` straight into the staging copy's buffers).
    let mut head = [0u8; ZSTD_MAGIC.len()];
    let mut sniffed = 0;
    while sniffed < head.len() {
        match counted.read(&mut head[sniffed..]) {
            Ok(0) => break,
            Ok(read) => sniffed += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(ArchiveError::Read(error)),
        }
    }
    let head = &head[..sniffed];
    if head.is_empty() {
        return Err(invalid("archive", "it is empty"));
    }
    let whole = head.chain(counted);
    let reader: Box<dyn Read + '_> = if head.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(COPY_BUFFER, whole),
        ))
    } else if head.starts_with(&ZSTD_MAGIC) {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(COPY_BUFFER, whole))
                .map_err(ArchiveError::Read)?,
        )
    } else {
        Box::new(whole)
    };
    let prefix = options
        .directory
        .map(|directory| format!("{}/", directory.trim_matches('/')));
    let mut archive = tar::Archive::new(reader);
    let ingest = store.begin_ingest()?;
    let mut oci_index: Option<Vec<u8>> = None;
    let mut docker_manifest: Option<Vec<u8>> = None;
    let mut saw_layout = false;
    // Entries that are not named by digest (docker-archive files), by path.
    let mut by_path: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let entries = archive.entries().map_err(ArchiveError::Read)?;
    let mut count = 0usize;
    for entry in entries {
        let mut entry =
            entry.map_err(|error| invalid("archive", format!("not a valid tar: {error}")))?;
        let path = entry
            .path()
            .map_err(|error| invalid("archive", format!("entry with an invalid name: {error}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let path = match &prefix {
            None => path,
            Some(prefix) => match path.strip_prefix(prefix.as_str()) {
                Some(inside) => inside.to_owned(),
                None => continue,
            },
        };
        count += 1;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            // Directories carry nothing; links and devices have no place in an image archive.
            tar::EntryType::Directory => continue,
            other => {
                tracing::debug!(entry = %path, kind = ?other, "ignoring a non-file archive entry");
                continue;
            }
        }
        let size = entry.size();
        match path.as_str() {
            "oci-layout" => {
                let bytes = read_small(&mut entry, &path)?;
                check_layout_version(&bytes, &path)?;
                saw_layout = true;
            }
            "index.json" => oci_index = Some(read_small(&mut entry, &path)?),
            "manifest.json" => docker_manifest = Some(read_small(&mut entry, &path)?),
            "repositories" => {}
            _ => {
                if let Some(digest) = blob_digest_of(&path) {
                    ingest
                        .put(&digest, Some(size), &mut entry)
                        .map_err(|error| name_entry(error, &path))?;
                    by_path.insert(path, (digest, size));
                } else {
                    let (digest, size) =
                        ingest.put_unknown(Algorithm::Sha256, &mut entry, &path)?;
                    by_path.insert(path, (digest, size));
                }
            }
        }
    }
    if count == 0 {
        return Err(match options.directory {
            Some(directory) => invalid("archive", format!("it has no file under {directory}/")),
            None => invalid("archive", "not a tar archive, or an empty one"),
        });
    }
    if let Some(index) = oci_index {
        if !saw_layout {
            tracing::warn!(
                "the archive has index.json but no oci-layout file; reading it as an OCI layout"
            );
        }
        return commit_oci_index(ingest, &index, "index.json", options);
    }
    if let Some(manifest) = docker_manifest {
        return commit_docker(ingest, &manifest, &by_path, options);
    }
    Err(invalid(
        "archive",
        "neither an oci-archive (no index.json) nor a docker-archive (no manifest.json)",
    ))
}

fn name_entry(error: StoreError, path: &str) -> ArchiveError {
    match error {
        StoreError::DigestMismatch {
            expected, actual, ..
        } => StoreError::DigestMismatch {
            what: format!("archive entry {path}"),
            expected,
            actual,
        }
        .into(),
        other => invalid(path, other.to_string()),
    }
}

fn read_small(entry: &mut dyn Read, path: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    entry
        .take(MAX_MANIFEST_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(ArchiveError::Read)?;
    if bytes.len() as u64 > MAX_MANIFEST_SIZE {
        return Err(invalid(
            path,
            format!("larger than {MAX_MANIFEST_SIZE} bytes"),
        ));
    }
    Ok(bytes)
}

fn check_layout_version(bytes: &[u8], path: &str) -> Result<()> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|error| invalid(path, format!("not JSON: {error}")))?;
    match value.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some("1.0.0") => Ok(()),
        other => Err(invalid(
            path,
            format!("imageLayoutVersion {other:?}, expected \"1.0.0\""),
        )),
    }
}

/// `blobs/<algorithm>/<hex>` → the digest it names.
fn blob_digest_of(path: &str) -> Option<Digest> {
    let rest = path.strip_prefix("blobs/")?;
    let (algorithm, hex) = rest.split_once('/')?;
    format!("{algorithm}:{hex}").parse().ok()
}

fn parse_index_json(bytes: &[u8], entry: &str) -> Result<crate::model::Index> {
    serde_json::from_slice(bytes)
        .map_err(|error| invalid(entry, format!("not a valid image index: {error}")))
}

/// Names the roots of an OCI index and commits.
fn commit_oci_index(
    ingest: Ingest<'_>,
    bytes: &[u8],
    entry: &str,
    options: LoadOptions<'_>,
) -> Result<LoadReport> {
    let index = parse_index_json(bytes, entry)?;
    if index.manifests.is_empty() {
        return Err(invalid(entry, "it lists no image"));
    }
    let mut report = LoadReport::default();
    let mut roots = Vec::new();
    for descriptor in &index.manifests {
        let name = match (options.name, descriptor.ref_name()) {
            (Some(name), _) if index.manifests.len() == 1 => Some(name.clone()),
            // skopeo's `oci:DIR:TAG` writes a bare tag, which names no repository.
            (_, Some(ref_name)) if is_bare_tag(ref_name) => {
                report.warnings.push(format!(
                    "image {} is named only by the tag {ref_name:?}; it is loaded unnamed (use --name REPOSITORY:TAG)",
                    descriptor.digest
                ));
                None
            }
            (_, Some(ref_name)) => match ref_name.parse::<Reference>() {
                Ok(reference) if reference.tag().is_some() => Some(reference),
                // `repository@digest` (a digest-pinned image): stored as an unnamed entry,
                // reported by that name.
                Ok(reference) if reference.digest() == Some(&descriptor.digest) => Some(reference),
                _ => {
                    report.warnings.push(format!(
                        "image {} is named {ref_name:?}, which is not an image reference; it is loaded unnamed (use --name)",
                        descriptor.digest
                    ));
                    None
                }
            },
            (_, None) => None,
        };
        roots.push((name, descriptor.clone()));
    }
    if options.name.is_some() && index.manifests.len() > 1 {
        report
            .warnings
            .push("--name ignored: the archive holds several images".to_owned());
    }
    finish_load(ingest, roots, report)
}

/// A ref name with no repository part (`v1`, `latest`), as `skopeo copy … oci:DIR:TAG` writes.
fn is_bare_tag(ref_name: &str) -> bool {
    !ref_name.contains(['/', ':', '@'])
}

fn finish_load(
    ingest: Ingest<'_>,
    roots: Vec<(Option<Reference>, Descriptor)>,
    mut report: LoadReport,
) -> Result<LoadReport> {
    report.commit = ingest.commit(&roots)?;
    report.images = roots
        .into_iter()
        .map(|(name, descriptor)| {
            let shown = name.map(|name| name.tagged_name().unwrap_or_else(|| name.to_string()));
            (shown, descriptor.digest)
        })
        .collect();
    Ok(report)
}

fn commit_docker(
    ingest: Ingest<'_>,
    manifest_json: &[u8],
    by_path: &BTreeMap<String, (Digest, u64)>,
    options: LoadOptions<'_>,
) -> Result<LoadReport> {
    let images: Vec<DockerArchiveImage> =
        serde_json::from_slice(manifest_json).map_err(|error| {
            invalid(
                "manifest.json",
                format!("not a docker-archive manifest: {error}"),
            )
        })?;
    if images.is_empty() {
        return Err(invalid("manifest.json", "it lists no image"));
    }
    let mut report = LoadReport::default();
    let mut roots = Vec::new();
    let single = images.len() == 1;
    for image in &images {
        let lookup = |path: &str| {
            by_path
                .get(path.trim_start_matches("./"))
                .cloned()
                .ok_or_else(|| {
                    invalid(
                        "manifest.json",
                        format!("refers to {path}, which the archive lacks"),
                    )
                })
        };
        let (config_digest, config_size) = lookup(&image.config)?;
        let config_bytes = ingest.read(&config_digest)?;
        let expected_diff_ids =
            diff_ids(&config_bytes).map_err(|reason| invalid(&image.config, reason))?;
        if expected_diff_ids.len() != image.layers.len() {
            return Err(invalid(
                "manifest.json",
                format!(
                    "{} lists {} layers but its config has {} diff_ids",
                    image.config,
                    image.layers.len(),
                    expected_diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (path, diff_id) in image.layers.iter().zip(&expected_diff_ids) {
            let (digest, size) = lookup(path)?;
            let media_type = sniff_layer_type(&ingest, &digest)?;
            if media_type == media_type::OCI_LAYER && &digest != diff_id {
                return Err(StoreError::DigestMismatch {
                    what: format!("archive entry {path} (the config's diff_id)"),
                    expected: diff_id.clone(),
                    actual: digest,
                }
                .into());
            }
            layers.push(Descriptor::new(media_type, digest, size));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_owned()),
            artifact_type: None,
            config: Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
            layers,
            subject: None,
            annotations: Default::default(),
            extra: Default::default(),
        };
        let bytes =
            serde_json::to_vec(&manifest).map_err(|error| ArchiveError::Write(error.into()))?;
        let digest = ingest.put_bytes(&bytes)?;
        let descriptor = Descriptor::new(media_type::OCI_MANIFEST, digest, bytes.len() as u64);
        let tags = image.repo_tags.clone().unwrap_or_default();
        match (options.name, tags.is_empty()) {
            (Some(name), _) if single => roots.push((Some(name.clone()), descriptor)),
            (_, true) => roots.push((None, descriptor)),
            (_, false) => {
                for tag in tags {
                    match tag.parse::<Reference>() {
                        Ok(reference) => roots.push((Some(reference), descriptor.clone())),
                        Err(error) => {
                            report.warnings.push(format!("{error}; loaded unnamed"));
                            roots.push((None, descriptor.clone()));
                        }
                    }
                }
            }
        }
    }
    finish_load(ingest, roots, report)
}

/// The media type of a docker-archive layer, from its first bytes.
fn sniff_layer_type(ingest: &Ingest<'_>, digest: &Digest) -> Result<&'static str> {
    let mut head = [0u8; 4];
    let mut file = ingest.open(digest)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]).map_err(ArchiveError::Read)? {
            0 => break,
            read => filled += read,
        }
    }
    Ok(match &head[..filled] {
        [0x1f, 0x8b, ..] => media_type::OCI_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => media_type::OCI_LAYER_ZSTD,
        _ => media_type::OCI_LAYER,
    })
}

/// Loads every image of the OCI image layout on `source` (a directory such as skopeo's
/// `oci:DIR`). Only blobs reachable from its `index.json` are read, each verified.
pub fn load_layout(store: &Store, source: &dyn Fs, options: LoadOptions<'_>) -> Result<LoadReport> {
    let layout = source.read(Path::new("oci-layout")).map_err(|error| {
        invalid(
            source
                .display_path(Path::new("oci-layout"))
                .display()
                .to_string(),
            error.to_string(),
        )
    })?;
    let index_name = source
        .display_path(Path::new("index.json"))
        .display()
        .to_string();
    check_layout_version(&layout, &index_name)?;
    let index_bytes = source
        .read(Path::new("index.json"))
        .map_err(|error| invalid(&index_name, error.to_string()))?;
    let index = parse_index_json(&index_bytes, &index_name)?;
    let ingest = store.begin_ingest()?;
    let mut seen = BTreeSet::new();
    let mut pending: Vec<(Descriptor, bool)> =
        index.manifests.iter().map(|d| (d.clone(), false)).collect();
    while let Some((descriptor, from_index)) = pending.pop() {
        if !seen.insert(descriptor.digest.clone()) {
            continue;
        }
        let path: PathBuf = descriptor.digest.blob_path();
        if !ingest.present(&descriptor.digest, descriptor.size)? {
            let file = match source.open(&path) {
                Ok(file) => file,
                // A platform of a multi-arch image that was not copied.
                Err(error) if error.is_not_found() && from_index => continue,
                Err(error) => {
                    return Err(invalid(
                        source.display_path(&path).display().to_string(),
                        error.to_string(),
                    ));
                }
            };
            let mut reader = ProgressReader::new(file, options.progress);
            ingest
                .put(&descriptor.digest, Some(descriptor.size), &mut reader)
                .map_err(|error| {
                    name_entry(error, &source.display_path(&path).display().to_string())
                })?;
        }
        if is_manifest_type(&descriptor.media_type) {
            let bytes = ingest.read(&descriptor.digest)?;
            let (_, document) =
                parse_manifest(&descriptor.digest, &bytes, Some(&descriptor.media_type))?;
            let is_index = matches!(document, ManifestDocument::Index(_));
            for child in document.children() {
                pending.push((child.clone(), is_index));
            }
        }
    }
    commit_oci_index(ingest, &index_bytes, &index_name, options)
}
