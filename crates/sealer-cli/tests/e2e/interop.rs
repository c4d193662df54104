//! Images skopeo writes load; archives sealer writes are read by skopeo with the same
//! digests; the store itself is an OCI layout skopeo and umoci read.

use crate::require_tools;
use crate::support::*;

/// skopeo-written `oci:` directories, single and multi-arch (`copy --all`), load.
#[test]
fn skopeo_oci_layouts_load() {
    require_tools!("skopeo");
    let work = temp();
    let fixtures = work.path().join("fixtures");
    standard_images(&fixtures);
    let single_dir = work.path().join("single-layout");
    let multi_dir = work.path().join("multi-layout");
    let source = |name: &str| format!("oci:{}:{name}", arg(&fixtures));
    // The usual `oci:DIR:TAG` form: the layout names the image by a bare tag.
    skopeo(&[
        "copy",
        &source(SINGLE),
        &format!("oci:{}:v1", arg(&single_dir)),
    ]);
    skopeo(&[
        "copy",
        "--all",
        &source(MULTI),
        &format!("oci:{}:{MULTI}", arg(&multi_dir)),
    ]);
    let single_digest = sha256(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:v1", arg(&single_dir)),
    ]));
    let multi_digest = sha256(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:{MULTI}", arg(&multi_dir)),
    ]));

    let sealer = Sealer::new(work.path().join("store"));
    let out = sealer.ok(&[
        "load",
        "-i",
        arg(&single_dir),
        "--name",
        "localhost/e2e/single:v1",
    ]);
    assert!(
        out.contains(&format!(
            "Loaded image localhost/e2e/single:v1 ({single_digest})"
        )),
        "{out}"
    );
    let out = sealer.ok(&["load", "-i", arg(&multi_dir)]);
    assert!(
        out.contains(&format!("Loaded image {MULTI} ({multi_digest})")),
        "{out}"
    );

    assert_eq!(
        sealer.images(),
        vec![
            (Some(MULTI.to_owned()), multi_digest.clone()),
            (
                Some("localhost/e2e/single:v1".to_owned()),
                single_digest.clone()
            ),
        ]
    );
    let table = sealer.ok(&["images"]);
    assert!(table.contains("linux/amd64,linux/arm64"), "{table}");
    let inspect = sealer.inspect(&[MULTI, "--platform", "linux/arm64"]);
    assert_eq!(inspect["digest"], multi_digest.as_str());
    assert_eq!(inspect["config"]["architecture"], "arm64");
    assert_eq!(inspect["platforms"].as_array().map(Vec::len), Some(2));
    sealer.ok(&["fsck"]);
}

/// skopeo-written `oci-archive:` files (single, and multi-arch with `--all`) and their
/// gzip-compressed forms load.
#[test]
fn skopeo_oci_archives_load() {
    require_tools!("skopeo");
    let work = temp();
    let fixtures = work.path().join("fixtures");
    let (single_digest, multi_digest) = standard_images(&fixtures);
    let source = |name: &str| format!("oci:{}:{name}", arg(&fixtures));
    let single_tar = work.path().join("single.tar");
    let multi_tar = work.path().join("multi.tar");
    skopeo(&[
        "copy",
        &source(SINGLE),
        &format!("oci-archive:{}:{SINGLE}", arg(&single_tar)),
    ]);
    skopeo(&[
        "copy",
        "--all",
        &source(MULTI),
        &format!("oci-archive:{}:{MULTI}", arg(&multi_tar)),
    ]);
    // skopeo keeps the manifests byte-exact when nothing needs converting.
    let raw = |tar: &std::path::Path, name: &str| {
        sha256(&skopeo(&[
            "inspect",
            "--raw",
            &format!("oci-archive:{}:{name}", arg(tar)),
        ]))
    };
    assert_eq!(raw(&single_tar, SINGLE), single_digest);
    assert_eq!(raw(&multi_tar, MULTI), multi_digest);

    let sealer = Sealer::new(work.path().join("store"));
    let out = sealer.ok(&["load", "-i", arg(&single_tar)]);
    assert!(
        out.contains(&format!("Loaded image {SINGLE} ({single_digest})")),
        "{out}"
    );
    let out = sealer.ok(&["load", "-i", arg(&multi_tar)]);
    assert!(
        out.contains(&format!("Loaded image {MULTI} ({multi_digest})")),
        "{out}"
    );
    assert_eq!(
        sealer.images(),
        vec![
            (Some(MULTI.to_owned()), multi_digest.clone()),
            (Some(SINGLE.to_owned()), single_digest.clone()),
        ]
    );
    let inspect = sealer.inspect(&[SINGLE]);
    assert_eq!(inspect["manifestDigest"], single_digest.as_str());

    // The same archive gzip-compressed, into another store.
    let gzipped = work.path().join("multi.tar.gz");
    gzip(&multi_tar, &gzipped);
    let other = Sealer::new(work.path().join("store-gz"));
    let out = other.ok(&["load", "-i", arg(&gzipped)]);
    assert!(
        out.contains(&format!("Loaded image {MULTI} ({multi_digest})")),
        "{out}"
    );
    other.ok(&["fsck"]);
}

