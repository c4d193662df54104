//! The endpoint handlers. Reads go through the [`crate::ContentSource`]; writes go through
//! the [`crate::RegistryBackend`] (an upload's bytes through its [`BackendUpload`]).
//!
//! Over 800 lines on purpose: every endpoint of the API, one function each, sharing the
//! response helpers at the bottom.

use axum::body::Body;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::model::media_type;
use sealer_image_store::{Descriptor, Digest, MAX_MANIFEST_SIZE, is_manifest_type};

use crate::backend::BackendUpload;
use crate::error::{ApiError, ErrorCode};
use crate::range::{RangeRequest, parse_content_range};
use crate::route::{BlobOp, ManifestOp, ManifestRef, RepoPath, UploadOp, host_path_component};
use crate::server::AppState;
use crate::source::{BlobRequest, ManifestRequest, ResponseMeta};
use crate::stream::{PumpError, pump};
use crate::uploads::broken_upload;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_TAG: HeaderName = HeaderName::from_static("oci-tag");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const OCI_NAMESPACE: HeaderName = HeaderName::from_static("oci-namespace");
const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// Sets a header from text (skipped if the text cannot be a header value).
fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// `X-Cache` and `OCI-Namespace`, as the source decided.
fn apply_meta(headers: &mut HeaderMap, meta: &ResponseMeta) {
    if let Some(cache) = meta.cache {
        set(headers, X_CACHE, cache.as_str());
    }
    if let Some(namespace) = &meta.namespace {
        set(headers, OCI_NAMESPACE, namespace);
    }
}

fn empty(status: StatusCode) -> Response {
    let mut response = (status, Body::empty()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// `GET /v2/`.
pub(crate) fn base() -> Response {
    let mut response = (StatusCode::OK, "{}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

// ---- manifests ----

#[allow(clippy::too_many_arguments)]
pub(crate) async fn manifest(
    state: &AppState,
    parts: &Parts,
    body: Body,
    repo: RepoPath,
    reference: ManifestRef,
    op: ManifestOp,
    tags: Vec<String>,
) -> Result<Response, ApiError> {
    match op {
        ManifestOp::Get | ManifestOp::Head => {
            get_manifest(state, parts, repo, reference, op == ManifestOp::Head).await
        }
        ManifestOp::Put => put_manifest(state, parts, body, repo, reference, tags).await,
        ManifestOp::Delete => delete_manifest(state, repo, reference).await,
    }
}

/// The media types of the `Accept` headers.
fn accepted(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| item.split(';').next())
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect()
}

async fn get_manifest(
    state: &AppState,
    parts: &Parts,
    repo: RepoPath,
    reference: ManifestRef,
    head: bool,
) -> Result<Response, ApiError> {
    let request = ManifestRequest {
        head,
        accept: accepted(&parts.headers),
    };
    let served = state.source.manifest(&repo, &reference, &request).await?;
    let content = served.content;
    if !request.accept.is_empty()
        && !request
            .accept
            .iter()
            .any(|accepted| accepted == &content.media_type || accepted == "*/*")
    {
        // Registries answer anyway; the client decides what to do with it.
        tracing::info!(
            repository = %repo.path_name,
            %reference,
            stored = %content.media_type,
            accept = ?request.accept,
            "the client does not accept the stored manifest type; serving it anyway"
        );
    }
    let mut response = match (head, content.bytes) {
        (false, Some(bytes)) => (StatusCode::OK, Body::from(bytes)).into_response(),
        _ => (StatusCode::OK, Body::empty()).into_response(),
    };
    let headers = response.headers_mut();
    set(
        headers,
        header::CONTENT_TYPE,
        served_manifest_type(&content.media_type),
    );
    set(headers, header::CONTENT_LENGTH, &content.size.to_string());
    set(headers, DOCKER_CONTENT_DIGEST, &content.digest.to_string());
    set(headers, header::ETAG, &format!("\"{}\"", content.digest));
    apply_meta(headers, &served.meta);
    Ok(response)
}

/// The Content-Type a stored manifest is served with: its media type, unless that is no
/// manifest or index type (a store written before pushes were checked, where `text/html`
/// would make a browser render it): then `application/octet-stream`, which no client
/// renders and no manifest client accepts as a manifest either.
fn served_manifest_type(stored: &str) -> &str {
    if is_manifest_type(stored) {
        stored
    } else {
        tracing::warn!(stored, "a stored manifest has no manifest media type");
        "application/octet-stream"
    }
}

/// The manifest media types a push may use, as its Content-Type and as its `mediaType`.
const MANIFEST_TYPES: [&str; 4] = [
    media_type::OCI_MANIFEST,
    media_type::OCI_INDEX,
    media_type::DOCKER_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
];

/// Refuses a media type that is no manifest or index type (`what` says where it was).
pub(crate) fn check_manifest_type(what: &str, kind: &str) -> Result<(), ApiError> {
    if is_manifest_type(kind) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::ManifestInvalid,
        format!(
            "{what} {kind:?} is not a manifest media type: expected one of {}",
            MANIFEST_TYPES.join(", ")
        ),
    ))
}

/// Reads a body of at most `limit` bytes.
async fn read_limited(parts: &Parts, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::ManifestInvalid,
            format!("the manifest is larger than {limit} bytes"),
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|declared| declared > limit) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                ErrorCode::ManifestInvalid,
                format!("reading the body: {}", ErrorChain(&error)),
            )
        })?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

