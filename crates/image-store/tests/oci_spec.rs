//! Round trips between the store's model and the `oci-spec` crate's types, on the images the
//! store makes and on Docker-typed documents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use oci_spec::image as oci;
use sealer_fs_abstraction::MemFs;
use sealer_image_store::model::{ConversionError, ImageConfig, media_type};
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Descriptor, Index, Manifest, ManifestDocument, Platform, Store};
use serde_json::Value;

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Converts `ours` to `oci-spec` and back, checking that `oci-spec` serialises the same JSON as
/// the stored bytes and that the way back gives the value we started from.
fn round_trip_manifest(bytes: &[u8]) -> oci::ImageManifest {
    let (_, ManifestDocument::Image(ours)) = ManifestDocument::parse(bytes, None).unwrap() else {
        panic!("not an image manifest")
    };
    let theirs = oci::ImageManifest::try_from(ours.as_ref()).unwrap();
    assert_eq!(serde_json::to_value(&theirs).unwrap(), json(bytes));
    assert_eq!(Manifest::try_from(&theirs).unwrap(), *ours);
    theirs
}

fn round_trip_index(bytes: &[u8]) -> oci::ImageIndex {
    let (_, ManifestDocument::Index(ours)) = ManifestDocument::parse(bytes, None).unwrap() else {
        panic!("not an index")
    };
    let theirs = oci::ImageIndex::try_from(ours.as_ref()).unwrap();
    assert_eq!(serde_json::to_value(&theirs).unwrap(), json(bytes));
    assert_eq!(Index::try_from(theirs.clone()).unwrap(), *ours);
    theirs
}

fn round_trip_config(bytes: &[u8]) -> oci::ImageConfiguration {
    let ours = ImageConfig::parse(bytes).unwrap();
    let theirs = oci::ImageConfiguration::try_from(&ours).unwrap();
    assert_eq!(ImageConfig::try_from(&theirs).unwrap(), ours);
    theirs
}

#[test]
fn generated_multi_arch_images_round_trip_through_oci_spec() {
    let store = Store::open(Arc::new(MemFs::new())).unwrap();
    let mut spec = ImageSpec::new("demo:multi", &[100, 200], 7);
    spec.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", Some("v8")),
    ];
    let top = write_image(&store, &spec).unwrap();
    let theirs_top = oci::Descriptor::try_from(&top).unwrap();
    assert_eq!(Descriptor::try_from(theirs_top).unwrap(), top);

    let index = round_trip_index(&store.read_verified(&top.digest).unwrap());
    assert_eq!(index.manifests().len(), 2);
    for entry in index.manifests() {
        let platform = entry.platform().as_ref().unwrap();
        let ours = Platform::try_from(platform).unwrap();
        assert_eq!(oci::Platform::try_from(&ours).unwrap(), *platform);
        let digest = entry.digest().to_string().parse().unwrap();
        let manifest = round_trip_manifest(&store.read_verified(&digest).unwrap());
        assert_eq!(manifest.layers().len(), 2);
        let config_digest = manifest.config().digest().to_string().parse().unwrap();
        let config = round_trip_config(&store.read_verified(&config_digest).unwrap());
        assert_eq!(config.architecture().to_string(), ours.architecture);
        assert_eq!(config.rootfs().diff_ids().len(), 2);
    }
}

#[test]
fn docker_media_types_round_trip_through_oci_spec() {
    let store = Store::open(Arc::new(MemFs::new())).unwrap();
    let top = write_image(&store, &ImageSpec::new("demo:one", &[50], 3)).unwrap();
    let ManifestDocument::Image(mut manifest) = store.read_manifest(&top).unwrap() else {
        panic!("not an image")
    };
    manifest.media_type = Some(media_type::DOCKER_MANIFEST.to_owned());
    manifest.config.media_type = media_type::DOCKER_CONFIG.to_owned();
    for layer in &mut manifest.layers {
        layer.media_type = media_type::DOCKER_LAYER_GZIP.to_owned();
    }
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let theirs = round_trip_manifest(&bytes);
    assert_eq!(
        theirs.media_type().as_ref().unwrap().to_string(),
        media_type::DOCKER_MANIFEST
    );

    let mut entry = Descriptor::new(media_type::DOCKER_MANIFEST, top.digest.clone(), top.size);
    entry.platform = Some(Platform::new("linux", "amd64", None));
    let mut list = Index::empty();
    list.media_type = Some(media_type::DOCKER_MANIFEST_LIST.to_owned());
    list.manifests = vec![entry];
    round_trip_index(&serde_json::to_vec(&list).unwrap());

    // A config as `docker save` writes it: nulls and Docker-only keys.
    let diff_id = sealer_image_store::Digest::sha256(b"layer");
    let docker_config = format!(
        r#"{{"architecture":"amd64","created":"2024-01-01T00:00:00Z","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["sh"],"Labels":{{"a":"1"}},"ExposedPorts":{{"80/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}},"history":[{{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs /"}}]}}"#
    );
    let theirs = round_trip_config(docker_config.as_bytes());
    assert_eq!(
        theirs.config().as_ref().unwrap().exposed_ports().as_deref(),
        Some(&["80/tcp".to_owned()][..])
    );
}

#[test]
fn fields_oci_spec_cannot_hold_are_refused_by_name() {
    let store = Store::open(Arc::new(MemFs::new())).unwrap();
    let top = write_image(&store, &ImageSpec::new("demo:one", &[50], 3)).unwrap();
    let ManifestDocument::Image(mut manifest) = store.read_manifest(&top).unwrap() else {
        panic!("not an image")
    };
    manifest
        .config
        .extra
        .insert("x-vendor".to_owned(), Value::from("kept"));
    let error = oci::ImageManifest::try_from(manifest.as_ref()).unwrap_err();
    assert!(
        matches!(&error, ConversionError::Lossy { path, .. } if path == "/config/x-vendor"),
        "{error:?}"
    );

    // Docker keys oci-spec's config has no field for (Hostname) are refused too; ours keeps them.
    let config = ImageConfig::parse(
        br#"{"architecture":"amd64","os":"linux","config":{"Hostname":"h"},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    )
    .unwrap();
    let error = oci::ImageConfiguration::try_from(&config).unwrap_err();
    assert!(
        matches!(&error, ConversionError::Lossy { path, .. } if path == "/config/Hostname"),
        "{error:?}"
    );

    // The other way: a digest algorithm this store does not accept.
    let foreign: oci::Descriptor = serde_json::from_value(serde_json::json!({
        "mediaType": media_type::OCI_LAYER_GZIP,
        "digest": format!("sha384:{}", "a".repeat(96)),
        "size": 1,
    }))
    .unwrap();
    let error = Descriptor::try_from(&foreign).unwrap_err();
    assert!(
        matches!(
            error,
            ConversionError::Shape {
                what: "descriptor",
                ..
            }
        ),
        "{error:?}"
    );
}
