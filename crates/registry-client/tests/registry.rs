//! Acceptance tests against REAL registries: Debian's docker-registry (distribution 2.8.2)
//! started by `sealer-test-harness` on loopback ports, anonymous, with htpasswd basic auth
//! and with token auth (a token server signing JWTs that distribution verifies itself),
//! plus skopeo to seed and to read back. Tests skip (and fail under `CI=true`) when a tool
//! is missing.
// Test code: it inspects the registry's storage and temp files directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::future::Future;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sealer_fs_abstraction::Fs;
use sealer_image_store::{BlobStore, Digest, Platform, Reference, Store};
use sealer_registry_client::{
    BlobOutcome, ClientError, ClientOptions, CredentialStore, NoProgress, PlatformSelection,
    PullError, RegistryClient, RetryPolicy, TransferProgress,
};
use sealer_test_harness::{
    Fault, FaultProxy, ImageSpec, Registry, RegistryOptions, SeededImage, TokenOptions,
    TokenServer, require_tools, run_bounded, seed_image,
};

const SKOPEO: Duration = Duration::from_secs(120);

/// Runs `future` on a multi-thread runtime.
fn run<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn client(credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        credentials,
        retries: RetryPolicy {
            initial_backoff: Duration::from_millis(20),
            ..RetryPolicy::default()
        },
        read_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    })
    .unwrap()
}

fn anonymous() -> RegistryClient {
    client(CredentialStore::anonymous())
}

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(&dir.path().join("store")).unwrap();
    (dir, store)
}

fn reference(host: &str, path: &str) -> Reference {
    format!("{host}/{path}").parse().unwrap()
}

fn digest(text: &str) -> Digest {
    text.parse().unwrap()
}

