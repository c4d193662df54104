//! The build engine's error type.

use sealer_fs_abstraction::FsError;
use sealer_fs_abstraction::tar::TarError;
use sealer_image_store::StoreError;
use sealer_layer_cache::CacheError;

use crate::kubefile::{KubefileError, Span};

/// Why a build failed. Nothing is named in the store when a build fails.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Kubefile is invalid.
    #[error(transparent)]
    Kubefile(#[from] KubefileError),
    /// A step failed at `span`.
    #[error("{span}: {message}")]
    Step {
        /// The instruction.
        span: Span,
        /// What went wrong.
        message: String,
    },
    /// A file of the build context or of a rootfs could not be read or written (a path
    /// leaving the build context fails here with the `Fs`'s escape error).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Writing or reading a layer tar failed.
    #[error(transparent)]
    Tar(#[from] TarError),
    /// The image store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The layer cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The base image is not in the store and could not be pulled.
    #[error("base image {reference}: {message}")]
    Base {
        /// The FROM reference.
        reference: String,
        /// Why.
        message: String,
    },
    /// The base image is not in the store for the platform, and pulling it failed.
    #[error("base image {reference}: pulling it for {platform}")]
    BasePull {
        /// The FROM reference.
        reference: String,
        /// The platform it was pulled for.
        platform: String,
        /// Why the pull failed (the [`PullFn`](crate::engine::PullFn)'s error).
        #[source]
        source: crate::engine::HookError,
    },
    /// An image's sealer metadata (its annotations) cannot be read.
    #[error("image {reference}: {message}")]
    Metadata {
        /// The image.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// An image the rootfs needs (found by the image scan) is not in the store, and this
    /// build cannot pull (`--build-mode lite` skips them).
    #[error("dependency image {reference}: {message}")]
    Dependency {
        /// The image.
        reference: String,
        /// Why.
        message: String,
    },
    /// An image the rootfs needs is not in the store for the platform, and pulling it
    /// failed.
    #[error("dependency image {reference}: pulling it for {platform}")]
    DependencyPull {
        /// The image.
        reference: String,
        /// The platform it was pulled for.
        platform: String,
        /// Why the pull failed (the [`PullFn`](crate::engine::PullFn)'s error).
        #[source]
        source: crate::engine::HookError,
    },
    /// The step at `span` could not download a remote source.
    #[error("{span}: {what}")]
    Download {
        /// The instruction.
        span: Span,
        /// What was downloaded, for which step.
        what: String,
        /// Why (the [`FetchFn`](crate::engine::FetchFn)'s error).
        #[source]
        source: crate::engine::HookError,
    },
    /// An option is invalid.
    #[error("{0}")]
    Options(String),
    /// Other I/O (compression, running a command).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl BuildError {
    /// An error of the step at `span`.
    pub fn at(span: &Span, message: impl Into<String>) -> Self {
        Self::Step {
            span: span.clone(),
            message: message.into(),
        }
    }
}

/// Result of build operations.
pub type Result<T, E = BuildError> = std::result::Result<T, E>;
