//! Output into a pipe whose reader left early (`sealer fsck | head -1`): a quiet exit,
//! never a panic.

use std::process::Stdio;

use crate::support::*;

#[test]
fn commands_writing_into_a_closed_pipe_exit_quietly() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    for index in 0..40 {
        build_image(
            &sealer.root,
            &format!("docker.io/library/many{index}:1"),
            &[amd64()],
            &[2_000, 100 + index],
            3,
        );
    }
    let layer = sealer.inspect(&["docker.io/library/many0:1"])["manifest"]["layers"][0]["digest"]
        .as_str()
        .expect("a layer")
        .to_owned();
    // An inconsistent store: fsck has a report and an error to give.
    std::fs::remove_file(sealer.blob_path(&layer)).expect("remove blob");
    let missing = Sealer::new(work.path().join("no-store"));
    let cases: [(&Sealer, &[&str]); 5] = [
        (&sealer, &["fsck"]),
        (&sealer, &["images"]),
        (&sealer, &["images", "--json"]),
        (&sealer, &["inspect", "docker.io/library/many1:1"]),
        // Only an error to report, on stderr.
        (&missing, &["fsck"]),
    ];
    for (sealer, args) in cases {
        // stdout closed (`| head -1`): stderr is read for a panic message.
        let mut child = sealer
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sealer");
        // The reader is gone before sealer writes its first line.
        drop(child.stdout.take());
        let output = child.wait_with_output().expect("wait for sealer");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        assert!(
            matches!(output.status.code(), Some(0 | 1 | 141)),
            "{args:?}: {:?} {stderr}",
            output.status
        );
        // Both closed (`2>&1 | head -1`), and stderr alone closed.
        for close_stdout in [true, false] {
            let mut child = sealer
                .command(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start sealer");
            drop(child.stderr.take());
            if close_stdout {
                drop(child.stdout.take());
            }
            let output = child.wait_with_output().expect("wait for sealer");
            assert!(
                matches!(output.status.code(), Some(0 | 1 | 141)),
                "{args:?} (stdout closed: {close_stdout}): {:?}",
                output.status
            );
        }
    }
}