/// `index.json` and the blob list: what must not change when a pull fails.
fn snapshot(store: &Store) -> (Vec<u8>, Vec<String>) {
    let index = store.fs().read(Path::new("index.json")).unwrap();
    let mut blobs: Vec<String> = store
        .fs()
        .read_dir(Path::new("blobs/sha256"))
        .unwrap()
        .into_iter()
        .map(|entry| entry.name.to_string_lossy().into_owned())
        .collect();
    blobs.sort();
    (index, blobs)
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn arm64() -> Platform {
    Platform::new("linux", "arm64", None)
}

fn two_platform_spec(seed: u64) -> ImageSpec {
    let mut spec = ImageSpec::new("unused:1", &[2048, 300_000], seed);
    spec.platforms = vec![amd64(), arm64()];
    spec
}

/// Every blob of the store is intact and every named image complete.
fn assert_consistent(store: &Store) {
    let report = store.fsck().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// Records what the pull reported per blob.
#[derive(Default)]
struct Recorder {
    started: Mutex<Vec<(Digest, u64)>>,
    bytes: AtomicU64,
    restarts: Mutex<Vec<(Digest, u64)>>,
    finished: Mutex<Vec<(Digest, BlobOutcome)>>,
}

impl TransferProgress for Recorder {
    fn blob_started(&self, digest: &Digest, size: u64) {
        self.started.lock().unwrap().push((digest.clone(), size));
    }
    fn blob_advanced(&self, _: &Digest, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn blob_restarted(&self, digest: &Digest, offset: u64) {
        self.restarts.lock().unwrap().push((digest.clone(), offset));
    }
    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        self.finished
            .lock()
            .unwrap()
            .push((digest.clone(), outcome));
    }
}

#[test]
fn anonymous_pull_stores_the_image_byte_exact() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(
        &registry.host(),
        "team/app:1",
        &ImageSpec::new("unused:1", &[1024, 200_000, 50_000], 11),
        None,
    )
    .unwrap();
    let (_dir, store) = new_store();
    let image = reference(&registry.host(), "team/app:1");
    let progress = Recorder::default();
    let report = run(anonymous().pull(&store, &image, PlatformSelection::Host, &progress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    assert_eq!(report.blobs_fetched, seeded.blob_digests.len());
    assert_eq!(report.bytes_fetched, seeded.total_bytes);
    assert_eq!(progress.bytes.load(Ordering::Relaxed), seeded.total_bytes);
    assert_eq!(
        progress.started.lock().unwrap().len(),
        seeded.blob_digests.len()
    );
    let entry = store.lookup(&image.to_string()).unwrap();
    assert_eq!(entry.descriptor.digest.to_string(), seeded.manifest_digest);
    assert_eq!(entry.descriptor.media_type, seeded.media_type);
    assert_consistent(&store);

    // Again: nothing is downloaded, every blob is found in the store.
    let blob_gets = registry.blob_gets(None);
    let again =
        run(anonymous().pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(again.blobs_fetched, 0);
    assert_eq!(again.blobs_present, seeded.blob_digests.len());
    assert_eq!(registry.blob_gets(None), blob_gets);

    // By digest: an unnamed entry, same content.
    let by_digest = reference(
        &registry.host(),
        &format!("team/app@{}", seeded.manifest_digest),
    );
    let report =
        run(anonymous().pull(&store, &by_digest, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);

    // A tag that does not exist is a clear error.
    let missing = reference(&registry.host(), "team/app:nope");
    let error =
        run(anonymous().pull(&store, &missing, PlatformSelection::Host, &NoProgress)).unwrap_err();
    assert!(error.to_string().contains("MANIFEST_UNKNOWN"), "{error}");
}

#[test]
fn a_pull_runs_on_a_current_thread_runtime() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(
        &registry.host(),
        "team/app:1",
        &ImageSpec::new("unused:1", &[1024, 200_000], 17),
        None,
    )
    .unwrap();
    let (_dir, store) = new_store();
    let image = reference(&registry.host(), "team/app:1");
    let progress = Recorder::default();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime
        .block_on(anonymous().pull(&store, &image, PlatformSelection::Host, &progress))
        .unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    assert_eq!(report.blobs_fetched, seeded.blob_digests.len());
    assert_eq!(progress.bytes.load(Ordering::Relaxed), seeded.total_bytes);
    let entry = store.lookup(&image.to_string()).unwrap();
    assert_eq!(entry.descriptor.digest.to_string(), seeded.manifest_digest);
    assert_consistent(&store);
}

#[test]
fn a_truncated_or_corrupt_blob_is_fetched_again_by_the_next_pull() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    seed_image(
        &registry.host(),
        "team/repair:1",
        &ImageSpec::new("unused:1", &[1024, 200_000, 50_000], 12),
        None,
    )
    .unwrap();
    let (_dir, store) = new_store();
    let image = reference(&registry.host(), "team/repair:1");
    run(anonymous().pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    let layers = store
        .resolve(&image.to_string(), None)
        .unwrap()
        .manifest
        .layers;
    let (truncated, corrupted) = (&layers[1], &layers[2]);

    // Truncated: the wrong size alone makes it absent, no fsck needed.
    let bytes = store.fs().read(&truncated.digest.blob_path()).unwrap();
    store
        .fs()
        .write_atomic(&truncated.digest.blob_path(), &bytes[..bytes.len() / 3])
        .unwrap();
    let report =
        run(anonymous().pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.blobs_fetched, 1);
    assert_eq!(report.bytes_fetched, truncated.size);
    assert_eq!(
        store.blobs().stat(&truncated.digest).unwrap(),
        Some(truncated.size)
    );
    assert_consistent(&store);

    // One byte flipped, same size: fsck finds it and quarantines it, the pull replaces it.
    let mut bytes = store.fs().read(&corrupted.digest.blob_path()).unwrap();
    bytes[100] ^= 0x40;
    store
        .fs()
        .write_atomic(&corrupted.digest.blob_path(), &bytes)
        .unwrap();
    let fsck = store.fsck().unwrap();
    assert_eq!(fsck.corrupt, vec![corrupted.digest.clone()]);
    assert_eq!(fsck.quarantined.len(), 1, "{fsck:?}");
    let report =
        run(anonymous().pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.blobs_fetched, 1);
    assert_eq!(report.bytes_fetched, corrupted.size);
    assert_consistent(&store);
}

/// A docker config directory whose `config.json` holds `user:password` for `host`.
fn docker_config(host: &str, user: &str, password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = CredentialStore::with_docker_config_dir(dir.path());
    store.save_login(host, user, password).unwrap();
    dir
}

#[test]
fn basic_auth_pull_and_push_use_config_json() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::htpasswd("alice", "s3cret")).unwrap();
    let host = registry.host();
    let seeded = seed_image(
        &host,
        "private/app:1",
        &ImageSpec::new("unused:1", &[1024, 9 << 20], 21),
        Some(("alice", "s3cret")),
    )
    .unwrap();
    let (_dir, store) = new_store();
    let image = reference(&host, "private/app:1");

    // No credentials: a clear error, nothing stored.
    let before = snapshot(&store);
    let error =
        run(anonymous().pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap_err();
    assert!(error.to_string().contains("sealer login"), "{error}");
    assert_eq!(snapshot(&store), before);

    // From config.json, no flags.
    let config = docker_config(&host, "alice", "s3cret");
    let with_config = client(CredentialStore::with_docker_config_dir(config.path()));
    let report =
        run(with_config.pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);

    // Push to another repository of the same registry: the layers are mounted.
    let copy = reference(&host, "private/copy:2");
    let pushed = run(with_config.push(&store, &image.to_string(), &copy, &NoProgress)).unwrap();
    assert_eq!(pushed.digest.to_string(), seeded.manifest_digest);
    assert_eq!(
        pushed.blobs_mounted,
        seeded.blob_digests.len(),
        "{pushed:?}"
    );
    assert_eq!(pushed.blobs_uploaded, 0);

    // Wrong password: refused.
    let wrong = docker_config(&host, "alice", "wrong");
    let error = run(
        client(CredentialStore::with_docker_config_dir(wrong.path())).pull(
            &store,
            &image,
            PlatformSelection::Host,
            &NoProgress,
        ),
    )
    .unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
}

#[test]
fn login_verifies_then_writes_config_json_and_logout_removes_it() {
    require_tools!("docker-registry", "openssl");
    let basic = Registry::start(RegistryOptions::htpasswd("bob", "pw")).unwrap();
    let tokens = TokenServer::start(TokenOptions::user("carol", "tpw")).unwrap();
    let token = Registry::start(RegistryOptions::token(&tokens)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let credentials = || CredentialStore::with_docker_config_dir(dir.path());
    let config = dir.path().join("config.json");

    let error = run(client(credentials()).login(&basic.host(), "bob", "bad")).unwrap_err();
    assert!(error.to_string().contains("refused"), "{error}");
    let error = run(client(credentials()).login(&token.host(), "carol", "bad")).unwrap_err();
    assert!(error.to_string().contains("401"), "{error}");
    assert!(!std::fs::exists(&config).unwrap());

    assert_eq!(
        run(client(credentials()).login(&basic.host(), "bob", "pw")).unwrap(),
        config
    );
    run(client(credentials()).login(&token.host(), "carol", "tpw")).unwrap();
    let store = credentials();
    assert!(store.get(&basic.host(), "x").unwrap().is_some());
    assert!(store.get(&token.host(), "x").unwrap().is_some());
    let fs = sealer_fs_abstraction::RealFs::open_root(dir.path()).unwrap();
    assert_eq!(
        fs.metadata(Path::new("config.json")).unwrap().mode & 0o777,
        0o600
    );

    assert!(client(credentials()).logout(&basic.host()).unwrap());
    assert!(credentials().get(&basic.host(), "x").unwrap().is_none());
    assert!(credentials().get(&token.host(), "x").unwrap().is_some());
}

#[test]
fn token_auth_pull_asks_one_token_per_scope() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let tokens = TokenServer::start(TokenOptions::user("dave", "pw")).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).unwrap();
    let host = registry.host();
    let seeded = seed_image(
        &host,
        "secure/app:4",
        &ImageSpec::new("unused:1", &[300_000, 200_000, 100_000, 50_000], 31),
        Some(("dave", "pw")),
    )
    .unwrap();
    assert_eq!(seeded.platforms[0].blob_digests.len(), 5);
    let seeding_requests = tokens.requests().len();

    let config = docker_config(&host, "dave", "pw");
    let with_config = client(CredentialStore::with_docker_config_dir(config.path()));
    let (_dir, store) = new_store();
    let image = reference(&host, "secure/app:4");
    let report =
        run(with_config.pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    assert_eq!(report.blobs_fetched, 5);
    let ours: Vec<_> = tokens.requests().split_off(seeding_requests);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(
        ours[0].scopes,
        vec!["repository:secure/app:pull".to_owned()]
    );
    assert_eq!(ours[0].user.as_deref(), Some("dave"));
    assert_eq!(ours[0].status, 200);
    assert_consistent(&store);

    // Push to a new repository with the same client: one more token, for that scope (plus
    // pull on the source repository, for mounts).
    let target = reference(&host, "secure/copy:4");
    let pushed = run(with_config.push(&store, &image.to_string(), &target, &NoProgress)).unwrap();
    assert_eq!(pushed.digest.to_string(), seeded.manifest_digest);
    let ours: Vec<_> = tokens.requests().split_off(seeding_requests);
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(
        ours[1].scopes,
        vec![
            "repository:secure/copy:pull,push".to_owned(),
            "repository:secure/app:pull".to_owned()
        ]
    );
}

#[test]
fn an_identity_token_is_exchanged_with_the_oauth2_refresh_grant() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let tokens = TokenServer::start(TokenOptions {
        refresh_tokens: vec![("refresh-erin".to_owned(), "erin".to_owned())],
        ..TokenOptions::user("erin", "pw")
    })
    .unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).unwrap();
    let host = registry.host();
    let seeded = seed_image(
        &host,
        "secure/id:1",
        &ImageSpec::new("unused:1", &[2_000], 41),
        Some(("erin", "pw")),
    )
    .unwrap();
    let seeding_requests = tokens.requests().len();

    // docker's config.json after an OAuth2 login: an identity token, no password.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"{host}": {{"identitytoken": "refresh-erin"}}}}}}"#),
    )
    .unwrap();
    let with_config = client(CredentialStore::with_docker_config_dir(dir.path()));
    let (_dir, store) = new_store();
    let image = reference(&host, "secure/id:1");
    let report =
        run(with_config.pull(&store, &image, PlatformSelection::Host, &NoProgress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    let ours: Vec<_> = tokens.requests().split_off(seeding_requests);
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_eq!(ours[0].grant.as_deref(), Some("refresh_token"));
    assert_eq!(ours[0].user.as_deref(), Some("erin"));
    assert_eq!(ours[0].scopes, vec!["repository:secure/id:pull".to_owned()]);
    assert_consistent(&store);

    // An identity token the server does not know: refused, nothing stored.
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"{host}": {{"identitytoken": "revoked"}}}}}}"#),
    )
    .unwrap();
    let refused = client(CredentialStore::with_docker_config_dir(dir.path()));
    let (_empty_dir, empty) = new_store();
    let error =
        run(refused.pull(&empty, &image, PlatformSelection::Host, &NoProgress)).unwrap_err();
    assert!(error.to_string().contains("401"), "{error}");
    assert!(empty.images().unwrap().is_empty());
}

