//! oci-archive export: a tar of an OCI image layout (`oci-layout`, `index.json`, `blobs/`),
//! multi-arch indexes included.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::error::StoreError;
use crate::model::REF_NAME_ANNOTATION;
use crate::store::Store;

use super::{ArchiveError, Progress, Result, SaveReport, append_verified, archive_tar, finish_tar};

/// Writes an oci-archive of `references` to `out`.
pub(super) fn save_oci(
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
    let mut tar = archive_tar(out);
    tar.append_dir(Path::new("blobs"), 0o755)?;
    for algorithm in reach
        .present
        .iter()
        .map(Digest::algorithm)
        .collect::<BTreeSet<_>>()
    {
        tar.append_dir(Path::new(&format!("blobs/{}", algorithm.name())), 0o755)?;
    }
    tar.append_file(
        Path::new("oci-layout"),
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for (digest, size) in sizes {
        let mut blob = store.blobs().open(digest)?;
        let path = digest.blob_path();
        append_verified(
            &mut tar,
            &path.to_string_lossy(),
            size,
            &mut blob,
            digest,
            progress,
        )?;
        report.blobs += 1;
        report.bytes += size;
    }
    let index_bytes =
        serde_json::to_vec(&index).map_err(|error| ArchiveError::Write(error.into()))?;
    tar.append_file(Path::new("index.json"), 0o644, &index_bytes)?;
    finish_tar(tar)?;
    Ok(report)
}
