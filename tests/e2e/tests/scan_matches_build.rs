//! `sealer scan CONTEXT` lists exactly what `sealer build CONTEXT` pulls and carries (issue
//! 12), for every example under examples/: each is rendered with the addresses of loopback
//! docker-registry instances, scanned, the images it names are seeded, and the built cluster
//! image's carried list (its `sealer.image.container.images` annotation) must equal the
//! scan's list, with the scan's "to pull" matching what the store lacked.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::BTreeSet;
use std::path::Path;

use sealer_e2e::{render_example, run_sealer, workspace_root};
use sealer_test_harness::{ImageSpec, Registry, RegistryOptions, require_tools, seed_image};
use serde_json::Value;

/// `(reference, present)` of every image `sealer scan --json` plans for the one platform.
fn planned(root: &Path, context: &Path) -> Vec<(String, bool)> {
    let out = run_sealer(root, &["scan", "--json", context.to_str().unwrap()]).unwrap();
    let plan: Value = serde_json::from_str(&out).unwrap();
    let platforms = plan["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 1, "{plan:#}");
    platforms[0]["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            (
                image["reference"].as_str().unwrap().to_owned(),
                image["present"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The images the cluster image `name` carries, by its manifest annotation.
fn carried(root: &Path, name: &str) -> BTreeSet<String> {
    let inspected: Value = serde_json::from_str(&run_sealer(root, &["inspect", name]).unwrap())
        .expect("inspect prints JSON");
    let listed = inspected["manifest"]["annotations"]["sealer.image.container.images"]
        .as_str()
        .unwrap_or("[]");
    let listed: Vec<Value> = serde_json::from_str(listed).unwrap();
    listed
        .iter()
        .map(|entry| entry["image"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn scan_lists_exactly_what_build_carries_for_every_example() {
    require_tools!("docker-registry", "skopeo");
    let upstream_a = Registry::start(RegistryOptions::anonymous()).unwrap();
    let upstream_b = Registry::start(RegistryOptions::anonymous()).unwrap();
    // Images of public registries (docker.io/library/…) are seeded here, pulled under this
    // host and tagged with their public name: the build finds them in the store.
    let stand_in = Registry::start(RegistryOptions::anonymous()).unwrap();
    let replacements = [
        ("upstream-a.invalid", upstream_a.host()),
        ("upstream-b.invalid", upstream_b.host()),
    ];
    let mut examples: Vec<_> = std::fs::read_dir(workspace_root().join("examples"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.join("Kubefile").is_file())
        .collect();
    examples.sort();
    assert!(examples.len() >= 3, "examples: {examples:?}");
    let work = tempfile::tempdir().unwrap();
    for (number, example) in examples.iter().enumerate() {
        let name = example.file_name().unwrap().to_str().unwrap();
        let context = work.path().join(name);
        render_example(example, &context, &replacements).unwrap();
        let root = work.path().join(format!("{name}-store"));

        let plan = planned(&root, &context);
        assert!(!plan.is_empty(), "{name}: the scan found no image");
        assert!(
            plan.iter().all(|(_, present)| !present),
            "{name}: an empty store holds nothing: {plan:?}"
        );
        let mut pulled_by_build = BTreeSet::new();
        for (index, (reference, _)) in plan.iter().enumerate() {
            let (host, path) = reference.split_once('/').unwrap();
            let spec = ImageSpec::new("unused:1", &[3_000], (number * 100 + index) as u64);
            if host == upstream_a.host() || host == upstream_b.host() {
                // The build pulls it from there.
                seed_image(host, path, &spec, None).unwrap();
                pulled_by_build.insert(reference.clone());
            } else {
                seed_image(&stand_in.host(), path, &spec, None).unwrap();
                let local = format!("{}/{path}", stand_in.host());
                run_sealer(&root, &["pull", &local]).unwrap();
                run_sealer(&root, &["tag", &local, reference]).unwrap();
            }
        }
        // The store now holds the public ones: the scan says which the build still pulls.
        let plan_before_build = planned(&root, &context);
        let to_pull: BTreeSet<String> = plan_before_build
            .iter()
            .filter(|(_, present)| !present)
            .map(|(reference, _)| reference.clone())
            .collect();
        assert_eq!(to_pull, pulled_by_build, "{name}");

        let cluster = format!("localhost/examples/{name}:1");
        run_sealer(&root, &["build", "-t", &cluster, context.to_str().unwrap()]).unwrap();
        let listed: BTreeSet<String> = plan
            .iter()
            .map(|(reference, _)| reference.clone())
            .collect();
        assert_eq!(
            carried(&root, &cluster),
            listed,
            "{name}: scan and build differ"
        );
        // Everything is in the store now.
        assert!(
            planned(&root, &context).iter().all(|(_, present)| *present),
            "{name}"
        );
    }
}
