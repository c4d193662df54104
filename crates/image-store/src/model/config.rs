//! The image configuration (OCI image config and Docker container image config v1): what
//! runs, with which environment, and the layers' uncompressed digests.
//!
//! Labels, exposed ports and volumes are ordered maps, so a config written from this type has
//! the same bytes for the same content. Fields this version does not know are kept in `extra`;
//! collections are optional so that an empty one and an absent one stay as they came. An
//! explicit `null` reads as an absent field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

/// An image configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// When the image was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Who created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture in Go's naming.
    pub architecture: String,
    /// Operating system in Go's naming.
    pub os: String,
    /// OS version.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// Required OS features.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How a container of this image runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ExecConfig>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
    /// How each layer was made, base first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<History>>,
    /// Fields this version does not know, kept as they were.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a container runs (the `config` object, with Docker's capitalised keys).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExecConfig {
    /// User (name or uid, optionally `:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Ports to expose (`80/tcp`), each mapped to an empty object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// Environment, `NAME=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Volumes, each mapped to an empty object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// The signal that stops the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields this version does not know (Docker's `Hostname`, `OnBuild`, …).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The layers' uncompressed digests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// One digest per layer, base first.
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for RootFs {
    fn default() -> Self {
        Self {
            kind: "layers".to_owned(),
            diff_ids: Vec::new(),
            extra: Map::new(),
        }
    }
}

/// How one layer was made.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct History {
    /// When (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// By whom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The command that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// A comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Whether the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
    /// Fields this version does not know.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageConfig {
    /// Parses a config blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The config's bytes as the store writes them (compact JSON, fields in a fixed order).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_configs_parse_with_nulls_and_unknown_fields() {
        let diff_id = Digest::sha256(b"layer");
        let json = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Hostname":"","Env":["A=1"],"Cmd":null,"Volumes":null,"Labels":{{"b":"2","a":"1"}},"OnBuild":null}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"history":[{{"created_by":"x","empty_layer":true}}],"docker_version":"27"}}"#
        );
        let config = ImageConfig::parse(json.as_bytes()).unwrap();
        let exec = config.config.as_ref().unwrap();
        assert_eq!(exec.env.as_deref(), Some(&["A=1".to_owned()][..]));
        assert!(exec.cmd.is_none() && exec.volumes.is_none());
        assert!(exec.extra.contains_key("Hostname") && exec.extra.contains_key("OnBuild"));
        assert_eq!(config.rootfs.diff_ids, vec![diff_id]);
        assert_eq!(config.history.as_ref().unwrap()[0].empty_layer, Some(true));
        assert!(config.extra.contains_key("docker_version"));
        // Ordered labels: the same content gives the same bytes whatever order it came in.
        let text = String::from_utf8(config.to_bytes().unwrap()).unwrap();
        assert!(text.contains(r#""Labels":{"a":"1","b":"2"}"#), "{text}");
        assert_eq!(ImageConfig::parse(text.as_bytes()).unwrap(), config);
    }

    #[test]
    fn configs_in_field_order_keep_their_bytes_including_empty_collections() {
        let diff_id = Digest::sha256(b"layer");
        let text = format!(
            r#"{{"created":"1970-01-01T00:00:00Z","architecture":"arm64","os":"linux","variant":"v8","config":{{"Env":[],"Labels":{{}}}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"history":[]}}"#
        );
        let config = ImageConfig::parse(text.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(config.to_bytes().unwrap()).unwrap(), text);
    }
}
