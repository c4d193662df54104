//! [`PullThroughSource`]: the [`ContentSource`] that caches many upstream registries at
//! once in front of the store's [`LocalSource`].
//!
//! **Routing.** A request's namespace (`?ns=<host>`, a path prefix that is an upstream's
//! host or alias, or none) picks an upstream among the configured ones; requests without a
//! namespace go to the default upstream, if one is configured, else to the store alone. A
//! namespace that no configured upstream serves but that `upstream_policy` admits gets an
//! upstream built on the fly from a synthesised [`UpstreamConfig`] (the same `Upstream`, so
//! the same cache, fills, stale answers, breaker and metrics; HTTPS, verified TLS,
//! connections only to the addresses the policy allows), kept for the process's life up to
//! `max_upstreams`. A namespace that names no upstream is answered from the store only
//! (content loaded there), and what the store lacks is `NAME_UNKNOWN`: never an open
//! proxy. Content is stored under the upstream's host (`quay.io/a/b:1` and
//! `docker.io/a/b:1` are different names), so tags of different upstreams never collide.
//!
//! **Digests** (manifests and blobs) are immutable: when the store has one it is served
//! without any upstream contact (`X-Cache: HIT`). **Tags** are revalidated with a `HEAD`
//! once their upstream's `tag_ttl` has passed (`0`: every time, `never`: not at all): the
//! same digest → `HIT`; another → that manifest alone is fetched, stored and tagged
//! (`MISS`; no other platform, no blob is prefetched); a tag never cached is fetched with a
//! `GET` straight away. When the upstream fails or does not answer within
//! `upstream_timeout`, the cached manifest is served as `STALE`; with nothing cached the
//! answer is a 502/504 (`UNKNOWN`), or the upstream's 404. An upstream 404 for a cached tag
//! is passed on (the upstream is authoritative when it answers). A failed revalidation
//! (timeout, refused, reset, 429, 5xx) marks the upstream failing: its cached tags are then
//! `STALE` at once, one request per `upstream_probe_interval` asks it (never before a
//! `Retry-After` it sent), and an answer ends the failing state. Uncached manifests and blob
//! heads are bounded by `upstream_fetch_timeout`.
//!
//! **Blob misses** go through the fill registry (module `fill`): one upstream `GET` per
//! digest, streamed to every client while it is hashed and written, committed only on a
//! digest match, the last bytes held back until then. Manifest misses by digest are fetched once (concurrent
//! requests share the fetch), verified against the digest and stored byte-exact.
//!
//! Tag lists and referrers answer what the store holds. Cached entries of `index.json` are
//! annotated [`UPSTREAM_ANNOTATION`] and, as their images are partial by design (only the
//! blobs clients asked for are fetched), `PARTIAL_ANNOTATION` (`fsck` does not count their
//! absent blobs as missing).
//!
//! Over 800 lines on purpose: one type, `PullThroughSource`, whose routing, tag revalidation,
//! breaker, manifest fetches and blob fills all work on the same private table of upstreams.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::{Descriptor, Digest, ManifestDocument, is_manifest_type};
use sealer_registry_client::{
    AddressPolicy, ClientError, ClientOptions, ClientStats, Credential, CredentialStore,
    RegistryClient, RetryPolicy, tls_config,
};

use crate::backend::RegistryBackend;
use crate::bucket::TagRevalidation;
use crate::config::{ServerConfig, TagTtl, UpstreamConfig};
use crate::error::{ApiError, ErrorCode, ServeError};
use crate::fill::{FetchError, FillSource, Fills};
use crate::local::LocalSource;
use crate::metrics::{Sample, UpstreamMetrics, render};
use crate::route::{ManifestRef, Namespace, NamespaceVia, RepoPath, normalise_host};
use crate::source::{
    BlobContent, BlobRequest, CacheStatus, ContentSource, ManifestContent, ManifestRequest,
    ResponseMeta, Served, range_not_satisfiable,
};
use crate::upstream_policy::UpstreamPolicyConfig;

/// The annotation of the `index.json` entries the cache creates (defined with the others in
/// image-store's model).
pub use sealer_image_store::model::UPSTREAM_ANNOTATION;

/// Whether an upstream is failing: after a failed revalidation its cached tags are served
/// STALE without asking it (a blackholed upstream would cost every request the whole
/// `upstream_timeout`), one request per probe interval asks it, and a success ends it. A
/// `Retry-After` it sent (429, 503) is waited out before any probe.
#[derive(Debug, Default)]
struct Breaker {
    state: Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failing: bool,
    /// While failing: no request to the upstream before this.
    next_probe: Option<Instant>,
}

impl Breaker {
    /// Whether a cached tag may be revalidated now: always while the upstream answers;
    /// while it fails, once per `interval` (the probe; later callers are told no).
    fn admit(&self, interval: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.failing {
            return true;
        }
        let now = Instant::now();
        if state.next_probe.is_some_and(|at| now < at) {
            return false;
        }
        state.next_probe = Some(now + interval);
        true
    }

    /// The upstream failed (timeout, refused, reset, 429, 5xx): no request before
    /// `interval` or, if longer, the `Retry-After` it asked for.
    fn failed(&self, interval: Duration, retry_after: Option<Duration>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let wait = retry_after.map_or(interval, |asked| asked.max(interval));
        let until = now + wait;
        state.failing = true;
        state.next_probe = Some(state.next_probe.map_or(until, |at| at.max(until)));
    }