async fn put_manifest(
    state: &AppState,
    parts: &Parts,
    body: Body,
    repo: RepoPath,
    reference: ManifestRef,
    tags: Vec<String>,
) -> Result<Response, ApiError> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|value| value.trim().to_owned());
    let bytes = read_limited(parts, body, MAX_MANIFEST_SIZE).await?;
    let (digest, subject) = state
        .local
        .put_manifest(&repo, &reference, &tags, bytes, content_type)
        .await?;
    tracing::info!(repository = %repo.path_name, %reference, %digest, "manifest stored");
    let mut response = created(repo.url(&format!("manifests/{digest}")), &digest);
    let headers = response.headers_mut();
    if let Some(subject) = subject {
        set(headers, OCI_SUBJECT, &subject.to_string());
    }
    // One `OCI-Tag` per tag named by a `tag` parameter: the spec's sign that tags on push
    // are supported (a client falls back to tag pushes without it).
    for tag in &tags {
        if let Ok(value) = HeaderValue::from_str(tag) {
            headers.append(OCI_TAG, value);
        }
    }
    Ok(response)
}

async fn delete_manifest(
    state: &AppState,
    repo: RepoPath,
    reference: ManifestRef,
) -> Result<Response, ApiError> {
    let backend = state.local.backend();
    let unknown = {
        let path_name = repo.path_name.clone();
        let reference = reference.to_string();
        move || {
            ApiError::new(
                ErrorCode::ManifestUnknown,
                format!("manifest {reference} is not in repository {path_name}"),
            )
        }
    };
    match reference {
        ManifestRef::Tag(tag) => {
            let name = state.names.reference(&repo, &tag)?;
            if !backend.untag(name).await? {
                return Err(unknown());
            }
        }
        ManifestRef::Digest(digest) => {
            let name = state.names.name(&repo)?;
            if !backend.delete_manifest(name, digest).await? {
                return Err(unknown());
            }
        }
    }
    Ok(empty(StatusCode::ACCEPTED))
}

// ---- blobs ----

