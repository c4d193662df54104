//! Errors: the distribution API's JSON errors ([`ApiError`]), and why a server could not
//! start ([`ServeError`]).

use std::path::PathBuf;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::StoreError;

/// The error codes of the OCI distribution spec (plus `UNKNOWN` for internal errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The blob is not in the registry.
    BlobUnknown,
    /// The upload is invalid (out-of-order chunk, bad range).
    BlobUploadInvalid,
    /// The upload session does not exist.
    BlobUploadUnknown,
    /// The digest is malformed or does not match the content.
    DigestInvalid,
    /// A manifest references a blob the registry does not have.
    ManifestBlobUnknown,
    /// The manifest is malformed.
    ManifestInvalid,
    /// The manifest is not in the registry.
    ManifestUnknown,
    /// The repository name is malformed.
    NameInvalid,
    /// The repository is not known.
    NameUnknown,
    /// A length or range does not match the content.
    SizeInvalid,
    /// Authentication is needed.
    Unauthorized,
    /// The operation is not allowed (read-only mode).
    Denied,
    /// The operation is not supported.
    Unsupported,
    /// The `n` of a tag list is not a number.
    PaginationNumberInvalid,
    /// Too many requests.
    TooManyRequests,
    /// An internal error.
    Unknown,
}

impl ErrorCode {
    /// The code as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUnknown => "BLOB_UNKNOWN",
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
            Self::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Self::TooManyRequests => "TOOMANYREQUESTS",
            Self::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status the spec gives this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BlobUnknown
            | Self::BlobUploadUnknown
            | Self::ManifestUnknown
            | Self::NameUnknown => StatusCode::NOT_FOUND,
            Self::BlobUploadInvalid
            | Self::DigestInvalid
            | Self::ManifestBlobUnknown
            | Self::ManifestInvalid
            | Self::NameInvalid
            | Self::SizeInvalid
            | Self::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Denied => StatusCode::FORBIDDEN,
            Self::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Self::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to a client as `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} ({}): {message}", code.as_str(), status.as_u16())]
pub struct ApiError {
    /// The spec's error code.
    pub code: ErrorCode,
    /// The HTTP status (the code's, unless overridden: 416, 413, 404 for unknown paths).
    pub status: StatusCode,
    /// A message for humans.
    pub message: String,
    /// Structured detail, if any (boxed: errors travel in every `Result`).
    pub detail: Option<Box<serde_json::Value>>,
    /// Extra response headers (`WWW-Authenticate`, `Range`, `Content-Range`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// An error with the code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            message: message.into(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// The same error with another HTTP status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same error with structured detail.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(Box::new(detail));
        self
    }

    /// The same error with a response header (values that are not valid header text are
    /// left out).
    pub fn with_header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.push((name, value));
        }
        self
    }

    /// An internal error; the cause is logged with its chain, the client sees a generic
    /// message.
    pub fn internal(
        context: &str,
        error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        let error = error.into();
        tracing::error!(error = %ErrorChain(&*error), "{context}");
        Self::new(ErrorCode::Unknown, format!("{context}: internal error"))
    }

    /// Maps a store error seen while serving `what`.
    pub fn from_store(what: &str, error: StoreError) -> Self {
        match error {
            StoreError::BlobNotFound(digest) => Self::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in the registry"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() })),
            StoreError::ImageNotFound(name) => Self::new(
                ErrorCode::ManifestUnknown,
                format!("manifest {name} is not in the registry"),
            ),
            StoreError::PlatformNotCarried { .. } => {
                Self::new(ErrorCode::ManifestUnknown, error_chain(&error))
            }
            StoreError::DigestMismatch {
                expected, actual, ..
            } => Self::new(
                ErrorCode::DigestInvalid,
                format!("the content hashes to {actual}, not {expected}"),
            )
            .with_detail(serde_json::json!({
                "expected": expected.to_string(),
                "actual": actual.to_string(),
            })),
            StoreError::SizeMismatch {
                expected, actual, ..
            } => Self::new(
                ErrorCode::SizeInvalid,
                format!("expected {expected} bytes, got {actual}"),
            ),
            StoreError::MissingChild { child, .. } => Self::new(
                ErrorCode::ManifestBlobUnknown,
                format!("the manifest refers to {child}, which is not in the registry"),
            )
            .with_detail(serde_json::json!({ "digest": child.to_string() })),
            StoreError::Manifest { source, .. } => {
                Self::new(ErrorCode::ManifestInvalid, error_chain(&source))
            }
            StoreError::Digest(error) => Self::new(ErrorCode::DigestInvalid, error_chain(&error)),
            StoreError::Reference(error) => Self::new(ErrorCode::NameInvalid, error_chain(&error)),
            other => Self::internal(what, other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut entry = serde_json::json!({
            "code": self.code.as_str(),
            "message": self.message,
        });
        if let Some(detail) = self.detail {
            entry["detail"] = *detail;
        }
        let body = serde_json::json!({ "errors": [entry] }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Why a registry server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened.
    #[error("opening the image store {path}")]
    Store {
        /// The store's root.
        path: PathBuf,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Binding or serving the listening socket failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An upstream of the pull-through cache cannot be set up (its CA file, its URL).
    #[error("upstream {name:?}: {reason}")]
    Upstream {
        /// The upstream's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The images a cluster image carries could not be imported.
    #[error("serving the images carried by {image}")]
    Embedded {
        /// The cluster image.
        image: String,
        /// Why.
        #[source]
        source: sealer_image_store::archive::ArchiveError,
    },
    /// The bucket of `storage: { s3: … }` cannot be set up.
    #[error(transparent)]
    Bucket(#[from] crate::bucket::BucketConfigError),
    /// Garbage collection of the bucket failed (nothing a tag or manifest references was
    /// deleted; a later run finishes what this one started).
    #[error("collecting garbage in the bucket")]
    Gc(#[source] crate::bucket::BucketError),
    /// `registry gc` was asked for a local store (`sealer prune` collects those).
    #[error(
        "the storage is the local store {}: collect its garbage with `sealer --root {} prune` (which keeps the build cache's layers)",
        .0.display(), .0.display()
    )]
    LocalGc(std::path::PathBuf),
    /// The configuration names no store, and none was given otherwise.
    #[error("no storage: set `storage` in the configuration (or the CLI's --root)")]
    NoStorage,
    /// A feature the configuration asks for does not exist yet.
    #[error("{0}")]
    NotImplemented(String),
}
