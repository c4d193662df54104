//! The HTTP server: [`Registry`] (state, router), authentication, the dispatch of parsed
//! [`Route`]s to the handlers, and [`serve`] with a bounded graceful shutdown.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::{Store, load_embedded};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::access::observe;
use crate::auth::{Htpasswd, empty_credentials};
use crate::backend::{LocalBackend, RegistryBackend};
use crate::bucket::Bucket;
use crate::bucket_backend::BucketBackend;
use crate::cluster::{Cluster, FillsPeerSource};
use crate::config::{ConnectionLimits, Mode, ServerConfig, Storage};
use crate::conn::{PeerAddr, accept_loop, max_connections, raise_open_file_limit};
use crate::error::{ApiError, ErrorCode, ServeError};
use crate::fill::Fills;
use crate::handlers;
use crate::health::{healthz, readyz};
use crate::local::LocalSource;
use crate::metrics::ServerMetrics;
use crate::peer::{PeerSecret, peer_router};
use crate::pull_through::PullThroughSource;
use crate::route::{BlobOp, ManifestOp, Route, RouteParser, normalise_host};
use crate::source::{ContentSource, StoreNames};
use crate::tls::acceptor;
use crate::uploads::Uploads;

/// Client authentication settings.
#[derive(Debug)]
struct Auth {
    htpasswd: Arc<Htpasswd>,
    realm: String,
    anonymous_pull: bool,
}

/// What every request handler sees.
pub(crate) struct AppState {
    pub(crate) storage: OpenStorage,
    pub(crate) names: StoreNames,
    pub(crate) source: Arc<dyn ContentSource>,
    pub(crate) uploads: Arc<Uploads>,
    /// The store's own source, for writes (reads go through `source`).
    pub(crate) local: Arc<LocalSource>,
    /// The namespaces (hosts and aliases) of the upstreams, where clients may not write.
    upstream_hosts: BTreeSet<String>,
    /// Hosts admitted as upstreams by policy (never the local namespace): not writable
    /// either.
    upstream_policy: Option<crate::upstream_policy::UpstreamPolicyConfig>,
    pub(crate) parser: RouteParser,
    read_only: bool,
    auth: Option<Auth>,
    /// Every request answered, whatever the source (`/metrics`).
    pub(crate) metrics: Arc<ServerMetrics>,
    /// Held while a `/readyz` check runs: one at a time.
    pub(crate) readiness: tokio::sync::Mutex<()>,
    /// The blob fills in flight on this replica.
    pub(crate) fills: Arc<Fills>,
    /// Presigned redirects of complete blobs (`redirect.presigned`).
    pub(crate) redirect: Option<Redirect>,
    /// The peer route's secret, when this replica is in a cluster.
    peer_secret: Option<PeerSecret>,
}

/// Where and how long `GET`s of complete blobs are redirected.
pub(crate) struct Redirect {
    /// The bucket the presigned URLs point into.
    pub(crate) bucket: Bucket,
    /// How long a URL is valid.
    pub(crate) expires: Duration,
}

/// Where the server's content lives, opened.
pub(crate) enum OpenStorage {
    /// The local image store.
    Local(Store),
    /// A bucket (shared with other server processes).
    Bucket(Bucket),
}

impl OpenStorage {
    /// For logs: the store's directory or the bucket.
    fn describe(&self) -> String {
        match self {
            Self::Local(store) => store.location().display().to_string(),
            Self::Bucket(bucket) => format!("{bucket:?}"),
        }
    }
}

/// Opens (creating if needed) the local store at `root` and removes the uploads and imports
/// a crashed server left behind (their lock files are free).
fn open_local_store(root: &std::path::Path) -> Result<Store, ServeError> {
    let store = Store::open_dir(root).map_err(|source| ServeError::Store {
        path: root.to_path_buf(),
        source,
    })?;
    let swept = store
        .sweep_abandoned_work()
        .map_err(|source| ServeError::Store {
            path: root.to_path_buf(),
            source,
        })?;
    if swept > 0 {
        tracing::info!(
            removed = swept,
            "removed uploads and imports a crashed process left"
        );
    }
    Ok(store)
}

