//! Dependency images: after the steps, the rootfs is scanned (crate `sealer-dep-scanner`),
//! every image found is pulled into the store for the platform (through the build's pull
//! hook, only when the store lacks it), and one layer holds them under `registry/` as an OCI
//! image layout whose `org.opencontainers.image.ref.name` is the full source reference (so
//! `quay.io/a/b:1` and `docker.io/a/b:1` never collide). Blobs are streamed from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use sealer_dep_scanner::{Finding, ScanOptions, Warning, scan_cluster_rootfs};
use sealer_fs_abstraction::{ErrorChain, Fs};
use sealer_image_store::model::{PARTIAL_ANNOTATION, REF_NAME_ANNOTATION};
use sealer_image_store::{
    BlobStore, Descriptor, Index, Ingest, Manifest, Platform, ResolvedImage, Store, StoreError,
};
use serde::{Deserialize, Serialize};

use crate::engine::PullFn;
use crate::engine::error::{BuildError, Result};
use crate::engine::layer::{LayerTree, Node};
use crate::engine::run::Rootfs;

/// The directory of the dependency images' OCI layout in a cluster image's rootfs (the
/// value of the layer's `EMBEDDED_LAYOUT_ANNOTATION`).
pub const REGISTRY_DIR: &str = "registry";

/// The manifest annotation listing the images a cluster image carries in `registry/`.
pub use sealer_image_store::model::CONTAINER_IMAGES_ANNOTATION;

/// One entry of [`CONTAINER_IMAGES_ANNOTATION`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContainerImage {
    /// The full source reference.
    pub image: String,
    /// The app whose files name it (empty: not an app's).
    #[serde(rename = "appName", default)]
    pub app_name: String,
    /// `os/arch[/variant]`.
    #[serde(default)]
    pub platform: String,
}

/// The images listed by a manifest's [`CONTAINER_IMAGES_ANNOTATION`] (none when absent).
pub fn container_images(manifest: &Manifest) -> std::result::Result<Vec<ContainerImage>, String> {
    match manifest.annotations.get(CONTAINER_IMAGES_ANNOTATION) {
        None => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|error| {
            format!(
                "{CONTAINER_IMAGES_ANNOTATION} is not valid: {}",
                ErrorChain(&error)
            )
        }),
    }
}

/// The images the cluster image `reference` in `store` carries, as its manifests'
/// [`CONTAINER_IMAGES_ANNOTATION`] lists them (every platform present in the store), sorted
/// and deduplicated.
pub fn carried_images(store: &Store, reference: &str) -> Result<Vec<ContainerImage>> {
    let mut found = BTreeSet::new();
    for (_, manifest) in store.image_manifests(reference)? {
        let listed = container_images(&manifest).map_err(|message| BuildError::Metadata {
            reference: reference.to_owned(),
            message,
        })?;
        found.extend(listed);
    }
    Ok(found.into_iter().collect())
}

/// A dependency image resolved in the store for one platform.
pub(crate) struct DepImage {
    pub(crate) entry: ContainerImage,
    /// What the reference names: the image manifest, or the index (of a multi-arch image)
    /// whose digest clients pin.
    pub(crate) top: Descriptor,
    /// The indexes from `top` down to the platform's manifest (empty for a single-platform
    /// image).
    pub(crate) indexes: Vec<Descriptor>,
    pub(crate) manifest_descriptor: Descriptor,
    pub(crate) manifest: Manifest,
}

/// What the rootfs of a build needs: every image its cluster areas name (scanned by
/// `sealer_dep_scanner::scan_cluster_rootfs`, with the build's image lists), less those the
/// base carries already. `build` pulls and carries these; `plan_images` (and so
/// `sealer scan` of a build context) lists them: one decision for both.
pub(crate) struct FoundImages {
    /// Each image with the app whose files name it (empty: not an app's).
    pub(crate) images: Vec<(Finding, String)>,
    /// References the rootfs names that the base's `registry/` holds already.
    pub(crate) inherited: Vec<String>,
    /// What the scan could not use.
    pub(crate) warnings: Vec<Warning>,
}

/// Scans the rootfs made of `layers` for the images a build needs ([`FoundImages`]).
pub(crate) fn find_images(
    ingest: &Ingest<'_>,
    layers: &[Descriptor],
    inherited: &BTreeSet<String>,
    options: &ScanOptions,
) -> Result<FoundImages> {
    let rootfs = Rootfs::materialise(ingest, layers)?;
    let report = scan_cluster_rootfs(rootfs.fs(), options).map_err(|error| BuildError::Io {
        what: "scanning the rootfs for images".to_owned(),
        source: std::io::Error::other(error),
    })?;
    let mut found = FoundImages {
        images: Vec::new(),
        inherited: Vec::new(),
        warnings: report.warnings,
    };
    for finding in report.images {
        let reference = finding.reference.to_string();
        if inherited.contains(&reference) {
            found.inherited.push(reference);
            continue;
        }
        let app_name = finding
            .sources
            .iter()
            .find_map(|source| {
                let rest = source.file.strip_prefix("application/apps/")?;
                rest.split_once('/').map(|(app, _)| app.to_owned())
            })
            .unwrap_or_default();
        found.images.push((finding, app_name));
    }
    Ok(found)
}