pub(crate) async fn blob(
    state: &AppState,
    parts: &Parts,
    repo: RepoPath,
    digest: Digest,
    op: BlobOp,
) -> Result<Response, ApiError> {
    if op == BlobOp::Delete {
        let outcome = state.local.delete_blob(&repo, &digest).await?;
        tracing::info!(repository = %repo.path_name, %digest, ?outcome, "blob delete");
        return Ok(empty(StatusCode::ACCEPTED));
    }
    let head = op == BlobOp::Head;
    if !head
        && !parts.headers.contains_key(header::RANGE)
        && let Some(response) = presigned_redirect(state, &digest).await
    {
        return Ok(response);
    }
    let range = if head {
        None
    } else {
        parts
            .headers
            .get(header::RANGE)
            .and_then(|value| value.to_str().ok())
            .and_then(RangeRequest::parse)
    };
    let served = state
        .source
        .blob(&repo, &digest, BlobRequest { head, range })
        .await?;
    let content = served.content;
    let (status, length) = match &content.range {
        Some(range) => (StatusCode::PARTIAL_CONTENT, range.end - range.start),
        None => (StatusCode::OK, content.size),
    };
    let body = match content.body {
        Some(stream) => Body::from_stream(stream),
        None => Body::empty(),
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set(headers, header::CONTENT_LENGTH, &length.to_string());
    set(headers, DOCKER_CONTENT_DIGEST, &digest.to_string());
    set(headers, header::ETAG, &format!("\"{digest}\""));
    if let Some(range) = &content.range {
        set(
            headers,
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{}", range.start, range.end - 1, content.size),
        );
    }
    apply_meta(headers, &served.meta);
    Ok(response)
}

/// The 307 to a presigned bucket URL of `digest` (`redirect.presigned`), when the blob is
/// complete in the bucket and no fill of it runs on this replica; `None`: serve it as usual
/// (also when the bucket cannot be asked: the usual path reports that).
async fn presigned_redirect(state: &AppState, digest: &Digest) -> Option<Response> {
    let redirect = state.redirect.as_ref()?;
    if state.fills.get(digest).is_some() {
        return None;
    }
    match redirect.bucket.stat_blob(digest).await {
        Ok(Some(_)) => {}
        Ok(None) => return None,
        Err(error) => {
            tracing::debug!(%digest, error = %ErrorChain(&error), "no redirect: the blob's presence is unknown");
            return None;
        }
    }
    let url = match redirect
        .bucket
        .presigned_blob_url(digest, redirect.expires)
        .await
    {
        Ok(url) => url,
        Err(error) => {
            tracing::warn!(%digest, error = %ErrorChain(&error), "presigning a blob URL; serving the blob instead");
            return None;
        }
    };
    let mut response = empty(StatusCode::TEMPORARY_REDIRECT);
    let headers = response.headers_mut();
    set(headers, header::LOCATION, url.as_str());
    set(headers, DOCKER_CONTENT_DIGEST, &digest.to_string());
    Some(response)
}

// ---- uploads ----

fn blob_created(repo: &RepoPath, digest: &Digest) -> Response {
    created(repo.url(&format!("blobs/{digest}")), digest)
}

/// 201 with the new content's `Location` and `Docker-Content-Digest`.
fn created(location: String, digest: &Digest) -> Response {
    let mut response = empty(StatusCode::CREATED);
    let headers = response.headers_mut();
    set(headers, header::LOCATION, &location);
    set(headers, DOCKER_CONTENT_DIGEST, &digest.to_string());
    response
}

/// `Range: 0-<last byte>` of an upload holding `size` bytes (`0-0` when empty, as
/// distribution answers).
fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

fn upload_accepted(status: StatusCode, repo: &RepoPath, id: &str, size: u64) -> Response {
    let mut response = empty(status);
    let headers = response.headers_mut();
    set(
        headers,
        header::LOCATION,
        &repo.url(&format!("blobs/uploads/{id}")),
    );
    set(headers, header::RANGE, &upload_range(size));
    set(headers, DOCKER_UPLOAD_UUID, id);
    response
}

fn pump_error(error: PumpError) -> ApiError {
    match error {
        PumpError::Client(message) => ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("reading the request body: {message}"),
        ),
        PumpError::Store(error) => error,
        PumpError::TooLarge => ApiError::new(
            ErrorCode::BlobUploadInvalid,
            "the body is longer than its Content-Range",
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE),
        PumpError::OverMaxSize(max) => too_big(max),
    }
}

/// 413: the blob would be larger than `uploads.max_blob_size`.
fn too_big(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!(
            "the blob is larger than this registry accepts ({max} bytes, uploads.max_blob_size)"
        ),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(parts: &Parts) -> Option<u64> {
    header_text(&parts.headers, header::CONTENT_LENGTH).and_then(|text| text.parse().ok())
}

/// Cancels an upload (which removes what it received).
async fn discard(upload: Option<Box<dyn BackendUpload>>) {
    if let Some(upload) = upload {
        upload.cancel().await;
    }
}

/// Holds a blob a push just mounted as fresh ([`crate::backend::RegistryBackend::hold_fresh`];
/// an upload's commit holds its blob itself), so that prune keeps it until the push names its
/// manifest. When a prune removed it in between, the push is told to send it again.
async fn hold_fresh(state: &AppState, digest: &Digest) -> Result<(), ApiError> {
    if state.local.backend().hold_fresh(digest.clone()).await? {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::BlobUploadUnknown,
        format!("blob {digest} was removed by a concurrent prune: upload it again"),
    ))
}

