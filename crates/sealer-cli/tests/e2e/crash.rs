//! `kill -9` in the middle of a large load leaves the store consistent and as it was.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::support::*;

const BIG: &str = "localhost/big:1";

/// The largest staged file under `ingest/*/`, in bytes.
fn staged_bytes(root: &std::path::Path) -> u64 {
    let Ok(dirs) = std::fs::read_dir(root.join("ingest")) else {
        return 0;
    };
    let mut largest = 0;
    for dir in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(dir.path()) {
            for file in files.flatten() {
                largest = largest.max(file.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    largest
}

#[test]
fn kill_9_during_a_large_load_leaves_the_store_clean() {
    let work = temp();
    let source = Sealer::new(work.path().join("source"));
    let big = build_big_image(&source.root, BIG, 300 << 20);
    let archive = work.path().join("big.tar");
    source.ok(&["save", "-o", arg(&archive), BIG]);

    let target = Sealer::new(work.path().join("target"));
    build_image(
        &target.root,
        "localhost/small:1",
        &[amd64()],
        &[10_000, 20_000],
        5,
    );
    let (images, blobs) = (target.images(), target.blobs());

    let mut child = target
        .command(&["load", "-i", arg(&archive)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start sealer load");
    // Kill once the big layer is being staged (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(60);
    while staged_bytes(&target.root) < 8 << 20 {
        assert!(Instant::now() < deadline, "the load never started staging");
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the load ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "killed by SIGKILL, not finished: {status}"
    );

    let fsck = target.ok(&["fsck"]);
    assert!(fsck.contains("store is consistent"), "{fsck}");
    assert!(fsck.contains("leftovers of interrupted writes"), "{fsck}");
    assert_eq!(target.images(), images);
    assert_eq!(target.blobs(), blobs);

    // A new load succeeds; prune then removes the dead load's staging directory.
    let out = target.ok(&["load", "-i", arg(&archive)]);
    assert!(
        out.contains(&format!("Loaded image {BIG} ({big})")),
        "{out}"
    );
    let out = target.ok(&["prune"]);
    assert!(out.contains("Removed 0 blobs"), "{out}");
    assert!(out.contains(", 1 leftovers of interrupted writes"), "{out}");
    assert_eq!(dir_names(&target.root.join("ingest")), Vec::<String>::new());
    let fsck = target.ok(&["fsck"]);
    assert!(fsck.contains("store is consistent"), "{fsck}");
    assert!(!fsck.contains("leftovers"), "{fsck}");
    assert_eq!(target.digest_of(BIG), big);
}
