//! docker-archive export: `docker save`'s format (`manifest.json`, `<config>.json`,
//! uncompressed `<diffid>.tar` layers), one platform per image; gzip layers are expanded
//! (and checked against their diff ids) on the way.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use crate::blob::BlobStore;
use crate::digest::{Algorithm, Digest};
use crate::error::StoreError;
use crate::model::{Descriptor, Platform};
use crate::store::Store;

use super::{
    ArchiveError, DockerArchiveImage, NoProgress, ProgressReader, Result, SaveOptions, SaveReport,
    append_verified, archive_tar, diff_ids, finish_tar, invalid,
};

/// Writes a docker-archive of `references` (one platform each) to `out`.
pub(super) fn save_docker(
    store: &Store,
    references: &[String],
    out: &mut dyn Write,
    options: SaveOptions<'_>,
) -> Result<SaveReport> {
    let mut report = SaveReport::default();
    let mut images = Vec::new();
    let plan = export_plan(store, references, options.platform, &mut report)?;
    let total: u64 = plan
        .iter()
        .flat_map(|image| image.layers.iter().map(|(layer, _)| layer.size))
        .sum();
    options.progress.set_total(total);

    let mut tar = archive_tar(out);
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
            tar.append_file(Path::new(&config_name), 0o644, &bytes)?;
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
                    append_verified(
                        &mut tar,
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
                    append_verified(
                        &mut tar,
                        &layer_name,
                        size,
                        &mut expanded,
                        &digest,
                        &NoProgress,
                    )?;
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
    tar.append_file(Path::new("manifest.json"), 0o644, &manifest)?;
    finish_tar(tar)?;
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

/// What each image of a docker-archive export holds; each goes into `report.images`.
fn export_plan(
    store: &Store,
    references: &[String],
    platform: Option<&Platform>,
    report: &mut SaveReport,
) -> Result<Vec<DockerExportPlan>> {
    let mut plan = Vec::new();
    for reference in references {
        let resolved = store.resolve(reference, platform)?;
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
    Ok(plan)
}
