//! Single distribution API reads for callers that serve what they fetch themselves (a
//! pull-through cache): a manifest's `HEAD` and `GET`, a blob's `HEAD`, and a blob download
//! ([`BlobDownload`]) that resumes with `Range` after a broken connection. Authentication
//! (tokens cached per scope), retries and the plain-HTTP policy are the client's, as for
//! pull and push.

use bytes::{Buf, Bytes};
use futures_util::Stream;
use reqwest::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LINK, RANGE,
};
use reqwest::{Method, Response, StatusCode, Url};
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::Digest;
use sealer_image_store::model::media_type;

use crate::client::{
    ClientError, DOCKER_CONTENT_DIGEST, FetchedManifest, MANIFEST_ACCEPT, RegistryClient, Request,
    Scope, read_limited, status_error,
};

/// What a `HEAD` of a manifest told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when sent (and valid).
    pub digest: Option<Digest>,
    /// `Content-Type`, when it is a manifest or index type.
    pub media_type: Option<String>,
    /// `Content-Length`, when sent.
    pub size: Option<u64>,
}

/// `Content-Length` as sent (HEAD answers have no body whose length could be measured).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
}

impl RegistryClient {
    /// `HEAD /v2/REPOSITORY/manifests/REFERENCE` (a tag or digest) with the manifest types
    /// sealer accepts ([`MANIFEST_ACCEPT`]): what a tag points to, without its bytes. An
    /// absent manifest is a [`ClientError::Status`] 404.
    pub async fn head_manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<ManifestHead, ClientError> {
        let scope = Scope::pull(repository);
        let url = self
            .api_url(registry, repository, &format!("manifests/{reference}"))
            .await?;
        let request =
            Request::new(Method::HEAD, registry, url, &scope).header(ACCEPT, MANIFEST_ACCEPT)?;
        let response = self.send_ok(request).await?;
        let headers = response.headers();
        Ok(ManifestHead {
            digest: headers
                .get(DOCKER_CONTENT_DIGEST)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse().ok()),
            media_type: headers
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(|value| value.split(';').next().unwrap_or(value).trim().to_owned())
                .filter(|value| media_type::is_index(value) || media_type::is_manifest(value)),
            size: declared_length(headers),
        })
    }

    /// `GET /v2/REPOSITORY/manifests/REFERENCE`: the exact bytes (at most 4 MiB), verified
    /// against `expected` when given, else against `Docker-Content-Digest` when sent.
    pub async fn get_manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<FetchedManifest, ClientError> {
        let scope = Scope::pull(repository);
        self.fetch_manifest(registry, repository, reference, expected, &scope)
            .await
    }

    /// `HEAD /v2/REPOSITORY/blobs/DIGEST`: the blob's size. An absent blob is a
    /// [`ClientError::Status`] 404.
    pub async fn head_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
    ) -> Result<u64, ClientError> {
        let scope = Scope::pull(repository);
        let url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        let response = self
            .send_ok(Request::new(Method::HEAD, registry, url.clone(), &scope))
            .await?;
        declared_length(response.headers()).ok_or_else(|| ClientError::Protocol {
            url: url.to_string(),
            reason: "the answer has no Content-Length".to_owned(),
        })
    }

    /// `GET /v2/REPOSITORY/tags/list`, following `Link: <…>; rel="next"` pages (at most
    /// [`MAX_TAG_PAGES`] of at most 4 MiB each): every tag, sorted. An unknown repository is a
    /// [`ClientError::Status`] 404.
    pub async fn list_tags(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Vec<String>, ClientError> {
        let scope = Scope::pull(repository);
        let mut url = self.api_url(registry, repository, "tags/list").await?;
        let mut tags = Vec::new();
        for _ in 0..MAX_TAG_PAGES {
            let response = self
                .send_ok(Request::new(Method::GET, registry, url.clone(), &scope))
                .await?;
            let next = next_page(response.headers(), &url);
            let body = read_limited(response, MAX_TAG_PAGE)
                .await
                .map_err(|source| ClientError::Transport {
                    request: format!("{} {url}", Method::GET),
                    source,
                })?
                .ok_or_else(|| ClientError::Protocol {
                    url: url.to_string(),
                    reason: format!("a tag list page larger than {MAX_TAG_PAGE} bytes"),
                })?;
            let page: TagPage =
                serde_json::from_slice(&body).map_err(|error| ClientError::Protocol {
                    url: url.to_string(),
                    reason: format!("not a tag list: {}", ErrorChain(&error)),
                })?;
            tags.extend(page.tags.unwrap_or_default());
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// Starts downloading a blob from byte `offset` (0: all of it): sends the `GET`
    /// (`Range: bytes=OFFSET-` when `offset > 0`) and returns once the answer's head has
    /// arrived, so [`BlobDownload::size`] is known. The bytes are not verified here: the
    /// caller hashes them.
    pub async fn get_blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<BlobDownload, ClientError> {
        let url = self
            .api_url(registry, repository, &format!("blobs/{digest}"))
            .await?;
        let mut download = BlobDownload {
            client: self.clone(),
            registry: registry.to_owned(),
            scope: Scope::pull(repository),
            url,
            digest: digest.clone(),
            size: None,
            offset,
            response: None,
            skip: 0,
            resumes: 0,
        };
        let response = download.open().await?;
        download.response = Some(response);
        Ok(download)
    }
}

/// The most pages [`RegistryClient::list_tags`] follows.
pub const MAX_TAG_PAGES: usize = 1000;

/// The largest tag list page read.
const MAX_TAG_PAGE: u64 = 4 << 20;

/// One page of a tag list.
#[derive(Debug, serde::Deserialize)]
struct TagPage {
    /// `null` for a repository without tags.
    tags: Option<Vec<String>>,
}

/// The next page of a paginated answer: its `Link: <URL>; rel="next"` (relative to `url`),
/// on the same host only.
fn next_page(headers: &HeaderMap, url: &Url) -> Option<Url> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
            let next = params
                .split(';')
                .any(|param| matches!(param.trim(), "rel=\"next\"" | "rel=next"));
            next.then(|| url.join(target).ok()).flatten()
        })
        .filter(|next| next.host_str() == url.host_str() && next.port() == url.port())
}

