//! Corruption on disk is found by fsck and stops save; broken archives change nothing.

use crate::support::*;

/// The digest of the largest layer of `image` (for linux/amd64).
fn largest_layer(sealer: &Sealer, image: &str) -> String {
    let inspect = sealer.inspect(&[image, "--platform", "linux/amd64"]);
    inspect["manifest"]["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .max_by_key(|layer| layer["size"].as_u64())
        .and_then(|layer| layer["digest"].as_str())
        .expect("a layer")
        .to_owned()
}

#[test]
fn a_corrupt_blob_fails_fsck_and_save() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    assert!(sealer.ok(&["fsck"]).contains("store is consistent"));
    let layer = largest_layer(&sealer, SINGLE);
    flip_byte(&sealer.blob_path(&layer), 1000);

    let report = sealer.fails(&["fsck"]);
    assert!(
        report.contains(&format!("corrupt blob {layer}")),
        "{report}"
    );
    // Moved aside, so that the next load or pull fetches it again.
    let quarantined = sealer
        .root
        .join("quarantine")
        .join(format!("sha256-{}", &layer[7..]));
    assert!(
        report.contains(&format!("(moved to {};", quarantined.display())),
        "{report}"
    );
    assert!(quarantined.is_file() && !sealer.blob_path(&layer).exists());
    assert!(
        report.contains(&format!(
            "error: the store {} is inconsistent: corrupt {layer}",
            sealer.root.display()
        )),
        "{report}"
    );

    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).expect("mkdir");
    let output = out_dir.join("single.tar");
    for format in ["oci-archive", "docker-archive"] {
        let message = sealer.fails(&["save", "--format", format, "-o", arg(&output), SINGLE]);
        assert!(message.starts_with("error: saving to "), "{message}");
        assert!(message.contains(&layer[7..]), "{message}");
        assert_eq!(
            dir_names(&out_dir),
            Vec::<String>::new(),
            "a failed save left files"
        );
    }
    // The other image does not share the layer and still saves.
    sealer.ok(&["save", "-o", arg(&output), MULTI]);
    assert_eq!(dir_names(&out_dir), vec!["single.tar".to_owned()]);
}

#[test]
fn a_missing_blob_fails_fsck() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    let layer = largest_layer(&sealer, MULTI);
    std::fs::remove_file(sealer.blob_path(&layer)).expect("remove blob");
    let report = sealer.fails(&["fsck"]);
    assert!(
        report.contains(&format!("missing blob {layer}")),
        "{report}"
    );
    assert!(report.contains(&format!("missing {layer}")), "{report}");
}

/// A fixture archive (single + multi) and a target store holding another image.
fn setup_broken_archive_case(work: &std::path::Path) -> (std::path::PathBuf, String, Sealer) {
    let source = Sealer::new(work.join("source"));
    standard_images(&source.root);
    let archive = work.join("images.tar");
    source.ok(&["save", "-o", arg(&archive), SINGLE, MULTI]);
    let layer = largest_layer(&source, SINGLE);
    let target = Sealer::new(work.join("target"));
    build_image(
        &target.root,
        "localhost/already/here:1",
        &[amd64()],
        &[10_000],
        9,
    );
    (archive, layer, target)
}

#[test]
fn a_truncated_archive_changes_nothing() {
    let work = temp();
    let (archive, layer, target) = setup_broken_archive_case(work.path());
    let entry = format!("blobs/sha256/{}", &layer[7..]);
    let (offset, size) = tar_entry_span(&archive, &entry);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&archive)
        .expect("open");
    file.set_len(offset + size / 2).expect("truncate");
    drop(file);

    let (images, blobs) = (target.images(), target.blobs());
    let message = target.fails(&["load", "-i", arg(&archive)]);
    assert!(
        message.starts_with(&format!("error: loading archive {}", arg(&archive))),
        "{message}"
    );
    assert!(
        message.contains(&entry),
        "the message names the entry: {message}"
    );
    assert_eq!(target.images(), images);
    assert_eq!(target.blobs(), blobs);
    assert_eq!(dir_names(&target.root.join("ingest")), Vec::<String>::new());
    target.ok(&["fsck"]);
}

#[test]
fn an_archive_with_a_corrupt_entry_changes_nothing() {
    let work = temp();
    let (archive, layer, target) = setup_broken_archive_case(work.path());
    let entry = format!("blobs/sha256/{}", &layer[7..]);
    let (offset, size) = tar_entry_span(&archive, &entry);
    flip_byte(&archive, offset + size / 2);

    let (images, blobs) = (target.images(), target.blobs());
    let message = target.fails(&["load", "-i", arg(&archive)]);
    assert!(
        message.contains(&entry),
        "the message names the entry: {message}"
    );
    assert!(message.contains("digest mismatch"), "{message}");
    assert_eq!(target.images(), images);
    assert_eq!(target.blobs(), blobs);
    assert_eq!(dir_names(&target.root.join("ingest")), Vec::<String>::new());
    target.ok(&["fsck"]);
}

#[test]
fn not_an_archive_is_refused_clearly() {
    let work = temp();
    let target = Sealer::new(work.path().join("target"));
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, vec![0x5a; 4096]).expect("write");
    let message = target.fails(&["load", "-i", arg(&junk)]);
    assert!(
        message.starts_with(&format!("error: loading archive {}", arg(&junk))),
        "{message}"
    );
    let missing = work.path().join("missing.tar");
    let message = target.fails(&["load", "-i", arg(&missing)]);
    assert!(message.contains(arg(&missing)), "{message}");
    assert_eq!(target.images(), Vec::new());
}

/// `count` single-platform images that share their first layer (same seed); returns that
/// layer's digest.
fn images_sharing_a_layer(sealer: &Sealer, count: u64) -> String {
    for index in 0..count {
        build_image(
            &sealer.root,
            &format!("docker.io/library/shared{index}:1"),
            &[amd64()],
            &[20_000, 1_000 + index],
            7,
        );
    }
    let inspect = sealer.inspect(&["docker.io/library/shared0:1"]);
    inspect["manifest"]["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .to_owned()
}

#[test]
fn a_blob_missing_under_many_manifests_is_one_line() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let shared = images_sharing_a_layer(&sealer, 12);
    std::fs::remove_file(sealer.blob_path(&shared)).expect("remove blob");
    let report = sealer.fails(&["fsck"]);
    let lines: Vec<&str> = report
        .lines()
        .filter(|line| line.contains(&shared))
        .collect();
    // One report line, and the error summary naming the blob once.
    assert_eq!(lines.len(), 2, "{report}");
    assert!(
        lines[0].starts_with(&format!(
            "missing blob {shared}: needed by 12 manifests (sha256:"
        )),
        "{report}"
    );
    assert_eq!(lines[0].matches("sha256:").count(), 1 + 3, "{report}");
    assert!(lines[0].ends_with(", …)"), "{report}");
    assert_eq!(
        report.matches(&format!("missing {shared}")).count(),
        1,
        "{report}"
    );
}
