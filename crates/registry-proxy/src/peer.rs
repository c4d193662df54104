//! Replica-to-replica blob streaming: a replica that finds another replica's live fill lease
//! (`bucket::Bucket::acquire_fill_lease`) streams the blob from that holder, never from the
//! upstream, so the cluster sends one upstream `GET` per digest.
//!
//! * Server side: [`serve_peer_fill`] answers `GET` [`PEER_FILL_ROUTE`]`?offset=N` with the
//!   bytes of an in-progress fill from `offset`, after checking `Authorization: Bearer
//!   <shared secret>` in constant time; [`peer_router`] mounts it on an axum router. The
//!   bytes come from a [`PeerFillSource`] (the fill registry's follower: it ends at the
//!   verified end of the blob, or fails when the fill fails).
//! * Client side: [`PeerClient::stream`] with the secret and bounded timeouts. The response
//!   carries `Content-Length` (the rest of the blob from `offset`): a transfer that ends
//!   short (the holder died, its fill failed) is an error of the stream, never a silently
//!   short body.
//!
//! # Configuration (keys of `sealer registry serve`, see `crate::cluster`)
//!
//! ```yaml
//! storage:
//!   s3: { bucket: …, prefix: … }   # the shared bucket (bucket::BucketConfig)
//! cluster:
//!   # This replica's base URL as the other replicas reach it (written into fill leases).
//!   advertise_url: http://10.0.0.5:5000
//!   # The secret every replica shares for the peer route: inline, or (preferred) a file
//!   # holding it (surrounding whitespace is trimmed); exactly one of the two.
//!   peer_secret_file: /etc/sealer/peer-secret
//!   # peer_secret: "…"
//!   # How long a fill lease lives without renewal; the holder renews it every third of it.
//!   # Must exceed the replicas' clock skew by a margin.
//!   lease_ttl: 30s
//!   # Bounds of a peer stream: connecting, and the longest pause between two reads (above
//!   # the upstream's own stall timeout, since a peer relays a live fill).
//!   peer_connect_timeout: 5s
//!   peer_read_timeout: 60s
//! redirect:
//!   # Answer GET of a complete blob with a 307 to a presigned bucket URL (never for Range
//!   # requests or fills in progress); `expires` is whole seconds, at most 7 days.
//!   presigned: false
//!   expires: 5m
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::Digest;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::source::BlobStream;

/// The peer route as an axum path (`{digest}` is `<alg>:<hex>`), e.g.
/// `GET /_sealer/peer/v1/fills/sha256:ab12…?offset=1048576`.
pub const PEER_FILL_ROUTE: &str = "/_sealer/peer/v1/fills/{digest}";

/// The route's path before the digest.
pub const PEER_FILL_PATH_PREFIX: &str = "/_sealer/peer/v1/fills/";

/// Response header: the whole blob's size (the body carries it from `offset` on).
pub const BLOB_SIZE_HEADER: &str = "x-sealer-blob-size";

/// Errors of the peer client and of its configuration.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The configured secret is unusable.
    #[error("peer secret: {0}")]
    Secret(&'static str),
    /// A peer base URL that does not parse.
    #[error("peer URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What was expected.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("building the peer HTTP client")]
    Client(#[source] reqwest::Error),
    /// The peer could not be reached or did not answer in time (it is gone: refused, reset,
    /// timed out).
    #[error("peer {url} unreachable: {reason}")]
    Unreachable {
        /// The request URL.
        url: String,
        /// The error chain.
        reason: String,
    },
    /// The peer answered with an error status (401: wrong secret; 404: no fill of the digest
    /// there; 416: offset past the end; 503: its fill failed).
    #[error("peer {url} answered {status}: {message}")]
    Refused {
        /// The request URL.
        url: String,
        /// The status code.
        status: u16,
        /// The body of the answer, shortened.
        message: String,
    },
    /// The answer does not follow the protocol (no `Content-Length`, no blob size).
    #[error("peer {url}: {reason}")]
    Protocol {
        /// The request URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The transfer ended before the whole rest of the blob arrived (the peer died, or its
    /// fill failed), or carried more bytes than announced.
    #[error("peer {url}: transfer cut after {received} of {expected} bytes: {reason}")]
    Cut {
        /// The request URL.
        url: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        expected: u64,
        /// Why.
        reason: String,
    },
}

/// The secret every replica shares for the peer route. Never printed: `Debug` redacts it.
#[derive(Clone)]
pub struct PeerSecret(Arc<str>);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(<redacted>)")
    }
}

/// The shortest secret accepted: guessing must be out of reach.
pub const MIN_SECRET_LEN: usize = 16;

