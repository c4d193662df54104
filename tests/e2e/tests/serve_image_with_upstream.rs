//! `sealer registry serve --image` with an upstream configured: the images the cluster image
//! carries are pinned (served as built, their tags never asked upstream, even when the
//! upstream's tag moved on), and what the cluster image lacks is proxied from the upstream.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Duration;

use sealer_e2e::{Served, run_sealer};
use sealer_image_store::Digest;
use sealer_test_harness::{
    ImageSpec, Registry, RegistryOptions, require_tools, run_ok, seed_image,
};

fn skopeo_raw_digest(reference: &str) -> String {
    let raw = run_ok(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", reference],
        Duration::from_secs(120),
    )
    .unwrap();
    Digest::sha256(&raw).to_string()
}

#[test]
fn carried_images_are_pinned_and_missing_ones_are_proxied() {
    require_tools!("docker-registry", "skopeo");
    let work = tempfile::tempdir().unwrap();
    let upstream = Registry::start(RegistryOptions::anonymous()).unwrap();
    let host = upstream.host();
    let built_with = seed_image(
        &host,
        "team/web:1.0",
        &ImageSpec::new("unused:1", &[40_000], 21),
        None,
    )
    .unwrap();
    let other = seed_image(
        &host,
        "team/extra:2",
        &ImageSpec::new("unused:1", &[30_000], 22),
        None,
    )
    .unwrap();

    let context = work.path().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(
        context.join("Kubefile"),
        "FROM scratch\nCOPY imageList /imageList\n",
    )
    .unwrap();
    std::fs::write(context.join("imageList"), format!("{host}/team/web:1.0\n")).unwrap();
    let root = work.path().join("store");
    run_sealer(
        &root,
        &[
            "build",
            "-t",
            "localhost/pinned:v1",
            context.to_str().unwrap(),
        ],
    )
    .unwrap();

    // The upstream's tag moves on after the build.
    let moved = seed_image(
        &host,
        "team/web:1.0",
        &ImageSpec::new("unused:1", &[40_000], 23),
        None,
    )
    .unwrap();
    assert_ne!(moved.manifest_digest, built_with.manifest_digest);

    let config = work.path().join("registry.yaml");
    std::fs::write(
        &config,
        format!("upstreams:\n  - name: lan\n    url: http://{host}\n"),
    )
    .unwrap();
    let server = Served::start(
        &root,
        &[
            "--config",
            config.to_str().unwrap(),
            "--image",
            "localhost/pinned:v1",
        ],
        &work.path().join("serve.log"),
    )
    .unwrap();
    let prefix = format!("{}/{}", server.host(), host.replace(':', "_"));
    let manifest_requests = |repository: &str| {
        upstream.count("GET", |path| {
            path.starts_with(&format!("/v2/{repository}/manifests/"))
        }) + upstream.count("HEAD", |path| {
            path.starts_with(&format!("/v2/{repository}/manifests/"))
        })
    };
    let before = manifest_requests("team/web");
    let before_extra = manifest_requests("team/extra");

    // Carried: the version the cluster image was built with, and no upstream question.
    assert_eq!(
        skopeo_raw_digest(&format!("docker://{prefix}/team/web:1.0")),
        built_with.manifest_digest
    );
    assert_eq!(
        manifest_requests("team/web"),
        before,
        "a pinned tag asked upstream"
    );

    // Not carried: proxied from the upstream.
    assert_eq!(
        skopeo_raw_digest(&format!("docker://{prefix}/team/extra:2")),
        other.manifest_digest
    );
    assert!(
        manifest_requests("team/extra") > before_extra,
        "a missing image was not proxied"
    );
    assert!(
        server.log().contains("serving a carried image"),
        "{}",
        server.log()
    );
}
