//! The authentication flow: the credential for a registry, the `Authorization` header a
//! challenge asks for (basic, or a bearer token fetched from the realm and cached).

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, Url};
use sealer_fs_abstraction::{ErrorChain, error_chain};

use crate::auth::{
    AuthError, Challenge, Token, TokenKey, realm_downgrades_credentials, realm_may_see_credentials,
};
use crate::credentials::Credential;
use crate::redact::redact_url;
use crate::retry::{is_retryable_error, is_retryable_status};

use super::{
    ClientError, MAX_ERROR_BODY, RegistryClient, Request, api_host, error_message, host_of,
    read_limited,
};

/// The `Authorization` value used for a request, and the cached token it came from.
pub(super) struct Authorization {
    pub(super) value: String,
    pub(super) token: Option<(TokenKey, String)>,
}

impl RegistryClient {
    pub(super) async fn credential_for(
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
            .map_err(|error| {
                ClientError::Runtime(format!("credential lookup: {}", ErrorChain(&error)))
            })?
            .map_err(Into::into)
    }

    /// The `Authorization` for `request`, from the registry's last challenge: basic
    /// credentials, or a (cached) bearer token for the request's scope.
    pub(super) async fn authorization(
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

    pub(super) fn realm_url(&self, realm: &str) -> Result<Url, AuthError> {
        let url = Url::parse(realm).map_err(|error| AuthError::Realm {
            realm: redact_url(realm),
            reason: error_chain(&error),
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
    pub(super) async fn fetch_token(
        &self,
        realm: &Url,
        service: Option<&str>,
        scopes: &[String],
        credential: Option<&Credential>,
    ) -> Result<Token, ClientError> {
        self.check_address(&Method::GET, realm)?;
        let realm_text = redact_url(realm.as_str());
        let policy = &self.inner.options.retries;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let builder = match credential {
                Some(Credential::IdentityToken(refresh)) => {
                    let mut form = Url::parse("form:x").map_err(|error| ClientError::Url {
                        url: realm_text.clone(),
                        reason: error_chain(&error),
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
}
