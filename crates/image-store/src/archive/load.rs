//! Loading: oci-archive and docker-archive streams ([`load`], gzip or zstd compressed or
//! plain) and OCI layout directories ([`load_layout`]), through one [`Ingest`] each.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{ErrorChain, Fs, error_chain};

use crate::blob::COPY_BUFFER;
use crate::digest::{Algorithm, Digest};
use crate::error::StoreError;
use crate::ingest::Ingest;
use crate::model::{Descriptor, Manifest, ManifestDocument, media_type};
use crate::reference::Reference;
use crate::store::{MAX_MANIFEST_SIZE, Store, is_manifest_type, parse_manifest};

use super::{
    ArchiveError, DockerArchiveImage, GZIP_MAGIC, LoadOptions, LoadReport, ProgressReader, Result,
    ZSTD_MAGIC, diff_ids, invalid,
};

/// Loads an oci-archive or docker-archive (optionally gzip-compressed) from `input`. The
/// format is recognised from the entries: `index.json` (OCI, also in Docker 25+ saves)
/// wins over `manifest.json`.
pub fn load(store: &Store, input: &mut dyn Read, options: LoadOptions<'_>) -> Result<LoadReport> {
    let reader = decompressed(ProgressReader::new(input, options.progress))?;
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
        let mut entry = entry.map_err(|error| {
            invalid(
                "archive",
                format!("not a valid tar: {}", ErrorChain(&error)),
            )
        })?;
        let path = entry
            .path()
            .map_err(|error| {
                invalid(
                    "archive",
                    format!("entry with an invalid name: {}", ErrorChain(&error)),
                )
            })?
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

/// `counted`'s bytes, gunzipped or zstd-decoded when its magic says so. Only the magic is
/// read ahead: a plain tar is then read with no buffer in between (its blob content goes
/// from the input straight into the staging copy's buffers).
fn decompressed<'a>(mut counted: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let head = magic(&mut counted)?;
    if head.is_empty() {
        return Err(invalid("archive", "it is empty"));
    }
    let gzip = head.starts_with(&GZIP_MAGIC);
    let zstd = head.starts_with(&ZSTD_MAGIC);
    let whole = io::Cursor::new(head).chain(counted);
    Ok(if gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(COPY_BUFFER, whole),
        ))
    } else if zstd {
        Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(COPY_BUFFER, whole))
                .map_err(ArchiveError::Read)?,
        )
    } else {
        Box::new(whole)
    })
}

/// The first bytes of `input`, as many as the longest magic sniffed (zstd's), fewer when it
/// is shorter.
fn magic(input: &mut impl Read) -> Result<Vec<u8>> {
    let mut head = Vec::with_capacity(ZSTD_MAGIC.len());
    input
        .take(ZSTD_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(ArchiveError::Read)?;
    Ok(head)
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
        .map_err(|error| invalid(path, format!("not JSON: {}", ErrorChain(&error))))?;
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
    serde_json::from_slice(bytes).map_err(|error| {
        invalid(
            entry,
            format!("not a valid image index: {}", ErrorChain(&error)),
        )
    })
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
                format!("not a docker-archive manifest: {}", ErrorChain(&error)),
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
                            report
                                .warnings
                                .push(format!("{}; loaded unnamed", ErrorChain(&error)));
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
    let head = magic(&mut ingest.open(digest)?)?;
    Ok(if head.starts_with(&GZIP_MAGIC) {
        media_type::OCI_LAYER_GZIP
    } else if head.starts_with(&ZSTD_MAGIC) {
        media_type::OCI_LAYER_ZSTD
    } else {
        media_type::OCI_LAYER
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
            error_chain(&error),
        )
    })?;
    let index_name = source
        .display_path(Path::new("index.json"))
        .display()
        .to_string();
    check_layout_version(&layout, &index_name)?;
    let index_bytes = source
        .read(Path::new("index.json"))
        .map_err(|error| invalid(&index_name, error_chain(&error)))?;
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
                        error_chain(&error),
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
