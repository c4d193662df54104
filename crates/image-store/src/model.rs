//! The OCI (and Docker v2) documents the store reads: descriptors, platforms, image
//! manifests and indexes. Unknown fields are kept so documents survive a round trip, but the
//! store never re-encodes a manifest: the bytes received are the bytes served.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

mod config;
#[cfg(feature = "oci-spec")]
mod interop;

pub use config::{ExecConfig, History, ImageConfig, RootFs};
#[cfg(feature = "oci-spec")]
pub use interop::ConversionError;

/// Media types the store knows.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest v2 schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Gzip-compressed OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Zstd-compressed OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Gzip-compressed Docker layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Uncompressed Docker layer (as in `docker save`).
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

    /// Whether `media_type` is an image index or manifest list.
    pub fn is_index(media_type: &str) -> bool {
        media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
    }

    /// Whether `media_type` is a single-image manifest.
    pub fn is_manifest(media_type: &str) -> bool {
        media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
    }
}

/// The annotation that names an entry of an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The annotation (value `true`) of an `index.json` entry whose image may lack blobs by
/// design: a pull-through cache entry, where only what clients asked for was fetched.
/// [`crate::Store::reachable`] counts the absent blobs below such an entry as
/// [`crate::Reachability::absent_partial`], not as missing.
pub const PARTIAL_ANNOTATION: &str = "io.sealer.image.partial";

/// The annotation of the `index.json` entries a registry's pull-through cache creates: the
/// upstream host the manifest came from. Such entries, and the blobs only they reach, are
/// the cache's to evict ([`crate::Store::evict_cached`]).
pub const UPSTREAM_ANNOTATION: &str = "io.sealer.registry.upstream";

/// The annotation of an unnamed `index.json` entry a registry keeps for a repository (a
/// manifest pushed by digest): the repository's store name, so that `gc` keeps the manifest
/// and the repository lists it ([`crate::entry_repository`]).
pub const REPOSITORY_ANNOTATION: &str = "io.sealer.registry.repository";

/// The annotation of a layer descriptor whose layer holds an OCI image layout (value: the
/// directory in the layer, `registry` for a cluster image's carried images).
pub const EMBEDDED_LAYOUT_ANNOTATION: &str = "io.sealer.image.layer.oci-layout";

/// The manifest annotation holding a sealer image's extension (its apps, launch and
/// commands), as JSON.
pub const EXTENSION_ANNOTATION: &str = "sealer.image.extension";

/// The manifest annotation listing the container images a cluster image carries, as JSON.
pub const CONTAINER_IMAGES_ANNOTATION: &str = "sealer.image.container.images";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Alternative download locations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// A descriptor with no optional field set.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
            artifact_type: None,
            extra: Map::new(),
        }
    }

    /// The `org.opencontainers.image.ref.name` annotation, if any.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotations
            .get(REF_NAME_ANNOTATION)
            .map(String::as_str)
    }
}

/// An operating system and CPU architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture in Go's naming (`amd64`, `arm64`, `arm`, …).
    pub architecture: String,
    /// Operating system in Go's naming (`linux`, …).
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    /// CPU variant (`v7`, `v8`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Why a string is not a platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64")]
pub struct PlatformError(pub String);

impl Platform {
    /// A platform from its parts.
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            architecture: architecture.to_owned(),
            os: os.to_owned(),
            os_version: None,
            os_features: Vec::new(),
            variant: variant.map(str::to_owned),
            extra: Map::new(),
        }
    }

    /// The platform this program runs on, in Go's naming.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Self::new(std::env::consts::OS, architecture, None)
    }

    /// Parses `os/arch[/variant]`.
    pub fn parse(text: &str) -> Result<Self, PlatformError> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(valid) {
            return Err(PlatformError(text.to_owned()));
        }
        Ok(Self::new(parts[0], parts[1], parts.get(2).copied()))
    }

    /// The variant, with the defaults an unset variant means (`arm64` → `v8`, `arm` → `v7`).
    fn effective_variant(&self) -> Option<&str> {
        match (self.variant.as_deref(), self.architecture.as_str()) {
            (Some(variant), _) => Some(variant),
            (None, "arm64") => Some("v8"),
            (None, "arm") => Some("v7"),
            (None, _) => None,
        }
    }

    /// Whether an image for `self` satisfies a request for `wanted`: same OS and architecture,
    /// and the same variant when the request names one (unset variants take their defaults).
    pub fn satisfies(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_none() || self.effective_variant() == wanted.effective_variant())
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// An image manifest (OCI or Docker v2 schema 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The image configuration.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The artifact type, for artifacts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
    /// The manifest this one refers to (referrers API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Index {
    /// An empty OCI index.
    pub fn empty() -> Self {
        Self {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_owned()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: BTreeMap::new(),
            extra: Map::new(),
        }
    }
}