/// The image `reference` in the store for `platform`, when it is there complete: a
/// multi-arch image pulled for another platform (an earlier platform of this build) is not.
pub(crate) fn present(
    store: &Store,
    reference: &str,
    platform: &Platform,
) -> Result<Option<ResolvedImage>> {
    match store.resolve(reference, Some(platform)) {
        Ok(resolved) if is_complete(store, &resolved)? => Ok(Some(resolved)),
        Ok(_)
        | Err(
            StoreError::ImageNotFound(_)
            | StoreError::BlobNotFound(_)
            | StoreError::PlatformNotCarried { .. },
        ) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Resolves every image of `found` for `platform` in the store, pulling the missing ones
/// through `pull`.
pub(crate) fn collect(
    store: &Store,
    found: FoundImages,
    platform: &Platform,
    pull: Option<PullFn<'_>>,
) -> Result<Vec<DepImage>> {
    for warning in &found.warnings {
        tracing::warn!("image scan: {warning}");
    }
    let mut images = Vec::new();
    for (finding, app_name) in found.images {
        let reference = finding.reference.to_string();
        let resolved = match present(store, &reference, platform)? {
            Some(resolved) => resolved,
            None => {
                let Some(pull) = pull else {
                    return Err(BuildError::Dependency {
                        reference,
                        message: format!(
                            "not in the store for {platform} (pull it first, or build with --build-mode lite)"
                        ),
                    });
                };
                pull(&reference, platform).map_err(|source| BuildError::DependencyPull {
                    reference: reference.clone(),
                    platform: platform.to_string(),
                    source,
                })?;
                store.resolve(&reference, Some(platform))?
            }
        };
        let top = Descriptor::new(
            resolved.top.media_type.clone(),
            resolved.top.digest.clone(),
            resolved.top.size,
        );
        images.push(DepImage {
            entry: ContainerImage {
                image: reference,
                app_name,
                platform: platform.to_string(),
            },
            top,
            indexes: resolved.indexes,
            manifest_descriptor: resolved.manifest_descriptor,
            manifest: resolved.manifest,
        });
    }
    Ok(images)
}

/// Whether the config and every layer of a resolved image are in the store, each with its
/// size (a truncated blob is pulled again).
fn is_complete(store: &Store, resolved: &ResolvedImage) -> Result<bool> {
    for blob in std::iter::once(&resolved.manifest.config).chain(&resolved.manifest.layers) {
        if store.blobs().stat(&blob.digest)? != Some(blob.size) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The canonical text keying the registry layer: every reference with its top and
/// manifest digests, sorted.
pub(crate) fn cache_text(images: &[DepImage]) -> String {
    let mut lines: Vec<String> = images
        .iter()
        .map(|image| {
            format!(
                "{}@{}@{}",
                image.entry.image, image.top.digest, image.manifest_descriptor.digest
            )
        })
        .collect();
    lines.sort();
    format!("# registry: {}", lines.join(" "))
}

/// The `registry/` layer: `oci-layout`, `index.json` (one entry per image, its
/// `org.opencontainers.image.ref.name` the full reference) and the blobs, read from `store`.
/// A multi-arch image keeps its index (clients pin its digest), marked partial: only the
/// build platform's image is carried.
pub(crate) fn registry_tree(store: &Store, images: &[DepImage]) -> Result<LayerTree> {
    let mut tree = LayerTree::default();
    let root = PathBuf::from(REGISTRY_DIR);
    let store_fs: Arc<dyn Fs> = Arc::clone(store.fs());
    let mut blobs: BTreeMap<String, Descriptor> = BTreeMap::new();
    let mut index = Index::empty();
    let mut sorted: Vec<&DepImage> = images.iter().collect();
    sorted.sort_by(|a, b| a.entry.image.cmp(&b.entry.image));
    for image in sorted {
        let mut entry = image.top.clone();
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.to_owned(), image.entry.image.clone());
        if !image.indexes.is_empty() {
            entry
                .annotations
                .insert(PARTIAL_ANNOTATION.to_owned(), "true".to_owned());
        }
        index.manifests.push(entry);
        for descriptor in image
            .indexes
            .iter()
            .chain(std::iter::once(&image.manifest_descriptor))
            .chain(std::iter::once(&image.manifest.config))
            .chain(image.manifest.layers.iter())
        {
            blobs.insert(descriptor.digest.to_string(), descriptor.clone());
        }
    }
    for descriptor in blobs.values() {
        let source = descriptor.digest.blob_path();
        let len = store_fs.metadata(&source)?.len;
        tree.insert(
            root.join(&source),
            Node::Extern {
                fs: Arc::clone(&store_fs),
                source,
                mode: 0o644,
                len,
            },
        );
    }
    tree.insert(
        root.join("oci-layout"),
        Node::Data(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec().into(), 0o644),
    );
    let bytes = serde_json::to_vec(&index).map_err(|error| BuildError::Io {
        what: "encoding JSON".to_owned(),
        source: std::io::Error::other(error),
    })?;
    tree.insert(root.join("index.json"), Node::Data(bytes.into(), 0o644));
    Ok(tree)
}
