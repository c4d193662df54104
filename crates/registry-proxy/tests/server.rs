//! The registry server in-process on a loopback port, driven by real skopeo and umoci and by
//! raw HTTP: every endpoint, error code, auth mode, TLS and shutdown.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{
    Algorithm, BlobStore, Digest, GcOptions, ManifestDocument, Platform, Store,
};
use sealer_registry_proxy::config::{AuthConfig, TlsConfig};
use sealer_registry_proxy::{Mode, ServeError, ServerConfig, Storage};
use sealer_test_harness::{
    HttpResponse, http_request, require_tools, run_bounded, run_ok, self_signed_certificate,
};
use serde_json::{Value, json};

#[path = "common/backends.rs"]
mod backends;
mod common;
#[path = "common/errors.rs"]
mod errors;
use backends::{bucket_keys, on_bucket, over_s3, s3_storage};
use common::InProcess;
use errors::{assert_error, error_code, error_message};

const TIMEOUT: Duration = Duration::from_secs(30);
const SKOPEO: Duration = Duration::from_secs(120);
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Nothing of an upload is left: the local store's `uploads/` or the bucket's is empty.
fn assert_no_uploads_left(server: &TestServer) {
    match s3_storage() {
        Some(s3) => {
            let keys = bucket_keys(&s3, "uploads/");
            assert!(!keys.contains("<Key>"), "uploads left behind: {keys}");
        }
        None => assert!(
            std::fs::read_dir(server.store.join("uploads"))
                .unwrap()
                .next()
                .is_none(),
            "no upload left behind"
        ),
    }
}

/// A server on its own runtime thread, over a temporary store (or the test's bucket).
struct TestServer {
    address: SocketAddr,
    /// The local store's directory (unused over a bucket).
    store: PathBuf,
    storage: Storage,
    server: InProcess,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A read-write server over a new store.
    fn start() -> Self {
        Self::with(|_| {})
    }

    /// A server over a new store (or the test's bucket), its config changed by `adjust`.
    fn with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = match s3_storage() {
            Some(s3) => Storage::S3(s3.config),
            None => dir.path().join("store").into(),
        };
        let mut config = ServerConfig {
            storage: Some(storage),
            mode: Mode::ReadWrite,
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let mut server = Self::run(config);
        server._dir = Some(dir);
        server
    }

    fn run(config: ServerConfig) -> Self {
        let storage = config.storage.clone().unwrap();
        let store = storage.path().map(Path::to_path_buf).unwrap_or_default();
        let server = InProcess::start(config);
        Self {
            address: server.address,
            store,
            storage,
            server,
            _dir: None,
        }
    }

    fn host(&self) -> String {
        self.address.to_string()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        http_request(method, &self.url(path), headers, body, TIMEOUT).unwrap()
    }

    fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, &[], &[])
    }

    /// Signals shutdown and waits for `serve` to return.
    fn stop(&mut self) -> Result<(), ServeError> {
        self.server.stop()
    }
}

/// Reads a paginated list from `first` by its `Link: <next>; rel="next"` headers (at most
/// `pages` pages of at most `per_page` items of the array `key`): every item, and every
/// next URL followed.
fn follow_pages(
    server: &TestServer,
    first: &str,
    key: &str,
    per_page: usize,
    pages: usize,
) -> (Vec<String>, Vec<String>) {
    let mut page = server.get(first);
    let (mut items, mut nexts) = (Vec::new(), Vec::new());
    for _ in 0..pages {
        assert_eq!(page.status, 200);
        let body: Value = serde_json::from_slice(&page.body).unwrap();
        let listed: Vec<String> = serde_json::from_value(body[key].clone()).unwrap();
        assert!(listed.len() <= per_page);
        items.extend(listed);
        let Some(link) = page.header("link") else {
            break;
        };
        assert!(link.ends_with("; rel=\"next\""), "{link}");
        let next = link
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_owned();
        page = server.get(&next);
        nexts.push(next);
    }
    (items, nexts)
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

on_both_backends!(
    skopeo_pushes_and_pulls_single_and_multi_arch_images_with_equal_digests,
    skopeo_pushes_with_htpasswd_credentials_and_over_tls,
    base_endpoint_and_spec_errors,
    monolithic_uploads_and_ranged_blob_reads,
    chunked_uploads_in_order_out_of_order_status_and_cancel,
    cross_repository_mount,
    manifests_put_get_head_delete_and_validation,
    tag_lists_paginate_with_link_headers,
    referrers_are_listed_filtered_and_kept_across_restarts,
    host_spellings_of_an_upstream_are_write_protected_or_refused,
    htpasswd_auth_challenges_refuses_and_admits,
    blob_deletes_are_refused_by_default,
    blob_deletes_never_break_another_repositorys_image,
    manifest_deletes_only_touch_the_repository_that_holds_the_manifest,
    manifest_media_types_are_checked_and_served_safely,
    manifests_whose_blobs_are_absent_are_refused_and_not_named,
    tags_named_on_push_by_digest_answer_oci_tag_headers,
    the_catalog_lists_repositories_in_pages_with_link_headers,
    sparse_manifests_are_refused_by_default_and_accepted_when_configured,
);

/// A server started fresh over the bucket another one filled serves all of it at once: it
/// needs no local state (skopeo pushes to the first, pulls identical digests from the
/// second; tags and referrers too).
fn a_fresh_server_serves_what_another_pushed_to_the_bucket() {
    require_tools!("skopeo");
    let mut first = TestServer::start();
    let (layout, top) = layout_with("localhost/src:v1", two_platforms(), &[3 << 20, 20_000]);
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:localhost/src:v1", path_str(layout.path())),
        &format!("docker://{}/team/app:v1", first.host()),
    ]);
    let (_, subject) = push_image(&first, "team/app", "plain", "subject");
    let artifact = manifest(
        (
            &push_blob(&first, "team/app", b"{}"),
            2,
            "application/vnd.example+json",
        ),
        &[],
        json!({"subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": 1}}),
    );
    assert_eq!(
        put_manifest(
            &first,
            "team/app",
            &Digest::sha256(&artifact).to_string(),
            &artifact,
            OCI_MANIFEST
        )
        .status,
        201
    );
    first.stop().unwrap();
    drop(first);

    let second = TestServer::start();
    // Ready once the bucket answers.
    let ready = second.get("/readyz");
    assert_eq!(ready.status, 200, "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.body).contains("\"bucket\":\"ok\""));
    let back = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        &format!("docker://{}/team/app:v1", second.host()),
        &format!("oci:{}:back", path_str(back.path())),
    ]);
    let pulled = skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:back", path_str(back.path())),
    ]);
    assert_eq!(
        Digest::sha256(&pulled),
        top,
        "pulled back from the fresh server"
    );
    let tags: Value = serde_json::from_slice(&second.get("/v2/team/app/tags/list").body).unwrap();
    assert_eq!(tags["tags"], json!(["plain", "v1"]));
    let referrers: Value = serde_json::from_slice(
        &second
            .get(&format!("/v2/team/app/referrers/{subject}"))
            .body,
    )
    .unwrap();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        json!(Digest::sha256(&artifact).to_string()),
        "{referrers}"
    );
}

#[test]
fn a_fresh_server_serves_what_another_pushed_to_the_bucket_s3() {
    over_s3(a_fresh_server_serves_what_another_pushed_to_the_bucket);
}