    /// The upstream answered.
    fn succeeded(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.failing = false;
        state.next_probe = None;
    }

    fn is_failing(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failing
    }
}

/// The wait a client error asks for: the `Retry-After` of a 429 or 503 (the revalidation
/// client honours none, so every one is reported this way).
fn retry_after_of(error: &ClientError) -> Option<Duration> {
    match error {
        ClientError::RetryAfterTooLong { seconds, .. } => Some(Duration::from_secs(*seconds)),
        _ => None,
    }
}

/// One configured upstream.
struct Upstream {
    /// The configured name (alias, metrics label).
    name: String,
    /// Its registry host as references write it (`docker.io` for Docker Hub): the
    /// namespace requests name, the store's registry part, the client's registry name.
    host: String,
    client: RegistryClient,
    /// The client of tag revalidations: one retry at most and no `Retry-After` waited
    /// (a revalidation has `upstream_timeout` in all; the wait asked for goes to
    /// [`Breaker`]).
    revalidation_client: RegistryClient,
    breaker: Breaker,
    ttl: TagTtl,
    /// When each cached tag (store reference) was last confirmed upstream.
    checked: Mutex<HashMap<String, Instant>>,
    metrics: Arc<UpstreamMetrics>,
}

impl Upstream {
    /// The upstream of `config`; its clients connect only where `addresses` allows (an
    /// upstream admitted by policy), or anywhere (`None`: a configured one). Both clients
    /// share `tls`, which must trust what `config.ca_file` adds; `None`: built here (it
    /// reads the system's CA certificates and the CA file).
    fn from_config(
        config: &UpstreamConfig,
        addresses: Option<Arc<AddressPolicy>>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ServeError> {
        let failed = |reason: String| ServeError::Upstream {
            name: config.name.clone(),
            reason,
        };
        let ca_files: Vec<_> = config.ca_file.iter().cloned().collect();
        let tls = match tls {
            Some(tls) => tls,
            None => Arc::new(tls_config(&ca_files).map_err(|error| failed(error_chain(&error)))?),
        };
        let address = &config.url.host;
        let host = normalise_host(address).unwrap_or_else(|| address.clone());
        let credentials = || match (&config.credentials, config.use_docker_config) {
            (Some(credentials), _) => CredentialStore::anonymous().with_credential(
                &host,
                Credential::Basic {
                    username: credentials.username.clone(),
                    password: credentials.password.clone(),
                },
            ),
            (None, true) => CredentialStore::from_env(),
            (None, false) => CredentialStore::anonymous(),
        };
        let options = |retries: RetryPolicy| ClientOptions {
            insecure_hosts: if config.insecure {
                vec![address.clone()]
            } else {
                Vec::new()
            },
            ca_files: ca_files.clone(),
            tls: Some(tls.clone()),
            credentials: credentials(),
            user_agent: format!("sealer-registry/{}", env!("CARGO_PKG_VERSION")),
            retries,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            base_urls: BTreeMap::from([(host.clone(), format!("{}/", config.url))]),
            address_policy: addresses.clone(),
            ..ClientOptions::default()
        };
        // Fail fast enough for stale answers; blob downloads resume by themselves.
        let retries = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(10),
        };
        let revalidation_retries = RetryPolicy {
            max_attempts: 2,
            max_retry_after: Duration::ZERO,
            ..retries
        };
        let client =
            RegistryClient::new(options(retries)).map_err(|error| failed(error_chain(&error)))?;
        let revalidation_client = RegistryClient::new(options(revalidation_retries))
            .map_err(|error| failed(error_chain(&error)))?;
        Ok(Self {
            name: config.name.clone(),
            host,
            client,
            revalidation_client,
            breaker: Breaker::default(),
            ttl: config.tag_ttl,
            checked: Mutex::default(),
            metrics: Arc::default(),
        })
    }

    /// Whether the cached tag `key` may be served without asking.
    fn is_fresh(&self, key: &str) -> bool {
        match self.ttl {
            TagTtl::Never => true,
            TagTtl::After(ttl) if ttl.is_zero() => false,
            TagTtl::After(ttl) => self
                .checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(key)
                .is_some_and(|at| at.elapsed() < ttl),
        }
    }

    fn confirmed(&self, key: &str) {
        self.confirmed_ago(key, Duration::ZERO);
    }

    /// Records that `key` was confirmed upstream `ago` (by this process or another replica).
    fn confirmed_ago(&self, key: &str, ago: Duration) {
        if matches!(self.ttl, TagTtl::After(ttl) if !ttl.is_zero()) {
            let at = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
            self.checked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key.to_owned(), at);
        }
    }

    /// The upstream as messages name it: its name, and its host when that differs.
    fn label(&self) -> String {
        if self.name == self.host {
            self.name.clone()
        } else {
            format!("{} ({})", self.name, self.host)
        }
    }

    /// The client error of an upstream failure, as the client sees it.
    fn error(&self, error: &FetchError, unknown: ErrorCode) -> ApiError {
        let label = self.label();
        match error {
            FetchError::NotFound(_) => {
                ApiError::new(unknown, format!("not found in upstream {label}"))
            }
            FetchError::Timeout(after) => ApiError::new(
                ErrorCode::Unknown,
                format!("upstream {label} did not answer within {after:?}"),
            )
            .with_status(axum::http::StatusCode::GATEWAY_TIMEOUT),
            FetchError::Store(message) => ApiError::internal("caching", message.as_str()),
            FetchError::Refused(message) => {
                ApiError::new(ErrorCode::Denied, format!("upstream {label}: {message}"))
            }
            other => ApiError::new(ErrorCode::Unknown, format!("upstream {label}: {other}"))
                .with_status(axum::http::StatusCode::BAD_GATEWAY),
        }
    }
}

