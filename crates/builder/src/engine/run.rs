//! RUN: a command on the build host in a materialised rootfs; its changes become a layer.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use flate2::read::MultiGzDecoder;
use sealer_fs_abstraction::tar::{UnpackOptions, unpack};
use sealer_fs_abstraction::{FileKind, Fs, RealFs, TempRoot};
use sealer_image_store::model::media_type;
use sealer_image_store::{Algorithm, Descriptor, Hasher, Ingest};

use crate::engine::error::{BuildError, Result};
use crate::engine::layer::{LayerTree, Node, whiteout_path};
use crate::kubefile::{Command, Span};

/// The `PATH` a RUN gets unless its environment sets one.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The uncompressed tar stream of a layer staged in `ingest` or stored.
pub(crate) fn layer_reader(ingest: &Ingest<'_>, layer: &Descriptor) -> Result<Box<dyn Read>> {
    let blob = ingest.open(&layer.digest)?;
    Ok(match layer.media_type.as_str() {
        media_type::OCI_LAYER | media_type::DOCKER_LAYER => blob,
        media_type::OCI_LAYER_GZIP | media_type::DOCKER_LAYER_GZIP => {
            Box::new(MultiGzDecoder::new(blob))
        }
        media_type::OCI_LAYER_ZSTD => Box::new(zstd::stream::read::Decoder::new(blob).map_err(
            |source| BuildError::Io {
                what: format!("reading zstd layer {}", layer.digest),
                source,
            },
        )?),
        other => {
            return Err(BuildError::Options(format!(
                "cannot read layer {} of media type {other}",
                layer.digest
            )));
        }
    })
}

/// Whether `path` (a rootfs path as written in a Kubefile) is a directory in the image made
/// of `layers`: their tar headers are read in order, whiteouts applied.
pub(crate) fn is_dir_in_layers(
    ingest: &Ingest<'_>,
    layers: &[Descriptor],
    path: &str,
) -> Result<bool> {
    let wanted: PathBuf = path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if wanted.as_os_str().is_empty() {
        return Ok(true);
    }
    let read_error = |source| BuildError::Io {
        what: "reading a layer's entries".to_owned(),
        source,
    };
    let mut state: Option<bool> = None;
    for layer in layers {
        let mut archive = tar::Archive::new(layer_reader(ingest, layer)?);
        for entry in archive.entries().map_err(read_error)? {
            let entry = entry.map_err(read_error)?;
            let name: PathBuf = entry
                .path()
                .map_err(read_error)?
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            let file_name = name.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let parent = name.parent().map(Path::to_path_buf).unwrap_or_default();
            if file_name == ".wh..wh..opq" {
                if wanted.starts_with(&parent) && wanted != parent {
                    state = None;
                }
            } else if let Some(deleted) = file_name.strip_prefix(".wh.") {
                if wanted.starts_with(parent.join(deleted)) {
                    state = None;
                }
            } else if name == wanted {
                state = Some(entry.header().entry_type().is_dir());
            } else if wanted.starts_with(&name) && !entry.header().entry_type().is_dir() {
                state = None;
            } else if name.starts_with(&wanted) {
                state = Some(true);
            }
        }
    }
    Ok(state == Some(true))
}

/// What a path is, as compared before and after a RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Dir(u32),
    File { mode: u32, len: u64, hash: String },
    Symlink(PathBuf),
    Other,
}

/// A rootfs materialised in a temporary directory, removed when dropped.
pub(crate) struct Rootfs {
    dir: TempRoot,
}

impl Rootfs {
    /// Unpacks `layers` (base first; gzip or plain tar) with whiteouts applied.
    pub(crate) fn materialise(ingest: &Ingest<'_>, layers: &[Descriptor]) -> Result<Self> {
        let dir = RealFs::temp_dir("sealer-build-rootfs-")?;
        let options = UnpackOptions {
            whiteouts: true,
            skip_special: true,
            preserve_mtime: false,
        };
        for layer in layers {
            let reader = layer_reader(ingest, layer)?;
            unpack(dir.fs(), Path::new("."), reader, &options)?;
        }
        Ok(Self { dir })
    }

