//! The HTTP side: [`RegistryClient`] and the distribution API calls that pull and push are
//! made of, in files named for what they hold: `options` ([`ClientOptions`]), `error`
//! ([`ClientError`]), `endpoint` (registry names, base and API URLs), `request` (the
//! request/retry loop), `auth_flow` (challenges, credentials, tokens), `login`, `tls`.

mod auth_flow;
mod endpoint;
mod error;
mod login;
mod options;
mod request;
mod tls;

pub use self::endpoint::api_host;
pub use self::endpoint::normalize_registry;
use self::endpoint::{PlainHttpPolicy, base_url_of, host_of};
pub use self::error::ClientError;
pub use self::options::ClientOptions;
pub(crate) use self::request::{
    Body, Request, Scope, digest_of, error_message, read_limited, status_error,
};
pub use self::tls::tls_config;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderName};
use reqwest::{Method, Url};
use sealer_image_store::model::media_type;
use sealer_image_store::{Digest, MAX_MANIFEST_SIZE};

use crate::address_policy::AddressRefused;
use crate::auth::{Challenge, TokenCache};
use crate::credentials::CredentialStore;

/// The manifest media types sealer accepts, in `Accept` order.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";
/// Blobs up to this size are pushed in one `PUT` (default of
/// [`ClientOptions::monolithic_limit`]).
pub const DEFAULT_MONOLITHIC_LIMIT: u64 = 8 << 20;
/// `Docker-Content-Digest`.
pub(crate) const DOCKER_CONTENT_DIGEST: HeaderName =
    HeaderName::from_static("docker-content-digest");
/// Error bodies are read up to this size for messages.
const MAX_ERROR_BODY: usize = 64 << 10;

/// A client for OCI/Docker registries; cheap to clone (clones share connections, tokens
/// and credentials). See the crate documentation.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) http: reqwest::Client,
    pub(crate) options: ClientOptions,
    credentials: Arc<CredentialStore>,
    tokens: TokenCache,
    /// The last challenge each registry sent.
    challenges: Mutex<HashMap<String, Challenge>>,
    /// The base URL (scheme and API host) of each registry, once known.
    bases: tokio::sync::Mutex<HashMap<String, Url>>,
    plain_http: Arc<PlainHttpPolicy>,
    counters: Counters,
}

/// A manifest as fetched: exact bytes, their digest and media type.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes received (at most [`MAX_MANIFEST_SIZE`]).
    pub bytes: Vec<u8>,
    /// Their digest: the pinned one or `Docker-Content-Digest`'s algorithm when given
    /// (verified), else sha256.
    pub digest: Digest,
    /// The media type from `Content-Type`, when it is a manifest type.
    pub content_type: Option<String>,
}

/// Counters of what a [`RegistryClient`] sent, for metrics ([`RegistryClient::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// HTTP requests sent to registries (every attempt: retries and the request repeated
    /// after a `401` count).
    pub requests: u64,
    /// Tokens fetched from token servers (cached tokens reused do not count).
    pub token_fetches: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    token_fetches: AtomicU64,
}