/// A blob being downloaded (see [`RegistryClient::get_blob`]): [`Self::chunk`] yields the
/// bytes in order. When the connection breaks or the body ends before the blob's size, the
/// download asks again with `Range: bytes=N-` (at most [`crate::ClientOptions::max_resumes`]
/// times, with backoff) and carries on where it was; a registry that answers a range with
/// the whole blob has the bytes already delivered skipped.
#[derive(Debug)]
pub struct BlobDownload {
    client: RegistryClient,
    registry: String,
    scope: Scope,
    url: Url,
    digest: Digest,
    /// The whole blob's size, once a response told it.
    size: Option<u64>,
    /// The position of the next byte delivered.
    offset: u64,
    response: Option<Response>,
    /// Bytes of the current response to drop (a `200` to a ranged request).
    skip: u64,
    resumes: u32,
}

impl BlobDownload {
    /// The whole blob's size, as the registry declared it (`None` when it sent no length:
    /// then the body's end is the blob's end).
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// The position of the next byte [`Self::chunk`] yields.
    pub fn position(&self) -> u64 {
        self.offset
    }

    /// How often the download resumed after a broken connection.
    pub fn resumes(&self) -> u32 {
        self.resumes
    }

    /// The blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The next bytes, `None` at the end of the blob. Errors are final (the resumes are
    /// used up, or the registry refused).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            if self.size.is_some_and(|size| self.offset >= size) {
                self.response = None;
                return Ok(None);
            }
            let response = match self.response.as_mut() {
                Some(response) => response,
                None => {
                    let response = self.open().await?;
                    self.response.insert(response)
                }
            };
            match response.chunk().await {
                Ok(Some(mut chunk)) => {
                    if self.skip > 0 {
                        let dropped = self.skip.min(chunk.len() as u64);
                        chunk.advance(dropped as usize);
                        self.skip -= dropped;
                    }
                    if let Some(size) = self.size {
                        let wanted = size - self.offset;
                        if chunk.len() as u64 > wanted {
                            chunk.truncate(wanted as usize);
                        }
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(None) => match self.size {
                    None => {
                        self.response = None;
                        return Ok(None);
                    }
                    Some(size) => {
                        let error = ClientError::Protocol {
                            url: self.url.to_string(),
                            reason: format!("the body ended after {} of {size} bytes", self.offset),
                        };
                        self.resume(error).await?;
                    }
                },
                Err(source) => {
                    let error = ClientError::Transport {
                        request: format!("{} {}", Method::GET, self.url),
                        source,
                    };
                    self.resume(error).await?;
                }
            }
        }
    }

    /// The download as a stream of chunks (ends after the first error).
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, ClientError>> + Send {
        futures_util::stream::unfold(Some(self), |download| async move {
            let mut download = download?;
            match download.chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(download))),
                Ok(None) => None,
                Err(error) => Some((Err(error), None)),
            }
        })
    }

    /// After a broken body: wait, then let the next [`Self::chunk`] reopen from the
    /// current offset; or fail when resumed too often.
    async fn resume(&mut self, error: ClientError) -> Result<(), ClientError> {
        self.response = None;
        let options = &self.client.inner.options;
        if self.resumes >= options.max_resumes {
            return Err(error);
        }
        self.resumes += 1;
        tracing::warn!(digest = %self.digest, offset = self.offset, error = %ErrorChain(&error), "blob download broke; resuming");
        tokio::time::sleep(options.retries.backoff(self.resumes)).await;
        Ok(())
    }

    /// Sends the `GET` from the current offset and checks the answer's range.
    async fn open(&mut self) -> Result<Response, ClientError> {
        let mut request = Request::new(Method::GET, &self.registry, self.url.clone(), &self.scope);
        if self.offset > 0 {
            request = request.header(RANGE, &format!("bytes={}-", self.offset))?;
        }
        let response = self.client.send(request).await?;
        let protocol = |reason: String| ClientError::Protocol {
            url: self.url.to_string(),
            reason,
        };
        match response.status() {
            StatusCode::OK => {
                let length = declared_length(response.headers());
                if let (Some(known), Some(length)) = (self.size, length)
                    && known != length
                {
                    return Err(protocol(format!(
                        "the blob's size changed from {known} to {length} bytes"
                    )));
                }
                self.size = self.size.or(length);
                self.skip = self.offset;
                if self.offset > 0 {
                    tracing::info!(digest = %self.digest, offset = self.offset, "the registry ignored Range; skipping what was delivered");
                }
                Ok(response)
            }
            StatusCode::PARTIAL_CONTENT if self.offset > 0 => {
                let total = check_resumed_range(response.headers(), self.offset, self.size)
                    .map_err(protocol)?;
                self.size = self.size.or(total);
                self.skip = 0;
                Ok(response)
            }
            _ => Err(status_error(Method::GET, response).await),
        }
    }
}

