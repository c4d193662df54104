//! The harness's own tests: every part against the real docker-registry, skopeo and openssl.

// Helpers shared by the tests panic like the tests do.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use sealer_image_store::Platform;
use sealer_test_harness::{
    Fault, FaultProxy, ImageSpec, Moto, MotoMode, ProxyUpstream, Registry, RegistryOptions,
    S3Storage, SeededImage, TokenOptions, TokenServer, http_get, http_request, require_moto,
    require_tools, run_bounded, run_ok, seed_image,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Bound on one skopeo run in these tests.
const SKOPEO: Duration = Duration::from_secs(120);
/// Bound on one raw HTTP exchange.
const HTTP: Duration = Duration::from_secs(10);

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `skopeo inspect ARGS… docker://REF` (plain HTTP); the output, whatever the status.
fn skopeo_inspect(reference: &str, args: &[&str]) -> std::process::Output {
    let mut command = Command::new("skopeo");
    command
        .args(["inspect", "--tls-verify=false"])
        .args(args)
        .arg(format!("docker://{reference}"));
    run_bounded(&mut command, SKOPEO).unwrap()
}

/// A single-platform image: a 1 KiB layer and a 200 KB one (random, so about that size
/// gzipped).
fn small_spec(seed: u64) -> ImageSpec {
    ImageSpec::new("unused:1", &[1024, 200_000], seed)
}

/// The largest layer of a seeded image.
fn big_layer(image: &SeededImage) -> String {
    image.platforms[0].blob_digests.last().unwrap().clone()
}

#[test]
fn registry_answers_v2_and_logs_each_request() {
    require_tools!("docker-registry");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    assert_eq!(registry.url(), format!("http://{}", registry.host()));

    let ping = http_get(&format!("{}/v2/", registry.url()), HTTP).unwrap();
    assert_eq!(ping.status, 200);
    assert_eq!(
        ping.header("Docker-Distribution-Api-Version"),
        Some("registry/2.0")
    );
    let missing = format!("/v2/some/repo/blobs/sha256:{}", "0".repeat(64));
    let response = http_get(&format!("{}{missing}", registry.url()), HTTP).unwrap();
    assert_eq!(response.status, 404);

    // The harness's readiness and sync probes are left out.
    let log = registry.access_log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(registry.count("GET", |path| path == "/v2/"), 1);
    assert_eq!(registry.count("GET", |path| path == missing), 1);
    assert_eq!(registry.blob_gets(None), 1);
    let entry = log.iter().find(|entry| entry.path == missing).unwrap();
    assert_eq!((entry.status, entry.query.as_deref()), (404, None));
}

#[test]
fn restart_keeps_port_and_storage() {
    require_tools!("docker-registry", "skopeo");
    let mut registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(&registry.host(), "keep/me:1", &small_spec(1), None).unwrap();
    let manifest = format!("{}/v2/keep/me/manifests/1", registry.url());

    registry.stop();
    assert!(!registry.is_running());
    assert!(
        http_get(&manifest, HTTP).is_err(),
        "a stopped registry answered"
    );

    let port = registry.port();
    registry.restart().unwrap();
    assert_eq!(registry.port(), port);
    let response = http_request(
        "GET",
        &manifest,
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(sha256(&response.body), image.manifest_digest);
    // The log spans both runs.
    assert!(registry.count("PUT", |path| path.ends_with("/manifests/1")) >= 1);
}

#[test]
fn pull_through_registry_fetches_from_its_upstream() {
    require_tools!("docker-registry", "skopeo", "openssl");
    // distribution's proxy sends credentials only to token realms (its credential store is
    // keyed by realm URL), so the authenticated upstream uses token auth.
    let tokens = TokenServer::start(TokenOptions::user("up", "pw")).unwrap();
    let anonymous = Registry::start(RegistryOptions::anonymous()).unwrap();
    let with_tokens = Registry::start(RegistryOptions::token(&tokens)).unwrap();
    for (upstream, creds) in [(&anonymous, None), (&with_tokens, Some(("up", "pw")))] {
        let image = seed_image(&upstream.host(), "library/app:1", &small_spec(7), creds).unwrap();
        let cache = Registry::start(RegistryOptions {
            proxy: Some(ProxyUpstream {
                remote_url: upstream.url(),
                username: creds.map(|(user, _)| user.to_owned()),
                password: creds.map(|(_, password)| password.to_owned()),
            }),
            ..RegistryOptions::anonymous()
        })
        .unwrap();
        let raw = run_ok(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{}/library/app:1", cache.host()),
            ],
            SKOPEO,
        )
        .unwrap_or_else(|error| panic!("{error:#}\ncache log:\n{}", cache.log()));
        assert_eq!(sha256(&raw), image.manifest_digest);
        let layer = big_layer(&image);
        let blob_url = format!("{}/v2/library/app/blobs/{layer}", cache.url());
        let blob = http_get(&blob_url, HTTP).unwrap();
        assert_eq!(sha256(&blob.body), layer);
        assert!(upstream.blob_gets(Some(&layer)) >= 1);
        // distribution commits a fetched blob after answering: a GET right after the first
        // may go upstream again, or even get a 500 while the commit is half done (seen under
        // load). Once committed, GETs are served locally.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let before = upstream.blob_gets(Some(&layer));
            let blob = http_get(&blob_url, HTTP).unwrap();
            if blob.status == 200 && upstream.blob_gets(Some(&layer)) == before {
                assert_eq!(sha256(&blob.body), layer);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cache never served locally; last status {}; log:\n{}",
                blob.status,
                cache.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn htpasswd_registry_refuses_anonymous_and_accepts_credentials() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::htpasswd("alice", "s3cret")).unwrap();
    assert_eq!(
        http_get(&format!("{}/v2/", registry.url()), HTTP)
            .unwrap()
            .status,
        401
    );
    let image = seed_image(
        &registry.host(),
        "private/app:v1",
        &small_spec(2),
        Some(("alice", "s3cret")),
    )
    .unwrap();
    let reference = format!("{}/private/app:v1", registry.host());

    for refused in [
        skopeo_inspect(&reference, &["--no-creds"]),
        skopeo_inspect(&reference, &["--creds", "alice:wrong"]),
    ] {
        let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
        assert!(
            !refused.status.success() && stderr.contains("unauthorized"),
            "{stderr}"
        );
    }
    let ok = skopeo_inspect(&reference, &["--creds", "alice:s3cret"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let inspected: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());
    // Refused requests are logged as 401, the authenticated pull as 200.
    let log = registry.access_log();
    let manifest = "/v2/private/app/manifests/v1";
    assert!(
        log.iter()
            .any(|entry| entry.path == manifest && entry.status == 200),
        "{log:?}"
    );
    assert!(log.iter().any(|entry| entry.status == 401), "{log:?}");
}

#[test]
fn token_registry_accepts_the_token_servers_jwts() {
    require_tools!("docker-registry", "skopeo", "openssl");
    let tokens = TokenServer::start(TokenOptions::user("bob", "pa55")).unwrap();
    let registry = Registry::start(RegistryOptions::token(&tokens)).unwrap();

    // skopeo does the token dance for the push.
    let image = seed_image(
        &registry.host(),
        "team/app:v1",
        &small_spec(3),
        Some(("bob", "pa55")),
    )
    .unwrap();
    assert!(tokens.count_for_scope("repository:team/app:pull,push") >= 1);
    assert!(tokens.requests().iter().all(|request| {
        request.user.as_deref() == Some("bob")
            && request.status == 200
            && request.service.as_deref() == Some(tokens.service())
    }));

    // Anonymous: the registry wants a token, the realm refuses one.
    let manifest_url = format!("{}/v2/team/app/manifests/v1", registry.url());
    let challenge = http_get(&manifest_url, HTTP).unwrap();
    assert_eq!(challenge.status, 401);
    let header = challenge.header("WWW-Authenticate").unwrap();
    assert!(header.starts_with("Bearer "), "{header}");
    assert!(header.contains(&tokens.realm()), "{header}");
    assert!(
        header.contains("scope=\"repository:team/app:pull\""),
        "{header}"
    );
    let reference = format!("{}/team/app:v1", registry.host());
    let anonymous = skopeo_inspect(&reference, &["--no-creds"]);
    let stderr = String::from_utf8_lossy(&anonymous.stderr).to_lowercase();
    assert!(
        !anonymous.status.success() && stderr.contains("unauthorized"),
        "{stderr}"
    );
    assert!(
        tokens
            .requests()
            .iter()
            .any(|request| request.status == 401)
    );

    let pulled = skopeo_inspect(&reference, &["--creds", "bob:pa55"]);
    assert!(
        pulled.status.success(),
        "{}",
        String::from_utf8_lossy(&pulled.stderr)
    );
    let inspected: Value = serde_json::from_slice(&pulled.stdout).unwrap();
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());

    // The registry checks the access claim and the signature itself.
    let accept = ("Accept", "application/vnd.oci.image.manifest.v1+json");
    let get_with = |token: &str| {
        let bearer = format!("Bearer {token}");
        http_request(
            "GET",
            &manifest_url,
            &[accept, ("Authorization", &bearer)],
            &[],
            HTTP,
        )
        .unwrap()
    };
    let good = tokens.issue("bob", &["repository:team/app:pull"]).unwrap();
    let response = get_with(&good);
    assert_eq!(response.status, 200);
    assert_eq!(sha256(&response.body), image.manifest_digest);
    let other_repository = tokens
        .issue("bob", &["repository:team/other:pull"])
        .unwrap();
    assert_eq!(get_with(&other_repository).status, 401);
    // One signature character changed (in the middle: the last one carries padding bits).
    let mut forged = good.clone().into_bytes();
    let middle = good.rfind('.').unwrap() + (good.len() - good.rfind('.').unwrap()) / 2;
    forged[middle] = if forged[middle] == b'A' { b'B' } else { b'A' };
    assert_eq!(get_with(&String::from_utf8(forged).unwrap()).status, 401);
}

#[test]
fn token_server_refuses_bad_credentials_and_records_requests() {
    require_tools!("openssl");
    let tokens = TokenServer::start(TokenOptions::user("bob", "pa55")).unwrap();
    let url = format!(
        "{}?service={}&scope=repository%3Aa%2Fb%3Apull&account=bob",
        tokens.realm(),
        tokens.service()
    );
    assert_eq!(http_get(&url, HTTP).unwrap().status, 401);
    // "bob:wrong" and "bob:pa55" in base64.
    let wrong = http_request(
        "GET",
        &url,
        &[("Authorization", "Basic Ym9iOndyb25n")],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(wrong.status, 401);
    let ok = http_request(
        "GET",
        &url,
        &[("Authorization", "Basic Ym9iOnBhNTU=")],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(ok.status, 200);
    let answer: Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!(answer["token"], answer["access_token"]);
    assert_eq!(answer["expires_in"], 300);
    let token = answer["token"].as_str().unwrap();
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(tokens.count_for_scope("repository:a/b:pull"), 3);
    let requests = tokens.requests();
    assert_eq!(
        requests
            .iter()
            .map(|request| request.status)
            .collect::<Vec<_>>(),
        [401, 401, 200]
    );
    assert_eq!(requests[2].account.as_deref(), Some("bob"));
}

#[test]
fn fault_proxy_cuts_the_first_response_then_passes() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(&registry.host(), "cut/app:1", &small_spec(4), None).unwrap();
    let layer = big_layer(&image);
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::cut_after(&layer, 1000)).unwrap();
    let url = format!("{}/v2/cut/app/blobs/{layer}", proxy.url());

    let cut = http_get(&url, HTTP).unwrap();
    assert_eq!(cut.status, 200);
    assert!(!cut.complete);
    assert_eq!(cut.body.len(), 1000);

    // A client resuming with Range gets the rest.
    let rest = http_request("GET", &url, &[("Range", "bytes=1000-")], &[], HTTP).unwrap();
    assert_eq!(rest.status, 206);
    assert!(rest.complete);
    let mut whole = cut.body.clone();
    whole.extend_from_slice(&rest.body);
    assert_eq!(sha256(&whole), layer);

    let again = http_get(&url, HTTP).unwrap();
    assert!(again.complete);
    assert_eq!(sha256(&again.body), layer);
    assert_eq!(proxy.faults_applied(), 1);
    let seen = proxy.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen[0].faulted && !seen[1].faulted && !seen[2].faulted);
    assert!(seen.iter().all(|request| request.method == "GET"));
    // The upstream saw three blob GETs.
    assert_eq!(registry.blob_gets(Some(&layer)), 3);
}

#[test]
fn fault_proxy_flips_a_byte_until_told_otherwise() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(&registry.host(), "flip/app:1", &small_spec(5), None).unwrap();
    let layer = big_layer(&image);
    let proxy =
        FaultProxy::in_front_of(&registry.host(), Fault::flip_byte("/blobs/", 5000)).unwrap();
    let url = format!("{}/v2/flip/app/blobs/{layer}", proxy.url());
    for _ in 0..2 {
        let corrupt = http_get(&url, HTTP).unwrap();
        assert!(corrupt.complete);
        assert_ne!(sha256(&corrupt.body), layer);
    }
    // Manifests pass untouched.
    let manifest = http_request(
        "GET",
        &format!("{}/v2/flip/app/manifests/1", proxy.url()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
        &[],
        HTTP,
    )
    .unwrap();
    assert_eq!(sha256(&manifest.body), image.manifest_digest);

    proxy.set_fault(Fault::None);
    let good = http_get(&url, HTTP).unwrap();
    assert_eq!(sha256(&good.body), layer);
}

#[test]
fn fault_proxy_refuses_then_stalls_mid_body() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let image = seed_image(&registry.host(), "stall/app:1", &small_spec(6), None).unwrap();
    let layer = big_layer(&image);
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::refuse("")).unwrap();
    let url = format!("{}/v2/stall/app/blobs/{layer}", proxy.url());
    // Down: the connection closes with no answer, and nothing reaches the upstream.
    assert!(http_get(&url, HTTP).is_err());
    assert_eq!(registry.blob_gets(Some(&layer)), 0);

    proxy.set_fault(Fault::stall_after(&layer, 1000));
    let stalled = http_get(&url, Duration::from_secs(1)).unwrap_err();
    assert!(format!("{stalled:#}").contains("timed out"), "{stalled:#}");
    // The stall applies once: the next GET passes whole.
    let whole = http_get(&url, HTTP).unwrap();
    assert!(whole.complete);
    assert_eq!(sha256(&whole.body), layer);
    // Counted since the fault was set.
    assert_eq!(proxy.faults_applied(), 1);
}

