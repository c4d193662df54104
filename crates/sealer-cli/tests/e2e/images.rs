//! `sealer images` as docker users expect it: `-q`, `--format`, a repository filter, sorted
//! output, cluster images apart from the images they carry.

use crate::support::*;

/// A store with a cluster image carrying `single:1`, `multi:1` (carried by nobody) and
/// `aaa:1` (written last, listed first among the others).
fn store_with_a_cluster_image() -> (tempfile::TempDir, Sealer) {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    build_image(
        &sealer.root,
        "docker.io/library/aaa:1",
        &[amd64()],
        &[1_000],
        9,
    );
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(
        context.join("pod.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  \
             - name: x\n    image: {SINGLE}\n"
        ),
    )
    .expect("write");
    std::fs::write(
        context.join("Kubefile"),
        "FROM scratch\nCOPY pod.yaml manifests/\n",
    )
    .expect("write");
    sealer.ok(&[
        "build",
        "--platform",
        "linux/amd64",
        "-t",
        "localhost/cluster:1",
        arg(&context),
    ]);
    (work, sealer)
}

#[test]
fn images_are_grouped_sorted_and_filtered() {
    let (_work, sealer) = store_with_a_cluster_image();
    let table = sealer.ok(&["images"]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["REPOSITORY", "TAG", "DIGEST", "PLATFORMS", "SIZE", "KIND"],
        "{table}"
    );
    let listed: Vec<(&str, &str)> = rows[1..]
        .iter()
        .map(|row| (row[0], *row.last().expect("a kind")))
        .collect();
    assert_eq!(
        listed,
        [
            ("localhost/cluster", "cluster"),
            ("docker.io/library/single", "dependency"),
            ("docker.io/library/aaa", "other"),
            ("docker.io/library/multi", "other"),
        ],
        "{table}"
    );

    // -q: one short id per image.
    let ids = sealer.ok(&["images", "-q"]);
    let ids: Vec<&str> = ids.lines().collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[1], &sealer.digest_of(SINGLE)[7..19]);
    let full = sealer.ok(&["images", "-q", "--digests"]);
    assert!(
        full.lines().all(|line| line.starts_with("sha256:")),
        "{full}"
    );

    // The filter: a repository (normalised as a reference is), or one tag of it.
    let only = sealer.ok(&["images", "-q", "single"]);
    assert_eq!(only.trim(), &sealer.digest_of(SINGLE)[7..19]);
    assert_eq!(sealer.ok(&["images", "-q", "multi:2"]), "");
    assert_eq!(
        sealer.ok(&["images", "--format", "{{.Tag}}", "multi:1"]),
        "1\n"
    );
}

#[test]
fn images_format_json_table_and_templates() {
    let (_work, sealer) = store_with_a_cluster_image();
    let json: serde_json::Value =
        serde_json::from_str(&sealer.ok(&["images", "--format", "json"])).expect("json");
    let kinds: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|image| image["kind"].as_str().expect("kind"))
        .collect();
    assert_eq!(kinds, ["cluster", "dependency", "other", "other"]);
    assert_eq!(json[0]["repository"], "localhost/cluster");
    assert_eq!(json[0]["tag"], "1");

    assert_eq!(
        sealer.ok(&["images", "--format", "table"]),
        sealer.ok(&["images"])
    );
    let lines = sealer.ok(&["images", "--format", "{{.Repository}}:{{ .Tag }} {{.Kind}}"]);
    assert_eq!(
        lines,
        "localhost/cluster:1 cluster\ndocker.io/library/single:1 dependency\n\
         docker.io/library/aaa:1 other\ndocker.io/library/multi:1 other\n"
    );
    let table = sealer.ok(&["images", "--format", r"table {{.Repository}}\t{{.ID}}"]);
    let first: Vec<&str> = table.lines().take(2).collect();
    assert_eq!(first[0], "REPOSITORY\tID");
    assert!(first[1].starts_with("localhost/cluster\t"), "{table}");

    let message = sealer.fails(&["images", "--format", "{{.Nope}}"]);
    assert!(
        message.contains("unknown field") && message.contains(".Repository"),
        "{message}"
    );
}