/// `POST …/blobs/uploads/`: a mount, a monolithic upload (`?digest=`), or a new session
/// counted against `owner` (the client's user or address).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_upload(
    state: &AppState,
    parts: &Parts,
    body: Body,
    repo: RepoPath,
    digest: Option<Digest>,
    mount: Option<Digest>,
    from: Option<String>,
    owner: String,
) -> Result<Response, ApiError> {
    let name = state.names.name(&repo)?;
    if let Some(mount) = mount {
        let present = state.local.backend().stat_blob(mount.clone()).await?;
        if present.is_some() {
            hold_fresh(state, &mount).await?;
            tracing::info!(repository = %repo.path_name, digest = %mount, ?from, "blob mounted");
            return Ok(blob_created(&repo, &mount));
        }
        tracing::debug!(digest = %mount, "mount source absent: starting an upload instead");
    }
    let max = state.uploads.limits().max_blob_size.0;
    if digest.is_some() && content_length(parts).is_some_and(|length| length > max) {
        return Err(too_big(max));
    }
    let mut upload = state.local.backend().begin_upload(&name).await?;
    if let Some(digest) = digest {
        if let Err(error) = pump(&mut *upload, body, None, max).await {
            discard(Some(upload)).await;
            return Err(pump_error(error));
        }
        let size = upload.commit(digest.clone()).await?;
        tracing::info!(repository = %repo.path_name, %digest, size, "blob uploaded");
        return Ok(blob_created(&repo, &digest));
    }
    match state.uploads.insert(name, owner, upload) {
        Ok(id) => Ok(upload_accepted(StatusCode::ACCEPTED, &repo, &id, 0)),
        Err(refused) => {
            let (error, upload) = *refused;
            discard(Some(upload)).await;
            Err(error)
        }
    }
}

pub(crate) async fn upload(
    state: &AppState,
    parts: &Parts,
    body: Body,
    repo: RepoPath,
    id: String,
    op: UploadOp,
) -> Result<Response, ApiError> {
    let name = state.names.name(&repo)?;
    let session = state
        .uploads
        .get(&id, &name, &**state.local.backend())
        .await?;
    let mut session = session.lock().await;
    session.touched = std::time::Instant::now();
    // Another process may have advanced (or finished) a shared upload since.
    if let Some(upload) = session.upload.as_mut()
        && let Err(error) = upload.refresh().await
    {
        session.upload = None;
        state.uploads.remove(&id);
        return Err(error);
    }
    let closing = match op {
        UploadOp::Status => {
            let size = session.size(&id)?;
            return Ok(upload_accepted(StatusCode::NO_CONTENT, &repo, &id, size));
        }
        UploadOp::Cancel => {
            state.uploads.remove(&id);
            discard(session.upload.take()).await;
            return Ok(empty(StatusCode::NO_CONTENT));
        }
        UploadOp::Patch => None,
        UploadOp::Finish(digest) => Some(digest),
    };
    let size = session.size(&id)?;
    // An out-of-order chunk is refused before the session is touched, so the client can
    // send it again with the right range.
    let chunk = Chunk {
        state,
        parts,
        body,
        repo: &repo,
        id: &id,
        size,
        limit: declared_chunk(parts, &id, size)?,
        max: state.uploads.limits().max_blob_size.0,
    };
    match closing {
        None => patch_upload(chunk, &mut session).await,
        Some(digest) => finish_upload(chunk, &mut session, digest).await,
    }
}

/// A request that sends a chunk of upload `id` (a `PATCH` or the closing `PUT`).
struct Chunk<'a> {
    state: &'a AppState,
    parts: &'a Parts,
    body: Body,
    repo: &'a RepoPath,
    id: &'a str,
    /// The upload's size before the chunk.
    size: u64,
    /// The chunk's length as its `Content-Range` declares it (checked against `size`).
    limit: Option<u64>,
    /// The largest blob accepted.
    max: u64,
}

