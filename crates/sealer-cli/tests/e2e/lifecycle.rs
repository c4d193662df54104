//! tag, rmi and prune: names come and go, content goes only when nothing needs it.

use std::collections::BTreeSet;

use crate::support::*;
use sealer_image_store::Store;

/// Every blob `image` needs (manifests, configs, layers; all platforms).
fn blobs_of(sealer: &Sealer, image: &str) -> BTreeSet<String> {
    let mut blobs = BTreeSet::new();
    let top = sealer.inspect(&[image]);
    blobs.insert(hex(&top["digest"]));
    let platforms: Vec<String> = match top["platforms"].as_array() {
        Some(entries) => entries
            .iter()
            .map(|entry| entry["platform"].as_str().expect("platform").to_owned())
            .collect(),
        None => vec!["linux/amd64".to_owned()],
    };
    for platform in platforms {
        let resolved = sealer.inspect(&[image, "--platform", &platform]);
        blobs.insert(hex(&resolved["manifestDigest"]));
        blobs.insert(hex(&resolved["manifest"]["config"]["digest"]));
        for layer in resolved["manifest"]["layers"].as_array().expect("layers") {
            blobs.insert(hex(&layer["digest"]));
        }
    }
    blobs
}

fn hex(digest: &serde_json::Value) -> String {
    digest.as_str().expect("digest")[7..].to_owned()
}

#[test]
fn rmi_and_prune_remove_only_unshared_content() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    // Same seed: the two images share their first layer.
    let a = build_image(
        &sealer.root,
        "localhost/a:1",
        &[amd64()],
        &[40_000, 5_000],
        7,
    );
    build_image(
        &sealer.root,
        "localhost/b:1",
        &[amd64(), arm64()],
        &[40_000, 9_000],
        7,
    );
    let (blobs_a, blobs_b) = (
        blobs_of(&sealer, "localhost/a:1"),
        blobs_of(&sealer, "localhost/b:1"),
    );
    assert_eq!(
        blobs_a.intersection(&blobs_b).count(),
        1,
        "one shared layer"
    );
    let all: BTreeSet<String> = sealer.blobs().into_iter().collect();
    assert_eq!(all, &blobs_a | &blobs_b);

    // tag by short id, then rmi the new name: the original stays.
    let out = sealer.ok(&["tag", &a[7..19], "localhost/a:alias"]);
    assert!(
        out.contains(&format!("Tagged localhost/a:alias ({a})")),
        "{out}"
    );
    assert_eq!(sealer.digest_of("localhost/a:alias"), a);
    let out = sealer.ok(&["rmi", "localhost/a:alias"]);
    assert!(
        out.contains(&format!("Untagged localhost/a:alias ({a})")),
        "{out}"
    );
    assert_eq!(sealer.digest_of("localhost/a:1"), a);
    assert!(sealer.ok(&["prune"]).contains("Removed 0 blobs"));
    assert_eq!(sealer.blobs().len(), all.len());

    // rmi by name removes the name; the content stays until prune.
    sealer.ok(&["rmi", "localhost/a:1"]);
    assert_eq!(sealer.images().len(), 1);
    assert_eq!(sealer.blobs().len(), all.len());
    let removed = blobs_a.difference(&blobs_b).count();
    let out = sealer.ok(&["prune"]);
    assert!(out.contains(&format!("Removed {removed} blobs")), "{out}");
    let left: BTreeSet<String> = sealer.blobs().into_iter().collect();
    assert_eq!(
        left, blobs_b,
        "exactly b's blobs survive, the shared layer included"
    );
    assert!(sealer.ok(&["fsck"]).contains("store is consistent"));
    sealer.ok(&[
        "save",
        "-o",
        arg(&work.path().join("b.tar")),
        "localhost/b:1",
    ]);

    // rmi by digest removes every name of the image.
    let b = sealer.digest_of("localhost/b:1");
    sealer.ok(&["tag", "localhost/b:1", "localhost/b:2"]);
    let out = sealer.ok(&["rmi", &b]);
    assert!(out.contains("Untagged localhost/b:1"), "{out}");
    assert!(out.contains("Untagged localhost/b:2"), "{out}");
    assert_eq!(sealer.images(), Vec::new());
    sealer.ok(&["prune"]);
    assert_eq!(sealer.blobs(), Vec::<String>::new());
}

#[test]
fn errors_say_what_and_exit_1() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    // Read-only commands never create a store: a mistyped --root is an error.
    let message = sealer.fails(&["images"]);
    assert!(
        message.starts_with("error: opening the image store"),
        "{message}"
    );
    assert!(dir_names(work.path()).is_empty(), "a store was created");
    Store::open_dir(&sealer.root).unwrap();
    let message = sealer.fails(&["inspect", "localhost/nope:1"]);
    assert!(
        message.starts_with("error: image \"localhost/nope:1\" is not in the store"),
        "{message}"
    );
    let message = sealer.fails(&["rmi", "localhost/nope:1"]);
    assert!(
        message.starts_with("error: removing localhost/nope:1: "),
        "{message}"
    );
    let message = sealer.fails(&["tag", "localhost/nope:1", "x"]);
    assert!(message.contains("localhost/nope:1"), "{message}");
    // A save that fails leaves nothing at the destination.
    let output = work.path().join("x.tar");
    sealer.fails(&["save", "-o", arg(&output), "localhost/nope:1"]);
    assert_eq!(dir_names(work.path()), vec!["store".to_owned()]);
}

#[test]
fn images_table_lists_short_digests_platforms_and_sizes() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let (single, multi) = standard_images(&sealer.root);
    let table = sealer.ok(&["images"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("REPOSITORY"), "{table}");
    let row = |digest: &str| {
        lines
            .iter()
            .find(|line| line.contains(&digest[7..19]))
            .unwrap_or_else(|| panic!("{digest} not in\n{table}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        &row(&single)[..4],
        &[
            "docker.io/library/single",
            "1",
            &single[7..19],
            "linux/amd64"
        ]
    );
    assert_eq!(
        &row(&multi)[..4],
        &[
            "docker.io/library/multi",
            "1",
            &multi[7..19],
            "linux/amd64,linux/arm64"
        ]
    );
    assert!(sealer.ok(&["images", "--digests"]).contains(&single));
}

#[test]
fn prune_keeps_blobs_a_registry_just_received_unless_keep_fresh_is_0() {
    use sealer_image_store::{BlobStore, Digest};

    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let store = Store::open_dir(&sealer.root).expect("store");
    let put = |data: &[u8]| {
        let digest = Digest::sha256(data);
        store
            .blobs()
            .put(&digest, None, &mut &data[..])
            .expect("put");
        digest
    };
    // As `sealer registry serve` does for an uploaded layer whose manifest is to come.
    let uploaded = put(b"a layer pushed a moment ago");
    assert!(store.hold_fresh(&uploaded).expect("hold"));
    put(b"a blob nothing holds");

    let out = sealer.ok(&["prune"]);
    assert!(out.contains("Removed 1 blobs"), "{out}");
    assert!(out.contains("Kept 1 unreferenced blobs"), "{out}");
    assert_eq!(sealer.blobs(), vec![uploaded.hex().to_owned()]);

    let refused = sealer.run(&["prune", "--keep-fresh", "soon"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("invalid duration"));

    let out = sealer.ok(&["prune", "--keep-fresh", "0"]);
    assert!(out.contains("Removed 1 blobs"), "{out}");
    assert!(sealer.blobs().is_empty());
}
