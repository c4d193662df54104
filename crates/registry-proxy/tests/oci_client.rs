//! `oci-client`, a real Rust registry client, pushing to and pulling from the registry server
//! in-process: single- and multi-arch images, without and with htpasswd authentication.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
    OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use reqwest::header::HeaderValue;
use sealer_fs_abstraction::MemFs;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{ManifestDocument, Platform, Store};
use sealer_registry_proxy::config::AuthConfig;
use sealer_registry_proxy::{Mode, ServerConfig};

mod common;
use common::InProcess;

/// A read-write server over a new store; with `auth`, only `alice:s3cret` may push or pull.
struct Server {
    server: InProcess,
    auth: RegistryAuth,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            storage: Some(dir.path().join("store").into()),
            mode: Mode::ReadWrite,
            ..ServerConfig::default()
        };
        let mut registry_auth = RegistryAuth::Anonymous;
        if auth {
            let hash = bcrypt::hash("s3cret", 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
            config.auth = Some(AuthConfig {
                htpasswd: dir.path().join("htpasswd"),
                realm: "sealer-test".to_owned(),
                anonymous_pull: false,
            });
            registry_auth = RegistryAuth::Basic("alice".to_owned(), "s3cret".to_owned());
        }
        Self {
            server: InProcess::start(config),
            auth: registry_auth,
            _dir: dir,
        }
    }

    fn reference(&self, repository_and_tag: &str) -> Reference {
        format!("{}/{repository_and_tag}", self.server.address)
            .parse()
            .unwrap()
    }

    /// Stops the server; `serve` must return cleanly.
    fn stop(mut self) {
        self.server.stop().unwrap();
    }

    /// A fresh client (no cached credentials) speaking plain HTTP to this server.
    fn client(&self) -> Client {
        Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(vec![self.server.address.to_string()]),
            ..ClientConfig::default()
        })
    }
}

/// Runs `test` on a current-thread runtime, bounded in time.
fn run<F: Future<Output = ()>>(test: F) {
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(60), test)
                .await
                .expect("the test took over a minute")
        });
}

#[test]
fn oci_client_pushes_and_pulls_a_single_image_with_and_without_auth() {
    for auth in [false, true] {
        let server = Server::start(auth);
        let reference = server.reference("tools/app:v1");
        let layers = vec![
            ImageLayer::new(
                b"layer one".to_vec(),
                IMAGE_LAYER_GZIP_MEDIA_TYPE.to_owned(),
                None,
            ),
            ImageLayer::new(
                b"layer two".to_vec(),
                IMAGE_LAYER_GZIP_MEDIA_TYPE.to_owned(),
                None,
            ),
        ];
        let config = Config::new(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
                .to_vec(),
            IMAGE_CONFIG_MEDIA_TYPE.to_owned(),
            None,
        );
        run(async {
            if auth {
                let refused = server
                    .client()
                    .push(
                        &reference,
                        &layers,
                        config.clone(),
                        &RegistryAuth::Anonymous,
                        None,
                    )
                    .await;
                assert!(refused.is_err(), "an anonymous push was admitted");
            }
            let pushed = server
                .client()
                .push(&reference, &layers, config.clone(), &server.auth, None)
                .await
                .unwrap();
            assert!(pushed.manifest_url.contains("/v2/tools/app/manifests/"));

            let client = server.client();
            let image = client
                .pull(&reference, &server.auth, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE])
                .await
                .unwrap();
            // oci-client downloads layers concurrently and keeps them in arrival order.
            let mut pulled: Vec<&[u8]> = image.layers.iter().map(|l| l.data.as_ref()).collect();
            pulled.sort();
            assert_eq!(pulled, vec![&b"layer one"[..], &b"layer two"[..]]);
            assert_eq!(image.config.data, config.data);
            let digest = client
                .fetch_manifest_digest(&reference, &server.auth)
                .await
                .unwrap();
            assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
        });
        server.stop();
    }
}

#[test]
fn oci_client_copies_a_multi_arch_image_byte_for_byte_with_and_without_auth() {
    // The source: a two-platform image in a store of its own.
    let source = Store::open(Arc::new(MemFs::new())).unwrap();
    let mut spec = ImageSpec::new("src/multi:v1", &[3_000, 5_000], 11);
    spec.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", Some("v8")),
    ];
    let top = write_image(&source, &spec).unwrap();
    let index_bytes = source.read_verified(&top.digest).unwrap();
    let ManifestDocument::Index(index) = source.read_manifest(&top).unwrap() else {
        panic!("not an index")
    };
    let mut platform_manifests = Vec::new();
    for entry in &index.manifests {
        let ManifestDocument::Image(manifest) = source.read_manifest(entry).unwrap() else {
            panic!("not an image")
        };
        platform_manifests.push((entry.digest.clone(), *manifest));
    }

    for auth in [false, true] {
        let server = Server::start(auth);
        run(async {
            let client = server.client();
            let tagged = server.reference("apps/multi:v1");
            client
                .store_auth_if_needed(tagged.resolve_registry(), &server.auth)
                .await;
            // Blobs, then each platform's manifest by digest, then the index by tag.
            for (digest, manifest) in &platform_manifests {
                for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
                    let bytes = source.read_verified(&blob.digest).unwrap();
                    client
                        .push_blob(&tagged, bytes, &blob.digest.to_string())
                        .await
                        .unwrap();
                }
                let by_digest = server.reference(&format!("apps/multi@{digest}"));
                client
                    .push_manifest_raw(
                        &by_digest,
                        source.read_verified(digest).unwrap(),
                        HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
                    )
                    .await
                    .unwrap();
            }
            client
                .push_manifest_raw(
                    &tagged,
                    index_bytes.clone(),
                    HeaderValue::from_static(OCI_IMAGE_INDEX_MEDIA_TYPE),
                )
                .await
                .unwrap();

            // A fresh client reads the index back byte for byte, and pulls its platform.
            let client = server.client();
            let (raw, digest) = client
                .pull_manifest_raw(&tagged, &server.auth, &[OCI_IMAGE_INDEX_MEDIA_TYPE])
                .await
                .unwrap();
            assert_eq!(raw.as_ref(), index_bytes.as_slice());
            assert_eq!(digest, top.digest.to_string());
            let image = client
                .pull(&tagged, &server.auth, vec![IMAGE_LAYER_GZIP_MEDIA_TYPE])
                .await
                .unwrap();
            let host = Platform::host();
            let (_, expected) = platform_manifests
                .iter()
                .zip(&index.manifests)
                .find(|(_, entry)| entry.platform.as_ref().unwrap().satisfies(&host))
                .map(|((digest, manifest), _)| (digest, manifest))
                .expect("the host's platform is in the image");
            // oci-client downloads layers concurrently and keeps them in arrival order.
            let mut pulled: Vec<&[u8]> = image.layers.iter().map(|l| l.data.as_ref()).collect();
            let mut wanted: Vec<Vec<u8>> = expected
                .layers
                .iter()
                .map(|layer| source.read_verified(&layer.digest).unwrap())
                .collect();
            pulled.sort();
            wanted.sort();
            assert_eq!(pulled, wanted.iter().map(Vec::as_slice).collect::<Vec<_>>());
        });
        server.stop();
    }
}
