//! The HTTP side: [`RegistryClient`], its options, TLS, the authentication flow, retries and
//! the distribution API calls that pull and push are made of.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode, Url};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::model::media_type;
use sealer_image_store::{Digest, Hasher, MAX_MANIFEST_SIZE};

use crate::auth::{
    AuthError, Challenge, Token, TokenCache, TokenKey, realm_downgrades_credentials,
    realm_may_see_credentials,
};
use crate::credentials::{Credential, CredentialError, CredentialStore};
use crate::redact::redact_url;
use crate::retry::{RetryPolicy, is_retryable_error, is_retryable_status};

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
    #[error("building the HTTP client: {0}")]
    Build(#[source] reqwest::Error),
    /// The request failed on the network (after the retries).
    #[error("{request}: {source}")]
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
}

/// How a [`RegistryClient`] behaves.
#[derive(Debug)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) that may be spoken to over plain HTTP, after
    /// HTTPS failed. Loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) always may. TLS,
    /// when used, is always verified: add private CAs with `ca_files`.
    pub insecure_hosts: Vec<String>,
    /// Extra PEM files of CA certificates trusted besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Blobs transferred at once (default 4).
    pub max_concurrency: usize,
    /// Where credentials come from.
    pub credentials: CredentialStore,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// How failed requests are retried.
    pub retries: RetryPolicy,
    /// Times a blob download resumes with `Range` after its connection broke.
    pub max_resumes: u32,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// The longest silence while waiting for response data.
    pub read_timeout: Duration,
    /// Blobs up to this size are pushed in one `PUT` (default 8 MiB).
    pub monolithic_limit: u64,
    /// Larger blobs are pushed in `PATCH` chunks of this size, or in one streamed `PATCH`
    /// when `None` (the default).
    pub chunk_size: Option<u64>,
    /// The API base URL of registries whose address is known (`docker.io` →
    /// `https://registry-1.docker.io/`, `10.0.0.5:5000` → `http://10.0.0.5:5000/`), used
    /// as given instead of probing HTTPS first: a configured upstream that accepts
    /// connections but never answers then cannot stall the probe. `http://` only for
    /// hosts that allow plain HTTP (loopback and `insecure_hosts`).
    pub base_urls: BTreeMap<String, String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure_hosts: Vec::new(),
            ca_files: Vec::new(),
            max_concurrency: 4,
            credentials: CredentialStore::from_env(),
            user_agent: format!("sealer/{}", env!("CARGO_PKG_VERSION")),
            retries: RetryPolicy::default(),
            max_resumes: 5,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            monolithic_limit: DEFAULT_MONOLITHIC_LIMIT,
            chunk_size: None,
            base_urls: BTreeMap::new(),
        }
    }
}

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

/// Which hosts may be spoken to over plain HTTP.
#[derive(Debug)]
struct PlainHttpPolicy {
    insecure: HashSet<String>,
}

impl PlainHttpPolicy {
    /// `authority` is `host` or `host:port`.
    fn allows(&self, authority: &str) -> bool {
        let host = host_of(authority);
        is_loopback(host)
            || self.insecure.contains(&authority.to_ascii_lowercase())
            || self.insecure.contains(&host.to_ascii_lowercase())
    }

    fn allows_url(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        match url.port() {
            Some(port) => self.allows(&format!("{host}:{port}")),
            None => self.allows(host),
        }
    }
}