impl PeerSecret {
    /// A secret from configuration or from a secret file's contents (surrounding whitespace,
    /// e.g. a file's final newline, is trimmed). At least [`MIN_SECRET_LEN`] bytes of
    /// visible ASCII, as it travels in an HTTP header.
    pub fn new(text: &str) -> Result<Self, PeerError> {
        let secret = text.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(PeerError::Secret(
                "too short: expected at least 16 characters",
            ));
        }
        if !secret.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(PeerError::Secret(
                "expected visible ASCII characters only (it travels in an HTTP header)",
            ));
        }
        Ok(Self(secret.into()))
    }

    /// Whether `authorization` is `Bearer <this secret>`, compared in constant time (both
    /// sides hashed first, so neither the length nor a matching prefix shows in the timing).
    pub fn authorizes(&self, authorization: Option<&HeaderValue>) -> bool {
        let presented = authorization
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        let expected = Sha256::digest(self.0.as_bytes());
        let presented = Sha256::digest(presented);
        let equal: bool = expected.as_slice().ct_eq(presented.as_slice()).into();
        equal && authorization.is_some()
    }

    fn bearer(&self) -> Result<HeaderValue, PeerError> {
        let mut value = HeaderValue::try_from(format!("Bearer {}", self.0))
            .map_err(|_| PeerError::Secret("not a valid HTTP header value"))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// An in-progress fill as [`PeerFillSource::open`] hands it out.
pub struct PeerFill {
    /// The whole blob's size.
    pub size: u64,
    /// The bytes from the requested offset (or from `size` when the offset is past it) to the
    /// end. It ends only once the fill verified the digest, and fails when the fill fails.
    pub body: BlobStream,
}

impl std::fmt::Debug for PeerFill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerFill")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Where the peer route reads fills from (the server's fill registry). Over `fill.rs`: the
/// fill of the digest in flight (`Fills::get`), its `size()` (an error when it failed), and
/// `follow(offset.min(size)..size)`, whose follower holds its last piece back until the digest
/// is verified and fails when the fill does.
#[async_trait::async_trait]
pub trait PeerFillSource: Send + Sync + 'static {
    /// The fill of `digest` running on this replica, followed from `offset`; `Ok(None)` when
    /// there is none; an error when its size is unknown because it failed.
    async fn open(&self, digest: &Digest, offset: u64) -> std::io::Result<Option<PeerFill>>;
}