/// A manifest fetched from an upstream and stored.
#[derive(Debug)]
struct Fetched {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

impl Fetched {
    fn content(&self) -> ManifestContent {
        ManifestContent {
            digest: self.digest.clone(),
            media_type: self.media_type.clone(),
            size: self.bytes.len() as u64,
            bytes: Some(self.bytes.clone()),
        }
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<Fetched>, FetchError>>>;
/// Manifest fetches by digest in flight: (upstream host, repository, digest).
type FetchKey = (String, String, Digest);
type InFlight = Arc<Mutex<HashMap<FetchKey, SharedFetch>>>;

/// Where a request goes.
enum Target<'a> {
    /// The store alone (no namespace and no default upstream, or the local namespace).
    Local,
    /// A namespace that gets no upstream: the store alone, and for what it lacks the
    /// error [`NoUpstream::error`] makes.
    NoUpstream(NoUpstream<'a>),
    /// An upstream; the repository as the store names it (the upstream's host as
    /// namespace).
    Upstream(Arc<Upstream>, RepoPath),
}

/// Why a request's namespace gets no upstream.
enum NoUpstream<'a> {
    /// It is no upstream: `NAME_UNKNOWN`.
    Unknown(&'a str),
    /// The policy admits it but it gets no upstream now (`max_upstreams` reached, or its
    /// client cannot be built): this error.
    Unavailable(ApiError),
}

impl NoUpstream<'_> {
    /// The answer where the store answered `error`: this namespace's error when the store
    /// has nothing (a 404), else `error`.
    fn error(self, source: &PullThroughSource, error: ApiError) -> ApiError {
        if error.status != axum::http::StatusCode::NOT_FOUND {
            return error;
        }
        match self {
            Self::Unknown(namespace) => source.unknown_namespace(namespace),
            Self::Unavailable(unavailable) => unavailable,
        }
    }
}

/// The upstreams admitted by `upstream_policy`, created when first named.
struct PolicyUpstreams {
    config: UpstreamPolicyConfig,
    addresses: Arc<AddressPolicy>,
    /// The TLS configuration of every admitted upstream's clients (they all trust the
    /// system's CAs and `config.ca_file`), built once with the cache so that creating an
    /// upstream on a request's path reads no certificates from disk.
    tls: Arc<rustls::ClientConfig>,
    /// By canonical host; at most `config.max_upstreams`.
    created: Mutex<BTreeMap<String, Arc<Upstream>>>,
}

impl PolicyUpstreams {
    /// The admitted upstreams of `config`, none created yet; reads the CA certificates.
    fn new(config: &UpstreamPolicyConfig) -> Result<Self, ServeError> {
        let tls = tls_config(config.ca_file.as_slice()).map_err(|error| ServeError::Upstream {
            name: "upstream_policy".to_owned(),
            reason: error_chain(&error),
        })?;
        Ok(Self {
            config: config.clone(),
            addresses: Arc::new(config.address_policy()),
            tls: Arc::new(tls),
            created: Mutex::default(),
        })
    }

    /// The upstream of the admitted `host`, created on first use; an error when the bound
    /// is reached or its client cannot be built.
    fn get_or_create(&self, host: &str) -> Result<Arc<Upstream>, ApiError> {
        if let Some(upstream) = self.existing(host)? {
            return Ok(upstream);
        }
        // Built without the lock (its clients' connection pools): first requests for other
        // hosts do not wait on it.
        let built = Upstream::from_config(
            &self.config.upstream_for(host),
            Some(self.addresses.clone()),
            Some(self.tls.clone()),
        )
        .map_err(|error| ApiError::internal("create an upstream admitted by policy", error))?;
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        // A request racing this one may have created it meanwhile: theirs is kept.
        if let Some(upstream) = created.get(host) {
            return Ok(upstream.clone());
        }
        self.check_bound(created.len(), host)?;
        tracing::info!(upstream = %host, "created an upstream admitted by upstream_policy");
        let upstream = Arc::new(built);
        created.insert(host.to_owned(), upstream.clone());
        Ok(upstream)
    }

    /// The upstream of `host` when created already; an error when it is not and the bound
    /// is reached.
    fn existing(&self, host: &str) -> Result<Option<Arc<Upstream>>, ApiError> {
        let created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(upstream) = created.get(host) {
            return Ok(Some(upstream.clone()));
        }
        self.check_bound(created.len(), host)?;
        Ok(None)
    }

    /// Refuses a new upstream when `count` of them exist already.
    fn check_bound(&self, count: usize, host: &str) -> Result<(), ApiError> {
        if count < self.config.max_upstreams {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Denied,
            format!(
                "{host} is admitted by upstream_policy, but its {} upstreams \
                 (max_upstreams) exist already; only cached content is served",
                self.config.max_upstreams
            ),
        ))
    }

