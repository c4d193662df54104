//! Talks to OCI/Docker registries: pull into and push from a sealer image store, log in and
//! out. image-store has no network code; everything that speaks HTTP is here.
//!
//! ```no_run
//! # async fn demo(store: &sealer_image_store::Store) -> Result<(), Box<dyn std::error::Error>> {
//! use sealer_registry_client::{ClientOptions, NoProgress, PlatformSelection, RegistryClient};
//!
//! let client = RegistryClient::new(ClientOptions::default())?;
//! let reference = "quay.io/coreos/etcd:v3.5.9".parse()?;
//! let pulled = client
//!     .pull(store, &reference, PlatformSelection::Host, &NoProgress)
//!     .await?;
//! let mirror = "registry.example.com/mirror/etcd:v3.5.9".parse()?;
//! let pushed = client.push(store, &reference.to_string(), &mirror, &NoProgress).await?;
//! assert_eq!(pulled.digest, pushed.digest);
//! # Ok(()) }
//! ```
//!
//! * [`RegistryClient`] (module `client`): HTTPS with rustls (ring provider; the system's CA
//!   certificates plus [`ClientOptions::ca_files`], or a configuration built once by
//!   [`tls_config`] and shared through [`ClientOptions::tls`]), plain HTTP only for
//!   loopback hosts and [`ClientOptions::insecure_hosts`]; retries with backoff on
//!   connection errors, `429` and `5xx`, honouring `Retry-After` ([`RetryPolicy`]);
//!   redirects followed without forwarding `Authorization` to another host.
//! * [`auth`]: `WWW-Authenticate` parsing, the bearer-token flow, tokens cached per (realm,
//!   service, scope, credentials) and fetched once under concurrency. A token realm
//!   outside the registry's domain never sees credentials: sealer asks it for an anonymous
//!   token instead (and `login` fails).
//! * [`credentials`]: docker `config.json` (`auths`, `credsStore`, `credHelpers`) and
//!   containers `auth.json`; [`RegistryClient::login`] verifies and writes `config.json`
//!   (0600), [`RegistryClient::logout`] removes the entry.
//! * [`RegistryClient::pull`] (module `pull`): byte-exact manifests, the selected platforms
//!   only, blobs streamed straight into an `Ingest` by parallel workers and resumed with
//!   `Range` after a dropped connection; all or nothing.
//! * [`RegistryClient::push`] (module `push`): `HEAD` per blob, cross-repository mount,
//!   monolithic upload for small blobs and streamed (or chunked) `PATCH` for large ones,
//!   manifests children first, digests checked.
//! * Single reads for callers that serve what they fetch (a pull-through cache):
//!   [`RegistryClient::head_manifest`], [`RegistryClient::get_manifest`],
//!   [`RegistryClient::head_blob`] and [`RegistryClient::get_blob`], whose
//!   [`BlobDownload`] resumes with `Range` by itself; [`ClientOptions::base_urls`] for
//!   registries whose address is configured; [`RegistryClient::stats`] for metrics.
//! * [`TransferProgress`]: per-blob start/advance/finish callbacks.
//! * [`address_policy`]: [`ClientOptions::address_policy`] refuses connections to loopback,
//!   private, link-local and cloud-metadata addresses (at resolution, for IP literals and
//!   at every redirect hop) unless a range admits them.
//!
//! Pull runs on any tokio runtime (its blob workers, which write to disk, run on the
//! runtime's blocking pool).

#![deny(missing_docs)]

pub mod address_policy;
pub mod auth;
mod client;
pub mod credentials;
mod fetch;
mod progress;
mod pull;
mod push;
mod redact;
mod retry;

pub use address_policy::{AddressPolicy, AddressRange, AddressRefused};
pub use client::{
    ClientError, ClientOptions, ClientStats, DEFAULT_MONOLITHIC_LIMIT, FetchedManifest,
    MANIFEST_ACCEPT, RegistryClient, api_host, normalize_registry, tls_config,
};
pub use credentials::{Credential, CredentialError, CredentialStore};
pub use fetch::{BlobDownload, MAX_TAG_PAGES, ManifestHead};
pub use progress::{BlobOutcome, NoProgress, TransferProgress};
pub use pull::{PlatformSelection, PullError, PullReport};
pub use push::{PushError, PushReport};
pub use redact::redact_url;
pub use retry::RetryPolicy;

/// The one way to print an error with its causes (defined in fs-abstraction, which every
/// crate depends on).
pub use sealer_fs_abstraction::{ErrorChain, error_chain};