/// A chunked upload whose PATCHes alternate between two servers over one bucket (as behind
/// a load balancer) completes, and its blob verifies on both: the upload's state lives in the
/// bucket, not in either server.
fn chunked_uploads_alternating_between_servers_verify() {
    let a = TestServer::start();
    let b = TestServer::start();
    // Pieces over S3's 5 MiB part minimum and under it: parts and the tail object.
    let data: Vec<u8> = (0..(13 << 20) + 777u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let digest = Digest::sha256(&data);
    let start = a.request("POST", "/v2/team/app/blobs/uploads/", &[], &[]);
    assert_eq!(start.status, 202, "{start:?}");
    let mut location = start.header("location").unwrap().to_owned();
    // The session belongs to its repository: named under another, neither server knows it.
    let elsewhere = location.replace("/team/app/", "/team/other/");
    assert_ne!(elsewhere, location);
    for server in [&b, &a] {
        let status = server.get(&elsewhere);
        assert_eq!(status.status, 404, "{status:?}");
        assert!(
            String::from_utf8_lossy(&status.body).contains("BLOB_UPLOAD_UNKNOWN"),
            "{status:?}"
        );
    }
    let cuts = [0, 6 << 20, (6 << 20) + 1000, 12 << 20, data.len()];
    for (at, piece) in cuts.windows(2).enumerate() {
        let server = if at % 2 == 0 { &a } else { &b };
        let range = format!("{}-{}", piece[0], piece[1] - 1);
        let response = server.request(
            "PATCH",
            &location,
            &[("content-range", &range)],
            &data[piece[0]..piece[1]],
        );
        assert_eq!(
            response.status,
            202,
            "piece {at} on {}: {response:?}",
            server.host()
        );
        assert_eq!(
            response.header("range"),
            Some(format!("0-{}", piece[1] - 1).as_str())
        );
        location = response.header("location").unwrap().to_owned();
        // The other server sees the same offset.
        let other = if at % 2 == 0 { &b } else { &a };
        let status = other.get(&location);
        assert_eq!(status.status, 204, "{status:?}");
        assert_eq!(
            status.header("range"),
            Some(format!("0-{}", piece[1] - 1).as_str())
        );
    }
    let separator = if location.contains('?') { '&' } else { '?' };
    let finish = b.request(
        "PUT",
        &format!("{location}{separator}digest={digest}"),
        &[],
        &[],
    );
    assert_eq!(finish.status, 201, "{finish:?}");
    for server in [&a, &b] {
        let blob = server.get(&format!("/v2/team/app/blobs/{digest}"));
        assert_eq!(blob.status, 200);
        assert!(blob.body == data, "the blob's bytes from {}", server.host());
    }
    assert_no_uploads_left(&a);
}

#[test]
fn chunked_uploads_alternating_between_servers_verify_s3() {
    over_s3(chunked_uploads_alternating_between_servers_verify);
}

/// A local store (the CLI's) holding the cluster image `localhost/cluster:1`, whose one layer
/// carries an OCI layout (under `registry/`) with the image `localhost/carried/app:1`;
/// returns the store and that image's digest.
fn store_with_a_cluster_image() -> (tempfile::TempDir, Digest) {
    let dir = tempfile::tempdir().unwrap();
    let top = common::write_cluster_image(
        dir.path(),
        &ImageSpec::new("localhost/carried/app:1", &[30_000, 2_000], 11),
    );
    (dir, top)
}

/// `registry serve --image` over a bucket: the images the cluster image carries are imported
/// from the CLI's store into the bucket and served; a second server importing them again
/// (a restart, another replica) finds them there and serves the same.
fn carried_images_are_imported_into_the_bucket() {
    let (cli_store, top) = store_with_a_cluster_image();
    let carry = |config: &mut ServerConfig| {
        config.images = vec!["localhost/cluster:1".to_owned()];
        config.image_store = Some(cli_store.path().to_path_buf());
    };
    let first = TestServer::with(carry);
    let second = TestServer::with(carry);
    for server in [&first, &second] {
        let manifest = server.get("/v2/carried/app/manifests/1");
        assert_eq!(manifest.status, 200, "{manifest:?}");
        assert_eq!(Digest::sha256(&manifest.body), top);
        let document: Value = serde_json::from_slice(&manifest.body).unwrap();
        for layer in document["layers"].as_array().unwrap() {
            let digest = layer["digest"].as_str().unwrap();
            let blob = server.get(&format!("/v2/carried/app/blobs/{digest}"));
            assert_eq!(blob.status, 200);
            assert_eq!(Digest::sha256(&blob.body).to_string(), digest);
        }
    }
}

#[test]
fn carried_images_are_imported_into_the_bucket_s3() {
    over_s3(carried_images_are_imported_into_the_bucket);
}

/// An upload left idle past `uploads.idle_timeout` is removed from the bucket (every
/// server purges sessions whose state has not changed for that long), and its id is
/// unknown afterwards on every server.
fn idle_uploads_are_purged_from_the_bucket() {
    // Object times have a resolution of one second: a shorter timeout could purge an upload
    // in use.
    let short = |config: &mut ServerConfig| {
        config.uploads.idle_timeout =
            sealer_registry_proxy::config::ConfigDuration(Duration::from_secs(2));
    };
    let a = TestServer::with(short);
    let b = TestServer::with(short);
    let start = a.request("POST", "/v2/team/app/blobs/uploads/", &[], &[]);
    let location = start.header("location").unwrap().to_owned();
    assert_eq!(a.request("PATCH", &location, &[], b"abandoned").status, 202);
    assert_eq!(b.get(&location).status, 204, "the other server finds it");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s3 = s3_storage().unwrap();
        if !bucket_keys(&s3, "uploads/").contains("<Key>") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle upload was never purged"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for server in [&a, &b] {
        assert_error(&server.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");
    }
}

#[test]
fn idle_uploads_are_purged_from_the_bucket_s3() {
    over_s3(idle_uploads_are_purged_from_the_bucket);
}

/// Sends a request head (no body) and reads what the server answers before the body.
fn early_answer(server: &TestServer, head: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}]}") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Uploads `data` monolithically into `repo`; returns its digest.
fn push_blob(server: &TestServer, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::sha256(data);
    let response = server.request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        data,
    );
    assert_eq!(response.status, 201, "{response:?}");
    digest
}

/// An OCI image manifest over `config` and `layers` (pushed already), plus `extra` fields.
fn manifest(config: (&Digest, usize, &str), layers: &[(&Digest, usize)], extra: Value) -> Vec<u8> {
    let mut value = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config.2, "digest": config.0.to_string(), "size": config.1},
        "layers": layers.iter().map(|(digest, size)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(),
            "size": size,
        })).collect::<Vec<_>>(),
    });
    if let Value::Object(extra) = extra {
        value.as_object_mut().unwrap().extend(extra);
    }
    serde_json::to_vec(&value).unwrap()
}

/// Pushes a small image (config + one layer) to `repo:reference`; returns the manifest
/// bytes and digest.
fn push_image(server: &TestServer, repo: &str, reference: &str, seed: &str) -> (Vec<u8>, Digest) {
    let config = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"seed\":\"{seed}\"}}");
    let layer = format!("layer of {seed}");
    let config_digest = push_blob(server, repo, config.as_bytes());
    let layer_digest = push_blob(server, repo, layer.as_bytes());
    let bytes = manifest(
        (
            &config_digest,
            config.len(),
            "application/vnd.oci.image.config.v1+json",
        ),
        &[(&layer_digest, layer.len())],
        json!({}),
    );
    let response = put_manifest(server, repo, reference, &bytes, OCI_MANIFEST);
    assert_eq!(response.status, 201, "{response:?}");
    (bytes.clone(), Digest::sha256(&bytes))
}

fn put_manifest(
    server: &TestServer,
    repo: &str,
    reference: &str,
    bytes: &[u8],
    media_type: &str,
) -> HttpResponse {
    server.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        bytes,
    )
}

fn two_platforms() -> Vec<Platform> {
    vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ]
}

/// A temporary OCI layout holding one synthetic image named `name`.
fn layout_with(
    name: &str,
    platforms: Vec<Platform>,
    layers: &[u64],
) -> (tempfile::TempDir, Digest) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).unwrap();
    let mut spec = ImageSpec::new(name, layers, 7);
    spec.platforms = platforms;
    let top = write_image(&store, &spec).unwrap();
    (dir, top.digest)
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    run_ok("skopeo", args, SKOPEO).unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

// ---- skopeo and umoci ----

fn skopeo_pushes_and_pulls_single_and_multi_arch_images_with_equal_digests() {
    require_tools!("skopeo", "umoci");
    let server = TestServer::start();
    let host = server.host();
    // Layers over 1 MiB make skopeo stream them in PATCH requests.
    let cases = [
        ("team/app:multi", two_platforms(), vec![3 << 20, 20_000]),
        (
            "team/single:v1",
            vec![Platform::new("linux", "amd64", None)],
            vec![10_000],
        ),
        (
            "quay.io/coreos/etcd:v3",
            vec![Platform::new("linux", "arm64", None)],
            vec![5_000],
        ),
    ];
    for (target, platforms, layers) in cases {
        let (layout, top) = layout_with("localhost/src:v1", platforms, &layers);
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:localhost/src:v1", path_str(layout.path())),
            &format!("docker://{host}/{target}"),
        ]);
        let raw = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/{target}"),
        ]);
        assert_eq!(Digest::sha256(&raw), top, "{target}");

        let back = tempfile::tempdir().unwrap();
        skopeo(&[
            "copy",
            "--all",
            "--preserve-digests",
            "--src-tls-verify=false",
            &format!("docker://{host}/{target}"),
            &format!("oci:{}:back", path_str(back.path())),
        ]);
        let pulled = skopeo(&[
            "inspect",
            "--raw",
            &format!("oci:{}:back", path_str(back.path())),
        ]);
        assert_eq!(Digest::sha256(&pulled), top, "{target} pulled back");
    }
    if on_bucket() {
        return;
    }
    // The store is an OCI layout others read in place, under full names.
    let store = path_str(&server.store);
    for name in [
        "localhost/team/app:multi",
        "localhost/team/single:v1",
        "quay.io/coreos/etcd:v3",
    ] {
        skopeo(&["inspect", "--raw", &format!("oci:{store}:{name}")]);
    }
    let listed =
        String::from_utf8(run_ok("umoci", &["ls", "--layout", store], SKOPEO).unwrap()).unwrap();
    assert!(listed.contains("localhost/team/single:v1"), "{listed}");
    // Manifests a pushed index reaches got no entries of their own.
    let index: Value =
        serde_json::from_slice(&std::fs::read(server.store.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
    let report = Store::open_dir(&server.store).unwrap().fsck().unwrap();
    assert!(report.is_clean() && report.unreferenced == 0, "{report:?}");

    // The tag list through the prefix namespace.
    let tags = server.get("/v2/quay.io/coreos/etcd/tags/list");
    assert_eq!(tags.status, 200);
    let tags: Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(tags["tags"], json!(["v3"]));
}

fn skopeo_pushes_with_htpasswd_credentials_and_over_tls() {
    require_tools!("skopeo", "openssl");
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let (cert, key) = self_signed_certificate(dir.path()).unwrap();
    let server = TestServer::with(|config| {
        config.auth = Some(AuthConfig {
            htpasswd: dir.path().join("htpasswd"),
            realm: "test".to_owned(),
            anonymous_pull: false,
        });
        config.tls = Some(TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
    });
    let host = server.host();
    let (layout, top) = layout_with("localhost/src:v1", two_platforms(), &[4_000]);
    // skopeo tries HTTPS first (unverified with --dest-tls-verify=false): plain HTTP would
    // fail against this server, so success means TLS works.
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:s3cret",
        &format!("oci:{}:localhost/src:v1", path_str(layout.path())),
        &format!("docker://{host}/secure/app:v1"),
    ]);
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret",
        &format!("docker://{host}/secure/app:v1"),
    ]);
    assert_eq!(Digest::sha256(&raw), top);
    let denied = run_bounded(
        Command::new("skopeo").args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            "alice:wrong",
            &format!("docker://{host}/secure/app:v1"),
        ]),
        SKOPEO,
    )
    .unwrap();
    assert!(!denied.status.success());
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert!(
        http_request("GET", &server.url("/v2/"), &[], &[], Duration::from_secs(5))
            .map(|response| response.status != 200)
            .unwrap_or(true)
    );
}

