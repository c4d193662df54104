//! The error type of every [`crate::Fs`] operation.

use std::io;
use std::path::PathBuf;

/// Why a file operation failed. Messages name the operation and the path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The path itself is unacceptable (empty, absolute, `..`, NUL).
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Resolving the path (through a symlink, hard link or rename) would leave the root.
    #[error("{op} {path}: refused, it would reach outside the root {root}")]
    Escape {
        /// The operation.
        op: &'static str,
        /// The path as given.
        path: PathBuf,
        /// The root it must stay in.
        root: PathBuf,
    },
    /// The operating system (or the in-memory tree) reported an error.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path, as shown to users.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl FsError {
    /// An I/O error of `op` on `path`.
    pub fn io(op: &'static str, path: PathBuf, source: io::Error) -> Self {
        Self::Io { op, path, source }
    }

    /// The closest [`io::ErrorKind`]: escapes are `PermissionDenied`, invalid paths
    /// `InvalidInput`.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::InvalidPath { .. } => io::ErrorKind::InvalidInput,
            Self::Escape { .. } => io::ErrorKind::PermissionDenied,
            Self::Io { source, .. } => source.kind(),
        }
    }

    /// Whether nothing exists at the path.
    pub fn is_not_found(&self) -> bool {
        self.kind() == io::ErrorKind::NotFound
    }

    /// Whether something already exists at the path.
    pub fn is_already_exists(&self) -> bool {
        self.kind() == io::ErrorKind::AlreadyExists
    }
}

/// Displays an error and its causes joined by `: `. Error messages of this workspace never
/// repeat their source (it is reachable with [`std::error::Error::source`] instead), so every
/// place that shows an error to a person (the CLI, logs, API error bodies, a reason kept as
/// text) shows it through this, and none drops a cause. A cause whose text the message
/// before it already contains is left out: some foreign errors print their source too. A
/// transport error's useful part is deep in its chain (`Connection refused`, `dns error: …`,
/// a TLS alert). It lives in the crate every other one depends on, so that each can use it.
///
/// In `tracing` fields: `error = %ErrorChain(&error)`.
pub struct ErrorChain<'a, E: ?Sized>(pub &'a E);

impl<E: std::error::Error + ?Sized> std::fmt::Display for ErrorChain<'_, E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        for cause in std::iter::successors(self.0.source(), |cause| cause.source()) {
            let message = cause.to_string();
            if message.is_empty() || text.contains(&message) {
                continue;
            }
            text.push_str(": ");
            text.push_str(&message);
        }
        formatter.write_str(&text)
    }
}

impl<E: std::error::Error + ?Sized> std::fmt::Debug for ErrorChain<'_, E> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, formatter)
    }
}

/// [`ErrorChain`] as a `String`.
pub fn error_chain<E: std::error::Error + ?Sized>(error: &E) -> String {
    ErrorChain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("GET http://127.0.0.1:1/v2/: error sending request")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_keeps_every_cause_once() {
        let error = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            error_chain(&error),
            "GET http://127.0.0.1:1/v2/: error sending request: Connection refused (os error 111)"
        );
    }
}