/// A registry server over one store: build it with [`Registry::open`], optionally put a
/// [`ContentSource`] in front of its [`LocalSource`] ([`Registry::with_source`]), then
/// [`Registry::serve`] it or mount [`Registry::router`].
pub struct Registry {
    state: AppState,
    connections: ConnectionLimits,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("storage", &self.state.storage.describe())
            .field("read_only", &self.state.read_only)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens (creating if needed) the store of `config` and loads its htpasswd file. With
    /// upstreams configured, reads go through a [`PullThroughSource`] in front of the store
    /// (no upstream is contacted here: the cache starts and serves while they are all
    /// unreachable).
    pub fn open(config: &ServerConfig) -> Result<Self, ServeError> {
        let storage = match config.storage.clone().ok_or(ServeError::NoStorage)? {
            Storage::Path(root) => OpenStorage::Local(open_local_store(&root)?),
            Storage::S3(bucket) => OpenStorage::Bucket(Bucket::open(&bucket)?),
        };
        let auth = match &config.auth {
            Some(auth) => Some(Auth {
                htpasswd: Arc::new(Htpasswd::load(&auth.htpasswd)?),
                realm: auth.realm.clone(),
                anonymous_pull: auth.anonymous_pull,
            }),
            None => None,
        };
        let aliases = config
            .upstreams
            .iter()
            .map(|upstream| {
                let host =
                    normalise_host(&upstream.url.host).unwrap_or_else(|| upstream.url.host.clone());
                (upstream.name.clone(), host)
            })
            .collect();
        let names = StoreNames::new(&config.local_namespace.0, aliases);
        let (backend, pinned) = open_backend(config, &storage)?;
        let local = Arc::new(
            LocalSource::with_backend(backend, names.clone())
                .with_blob_deletes(config.delete_blobs),
        );
        let (cluster, peer_secret) = match (&storage, &config.cluster) {
            (OpenStorage::Bucket(bucket), Some(cluster)) => {
                let (cluster, secret) = Cluster::new(cluster, bucket.clone())?;
                tracing::info!(advertise_url = %cluster.advertise_url, lease_ttl = ?cluster.lease_ttl, "replica of a cluster: fills take leases, the peer route is served");
                (Some(cluster), Some(secret))
            }
            _ => (None, None),
        };
        let redirect = match &storage {
            OpenStorage::Bucket(bucket) if config.redirect.presigned => Some(Redirect {
                bucket: bucket.clone(),
                expires: config.redirect.expires.0,
            }),
            _ => None,
        };
        let (source, fills): (Arc<dyn ContentSource>, _) = if !config.pulls_through() {
            (local.clone(), Arc::default())
        } else {
            let pull_through = PullThroughSource::new(config, local.clone())?
                .with_pinned(pinned)
                .with_cluster(cluster);
            let fills = pull_through.fills();
            (Arc::new(pull_through), fills)
        };
        let upstream_hosts = config
            .upstreams
            .iter()
            .flat_map(|upstream| {
                let host =
                    normalise_host(&upstream.url.host).unwrap_or_else(|| upstream.url.host.clone());
                [host, upstream.name.clone()]
            })
            .collect();
        Ok(Self {
            state: AppState {
                storage,
                names,
                source,
                upstream_hosts,
                upstream_policy: config.upstream_policy.clone(),
                uploads: Arc::new(Uploads::new(config.uploads)),
                local: local.clone(),
                parser: RouteParser::new(config.upstreams.iter().map(|u| u.name.clone())),
                read_only: config.mode == Mode::ReadOnly,
                auth,
                metrics: Arc::new(ServerMetrics::new()),
                readiness: tokio::sync::Mutex::new(()),
                fills,
                redirect,
                peer_secret,
            },
            connections: config.server,
        })
    }

    /// The source that serves the store, for a layer to wrap.
    pub fn local_source(&self) -> Arc<LocalSource> {
        self.state.local.clone()
    }

    /// Answers reads from `source` instead of the store directly (a pull-through cache that
    /// wraps [`Self::local_source`]).
    pub fn with_source(mut self, source: Arc<dyn ContentSource>) -> Self {
        self.state.source = source;
        self
    }