    fn all(&self) -> Vec<Arc<Upstream>> {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// The pull-through cache; see the module documentation.
pub struct PullThroughSource {
    local: Arc<LocalSource>,
    upstreams: Vec<Arc<Upstream>>,
    /// Upstream index by namespace host, and by alias.
    by_host: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    default: Option<usize>,
    local_namespace: String,
    offline: bool,
    timeout: Duration,
    /// Bound on fetching what is not cached (`upstream_fetch_timeout`).
    fetch_timeout: Duration,
    /// While an upstream fails, one revalidation per this interval asks it.
    probe_interval: Duration,
    fills: Arc<Fills>,
    /// The other replicas over the same bucket, when configured (`cluster:`).
    cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Manifest fetches by digest in flight.
    fetches: InFlight,
    /// Tags (store references) answered from the store without revalidation: the images a
    /// served cluster image carries.
    pinned: BTreeSet<String>,
    /// Upstreams admitted by `upstream_policy`.
    policy: Option<PolicyUpstreams>,
}

impl std::fmt::Debug for PullThroughSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullThroughSource")
            .field(
                "upstreams",
                &self
                    .upstreams
                    .iter()
                    .map(|upstream| (&upstream.name, &upstream.host))
                    .collect::<Vec<_>>(),
            )
            .field("offline", &self.offline)
            .finish_non_exhaustive()
    }
}

impl PullThroughSource {
    /// The cache of `config`'s upstreams in front of `local`. Builds one client per
    /// upstream (its credentials, CA file, plain-HTTP permission); contacts none of them.
    pub fn new(config: &ServerConfig, local: Arc<LocalSource>) -> Result<Self, ServeError> {
        let mut upstreams = Vec::new();
        let mut by_host = HashMap::new();
        let mut by_name = HashMap::new();
        for (index, upstream) in config.upstreams.iter().enumerate() {
            let upstream = Upstream::from_config(upstream, None, None)?;
            if by_host.insert(upstream.host.clone(), index).is_some() {
                return Err(ServeError::Upstream {
                    name: upstream.name.clone(),
                    reason: format!("another upstream is {} too", upstream.host),
                });
            }
            by_name.insert(upstream.name.clone(), index);
            upstreams.push(Arc::new(upstream));
        }
        let default = config
            .default_upstream
            .as_ref()
            .and_then(|name| by_name.get(name).copied());
        let policy = match &config.upstream_policy {
            Some(policy) => Some(PolicyUpstreams::new(policy)?),
            None => None,
        };
        Ok(Self {
            local,
            upstreams,
            by_host,
            by_name,
            default,
            local_namespace: config.local_namespace.0.clone(),
            offline: config.offline,
            timeout: config.upstream_timeout.0,
            fetch_timeout: config.upstream_fetch_timeout.0,
            probe_interval: config.upstream_probe_interval.0,
            fills: Arc::default(),
            cluster: None,
            fetches: Arc::default(),
            pinned: BTreeSet::new(),
            policy,
        })
    }

    /// Answers the tags `references` (store references, `host/repository:tag`) from the
    /// store without asking their upstream: the images a cluster image carries are the
    /// versions it was built and tested with.
    pub fn with_pinned(mut self, references: impl IntoIterator<Item = String>) -> Self {
        self.pinned.extend(references);
        self
    }

    /// Fills take fill leases in the cluster's bucket and stream from other replicas' fills.
    pub(crate) fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::Cluster>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// The blob fills in flight (the peer route serves them to other replicas).
    pub(crate) fn fills(&self) -> Arc<Fills> {
        self.fills.clone()
    }

    /// The Prometheus text of the cache's metrics (served at `/metrics`).
    pub fn metrics_text(&self) -> String {
        let admitted = self
            .policy
            .as_ref()
            .map(PolicyUpstreams::all)
            .unwrap_or_default();
        let samples: Vec<Sample<'_>> = self
            .upstreams
            .iter()
            .chain(&admitted)
            .map(|upstream| {
                let (main, revalidation) = (
                    upstream.client.stats(),
                    upstream.revalidation_client.stats(),
                );
                Sample {
                    name: &upstream.name,
                    metrics: &upstream.metrics,
                    client: ClientStats {
                        requests: main.requests + revalidation.requests,
                        token_fetches: main.token_fetches + revalidation.token_fetches,
                    },
                    failing: upstream.breaker.is_failing(),
                }
            })
            .collect();
        render(&samples)
    }

    fn target<'a>(&'a self, repo: &'a RepoPath) -> Target<'a> {
        let upstream = match &repo.namespace {
            None => match self.default {
                Some(index) => self.upstreams[index].clone(),
                None => return Target::Local,
            },
            Some(namespace) => {
                let found = match namespace.via {
                    NamespaceVia::PathAlias => self.by_name.get(&namespace.name),
                    NamespaceVia::Query | NamespaceVia::PathHost => self
                        .by_host
                        .get(&namespace.name)
                        .or_else(|| self.by_name.get(&namespace.name)),
                };
                match (found, &self.policy) {
                    (Some(index), _) => self.upstreams[*index].clone(),
                    _ if namespace.name == self.local_namespace => return Target::Local,
                    (None, Some(policy))
                        if policy
                            .config
                            .admits_namespace(namespace, &self.local_namespace) =>
                    {
                        match policy.get_or_create(&namespace.name) {
                            Ok(upstream) => upstream,
                            Err(error) => {
                                return Target::NoUpstream(NoUpstream::Unavailable(error));
                            }
                        }
                    }
                    (None, _) => return Target::NoUpstream(NoUpstream::Unknown(&namespace.name)),
                }
            }
        };
        let store_repo = RepoPath {
            namespace: Some(Namespace {
                name: upstream.host.clone(),
                via: NamespaceVia::PathHost,
            }),
            repository: repo.repository.clone(),
            path_name: repo.path_name.clone(),
        };
        Target::Upstream(upstream, store_repo)
    }

