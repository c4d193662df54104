//! One platform's image while its steps run ([`ImageState`]): inherited from the base image,
//! grown by each step, written to the store as a config and a manifest at the end.

use std::collections::BTreeMap;

use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::model::{ExecConfig, History, ImageConfig, RootFs, media_type};
use sealer_image_store::{Descriptor, Digest, Ingest, Manifest, Platform, Store, StoreError};
use sealer_layer_cache::CacheKey;

use crate::engine::deps::{ContainerImage, container_images};
use crate::engine::metadata::{
    self, EXTENSION_ANNOTATION, EXTENSION_SCHEMA_VERSION, ImageExtension, Launch,
};
use crate::engine::{BuildError, BuildOptions, Result};
use crate::kubefile::AppType;

/// The state of one platform's image while its steps run.
pub(super) struct ImageState {
    pub(super) layers: Vec<Descriptor>,
    pub(super) diff_ids: Vec<Digest>,
    pub(super) history: Vec<History>,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) extension: ImageExtension,
    pub(super) key: CacheKey,
    /// The dependency images of the base's `registry/` (its annotation).
    pub(super) images: Vec<ContainerImage>,
    /// The type detected for each app this build (re)defines.
    pub(super) app_types: BTreeMap<String, AppType>,
}

impl ImageState {
    /// The state of `FROM scratch`.
    pub(super) fn scratch() -> Self {
        Self {
            layers: Vec::new(),
            diff_ids: Vec::new(),
            history: Vec::new(),
            labels: BTreeMap::new(),
            extension: ImageExtension::default(),
            key: CacheKey::scratch(),
            images: Vec::new(),
            app_types: BTreeMap::new(),
        }
    }

    /// Appends a layer and its history entry.
    pub(super) fn push_layer(
        &mut self,
        layer: &Descriptor,
        diff_id: &Digest,
        text: &str,
        epoch: u64,
    ) {
        self.layers.push(layer.clone());
        self.diff_ids.push(diff_id.clone());
        self.history.push(History {
            created: Some(metadata::rfc3339(epoch)),
            created_by: Some(text.to_owned()),
            ..History::default()
        });
    }

    /// Appends the history entry of a step that made no layer.
    pub(super) fn push_empty_layer(&mut self, text: &str, epoch: u64) {
        self.history.push(History {
            created: Some(metadata::rfc3339(epoch)),
            created_by: Some(text.to_owned()),
            empty_layer: Some(true),
            ..History::default()
        });
    }
}

/// The state inherited from the base image `reference` for `platform` (pulled when missing
/// and a pull function is given).
pub(super) fn base_state(
    store: &Store,
    reference: &str,
    platform: &Platform,
    options: &BuildOptions<'_>,
) -> Result<ImageState> {
    let resolved = match store.resolve(reference, Some(platform)) {
        Ok(resolved) => resolved,
        // Absent, or a multi-arch image without this platform: pulled for it when possible.
        Err(error @ (StoreError::ImageNotFound(_) | StoreError::PlatformNotCarried { .. })) => {
            let Some(pull) = options.pull else {
                return Err(BuildError::Base {
                    reference: reference.to_owned(),
                    message: match error {
                        StoreError::ImageNotFound(_) => {
                            "not in the store (pull it first)".to_owned()
                        }
                        carried => carried.to_string(),
                    },
                });
            };
            pull(reference, platform).map_err(|source| BuildError::BasePull {
                reference: reference.to_owned(),
                platform: platform.to_string(),
                source,
            })?;
            store.resolve(reference, Some(platform))?
        }
        Err(error) => return Err(error.into()),
    };
    let config = ImageConfig::parse(&store.read_verified(&resolved.manifest.config.digest)?)
        .map_err(|error| BuildError::Base {
            reference: reference.to_owned(),
            message: format!(
                "its config is not a valid image config: {}",
                ErrorChain(&error)
            ),
        })?;
    let mut extension = match ImageExtension::of_manifest(&resolved.manifest) {
        Some(Ok(extension)) => extension,
        Some(Err(message)) => {
            return Err(BuildError::Base {
                reference: reference.to_owned(),
                message,
            });
        }
        None => ImageExtension::default(),
    };
    // The base's launch is not inherited (a Kubefile states its own); its apps and env are.
    extension.launch = Launch::default();
    let exec = config.config.unwrap_or_default();
    for pair in exec.env.iter().flatten() {
        if let Some((key, value)) = pair.split_once('=') {
            extension.env.insert(key.to_owned(), value.to_owned());
        }
    }
    let labels = exec.labels.unwrap_or_default();
    let diff_ids = config.rootfs.diff_ids;
    if diff_ids.len() != resolved.manifest.layers.len() {
        return Err(BuildError::Base {
            reference: reference.to_owned(),
            message: format!(
                "its config lists {} diff_ids for {} layers",
                diff_ids.len(),
                resolved.manifest.layers.len()
            ),
        });
    }
    let images = container_images(&resolved.manifest).map_err(|message| BuildError::Base {
        reference: reference.to_owned(),
        message,
    })?;
    let history = config.history.unwrap_or_default();
    Ok(ImageState {
        layers: resolved.manifest.layers.clone(),
        diff_ids,
        history,
        labels,
        extension,
        key: CacheKey::base(&resolved.manifest_descriptor.digest),
        images,
        app_types: BTreeMap::new(),
    })
}

pub(super) fn to_json_string(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|error| BuildError::Io {
        what: "encoding JSON".to_owned(),
        source: std::io::Error::other(error),
    })
}

fn to_json(value: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| BuildError::Io {
        what: "encoding JSON".to_owned(),
        source: std::io::Error::other(error),
    })
}

/// Writes the config and manifest of one platform's image; returns the manifest descriptor.
pub(super) fn write_image(
    ingest: &Ingest<'_>,
    state: &ImageState,
    platform: &Platform,
    epoch: u64,
    annotations: &BTreeMap<String, String>,
) -> Result<Descriptor> {
    let env: Vec<String> = state
        .extension
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    // Collections are always written, even empty, so that the bytes (and digests) stay those
    // of earlier versions.
    let config = ImageConfig {
        created: Some(metadata::rfc3339(epoch)),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: Some(ExecConfig {
            env: Some(env),
            labels: Some(state.labels.clone()),
            ..ExecConfig::default()
        }),
        rootfs: RootFs {
            diff_ids: state.diff_ids.clone(),
            ..RootFs::default()
        },
        history: Some(state.history.clone()),
        ..ImageConfig::default()
    };
    let config = put_json(ingest, media_type::OCI_CONFIG, &config)?;
    let mut extension = state.extension.clone();
    extension.schema_version = EXTENSION_SCHEMA_VERSION.to_owned();
    if extension.image_type.is_empty() {
        extension.image_type = "kube-installer".to_owned();
    }
    let mut manifest_annotations = annotations.clone();
    manifest_annotations.insert(EXTENSION_ANNOTATION.to_owned(), to_json_string(&extension)?);
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_owned()),
        artifact_type: None,
        config,
        layers: state.layers.clone(),
        subject: None,
        annotations: manifest_annotations,
        extra: serde_json::Map::new(),
    };
    put_json(ingest, media_type::OCI_MANIFEST, &manifest)
}

/// Stores `value` as JSON in `ingest`; returns its descriptor.
pub(super) fn put_json(
    ingest: &Ingest<'_>,
    media_type: &str,
    value: &impl serde::Serialize,
) -> Result<Descriptor> {
    let bytes = to_json(value)?;
    let digest = ingest.put_bytes(&bytes)?;
    Ok(Descriptor::new(media_type, digest, bytes.len() as u64))
}