/// Parses and checks a configured base URL (see [`ClientOptions::base_urls`]).
fn base_url_of(base: &str, plain_http: &PlainHttpPolicy) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::Url {
        url: redact_url(base),
        reason,
    };
    let url = Url::parse(base).map_err(|error| invalid(error.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        // Request URLs are built from the base, so every message would carry them.
        return Err(invalid(
            "a registry base URL holds no credentials: configure them separately".to_owned(),
        ));
    }
    if url.host_str().is_none()
        || url.query().is_some()
        || url.fragment().is_some()
        || url.path() != "/"
    {
        return Err(invalid(
            "a registry base URL is scheme://host[:port]/, without a path".to_owned(),
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if plain_http.allows_url(&url) => Ok(url),
        "http" => Err(invalid(
            "plain HTTP only for loopback hosts and insecure hosts".to_owned(),
        )),
        other => Err(invalid(format!("unsupported scheme {other}"))),
    }
}

/// The host of `host[:port]` (IPv6 brackets kept off).
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host that serves the API of `registry` (Docker Hub's is not `docker.io`).
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// The access a request needs, as token scopes (`repository:NAME:pull,push`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    scopes: Vec<String>,
    /// The repository credentials are looked up for.
    repository: Option<String>,
}

impl Scope {
    /// Pull access to `repository`.
    pub(crate) fn pull(repository: &str) -> Self {
        Self {
            scopes: vec![format!("repository:{repository}:pull")],
            repository: Some(repository.to_owned()),
        }
    }

    /// Push access to `repository`, plus pull access to `mount_from` when given.
    pub(crate) fn push(repository: &str, mount_from: Option<&str>) -> Self {
        let mut scopes = vec![format!("repository:{repository}:pull,push")];
        scopes.extend(mount_from.map(|from| format!("repository:{from}:pull")));
        Self {
            scopes,
            repository: Some(repository.to_owned()),
        }
    }
}

/// A request body.
pub(crate) enum Body {
    /// None.
    Empty,
    /// Bytes in memory: the request can be repeated.
    Bytes(Bytes),
    /// A stream: sent once, never repeated.
    Stream(Option<reqwest::Body>),
}

/// One distribution API request.
pub(crate) struct Request<'a> {
    pub(crate) method: Method,
    pub(crate) registry: &'a str,
    pub(crate) url: Url,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Body,
    pub(crate) scope: &'a Scope,
    /// Credentials to use instead of the stored ones (login).
    pub(crate) credential: Option<&'a Credential>,
    /// Whether transient failures are retried here (the body must be repeatable).
    pub(crate) retry: bool,
}

impl<'a> Request<'a> {
    pub(crate) fn new(method: Method, registry: &'a str, url: Url, scope: &'a Scope) -> Self {
        Self {
            method,
            registry,
            url,
            headers: HeaderMap::new(),
            body: Body::Empty,
            scope,
            credential: None,
            retry: true,
        }
    }

    pub(crate) fn header(mut self, name: HeaderName, value: &str) -> Result<Self, ClientError> {
        let value = HeaderValue::from_str(value).map_err(|_| ClientError::Url {
            url: self.url.to_string(),
            reason: format!("invalid {name} header value"),
        })?;
        self.headers.insert(name, value);
        Ok(self)
    }

    pub(crate) fn body(mut self, body: Body) -> Self {
        if matches!(body, Body::Stream(_)) {
            self.retry = false;
        }
        self.body = body;
        self
    }

    fn take_body(&mut self) -> Option<reqwest::Body> {
        match &mut self.body {
            Body::Empty => None,
            Body::Bytes(bytes) => Some(reqwest::Body::from(bytes.clone())),
            Body::Stream(stream) => stream.take(),
        }
    }
}

/// The `Authorization` value used for a request, and the cached token it came from.
struct Authorization {
    value: String,
    token: Option<(TokenKey, String)>,
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
    /// `ca_files`) and the connection pool.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let tls = tls_config(&options.ca_files)?;
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
        // Redirects (blob downloads are often sent to object storage): reqwest drops
        // `Authorization` whenever the next URL's host, port or scheme differs, so a token
        // never reaches another host; plain HTTP is followed only to hosts that allow it.
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                attempt.error("too many redirects")
            } else if attempt.url().scheme() != "https" && !policy.allows_url(attempt.url()) {
                let refused = format!("refusing a redirect to plain HTTP: {}", attempt.url());
                attempt.error(refused)
            } else {
                attempt.follow()
            }
        });
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .redirect(redirect)
            .build()
            .map_err(ClientError::Build)?;
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

    /// What this client (and its clones) sent so far.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.inner.counters.requests.load(Ordering::Relaxed),
            token_fetches: self.inner.counters.token_fetches.load(Ordering::Relaxed),
        }
    }

    /// The base URL of `registry`'s API: `https://HOST/`, or `http://HOST/` for a host that
    /// allows plain HTTP and does not answer HTTPS (probed once per client).
    pub(crate) async fn base_url(&self, registry: &str) -> Result<Url, ClientError> {
        let mut bases = self.inner.bases.lock().await;
        if let Some(base) = bases.get(registry) {
            return Ok(base.clone());
        }
        let host = api_host(registry);
        let parse = |scheme: &str| {
            Url::parse(&format!("{scheme}://{host}/")).map_err(|error| ClientError::Url {
                url: format!("{scheme}://{host}/"),
                reason: error.to_string(),
            })
        };
        let https = parse("https")?;
        let base = if self.inner.plain_http.allows(host) {
            let probe = self
                .inner
                .http
                .get(https.join("v2/").map_err(|error| ClientError::Url {
                    url: https.to_string(),
                    reason: error.to_string(),
                })?)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match probe {
                Ok(_) => https,
                Err(error) => {
                    tracing::debug!(registry, %error, "no HTTPS; using plain HTTP");
                    parse("http")?
                }
            }
        } else {
            https
        };
        bases.insert(registry.to_owned(), base.clone());
        Ok(base)
    }

    /// `BASE/v2/REPOSITORY/SUFFIX`.
    pub(crate) async fn api_url(
        &self,
        registry: &str,
        repository: &str,
        suffix: &str,
    ) -> Result<Url, ClientError> {
        let base = self.base_url(registry).await?;
        let text = format!("v2/{repository}/{suffix}");
        base.join(&text).map_err(|error| ClientError::Url {
            url: format!("{base}{text}"),
            reason: error.to_string(),
        })
    }

    /// Resolves a `Location` header against the registry's base URL.
    pub(crate) fn location(&self, response: &Response) -> Result<Url, ClientError> {
        let url = response.url().clone();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| ClientError::Protocol {
                url: url.clone().to_string(),
                reason: "the answer has no Location header".to_owned(),
            })?;
        let next = url.join(location).map_err(|error| ClientError::Protocol {
            url: url.clone().to_string(),
            reason: format!("invalid Location {location:?}: {error}"),
        })?;
        if next.scheme() != "https" && !self.inner.plain_http.allows_url(&next) {
            return Err(ClientError::Url {
                url: next.to_string(),
                reason: "refusing plain HTTP to a host not marked insecure".to_owned(),
            });
        }
        Ok(next)
    }

    /// Sends `request` with authentication and retries: a `401` is answered once per call
    /// (credentials or a fresh token), transient failures are retried per the policy when
    /// the body can be repeated. Returns any response that is not one of those.
    pub(crate) async fn send(&self, mut request: Request<'_>) -> Result<Response, ClientError> {
        let policy = &self.inner.options.retries;
        let mut attempt = 0;
        let mut answered_challenge = false;
        loop {
            attempt += 1;
            let authorization = self.authorization(&request).await?;
            let mut builder = self
                .inner
                .http
                .request(request.method.clone(), request.url.clone())
                .headers(request.headers.clone());
            if let Some(authorization) = &authorization {
                let mut value = HeaderValue::from_str(&authorization.value).map_err(|_| {
                    ClientError::Protocol {
                        url: request.url.clone().to_string(),
                        reason: "the credentials are not a valid header value".to_owned(),
                    }
                })?;
                value.set_sensitive(true);
                builder = builder.header(AUTHORIZATION, value);
            }
            if let Some(body) = request.take_body() {
                builder = builder.body(body);
            }
            let can_retry = request.retry && attempt < policy.max_attempts.max(1);
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let response = match builder.send().await {
                Ok(response) => response,
                Err(error) if can_retry && is_retryable_error(&error) => {
                    let wait = policy.backoff(attempt);
                    tracing::info!(method = %request.method, url = %request.url, %error, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(source) => {
                    return Err(ClientError::Transport {
                        request: format!("{} {}", request.method.clone(), request.url.clone()),
                        source,
                    });
                }
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|value| value.to_str().ok())
                    .map(Challenge::parse_supported)
                    .transpose()?
                    .flatten();
                if let Some((key, value)) = authorization.as_ref().and_then(|a| a.token.as_ref()) {
                    self.inner.tokens.invalidate(key, value).await;
                }
                let repeatable = !matches!(request.body, Body::Stream(_));
                if let Some(challenge) = challenge
                    && !answered_challenge
                    && repeatable
                {
                    answered_challenge = true;
                    attempt -= 1;
                    self.inner
                        .challenges
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(request.registry.to_owned(), challenge);
                    continue;
                }
                let message = error_message(response).await.1;
                if authorization.is_none() {
                    // Retrying without credentials: only when none are known.
                    let known = self.credential_for(&request).await?.is_some();
                    if !known {
                        return Err(AuthError::NoCredentials {
                            registry: request.registry.to_owned(),
                        }
                        .into());
                    }
                }
                return Err(AuthError::Unauthorized {
                    registry: request.registry.to_owned(),
                    message,
                }
                .into());
            }
            if is_retryable_status(status) && can_retry {
                let wait = match policy.retry_after(response.headers()) {
                    Some(Ok(wait)) => wait,
                    Some(Err(too_long)) => {
                        return Err(ClientError::RetryAfterTooLong {
                            url: request.url.clone().to_string(),
                            seconds: too_long.as_secs(),
                        });
                    }
                    None => policy.backoff(attempt),
                };
                tracing::info!(method = %request.method, url = %request.url, %status, ?wait, "retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Ok(response);
        }
    }

    /// Sends `request` and turns an error status into [`ClientError::Status`].
    pub(crate) async fn send_ok(&self, request: Request<'_>) -> Result<Response, ClientError> {
        let method = request.method.clone();
        let response = self.send(request).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(status_error(method, response).await)
        }
    }

    async fn credential_for(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<Credential>, ClientError> {
        if let Some(credential) = request.credential {
            return Ok(Some(credential.clone()));
        }
        let store = self.inner.credentials.clone();
        let registry = request.registry.to_owned();
        let repository = request.scope.repository.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || store.get(&registry, &repository))
            .await
            .map_err(|error| ClientError::Runtime(format!("credential lookup: {error}")))?
            .map_err(Into::into)
    }

    /// The `Authorization` for `request`, from the registry's last challenge: basic
    /// credentials, or a (cached) bearer token for the request's scope.
    async fn authorization(
        &self,
        request: &Request<'_>,
    ) -> Result<Option<Authorization>, ClientError> {
        let challenge = self
            .inner
            .challenges
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(request.registry)
            .cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        let credential = self.credential_for(request).await?;
        match challenge {
            Challenge::Basic { .. } => Ok(credential
                .as_ref()
                .and_then(Credential::basic_header)
                .map(|value| Authorization { value, token: None })),
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scopes: Vec<String> = if request.scope.scopes.is_empty() {
                    scope.into_iter().collect()
                } else {
                    request.scope.scopes.clone()
                };
                let realm_url = self.realm_url(&realm)?;
                let registry_host = host_of(api_host(request.registry));
                let credential = match credential {
                    Some(_) if realm_downgrades_credentials(&request.url, &realm_url) => {
                        return Err(AuthError::CleartextRealm {
                            realm: redact_url(&realm),
                        }
                        .into());
                    }
                    Some(_) if !realm_may_see_credentials(registry_host, &realm_url) => {
                        if request.credential.is_some() {
                            return Err(AuthError::Realm {
                                realm: redact_url(&realm),
                                reason: format!(
                                    "it is not within {registry_host}'s domain, so it may not see its credentials"
                                ),
                            }
                            .into());
                        }
                        tracing::warn!(
                            %realm,
                            registry = request.registry,
                            "the token realm is outside the registry's domain; asking for an anonymous token"
                        );
                        None
                    }
                    other => other,
                };
                let key = TokenKey {
                    realm: realm.clone(),
                    service: service.clone().unwrap_or_default(),
                    scope: scopes.join(" "),
                    identity: credential
                        .as_ref()
                        .map(Credential::identity)
                        .unwrap_or_default(),
                };
                let token = self
                    .inner
                    .tokens
                    .get_or_fetch(&key, || {
                        self.fetch_token(
                            &realm_url,
                            service.as_deref(),
                            &scopes,
                            credential.as_ref(),
                        )
                    })
                    .await?;
                Ok(Some(Authorization {
                    value: format!("Bearer {token}"),
                    token: Some((key, token)),
                }))
            }
        }
    }

    fn realm_url(&self, realm: &str) -> Result<Url, AuthError> {
        let url = Url::parse(realm).map_err(|error| AuthError::Realm {
            realm: redact_url(realm),
            reason: error.to_string(),
        })?;
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.inner.plain_http.allows_url(&url) => Ok(url),
            _ => Err(AuthError::Realm {
                realm: redact_url(realm),
                reason:
                    "a token realm must be https (plain HTTP only on loopback or insecure hosts)"
                        .to_owned(),
            }),
        }
    }

    /// Asks the token server for a token: `GET realm?service=…&scope=…` (with basic
    /// credentials when known), or the OAuth2 refresh-token `POST` for identity tokens.
    async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<Token, ClientError> {
        let realm_text = redact_url(realm.as_str());
        let policy = &self.inner.options.retries;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let builder = match credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form = Url::parse("form:x").map_err(|error| ClientError::Url {
                        url: realm_text.clone(),
                        reason: error.to_string(),
                    })?;
                    {
                        let mut pairs = form.query_pairs_mut();
                        pairs.append_pair("grant_type", "refresh_token");
                        pairs.append_pair("refresh_token", refresh);
                        pairs.append_pair("client_id", "sealer");
                        if let Some(service) = service {
                            pairs.append_pair("service", service);
                        }
                        pairs.append_pair("scope", &scopes.join(" "));
                    }
                    self.inner
                        .http
                        .post(realm.clone())
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(form.query().unwrap_or_default().to_owned())
                }
                _ => {
                    let mut url = realm.clone();
                    {
                        let mut pairs = url.query_pairs_mut();
                        if let Some(service) = service {
                            pairs.append_pair("service", service);
                        }
                        for scope in scopes {
                            pairs.append_pair("scope", scope);
                        }
                    }
                    let mut builder = self.inner.http.get(url);
                    if let Some(header) = credential.and_then(Credential::basic_header) {
                        let mut value =
                            HeaderValue::from_str(&header).map_err(|_| ClientError::Protocol {
                                url: realm.clone().to_string(),
                                reason: "the credentials are not a valid header value".to_owned(),
                            })?;
                        value.set_sensitive(true);
                        builder = builder.header(AUTHORIZATION, value);
                    }
                    builder
                }
            };
            let can_retry = attempt < policy.max_attempts.max(1);
            let response = match builder.send().await {
                Ok(response) => response,
                Err(error) if can_retry && is_retryable_error(&error) => {
                    tokio::time::sleep(policy.backoff(attempt)).await;
                    continue;
                }
                Err(source) => {
                    // The realm is named (redacted) already; reqwest would print it whole.
                    return Err(AuthError::TokenRequest {
                        realm: realm_text,
                        source: source.without_url(),
                    }
                    .into());
                }
            };
            let status = response.status();
            if is_retryable_status(status) && can_retry {
                tokio::time::sleep(policy.backoff(attempt)).await;
                continue;
            }
            if !status.is_success() {
                let message = error_message(response).await.1;
                return Err(AuthError::TokenDenied {
                    realm: realm_text,
                    status: status.as_u16(),
                    message,
                }
                .into());
            }
            let body = read_limited(response, MAX_ERROR_BODY as u64)
                .await
                .map_err(|source| AuthError::TokenRequest {
                    realm: realm_text.clone(),
                    source: source.without_url(),
                })?
                .ok_or_else(|| AuthError::TokenResponse {
                    realm: realm_text.clone(),
                    reason: "the answer is too large".to_owned(),
                })?;
            tracing::debug!(realm = %realm_text, ?scopes, "fetched a registry token");
            self.inner
                .counters
                .token_fetches
                .fetch_add(1, Ordering::Relaxed);
            return Ok(Token::from_answer(&realm_text, &body)?);
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

    /// Checks credentials for `registry` (a host, `docker.io` for Docker Hub) by calling
    /// `GET /v2/` with them through the whole auth flow, then stores them in docker's
    /// `config.json` (see [`CredentialStore::save_login`]). Returns the file written.
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<PathBuf, ClientError> {
        let registry = normalize_registry(registry)?;
        let credential = Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let scope = Scope::default();
        let base = self.base_url(&registry).await?;
        let url = base.join("v2/").map_err(|error| ClientError::Url {
            url: base.to_string(),
            reason: error.to_string(),
        })?;
        let mut request = Request::new(Method::GET, &registry, url, &scope);
        request.credential = Some(&credential);
        let response = self.send(request).await?;
        if !response.status().is_success() {
            return Err(status_error(Method::GET, response).await);
        }
        tracing::info!(registry, username, "credentials accepted");
        let store = self.inner.credentials.clone();
        let (user, secret) = (username.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || store.save_login(&registry, &user, &secret))
            .await
            .map_err(|error| ClientError::Runtime(format!("saving the login: {error}")))?
            .map_err(Into::into)
    }

    /// Removes the stored credentials of `registry`; returns whether there were any.
    pub fn logout(&self, registry: &str) -> Result<bool, ClientError> {
        let registry = normalize_registry(registry)?;
        Ok(self.inner.credentials.remove_login(&registry)?)
    }
}