/// A parsed manifest document of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ManifestDocument {
    /// A single image.
    Image(Box<Manifest>),
    /// An index of images.
    Index(Box<Index>),
}

/// Why bytes are not a manifest the store accepts.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON, or not of a manifest's shape.
    #[error("not a valid manifest")]
    Invalid(#[from] serde_json::Error),
    /// A Docker schema 1 or other unsupported document.
    #[error("unsupported manifest: {0}")]
    Unsupported(String),
}

impl ManifestDocument {
    /// Parses a manifest or index. The media type comes from `declared` (a descriptor or HTTP
    /// header) or the document's own `mediaType`, or else from its shape.
    pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<(String, Self), ManifestError> {
        let value: Value = serde_json::from_slice(bytes)?;
        let own = value
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if value.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            return Err(ManifestError::Unsupported(
                "schemaVersion must be 2 (Docker schema 1 is not supported)".to_owned(),
            ));
        }
        let media_type = match (declared, own) {
            (Some(declared), _) if !declared.is_empty() => declared.to_owned(),
            (_, Some(own)) => own,
            _ if value.get("manifests").is_some() => media_type::OCI_INDEX.to_owned(),
            _ => media_type::OCI_MANIFEST.to_owned(),
        };
        if media_type::is_index(&media_type) {
            Ok((
                media_type,
                Self::Index(Box::new(serde_json::from_value(value)?)),
            ))
        } else if media_type::is_manifest(&media_type) || value.get("config").is_some() {
            Ok((
                media_type,
                Self::Image(Box::new(serde_json::from_value(value)?)),
            ))
        } else {
            Err(ManifestError::Unsupported(format!(
                "media type {media_type}"
            )))
        }
    }

    /// The descriptors this document points to: config and layers, or index entries.
    pub fn children(&self) -> Vec<&Descriptor> {
        match self {
            Self::Image(manifest) => std::iter::once(&manifest.config)
                .chain(manifest.layers.iter())
                .collect(),
            Self::Index(index) => index.manifests.iter().collect(),
        }
    }
}

/// `seconds` since the epoch as an RFC 3339 UTC timestamp (`1970-01-01T00:00:00Z`), as image
/// configs' `created` fields carry it.
pub fn rfc3339_utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching_knows_default_variants() {
        let arm64 = Platform::new("linux", "arm64", None);
        assert!(arm64.satisfies(&Platform::parse("linux/arm64/v8").unwrap()));
        assert!(arm64.satisfies(&Platform::parse("linux/arm64").unwrap()));
        assert!(!arm64.satisfies(&Platform::parse("linux/amd64").unwrap()));
        let armv6 = Platform::new("linux", "arm", Some("v6"));
        assert!(!armv6.satisfies(&Platform::parse("linux/arm/v7").unwrap()));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/amd64/v2/x").is_err());
    }

    #[test]
    fn manifests_parse_and_keep_unknown_fields() {
        let digest = crate::Digest::sha256(b"c");
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{digest}","size":1}},"layers":[],"x-extra":{{"a":1}}}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG
        );
        let (kind, document) = ManifestDocument::parse(json.as_bytes(), None).unwrap();
        assert_eq!(kind, media_type::DOCKER_MANIFEST);
        let ManifestDocument::Image(manifest) = document else {
            panic!("not an image")
        };
        assert!(manifest.extra.contains_key("x-extra"));
        assert!(ManifestDocument::parse(br#"{"schemaVersion":1}"#, None).is_err());
        assert!(ManifestDocument::parse(b"not json", None).is_err());
    }
}