/// skopeo-written `docker-archive:` files load with the config and layers skopeo reports.
#[test]
fn skopeo_docker_archives_load() {
    require_tools!("skopeo");
    let work = temp();
    let fixtures = work.path().join("fixtures");
    standard_images(&fixtures);
    let archive = work.path().join("docker.tar");
    let name = "localhost:5000/team/app:2.0";
    skopeo(&[
        "copy",
        &format!("oci:{}:{SINGLE}", arg(&fixtures)),
        &format!("docker-archive:{}:{name}", arg(&archive)),
    ]);
    let location = format!("docker-archive:{}", arg(&archive));
    let config_digest = sha256(&skopeo(&["inspect", "--config", "--raw", &location]));
    let layers = skopeo_inspect(&[&location])["Layers"].clone();

    let sealer = Sealer::new(work.path().join("store"));
    let out = sealer.ok(&["load", "-i", arg(&archive)]);
    assert!(out.contains(&format!("Loaded image {name} (")), "{out}");
    let inspect = sealer.inspect(&[name]);
    assert_eq!(
        inspect["manifest"]["config"]["digest"],
        config_digest.as_str()
    );
    assert_eq!(inspect["config"]["rootfs"]["diff_ids"], layers);
    assert_eq!(inspect["config"]["architecture"], "amd64");
    sealer.ok(&["fsck"]);

    // --name renames the single image of an archive.
    let renamed = Sealer::new(work.path().join("store-renamed"));
    let out = renamed.ok(&["load", "-i", arg(&archive), "--name", "example.com/x/y:z"]);
    assert!(out.contains("Loaded image example.com/x/y:z ("), "{out}");
}

/// `sealer save` (oci-archive) output: skopeo sees the store's manifest and index digests,
/// and copies from it.
#[test]
fn skopeo_reads_sealer_oci_archives() {
    require_tools!("skopeo");
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let (single_digest, multi_digest) = standard_images(&sealer.root);
    let archive = work.path().join("out.tar");
    let out = sealer.ok(&["save", "-o", arg(&archive), SINGLE, MULTI]);
    assert!(
        out.contains(&format!("Saved image {SINGLE} ({single_digest})")),
        "{out}"
    );

    let location = |name: &str| format!("oci-archive:{}:{name}", arg(&archive));
    assert_eq!(
        sha256(&skopeo(&["inspect", "--raw", &location(SINGLE)])),
        single_digest
    );
    assert_eq!(
        skopeo_inspect(&[&location(SINGLE)])["Digest"],
        single_digest.as_str()
    );
    assert_eq!(
        sha256(&skopeo(&["inspect", "--raw", &location(MULTI)])),
        multi_digest
    );
    assert_eq!(
        skopeo_inspect(&[&location(MULTI)])["Digest"],
        multi_digest.as_str()
    );

    let copied = work.path().join("copied");
    skopeo(&[
        "copy",
        &location(SINGLE),
        &format!("oci:{}:x", arg(&copied)),
    ]);
    assert_eq!(
        sha256(&skopeo(&[
            "inspect",
            "--raw",
            &format!("oci:{}:x", arg(&copied))
        ])),
        single_digest
    );
    skopeo(&[
        "copy",
        "--all",
        &location(MULTI),
        &format!("oci:{}:m", arg(&copied)),
    ]);
    assert_eq!(
        sha256(&skopeo(&[
            "inspect",
            "--raw",
            &format!("oci:{}:m", arg(&copied))
        ])),
        multi_digest
    );
}