    /// The axum router: `/v2/` and `/v2/{*rest}`, `/metrics`, `/healthz` and `/readyz`,
    /// everything else a JSON 404; every request is counted and logged.
    pub fn router(self) -> Router {
        let state = Arc::new(self.state);
        // The peer route checks its own shared secret, not the clients' credentials.
        let peers = match &state.peer_secret {
            Some(secret) => peer_router(
                Arc::new(FillsPeerSource(state.fills.clone())),
                secret.clone(),
            ),
            None => Router::new(),
        };
        Router::new()
            .route("/v2", any(handle))
            .route("/v2/", any(handle))
            .route("/v2/{*rest}", any(handle))
            .route("/metrics", any(metrics))
            .route("/healthz", any(healthz))
            .route("/readyz", any(readyz))
            .fallback(handle)
            .with_state(state.clone())
            .merge(peers)
            // Blobs are streamed; manifests are capped by the handler.
            .layer(DefaultBodyLimit::disable())
            // Every answer, errors and metrics included: no browser guesses another type.
            .layer(axum::middleware::map_response(
                |mut response: Response| async {
                    response.headers_mut().insert(
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    );
                    response
                },
            ))
            .layer(axum::middleware::from_fn_with_state(state, observe))
    }

    /// Serves on `listener` (TLS when `tls` is given) until `shutdown` completes, then stops
    /// accepting and gives in-flight requests `drain` to finish before cutting them.
    pub async fn serve(
        self,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        drain: Duration,
    ) -> Result<(), ServeError> {
        let uploads = self.state.uploads.clone();
        let backend = self.state.local.backend().clone();
        let reaper = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(uploads.reap_interval());
            loop {
                ticks.tick().await;
                let reaped = uploads.reap();
                if !reaped.is_empty() {
                    tracing::info!(reaped = reaped.len(), "dropped idle upload sessions");
                    for session in reaped {
                        let upload = session.lock().await.upload.take();
                        if let Some(upload) = upload {
                            upload.release().await;
                        }
                    }
                }
                if let Err(error) = backend
                    .purge_idle_uploads(uploads.limits().idle_timeout.0)
                    .await
                {
                    tracing::warn!(error = %error.message, "purging idle uploads failed");
                }
            }
        });
        let limits = self.connections;
        let max_connections = max_connections(limits.max_connections, raise_open_file_limit());
        tracing::info!(max_connections, "connection limit");
        let router = self.router();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let accepting = tokio::spawn(accept_loop(
            listener,
            tls,
            router,
            limits,
            max_connections,
            stopped,
        ));
        shutdown.await;
        tracing::info!(
            ?drain,
            "shutting down: no new connections, draining requests"
        );
        let _ = stop.send(true);
        let result = match accepting.await {
            Ok(mut connections) => {
                let drained = tokio::time::timeout(drain, async {
                    while connections.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        ?drain,
                        "requests still running after the drain timeout; cut"
                    );
                }
                // Dropping the set aborts what is left.
                Ok(())
            }
            Err(error) => Err(ServeError::Io {
                context: "serving".to_owned(),
                source: std::io::Error::other(error_chain(&error)),
            }),
        };
        reaper.abort();
        result
    }
}

/// The storage backend of `config` over `storage`, and the references of the carried images
/// it imported (pinned: the pull-through cache never revalidates them).
fn open_backend(
    config: &ServerConfig,
    storage: &OpenStorage,
) -> Result<(Arc<dyn RegistryBackend>, BTreeSet<String>), ServeError> {
    Ok(match storage {
        OpenStorage::Local(store) => {
            let mut backend =
                LocalBackend::new(store.clone()).with_sparse_manifests(config.sparse_manifests);
            let pinned = import_carried_images(store, &config.images)?;
            if config.pulls_through() {
                backend = backend
                    .with_pull_through_cache(config.cache.max_size.map(|size| size.0))
                    .map_err(|source| ServeError::Store {
                        path: store.location(),
                        source,
                    })?;
            }
            (Arc::new(backend), pinned)
        }
        OpenStorage::Bucket(_) if config.cache.max_size.is_some() => {
            return Err(ServeError::NotImplemented(
                crate::config::CACHE_LIMIT_OVER_A_BUCKET.to_owned(),
            ));
        }
        OpenStorage::Bucket(bucket) => {
            let backend = BucketBackend::new(bucket.clone())
                .map_err(|source| ServeError::Store {
                    path: std::env::temp_dir(),
                    source,
                })?
                .with_sparse_manifests(config.sparse_manifests);
            let pinned = match (&config.storage, config.images.is_empty()) {
                (Some(Storage::S3(bucket_config)), false) => {
                    let root = config.image_store.as_ref().ok_or_else(|| {
                        ServeError::NotImplemented(
                            "carried images (`images`) with `storage: { s3: … }` are read \
                             from the CLI's store: serve them with `sealer registry serve \
                             --image`"
                                .to_owned(),
                        )
                    })?;
                    let source =
                        Store::open_existing(root).map_err(|source| ServeError::Store {
                            path: root.clone(),
                            source,
                        })?;
                    backend.import_carried_images(bucket_config, &source, &config.images)?
                }
                _ => BTreeSet::new(),
            };
            (Arc::new(backend), pinned)
        }
    })
}

