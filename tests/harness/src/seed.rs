//! Pushing synthetic images into a registry with skopeo.

use std::time::Duration;

use anyhow::{Context as _, bail};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Descriptor, ManifestDocument, Platform, Store};

use crate::process::run_ok;
use crate::{Result, path_str, temp_dir};

/// Bound on one `skopeo` run while seeding.
const SKOPEO_TIMEOUT: Duration = Duration::from_secs(300);

/// One platform's image of a [`SeededImage`].
#[derive(Debug, Clone, PartialEq)]
pub struct SeededPlatform {
    /// The platform.
    pub platform: Platform,
    /// Its image manifest's digest.
    pub manifest_digest: String,
    /// Its config and layer digests (config first).
    pub blob_digests: Vec<String>,
}

/// What [`seed_image`] pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct SeededImage {
    /// `HOST/REPO:TAG`, as pushed.
    pub reference: String,
    /// The digest of the top manifest (the index of a multi-arch image), as the registry
    /// serves it.
    pub manifest_digest: String,
    /// The top document's media type.
    pub media_type: String,
    /// Every config and layer digest, deduplicated, sorted.
    pub blob_digests: Vec<String>,
    /// Sizes of those blobs added up.
    pub total_bytes: u64,
    /// Per platform, in the order of the spec (one entry for a single-platform image).
    pub platforms: Vec<SeededPlatform>,
}

/// Builds the image of `spec` (its `name` is ignored) in a temporary OCI layout with
/// [`write_image`], then pushes it with
/// `skopeo copy --all --preserve-digests --dest-tls-verify=false [--dest-creds U:P]` to
/// `docker://REGISTRY_HOST/REFERENCE_PATH` (`repo:tag`), and checks with
/// `skopeo inspect --raw` that the registry serves the same top digest.
pub fn seed_image(
    registry_host: &str,
    reference_path: &str,
    spec: &ImageSpec,
    creds: Option<(&str, &str)>,
) -> Result<SeededImage> {
    let layout = temp_dir()?;
    let store = Store::open_dir(layout.path()).context("opening the seed layout")?;
    let mut spec = spec.clone();
    spec.name = Some("sealer-harness/seed:latest".to_owned());
    let top = write_image(&store, &spec).context("writing the seed image")?;
    let layout_name = store
        .images()?
        .into_iter()
        .find(|entry| entry.descriptor.digest == top.digest)
        .and_then(|entry| entry.name)
        .context("the seed image has no name in its layout")?;

    let mut platforms = Vec::new();
    let children: Vec<Descriptor> = match store.read_manifest(&top)? {
        ManifestDocument::Index(index) => index.manifests.clone(),
        ManifestDocument::Image(_) => {
            let mut only = top.clone();
            only.platform = spec.platforms.first().cloned();
            vec![only]
        }
    };
    let mut blobs = std::collections::BTreeMap::new();
    for child in children {
        let ManifestDocument::Image(manifest) = store.read_manifest(&child)? else {
            bail!("nested index in a seed image");
        };
        let mut digests = vec![manifest.config.digest.to_string()];
        blobs.insert(manifest.config.digest.to_string(), manifest.config.size);
        for layer in &manifest.layers {
            digests.push(layer.digest.to_string());
            blobs.insert(layer.digest.to_string(), layer.size);
        }
        platforms.push(SeededPlatform {
            platform: child.platform.clone().unwrap_or_else(Platform::host),
            manifest_digest: child.digest.to_string(),
            blob_digests: digests,
        });
    }

    let source = format!("oci:{}:{layout_name}", path_str(layout.path())?);
    let destination = format!("docker://{registry_host}/{reference_path}");
    let creds_arg = creds.map(|(user, password)| format!("{user}:{password}"));
    let mut args = vec![
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ];
    if let Some(creds) = &creds_arg {
        args.extend(["--dest-creds", creds]);
    }
    args.extend([source.as_str(), destination.as_str()]);
    run_ok("skopeo", &args, SKOPEO_TIMEOUT).context("pushing the seed image")?;

    let mut inspect = vec!["inspect", "--raw", "--tls-verify=false"];
    if let Some(creds) = &creds_arg {
        inspect.extend(["--creds", creds]);
    }
    inspect.push(&destination);
    let raw = run_ok("skopeo", &inspect, SKOPEO_TIMEOUT)?;
    let served = sealer_image_store::Digest::sha256(&raw);
    if served != top.digest {
        bail!(
            "{destination} serves {served}, not the pushed {} (digests not preserved)",
            top.digest
        );
    }
    Ok(SeededImage {
        reference: format!("{registry_host}/{reference_path}"),
        manifest_digest: top.digest.to_string(),
        media_type: top.media_type.clone(),
        total_bytes: blobs.values().sum(),
        blob_digests: blobs.into_keys().collect(),
        platforms,
    })
}