// ---- raw HTTP ----

fn base_endpoint_and_spec_errors() {
    let server = TestServer::start();
    let base = server.get("/v2/");
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    let unknown_blob = format!("/v2/a/b/blobs/{}", Digest::sha256(b"nothing"));
    let response = server.get(&unknown_blob);
    assert_error(&response, 404, "BLOB_UNKNOWN");
    assert!(error_message(&response).contains("not in"));
    assert_eq!(server.request("HEAD", &unknown_blob, &[], &[]).status, 404);
    assert_error(&server.get("/v2/a/blobs/sha256:xyz"), 400, "DIGEST_INVALID");
    assert_error(&server.get("/v2/a/blobs/md5:abcd"), 400, "DIGEST_INVALID");
    assert_error(
        &server.get("/v2/a/manifests/sha256:12"),
        400,
        "DIGEST_INVALID",
    );
    assert_error(&server.get("/v2/UPPER/manifests/v1"), 400, "NAME_INVALID");
    assert_error(
        &server.get("/v2/a/manifests/v1?ns=not%20a%20host"),
        400,
        "NAME_INVALID",
    );
    assert_error(&server.get("/v2/a/manifests/v1"), 404, "MANIFEST_UNKNOWN");
    // What the conformance suite asks for as a nonexistent manifest.
    assert_error(
        &server.get("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_eq!(
        server
            .request("HEAD", "/v2/a/manifests/.INVALID_MANIFEST_NAME", &[], &[])
            .status,
        404
    );
    assert_error(
        &server.request("PUT", "/v2/a/manifests/.bad", &[], b"{}"),
        400,
        "MANIFEST_INVALID",
    );
    assert_error(&server.get("/v2/nothing/tags/list"), 404, "NAME_UNKNOWN");
    assert_error(
        &server.get("/v2/a/tags/list?n=many"),
        400,
        "PAGINATION_NUMBER_INVALID",
    );
    assert_error(
        &server.get("/v2/a/blobs/uploads/00000000-0000-4000-8000-000000000000"),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(&server.get("/v2/a/whatever"), 404, "NAME_UNKNOWN");
    assert_eq!(server.get("/other").status, 404);
    assert_error(
        &server.request("POST", "/v2/a/manifests/v1", &[], b"x"),
        405,
        "UNSUPPORTED",
    );
    let sha512 = format!("sha512:{}", "0".repeat(128));
    assert_error(
        &server.get(&format!("/v2/a/blobs/{sha512}")),
        404,
        "BLOB_UNKNOWN",
    );
}

fn monolithic_uploads_and_ranged_blob_reads() {
    let server = TestServer::with(|config| config.delete_blobs = true);
    let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let digest = Digest::sha256(&data);
    let response = server.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
        &[],
        &data,
    );
    assert_eq!(response.status, 201);
    assert_eq!(
        response.header("location"),
        Some(format!("/v2/team/app/blobs/{digest}").as_str())
    );
    assert_eq!(
        response.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );

    let path = format!("/v2/team/app/blobs/{digest}");
    let head = server.request("HEAD", &path, &[], &[]);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("100000"));
    assert_eq!(
        head.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let full = server.get(&path);
    assert_eq!((full.status, full.body.len()), (200, data.len()));
    assert_eq!(full.body, data);
    // Blobs are global: another repository sees it.
    assert_eq!(server.get(&format!("/v2/other/blobs/{digest}")).status, 200);

    let part = server.request("GET", &path, &[("Range", "bytes=10-19")], &[]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &data[10..20]);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(part.header("content-length"), Some("10"));
    let tail = server.request("GET", &path, &[("Range", "bytes=-5")], &[]);
    assert_eq!((tail.status, tail.body.as_slice()), (206, &data[99_995..]));
    let open = server.request("GET", &path, &[("Range", "bytes=99990-")], &[]);
    assert_eq!((open.status, open.body.len()), (206, 10));
    let outside = server.request("GET", &path, &[("Range", "bytes=100000-100005")], &[]);
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), Some("bytes */100000"));
    let multi = server.request("GET", &path, &[("Range", "bytes=0-1,5-6")], &[]);
    assert_eq!((multi.status, multi.body.as_slice()), (206, &data[0..2]));

    // A body that does not hash to the digest is refused and not stored.
    let wrong = Digest::sha256(b"something else");
    let response = server.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={wrong}"),
        &[],
        b"actual bytes",
    );
    assert_error(&response, 400, "DIGEST_INVALID");
    assert_eq!(
        server.get(&format!("/v2/team/app/blobs/{wrong}")).status,
        404
    );
    assert_no_uploads_left(&server);

    // sha512 digests work.
    let sha512 = Digest::of(Algorithm::Sha512, b"sha512 content");
    let response = server.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={sha512}"),
        &[],
        b"sha512 content",
    );
    assert_eq!(response.status, 201);
    let back = server.get(&format!("/v2/team/app/blobs/{sha512}"));
    assert_eq!(back.body, b"sha512 content");

    // DELETE of a blob nothing uses: 202, then gone; again: 404.
    let delete = server.request("DELETE", &path, &[], &[]);
    assert_eq!(delete.status, 202);
    assert_error(&server.get(&path), 404, "BLOB_UNKNOWN");
    assert_error(
        &server.request("DELETE", &path, &[], &[]),
        404,
        "BLOB_UNKNOWN",
    );
}