/// Imports the images each of `cluster_images` carries (see
/// [`sealer_image_store::embedded`]) into `store`; returns their references.
fn import_carried_images(
    store: &Store,
    cluster_images: &[String],
) -> Result<BTreeSet<String>, ServeError> {
    let mut carried = BTreeSet::new();
    for image in cluster_images {
        let report =
            load_embedded(store, image, store, None).map_err(|source| ServeError::Embedded {
                image: image.clone(),
                source,
            })?;
        for warning in &report.warnings {
            tracing::warn!(cluster_image = %image, "{warning}");
        }
        if report.layers == 0 {
            tracing::warn!(cluster_image = %image, "it carries no images (built with --build-mode lite?)");
        }
        for (name, digest) in &report.images {
            tracing::info!(cluster_image = %image, image = %name, %digest, "serving a carried image");
        }
        tracing::info!(
            cluster_image = %image,
            images = report.images.len(),
            layers = report.layers,
            layers_held_already = report.layers_held,
            blobs_added = report.commit.blobs_added,
            bytes_added = report.commit.bytes_added,
            "imported the carried images"
        );
        carried.extend(report.images.into_iter().map(|(name, _)| name));
    }
    Ok(carried)
}

/// Opens the registry of `config` and serves it on `listener` until `shutdown`.
pub async fn serve(
    config: &ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // TLS files first: a bad one must not leave a new empty store behind.
    let tls = config.tls.as_ref().map(acceptor).transpose()?;
    let registry = Registry::open(config)?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(
            %address,
            storage = %registry.state.storage.describe(),
            tls = tls.is_some(),
            read_only = registry.state.read_only,
            "registry listening"
        );
    }
    registry
        .serve(listener, tls, shutdown, config.shutdown_timeout.0)
        .await
}

/// Binds `config.listen` and serves until `shutdown`; see [`serve`].
pub async fn run(
    config: &ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Io {
            context: format!("listening on {}", config.listen),
            source,
        })?;
    serve(config, listener, shutdown).await
}