/// `sealer save --format docker-archive`: skopeo sees the same config and layer diff ids,
/// and copies from it; `--platform` picks a multi-arch image's variant.
#[test]
fn skopeo_reads_sealer_docker_archives() {
    require_tools!("skopeo");
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    standard_images(&sealer.root);
    for (image, platform) in [(SINGLE, None), (MULTI, Some("linux/arm64"))] {
        let archive = work
            .path()
            .join(format!("{}.tar", image.replace(['/', ':'], "_")));
        let mut args = vec!["save", "--format", "docker-archive", "-o", arg(&archive)];
        let mut inspect_args = vec![image];
        if let Some(platform) = platform {
            args.extend(["--platform", platform]);
            inspect_args.extend(["--platform", platform]);
        }
        args.push(image);
        sealer.ok(&args);
        let expected = sealer.inspect(&inspect_args);

        let location = format!("docker-archive:{}", arg(&archive));
        let config_digest = sha256(&skopeo(&["inspect", "--config", "--raw", &location]));
        assert_eq!(
            expected["manifest"]["config"]["digest"],
            config_digest.as_str()
        );
        let inspected = skopeo_inspect(&[&location]);
        assert_eq!(
            inspected["Layers"],
            expected["config"]["rootfs"]["diff_ids"]
        );
        // The archive names the image: skopeo finds it by that name.
        let by_name = format!("{location}:{image}");
        assert_eq!(
            sha256(&skopeo(&["inspect", "--config", "--raw", &by_name])),
            config_digest
        );
        assert_eq!(
            inspected["Architecture"],
            expected["config"]["architecture"]
        );

        let copied = work.path().join("copied");
        skopeo(&["copy", &location, &format!("oci:{}:t", arg(&copied))]);
    }
}

/// The store is an OCI image layout: skopeo and umoci read it in place.
#[test]
fn skopeo_and_umoci_read_the_store() {
    require_tools!("skopeo", "umoci");
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let (single_digest, multi_digest) = standard_images(&sealer.root);
    sealer.ok(&["tag", SINGLE, "docker.io/library/x:1"]);
    let location = |name: &str| format!("oci:{}:{name}", arg(&sealer.root));
    assert_eq!(
        sha256(&skopeo(&[
            "inspect",
            "--raw",
            &location("docker.io/library/x:1")
        ])),
        single_digest
    );
    assert_eq!(
        skopeo_inspect(&[&location("docker.io/library/x:1")])["Digest"],
        single_digest.as_str()
    );
    assert_eq!(
        sha256(&skopeo(&["inspect", "--raw", &location(MULTI)])),
        multi_digest
    );

    let listed =
        String::from_utf8(tool_ok("umoci", &["ls", "--layout", arg(&sealer.root)])).expect("utf-8");
    let mut tags: Vec<&str> = listed.lines().collect();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            "docker.io/library/multi:1",
            "docker.io/library/single:1",
            "docker.io/library/x:1"
        ]
    );
}

fn gzip(from: &std::path::Path, to: &std::path::Path) {
    let mut input = std::fs::File::open(from).expect("open");
    let output = std::fs::File::create(to).expect("create");
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
    std::io::copy(&mut input, &mut encoder).expect("gzip");
    encoder.finish().expect("finish gzip");
}