fn chunked_uploads_in_order_out_of_order_status_and_cancel() {
    let server = TestServer::start();
    let start = server.request("POST", "/v2/team/app/blobs/uploads/", &[], &[]);
    assert_eq!(start.status, 202);
    assert_eq!(start.header("range"), Some("0-0"));
    let id = start.header("docker-upload-uuid").unwrap().to_owned();
    let location = start.header("location").unwrap().to_owned();
    assert_eq!(location, format!("/v2/team/app/blobs/uploads/{id}"));

    let chunk = |range: &str, body: &[u8]| {
        server.request(
            "PATCH",
            &location,
            &[
                ("Content-Range", range),
                ("Content-Type", "application/octet-stream"),
            ],
            body,
        )
    };
    let first = chunk("0-4", b"hello");
    assert_eq!(first.status, 202, "{first:?}");
    assert_eq!(first.header("range"), Some("0-4"));
    assert_eq!(first.header("location"), Some(location.as_str()));
    let status = server.get(&location);
    assert_eq!(status.status, 204);
    assert_eq!(status.header("range"), Some("0-4"));
    assert_eq!(status.header("docker-upload-uuid"), Some(id.as_str()));

    // Out of order: 416 with the current range, nothing written.
    let gap = chunk("10-14", b"later");
    assert_eq!(gap.status, 416);
    assert_eq!(gap.header("range"), Some("0-4"));
    assert_eq!(error_code(&gap), "BLOB_UPLOAD_INVALID");
    let overlap = chunk("2-6", b"xxxxx");
    assert_eq!(overlap.status, 416);
    let second = chunk("5-10", b" world");
    assert_eq!(second.status, 202);
    assert_eq!(second.header("range"), Some("0-10"));
    // A chunk without Content-Range is appended (streamed PATCH).
    let third = server.request("PATCH", &location, &[], b"!");
    assert_eq!((third.status, third.header("range")), (202, Some("0-11")));

    let digest = Digest::sha256(b"hello world!?");
    // An out-of-order final chunk: 416 with the current range, and the session stays.
    let finish_at = |range: &str| {
        server.request(
            "PUT",
            &format!("{location}?digest={digest}"),
            &[("Content-Range", range)],
            b"?",
        )
    };
    let early = finish_at("5-5");
    assert_error(&early, 416, "BLOB_UPLOAD_INVALID");
    assert_eq!(early.header("range"), Some("0-11"));
    assert_eq!(early.header("docker-upload-uuid"), Some(id.as_str()));
    assert_eq!(finish_at("13-13").status, 416);
    assert_eq!(server.get(&location).header("range"), Some("0-11"));
    let finish = finish_at("12-12");
    assert_eq!(finish.status, 201, "{finish:?}");
    assert_eq!(
        finish.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(
        server.get(&format!("/v2/team/app/blobs/{digest}")).body,
        b"hello world!?"
    );
    // The session is over.
    assert_error(&server.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");

    // Another repository cannot use a session.
    let start = server.request("POST", "/v2/team/app/blobs/uploads", &[], &[]);
    let location = start.header("location").unwrap().to_owned();
    let id = start.header("docker-upload-uuid").unwrap().to_owned();
    assert_error(
        &server.get(&format!("/v2/intruder/blobs/uploads/{id}")),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    // A wrong final digest: 400, nothing stored.
    assert_eq!(server.request("PATCH", &location, &[], b"abc").status, 202);
    let wrong = Digest::sha256(b"abd");
    assert_error(
        &server.request("PUT", &format!("{location}?digest={wrong}"), &[], &[]),
        400,
        "DIGEST_INVALID",
    );
    assert_eq!(
        server.get(&format!("/v2/team/app/blobs/{wrong}")).status,
        404
    );

    // Cancel.
    let start = server.request("POST", "/v2/team/app/blobs/uploads/", &[], &[]);
    let location = start.header("location").unwrap().to_owned();
    assert_eq!(server.request("PATCH", &location, &[], b"abc").status, 202);
    assert_eq!(server.request("DELETE", &location, &[], &[]).status, 204);
    assert_error(&server.get(&location), 404, "BLOB_UPLOAD_UNKNOWN");
    assert_no_uploads_left(&server);
}

fn cross_repository_mount() {
    let server = TestServer::start();
    let digest = push_blob(&server, "source/repo", b"shared layer");
    let mounted = server.request(
        "POST",
        &format!("/v2/target/repo/blobs/uploads/?mount={digest}&from=source/repo"),
        &[],
        &[],
    );
    assert_eq!(mounted.status, 201);
    assert_eq!(
        mounted.header("location"),
        Some(format!("/v2/target/repo/blobs/{digest}").as_str())
    );
    assert_eq!(
        mounted.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    let missing = Digest::sha256(b"absent");
    let fallback = server.request(
        "POST",
        &format!("/v2/target/repo/blobs/uploads/?mount={missing}&from=source/repo"),
        &[],
        &[],
    );
    assert_eq!(fallback.status, 202);
    assert!(fallback.header("docker-upload-uuid").is_some());
    assert_error(
        &server.request(
            "POST",
            "/v2/target/repo/blobs/uploads/?mount=sha256:bad",
            &[],
            &[],
        ),
        400,
        "DIGEST_INVALID",
    );
}

fn manifests_put_get_head_delete_and_validation() {
    let server = TestServer::start();
    let (bytes, digest) = push_image(&server, "team/app", "v1", "a");
    let get = server.get("/v2/team/app/manifests/v1");
    assert_eq!(get.status, 200);
    assert_eq!(get.body, bytes, "byte-exact");
    assert_eq!(get.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        get.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    assert_eq!(get.header("etag"), Some(format!("\"{digest}\"").as_str()));
    let head = server.request("HEAD", "/v2/team/app/manifests/v1", &[], &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    let by_digest = server.get(&format!("/v2/team/app/manifests/{digest}"));
    assert_eq!(
        (by_digest.status, by_digest.body.as_slice()),
        (200, bytes.as_slice())
    );
    // Accept that leaves out the stored type: served anyway.
    let picky = server.request(
        "GET",
        "/v2/team/app/manifests/v1",
        &[(
            "Accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        &[],
    );
    assert_eq!(picky.status, 200);

    // The PUT answer.
    let again = put_manifest(&server, "team/app", "v2", &bytes, OCI_MANIFEST);
    assert_eq!(again.status, 201);
    assert_eq!(
        again.header("location"),
        Some(format!("/v2/team/app/manifests/{digest}").as_str())
    );
    assert!(again.header("oci-subject").is_none());

    // A Docker manifest keeps its media type.
    let config = push_blob(&server, "team/docker", b"{\"os\":\"linux\"}");
    let docker = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config.to_string(), "size": 15},
        "layers": [],
    }))
    .unwrap();
    let docker_type = "application/vnd.docker.distribution.manifest.v2+json";
    assert_eq!(
        put_manifest(&server, "team/docker", "latest", &docker, docker_type).status,
        201
    );
    let docker_get = server.get("/v2/team/docker/manifests/latest");
    assert_eq!(docker_get.header("content-type"), Some(docker_type));

    // Validation.
    let missing = manifest(
        (
            &Digest::sha256(b"no config"),
            9,
            "application/vnd.oci.image.config.v1+json",
        ),
        &[],
        json!({}),
    );
    assert_error(
        &put_manifest(&server, "team/app", "bad", &missing, OCI_MANIFEST),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    assert_error(
        &put_manifest(&server, "team/app", "bad", b"{not json", OCI_MANIFEST),
        400,
        "MANIFEST_INVALID",
    );
    assert_error(
        &put_manifest(
            &server,
            "team/app",
            "bad",
            br#"{"schemaVersion":1}"#,
            OCI_MANIFEST,
        ),
        400,
        "MANIFEST_INVALID",
    );
    assert_error(
        &put_manifest(&server, "team/app", "bad", &bytes, OCI_INDEX),
        400,
        "MANIFEST_INVALID",
    );
    let other = Digest::sha256(b"other");
    assert_error(
        &put_manifest(
            &server,
            "team/app",
            &other.to_string(),
            &bytes,
            OCI_MANIFEST,
        ),
        400,
        "DIGEST_INVALID",
    );
    // Over 4 MiB: refused from its Content-Length, before the body is read.
    let too_large = early_answer(
        &server,
        &format!(
            "PUT /v2/team/app/manifests/huge HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
            (4 << 20) + 1
        ),
    );
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert!(too_large.contains("MANIFEST_INVALID"), "{too_large}");
    assert_eq!(server.get("/v2/team/app/manifests/bad").status, 404);

    // A sha512 reference.
    let sha512 = Digest::of(Algorithm::Sha512, &bytes);
    let response = put_manifest(
        &server,
        "team/app",
        &sha512.to_string(),
        &bytes,
        OCI_MANIFEST,
    );
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(
        response.header("docker-content-digest"),
        Some(sha512.to_string().as_str())
    );
    let back = server.get(&format!("/v2/team/app/manifests/{sha512}"));
    assert_eq!((back.status, back.body.as_slice()), (200, bytes.as_slice()));

    // DELETE by tag: the tag goes, the other tag stays.
    assert_eq!(
        server
            .request("DELETE", "/v2/team/app/manifests/v2", &[], &[])
            .status,
        202
    );
    assert_error(
        &server.get("/v2/team/app/manifests/v2"),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_eq!(server.get("/v2/team/app/manifests/v1").status, 200);
    assert_error(
        &server.request("DELETE", "/v2/team/app/manifests/v2", &[], &[]),
        404,
        "MANIFEST_UNKNOWN",
    );
    // DELETE by digest: every entry of the repository pointing to it.
    let path = format!("/v2/team/app/manifests/{digest}");
    assert_eq!(server.request("DELETE", &path, &[], &[]).status, 202);
    assert_error(
        &server.get("/v2/team/app/manifests/v1"),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_error(&server.get(&path), 404, "MANIFEST_UNKNOWN");
    assert_error(
        &server.request("DELETE", &path, &[], &[]),
        404,
        "MANIFEST_UNKNOWN",
    );
}

// Local store only: it runs the store's GC over the server's directory.
#[test]
fn manifests_pushed_by_digest_survive_gc_and_restarts() {
    let mut server = TestServer::start();
    let config = push_blob(&server, "team/app", b"{}");
    let bytes = manifest(
        (&config, 2, "application/vnd.oci.image.config.v1+json"),
        &[],
        json!({}),
    );
    let digest = Digest::sha256(&bytes);
    let response = put_manifest(
        &server,
        "team/app",
        &digest.to_string(),
        &bytes,
        OCI_MANIFEST,
    );
    assert_eq!(response.status, 201);
    let store_dir = server.store.clone();
    server.stop().unwrap();
    let store = Store::open_dir(&store_dir).unwrap();
    let report = store.gc().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    drop(store);
    let restarted = TestServer::run(ServerConfig {
        storage: Some(store_dir.into()),
        mode: Mode::ReadWrite,
        ..ServerConfig::default()
    });
    let back = restarted.get(&format!("/v2/team/app/manifests/{digest}"));
    assert_eq!((back.status, back.body.as_slice()), (200, bytes.as_slice()));
    // The repository exists (no tags).
    let tags = restarted.get("/v2/team/app/tags/list");
    assert_eq!(tags.status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&tags.body).unwrap()["tags"],
        json!([])
    );
    drop(restarted);
    drop(server);
}

fn tag_lists_paginate_with_link_headers() {
    let server = TestServer::start();
    let (bytes, _) = push_image(&server, "team/app", "b", "x");
    for tag in ["e", "a", "d", "c", "v1.10", "v1.9"] {
        assert_eq!(
            put_manifest(&server, "team/app", tag, &bytes, OCI_MANIFEST).status,
            201
        );
    }
    push_image(&server, "team/app-other", "zzz", "y");
    let all = server.get("/v2/team/app/tags/list");
    assert_eq!(all.status, 200);
    let body: Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(body["name"], "team/app");
    assert_eq!(
        body["tags"],
        json!(["a", "b", "c", "d", "e", "v1.10", "v1.9"])
    );
    assert!(all.header("link").is_none());

    let (seen, _) = follow_pages(&server, "/v2/team/app/tags/list?n=3", "tags", 3, 100);
    assert_eq!(seen, ["a", "b", "c", "d", "e", "v1.10", "v1.9"]);
    let after = server.get("/v2/team/app/tags/list?last=c&n=2");
    let body: Value = serde_json::from_slice(&after.body).unwrap();
    assert_eq!(body["tags"], json!(["d", "e"]));
    assert!(after.header("link").unwrap().contains("last=e"));
    let none = server.get("/v2/team/app/tags/list?n=0");
    assert_eq!(
        serde_json::from_slice::<Value>(&none.body).unwrap()["tags"],
        json!([])
    );
}

/// Every value of the header `name`, split at commas (RFC 9110 list syntax).
fn header_values(response: &HttpResponse, name: &str) -> Vec<String> {
    response
        .headers
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name))
        .flat_map(|(_, value)| value.split(','))
        .map(|value| value.trim().to_owned())
        .collect()
}

fn tags_named_on_push_by_digest_answer_oci_tag_headers() {
    let server = TestServer::start();
    let (bytes, digest) = push_image(&server, "team/app", "base", "tagged");
    let push = |reference: &str, query: &str| {
        server.request(
            "PUT",
            &format!("/v2/team/app/manifests/{reference}{query}"),
            &[("Content-Type", OCI_MANIFEST)],
            &bytes,
        )
    };
    let pushed = push(&digest.to_string(), "?tag=a&tag=b");
    assert_eq!(pushed.status, 201, "{pushed:?}");
    assert_eq!(header_values(&pushed, "oci-tag"), ["a", "b"]);
    assert_eq!(
        pushed.header("docker-content-digest"),
        Some(digest.to_string().as_str())
    );
    for tag in ["a", "b"] {
        let tagged = server.get(&format!("/v2/team/app/manifests/{tag}"));
        assert_eq!(
            (tagged.status, tagged.body.as_slice()),
            (200, bytes.as_slice())
        );
        assert_eq!(
            tagged.header("docker-content-digest"),
            Some(digest.to_string().as_str())
        );
    }

    // A sha512 push keeps its digest: in the answer, its Location and the tags it names.
    let sha512 = Digest::of(Algorithm::Sha512, &bytes);
    let pushed = push(&sha512.to_string(), "?tag=c");
    assert_eq!(pushed.status, 201, "{pushed:?}");
    assert_eq!(
        pushed.header("docker-content-digest"),
        Some(sha512.to_string().as_str())
    );
    assert_eq!(
        pushed.header("location"),
        Some(format!("/v2/team/app/manifests/{sha512}").as_str())
    );
    assert_eq!(header_values(&pushed, "oci-tag"), ["c"]);
    let tagged = server.get("/v2/team/app/manifests/c");
    assert_eq!(
        (tagged.status, tagged.body.as_slice()),
        (200, bytes.as_slice())
    );
    assert_eq!(
        tagged.header("docker-content-digest"),
        Some(sha512.to_string().as_str())
    );

    // An invalid tag refuses the whole push; a push by tag takes no `tag` parameters.
    assert_error(
        &push(&digest.to_string(), "?tag=d&tag=-bad"),
        400,
        "MANIFEST_INVALID",
    );
    let by_tag = push("e", "?tag=f");
    assert_eq!(by_tag.status, 201, "{by_tag:?}");
    assert!(by_tag.header("oci-tag").is_none(), "{by_tag:?}");
    let listed: Value = serde_json::from_slice(&server.get("/v2/team/app/tags/list").body).unwrap();
    assert_eq!(listed["tags"], json!(["a", "b", "base", "c", "e"]));
}

fn the_catalog_lists_repositories_in_pages_with_link_headers() {
    let server = TestServer::start();
    let empty = server.get("/v2/_catalog");
    assert_eq!(empty.status, 200, "{empty:?}");
    assert_eq!(
        serde_json::from_slice::<Value>(&empty.body).unwrap(),
        json!({ "repositories": [] })
    );
    for repo in ["team/app", "team/other", "alpha", "zeta/x/y"] {
        push_image(&server, repo, "v1", repo);
    }
    // A manifest pushed by digest alone makes its repository known too.
    let (bytes, _) = push_image(&server, "scratch", "tmp", "by digest");
    let digest = Digest::sha256(&bytes);
    let by_digest = put_manifest(
        &server,
        "bydigest",
        &digest.to_string(),
        &bytes,
        OCI_MANIFEST,
    );
    assert_eq!(by_digest.status, 201, "{by_digest:?}");
    let expected = [
        "alpha",
        "bydigest",
        "scratch",
        "team/app",
        "team/other",
        "zeta/x/y",
    ];

    let all = server.get("/v2/_catalog");
    assert_eq!(all.status, 200);
    assert!(
        all.header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    assert!(all.header("link").is_none());
    let body: Value = serde_json::from_slice(&all.body).unwrap();
    assert_eq!(body["repositories"], json!(expected));

    let (seen, nexts) = follow_pages(
        &server,
        "/v2/_catalog?n=4",
        "repositories",
        4,
        expected.len(),
    );
    for next in &nexts {
        assert!(next.starts_with("/v2/_catalog?n=4&last="), "{next}");
    }
    assert_eq!(seen, expected);
    let after = server.get("/v2/_catalog?last=team/app&n=1");
    let body: Value = serde_json::from_slice(&after.body).unwrap();
    assert_eq!(body["repositories"], json!(["team/other"]));
    assert!(after.header("link").unwrap().contains("last=team/other"));
    assert_error(
        &server.get("/v2/_catalog?n=many"),
        400,
        "PAGINATION_NUMBER_INVALID",
    );
    assert_eq!(
        error_code(&server.request("POST", "/v2/_catalog", &[], &[])),
        "UNSUPPORTED"
    );

    // A repository whose last manifest is deleted is no longer listed.
    let other = server.get("/v2/team/other/manifests/v1");
    let other = other.header("docker-content-digest").unwrap().to_owned();
    let deleted = server.request(
        "DELETE",
        &format!("/v2/team/other/manifests/{other}"),
        &[],
        &[],
    );
    assert_eq!(deleted.status, 202, "{deleted:?}");
    let body: Value = serde_json::from_slice(&server.get("/v2/_catalog").body).unwrap();
    assert!(
        !body["repositories"]
            .as_array()
            .unwrap()
            .contains(&json!("team/other")),
        "{body}"
    );
}

fn referrers_are_listed_filtered_and_kept_across_restarts() {
    let mut server = TestServer::start();
    let (_, subject) = push_image(&server, "team/app", "v1", "subject");
    let empty = push_blob(&server, "team/app", b"{}");
    let sbom_layer = push_blob(&server, "team/app", b"sbom content");
    let subject_descriptor =
        json!({"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": 1});
    let sbom = manifest(
        (&empty, 2, "application/vnd.oci.empty.v1+json"),
        &[(&sbom_layer, 12)],
        json!({
            "artifactType": "application/vnd.example.sbom",
            "subject": subject_descriptor,
            "annotations": {"org.example.kind": "sbom"},
        }),
    );
    let signature = manifest(
        (&empty, 2, "application/vnd.example.signature"),
        &[],
        json!({"subject": subject_descriptor}),
    );
    let mut digests = Vec::new();
    for artifact in [&sbom, &signature] {
        let digest = Digest::sha256(artifact);
        let response = put_manifest(
            &server,
            "team/app",
            &digest.to_string(),
            artifact,
            OCI_MANIFEST,
        );
        assert_eq!(response.status, 201);
        assert_eq!(
            response.header("oci-subject"),
            Some(subject.to_string().as_str())
        );
        digests.push(digest);
    }
    let check = |server: &TestServer| {
        let all = server.get(&format!("/v2/team/app/referrers/{subject}"));
        assert_eq!(all.status, 200);
        assert_eq!(all.header("content-type"), Some(OCI_INDEX));
        assert!(all.header("oci-filters-applied").is_none());
        let index: Value = serde_json::from_slice(&all.body).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], OCI_INDEX);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2, "{index}");
        let sbom_entry = manifests
            .iter()
            .find(|entry| entry["digest"] == digests[0].to_string())
            .unwrap();
        assert_eq!(sbom_entry["artifactType"], "application/vnd.example.sbom");
        assert_eq!(sbom_entry["annotations"]["org.example.kind"], "sbom");
        assert_eq!(sbom_entry["size"], sbom.len());
        assert_eq!(sbom_entry["mediaType"], OCI_MANIFEST);
        let signature_entry = manifests
            .iter()
            .find(|entry| entry["digest"] == digests[1].to_string())
            .unwrap();
        assert_eq!(
            signature_entry["artifactType"],
            "application/vnd.example.signature"
        );

        let filtered = server.get(&format!(
            "/v2/team/app/referrers/{subject}?artifactType=application/vnd.example.signature"
        ));
        assert_eq!(filtered.header("oci-filters-applied"), Some("artifactType"));
        let index: Value = serde_json::from_slice(&filtered.body).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["digest"], digests[1].to_string());
        // Another repository does not see them.
        let elsewhere = server.get(&format!("/v2/team/other/referrers/{subject}"));
        assert_eq!(elsewhere.status, 200);
        let index: Value = serde_json::from_slice(&elsewhere.body).unwrap();
        assert!(index["manifests"].as_array().unwrap().is_empty());
    };
    check(&server);
    let none = server.get(&format!(
        "/v2/team/app/referrers/{}",
        Digest::sha256(b"nobody")
    ));
    assert_eq!(none.status, 200);
    let index: Value = serde_json::from_slice(&none.body).unwrap();
    assert_eq!(index["manifests"], json!([]));
    assert_error(
        &server.get("/v2/team/app/referrers/sha256:zz"),
        400,
        "DIGEST_INVALID",
    );

    let storage = server.storage.clone();
    server.stop().unwrap();
    let restarted = TestServer::run(ServerConfig {
        storage: Some(storage),
        mode: Mode::ReadWrite,
        ..ServerConfig::default()
    });
    check(&restarted);
    // Deleting a referrer removes it from the list.
    let path = format!("/v2/team/app/manifests/{}", digests[1]);
    assert_eq!(restarted.request("DELETE", &path, &[], &[]).status, 202);
    let after = restarted.get(&format!("/v2/team/app/referrers/{subject}"));
    let index: Value = serde_json::from_slice(&after.body).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    drop(server);
}

// Local store only: it writes the served images into the store directly.
#[test]
fn namespaces_from_ns_and_path_prefix_map_to_full_store_names() {
    let server = TestServer::start();
    let store = Store::open_dir(&server.store).unwrap();
    let top = write_image(
        &store,
        &ImageSpec::new("docker.io/library/nginx:1.25", &[1000], 3),
    )
    .unwrap();
    let by_ns = server.get("/v2/library/nginx/manifests/1.25?ns=docker.io");
    assert_eq!(by_ns.status, 200);
    assert_eq!(by_ns.header("oci-namespace"), Some("docker.io"));
    assert_eq!(
        by_ns.header("docker-content-digest"),
        Some(top.digest.to_string().as_str())
    );
    // Docker Hub normalisation: `nginx` is `library/nginx`.
    assert_eq!(
        server.get("/v2/nginx/manifests/1.25?ns=docker.io").status,
        200
    );
    let by_prefix = server.get("/v2/docker.io/library/nginx/manifests/1.25");
    assert_eq!(by_prefix.status, 200);
    assert!(by_prefix.header("oci-namespace").is_none());
    // Without a namespace: the local namespace, where it is not.
    assert_error(
        &server.get("/v2/library/nginx/manifests/1.25"),
        404,
        "MANIFEST_UNKNOWN",
    );
    let tags = server.get("/v2/nginx/tags/list?ns=docker.io");
    assert_eq!(
        serde_json::from_slice::<Value>(&tags.body).unwrap()["tags"],
        json!(["1.25"])
    );
    // Pushing with a prefix stores under that registry.
    push_image(&server, "ghcr.io/org/tool", "v2", "t");
    assert!(store.lookup("ghcr.io/org/tool:v2").is_ok());
    // An upload session keeps `ns` in its Location.
    let start = server.request(
        "POST",
        "/v2/library/nginx/blobs/uploads/?ns=docker.io",
        &[],
        &[],
    );
    assert!(start.header("location").unwrap().ends_with("?ns=docker.io"));
}

// Local store only: a read-only server's content is written into its store directly.
#[test]
fn read_only_mode_denies_writes() {
    let server = TestServer::with(|config| config.mode = Mode::ReadOnly);
    let store = Store::open_dir(&server.store).unwrap();
    write_image(&store, &ImageSpec::new("localhost/team/app:v1", &[100], 1)).unwrap();
    assert_eq!(server.get("/v2/team/app/manifests/v1").status, 200);
    let digest = Digest::sha256(b"x");
    for (method, path) in [
        ("POST", "/v2/team/app/blobs/uploads/".to_owned()),
        ("PUT", "/v2/team/app/manifests/v2".to_owned()),
        ("DELETE", "/v2/team/app/manifests/v1".to_owned()),
        ("DELETE", format!("/v2/team/app/blobs/{digest}")),
        (
            "PATCH",
            "/v2/team/app/blobs/uploads/00000000-0000-4000-8000-000000000000".to_owned(),
        ),
    ] {
        assert_error(&server.request(method, &path, &[], b"{}"), 403, "DENIED");
    }
    assert_eq!(server.get("/v2/team/app/manifests/v1").status, 200);
}

fn host_spellings_of_an_upstream_are_write_protected_or_refused() {
    let upstreams = ServerConfig::parse(
        "upstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n\
         \x20 - name: near\n    url: http://127.0.0.1:15801\n",
        Path::new("registry.yaml"),
    )
    .unwrap()
    .upstreams;
    let server = TestServer::with(|config| config.upstreams = upstreams);
    let denied = [
        "/v2/library/nginx/manifests/1?ns=DOCKER.IO",
        "/v2/library/nginx/manifests/1?ns=docker.io.",
        "/v2/DOCKER.IO/library/nginx/manifests/1",
        "/v2/docker.io./library/nginx/manifests/1",
        "/v2/a/manifests/1?ns=127.0.0.1:15801",
        "/v2/127.0.0.1_15801/a/manifests/1",
    ];
    let refused = [
        "/v2/a/manifests/1?ns=127.000.000.001:15801",
        "/v2/a/manifests/1?ns=127.0.0.1:015801",
        "/v2/a/manifests/1?ns=2130706433:15801",
        "/v2/127.000.000.001_15801/a/manifests/1",
        "/v2/127.0.0.1_015801/a/manifests/1",
        "/v2/0x7f.0.0.1_15801/a/manifests/1",
    ];
    let manifest = [("Content-Type", OCI_MANIFEST)];
    for path in denied {
        let answer = server.request("PUT", path, &manifest, b"{}");
        assert_error(&answer, 403, "DENIED");
        let upload = path.replace("manifests/1", "blobs/uploads/");
        assert_error(&server.request("POST", &upload, &[], &[]), 403, "DENIED");
    }
    for path in refused {
        let answer = server.request("PUT", path, &manifest, b"{}");
        assert_error(&answer, 400, "NAME_INVALID");
        let upload = path.replace("manifests/1", "blobs/uploads/");
        assert_error(
            &server.request("POST", &upload, &[], &[]),
            400,
            "NAME_INVALID",
        );
    }
    // The local namespace stays writable.
    assert_eq!(
        server
            .request("POST", "/v2/a/blobs/uploads/", &[], &[])
            .status,
        202
    );
}

fn htpasswd_auth_challenges_refuses_and_admits() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("bob:{hash}\n")).unwrap();
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    for anonymous_pull in [false, true] {
        let server = TestServer::with(|config| {
            config.auth = Some(AuthConfig {
                htpasswd: dir.path().join("htpasswd"),
                realm: "sealer-test".to_owned(),
                anonymous_pull,
            });
        });
        // `/v2/` challenges anonymous clients even with anonymous pulls, so that pushing
        // clients learn to send credentials; the pulls themselves need none.
        let anonymous = server.get("/v2/");
        assert_error(&anonymous, 401, "UNAUTHORIZED");
        assert_eq!(
            anonymous.header("www-authenticate"),
            Some("Basic realm=\"sealer-test\", charset=\"UTF-8\"")
        );
        let anonymous_tags = server.get("/v2/a/tags/list");
        if anonymous_pull {
            assert_error(&anonymous_tags, 404, "NAME_UNKNOWN");
        } else {
            assert_error(&anonymous_tags, 401, "UNAUTHORIZED");
        }
        let wrong = basic("bob:nope");
        assert_error(
            &server.request("GET", "/v2/", &[("Authorization", &wrong)], &[]),
            401,
            "UNAUTHORIZED",
        );
        let right = basic("bob:pw");
        assert_eq!(
            server
                .request("GET", "/v2/", &[("Authorization", &right)], &[])
                .status,
            200
        );
        // Writes always need credentials.
        assert_error(
            &server.request("POST", "/v2/a/blobs/uploads/", &[], &[]),
            401,
            "UNAUTHORIZED",
        );
        assert_eq!(
            server
                .request(
                    "POST",
                    "/v2/a/blobs/uploads/",
                    &[("Authorization", &right)],
                    &[]
                )
                .status,
            202
        );
    }
}