/// A chunk whose body is not as long as its `Content-Range` said.
fn chunk_size_invalid(written: u64, announced: Option<u64>) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("the chunk has {written} bytes, not the announced {announced:?}"),
    )
}

/// A `PATCH`: the chunk appended and saved for other processes, or, when it fails, the
/// upload rolled back to where it was (the client may send it again).
async fn patch_upload(
    chunk: Chunk<'_>,
    session: &mut crate::uploads::Session,
) -> Result<Response, ApiError> {
    let Chunk {
        state,
        parts,
        body,
        repo,
        id,
        size,
        limit,
        max,
    } = chunk;
    let announced = limit.or_else(|| content_length(parts));
    if announced.is_some_and(|announced| size.saturating_add(announced) > max) {
        state.uploads.remove(id);
        discard(session.upload.take()).await;
        return Err(too_big(max));
    }
    let mut upload = session.upload.take().ok_or_else(|| broken_upload(id))?;
    let written = pump(&mut *upload, body, limit, max).await;
    let failure = match written {
        Err(PumpError::Store(error)) => {
            // The storage failed: the upload is unusable.
            state.uploads.remove(id);
            discard(Some(upload)).await;
            return Err(error);
        }
        Err(PumpError::OverMaxSize(max)) => {
            state.uploads.remove(id);
            discard(Some(upload)).await;
            return Err(too_big(max));
        }
        Err(error) => Some(pump_error(error)),
        Ok(written) if limit.is_some_and(|limit| limit != written) => {
            Some(chunk_size_invalid(written, limit))
        }
        // The whole chunk arrived: only now may other processes see it.
        Ok(_) => match upload.save().await {
            Ok(()) => None,
            Err(error) => {
                state.uploads.remove(id);
                discard(Some(upload)).await;
                return Err(error);
            }
        },
    };
    if let Some(error) = failure {
        // A failed PATCH changes nothing: the upload goes back to where it was, and the
        // client may send the chunk again.
        match upload.rollback().await {
            Ok(()) => session.upload = Some(upload),
            Err(rollback) => {
                state.uploads.remove(id);
                discard(Some(upload)).await;
                tracing::warn!(%rollback, "dropped an upload that could not be rolled back");
            }
        }
        return Err(error
            .with_header(header::RANGE, &upload_range(size))
            .with_header(DOCKER_UPLOAD_UUID, id));
    }
    let size = upload.size();
    session.upload = Some(upload);
    Ok(upload_accepted(StatusCode::ACCEPTED, repo, id, size))
}

/// The closing `PUT ?digest=`: its chunk appended, the digest verified, the blob committed.
async fn finish_upload(
    chunk: Chunk<'_>,
    session: &mut crate::uploads::Session,
    digest: Digest,
) -> Result<Response, ApiError> {
    let (id, limit, max) = (chunk.id, chunk.limit, chunk.max);
    let mut upload = session.upload.take().ok_or_else(|| broken_upload(id))?;
    chunk.state.uploads.remove(id);
    if content_length(chunk.parts).is_some_and(|length| upload.size().saturating_add(length) > max)
    {
        discard(Some(upload)).await;
        return Err(too_big(max));
    }
    match pump(&mut *upload, chunk.body, limit, max).await {
        Err(error) => {
            discard(Some(upload)).await;
            return Err(pump_error(error));
        }
        Ok(written) if limit.is_some_and(|limit| limit != written) => {
            discard(Some(upload)).await;
            return Err(chunk_size_invalid(written, limit));
        }
        Ok(_) => {}
    }
    let size = upload.commit(digest.clone()).await?;
    tracing::info!(repository = %chunk.repo.path_name, %digest, size, "blob uploaded");
    Ok(blob_created(chunk.repo, &digest))
}

