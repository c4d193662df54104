//! [`ClientError`]: why a registry request failed.

use std::path::PathBuf;

use crate::address_policy::AddressRefused;
use crate::auth::AuthError;
use crate::credentials::CredentialError;

/// Why a registry request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS could not be set up.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// A CA file could not be used.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Build(#[source] reqwest::Error),
    /// The request failed on the network (after the retries).
    #[error("{request}")]
    Transport {
        /// The method and URL.
        request: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error status.
    #[error("{request}: {status}{}: {message}", code.as_deref().map(|code| format!(" {code}")).unwrap_or_default())]
    Status {
        /// The method and URL.
        request: String,
        /// The HTTP status.
        status: u16,
        /// The distribution error code (`MANIFEST_UNKNOWN`, `DENIED`, …), when given.
        code: Option<String>,
        /// The registry's message.
        message: String,
    },
    /// The registry asked to wait longer than allowed.
    #[error("{url}: the registry asked to retry after {seconds} s; giving up")]
    RetryAfterTooLong {
        /// The URL.
        url: String,
        /// The wait asked for.
        seconds: u64,
    },
    /// A URL sealer will not call.
    #[error("{url}: {reason}")]
    Url {
        /// The URL (or what should have been one).
        url: String,
        /// Why.
        reason: String,
    },
    /// A response that breaks the protocol (bad header, oversized manifest, wrong digest).
    #[error("{url}: {reason}")]
    Protocol {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Authentication failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Credentials could not be read or written.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The address policy refused the address a request would connect to (its host's, a
    /// redirect hop's or a token realm's).
    #[error("{request}: refused")]
    AddressRefused {
        /// The method and URL.
        request: String,
        /// Which host and address, and why.
        #[source]
        refused: AddressRefused,
    },
    /// A background task failed.
    #[error("{0}")]
    Runtime(String),
}

impl ClientError {
    /// The HTTP status, for status errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The address policy's refusal, when that is why the request failed.
    pub fn address_refused(&self) -> Option<&AddressRefused> {
        match self {
            Self::AddressRefused { refused, .. } => Some(refused),
            _ => crate::address_policy::refusal_in(self),
        }
    }
}