/// Answers one peer request: `authorization` must carry the secret (else 401), `digest` is the
/// path's `<alg>:<hex>`, `query` the raw query (`offset=N`, default 0). 200 streams the rest of
/// the blob with `Content-Length` and [`BLOB_SIZE_HEADER`]; a fill failing mid-way cuts the
/// response, so the client sees an error, never a short body.
pub async fn serve_peer_fill<S: PeerFillSource + ?Sized>(
    source: &S,
    secret: &PeerSecret,
    headers: &HeaderMap,
    digest: &str,
    query: Option<&str>,
) -> Response {
    if !secret.authorizes(headers.get(header::AUTHORIZATION)) {
        tracing::warn!(digest, "peer request refused: missing or wrong secret");
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "peer route: missing or wrong bearer secret\n",
        )
            .into_response();
    }
    let digest: Digest = match digest.parse() {
        Ok(digest) => digest,
        Err(error) => {
            return plain(
                StatusCode::BAD_REQUEST,
                format!("invalid digest {digest:?}: {}", ErrorChain(&error)),
            );
        }
    };
    let offset = match parse_offset(query) {
        Ok(offset) => offset,
        Err(message) => return plain(StatusCode::BAD_REQUEST, message),
    };
    let fill = match source.open(&digest, offset).await {
        Ok(Some(fill)) => fill,
        Ok(None) => {
            return plain(
                StatusCode::NOT_FOUND,
                format!("no fill of {digest} on this replica"),
            );
        }
        Err(error) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the fill of {digest} failed: {}", ErrorChain(&error)),
            );
        }
    };
    if offset > fill.size {
        return plain(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "offset {offset} is past the end of {digest} ({} bytes)",
                fill.size
            ),
        );
    }
    tracing::debug!(%digest, offset, size = fill.size, "streaming a fill to a peer");
    let mut response = Response::new(Body::from_stream(fill.body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(fill.size - offset),
    );
    headers.insert(BLOB_SIZE_HEADER, HeaderValue::from(fill.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// A router serving [`PEER_FILL_ROUTE`] from `source`, to merge into the server's router.
pub fn peer_router<S: PeerFillSource>(source: Arc<S>, secret: PeerSecret) -> Router {
    Router::new()
        .route(PEER_FILL_ROUTE, get(peer_fill_handler::<S>))
        .with_state((source, secret))
}

async fn peer_fill_handler<S: PeerFillSource>(
    State((source, secret)): State<(Arc<S>, PeerSecret)>,
    Path(digest): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    serve_peer_fill(
        source.as_ref(),
        &secret,
        &headers,
        &digest,
        query.as_deref(),
    )
    .await
}

fn plain(status: StatusCode, message: String) -> Response {
    (status, format!("{message}\n")).into_response()
}

fn parse_offset(query: Option<&str>) -> Result<u64, String> {
    let value = query
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix("offset="));
    match value {
        None => Ok(0),
        Some(value) => value.parse().map_err(|_| {
            format!("invalid offset {value:?}: expected a byte offset (a non-negative integer)")
        }),
    }
}

/// Bounds and TLS of a [`PeerClient`].
#[derive(Debug, Clone)]
pub struct PeerClientOptions {
    /// Bound on connecting to a peer.
    pub connect_timeout: Duration,
    /// Bound on each wait for bytes (the response head, then every read of the body).
    pub read_timeout: Duration,
    /// TLS for `https://` peers (rustls on ring); `None`: the process's default provider.
    pub tls: Option<rustls::ClientConfig>,
}

impl Default for PeerClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// The client side: streams fills from other replicas.
#[derive(Debug, Clone)]
pub struct PeerClient {
    http: reqwest::Client,
    secret: PeerSecret,
}

/// A blob being streamed from a peer.
pub struct PeerStream {
    /// The whole blob's size.
    pub size: u64,
    /// Where [`Self::body`] starts.
    pub offset: u64,
    /// The bytes from `offset` to the end; an error (a [`PeerError::Cut`] inside the
    /// `io::Error`) when the transfer ends early.
    pub body: BlobStream,
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("size", &self.size)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client presenting `secret`.
    pub fn new(secret: PeerSecret, options: PeerClientOptions) -> Result<Self, PeerError> {
        // reqwest has no rustls provider of its own here: ring, the project's only one (an
        // error means a default is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout)
            .no_proxy();
        if let Some(tls) = options.tls {
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder.build().map_err(PeerError::Client)?;
        Ok(Self { http, secret })
    }

    /// Streams the blob `digest` from `offset` from the peer at `base_url` (its advertised
    /// URL, e.g. `http://10.0.0.5:5000`). Fails when the peer is unreachable or refuses; the
    /// returned body fails when the transfer is cut.
    pub async fn stream(
        &self,
        base_url: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<PeerStream, PeerError> {
        let url = peer_fill_url(base_url, digest, offset)?;
        let response = self
            .http
            .get(url.clone())
            .header(header::AUTHORIZATION, self.secret.bearer()?)
            .send()
            .await
            .map_err(|error| PeerError::Unreachable {
                url: url.to_string(),
                reason: sealer_registry_client::error_chain(&error),
            })?;
        let url = url.to_string();
        let status = response.status();
        if !status.is_success() {
            let message = response.text().await.unwrap_or_default();
            return Err(PeerError::Refused {
                url,
                status: status.as_u16(),
                message: message.trim().chars().take(300).collect(),
            });
        }
        let header_u64 = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
        };
        let (Some(expected), Some(size)) = (
            header_u64(header::CONTENT_LENGTH.as_str()),
            header_u64(BLOB_SIZE_HEADER),
        ) else {
            return Err(PeerError::Protocol {
                url,
                reason: format!("expected Content-Length and {BLOB_SIZE_HEADER} headers"),
            });
        };
        if size.checked_sub(offset) != Some(expected) {
            return Err(PeerError::Protocol {
                url,
                reason: format!(
                    "{expected} bytes announced from offset {offset} of a {size}-byte blob"
                ),
            });
        }
        let body = checked_body(Box::pin(response.bytes_stream()), url, expected);
        Ok(PeerStream { size, offset, body })
    }
}

/// `<base_url>/_sealer/peer/v1/fills/<digest>?offset=N`.
fn peer_fill_url(base_url: &str, digest: &Digest, offset: u64) -> Result<reqwest::Url, PeerError> {
    let text = format!(
        "{}{PEER_FILL_PATH_PREFIX}{digest}?offset={offset}",
        base_url.trim_end_matches('/')
    );
    let url = reqwest::Url::parse(&text).map_err(|error| PeerError::Url {
        url: base_url.to_owned(),
        reason: format!("expected http(s)://host:port: {}", ErrorChain(&error)),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(PeerError::Url {
            url: base_url.to_owned(),
            reason: "expected an http:// or https:// URL".to_owned(),
        });
    }
    Ok(url)
}

type ResponseBody =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send + 'static>>;

/// A peer response body being counted against its announced length.
struct CountedBody {
    body: ResponseBody,
    url: String,
    received: u64,
    expected: u64,
    done: bool,
}

impl CountedBody {
    fn cut(&mut self, reason: String) -> std::io::Error {
        self.done = true;
        std::io::Error::other(PeerError::Cut {
            url: self.url.clone(),
            received: self.received,
            expected: self.expected,
            reason,
        })
    }

    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        if self.done {
            return None;
        }
        match self.body.next().await {
            Some(Ok(chunk)) => {
                self.received += chunk.len() as u64;
                if self.received > self.expected {
                    Some(Err(self.cut("more bytes than announced".to_owned())))
                } else {
                    Some(Ok(chunk))
                }
            }
            Some(Err(error)) => Some(Err(self.cut(sealer_registry_client::error_chain(&error)))),
            None if self.received < self.expected => Some(Err(
                self.cut("the peer closed the response early".to_owned())
            )),
            None => None,
        }
    }
}

/// The body, counted: an error when it fails, or ends before or runs past `expected` bytes.
fn checked_body(body: ResponseBody, url: String, expected: u64) -> BlobStream {
    let counted = CountedBody {
        body,
        url,
        received: 0,
        expected,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        counted,
        |mut counted| async move {
            let item = counted.next().await?;
            Some((item, counted))
        },
    ))
}
