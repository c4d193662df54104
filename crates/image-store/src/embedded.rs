//! Images carried inside another image: a layer that holds an OCI image layout under a
//! directory (a cluster image's `registry/`), marked on its descriptor with
//! [`EMBEDDED_LAYOUT_ANNOTATION`]. [`load_embedded`] imports them into a store under their
//! own names (the full source references), so that a registry serving that store serves
//! them.

use std::collections::BTreeMap;
use std::io::Read;

use sealer_fs_abstraction::error_chain;

use crate::archive::{self, ArchiveError, LoadOptions, NoProgress, Progress};
use crate::blob::BlobStore;
use crate::digest::Digest;
use crate::error::StoreError;
use crate::ingest::CommitReport;
use crate::model::{Descriptor, Index, Platform, media_type};
use crate::reference::Reference;
use crate::store::{MAX_MANIFEST_SIZE, Store};

pub use crate::model::EMBEDDED_LAYOUT_ANNOTATION;

/// A layer that carries an OCI image layout.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedLayout {
    /// The platform of the image manifest it belongs to (`None`: a single-platform image).
    pub platform: Option<Platform>,
    /// The layer.
    pub layer: Descriptor,
    /// The layout's directory inside the layer.
    pub directory: String,
}

/// What [`load_embedded`] imported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbeddedReport {
    /// The layers that carry images.
    pub layers: usize,
    /// Of those, the layers whose images the target held already, exactly: not read again.
    pub layers_held: usize,
    /// Every image, by name, with its top digest (sorted by name).
    pub images: Vec<(String, Digest)>,
    /// Images without a usable name (they are stored unnamed), names carried with two
    /// different digests (the later layer's wins), and tags of the target that the import
    /// moved to another digest.
    pub warnings: Vec<String>,
    /// What the commits added, summed.
    pub commit: CommitReport,
}

/// The layers of `reference` (every platform of a multi-arch image) that carry an OCI
/// image layout, base layers first.
pub fn embedded_layouts(store: &Store, reference: &str) -> Result<Vec<EmbeddedLayout>, StoreError> {
    let mut found = Vec::new();
    for (descriptor, manifest) in store.image_manifests(reference)? {
        for layer in &manifest.layers {
            if let Some(directory) = layer.annotations.get(EMBEDDED_LAYOUT_ANNOTATION) {
                found.push(EmbeddedLayout {
                    platform: descriptor.platform.clone(),
                    layer: layer.clone(),
                    directory: directory.clone(),
                });
            }
        }
    }
    Ok(found)
}

/// Imports the images that the layers of `reference` in `source` carry (see
/// [`embedded_layouts`]) into `target` (which may be `source` itself), named by their
/// layouts' `org.opencontainers.image.ref.name`. Each layer is one all-or-nothing import
/// whose blobs are verified; blobs `target` already has are not written again. `progress`
/// counts the bytes of the layers read.
pub fn load_embedded(
    source: &Store,
    reference: &str,
    target: &Store,
    progress: Option<&dyn Progress>,
) -> Result<EmbeddedReport, ArchiveError> {
    let layouts = embedded_layouts(source, reference)?;
    let progress = progress.unwrap_or(&NoProgress);
    progress.set_total(layouts.iter().map(|layout| layout.layer.size).sum());
    let mut report = EmbeddedReport::default();
    let mut names: BTreeMap<String, Digest> = BTreeMap::new();
    // What the target's tags pointed to before, to say which ones the import moves.
    let before: BTreeMap<String, Digest> = target
        .images()?
        .into_iter()
        .filter_map(|entry| Some((entry.name?, entry.descriptor.digest)))
        .collect();
    for layout in &layouts {
        report.layers += 1;
        if let Some(images) = held_already(source, layout, target) {
            report.layers_held += 1;
            progress.advance(layout.layer.size);
            record(&mut report, &mut names, images);
            continue;
        }
        let mut blob = source.blobs().open(&layout.layer.digest)?;
        let options = LoadOptions {
            progress,
            directory: Some(&layout.directory),
            ..LoadOptions::default()
        };
        let loaded = archive::load(target, &mut blob, options).map_err(|error| {
            let at = match &layout.platform {
                Some(platform) => format!("{reference} ({platform})"),
                None => reference.to_owned(),
            };
            ArchiveError::Invalid {
                entry: format!(
                    "the {}/ layer {} of {at}",
                    layout.directory, layout.layer.digest
                ),
                reason: error_chain(&error),
            }
        })?;
        report.warnings.extend(loaded.warnings);
        report.commit.blobs_added += loaded.commit.blobs_added;
        report.commit.bytes_added += loaded.commit.bytes_added;
        report.commit.blobs_reused += loaded.commit.blobs_reused;
        report.commit.absent_platforms += loaded.commit.absent_platforms;
        record(&mut report, &mut names, loaded.images);
    }
    for (name, digest) in &names {
        if let Some(earlier) = before.get(name)
            && earlier != digest
        {
            report.warnings.push(format!(
                "{name} pointed to {earlier}; it now names {digest}, the image {reference} carries"
            ));
        }
    }
    report.images = names.into_iter().collect();
    Ok(report)
}

