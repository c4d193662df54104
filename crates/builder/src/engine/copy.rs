//! COPY/ADD/APP sources: glob expansion in the build context, Dockerfile destination rules.

use std::path::{Path, PathBuf};

use sealer_fs_abstraction::{ErrorChain, FileKind, Fs, FsPath, RealFs, TempRoot};
use sealer_image_store::{Algorithm, Digest, Hasher};

use crate::engine::error::{BuildError, Result};
use crate::engine::layer::{LayerTree, Node};
use crate::kubefile::{AppType, Span};

/// Whether `text` holds glob characters (`*`, `?`, `[`).
fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// Matches one path component against a pattern component: `*` (any run of characters),
/// `?` (one character), `[abc]`/`[a-z]`/`[!x]` (a class); everything else literally.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    matches_from(&pattern, &name)
}

fn matches_from(pattern: &[char], name: &[char]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some('*') => (0..=name.len()).any(|skip| matches_from(&pattern[1..], &name[skip..])),
        Some('?') => !name.is_empty() && matches_from(&pattern[1..], &name[1..]),
        Some('[') => {
            let Some(close) = pattern
                .iter()
                .skip(1)
                .position(|&c| c == ']')
                .map(|i| i + 1)
            else {
                return name.first() == Some(&'[') && matches_from(&pattern[1..], &name[1..]);
            };
            let Some(&c) = name.first() else {
                return false;
            };
            let mut class = &pattern[1..close];
            let negated = matches!(class.first(), Some('!' | '^'));
            if negated {
                class = &class[1..];
            }
            let mut found = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    found |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    found |= class[i] == c;
                    i += 1;
                }
            }
            found != negated && matches_from(&pattern[close + 1..], &name[1..])
        }
        Some(&literal) => name.first() == Some(&literal) && matches_from(&pattern[1..], &name[1..]),
    }
}

/// A source as written, made relative to the context root (`/x` and `./x` mean `x`).
fn relative_source(span: &Span, keyword: &str, source: &str) -> Result<FsPath> {
    let trimmed = source.trim_start_matches('/');
    let trimmed = if trimmed.is_empty() { "." } else { trimmed };
    FsPath::new(Path::new(trimmed)).map_err(|error| {
        BuildError::at(
            span,
            format!(
                "{keyword} source {source:?} is not inside the build context: {}",
                ErrorChain(&error)
            ),
        )
    })
}

/// Expands the sources of a COPY/ADD/APP (`${ARCH}` already replaced) to paths of the build
/// context, globs matched against the context's entries (sorted). A source that does not
/// exist, matches nothing, or leaves the context (`..`, a symlink pointing outside) is an
/// error naming the instruction.
pub(crate) fn expand_sources(
    context: &dyn Fs,
    span: &Span,
    keyword: &str,
    sources: &[String],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for source in sources {
        let path = relative_source(span, keyword, source)?;
        if !is_glob(source) {
            check_source(context, span, keyword, source, path.as_path())?;
            out.push(path.as_path().to_path_buf());
            continue;
        }
        let components: Vec<String> = path
            .as_path()
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let literal: PathBuf = components.iter().take_while(|c| !is_glob(c)).collect();
        let start = if literal.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            literal.clone()
        };
        let depth = components.len();
        let mut found = Vec::new();
        if context.exists(&start)? {
            for entry in context.walk(&start)? {
                let parts: Vec<String> = entry
                    .path
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.len() == depth
                    && parts
                        .iter()
                        .zip(&components)
                        .all(|(name, pattern)| matches(pattern, name))
                {
                    found.push(entry.path);
                }
            }
        }
        if found.is_empty() {
            return Err(BuildError::at(
                span,
                format!("{keyword} source {source:?} matches no file of the build context"),
            ));
        }
        for path in found {
            check_source(context, span, keyword, source, &path)?;
            out.push(path);
        }
    }
    Ok(out)
}