    /// `NAME_UNKNOWN` for a namespace that is no upstream.
    fn unknown_namespace(&self, namespace: &str) -> ApiError {
        let names: Vec<&str> = self
            .upstreams
            .iter()
            .map(|upstream| upstream.host.as_str())
            .collect();
        let admitted = self.policy.as_ref().map_or_else(
            || "no upstream_policy".to_owned(),
            |policy| {
                let patterns: Vec<String> = policy
                    .config
                    .admit
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                format!("upstream_policy admits: {}", patterns.join(", "))
            },
        );
        ApiError::new(
            ErrorCode::NameUnknown,
            format!(
                "{namespace} is not an upstream of this registry (upstreams: {}; {admitted})",
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ),
        )
    }

    /// The manifest of `reference` in the store, or `None`.
    async fn cached_manifest(
        &self,
        store_repo: &RepoPath,
        reference: &ManifestRef,
        request: &ManifestRequest,
    ) -> Result<Option<ManifestContent>, ApiError> {
        match self.local.manifest(store_repo, reference, request).await {
            Ok(served) => Ok(Some(served.content)),
            Err(error) if error.code == ErrorCode::ManifestUnknown => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Fetches the manifest `digest` of `repository` from `upstream` and stores its bytes,
    /// once however many ask at once (the fetch runs on its own task).
    async fn fetch_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repository: &str,
        digest: &Digest,
    ) -> Result<Arc<Fetched>, FetchError> {
        let key = (upstream.host.clone(), repository.to_owned(), digest.clone());
        let shared = {
            let mut fetches = self.fetches.lock().unwrap_or_else(PoisonError::into_inner);
            match fetches.get(&key) {
                Some(shared) => shared.clone(),
                None => {
                    let upstream = upstream.clone();
                    let backend = self.local.backend().clone();
                    let registry = self.fetches.clone();
                    let task_key = key.clone();
                    let timeout = self.fetch_timeout;
                    let task = tokio::spawn(async move {
                        let (_, repository, digest) = &task_key;
                        let result = fetch_and_store(
                            &upstream,
                            &*backend,
                            repository,
                            &digest.to_string(),
                            timeout,
                        )
                        .await
                        .map(Arc::new);
                        registry
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .remove(&task_key);
                        result
                    });
                    let shared = async move {
                        task.await
                            .map_err(|error| FetchError::Store(error_chain(&error)))?
                    }
                    .boxed()
                    .shared();
                    fetches.insert(key, shared.clone());
                    shared
                }
            }
        };
        shared.await
    }

    /// A manifest for an upstream's namespace.
    async fn upstream_manifest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoPath,
        store_repo: &RepoPath,
        reference: &ManifestRef,
        request: &ManifestRequest,
    ) -> Result<(ManifestContent, CacheStatus), ApiError> {
        let cached = self.cached_manifest(store_repo, reference, request).await?;
        let names = self.local.names();
        let repository = self.upstream_repository(store_repo)?;
        let unknown = || {
            ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "manifest {reference} is not in repository {}",
                    repo.path_name
                ),
            )
        };
        let tag = match reference {
            ManifestRef::Digest(digest) => {
                if let Some(cached) = cached {
                    return Ok((cached, CacheStatus::Hit));
                }
                if self.offline {
                    return Err(unknown());
                }
                let fetched = self
                    .upstream_manifest_by_digest(upstream, store_repo, &repository, digest)
                    .await?;
                return Ok((fetched, CacheStatus::Miss));
            }
            ManifestRef::Tag(tag) => tag,
        };
        let key = names.reference(store_repo, tag)?.to_string();
        if let Some(cached) = &cached
            && (self.offline || self.pinned.contains(&key) || upstream.is_fresh(&key))
        {
            return Ok((cached.clone(), CacheStatus::Hit));
        }
        if self.offline {
            return Err(unknown());
        }
        if let Some(cached) = &cached
            && !upstream.breaker.admit(self.probe_interval)
        {
            tracing::debug!(upstream = %upstream.name, reference = %key, "the upstream is failing; serving the cached manifest without asking");
            return Ok((cached.clone(), CacheStatus::Stale));
        }
        // Replicas over one storage share when each tag was confirmed: one of them asks the
        // upstream per TTL, the others serve the cached tag meanwhile.
        // A first fetch claims too, so that its time is shared.
        let claim = match self.shared_revalidation(upstream, &key).await {
            Some(TagRevalidation::Fresh(ago)) => {
                if let Some(cached) = &cached {
                    upstream.confirmed_ago(&key, ago);
                    return Ok((cached.clone(), CacheStatus::Hit));
                }
                None
            }
            Some(TagRevalidation::Claimed(won)) => Some(won),
            None => None,
        };
        let budget = if cached.is_some() {
            self.timeout
        } else {
            self.fetch_timeout.max(self.timeout)
        };
        let current = cached.as_ref().map(|cached| cached.digest.clone());
        let mut retry_after = None;
        let outcome = tokio::time::timeout(
            budget,
            self.refresh_tag(
                upstream,
                store_repo,
                &repository,
                tag,
                &key,
                current.as_ref(),
                &mut retry_after,
            ),
        )
        .await
        .unwrap_or(Err(FetchError::Timeout(budget)));
        self.record_revalidation(upstream, &outcome, retry_after);
        if let Some(claim) = claim {
            self.local
                .backend()
                .settle_tag_revalidation(claim, outcome.is_ok())
                .await;
        }
        match (outcome, cached) {
            (Ok(None), Some(cached)) => {
                upstream.confirmed(&key);
                Ok((cached, CacheStatus::Hit))
            }
            (Ok(Some(fetched)), _) => {
                upstream.confirmed(&key);
                Ok((fetched.content(), CacheStatus::Miss))
            }
            (Ok(None), None) => Err(ApiError::internal(
                "revalidate a tag",
                "unchanged without a cached manifest",
            )),
            (Err(error @ FetchError::NotFound(_)), _) => {
                Err(upstream.error(&error, ErrorCode::ManifestUnknown))
            }
            (Err(error), Some(cached)) => {
                tracing::warn!(
                    upstream = %upstream.name,
                    reference = %key,
                    %error,
                    "the upstream failed to revalidate a tag; serving the cached manifest"
                );
                Ok((cached, CacheStatus::Stale))
            }
            (Err(error), None) => Err(upstream.error(&error, ErrorCode::ManifestUnknown)),
        }
    }

    /// Fetches the manifest `digest` (bounded by `upstream_fetch_timeout`), stores it and
    /// names it in `store_repo` as cached content.
    async fn upstream_manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        store_repo: &RepoPath,
        repository: &str,
        digest: &Digest,
    ) -> Result<ManifestContent, ApiError> {
        let fetched = tokio::time::timeout(
            self.fetch_timeout,
            self.fetch_manifest(upstream, repository, digest),
        )
        .await
        .unwrap_or(Err(FetchError::Timeout(self.fetch_timeout)))
        .map_err(|error| upstream.error(&error, ErrorCode::ManifestUnknown))?;
        let name = self.local.names().name(store_repo)?;
        self.local
            .backend()
            .name_cached_manifest(name, None, descriptor_of(&fetched), upstream.host.clone())
            .await?;
        Ok(fetched.content())
    }

    /// The tag `key`'s revalidation state shared by the replicas over one storage (`None`:
    /// not shared, no TTL, or unreadable: this replica asks the upstream itself).
    async fn shared_revalidation(&self, upstream: &Upstream, key: &str) -> Option<TagRevalidation> {
        let TagTtl::After(ttl) = upstream.ttl else {
            return None;
        };
        if ttl.is_zero() {
            return None;
        }
        match self.local.backend().claim_tag_revalidation(key, ttl).await {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(reference = %key, error = %error.message, "no shared revalidation state; asking the upstream");
                None
            }
        }
    }

    /// What a tag revalidation's outcome tells the upstream's breaker.
    fn record_revalidation<T>(
        &self,
        upstream: &Upstream,
        outcome: &Result<T, FetchError>,
        retry_after: Option<Duration>,
    ) {
        match outcome {
            Ok(_) | Err(FetchError::NotFound(_)) => upstream.breaker.succeeded(),
            Err(FetchError::Timeout(_) | FetchError::Upstream(_)) => {
                upstream.breaker.failed(self.probe_interval, retry_after);
            }
            // The upstream answered (its content or the store is at fault), or was refused
            // by the address policy before any request.
            Err(
                FetchError::DigestMismatch(_)
                | FetchError::Invalid(_)
                | FetchError::Store(_)
                | FetchError::Refused(_),
            ) => {}
        }
    }

    /// The repository path to ask the upstream for (`library/nginx` for Docker Hub's
    /// `nginx`), as the store names `store_repo`.
    fn upstream_repository(&self, store_repo: &RepoPath) -> Result<String, ApiError> {
        Ok(self
            .local
            .names()
            .reference(store_repo, "latest")?
            .repository()
            .to_owned())
    }

    /// The tags of an upstream's repository: the upstream's list (within `upstream_timeout`)
    /// with the cached tags added (`MISS`); the cached ones alone when the upstream fails or
    /// is failing (`STALE`, without asking it between probes) or in offline mode (`HIT`).
    async fn upstream_tags(
        &self,
        upstream: &Arc<Upstream>,
        store_repo: &RepoPath,
    ) -> Result<(Vec<String>, CacheStatus), ApiError> {
        let cached = self.local.tags(store_repo).await;
        if self.offline {
            return cached.map(|found| (found.content, CacheStatus::Hit));
        }
        let repository = self.upstream_repository(store_repo)?;
        if let Ok(cached) = &cached
            && !upstream.breaker.admit(self.probe_interval)
        {
            return Ok((cached.content.clone(), CacheStatus::Stale));
        }
        let listed = tokio::time::timeout(
            self.timeout,
            upstream.client.list_tags(&upstream.host, &repository),
        )
        .await
        .map_err(|_| FetchError::Timeout(self.timeout))
        .and_then(|listed| listed.map_err(|error| FetchError::from_client(&error)));
        match &listed {
            Ok(_) | Err(FetchError::NotFound(_)) => upstream.breaker.succeeded(),
            Err(FetchError::Timeout(_) | FetchError::Upstream(_)) => {
                upstream.breaker.failed(self.probe_interval, None);
            }
            Err(_) => {}
        }
        match (listed, cached) {
            (Ok(mut tags), cached) => {
                if let Ok(cached) = cached {
                    tags.extend(cached.content);
                }
                tags.sort();
                tags.dedup();
                Ok((tags, CacheStatus::Miss))
            }
            (Err(error), Ok(cached)) => {
                tracing::warn!(
                    upstream = %upstream.name,
                    %repository,
                    %error,
                    "the upstream failed to list tags; serving the cached ones"
                );
                Ok((cached.content, CacheStatus::Stale))
            }
            (Err(error), Err(_)) => Err(upstream.error(&error, ErrorCode::NameUnknown)),
        }
    }

    /// Asks the upstream what `tag` is: `None` when it is still `current`, else the new
    /// manifest, fetched, stored and tagged `key` (in repository `store_repo`). Sets
    /// `retry_after` when the upstream asked to wait.
    #[allow(clippy::too_many_arguments)]
    async fn refresh_tag(
        &self,
        upstream: &Arc<Upstream>,
        store_repo: &RepoPath,
        repository: &str,
        tag: &str,
        key: &str,
        current: Option<&Digest>,
        retry_after: &mut Option<Duration>,
    ) -> Result<Option<Arc<Fetched>>, FetchError> {
        let fetched = match current {
            // Nothing cached: the manifest is needed anyway, skip the HEAD.
            None => Arc::new(
                fetch_and_store(
                    upstream,
                    &**self.local.backend(),
                    repository,
                    tag,
                    self.fetch_timeout,
                )
                .await?,
            ),
            Some(current) => {
                upstream.metrics.revalidated();
                let head = upstream
                    .revalidation_client
                    .head_manifest(&upstream.host, repository, tag)
                    .await
                    .map_err(|error| {
                        *retry_after = retry_after_of(&error);
                        FetchError::from_client(&error)
                    })?;
                match head.digest {
                    Some(digest) if &digest == current => return Ok(None),
                    Some(digest) => self.fetch_manifest(upstream, repository, &digest).await?,
                    // No digest in the answer: fetch by tag and compare.
                    None => {
                        let fetched = fetch_and_store(
                            upstream,
                            &**self.local.backend(),
                            repository,
                            tag,
                            self.fetch_timeout,
                        )
                        .await?;
                        if &fetched.digest == current {
                            return Ok(None);
                        }
                        Arc::new(fetched)
                    }
                }
            }
        };
        let name = self
            .local
            .names()
            .name(store_repo)
            .map_err(|error| FetchError::Invalid(error.message))?;
        self.local
            .backend()
            .name_cached_manifest(
                name,
                Some(key.to_owned()),
                descriptor_of(&fetched),
                upstream.host.clone(),
            )
            .await
            .map_err(|error| FetchError::Store(error.message))?;
        tracing::info!(upstream = %upstream.name, reference = %key, digest = %fetched.digest, "cached a tag");
        Ok(Some(fetched))
    }

    /// A blob for an upstream's namespace.
    async fn upstream_blob(
        &self,
        upstream: &Arc<Upstream>,
        store_repo: &RepoPath,
        digest: &Digest,
        request: BlobRequest,
    ) -> Result<(BlobContent, CacheStatus), ApiError> {
        match self.local.blob(store_repo, digest, request).await {
            Ok(served) => return Ok((served.content, CacheStatus::Hit)),
            Err(error) if error.code == ErrorCode::BlobUnknown => {}
            Err(error) => return Err(error),
        }
        let unknown = || {
            ApiError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in the registry"),
            )
            .with_detail(serde_json::json!({ "digest": digest.to_string() }))
        };
        if self.offline {
            return Err(unknown());
        }
        let repository = self.upstream_repository(store_repo)?;
        let resolve = |size: u64| match request.range {
            Some(range) => range
                .resolve(size)
                .map(Some)
                .ok_or_else(|| range_not_satisfiable(size)),
            None => Ok(None),
        };
        if request.head {
            let size = match self.fills.get(digest).and_then(|fill| fill.known_size()) {
                Some(size) => size,
                None => tokio::time::timeout(
                    self.fetch_timeout,
                    upstream
                        .client
                        .head_blob(&upstream.host, &repository, digest),
                )
                .await
                .map_err(|_| FetchError::Timeout(self.fetch_timeout))
                .and_then(|answer| answer.map_err(|error| FetchError::from_client(&error)))
                .map_err(|error| upstream.error(&error, ErrorCode::BlobUnknown))?,
            };
            let range = resolve(size)?;
            return Ok((
                BlobContent {
                    size,
                    range,
                    body: None,
                },
                CacheStatus::Miss,
            ));
        }
        let source = FillSource {
            client: upstream.client.clone(),
            registry: upstream.host.clone(),
            repository,
            metrics: upstream.metrics.clone(),
            open_timeout: self.fetch_timeout,
            cluster: self.cluster.clone(),
        };
        let (fill, joined) = self
            .fills
            .join_or_start(digest, self.local.backend(), source);
        if joined {
            upstream.metrics.follower_joined();
        }
        let size = fill
            .size()
            .await
            .map_err(|error| upstream.error(&error, ErrorCode::BlobUnknown))?;
        let range = resolve(size)?;
        let span = range.clone().unwrap_or(0..size);
        Ok((
            BlobContent {
                size,
                range,
                body: Some(fill.follow(span)),
            },
            CacheStatus::Miss,
        ))
    }
}

