//! The request/retry loop: [`Request`], sent with authentication, retried on busy or
//! failed answers, and the response helpers (bounded reads, error messages).

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};
use sealer_fs_abstraction::ErrorChain;
use sealer_image_store::{Digest, Hasher};

use crate::auth::{AuthError, Challenge};
use crate::credentials::Credential;
use crate::retry::{is_retryable_error, is_retryable_status};

use super::{ClientError, MAX_ERROR_BODY, RegistryClient, address_refused};

/// The access a request needs, as token scopes (`repository:NAME:pull,push`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Scope {
    pub(super) scopes: Vec<String>,
    /// The repository credentials are looked up for.
    pub(super) repository: Option<String>,
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

impl RegistryClient {
    /// Sends `request` with authentication and retries: a `401` is answered once per call
    /// (credentials or a fresh token), transient failures are retried per the policy when
    /// the body can be repeated. Returns any response that is not one of those.
    pub(crate) async fn send(&self, mut request: Request<'_>) -> Result<Response, ClientError> {
        let policy = &self.inner.options.retries;
        let mut attempt = 0;
        let mut answered_challenge = false;
        self.check_address(&request.method, &request.url)?;
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
                    tracing::info!(method = %request.method, url = %request.url, error = %ErrorChain(&error), ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(source) => {
                    if let Some(refused) = crate::address_policy::refusal_in(&source) {
                        return Err(address_refused(
                            &request.method,
                            &request.url,
                            refused.clone(),
                        ));
                    }
                    let request = format!("{} {}", request.method.clone(), request.url.clone());
                    return Err(ClientError::Transport { request, source });
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
}
