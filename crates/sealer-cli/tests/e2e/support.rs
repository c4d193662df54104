//! The harness: run `sealer`, skopeo and umoci; build fixture images; poke at files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Platform, Store};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Whether `tool` can be run (skips locally, panics under `CI=true`): the harness's check.
pub use sealer_test_harness::require_tool;

/// Skips the calling test (returns from it) unless every tool is installed.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+) => {
        if !($($crate::support::require_tool($tool))&&+) {
            return;
        }
    };
}

fn describe(command: &str, args: &[&str], output: &Output) -> String {
    format!(
        "{command} {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `sealer` binary working on one store.
#[derive(Debug)]
pub struct Sealer {
    pub root: PathBuf,
}

impl Sealer {
    /// A store at `root` (created by the first command).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A `sealer --root ROOT ARGS…` command, not yet started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sealer"));
        command
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .env_remove("SEALER_ROOT")
            .env_remove("RUST_LOG");
        command
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run sealer")
    }

    /// Runs, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{}",
            describe("sealer", args, &output)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs, asserts failure with exit code 1, returns stdout and stderr together.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_eq!(
            output.status.code(),
            Some(1),
            "expected exit code 1\n{}",
            describe("sealer", args, &output)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// `sealer images --json` as (name, digest) pairs, sorted.
    pub fn images(&self) -> Vec<(Option<String>, String)> {
        let list: Value = serde_json::from_str(&self.ok(&["images", "--json"])).expect("json");
        let mut images: Vec<_> = list
            .as_array()
            .expect("array")
            .iter()
            .map(|image| {
                (
                    image["name"].as_str().map(str::to_owned),
                    image["digest"].as_str().expect("digest").to_owned(),
                )
            })
            .collect();
        images.sort();
        images
    }

    /// The digest `sealer images` lists for `name`.
    pub fn digest_of(&self, name: &str) -> String {
        self.images()
            .into_iter()
            .find(|(listed, _)| listed.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} not listed: {:?}", self.images()))
            .1
    }

    /// `sealer inspect ARGS…` as JSON.
    pub fn inspect(&self, args: &[&str]) -> Value {
        let mut all = vec!["inspect"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("inspect prints JSON")
    }

    /// The path of a blob in the store.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.root.join("blobs/sha256").join(hex)
    }

    /// The blob files of the store (temporary files excluded).
    pub fn blobs(&self) -> Vec<String> {
        let dir = self.root.join("blobs/sha256");
        let mut names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .map(|entry| entry.expect("dir entry").file_name())
                .map(|name| name.to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => panic!("listing {}: {error}", dir.display()),
        };
        names.sort();
        names
    }
}

/// Runs a tool, asserts success, returns stdout bytes.
pub fn tool_ok(tool: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("run {tool}: {error}"));
    assert!(output.status.success(), "{}", describe(tool, args, &output));
    output.stdout
}

/// `skopeo ARGS…`, asserting success; stdout.
pub fn skopeo(args: &[&str]) -> Vec<u8> {
    tool_ok("skopeo", args)
}

/// `skopeo inspect ARGS…` as JSON.
pub fn skopeo_inspect(args: &[&str]) -> Value {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    serde_json::from_slice(&skopeo(&all)).expect("skopeo inspect prints JSON")
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A string argument from a path.
pub fn arg(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

pub fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

pub fn arm64() -> Platform {
    Platform::new("linux", "arm64", None)
}

/// Writes a synthetic image (gzip layers of pseudo-random bytes; layer 0 depends on the
/// seed only, so images with one seed share it) into the store at `root`; returns its top
/// digest.
pub fn build_image(
    root: &Path,
    name: &str,
    platforms: &[Platform],
    layer_sizes: &[u64],
    seed: u64,
) -> String {
    let store = Store::open_dir(root).expect("open fixture store");
    let spec = ImageSpec {
        name: Some(name.to_owned()),
        platforms: platforms.to_vec(),
        layer_sizes: layer_sizes.to_vec(),
        seed,
        gzip_level: 1,
    };
    write_image(&store, &spec)
        .expect("write fixture image")
        .digest
        .to_string()
}

/// A fixture store with `docker.io/library/single:1` (linux/amd64) and
/// `docker.io/library/multi:1` (linux/amd64 + linux/arm64); returns their digests.
pub fn standard_images(root: &Path) -> (String, String) {
    let single = build_image(root, SINGLE, &[amd64()], &[20_000, 70_000], 1);
    let multi = build_image(root, MULTI, &[amd64(), arm64()], &[30_000, 50_000], 2);
    (single, multi)
}

pub const SINGLE: &str = "docker.io/library/single:1";
pub const MULTI: &str = "docker.io/library/multi:1";

/// The (offset, size) of the data of entry `path` in the tar at `archive`.
pub fn tar_entry_span(archive: &Path, path: &str) -> (u64, u64) {
    let file = std::fs::File::open(archive).expect("open archive");
    let mut tar = tar::Archive::new(file);
    for entry in tar.entries().expect("tar entries") {
        let entry = entry.expect("tar entry");
        let name = entry
            .path()
            .expect("entry path")
            .to_string_lossy()
            .into_owned();
        if name.trim_start_matches("./") == path {
            return (entry.raw_file_position(), entry.size());
        }
    }
    panic!("{path} is not in {}", archive.display())
}

/// Flips one byte of the file at `path`, at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for corruption");
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.read_exact(&mut byte).expect("read byte");
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(offset)).expect("seek");
    file.write_all(&byte).expect("write byte");
    file.sync_all().expect("sync");
}

/// The entries of a directory (names), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// A fresh temporary directory.
pub fn temp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sealer-e2e-")
        .tempdir()
        .expect("tempdir")
}

/// A single-platform image with one stored (gzip level 0) layer of `size` random bytes,
/// fast to make in any size.
pub fn build_big_image(root: &Path, name: &str, size: u64) -> String {
    let store = Store::open_dir(root).expect("open fixture store");
    let spec = ImageSpec {
        name: Some(name.to_owned()),
        platforms: vec![amd64()],
        layer_sizes: vec![size],
        seed: 42,
        gzip_level: 0,
    };
    write_image(&store, &spec)
        .expect("write fixture image")
        .digest
        .to_string()
}