/// The length of the chunk a request's `Content-Range` declares (`None` without one), once
/// checked to start at the upload's offset `size` and to agree with `Content-Length`; else
/// 416 with the upload's current range.
fn declared_chunk(parts: &Parts, id: &str, size: u64) -> Result<Option<u64>, ApiError> {
    let Some(declared) = header_text(&parts.headers, header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let out_of_order = || {
        ApiError::new(
            ErrorCode::BlobUploadInvalid,
            format!("Content-Range {declared} does not start at the upload's offset {size}"),
        )
        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
        .with_header(header::RANGE, &upload_range(size))
        .with_header(DOCKER_UPLOAD_UUID, id)
    };
    let (start, end) = parse_content_range(&declared).ok_or_else(out_of_order)?;
    if start != size {
        return Err(out_of_order());
    }
    let length = end - start + 1;
    if content_length(parts).is_some_and(|content_length| content_length != length) {
        return Err(out_of_order());
    }
    Ok(Some(length))
}

fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

// ---- tags and referrers ----

pub(crate) async fn tags(
    state: &AppState,
    repo: RepoPath,
    n: Option<usize>,
    last: Option<String>,
) -> Result<Response, ApiError> {
    let served = state.source.tags(&repo).await?;
    let (tags, next) = page(served.content, n, last.as_deref(), &repo.url("tags/list"));
    let body = serde_json::json!({ "name": repo.path_name, "tags": tags });
    let mut response = json_page(&body, next);
    apply_meta(response.headers_mut(), &served.meta);
    Ok(response)
}

/// One page of the sorted `items`: those after `last`, at most `n`, and the `Link` header
/// of the next page (on `url`) when more are left.
fn page(
    items: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
    url: &str,
) -> (Vec<String>, Option<String>) {
    let mut items: Vec<String> = items
        .into_iter()
        .filter(|item| last.is_none_or(|last| item.as_str() > last))
        .collect();
    let mut next = None;
    if let Some(n) = n
        && items.len() > n
    {
        items.truncate(n);
        if let Some(last) = items.last() {
            let separator = if url.contains('?') { '&' } else { '?' };
            next = Some(format!("<{url}{separator}n={n}&last={last}>; rel=\"next\""));
        }
    }
    (items, next)
}

/// `GET /v2/_catalog`: the repositories holding a manifest, by the names a client pulls
/// them with (the local namespace's without a prefix, others under their host's path
/// component), sorted and paginated as tag lists are.
pub(crate) async fn catalog(
    state: &AppState,
    n: Option<usize>,
    last: Option<String>,
) -> Result<Response, ApiError> {
    let local = RepoPath {
        namespace: None,
        repository: String::new(),
        path_name: String::new(),
    };
    let local_prefix = format!("{}/", state.names.host(&local));
    let mut names: Vec<String> = state
        .local
        .backend()
        .repositories()
        .await?
        .into_iter()
        .map(|name| match name.strip_prefix(&local_prefix) {
            Some(local) => local.to_owned(),
            None => match name.split_once('/') {
                Some((host, rest)) => format!("{}/{rest}", host_path_component(host)),
                None => name,
            },
        })
        .collect();
    names.sort();
    names.dedup();
    let (repositories, next) = page(names, n, last.as_deref(), "/v2/_catalog");
    let body = serde_json::json!({ "repositories": repositories });
    Ok(json_page(&body, next))
}

/// 200 with one page of a JSON list, and the `Link` to the next page when there is one.
fn json_page(body: &serde_json::Value, next: Option<String>) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(next) = next {
        set(headers, header::LINK, &next);
    }
    response
}

pub(crate) async fn referrers(
    state: &AppState,
    repo: RepoPath,
    digest: Digest,
    artifact_type: Option<String>,
) -> Result<Response, ApiError> {
    let served = state.source.referrers(&repo, &digest).await?;
    let manifests: Vec<Descriptor> = served
        .content
        .into_iter()
        .filter(|descriptor| {
            artifact_type
                .as_ref()
                .is_none_or(|wanted| descriptor.artifact_type.as_ref() == Some(wanted))
        })
        .collect();
    let body = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": manifests,
    });
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media_type::OCI_INDEX),
    );
    if artifact_type.is_some() {
        headers.insert(
            OCI_FILTERS_APPLIED,
            HeaderValue::from_static("artifactType"),
        );
    }
    apply_meta(headers, &served.meta);
    Ok(response)
}
