//! The Kubefile module's error type.

use sealer_fs_abstraction::FsError;

use crate::kubefile::ast::Span;

/// Why a Kubefile was refused. Every message of [`KubefileError::Invalid`] starts with
/// `file:line:column:` and says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum KubefileError {
    /// The Kubefile is malformed or invalid at `span`.
    #[error("{span}: {message}")]
    Invalid {
        /// Where.
        span: Span,
        /// What is wrong and what was expected.
        message: String,
    },
    /// The Kubefile could not be read.
    #[error("cannot read the Kubefile")]
    Read(#[from] FsError),
}

impl KubefileError {
    /// An error at `span`.
    pub fn at(span: Span, message: impl Into<String>) -> Self {
        Self::Invalid {
            span,
            message: message.into(),
        }
    }

    /// Where the error is, for [`KubefileError::Invalid`].
    pub fn span(&self) -> Option<&Span> {
        match self {
            Self::Invalid { span, .. } => Some(span),
            Self::Read(_) => None,
        }
    }
}

/// Result of Kubefile operations.
pub type Result<T, E = KubefileError> = std::result::Result<T, E>;