/// The `index.json` descriptor of a fetched manifest.
fn descriptor_of(fetched: &Fetched) -> Descriptor {
    Descriptor::new(
        fetched.media_type.clone(),
        fetched.digest.clone(),
        fetched.bytes.len() as u64,
    )
}

/// Fetches a manifest by tag or digest (verified against the digest it names, or against
/// `Docker-Content-Digest`), checks that it parses, and stores its exact bytes (unnamed).
async fn fetch_and_store(
    upstream: &Upstream,
    backend: &dyn RegistryBackend,
    repository: &str,
    reference: &str,
    timeout: Duration,
) -> Result<Fetched, FetchError> {
    let expected: Option<Digest> = reference.parse().ok();
    let fetched = tokio::time::timeout(
        timeout,
        upstream
            .client
            .get_manifest(&upstream.host, repository, reference, expected.as_ref()),
    )
    .await
    .map_err(|_| FetchError::Timeout(timeout))?
    .map_err(|error| FetchError::from_client(&error))?;
    upstream.metrics.received(fetched.bytes.len() as u64);
    let (media_type, _) = ManifestDocument::parse(&fetched.bytes, fetched.content_type.as_deref())
        .map_err(|error| {
            FetchError::Invalid(format!(
                "{reference} is not a manifest sealer reads: {}",
                ErrorChain(&error)
            ))
        })?;
    // The media type becomes the Content-Type clients get: only manifest types.
    if !is_manifest_type(&media_type) {
        return Err(FetchError::Invalid(format!(
            "{reference} has media type {media_type}, not a manifest or index type"
        )));
    }
    let bytes = Bytes::from(fetched.bytes);
    let digest = fetched.digest;
    {
        // Held until it is named, so a GC in between does not remove it.
        let held = backend
            .put_cached_manifest(digest.clone(), bytes.clone())
            .await
            .map_err(|error| match error.code {
                ErrorCode::DigestInvalid => FetchError::DigestMismatch(error.message),
                _ => FetchError::Store(error.message),
            })?;
        if !held {
            return Err(FetchError::Store(format!(
                "manifest {digest} was removed by a concurrent prune before it was named"
            )));
        }
    }
    Ok(Fetched {
        digest,
        media_type,
        bytes,
    })
}