/// `skopeo inspect --raw docker://REF` → the sha256 of what it printed.
fn skopeo_raw_digest(image: &str) -> String {
    let mut command = std::process::Command::new("skopeo");
    command
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{image}"));
    let output = run_bounded(&mut command, SKOPEO).unwrap();
    assert!(output.status.success(), "{output:?}");
    Digest::sha256(&output.stdout).to_string()
}

#[test]
fn pull_from_one_registry_push_to_another_keeps_every_digest() {
    require_tools!("docker-registry", "skopeo");
    let a = Registry::start(RegistryOptions::anonymous()).unwrap();
    let b = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(&a.host(), "multi/app:1", &two_platform_spec(41), None).unwrap();
    let (_dir, store) = new_store();
    let source = reference(&a.host(), "multi/app:1");
    let pulled =
        run(anonymous().pull(&store, &source, PlatformSelection::All, &NoProgress)).unwrap();
    assert_eq!(pulled.digest.to_string(), seeded.manifest_digest);
    assert_eq!(pulled.platforms.len(), 2);

    // Large blobs go up streamed: make the limit small so both upload paths run.
    let pusher = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        monolithic_limit: 100_000,
        ..ClientOptions::default()
    })
    .unwrap();
    let destination = reference(&b.host(), "mirror/app:1");
    let pushed = run(pusher.push(&store, &source.to_string(), &destination, &NoProgress)).unwrap();
    assert_eq!(pushed.digest.to_string(), seeded.manifest_digest);
    assert_eq!(pushed.manifests, 3);
    assert_eq!(pushed.blobs_uploaded, seeded.blob_digests.len());
    assert_eq!(
        skopeo_raw_digest(&destination.to_string()),
        seeded.manifest_digest
    );
    for platform in &seeded.platforms {
        let child = format!("{}/mirror/app@{}", b.host(), platform.manifest_digest);
        assert_eq!(skopeo_raw_digest(&child), platform.manifest_digest);
    }

    // Chunked PATCH uploads give the same image.
    let chunked = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        monolithic_limit: 1000,
        chunk_size: Some(64 * 1024),
        ..ClientOptions::default()
    })
    .unwrap();
    let chunked_destination = reference(&b.host(), "chunked/app:1");
    let pushed = run(chunked.push(
        &store,
        &source.to_string(),
        &chunked_destination,
        &NoProgress,
    ))
    .unwrap();
    assert_eq!(pushed.digest.to_string(), seeded.manifest_digest);
    assert_eq!(
        skopeo_raw_digest(&chunked_destination.to_string()),
        seeded.manifest_digest
    );

    // A second push finds every blob there.
    let again = run(pusher.push(&store, &source.to_string(), &destination, &NoProgress)).unwrap();
    assert_eq!(again.blobs_uploaded, 0);
    assert_eq!(again.blobs_existing, seeded.blob_digests.len());

    // Pull back from B into a fresh store: same digests everywhere.
    let (_dir2, back) = new_store();
    let report =
        run(anonymous().pull(&back, &destination, PlatformSelection::All, &NoProgress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    let mut blobs = back.blobs().list().unwrap();
    let mut original = store.blobs().list().unwrap();
    blobs.sort();
    original.sort();
    assert_eq!(blobs, original);
    assert_consistent(&back);
}

#[test]
fn one_platform_of_a_multi_arch_image_fetches_only_its_blobs() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded: SeededImage = seed_image(
        &registry.host(),
        "multi/app:2",
        &two_platform_spec(51),
        None,
    )
    .unwrap();
    let arm = seeded
        .platforms
        .iter()
        .find(|platform| platform.platform.architecture == "arm64")
        .unwrap();
    let before = registry.access_log().len();
    let (_dir, store) = new_store();
    let image = reference(&registry.host(), "multi/app:2");
    let report = run(anonymous().pull(
        &store,
        &image,
        PlatformSelection::Only(arm64()),
        &NoProgress,
    ))
    .unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    assert_eq!(report.platforms, vec![arm64()]);
    let fetched: Vec<String> = registry.access_log()[before..]
        .iter()
        .filter(|entry| entry.method == "GET")
        .filter_map(|entry| {
            entry
                .path
                .split_once("/blobs/")
                .map(|(_, digest)| digest.to_owned())
        })
        .collect();
    let mut expected = arm.blob_digests.clone();
    let mut got = fetched.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "blob GETs: {fetched:?}");

    // The store keeps the index (the multi-arch digest) with one platform present.
    let entry = store.lookup(&image.to_string()).unwrap();
    assert_eq!(entry.descriptor.digest.to_string(), seeded.manifest_digest);
    let fsck = store.fsck().unwrap();
    assert!(fsck.is_clean());
    assert_eq!(fsck.absent_platforms, 1);
    let resolved = store.resolve(&image.to_string(), Some(&arm64())).unwrap();
    assert_eq!(
        resolved.manifest_descriptor.digest.to_string(),
        arm.manifest_digest
    );

    // A platform the image does not have: named in the error with what it has.
    let error = run(anonymous().pull(
        &store,
        &image,
        PlatformSelection::Only(Platform::new("linux", "s390x", None)),
        &NoProgress,
    ))
    .unwrap_err();
    assert!(
        matches!(error, PullError::PlatformNotFound { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("linux/arm64"), "{error}");
}

#[test]
fn a_connection_cut_mid_blob_resumes_with_range() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(
        &registry.host(),
        "big/app:1",
        &ImageSpec::new("unused:1", &[1024, 3 << 20], 61),
        None,
    )
    .unwrap();
    let big = seeded.platforms[0].blob_digests.last().unwrap().clone();
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::cut_after(&big, 1 << 20)).unwrap();
    let (_dir, store) = new_store();
    let image = reference(&proxy.host(), "big/app:1");
    let progress = Recorder::default();
    let report = run(anonymous().pull(&store, &image, PlatformSelection::Host, &progress)).unwrap();
    assert_eq!(report.digest.to_string(), seeded.manifest_digest);
    assert_eq!(proxy.faults_applied(), 1);
    assert_eq!(report.resumes, 1);
    assert_eq!(
        *progress.restarts.lock().unwrap(),
        vec![(digest(&big), 1 << 20)]
    );
    assert!(store.blobs().stat(&digest(&big)).unwrap().is_some());
    assert_consistent(&store);

    // The registry served the big blob twice: whole (cut by the proxy), then from 1 MiB on.
    let gets: Vec<_> = registry
        .access_log()
        .into_iter()
        .filter(|entry| entry.method == "GET" && entry.path.ends_with(&big))
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[1].status, 206, "{gets:?}");
    let size = seeded.total_bytes; // upper bound
    assert!(gets[1].bytes < size && gets[1].bytes > 0, "{gets:?}");
}