#[test]
fn configurations_with_upstreams_open_without_contacting_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = ServerConfig::parse(
        &format!(
            "storage: {}\nupstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n",
            store.display()
        ),
        Path::new("registry.yaml"),
    )
    .unwrap();
    sealer_registry_proxy::Registry::open(&config).unwrap();
    // An upstream that cannot be set up is named.
    let config = ServerConfig::parse(
        &format!(
            "storage: {}\nupstreams:\n  - name: quay\n    url: https://quay.io\n    ca_file: /nonexistent/ca.pem\n",
            store.display()
        ),
        Path::new("registry.yaml"),
    )
    .unwrap();
    let error = sealer_registry_proxy::Registry::open(&config).unwrap_err();
    assert!(error.to_string().contains("upstream \"quay\""), "{error}");
    // The documented example parses.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/registry.yaml");
    let config = ServerConfig::load(&example).unwrap();
    assert_eq!(config, ServerConfig::default());
    // Relative paths are relative to the file; TOML works as YAML does.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.toml");
    std::fs::write(
        &file,
        "storage = \"store\"\n[auth]\nhtpasswd = \"users/htpasswd\"\n[tls]\ncert = \"/abs/cert.pem\"\nkey = \"key.pem\"\n",
    )
    .unwrap();
    let config = ServerConfig::load(&file).unwrap();
    assert_eq!(config.storage, Some(dir.path().join("store").into()));
    assert_eq!(
        config.auth.unwrap().htpasswd,
        dir.path().join("users/htpasswd")
    );
    let tls = config.tls.unwrap();
    assert_eq!(tls.cert, PathBuf::from("/abs/cert.pem"));
    assert_eq!(tls.key, dir.path().join("key.pem"));
    let missing = ServerConfig::load(&dir.path().join("absent.yaml")).unwrap_err();
    assert!(missing.to_string().contains("absent.yaml"), "{missing}");
}

