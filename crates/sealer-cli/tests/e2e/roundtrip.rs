//! save → load into an empty store gives back the same images.

use crate::support::*;

#[test]
fn oci_archive_round_trip_keeps_every_digest() {
    let work = temp();
    let source = Sealer::new(work.path().join("source"));
    standard_images(&source.root);
    source.ok(&["tag", MULTI, "quay.io/team/multi:stable"]);
    let archive = work.path().join("all.tar");
    source.ok(&[
        "save",
        "-o",
        arg(&archive),
        SINGLE,
        MULTI,
        "quay.io/team/multi:stable",
    ]);

    let target = Sealer::new(work.path().join("target"));
    target.ok(&["load", "-i", arg(&archive)]);
    assert_eq!(target.images(), source.images());
    assert_eq!(target.blobs(), source.blobs());
    let fsck = target.ok(&["fsck"]);
    assert!(fsck.contains("store is consistent"), "{fsck}");
    for platform in ["linux/amd64", "linux/arm64"] {
        assert_eq!(
            target.inspect(&[MULTI, "--platform", platform]),
            source.inspect(&[MULTI, "--platform", platform])
        );
    }
}

#[test]
fn docker_archive_round_trip_keeps_config_and_layers() {
    let work = temp();
    let source = Sealer::new(work.path().join("source"));
    standard_images(&source.root);
    let archive = work.path().join("docker.tar");
    source.ok(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        arg(&archive),
        SINGLE,
    ]);

    let target = Sealer::new(work.path().join("target"));
    target.ok(&["load", "-i", arg(&archive)]);
    let before = source.inspect(&[SINGLE]);
    let after = target.inspect(&[SINGLE]);
    // docker-archive carries configs and uncompressed layers, not manifests.
    assert_eq!(after["config"], before["config"]);
    assert_eq!(
        after["manifest"]["config"]["digest"],
        before["manifest"]["config"]["digest"]
    );
    assert_eq!(
        after["manifest"]["layers"].as_array().map(Vec::len),
        before["manifest"]["layers"].as_array().map(Vec::len)
    );
    target.ok(&["fsck"]);
}