fn served<T>(content: T, repo: &RepoPath, cache: Option<CacheStatus>) -> Served<T> {
    let mut meta = ResponseMeta::local(repo);
    meta.cache = cache;
    Served { content, meta }
}

/// An upstream's answer: `OCI-Namespace` names the upstream whenever the request named a
/// namespace, by `?ns=` or by a path prefix (its host or alias).
fn served_upstream<T>(
    content: T,
    repo: &RepoPath,
    upstream: &Upstream,
    cache: Option<CacheStatus>,
) -> Served<T> {
    let mut answer = served(content, repo, cache);
    if repo.namespace.is_some() {
        answer.meta.namespace = Some(upstream.host.clone());
    }
    answer
}

#[async_trait::async_trait]
impl ContentSource for PullThroughSource {
    async fn manifest(
        &self,
        repo: &RepoPath,
        reference: &ManifestRef,
        request: &ManifestRequest,
    ) -> Result<Served<ManifestContent>, ApiError> {
        match self.target(repo) {
            Target::Local => self.local.manifest(repo, reference, request).await,
            Target::NoUpstream(why) => self
                .local
                .manifest(repo, reference, request)
                .await
                .map_err(|error| why.error(self, error)),
            Target::Upstream(upstream, store_repo) => {
                let (content, status) = self
                    .upstream_manifest(&upstream, repo, &store_repo, reference, request)
                    .await?;
                upstream.metrics.answered(status);
                Ok(served_upstream(content, repo, &upstream, Some(status)))
            }
        }
    }