#[test]
fn single_reads_head_get_and_a_blob_download_that_resumes() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let seeded = seed_image(
        &registry.host(),
        "single/app:1",
        &ImageSpec::new("unused:1", &[2 << 20], 62),
        None,
    )
    .unwrap();
    let big = seeded.platforms[0].blob_digests.last().unwrap().clone();
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::cut_after(&big, 1 << 20)).unwrap();
    let host = proxy.host();
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        base_urls: [(host.clone(), format!("http://{host}/"))].into(),
        ..ClientOptions::default()
    })
    .unwrap();
    let (head, manifest, size, (bytes, resumes)) = run(async {
        let head = client
            .head_manifest(&host, "single/app", "1")
            .await
            .unwrap();
        let manifest = client
            .get_manifest(&host, "single/app", "1", None)
            .await
            .unwrap();
        let size = client
            .head_blob(&host, "single/app", &digest(&big))
            .await
            .unwrap();
        let mut download = client
            .get_blob(&host, "single/app", &digest(&big), 0)
            .await
            .unwrap();
        assert_eq!(download.size(), Some(size));
        let mut bytes = Vec::new();
        while let Some(chunk) = download.chunk().await.unwrap() {
            bytes.extend_from_slice(&chunk);
        }
        (head, manifest, size, (bytes, download.resumes()))
    });
    assert_eq!(head.digest.unwrap().to_string(), seeded.manifest_digest);
    assert_eq!(head.size, Some(manifest.bytes.len() as u64));
    assert_eq!(manifest.digest.to_string(), seeded.manifest_digest);
    assert_eq!(bytes.len() as u64, size);
    assert_eq!(Digest::sha256(&bytes).to_string(), big);
    assert_eq!((proxy.faults_applied(), resumes), (1, 1));
    // Only the proxy's address was used: no HTTPS probe went anywhere.
    assert!(
        proxy
            .requests()
            .iter()
            .all(|r| r.target.starts_with("/v2/single/app/"))
    );
    let stats = client.stats();
    assert_eq!(stats.token_fetches, 0);
    assert!(stats.requests >= 5, "{stats:?}");
    // A configured base URL may not be plain HTTP to a host that is not loopback.
    let refused = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        base_urls: [("quay.io".to_owned(), "http://quay.io/".to_owned())].into(),
        ..ClientOptions::default()
    });
    assert!(matches!(refused, Err(ClientError::Url { .. })));
}

