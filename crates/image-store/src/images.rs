//! Per-image conveniences for front ends: what a listing shows of an image, and removing an
//! image by name or by digest.

use serde::Deserialize;

use crate::blob::BlobStore;
use crate::error::{Result, StoreError};
use crate::model::{Descriptor, ManifestDocument, Platform};
use crate::reference::Reference;
use crate::store::Store;

/// What `sealer images` shows of an image besides its name and digest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageSummary {
    /// The platforms of an index's entries that are in the store, or the one platform of a
    /// single manifest (from its config; empty when the config names none, as for
    /// artifacts).
    pub platforms: Vec<Platform>,
    /// Bytes of the distinct blobs the image reaches that are in the store (manifests,
    /// configs and layers).
    pub size: u64,
    /// Platforms of a multi-arch image whose content is not in the store.
    pub absent_platforms: usize,
}

impl Store {
    /// Summarises the image `descriptor` points to (an `index.json` entry).
    pub fn summary(&self, descriptor: &Descriptor) -> Result<ImageSummary> {
        let reach = self.reachable(std::slice::from_ref(descriptor))?;
        let mut size = 0;
        for digest in &reach.present {
            size += self.blobs().stat(digest)?.unwrap_or(0);
        }
        let platforms = match self.read_manifest(descriptor)? {
            // Only the platforms whose image is here (a partial image lacks some).
            ManifestDocument::Index(index) => {
                let mut present = Vec::new();
                for entry in &index.manifests {
                    if let Some(platform) = &entry.platform
                        && self.blobs().stat(&entry.digest)?.is_some()
                    {
                        present.push(platform.clone());
                    }
                }
                present
            }
            ManifestDocument::Image(manifest) => {
                match self.read_verified(&manifest.config.digest) {
                    Ok(config) => config_platform(&config).into_iter().collect(),
                    // A partial (pull-through cached) image whose config was never fetched.
                    Err(StoreError::BlobNotFound(_)) => Vec::new(),
                    Err(error) => return Err(error),
                }
            }
        };
        Ok(ImageSummary {
            platforms,
            size,
            absent_platforms: reach.absent_platforms,
        })
    }

    /// Removes an image the way `sealer rmi` does: a name (`nginx`, `quay.io/a/b:1`) removes
    /// that name only; a digest, `name@digest` or short id removes every `index.json` entry
    /// pointing to that digest. Returns the removed entries. Content stays until
    /// [`Store::gc`].
    pub fn remove_image(&self, reference: &str) -> Result<Vec<Descriptor>> {
        let entry = self.lookup(reference)?;
        let asked = reference
            .parse::<Reference>()
            .ok()
            .filter(|parsed| parsed.digest().is_none());
        if let (Some(name), Some(asked)) = (&entry.name, &asked)
            && asked.tagged_name().as_ref() == Some(name)
        {
            return Ok(vec![self.untag(asked)?]);
        }
        let removed = self.remove_entries(&entry.descriptor.digest)?;
        if removed.is_empty() {
            // A manifest inside a multi-arch image: no entry of its own to remove.
            return Err(StoreError::ImageNotFound(format!(
                "{reference} (it is part of a multi-arch image; remove that image instead)"
            )));
        }
        Ok(removed)
    }
}

/// The platform an image config declares (`os`, `architecture`, `variant`), if it does.
fn config_platform(config: &[u8]) -> Option<Platform> {
    #[derive(Deserialize)]
    struct ConfigPlatform {
        architecture: Option<String>,
        os: Option<String>,
        variant: Option<String>,
    }
    let parsed: ConfigPlatform = serde_json::from_slice(config).ok()?;
    match (parsed.os, parsed.architecture) {
        (Some(os), Some(architecture)) if !os.is_empty() && !architecture.is_empty() => {
            Some(Platform::new(&os, &architecture, parsed.variant.as_deref()))
        }
        _ => None,
    }
}