#[test]
fn fault_proxy_hang_never_answers() {
    require_tools!("docker-registry");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let proxy = FaultProxy::in_front_of(&registry.host(), Fault::hang("/manifests/")).unwrap();

    let started = Instant::now();
    let error = http_get(
        &format!("{}/v2/any/repo/manifests/latest", proxy.url()),
        Duration::from_secs(1),
    )
    .unwrap_err();
    let waited = started.elapsed();
    assert!(format!("{error:#}").contains("timed out"), "{error:#}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // Other paths pass; the hung request never reached the upstream.
    assert_eq!(
        http_get(&format!("{}/v2/", proxy.url()), HTTP)
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        registry.count("GET", |path| path.contains("/manifests/")),
        0
    );
    assert_eq!(proxy.faults_applied(), 1);
    // Dropping the proxy closes the hung connection (and must not block).
    let dropped = Instant::now();
    drop(proxy);
    assert!(dropped.elapsed() < Duration::from_secs(3));
}

#[test]
fn seeded_multi_arch_image_keeps_its_digests() {
    require_tools!("docker-registry", "skopeo");
    let registry = Registry::start(RegistryOptions::anonymous()).unwrap();
    let mut spec = ImageSpec::new("unused:1", &[4096, 30_000], 6);
    spec.platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let image = seed_image(&registry.host(), "multi/app:2", &spec, None).unwrap();
    assert_eq!(image.platforms.len(), 2);
    assert_eq!(image.media_type, "application/vnd.oci.image.index.v1+json");
    // Layer 0 is shared: 2 configs + 1 shared layer + 2 own layers.
    assert_eq!(image.blob_digests.len(), 5);
    assert!(image.total_bytes > 60_000);

    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}", image.reference),
        ],
        SKOPEO,
    )
    .unwrap();
    assert_eq!(sha256(&raw), image.manifest_digest);
    let index: Value = serde_json::from_slice(&raw).unwrap();
    let listed: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["digest"].as_str().unwrap())
        .collect();
    let seeded: Vec<&str> = image
        .platforms
        .iter()
        .map(|platform| platform.manifest_digest.as_str())
        .collect();
    assert_eq!(listed, seeded);

    let arm64 = skopeo_inspect(&image.reference, &["--override-arch", "arm64"]);
    assert!(arm64.status.success());
    let arm64: Value = serde_json::from_slice(&arm64.stdout).unwrap();
    let arm64_layers: Vec<&str> = arm64["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer.as_str().unwrap())
        .collect();
    assert_eq!(arm64_layers, image.platforms[1].blob_digests[1..]);

    // Every blob is served with its digest; each GET is in the access log.
    let before: Vec<usize> = image
        .blob_digests
        .iter()
        .map(|digest| registry.blob_gets(Some(digest)))
        .collect();
    for digest in &image.blob_digests {
        let blob = http_get(
            &format!("{}/v2/multi/app/blobs/{digest}", registry.url()),
            HTTP,
        )
        .unwrap();
        assert_eq!(&sha256(&blob.body), digest);
    }
    for (digest, before) in image.blob_digests.iter().zip(before) {
        assert_eq!(registry.blob_gets(Some(digest)), before + 1, "{digest}");
    }
}