/// A registry host as the user typed it (`https://index.docker.io/v1/`, `quay.io`,
/// `localhost:5000`) in the form references use (`docker.io`).
pub fn normalize_registry(input: &str) -> Result<String, ClientError> {
    let trimmed = input
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = trimmed.split('/').next().unwrap_or(trimmed);
    let probe = format!("{host}/x");
    let reference: sealer_image_store::Reference = probe.parse().map_err(|_| ClientError::Url {
        url: redact_url(input),
        reason: "not a registry host".to_owned(),
    })?;
    // `nginx/x` would parse with docker.io as registry: the host must have been taken.
    let registry = reference.registry().to_owned();
    let is_hub_alias = matches!(
        host,
        "index.docker.io" | "registry-1.docker.io" | "docker.io"
    );
    if registry != host && !is_hub_alias {
        return Err(ClientError::Url {
            url: redact_url(input),
            reason: "not a registry host (it needs a `.`, a `:port` or to be `localhost`)"
                .to_owned(),
        });
    }
    Ok(registry)
}

/// The digest of `bytes` with the algorithm of `like`.
pub(crate) fn digest_of(like: &Digest, bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new(like.algorithm());
    hasher.update(bytes);
    hasher.finish()
}

/// Reads a whole body, or `None` when it is longer than `limit`.
pub(crate) async fn read_limited(
    mut response: Response,
    limit: u64,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|length| length > limit)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The distribution error code and message of an error response.