    /// The rootfs as an `Fs`.
    pub(crate) fn fs(&self) -> &RealFs {
        self.dir.fs()
    }

    fn snapshot(&self) -> Result<BTreeMap<PathBuf, State>> {
        let mut out = BTreeMap::new();
        let mut buffer = vec![0; 64 * 1024];
        for entry in self.dir.fs().walk(Path::new("."))? {
            let meta = &entry.metadata;
            let state = match meta.kind {
                FileKind::Dir => State::Dir(meta.mode),
                FileKind::Symlink => State::Symlink(self.dir.fs().read_link(&entry.path)?),
                FileKind::Other => State::Other,
                FileKind::File => {
                    let mut file = self.dir.fs().open(&entry.path)?;
                    let mut hasher = Hasher::new(Algorithm::Sha256);
                    loop {
                        let read = file.read(&mut buffer).map_err(|source| BuildError::Io {
                            what: format!("reading {}", entry.path.display()),
                            source,
                        })?;
                        if read == 0 {
                            break;
                        }
                        hasher.update(&buffer[..read]);
                    }
                    State::File {
                        mode: meta.mode,
                        len: meta.len,
                        hash: hasher.finish().to_string(),
                    }
                }
            };
            out.insert(entry.path, state);
        }
        Ok(out)
    }

    /// Runs `command` with its working directory at the rootfs root and `env` (plus a default
    /// `PATH`) as its whole environment, and returns the changes as a layer: added and
    /// changed entries, and `.wh.<name>` whiteouts for deleted ones.
    pub(crate) fn run(
        &self,
        span: &Span,
        command: &Command,
        env: &[(String, String)],
    ) -> Result<LayerTree> {
        let before = self.snapshot()?;
        let mut process = match command {
            Command::Shell(text) => {
                let mut process = Process::new("sh");
                process.arg("-c").arg(text);
                process
            }
            Command::Exec(args) => {
                let Some((program, rest)) = args.split_first() else {
                    return Err(BuildError::at(span, "RUN [] names no program"));
                };
                let mut process = Process::new(program);
                process.args(rest);
                process
            }
        };
        process.current_dir(self.dir.fs().root()).env_clear();
        if !env.iter().any(|(key, _)| key == "PATH") {
            process.env("PATH", DEFAULT_PATH);
        }
        process.envs(env.iter().map(|(k, v)| (k, v)));
        tracing::info!(command = ?command, dir = %self.dir.fs().root().display(), "RUN");
        let status = process.status().map_err(|source| BuildError::Io {
            what: format!("{span}: starting the RUN command"),
            source,
        })?;
        if !status.success() {
            return Err(BuildError::at(span, format!("RUN failed: {status}")));
        }
        let after = self.snapshot()?;
        Ok(diff(&before, &after))
    }
}

/// The layer that turns `before` into `after`.
fn diff(before: &BTreeMap<PathBuf, State>, after: &BTreeMap<PathBuf, State>) -> LayerTree {
    let mut tree = LayerTree::default();
    for (path, state) in after {
        if before.get(path) == Some(state) {
            continue;
        }
        let node = match state {
            State::Dir(mode) => Node::Dir(*mode),
            State::File { mode, len, .. } => Node::File {
                source: path.clone(),
                mode: *mode,
                len: *len,
            },
            State::Symlink(target) => Node::Symlink(target.clone()),
            State::Other => continue,
        };
        tree.insert(path.clone(), node);
    }
    for path in before.keys() {
        if after.contains_key(path) {
            continue;
        }
        // A deleted directory's whiteout covers what was below it.
        let parent_gone = path
            .parent()
            .is_some_and(|parent| !parent.as_os_str().is_empty() && !after.contains_key(parent));
        if parent_gone {
            continue;
        }
        if let Some(whiteout) = whiteout_path(path) {
            tree.insert(whiteout, Node::Whiteout);
        }
    }
    tree.set_dir_modes(|path| match after.get(path) {
        Some(State::Dir(mode)) => Some(*mode),
        _ => None,
    });
    tree
}