/// Collects the garbage of the bucket of `config`'s `storage: { s3 }` while replicas keep
/// serving and writing ([`crate::bucket::gc`] has the protocol). A local store is refused
/// with [`ServeError::LocalGc`]: `sealer prune` collects those.
pub async fn collect_garbage(
    config: &ServerConfig,
    options: &crate::bucket::GcOptions,
) -> Result<crate::bucket::GcReport, ServeError> {
    match &config.storage {
        Some(Storage::S3(bucket)) => crate::bucket::Bucket::open(bucket)?
            .gc(options)
            .await
            .map_err(ServeError::Gc),
        Some(Storage::Path(path)) => Err(ServeError::LocalGc(path.clone())),
        None => Err(ServeError::NoStorage),
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), "cannot watch SIGTERM; SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let mut response = match dispatch(&state, request).await {
        Ok(response) => response,
        Err(error) => {
            if error.status.is_server_error() {
                tracing::warn!(error = %ErrorChain(&error), "request failed");
            } else {
                tracing::debug!(error = %ErrorChain(&error), "request refused");
            }
            error.into_response()
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// Whom an upload session counts against: the authenticated user, else the client's IP
/// address (every port of one host together).
fn upload_owner(user: Option<String>, parts: &Parts) -> String {
    match (user, parts.extensions.get::<PeerAddr>()) {
        (Some(user), _) => format!("user {user}"),
        (None, Some(PeerAddr(peer))) => format!("address {}", peer.ip()),
        // Served without the accept loop (a router mounted elsewhere): one client.
        (None, None) => "unknown".to_owned(),
    }
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Checks the request's credentials; returns the authenticated user (`None`: anonymous).
async fn authorize(state: &AppState, request: &Parts) -> Result<Option<String>, ApiError> {
    let Some(auth) = &state.auth else {
        return Ok(None);
    };
    let header = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .filter(|header| !empty_credentials(header))
        .map(str::to_owned);
    // `GET /v2/` is how clients learn whether to send credentials: answering it 200 to an
    // anonymous client makes docker and skopeo push without them (and fail on the upload's
    // 401). With anonymous pulls, manifests, blobs and tags still answer without them.
    let base = matches!(request.uri.path(), "/v2" | "/v2/");
    // Credentials, when given, must be right even where none are needed.
    if header.is_none() && auth.anonymous_pull && !is_write(&request.method) && !base {
        return Ok(None);
    }
    let user = match header {
        Some(header) => {
            // bcrypt is slow on a cache miss: keep it off the async threads.
            let htpasswd = auth.htpasswd.clone();
            tokio::task::spawn_blocking(move || htpasswd.authenticate(Some(&header)))
                .await
                .map_err(|error| ApiError::internal("checking credentials", error))?
        }
        None => None,
    };
    if user.is_some() {
        return Ok(user);
    }
    Err(
        ApiError::new(ErrorCode::Unauthorized, "authentication required").with_header(
            header::WWW_AUTHENTICATE,
            &format!("Basic realm=\"{}\", charset=\"UTF-8\"", auth.realm),
        ),
    )
}

/// `GET /metrics`: the server's metrics, then the source's (Prometheus text), behind the
/// same authentication as pulls.
async fn metrics(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let answer = async {
        if !matches!(parts.method, Method::GET | Method::HEAD) {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                format!("method {} is not supported on /metrics", parts.method),
            ));
        }
        authorize(&state, &parts).await?;
        // The server's part reads /proc.
        let server = state.metrics.clone();
        let mut text = tokio::task::spawn_blocking(move || server.render())
            .await
            .map_err(|error| ApiError::internal("rendering the metrics", error))?;
        text.push_str(&state.source.metrics());
        text.push_str(&state.local.backend().metrics());
        let mut response = (StatusCode::OK, text).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        Ok(response)
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// Writes into an upstream's namespace would poison the cache every client reads.
fn refuse_upstream_writes(state: &AppState, route: &Route) -> Result<(), ApiError> {
    let repo = match route {
        Route::Manifest {
            repo,
            op: ManifestOp::Put | ManifestOp::Delete,
            ..
        }
        | Route::Blob {
            repo,
            op: BlobOp::Delete,
            ..
        }
        | Route::StartUpload { repo, .. }
        | Route::Upload { repo, .. } => repo,
        _ => return Ok(()),
    };
    let admitted = |namespace: &crate::route::Namespace| {
        state
            .upstream_policy
            .as_ref()
            .is_some_and(|policy| policy.admits_namespace(namespace, state.names.local_namespace()))
    };
    match &repo.namespace {
        Some(namespace)
            if state.upstream_hosts.contains(&namespace.name) || admitted(namespace) =>
        {
            Err(ApiError::new(
                ErrorCode::Denied,
                format!(
                    "{} is a pull-through cache of an upstream: push under another namespace",
                    namespace.name
                ),
            ))
        }
        _ => Ok(()),
    }
}

async fn dispatch(state: &AppState, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let user = authorize(state, &parts).await?;
    let route = state
        .parser
        .parse(&parts.method, parts.uri.path(), parts.uri.query())?;
    if state.read_only && is_write(&parts.method) {
        return Err(ApiError::new(
            ErrorCode::Denied,
            "this registry is read-only (mode: read-only)",
        ));
    }
    refuse_upstream_writes(state, &route)?;
    match route {
        Route::Base => Ok(handlers::base()),
        Route::Manifest {
            repo,
            reference,
            op,
            tags,
        } => handlers::manifest(state, &parts, body, repo, reference, op, tags).await,
        Route::Blob { repo, digest, op } => handlers::blob(state, &parts, repo, digest, op).await,
        Route::StartUpload {
            repo,
            digest,
            mount,
            from,
        } => {
            let owner = upload_owner(user, &parts);
            handlers::start_upload(state, &parts, body, repo, digest, mount, from, owner).await
        }
        Route::Upload { repo, id, op } => handlers::upload(state, &parts, body, repo, id, op).await,
        Route::Tags { repo, n, last } => handlers::tags(state, repo, n, last).await,
        Route::Catalog { n, last } => handlers::catalog(state, n, last).await,
        Route::Referrers {
            repo,
            digest,
            artifact_type,
        } => handlers::referrers(state, repo, digest, artifact_type).await,
    }
}
