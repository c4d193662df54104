//! [`TempRoot`]: a scratch directory on the host, confined like any [`RealFs`] root and
//! removed with everything in it when dropped.

use std::path::Path;

use crate::{FsError, RealFs, Result};

/// A new directory under the system's temporary directory, opened as a [`RealFs`] root.
/// Dropping it closes the root and removes the directory tree (errors while removing are
/// ignored: the system cleans its temporary directory anyway).
#[derive(Debug)]
pub struct TempRoot {
    // Declared before `dir` so the root handle closes before the tree is removed.
    fs: RealFs,
    dir: tempfile::TempDir,
}

impl TempRoot {
    /// The handle confined to the directory.
    pub fn fs(&self) -> &RealFs {
        &self.fs
    }

    /// The directory's host path (for tools that need one, such as a store opened there).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl RealFs {
    /// Creates a fresh directory named `prefix` plus a random suffix under the system's
    /// temporary directory and opens it as a root; see [`TempRoot`].
    ///
    /// # Errors
    /// [`FsError::Io`] when the directory cannot be created or opened.
    // The one place scratch directories are made (clippy.toml bans `tempfile` elsewhere).
    #[allow(clippy::disallowed_methods)]
    pub fn temp_dir(prefix: &str) -> Result<TempRoot> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|source| FsError::io("create temp dir", std::env::temp_dir(), source))?;
        let fs = Self::open_root(dir.path())?;
        Ok(TempRoot { fs, dir })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{Fs as _, RealFs};

    #[test]
    fn temp_dir_is_a_confined_root_removed_on_drop() {
        let temp = RealFs::temp_dir("sealer-test-").unwrap();
        let host = temp.path().to_path_buf();
        assert!(
            host.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sealer-test-")
        );
        temp.fs().create_dir_all(Path::new("a/b")).unwrap();
        temp.fs().write_atomic(Path::new("a/b/file"), b"x").unwrap();
        assert!(temp.fs().read(Path::new("../escape")).is_err());
        let outside = RealFs::open_root(host.parent().unwrap()).unwrap();
        let name = Path::new(host.file_name().unwrap());
        assert!(outside.exists(name).unwrap());
        drop(temp);
        assert!(!outside.exists(name).unwrap());
    }
}
