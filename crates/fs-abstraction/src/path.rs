//! Validated relative paths: the only kind of path an [`crate::Fs`] accepts.

use std::path::{Component, Path, PathBuf};

use crate::FsError;

/// A path relative to an [`crate::Fs`] root that is syntactically unable to leave it: no
/// root or prefix component, no `..`, no NUL byte, not empty. `.` components are dropped, so
/// `"."` (and only it) names the root itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FsPath(PathBuf);

impl FsPath {
    /// Validates `path`. Symlinks are not looked at here: they are confined when followed.
    pub fn new(path: &Path) -> Result<Self, FsError> {
        let invalid = |reason: &'static str| FsError::InvalidPath {
            path: path.to_path_buf(),
            reason,
        };
        if path.as_os_str().is_empty() {
            return Err(invalid("the path is empty"));
        }
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(invalid("the path contains a NUL byte"));
        }
        let mut clean = PathBuf::new();
        for component in path.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    return Err(invalid("`..` is not allowed: paths stay below the root"));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(invalid(
                        "absolute paths are not allowed: paths are relative to the root",
                    ));
                }
            }
        }
        Ok(Self(clean))
    }

    /// The root itself.
    pub fn root() -> Self {
        Self(PathBuf::new())
    }

    /// Whether this is the root itself.
    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The relative path; `.` for the root, so that it can be handed back to an
    /// [`crate::Fs`] method (which refuses empty paths).
    pub fn as_path(&self) -> &Path {
        if self.is_root() {
            Path::new(".")
        } else {
            &self.0
        }
    }

    /// The parent directory, `None` for the root.
    pub fn parent(&self) -> Option<FsPath> {
        if self.is_root() {
            return None;
        }
        Some(Self(
            self.0.parent().map(Path::to_path_buf).unwrap_or_default(),
        ))
    }

    /// The last component, `None` for the root.
    pub fn file_name(&self) -> Option<&std::ffi::OsStr> {
        self.0.file_name()
    }

    /// Appends one validated relative path.
    pub fn join(&self, rest: &Path) -> Result<FsPath, FsError> {
        let rest = FsPath::new(rest)?;
        Ok(Self(self.0.join(rest.0)))
    }
}

impl AsRef<Path> for FsPath {
    fn as_ref(&self) -> &Path {
        self.as_path()
    }
}

impl std::fmt::Display for FsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            write!(f, "{}", self.0.display())
        }
    }
}
