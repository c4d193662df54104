//! Sealer's image metadata: the `sealer.image.extension` manifest annotation, and the image
//! config's timestamps.

use std::collections::BTreeMap;

use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::{ImageEntry, Manifest, Reference, Store};
use serde::{Deserialize, Serialize};

use crate::engine::deps::container_images;
use crate::engine::error::{BuildError, Result};

/// The manifest annotation holding sealer's metadata as JSON ([`ImageExtension`]).
pub use sealer_image_store::model::EXTENSION_ANNOTATION;

/// The schema version written in [`ImageExtension::schema_version`].
pub const EXTENSION_SCHEMA_VERSION: &str = "v1alpha1";

/// Sealer's metadata of a cluster image: apps, launch, raw commands, global env.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ImageExtension {
    /// [`EXTENSION_SCHEMA_VERSION`].
    pub schema_version: String,
    /// `kube-installer` (what sealer builds by default).
    #[serde(rename = "type")]
    pub image_type: String,
    /// The apps (inherited from the base first, then this Kubefile's, in order).
    pub applications: Vec<Application>,
    /// What runs after the cluster is up.
    pub launch: Launch,
    /// The global environment (ENV).
    pub env: BTreeMap<String, String>,
}

/// One app under `application/apps/<name>/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Application {
    /// The app's name (its directory).
    pub name: String,
    /// `helm`, `kube`, `shell`, or empty when undetected (then `cmds` come from APPCMDS).
    #[serde(rename = "type")]
    pub app_type: String,
    /// The files launched (relative to the app directory): a helm chart's directory, the
    /// kube manifests, the shell scripts.
    pub launchfiles: Vec<String>,
    /// The launch commands: APPCMDS, else the defaults of its type.
    pub cmds: Vec<String>,
    /// Its environment (APPENV).
    pub env: BTreeMap<String, String>,
}

/// LAUNCH and CMDS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Launch {
    /// CMDS (and the deprecated CMD).
    pub cmds: Vec<String>,
    /// LAUNCH.
    pub app_names: Vec<String>,
}

impl ImageExtension {
    /// The extension of a manifest: `None` when it has no `sealer.image.extension`
    /// annotation, an error message when it is not valid JSON of this shape.
    pub fn of_manifest(manifest: &Manifest) -> Option<Result<Self, String>> {
        let text = manifest.annotations.get(EXTENSION_ANNOTATION)?;
        Some(serde_json::from_str(text).map_err(|error| {
            format!(
                "the {EXTENSION_ANNOTATION} annotation is not valid: {}",
                ErrorChain(&error)
            )
        }))
    }
}

/// What an image of the store is to sealer (what `sealer images` groups by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ImageKind {
    /// A cluster image: a manifest carries [`EXTENSION_ANNOTATION`] (`sealer build` wrote it).
    Cluster,
    /// An image a cluster image of the store lists as carried (its
    /// `sealer.image.container.images`), under the name listed there.
    Dependency,
    /// Any other image.
    Other,
}

impl ImageKind {
    /// The lowercase name (`cluster`, `dependency`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "cluster",
            Self::Dependency => "dependency",
            Self::Other => "other",
        }
    }
}

/// The kind of each of `entries` (in order), from their manifests in `store`: cluster
/// images first, then the images those list as carried.
pub fn image_kinds(store: &Store, entries: &[ImageEntry]) -> Result<Vec<ImageKind>> {
    let mut kinds = Vec::with_capacity(entries.len());
    let mut carried = std::collections::BTreeSet::new();
    for entry in entries {
        let reference = entry.descriptor.digest.to_string();
        let mut cluster = false;
        for (_, manifest) in store.image_manifests(&reference)? {
            if manifest.annotations.contains_key(EXTENSION_ANNOTATION) {
                cluster = true;
                let listed =
                    container_images(&manifest).map_err(|message| BuildError::Metadata {
                        reference: entry.name.clone().unwrap_or_else(|| reference.clone()),
                        message,
                    })?;
                // Compared in normalised spelling (`nginx` is `docker.io/library/nginx:latest`).
                carried.extend(listed.into_iter().map(|image| {
                    image
                        .image
                        .parse::<Reference>()
                        .map_or(image.image, |parsed| parsed.to_string())
                }));
            }
        }
        kinds.push(if cluster {
            ImageKind::Cluster
        } else {
            ImageKind::Other
        });
    }
    for (kind, entry) in kinds.iter_mut().zip(entries) {
        if *kind == ImageKind::Other
            && entry
                .name
                .as_ref()
                .is_some_and(|name| carried.contains(name))
        {
            *kind = ImageKind::Dependency;
        }
    }
    Ok(kinds)
}

pub(crate) use sealer_image_store::model::rfc3339_utc as rfc3339;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