pub(crate) async fn error_message(response: Response) -> (Option<String>, String) {
    let status = response.status();
    let body = read_limited(response, MAX_ERROR_BODY as u64)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let first = parsed
        .as_ref()
        .and_then(|value| value.get("errors"))
        .and_then(|errors| errors.get(0));
    if let Some(first) = first {
        let code = first
            .get("code")
            .and_then(|c| c.as_str())
            .map(str::to_owned);
        let message = first
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        return (code, message);
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("no message").to_owned()
    } else {
        text.chars().take(300).collect()
    };
    (None, message)
}

/// A [`ClientError::Status`] from an error response.
pub(crate) async fn status_error(method: Method, response: Response) -> ClientError {
    let url = response.url().clone();
    let status = response.status().as_u16();
    let (code, message) = error_message(response).await;
    ClientError::Status {
        request: format!("{method} {url}"),
        status,
        code,
        message,
    }
}

/// The rustls configuration: the system's CA certificates plus `ca_files`, the ring
/// provider, HTTP/2 and HTTP/1.1 offered by ALPN.
fn tls_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "skipping a system CA certificate source");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    for path in ca_files {
        let ca_error = |reason: String| ClientError::CaFile {
            path: path.clone(),
            reason,
        };
        let bytes = read_file(path).map_err(|error| ca_error(error.to_string()))?;
        let mut count = 0;
        for certificate in CertificateDer::pem_slice_iter(&bytes) {
            let certificate = certificate.map_err(|error| ca_error(error.to_string()))?;
            roots
                .add(certificate)
                .map_err(|error| ca_error(error.to_string()))?;
            count += 1;
        }
        if count == 0 {
            return Err(ca_error("no PEM certificate in it".to_owned()));
        }
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates found (install ca-certificates, or pass CA files)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Tls(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a file through a [`RealFs`] rooted at its directory.
fn read_file(path: &Path) -> Result<Vec<u8>, sealer_fs_abstraction::FsError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().map(Path::new).unwrap_or(path);
    RealFs::open_root(dir)?.read(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_insecure_hosts() {
        let policy = PlainHttpPolicy {
            insecure: ["reg.lan".to_owned(), "other.lan:5000".to_owned()]
                .into_iter()
                .collect(),
        };
        for allowed in [
            "localhost:5000",
            "127.0.0.1:1",
            "[::1]:5000",
            "reg.lan:443",
            "reg.lan",
            "other.lan:5000",
        ] {
            assert!(policy.allows(allowed), "{allowed}");
        }
        for refused in [
            "quay.io",
            "10.0.0.1:5000",
            "other.lan:5001",
            "other.lan",
            "localhost.evil.com",
        ] {
            assert!(!policy.allows(refused), "{refused}");
        }
    }

    #[test]
    fn registry_names_are_normalised() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/").unwrap(),
            "docker.io"
        );
        assert_eq!(normalize_registry("docker.io").unwrap(), "docker.io");
        assert_eq!(
            normalize_registry("localhost:5000").unwrap(),
            "localhost:5000"
        );
        assert_eq!(normalize_registry("quay.io").unwrap(), "quay.io");
        assert!(normalize_registry("nginx").is_err());
        assert!(normalize_registry("bad host").is_err());
        // A password typed into the URL stays out of the message.
        let error = normalize_registry("https://u:hunter2@registry.example.com")
            .unwrap_err()
            .to_string();
        assert!(
            !error.contains("hunter2") && error.contains("u:***@"),
            "{error}"
        );
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
    }

    /// A loopback HTTP server answering one canned response per connection; returns its
    /// address and the request heads it received.
    fn fake_server(
        ip: &str,
        responses: Vec<String>,
    ) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for response in responses {
                let stream = loop {
                    let Ok((stream, _)) = listener.accept() else {
                        return;
                    };
                    // The client's HTTPS probe (a TLS handshake): refuse it, as a plain
                    // HTTP registry does, without using up a response.
                    let mut first = [0u8; 1];
                    if stream.peek(&mut first).is_ok() && first[0] == 0x16 {
                        continue;
                    }
                    break stream;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                record.lock().unwrap().push(head);
                let mut stream = stream;
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (addr, seen)
    }

    fn answer(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn test_client(credentials: CredentialStore) -> RegistryClient {
        RegistryClient::new(ClientOptions {
            credentials,
            retries: RetryPolicy {
                initial_backoff: Duration::from_millis(10),
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redirects_to_another_host_do_not_carry_authorization() {
        let (storage, storage_seen) =
            fake_server("127.0.0.2", vec![answer("200 OK", "", "blob-bytes")]);
        let redirect = format!("Location: http://{storage}/bucket/blob?sig=1\r\n");
        let (registry, registry_seen) = fake_server(
            "127.0.0.1",
            vec![
                answer(
                    "401 Unauthorized",
                    "WWW-Authenticate: Basic realm=\"r\"\r\n",
                    "",
                ),
                answer("307 Temporary Redirect", &redirect, ""),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let host = registry.to_string();
        CredentialStore::with_docker_config_dir(dir.path())
            .save_login(&host, "user", "secret")
            .unwrap();
        let client = test_client(CredentialStore::with_docker_config_dir(dir.path()));
        let scope = Scope::pull("repo");
        let url = client
            .api_url(&host, "repo", "blobs/sha256:00")
            .await
            .unwrap();
        let response = client
            .send_ok(Request::new(Method::GET, &host, url, &scope))
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "blob-bytes");
        let registry_seen = registry_seen.lock().unwrap().clone();
        assert_eq!(registry_seen.len(), 2);
        assert!(
            !registry_seen[0]
                .to_ascii_lowercase()
                .contains("authorization")
        );
        assert!(
            registry_seen[1]
                .to_ascii_lowercase()
                .contains("authorization: basic")
        );
        let storage_seen = storage_seen.lock().unwrap().clone();
        assert_eq!(storage_seen.len(), 1);
        assert!(
            !storage_seen[0]
                .to_ascii_lowercase()
                .contains("authorization"),
            "{}",
            storage_seen[0]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_registries_are_retried_honouring_retry_after() {
        let (registry, seen) = fake_server(
            "127.0.0.1",
            vec![
                answer("503 Service Unavailable", "Retry-After: 1\r\n", ""),
                answer("429 Too Many Requests", "", ""),
                answer("200 OK", "", "{}"),
            ],
        );
        let client = test_client(CredentialStore::anonymous());
        let host = registry.to_string();
        let scope = Scope::pull("repo");
        let url = client.api_url(&host, "repo", "tags/list").await.unwrap();
        let started = std::time::Instant::now();
        let response = client
            .send_ok(Request::new(Method::GET, &host, url, &scope))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(seen.lock().unwrap().len(), 3);

        // A 404 is an answer, not retried.
        let (registry, seen) = fake_server(
            "127.0.0.1",
            vec![answer(
                "404 Not Found",
                "Content-Type: application/json\r\n",
                r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
            )],
        );
        let host = registry.to_string();
        let url = client.api_url(&host, "repo", "blobs/x").await.unwrap();
        let error = client
            .send_ok(Request::new(Method::GET, &host, url, &scope))
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(404));
        assert!(error.to_string().contains("BLOB_UNKNOWN"), "{error}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_client_builds_with_the_system_roots() {
        let client = RegistryClient::new(ClientOptions {
            credentials: CredentialStore::anonymous(),
            ..ClientOptions::default()
        });
        assert!(client.is_ok(), "{:?}", client.err());
        let missing = RegistryClient::new(ClientOptions {
            ca_files: vec![PathBuf::from("/nonexistent/ca.pem")],
            credentials: CredentialStore::anonymous(),
            ..ClientOptions::default()
        });
        assert!(matches!(missing, Err(ClientError::CaFile { .. })));
    }
}