/// Checks a `206` answer to `Range: bytes=OFFSET-`: its `Content-Range` must start at
/// `offset` and agree with the blob's `size` when both are known. Returns the total it
/// states, or why the answer cannot continue the download.
fn check_resumed_range(
    headers: &reqwest::header::HeaderMap,
    offset: u64,
    size: Option<u64>,
) -> Result<Option<u64>, String> {
    let header = headers.get(CONTENT_RANGE);
    match header
        .and_then(|value| value.to_str().ok())
        .and_then(parse_content_range)
    {
        Some((start, total))
            if start == offset && (size.is_none() || total.is_none() || total == size) =>
        {
            Ok(total)
        }
        _ => Err(format!(
            "asked for bytes {offset}-, got Content-Range {header:?}"
        )),
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL), TOTAL `None` for `*`.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        total => Some(total.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_pages_follow_link_on_the_same_host() {
        let url = Url::parse("http://127.0.0.1:5000/v2/a/tags/list").unwrap();
        let mut headers = HeaderMap::new();
        assert_eq!(next_page(&headers, &url), None);
        headers.insert(
            LINK,
            "</v2/a/tags/list?last=b&n=2>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_page(&headers, &url).unwrap().as_str(),
            "http://127.0.0.1:5000/v2/a/tags/list?last=b&n=2"
        );
        headers.insert(
            LINK,
            "<http://elsewhere:5000/v2/a/tags/list?last=b>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(next_page(&headers, &url), None);
        headers.insert(
            LINK,
            "</v2/a/tags/list?last=b>; rel=\"prev\"".parse().unwrap(),
        );
        assert_eq!(next_page(&headers, &url), None);
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes */200"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
