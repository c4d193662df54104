//! `sealer inspect`.

use std::io::Write;

use anyhow::{Context, Result};
use sealer_builder::engine::ImageExtension;
use sealer_image_store::{ManifestDocument, Store};
use serde_json::{Value, json};

use super::parse_platform;
use crate::cli::InspectArgs;

pub fn run(store: &Store, args: &InspectArgs) -> Result<()> {
    let entry = store.lookup(&args.image)?;
    let top_bytes = store
        .read_verified(&entry.descriptor.digest)
        .with_context(|| format!("reading {}", entry.descriptor.digest))?;
    if args.raw {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&top_bytes)?;
        stdout.flush()?;
        return Ok(());
    }
    let platform = parse_platform(args.platform.as_deref())?;
    let platforms = match store.read_manifest(&entry.descriptor)? {
        ManifestDocument::Index(index) => Some(
            index
                .manifests
                .iter()
                .map(|entry| {
                    json!({
                        "platform": entry.platform.as_ref().map(ToString::to_string),
                        "digest": entry.digest.to_string(),
                        "mediaType": entry.media_type,
                        "size": entry.size,
                    })
                })
                .collect::<Vec<_>>(),
        ),
        ManifestDocument::Image(_) => None,
    };
    let resolved = store.resolve(&args.image, platform.as_ref())?;
    let manifest: Value =
        serde_json::from_slice(&store.read_verified(&resolved.manifest_descriptor.digest)?)?;
    let config: Value =
        serde_json::from_slice(&store.read_verified(&resolved.manifest.config.digest)?)
            .with_context(|| format!("config {} is not JSON", resolved.manifest.config.digest))?;
    let mut out = json!({
        "name": entry.name,
        "digest": entry.descriptor.digest.to_string(),
        "mediaType": entry.descriptor.media_type,
    });
    if let Some(platforms) = platforms {
        out["platforms"] = Value::Array(platforms);
    }
    out["manifestDigest"] = json!(resolved.manifest_descriptor.digest.to_string());
    out["manifest"] = manifest;
    out["config"] = config;
    if let Some(extension) = ImageExtension::of_manifest(&resolved.manifest) {
        out["sealer"] = serde_json::to_value(extension.map_err(anyhow::Error::msg)?)?;
    }
    say!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