#[test]
fn shutdown_stops_accepting_and_bounds_the_drain() {
    use std::io::Write as _;
    let mut server = TestServer::with(|config| {
        config.shutdown_timeout =
            sealer_registry_proxy::config::ConfigDuration(Duration::from_secs(1));
    });
    assert_eq!(server.get("/v2/").status, 200);
    // A request that never completes its headers would hold a drain forever.
    let mut stalled = std::net::TcpStream::connect(server.address).unwrap();
    stalled
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(std::net::TcpStream::connect(server.address).is_err());
}

#[test]
fn shutdown_lets_an_in_flight_download_finish() {
    use std::io::{Read as _, Write as _};
    let mut server = TestServer::start();
    let data: Vec<u8> = (0..20u32 << 20).map(|i| (i % 253) as u8).collect();
    let digest = push_blob(&server, "team/big", &data);
    let mut stream = std::net::TcpStream::connect(server.address).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET /v2/team/big/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut received = vec![0u8; 64 * 1024];
    stream.read_exact(&mut received).unwrap();
    let stopping = std::thread::spawn(move || {
        let result = server.stop();
        (server, result)
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut rest = Vec::new();
    let mut buffer = vec![0u8; 1 << 20];
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let expected = head_end + data.len();
    while received.len() + rest.len() < expected {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => rest.extend_from_slice(&buffer[..read]),
            Err(error) => panic!("the download was cut: {error}"),
        }
    }
    received.extend_from_slice(&rest);
    assert_eq!(received.len(), expected);
    assert_eq!(&received[head_end..], data.as_slice());
    drop(stream);
    let (_server, result) = stopping.join().unwrap();
    result.unwrap();
}

// ---- deletes, GC and prune (issue 10) ----

/// Pushes an image of `blobs` (config first, then layers; each pushed now) to
/// `repo:reference`; returns the manifest digest. The response must be 201.
fn push_image_of(server: &TestServer, repo: &str, reference: &str, blobs: &[&[u8]]) -> Digest {
    let digests: Vec<Digest> = blobs
        .iter()
        .map(|data| push_blob(server, repo, data))
        .collect();
    let layers: Vec<(&Digest, usize)> = digests[1..]
        .iter()
        .zip(&blobs[1..])
        .map(|(digest, data)| (digest, data.len()))
        .collect();
    let bytes = manifest(
        (
            &digests[0],
            blobs[0].len(),
            "application/vnd.oci.image.config.v1+json",
        ),
        &layers,
        json!({}),
    );
    let response = put_manifest(server, repo, reference, &bytes, OCI_MANIFEST);
    assert_eq!(response.status, 201, "{response:?}");
    Digest::sha256(&bytes)
}

/// Pulls `repo:reference` over HTTP: the manifest (its digest checked), then every blob it
/// names, each hashed. Panics with what failed.
fn assert_pulls(server: &TestServer, repo: &str, reference: &str, digest: &Digest) {
    let response = server.get(&format!("/v2/{repo}/manifests/{reference}"));
    assert_eq!(response.status, 200, "{repo}:{reference}: {response:?}");
    assert_eq!(
        &Digest::sha256(&response.body),
        digest,
        "{repo}:{reference}"
    );
    let manifest: Value = serde_json::from_slice(&response.body).unwrap();
    let blobs = std::iter::once(&manifest["config"])
        .chain(manifest["layers"].as_array().unwrap())
        .map(|descriptor| descriptor["digest"].as_str().unwrap().to_owned());
    for blob in blobs {
        let response = server.get(&format!("/v2/{repo}/blobs/{blob}"));
        assert_eq!(response.status, 200, "{repo}:{reference} blob {blob}");
        assert_eq!(Digest::sha256(&response.body).to_string(), blob);
    }
}

fn assert_fsck_clean(store_dir: &Path) {
    if on_bucket() {
        // A bucket has no fsck (and no store directory).
        return;
    }
    let report = Store::open_dir(store_dir).unwrap().fsck().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

fn blob_deletes_are_refused_by_default() {
    let server = TestServer::start();
    let digest = push_blob(&server, "team/app", b"a blob");
    let response = server.request("DELETE", &format!("/v2/team/app/blobs/{digest}"), &[], &[]);
    assert_error(&response, 405, "UNSUPPORTED");
    assert!(
        String::from_utf8_lossy(&response.body).contains("delete_blobs"),
        "the message names the setting: {response:?}"
    );
    assert_eq!(
        server.get(&format!("/v2/team/app/blobs/{digest}")).status,
        200
    );
}

fn blob_deletes_never_break_another_repositorys_image() {
    let server = TestServer::with(|config| config.delete_blobs = true);
    let shared: &[u8] = b"a layer both images use";
    let image_x = push_image_of(
        &server,
        "x",
        "v1",
        &[b"{\"os\":\"linux\",\"of\":\"x\"}", shared, b"x's own layer"],
    );
    let image_y = push_image_of(
        &server,
        "y",
        "v1",
        &[b"{\"os\":\"linux\",\"of\":\"y\"}", shared],
    );
    let shared_digest = Digest::sha256(shared);
    let delete = |repo: &str, digest: &Digest| {
        server.request("DELETE", &format!("/v2/{repo}/blobs/{digest}"), &[], &[])
    };

    // x's own manifest uses it: refused, naming the manifest.
    let response = delete("x", &shared_digest);
    assert_error(&response, 409, "DENIED");
    assert!(
        String::from_utf8_lossy(&response.body).contains("localhost/x:v1"),
        "{response:?}"
    );
    // Another repository, or a namespace that looks like an upstream's: accepted, kept.
    assert_eq!(delete("z", &shared_digest).status, 202);
    assert_eq!(delete("quay.io/coreos/etcd", &shared_digest).status, 202);
    assert_eq!(delete("z", &image_y).status, 202, "y's manifest as a blob");
    assert_pulls(&server, "y", "v1", &image_y);
    assert_pulls(&server, "x", "v1", &image_x);
    assert_fsck_clean(&server.store);

    // Once y's manifest is gone, x still holds the layer: a delete through y keeps it.
    assert_eq!(
        server
            .request("DELETE", &format!("/v2/y/manifests/{image_y}"), &[], &[])
            .status,
        202
    );
    assert_eq!(delete("y", &shared_digest).status, 202);
    assert_pulls(&server, "x", "v1", &image_x);
    assert_fsck_clean(&server.store);

    // A blob nothing uses goes; then it is unknown.
    let loose = push_blob(&server, "z", b"nobody uses this");
    assert_eq!(delete("z", &loose).status, 202);
    assert_error(
        &server.get(&format!("/v2/z/blobs/{loose}")),
        404,
        "BLOB_UNKNOWN",
    );
    assert_error(&delete("z", &loose), 404, "BLOB_UNKNOWN");
}

fn manifest_deletes_only_touch_the_repository_that_holds_the_manifest() {
    let server = TestServer::start();
    let image = push_image_of(&server, "y", "v1", &[b"{\"os\":\"linux\"}", b"layer"]);
    // By digest and by tag in a repository that does not hold it: unknown, nothing changes.
    assert_error(
        &server.request("DELETE", &format!("/v2/x/manifests/{image}"), &[], &[]),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_error(
        &server.request("DELETE", "/v2/x/manifests/v1", &[], &[]),
        404,
        "MANIFEST_UNKNOWN",
    );
    assert_pulls(&server, "y", "v1", &image);
    assert_fsck_clean(&server.store);

    // A platform manifest that only an index of the repository holds: delete the index first.
    let child_bytes = server.get(&format!("/v2/y/manifests/{image}")).body;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": image.to_string(),
            "size": child_bytes.len(),
            "platform": {"os": "linux", "architecture": "amd64"},
        }],
    }))
    .unwrap();
    assert_eq!(
        put_manifest(
            &server,
            "multi",
            &image.to_string(),
            &child_bytes,
            OCI_MANIFEST
        )
        .status,
        201
    );
    assert_eq!(
        put_manifest(&server, "multi", "v1", &index, OCI_INDEX).status,
        201
    );
    assert_error(
        &server.request("DELETE", &format!("/v2/multi/manifests/{image}"), &[], &[]),
        409,
        "DENIED",
    );
    assert_pulls(&server, "multi", &image.to_string(), &image);
}