#[test]
fn a_failed_pull_leaves_the_store_unchanged() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let kept = seed_image(
        &registry.host(),
        "kept/app:1",
        &ImageSpec::new("unused:1", &[4096], 71),
        None,
    )
    .unwrap();
    let seeded = seed_image(
        &registry.host(),
        "bad/app:1",
        &ImageSpec::new("unused:1", &[1024, 500_000, 300_000], 72),
        None,
    )
    .unwrap();
    let (_dir, store) = new_store();
    run(anonymous().pull(
        &store,
        &reference(&registry.host(), "kept/app:1"),
        PlatformSelection::Host,
        &NoProgress,
    ))
    .unwrap();
    let before = snapshot(&store);

    // A corrupted byte in one layer: the digest check refuses it, nothing is committed.
    let layer = seeded.platforms[0].blob_digests[1].clone();
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::flip_byte(&layer, 1000)).unwrap();
    let error = run(anonymous().pull(
        &store,
        &reference(&proxy.host(), "bad/app:1"),
        PlatformSelection::Host,
        &NoProgress,
    ))
    .unwrap_err();
    assert!(
        matches!(
            error,
            PullError::Store(sealer_image_store::StoreError::DigestMismatch { .. })
        ),
        "{error}"
    );
    assert_eq!(snapshot(&store), before);
    assert!(store.fs().read_dir(Path::new("ingest")).unwrap().is_empty());

    // A manifest that refers to a blob the registry lost: 404, nothing committed.
    let lost = &seeded.platforms[0].blob_digests[2];
    let hex = lost.trim_start_matches("sha256:");
    let data = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    std::fs::remove_file(&data).unwrap();
    let error = run(anonymous().pull(
        &store,
        &reference(&registry.host(), "bad/app:1"),
        PlatformSelection::Host,
        &NoProgress,
    ))
    .unwrap_err();
    match &error {
        PullError::Blob { source, .. } => assert!(
            matches!(source, ClientError::Status { status: 404, .. }),
            "{error}"
        ),
        other => panic!("unexpected error: {other}"),
    }
    assert_eq!(snapshot(&store), before);
    assert_eq!(
        store
            .lookup(&format!("{}/kept/app:1", registry.host()))
            .unwrap()
            .descriptor
            .digest
            .to_string(),
        kept.manifest_digest
    );
}
