//! The seam between the HTTP front and where content comes from.
//!
//! The server answers every read (manifests, blobs, tags, referrers) through a
//! [`ContentSource`]. [`crate::LocalSource`] serves the store; a pull-through cache wraps it:
//! it implements [`ContentSource`] itself, answers from the wrapped source when it can
//! (digests are immutable) and fetches from the upstream that [`RepoPath::namespace`] names
//! otherwise, filling the store. What it did travels back in [`ResponseMeta`] (`X-Cache`,
//! `OCI-Namespace`), which the server turns into headers. Writes (pushes, deletes) go to
//! the [`crate::RegistryBackend`] and do not pass through here.
//!
//! Plugging a cache in:
//!
//! 1. a type holding `Arc<LocalSource>` (from [`crate::Registry::local_source`]) and the
//!    upstream clients implements [`ContentSource`]; it maps [`RepoPath::namespace`] (a host
//!    from `?ns=` or a path prefix, an alias, or `None` for the default upstream) to an
//!    upstream, and refuses namespaces that name none (never an open proxy);
//! 2. it answers from the wrapped source first where that is right (digests always; tags
//!    within their TTL), and fills the store on a miss: blobs through
//!    [`crate::RegistryBackend::begin_fill`] (hashed while written, committed only on a
//!    digest match),
//!    manifests through [`crate::LocalSource::put_manifest`] (the push path: byte-exact,
//!    validated, named under [`StoreNames`]);
//! 3. [`ResponseMeta::cache`] says `HIT`/`MISS`/`STALE`;
//! 4. it is installed with [`crate::Registry::with_source`], and `Registry::open` stops
//!    refusing configurations with upstreams.

use std::collections::BTreeMap;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use sealer_fs_abstraction::error_chain;
use sealer_image_store::{Descriptor, Digest, Reference};

use crate::error::{ApiError, ErrorCode};
use crate::range::RangeRequest;
use crate::route::{ManifestRef, NamespaceVia, RepoPath};