impl RegistryClient {
    /// A client with `options`: builds the TLS configuration (system roots plus
    /// `ca_files`; reads them from disk) unless `options.tls` gives one, and the
    /// connection pool.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let tls = match &options.tls {
            Some(tls) => rustls::ClientConfig::clone(tls),
            None => tls_config(&options.ca_files)?,
        };
        let plain_http = Arc::new(PlainHttpPolicy {
            insecure: options
                .insecure_hosts
                .iter()
                .map(|host| host.to_ascii_lowercase())
                .collect(),
        });
        let mut bases = HashMap::new();
        for (registry, base) in &options.base_urls {
            bases.insert(registry.clone(), base_url_of(base, &plain_http)?);
        }
        let policy = plain_http.clone();
        let addresses = options.address_policy.clone();
        let hop_addresses = addresses.clone();
        // Redirects (blob downloads are often sent to object storage): reqwest drops
        // `Authorization` whenever the next URL's host, port or scheme differs, so a token
        // never reaches another host; plain HTTP is followed only to hosts that allow it.
        // A hop to an IP literal is checked here (names at their resolution).
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() != "https" && !policy.allows_url(attempt.url()) {
                let refused = format!("refusing a redirect to plain HTTP: {}", attempt.url());
                attempt.error(refused)
            } else if let Some(refused) = hop_addresses
                .as_ref()
                .and_then(|policy| policy.check_url(attempt.url()).err())
            {
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        });
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(redirect);
        if let Some(policy) = addresses {
            // Direct connections only: a forward proxy (`HTTPS_PROXY`) would resolve the
            // names where the policy cannot see the addresses.
            builder = builder
                .dns_resolver(crate::address_policy::PolicyResolver { policy })
                .no_proxy();
        }
        let http = builder.build().map_err(ClientError::Build)?;
        let mut options = options;
        let credentials = Arc::new(std::mem::replace(
            &mut options.credentials,
            CredentialStore::anonymous(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                options,
                credentials,
                tokens: TokenCache::new(),
                challenges: Mutex::default(),
                bases: tokio::sync::Mutex::new(bases),
                plain_http,
                counters: Counters::default(),
            }),
        })
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The credential store.
    pub fn credentials(&self) -> &CredentialStore {
        &self.inner.credentials
    }

    /// Checks the host of `url` against the address policy when it is an IP literal (no
    /// resolution, so the resolver never sees it).
    pub(crate) fn check_address(&self, method: &Method, url: &Url) -> Result<(), ClientError> {
        match &self.inner.options.address_policy {
            Some(policy) => policy
                .check_url(url)
                .map_err(|refused| address_refused(method, url, refused)),
            None => Ok(()),
        }
    }

    /// What this client (and its clones) sent so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.inner.counters.requests.load(Ordering::Relaxed),
            token_fetches: self.inner.counters.token_fetches.load(Ordering::Relaxed),
        }
    }

    /// Fetches a manifest or index by tag or digest: exact bytes (at most 4 MiB), verified
    /// against `expected` when given, else against `Docker-Content-Digest` when sent.
    pub(crate) async fn fetch_manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
        expected: Option<&Digest>,
        scope: &Scope,
    ) -> Result<FetchedManifest, ClientError> {
        let url = self
            .api_url(registry, repository, &format!("manifests/{reference}"))
            .await?;
        let request = Request::new(Method::GET, registry, url.clone(), scope)
            .header(ACCEPT, MANIFEST_ACCEPT)?;
        let response = self.send_ok(request).await?;
        let header_digest = response
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<Digest>().ok());
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned())
            .filter(|value| media_type::is_index(value) || media_type::is_manifest(value));
        let bytes = read_limited(response, MAX_MANIFEST_SIZE)
            .await
            .map_err(|source| ClientError::Transport {
                request: format!("{} {}", Method::GET, url.clone()),
                source,
            })?
            .ok_or_else(|| ClientError::Protocol {
                url: url.clone().to_string(),
                reason: format!("the manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
            })?;
        let check = expected.or(header_digest.as_ref());
        let digest = match check {
            Some(check) => {
                let actual = digest_of(check, &bytes);
                if &actual != check {
                    return Err(ClientError::Protocol {
                        url: url.to_string(),
                        reason: format!(
                            "the manifest's digest is {actual}, expected {check}; nothing was stored"
                        ),
                    });
                }
                actual
            }
            None => Digest::sha256(&bytes),
        };
        Ok(FetchedManifest {
            bytes,
            digest,
            content_type,
        })
    }
}

/// The error of a request to `url` that the address policy refused (its password
/// redacted).
pub(crate) fn address_refused(method: &Method, url: &Url, refused: AddressRefused) -> ClientError {
    ClientError::AddressRefused {
        request: format!("{method} {}", crate::redact_url(url.as_str())),
        refused,
    }
}

#[cfg(test)]
mod tests;