fn manifest_media_types_are_checked_and_served_safely() {
    let server = TestServer::start();
    let config = push_blob(&server, "team/app", b"{\"os\":\"linux\"}");
    let valid = manifest(
        (&config, 15, "application/vnd.oci.image.config.v1+json"),
        &[],
        json!({}),
    );
    // A Content-Type that is no manifest type.
    let response = put_manifest(&server, "team/app", "html", &valid, "text/html");
    assert_error(&response, 400, "MANIFEST_INVALID");
    assert!(
        String::from_utf8_lossy(&response.body).contains(OCI_MANIFEST),
        "the accepted types are named: {response:?}"
    );
    // A body that declares itself text/html, sent without a Content-Type.
    let html = manifest(
        (&config, 15, "application/vnd.oci.image.config.v1+json"),
        &[],
        json!({"mediaType": "text/html"}),
    );
    let response = server.request("PUT", "/v2/team/app/manifests/html", &[], &html);
    assert_error(&response, 400, "MANIFEST_INVALID");
    assert_error(
        &server.get("/v2/team/app/manifests/html"),
        404,
        "MANIFEST_UNKNOWN",
    );
    // An artifact whose artifactType is text/html: stored, served as a manifest.
    let artifact = manifest(
        (&config, 15, "application/vnd.oci.image.config.v1+json"),
        &[],
        json!({"artifactType": "text/html"}),
    );
    assert_eq!(
        put_manifest(&server, "team/app", "artifact", &artifact, OCI_MANIFEST).status,
        201
    );
    let get = server.get("/v2/team/app/manifests/artifact");
    assert_eq!(get.status, 200);
    assert_eq!(get.header("content-type"), Some(OCI_MANIFEST));

    if on_bucket() {
        return;
    }
    // An entry an older store recorded with another type is served as opaque bytes.
    let store = Store::open_dir(&server.store).unwrap();
    let mut descriptor = store
        .lookup("localhost/team/app:artifact")
        .unwrap()
        .descriptor;
    descriptor.media_type = "text/html".to_owned();
    store
        .tag(&"localhost/team/app:old".parse().unwrap(), &descriptor)
        .unwrap();
    let old = server.get("/v2/team/app/manifests/old");
    assert_eq!(old.status, 200);
    assert_eq!(old.header("content-type"), Some("application/octet-stream"));
}

// Local store only: the store's holds files and prune.
#[test]
fn pushed_blobs_are_held_fresh_until_their_manifest_names_them() {
    let server = TestServer::start();
    let config = push_blob(&server, "team/app", b"{\"os\":\"linux\"}");
    let layer = push_blob(&server, "team/app", b"a layer pushed before its manifest");
    let store = Store::open_dir(&server.store).unwrap();
    // The default grace keeps both (a prune between the layers and the manifest).
    let report = store.gc().unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(report.kept_fresh, 2);
    let bytes = manifest(
        (&config, 15, "application/vnd.oci.image.config.v1+json"),
        &[(&layer, 34)],
        json!({}),
    );
    assert_eq!(
        put_manifest(&server, "team/app", "v1", &bytes, OCI_MANIFEST).status,
        201
    );
    // Named now: kept without any grace; the holds are gone.
    let report = store
        .gc_with(&GcOptions {
            keep_fresh: Duration::ZERO,
            ..GcOptions::default()
        })
        .unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(
        std::fs::read_dir(server.store.join("holds"))
            .unwrap()
            .next()
            .is_none(),
        "holds older than the grace are removed"
    );
    assert_pulls(&server, "team/app", "v1", &Digest::sha256(&bytes));
    assert_fsck_clean(&server.store);

    // A mount holds the blob again: an old hold is renewed.
    let mounted = push_blob(&server, "team/app", b"a blob mounted much later");
    let hold = server
        .store
        .join("holds")
        .join(format!("sha256-{}", mounted.hex()));
    std::fs::File::options()
        .write(true)
        .open(&hold)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let response = server.request(
        "POST",
        &format!("/v2/team/other/blobs/uploads/?mount={mounted}&from=team/app"),
        &[],
        &[],
    );
    assert_eq!(response.status, 201, "{response:?}");
    assert!(store.gc().unwrap().removed.is_empty());

    // An unheld, unreferenced blob goes at once with the default grace.
    let loose = Digest::sha256(b"loose");
    store.blobs().put(&loose, None, &mut &b"loose"[..]).unwrap();
    assert_eq!(store.gc().unwrap().removed, vec![loose]);
}