/// A blob body: chunks in order. An `Err` item aborts the response (the client sees a
/// truncated transfer, never a clean end).
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What a cache did for a response (`X-Cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the store.
    Hit,
    /// Fetched from the upstream.
    Miss,
    /// Served from the store after the upstream failed to revalidate it.
    Stale,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
        }
    }
}

/// Response headers a source decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// `X-Cache`, when a cache answered.
    pub cache: Option<CacheStatus>,
    /// `OCI-Namespace`: the namespace the content came from, for requests that used `?ns=`.
    pub namespace: Option<String>,
}

impl ResponseMeta {
    /// The meta of an answer from the store for `repo`: `OCI-Namespace` echoes `?ns=`.
    pub fn local(repo: &RepoPath) -> Self {
        Self {
            cache: None,
            namespace: repo
                .namespace
                .as_ref()
                .filter(|ns| ns.via == NamespaceVia::Query)
                .map(|ns| ns.name.clone()),
        }
    }
}

/// Content and the headers that go with it.
#[derive(Debug)]
pub struct Served<T> {
    /// The content.
    pub content: T,
    /// Headers the source decided.
    pub meta: ResponseMeta,
}

/// A manifest request.
#[derive(Debug, Clone, Default)]
pub struct ManifestRequest {
    /// `HEAD`: the bytes are not needed (a source may leave [`ManifestContent::bytes`]
    /// empty).
    pub head: bool,
    /// The media types the client accepts (its `Accept` headers), to forward upstream.
    pub accept: Vec<String>,
}

/// A manifest as served.
#[derive(Debug, Clone)]
pub struct ManifestContent {
    /// Its digest (the request's algorithm for digest requests, sha256 for tags).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size.
    pub size: u64,
    /// The exact stored bytes (`None` for a HEAD answered without them).
    pub bytes: Option<Bytes>,
}

/// A blob request.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobRequest {
    /// `HEAD`: no body.
    pub head: bool,
    /// The `Range` asked for, if any.
    pub range: Option<RangeRequest>,
}

/// A blob as served.
pub struct BlobContent {
    /// The whole blob's size.
    pub size: u64,
    /// The part served (end exclusive) when a range was asked for and satisfied.
    pub range: Option<Range<u64>>,
    /// The bytes (of the range, or all of them); `None` for HEAD.
    pub body: Option<BlobStream>,
}

impl std::fmt::Debug for BlobContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobContent")
            .field("size", &self.size)
            .field("range", &self.range)
            .field("body", &self.body.is_some())
            .finish()
    }
}

/// Where the server's reads come from; see the module documentation.
#[async_trait::async_trait]
pub trait ContentSource: Send + Sync + 'static {
    /// A manifest by tag or digest: `MANIFEST_UNKNOWN` when absent.
    async fn manifest(
        &self,
        repo: &RepoPath,
        reference: &ManifestRef,
        request: &ManifestRequest,
    ) -> Result<Served<ManifestContent>, ApiError>;

    /// A blob, or a range of it: `BLOB_UNKNOWN` when absent, 416 (see
    /// [`range_not_satisfiable`]) for a range outside it.
    async fn blob(
        &self,
        repo: &RepoPath,
        digest: &Digest,
        request: BlobRequest,
    ) -> Result<Served<BlobContent>, ApiError>;

    /// The tags of a repository, sorted: `NAME_UNKNOWN` for a repository never seen.
    async fn tags(&self, repo: &RepoPath) -> Result<Served<Vec<String>>, ApiError>;

    /// Descriptors of the manifests whose `subject` is `subject` (artifactType and
    /// annotations filled in), unfiltered.
    async fn referrers(
        &self,
        repo: &RepoPath,
        subject: &Digest,
    ) -> Result<Served<Vec<Descriptor>>, ApiError>;

    /// The source's metrics in the Prometheus text format, served at `/metrics` (empty by
    /// default).
    fn metrics(&self) -> String {
        String::new()
    }
}

/// The 416 answer for a range outside a blob of `size` bytes.
pub fn range_not_satisfiable(size: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("the requested range is outside the blob ({size} bytes)"),
    )
    .with_status(axum::http::StatusCode::RANGE_NOT_SATISFIABLE)
    .with_header(
        axum::http::header::CONTENT_RANGE,
        &format!("bytes */{size}"),
    )
}

/// How repositories map to store names: `(namespace, repository)` → the full reference
/// the store uses (`docker.io` + `nginx` → `docker.io/library/nginx`). Requests without a
/// namespace use the local namespace (default `localhost`).
#[derive(Debug, Clone)]
pub struct StoreNames {
    local_namespace: String,
    aliases: BTreeMap<String, String>,
}

impl StoreNames {
    /// Names under `local_namespace`; `aliases` maps upstream aliases to their hosts.
    pub fn new(local_namespace: &str, aliases: BTreeMap<String, String>) -> Self {
        Self {
            local_namespace: local_namespace.to_owned(),
            aliases,
        }
    }

    /// The namespace of the store's own images.
    pub(crate) fn local_namespace(&self) -> &str {
        &self.local_namespace
    }

    /// The registry host a repository's content is stored under.
    pub fn host<'a>(&'a self, repo: &'a RepoPath) -> &'a str {
        match &repo.namespace {
            Some(ns) if ns.via == NamespaceVia::PathAlias => self
                .aliases
                .get(&ns.name)
                .map_or(ns.name.as_str(), String::as_str),
            Some(ns) => &ns.name,
            None => &self.local_namespace,
        }
    }

    /// The store's reference for `repo` with `tag` (`None`: the bare name, tagged
    /// `latest` by [`Reference`]'s rules, so use [`Self::name`] for prefixes).
    pub fn reference(&self, repo: &RepoPath, tag: &str) -> Result<Reference, ApiError> {
        Reference::new(self.host(repo), &repo.repository, Some(tag), None).map_err(|error| {
            ApiError::new(ErrorCode::NameInvalid, error_chain(&error))
                .with_detail(serde_json::json!({ "name": repo.path_name }))
        })
    }

    /// The store's `registry/repository` for `repo`, e.g. `docker.io/library/nginx`.
    pub fn name(&self, repo: &RepoPath) -> Result<String, ApiError> {
        Ok(self.reference(repo, "latest")?.name())
    }
}