#[test]
fn moto_serves_a_bucket_and_stops_on_drop() {
    if !require_moto() {
        return;
    }
    for mode in [MotoMode::Serialized, MotoMode::Threaded] {
        let moto = Moto::start_with(mode).unwrap();
        let endpoint = moto.endpoint();
        // The bucket exists: an (unsigned) listing of it answers 200 with its name.
        let listing = http_get(&format!("{endpoint}/{}?list-type=2", moto.bucket()), HTTP).unwrap();
        assert_eq!(listing.status, 200, "{mode:?}");
        assert!(String::from_utf8_lossy(&listing.body).contains(moto.bucket()));
        let missing = http_get(&format!("{endpoint}/no-such-bucket?list-type=2"), HTTP).unwrap();
        assert_eq!(missing.status, 404, "{mode:?}");
        drop(moto);
        assert!(
            http_get(&format!("{endpoint}/"), HTTP).is_err(),
            "{mode:?}: still answering"
        );
    }
}

/// distribution with its `s3` driver on moto (the peer of the replicas benchmark): a pushed
/// image reads back byte for byte, and its blobs are objects in the bucket.
#[test]
fn distribution_stores_images_in_a_moto_bucket() {
    require_tools!("docker-registry", "skopeo");
    if !require_moto() {
        return;
    }
    let moto = Moto::start_with(MotoMode::Threaded).unwrap();
    let registry = Registry::start(RegistryOptions {
        s3: Some(S3Storage {
            endpoint: moto.endpoint(),
            bucket: moto.bucket().to_owned(),
            root: "/distribution".to_owned(),
        }),
        ..RegistryOptions::anonymous()
    })
    .unwrap();
    let image = seed_image(&registry.host(), "team/app:1", &small_spec(21), None).unwrap();
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}/team/app:1", registry.host()),
        ],
        SKOPEO,
    )
    .unwrap_or_else(|error| panic!("{error:#}\nlog:\n{}", registry.log()));
    assert_eq!(sha256(&raw), image.manifest_digest);
    let layer = big_layer(&image);
    let blob = http_get(
        &format!("{}/v2/team/app/blobs/{layer}", registry.url()),
        HTTP,
    )
    .unwrap();
    assert_eq!(blob.status, 200);
    assert_eq!(sha256(&blob.body), layer);
    // The blob is an object of the bucket, not a file of the registry's directory.
    let hex = layer.trim_start_matches("sha256:");
    let listing = http_get(
        &format!(
            "{}/{}?list-type=2&prefix=distribution/docker/registry/v2/blobs/sha256/{}/{hex}",
            moto.endpoint(),
            moto.bucket(),
            &hex[..2]
        ),
        HTTP,
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&listing.body).contains(hex),
        "{}",
        String::from_utf8_lossy(&listing.body)
    );
    #[allow(clippy::disallowed_methods)] // Looking at the peer's own directory.
    let empty = std::fs::read_dir(registry.storage_dir())
        .unwrap()
        .next()
        .is_none();
    assert!(empty, "nothing on the registry's disk");
}