fn manifests_whose_blobs_are_absent_are_refused_and_not_named() {
    let server = TestServer::start();
    let config = push_blob(&server, "team/app", b"{\"os\":\"linux\"}");
    let absent = Digest::sha256(b"never pushed");
    let bytes = manifest(
        (&config, 15, "application/vnd.oci.image.config.v1+json"),
        &[(&absent, 12)],
        json!({}),
    );
    assert_error(
        &put_manifest(&server, "team/app", "v1", &bytes, OCI_MANIFEST),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    // An index whose platform manifest was never pushed.
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": absent.to_string(), "size": 12}],
    }))
    .unwrap();
    assert_error(
        &put_manifest(&server, "team/app", "multi", &index, OCI_INDEX),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    if on_bucket() {
        assert_error(&server.get("/v2/team/app/tags/list"), 404, "NAME_UNKNOWN");
        return;
    }
    let store = Store::open_dir(&server.store).unwrap();
    assert!(store.images().unwrap().is_empty());
    assert_fsck_clean(&server.store);
}

fn sparse_manifests_are_refused_by_default_and_accepted_when_configured() {
    let strict = TestServer::start();
    let sparse = TestServer::with(|config| config.sparse_manifests = true);
    let config_json = b"{\"os\":\"linux\",\"architecture\":\"amd64\"}";
    let config = push_blob(&strict, "team/app", config_json);
    let layer = push_blob(&strict, "team/app", b"a distributable layer");
    // The bucket is shared; each local server needs its own copies.
    push_blob(&sparse, "team/app", config_json);
    push_blob(&sparse, "team/app", b"a distributable layer");
    let absent = Digest::sha256(b"never pushed");
    let image = |config: &Digest, extra: Value| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config.to_string(),
                "size": config_json.len(),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": layer.to_string(),
                    "size": 21,
                },
                extra,
            ],
        }))
        .unwrap()
    };
    let nondistributable = image(
        &config,
        json!({
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": absent.to_string(),
            "size": 12,
        }),
    );
    let with_urls = image(
        &config,
        json!({
            "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            "digest": absent.to_string(),
            "size": 12,
            "urls": ["https://example.invalid/layer"],
        }),
    );
    let absent_layer = image(
        &config,
        json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": absent.to_string(),
            "size": 12,
        }),
    );
    let (present_child, present_digest) = {
        let bytes = image(
            &config,
            json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer.to_string(),
                "size": 21,
            }),
        );
        let digest = Digest::sha256(&bytes);
        (bytes, digest)
    };
    let sparse_index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": present_digest.to_string(), "size": present_child.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": OCI_MANIFEST, "digest": absent.to_string(), "size": 12,
             "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }))
    .unwrap();
    for server in [&strict, &sparse] {
        let child = put_manifest(
            server,
            "team/app",
            &present_digest.to_string(),
            &present_child,
            OCI_MANIFEST,
        );
        assert_eq!(child.status, 201, "{child:?}");
    }

    let cases: [(&str, &[u8], &str); 3] = [
        ("foreign", &nondistributable, OCI_MANIFEST),
        ("urls", &with_urls, OCI_MANIFEST),
        ("multi", &sparse_index, OCI_INDEX),
    ];
    for (tag, bytes, media_type) in cases {
        assert_error(
            &put_manifest(&strict, "team/app", tag, bytes, media_type),
            400,
            "MANIFEST_BLOB_UNKNOWN",
        );
        assert_eq!(
            strict.get(&format!("/v2/team/app/manifests/{tag}")).status,
            404
        );
    }
    for (tag, bytes, media_type) in cases {
        let pushed = put_manifest(&sparse, "team/app", tag, bytes, media_type);
        assert_eq!(pushed.status, 201, "{tag}: {pushed:?}");
        let back = sparse.get(&format!("/v2/team/app/manifests/{tag}"));
        assert_eq!((back.status, back.body.as_slice()), (200, bytes));
    }
    // Only foreign layers may be absent: a distributable layer or the config may not.
    assert_error(
        &put_manifest(&sparse, "team/app", "bad", &absent_layer, OCI_MANIFEST),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    let no_config = image(
        &absent,
        json!({
            "mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "digest": absent.to_string(),
            "size": 12,
        }),
    );
    assert_error(
        &put_manifest(&sparse, "team/app", "bad", &no_config, OCI_MANIFEST),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    );
    assert_eq!(sparse.get("/v2/team/app/manifests/bad").status, 404);
    assert_fsck_clean(&sparse.store);
}

/// Pushes `blobs` and a manifest over them to `repo:tag` as a client that retries a
/// refused blob or manifest (a concurrent prune removed a blob) a few times. Returns the
/// manifest's digest when its PUT answered 201.
fn push_retrying(server: &TestServer, repo: &str, tag: &str, blobs: &[Vec<u8>]) -> Option<Digest> {
    let layers: Vec<(Digest, usize)> = blobs[1..]
        .iter()
        .map(|data| (Digest::sha256(data), data.len()))
        .collect();
    let layer_refs: Vec<(&Digest, usize)> = layers.iter().map(|(d, n)| (d, *n)).collect();
    let config = Digest::sha256(&blobs[0]);
    let bytes = manifest(
        (
            &config,
            blobs[0].len(),
            "application/vnd.oci.image.config.v1+json",
        ),
        &layer_refs,
        json!({}),
    );
    for _attempt in 0..10 {
        for data in blobs {
            let digest = Digest::sha256(data);
            server.request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                &[],
                data,
            );
        }
        let response = put_manifest(server, repo, tag, &bytes, OCI_MANIFEST);
        if response.status == 201 {
            return Some(Digest::sha256(&bytes));
        }
        assert_error(&response, 400, "MANIFEST_BLOB_UNKNOWN");
    }
    None
}

// Local store only: the store's prune races the pushes.
#[test]
fn manifest_pushes_racing_gc_never_answer_201_for_a_broken_image() {
    const ROUNDS: usize = 40;
    let server = TestServer::start();
    let store = Store::open_dir(&server.store).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The worst case: no grace at all, a GC after another.
    let collector = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            let mut runs = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && runs < 1_000_000
                && Instant::now() < deadline
            {
                store
                    .gc_with(&GcOptions {
                        keep_fresh: Duration::ZERO,
                        ..GcOptions::default()
                    })
                    .unwrap();
                runs += 1;
                // Pauses of varying length (0 to 40 ms, about a push), so that the GCs land
                // at every point of the pushes, and a longer one now and then, so that
                // pushes get through on a loaded machine too.
                let pause = if runs.is_multiple_of(10) {
                    150
                } else {
                    (runs % 9) as u64 * 5
                };
                std::thread::sleep(Duration::from_millis(pause));
            }
            runs
        })
    };
    let mut created = Vec::new();
    for round in 0..ROUNDS {
        let blobs = vec![
            format!("{{\"os\":\"linux\",\"round\":{round}}}").into_bytes(),
            format!("layer one of round {round}").into_bytes(),
            format!("layer two of round {round}").into_bytes(),
        ];
        let tag = format!("r{round}");
        if let Some(digest) = push_retrying(&server, "race", &tag, &blobs) {
            created.push((tag, digest));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let runs = collector.join().unwrap();
    assert!(runs > 0);
    assert!(!created.is_empty(), "no push got through");
    eprintln!(
        "{} of {ROUNDS} pushes answered 201 against {runs} GCs",
        created.len()
    );
    for (tag, digest) in &created {
        assert_pulls(&server, "race", tag, digest);
    }
    assert_fsck_clean(&server.store);
}

/// A platform manifest a partial multi-arch image lists but does not carry: still 404
/// `MANIFEST_UNKNOWN`, and the message and detail name the platforms it does carry.
// Local store only: a partially carried image is written into the store directly.
#[test]
fn an_absent_platform_is_answered_with_the_carried_ones() {
    let server = TestServer::start();
    let store = Store::open_dir(&server.store).unwrap();
    let mut spec = ImageSpec::new("localhost/team/multi:1", &[1000], 5);
    spec.platforms = two_platforms();
    let top = write_image(&store, &spec).unwrap();
    let ManifestDocument::Index(index) = store.read_manifest(&top).unwrap() else {
        panic!("not an index");
    };
    let arm64 = index
        .manifests
        .iter()
        .find(|entry| entry.platform.as_ref().unwrap().architecture == "arm64")
        .unwrap()
        .digest
        .clone();
    // What a cluster image's `registry/` or a pull for one platform leaves: no arm64.
    std::fs::remove_file(
        server
            .store
            .join("blobs/sha256")
            .join(arm64.to_string().strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let answer = server.get(&format!("/v2/team/multi/manifests/{arm64}"));
    assert_error(&answer, 404, "MANIFEST_UNKNOWN");
    let message = error_message(&answer);
    assert!(
        message.contains("linux/arm64") && message.contains("it carries: linux/amd64"),
        "{message}"
    );
    let body: Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        body["errors"][0]["detail"]["carried"],
        json!(["linux/amd64"])
    );
    // Any other absent digest: the plain answer.
    let other = Digest::sha256(b"nothing");
    let answer = server.get(&format!("/v2/team/multi/manifests/{other}"));
    assert_error(&answer, 404, "MANIFEST_UNKNOWN");
    assert!(!String::from_utf8_lossy(&answer.body).contains("carries"));
}
