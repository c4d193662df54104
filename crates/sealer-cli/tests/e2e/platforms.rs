//! A platform a partial multi-arch image lists but does not carry: commands that resolve a
//! platform say which platforms it carries.

use crate::support::*;

#[test]
fn commands_name_the_carried_platforms_of_a_partial_image() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    let inspect = sealer.inspect(&[MULTI]);
    let arm64 = inspect["platforms"]
        .as_array()
        .expect("platforms")
        .iter()
        .find(|entry| entry["platform"] == "linux/arm64")
        .expect("an arm64 entry")["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    // What a pull for one platform (or a cluster image's registry/) leaves: no arm64.
    std::fs::remove_file(sealer.blob_path(&arm64)).expect("remove the arm64 manifest");
    let carried = "lists linux/arm64 but does not carry it";
    for args in [
        &["inspect", "--platform", "linux/arm64", MULTI][..],
        &[
            "save",
            "--format",
            "docker-archive",
            "--platform",
            "linux/arm64",
            "-o",
            arg(&work.path().join("a.tar")),
            MULTI,
        ][..],
    ] {
        let message = sealer.fails(args);
        assert!(
            message.contains(carried) && message.contains("it carries: linux/amd64"),
            "{args:?}: {message}"
        );
    }
    // The platform it has still resolves.
    let inspect = sealer.inspect(&["--platform", "linux/amd64", MULTI]);
    assert_eq!(inspect["config"]["architecture"], "amd64");
}