    async fn blob(
        &self,
        repo: &RepoPath,
        digest: &Digest,
        request: BlobRequest,
    ) -> Result<Served<BlobContent>, ApiError> {
        match self.target(repo) {
            Target::Local => self.local.blob(repo, digest, request).await,
            Target::NoUpstream(why) => self
                .local
                .blob(repo, digest, request)
                .await
                .map_err(|error| why.error(self, error)),
            Target::Upstream(upstream, store_repo) => {
                let (content, status) = self
                    .upstream_blob(&upstream, &store_repo, digest, request)
                    .await?;
                upstream.metrics.answered(status);
                Ok(served_upstream(content, repo, &upstream, Some(status)))
            }
        }
    }

    async fn tags(&self, repo: &RepoPath) -> Result<Served<Vec<String>>, ApiError> {
        match self.target(repo) {
            Target::Local => self.local.tags(repo).await,
            Target::NoUpstream(why) => self
                .local
                .tags(repo)
                .await
                .map_err(|error| why.error(self, error)),
            Target::Upstream(upstream, store_repo) => {
                let (tags, status) = self.upstream_tags(&upstream, &store_repo).await?;
                upstream.metrics.answered(status);
                Ok(served_upstream(tags, repo, &upstream, Some(status)))
            }
        }
    }

    async fn referrers(
        &self,
        repo: &RepoPath,
        subject: &Digest,
    ) -> Result<Served<Vec<Descriptor>>, ApiError> {
        match self.target(repo) {
            Target::Local | Target::NoUpstream(_) => self.local.referrers(repo, subject).await,
            Target::Upstream(upstream, store_repo) => {
                let found = self.local.referrers(&store_repo, subject).await?;
                Ok(served_upstream(found.content, repo, &upstream, None))
            }
        }
    }

    fn metrics(&self) -> String {
        self.metrics_text()
    }
}