/// Adds a layer's images to `names`, warning about unnamed ones and names carried twice with
/// different digests.
fn record(
    report: &mut EmbeddedReport,
    names: &mut BTreeMap<String, Digest>,
    images: Vec<(Option<String>, Digest)>,
) {
    for (name, digest) in images {
        let Some(name) = name else {
            report
                .warnings
                .push(format!("image {digest} has no name; it is stored unnamed"));
            continue;
        };
        if let Some(earlier) = names.get(&name)
            && *earlier != digest
        {
            report.warnings.push(format!(
                "{name} is carried as {earlier} and as {digest}; {digest} is served"
            ));
        }
        names.insert(name, digest);
    }
}

/// The images of `layout` when `target` holds them all already, exactly (each name on its
/// digest, every blob the layer carries present), so the layer need not be read again:
/// its entries are listed by seeking over the plain tar, only `index.json` is read. `None` means
/// "import it" (a compressed layer, a name moved or missing, a blob absent, anything
/// unexpected).
fn held_already(
    source: &Store,
    layout: &EmbeddedLayout,
    target: &Store,
) -> Option<Vec<(Option<String>, Digest)>> {
    if !matches!(
        layout.layer.media_type.as_str(),
        media_type::OCI_LAYER | media_type::DOCKER_LAYER
    ) {
        return None;
    }
    let file = source.blobs().open(&layout.layer.digest).ok()?;
    let mut archive = tar::Archive::new(file);
    let directory = format!("{}/", layout.directory.trim_matches('/'));
    let mut index_bytes = None;
    let mut carried = Vec::new();
    for entry in archive.entries_with_seek().ok()? {
        let entry = entry.ok()?;
        let path = entry.path().ok()?.to_string_lossy().into_owned();
        let Some(inside) = path.trim_start_matches("./").strip_prefix(&directory) else {
            continue;
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        if inside == "index.json" {
            let mut bytes = Vec::new();
            entry
                .take(MAX_MANIFEST_SIZE + 1)
                .read_to_end(&mut bytes)
                .ok()?;
            index_bytes = Some(bytes);
        } else if let Some((algorithm, hex)) = inside
            .strip_prefix("blobs/")
            .and_then(|rest| rest.split_once('/'))
        {
            let digest = format!("{algorithm}:{hex}").parse::<Digest>().ok()?;
            carried.push((digest, entry.size()));
        }
    }
    // Every blob the layer carries (other platforms' included) must be there already, with
    // its size: a truncated copy is replaced by importing the layer.
    for (digest, size) in &carried {
        if target.blobs().stat(digest).ok()? != Some(*size) {
            return None;
        }
    }
    let index: Index = serde_json::from_slice(&index_bytes?).ok()?;
    let mut images = Vec::new();
    for entry in &index.manifests {
        let name = match entry.ref_name() {
            Some(text) => {
                let reference = text.parse::<Reference>().ok()?;
                let held = target.lookup(text).ok()?;
                if held.descriptor.digest != entry.digest {
                    return None;
                }
                Some(
                    reference
                        .tagged_name()
                        .unwrap_or_else(|| reference.to_string()),
                )
            }
            None => {
                target.lookup(&entry.digest.to_string()).ok()?;
                None
            }
        };
        images.push((name, entry.digest.clone()));
    }
    Some(images)
}
