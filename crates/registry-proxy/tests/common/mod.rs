//! A registry server in-process on a loopback port, on its own runtime thread: what the
//! integration tests run against; and what they read of upstream images.
// Each test binary uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Barrier;

use sealer_image_store::model::media_type::OCI_MANIFEST;
use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{BlobStore, Digest, Store};
use sealer_registry_proxy::{ServeError, ServerConfig, serve};
use sealer_test_harness::{HttpResponse, Registry, SeededImage, http_request};
use serde_json::{Value, json};

/// A server started by [`InProcess::start`]; signalled to stop when dropped.
pub struct InProcess {
    /// Where it listens.
    pub address: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl InProcess {
    /// Binds `127.0.0.1:0` and serves `config` on a two-thread runtime.
    pub fn start(config: ServerConfig) -> Self {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), config)
    }

    /// Serves `config` on `listener` (bound first when the configuration must name its own
    /// port, as a replica's advertised URL does) on a two-thread runtime.
    pub fn start_on(listener: std::net::TcpListener, config: ServerConfig) -> Self {
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                serve(&config, listener, async move {
                    let _ = shutdown_rx.await;
                })
                .await
            })
        });
        Self {
            address,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// Signals shutdown and waits for `serve` to return (`Ok` when already stopped).
    pub fn stop(&mut self) -> Result<(), ServeError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(thread) => thread.join().unwrap(),
            None => Ok(()),
        }
    }

    /// `method path` with `headers` (no body), bounded by 60 s.
    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let url = format!("http://{}{path}", self.address);
        http_request(method, &url, headers, &[], REQUEST_TIMEOUT).unwrap()
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[])
    }

    /// `GET path` from `clients` clients released together ([`at_once`]): their answers.
    pub fn get_at_once(&self, path: &str, clients: usize) -> Vec<HttpResponse> {
        at_once(clients, |_| self.get(path))
    }

    /// The value of the series `series` (`name` or `name{labels}`) in `/metrics`, if there.
    pub fn metric(&self, series: &str) -> Option<i64> {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?;
            value.starts_with(' ').then(|| value.trim().parse().ok())?
        })
    }

    /// Waits (at most 30 s) until no fill runs for the upstream labelled `upstream`.
    pub fn wait_for_fills(&self, upstream: &str) {
        let series = format!("sealer_proxy_fills_in_flight{{upstream=\"{upstream}\"}}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.metric(&series) != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "fills still running: {:?}",
                self.metric(&series)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// How long one request of a test may take.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A server in-process over its own store directory (the local store only); the methods of
/// its [`InProcess`] are its own.
pub struct StoreProxy {
    /// The server.
    pub server: InProcess,
    root: PathBuf,
}

impl StoreProxy {
    /// Serves `yaml` (a configuration; `storage` is set) over the store directory `store`.
    pub fn start(store: &Path, yaml: &str) -> Self {
        let mut config = ServerConfig::parse(yaml, Path::new("proxy.yaml")).unwrap();
        config.storage = Some(store.to_path_buf().into());
        Self {
            server: InProcess::start(config),
            root: store.to_path_buf(),
        }
    }

    /// The store it serves, opened anew.
    pub fn store(&self) -> Store {
        Store::open_dir(&self.root).unwrap()
    }

    /// Whether the blob `digest` is in its store.
    pub fn blob_stored(&self, digest: &str) -> bool {
        let digest: Digest = digest.parse().unwrap();
        self.store().blobs().stat(&digest).unwrap().is_some()
    }
}

impl std::ops::Deref for StoreProxy {
    type Target = InProcess;

    fn deref(&self) -> &InProcess {
        &self.server
    }
}

/// Runs `call(0)` … `call(clients - 1)`, each on its own thread, all released together by a
/// barrier (a herd of simultaneous requests); returns their results in that order.
pub fn at_once<T: Send>(clients: usize, call: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(clients);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..clients)
            .map(|client| {
                let (barrier, call) = (&barrier, &call);
                scope.spawn(move || {
                    barrier.wait();
                    call(client)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect()
    })
}

/// The sha256 digest of `bytes`, as text.
pub fn digest_of(bytes: &[u8]) -> String {
    Digest::sha256(bytes).to_string()
}

/// The layers of an image manifest: (digest, size).
pub fn layers(manifest: &[u8]) -> Vec<(String, u64)> {
    let value: Value = serde_json::from_slice(manifest).unwrap();
    value["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| {
            (
                layer["digest"].as_str().unwrap().to_owned(),
                layer["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The biggest layer of `image` as its upstream serves it: (digest, bytes).
pub fn biggest_layer(upstream: &Registry, repo: &str, image: &SeededImage) -> (String, Vec<u8>) {
    let manifest = http_request(
        "GET",
        &format!(
            "{}/v2/{repo}/manifests/{}",
            upstream.url(),
            image.manifest_digest
        ),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let (digest, _) = layers(&manifest.body)
        .into_iter()
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let blob = http_request(
        "GET",
        &format!("{}/v2/{repo}/blobs/{digest}", upstream.url()),
        &[],
        &[],
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    assert_eq!(digest_of(&blob.body), digest);
    (digest, blob.body)
}

/// Writes into the store at `root` the cluster image `localhost/cluster:1`, whose one layer
/// carries an OCI layout (under `registry/`) with `spec`'s image; returns that image's digest.
// Test code: packs a layout from a scratch directory on the host.
#[allow(clippy::disallowed_methods)]
pub fn write_cluster_image(root: &Path, spec: &ImageSpec) -> Digest {
    let carried = tempfile::tempdir().unwrap();
    let carried_store = Store::open_dir(&carried.path().join("layout")).unwrap();
    let top = write_image(&carried_store, spec).unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    for entry in ["oci-layout", "index.json", "blobs"] {
        let path = carried.path().join("layout").join(entry);
        let inside = format!("registry/{entry}");
        if path.is_dir() {
            layer.append_dir_all(&inside, &path).unwrap();
        } else {
            layer.append_path_with_name(&path, &inside).unwrap();
        }
    }
    let layer = layer.into_inner().unwrap();
    let store = Store::open_dir(root).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for blob in [&layer[..], &config[..]] {
        store
            .blobs()
            .put(
                &Digest::sha256(blob),
                Some(blob.len() as u64),
                &mut &blob[..],
            )
            .unwrap();
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::sha256(config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": Digest::sha256(&layer).to_string(),
            "size": layer.len(),
            "annotations": {"io.sealer.image.layer.oci-layout": "registry"},
        }],
    }))
    .unwrap();
    let descriptor = store.put_manifest(&manifest, Some(OCI_MANIFEST)).unwrap();
    store
        .tag(&"localhost/cluster:1".parse().unwrap(), &descriptor)
        .unwrap();
    top.digest
}

/// Copies `docker://{source}` with skopeo (plain HTTP allowed, digests kept) into a new OCI
/// layout at `layout`; returns the digest of the manifest it wrote.
#[allow(clippy::disallowed_methods)]
pub fn skopeo_pull_digest(source: &str, layout: &Path) -> String {
    sealer_test_harness::run_ok(
        "skopeo",
        &[
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{source}"),
            &format!("oci:{}:x", layout.display()),
        ],
        std::time::Duration::from_secs(120),
    )
    .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().to_owned()
}