/// Checks that `path` exists and, followed through symlinks, stays inside the context.
fn check_source(
    context: &dyn Fs,
    span: &Span,
    keyword: &str,
    source: &str,
    path: &Path,
) -> Result<()> {
    match context.metadata(path) {
        Ok(_) => Ok(()),
        Err(error) if error.is_not_found() => Err(BuildError::at(
            span,
            format!("{keyword} source {source:?} does not exist in the build context"),
        )),
        Err(error) => Err(BuildError::at(
            span,
            format!(
                "{keyword} source {source:?} is not inside the build context: {}",
                ErrorChain(&error)
            ),
        )),
    }
}

/// The destination directory or file as a rootfs path (relative; empty for the root).
pub(crate) fn dest_path(dest: &str) -> PathBuf {
    dest.split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect()
}

/// Parses `--chmod=<octal>`.
pub(crate) fn parse_chmod(span: &Span, chmod: Option<&str>) -> Result<Option<u32>> {
    chmod
        .map(|text| {
            u32::from_str_radix(text, 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .ok_or_else(|| {
                    BuildError::at(
                        span,
                        format!("--chmod={text}: expected an octal mode like 0644"),
                    )
                })
        })
        .transpose()
}

/// Adds what `COPY <sources> <dest>` puts in the rootfs to `tree`, with Dockerfile rules:
/// a directory source's contents go into `dest`; a file goes to `dest` itself, or into it
/// when `dest` ends with `/` (or when there are several sources, which requires that `/`;
/// the engine adds the `/` when `dest` is a directory of the image so far).
/// A source symlink is followed (inside the context); symlinks below a directory source are
/// copied as links.
pub(crate) fn add_sources(
    context: &dyn Fs,
    tree: &mut LayerTree,
    span: &Span,
    keyword: &str,
    sources: &[PathBuf],
    dest: &str,
    chmod: Option<u32>,
) -> Result<()> {
    let into_dir = dest.ends_with('/') || dest == "." || dest.is_empty();
    if sources.len() > 1 && !into_dir {
        return Err(BuildError::at(
            span,
            format!(
                "{keyword} with more than one source file needs a directory destination ending with /, not {dest:?}"
            ),
        ));
    }
    let dest = dest_path(dest);
    for source in sources {
        let metadata = context.metadata(source)?;
        match metadata.kind {
            FileKind::Dir => {
                if !dest.as_os_str().is_empty() {
                    tree.insert(dest.clone(), Node::Dir(chmod.unwrap_or(0o755)));
                }
                for entry in context.walk(source)? {
                    let relative = entry.path.strip_prefix(source).unwrap_or(&entry.path);
                    let target = dest.join(relative);
                    let node = match entry.metadata.kind {
                        FileKind::Dir => Node::Dir(chmod.unwrap_or(entry.metadata.mode)),
                        FileKind::File => Node::File {
                            source: entry.path.clone(),
                            mode: chmod.unwrap_or(entry.metadata.mode),
                            len: entry.metadata.len,
                        },
                        FileKind::Symlink => Node::Symlink(context.read_link(&entry.path)?),
                        FileKind::Other => {
                            return Err(BuildError::at(
                                span,
                                format!(
                                    "{keyword}: {} is a device, FIFO or socket",
                                    entry.path.display()
                                ),
                            ));
                        }
                    };
                    tree.insert(target, node);
                }
            }
            FileKind::File => {
                let target = if into_dir || dest.as_os_str().is_empty() {
                    let name = source.file_name().map(PathBuf::from).unwrap_or_default();
                    dest.join(name)
                } else {
                    dest.clone()
                };
                tree.insert(
                    target,
                    Node::File {
                        source: source.clone(),
                        mode: chmod.unwrap_or(metadata.mode),
                        len: metadata.len,
                    },
                );
            }
            FileKind::Symlink | FileKind::Other => {
                return Err(BuildError::at(
                    span,
                    format!(
                        "{keyword}: {} is a device, FIFO or socket",
                        source.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether the context file `path` is a tar archive ADD extracts: a plain tar (`ustar` at
/// offset 257), or gzip/zstd-compressed with a `.tar.gz`, `.tgz`, `.tar.zst` name.
pub(crate) fn is_archive(context: &dyn Fs, path: &Path) -> Result<bool> {
    if context.metadata(path)?.kind != FileKind::File {
        return Ok(false);
    }
    let mut head = [0u8; 512];
    let mut file = context.open(path)?;
    let mut filled = 0;
    while filled < head.len() {
        let read = std::io::Read::read(&mut file, &mut head[filled..]).map_err(|source| {
            BuildError::Io {
                what: format!("reading {}", path.display()),
                source,
            }
        })?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    let name = path.to_string_lossy();
    let compressed_name = [".tar.gz", ".tgz", ".tar.zst"]
        .iter()
        .any(|ext| name.ends_with(ext));
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let zstd = head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]);
    Ok((filled == 512 && &head[257..262] == b"ustar") || (compressed_name && (gzip || zstd)))
}

/// Extracts the archive `path` of the context into a new temporary directory (confined:
/// `..` names and links out are refused) and adds its entries to `tree` under `dest`. The
/// returned directory must live until the layer is written.
///
/// What an archive may hold is content, not layer format: an entry named `.wh.*` (an OCI
/// whiteout) is an error naming the archive and the entry, because written into the layer
/// it would delete a file of the base (Docker copies it as a plain file, which hides that
/// file just the same). Device nodes, FIFOs and sockets are skipped, each one named in
/// `warnings`: a cluster image has no use for them (`RUN mknod` makes one if needed).
pub(crate) fn add_archive(
    context: &dyn Fs,
    tree: &mut LayerTree,
    span: &Span,
    path: &Path,
    dest: &str,
    warnings: &mut Vec<String>,
) -> Result<TempRoot> {
    let (dir, fs) = scratch_dir("sealer-build-add-")?;
    let file = context.open(path)?;
    let mut head = std::io::BufReader::new(file);
    let magic = std::io::BufRead::fill_buf(&mut head).map_err(|source| BuildError::Io {
        what: format!("reading {}", path.display()),
        source,
    })?;
    let reader: Box<dyn std::io::Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(head))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            zstd::stream::read::Decoder::new(head).map_err(|source| BuildError::Io {
                what: format!("reading {}", path.display()),
                source,
            })?,
        )
    } else {
        Box::new(head)
    };
    let options = sealer_fs_abstraction::tar::UnpackOptions {
        whiteouts: false,
        skip_special: true,
        preserve_mtime: false,
    };
    let unpacked =
        sealer_fs_abstraction::tar::unpack(fs.as_ref(), Path::new("."), reader, &options).map_err(
            |error| {
                BuildError::at(
                    span,
                    format!("ADD {}: {}", path.display(), ErrorChain(&error)),
                )
            },
        )?;
    for skipped in &unpacked.skipped {
        let warning = format!(
            "{span}: ADD {}: skipped {skipped}: device nodes, FIFOs and sockets are not added",
            path.display()
        );
        tracing::warn!("{warning}");
        warnings.push(warning);
    }
    let dest = dest_path(dest);
    for entry in fs.walk(Path::new("."))? {
        let whiteout = entry
            .path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with(".wh."));
        if whiteout {
            return Err(BuildError::at(
                span,
                format!(
                    "ADD {}: entry {} is a whiteout name (.wh.*), which would delete files of \
                     the base image; whiteouts belong to layers, not to ADDed archives",
                    path.display(),
                    entry.path.display()
                ),
            ));
        }
        let target = dest.join(&entry.path);
        let node = match entry.metadata.kind {
            FileKind::Dir => Node::Dir(entry.metadata.mode),
            FileKind::File => Node::Extern {
                fs: fs.clone(),
                source: entry.path.clone(),
                mode: entry.metadata.mode,
                len: entry.metadata.len,
            },
            FileKind::Symlink => Node::Symlink(fs.read_link(&entry.path)?),
            FileKind::Other => continue,
        };
        tree.insert(target, node);
    }
    Ok(dir)
}

/// Streams `url` through `fetch` into `file` of `fs` (written atomically, hashed on the
/// way: no buffer holds the whole body); returns its size and SHA-256 digest once the file
/// on disk has that size. The outer error is the build's (the scratch file), the inner one
/// the download's.
pub(crate) fn download_into(
    fetch: crate::engine::FetchFn<'_>,
    url: &str,
    fs: &dyn Fs,
    file: &Path,
) -> Result<std::result::Result<(u64, Digest), crate::engine::HookError>> {
    let mut out = sealer_fs_abstraction::AtomicFile::create(fs, file)?;
    let mut hashing = HashingWriter {
        inner: &mut out,
        hasher: Hasher::new(Algorithm::Sha256),
        len: 0,
    };
    if let Err(error) = fetch(url, &mut hashing) {
        return Ok(Err(error));
    }
    std::io::Write::flush(&mut hashing).map_err(|source| BuildError::Io {
        what: format!("writing the download of {url}"),
        source,
    })?;
    let HashingWriter { hasher, len, .. } = hashing;
    out.commit()?;
    let stored = fs.metadata(file)?.len;
    if stored != len {
        return Ok(Err(
            format!("{len} bytes received but {stored} stored").into()
        ));
    }
    Ok(Ok((len, hasher.finish())))
}

/// A writer that hashes and counts what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    len: u64,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A new temporary directory of the build (removed when the returned guard drops) and a
/// confined handle on it.
pub(crate) fn scratch_dir(prefix: &str) -> Result<(TempRoot, std::sync::Arc<dyn Fs>)> {
    let dir = RealFs::temp_dir(prefix)?;
    let fs: std::sync::Arc<dyn Fs> = std::sync::Arc::new(dir.fs().clone());
    Ok((dir, fs))
}

/// An app's detected type and its launch files (relative to its app directory).
pub(crate) fn detect_app(tree: &LayerTree, app_dir: &Path) -> Option<(AppType, Vec<String>)> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for (path, node) in tree.entries() {
        let Ok(relative) = path.strip_prefix(app_dir) else {
            continue;
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        match node {
            Node::Dir(_) => dirs.push(relative.to_path_buf()),
            Node::File { .. } | Node::Symlink(_) | Node::Data(..) | Node::Extern { .. } => {
                files.push(relative.to_path_buf())
            }
            Node::Whiteout => {}
        }
    }
    let has_file = |p: PathBuf| files.contains(&p);
    let chart_dirs = std::iter::once(PathBuf::new()).chain(dirs.iter().cloned());
    for dir in chart_dirs {
        if has_file(dir.join("Chart.yaml"))
            && has_file(dir.join("values.yaml"))
            && dirs.contains(&dir.join("templates"))
        {
            let name = if dir.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                dir.to_string_lossy().into_owned()
            };
            return Some((AppType::Helm, vec![name]));
        }
    }
    let with_ext = |exts: &[&str]| -> bool {
        !files.is_empty()
            && files.iter().all(|file| {
                file.extension()
                    .and_then(|ext| ext.to_str())
                    .is_some_and(|ext| exts.contains(&ext))
            })
    };
    let names = || {
        files
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect()
    };
    if with_ext(&["yaml", "yml"]) {
        return Some((AppType::Kube, names()));
    }
    if with_ext(&["sh"]) {
        return Some((AppType::Shell, names()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("*.yaml", "a.yaml"));
        assert!(!matches("*.yaml", "a.yml"));
        assert!(matches("a?c", "abc"));
        assert!(matches("[a-c]x", "bx"));
        assert!(!matches("[!a-c]x", "bx"));
        assert!(matches("*", ""));
    }

    #[test]
    fn destinations() {
        assert_eq!(dest_path("/manifests/"), PathBuf::from("manifests"));
        assert_eq!(dest_path("."), PathBuf::new());
        assert_eq!(dest_path("a//b"), PathBuf::from("a/b"));
    }
}
