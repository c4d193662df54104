//! Registry authentication: `WWW-Authenticate` challenges, the bearer-token response, which
//! token servers may see credentials, and the token cache.
//!
//! The flow ([`crate::RegistryClient`] drives it): a request without credentials gets `401`
//! with a challenge; for `Basic` the request is repeated with the user's credentials; for
//! `Bearer` a token is fetched from the challenge's `realm` (with `service` and the
//! operation's `scope`, and the user's credentials when known) and the request is repeated
//! with it. The challenge is remembered per registry, so later requests fetch (or reuse) a
//! token up front instead of collecting a `401` first.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::Url;
use sealer_fs_abstraction::error_chain;
use serde::Deserialize;

/// Why authentication failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A `WWW-Authenticate` header that cannot be parsed.
    #[error("invalid WWW-Authenticate header {header:?}: {reason}")]
    InvalidChallenge {
        /// The header.
        header: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The token server's realm is not a URL sealer will call.
    #[error("token realm {realm:?} refused: {reason}")]
    Realm {
        /// The realm.
        realm: String,
        /// Why.
        reason: String,
    },
    /// A plain-HTTP token realm of an HTTPS registry: credentials would cross the network
    /// unencrypted.
    #[error(
        "the token realm {realm} would receive credentials in cleartext; the registry is https"
    )]
    CleartextRealm {
        /// The realm.
        realm: String,
    },
    /// The token request failed on the network.
    #[error("token request to {realm} failed")]
    TokenRequest {
        /// The realm.
        realm: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The token server refused (wrong credentials, no access).
    #[error("token server {realm} answered {status}: {message}")]
    TokenDenied {
        /// The realm.
        realm: String,
        /// The HTTP status.
        status: u16,
        /// The server's message, shortened.
        message: String,
    },
    /// The token server's answer is not a token.
    #[error("token server {realm} sent an invalid answer: {reason}")]
    TokenResponse {
        /// The realm.
        realm: String,
        /// What is wrong.
        reason: String,
    },
    /// The registry wants credentials and none are known.
    #[error(
        "{registry} requires authentication and no credentials are known for it (run `sealer login {registry}`)"
    )]
    NoCredentials {
        /// The registry.
        registry: String,
    },
    /// The registry refused the credentials (or the token) sealer sent.
    #[error("{registry} refused the credentials: {message}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// The registry's message.
        message: String,
    },
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic authentication.
    Basic {
        /// The realm, for messages.
        realm: Option<String>,
    },
    /// The registry token flow.
    Bearer {
        /// The token server URL.
        realm: String,
        /// The `service` parameter to pass on.
        service: Option<String>,
        /// The scope this request needed, as the registry states it.
        scope: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of `header` that sealer can answer (`Bearer` preferred).
    pub fn parse_supported(header: &str) -> Result<Option<Self>, AuthError> {
        let challenges = parse_challenges(header)?;
        let bearer = challenges
            .iter()
            .find(|challenge| matches!(challenge, Self::Bearer { .. }));
        Ok(bearer.or_else(|| challenges.first()).cloned())
    }
}

/// Parses a `WWW-Authenticate` header: one or more `scheme param=value, …` challenges
/// whose values may be quoted strings holding commas and `\`-escapes. Schemes other than
/// Basic and Bearer are skipped.
pub fn parse_challenges(header: &str) -> Result<Vec<Challenge>, AuthError> {
    let invalid = |reason| AuthError::InvalidChallenge {
        header: header.to_owned(),
        reason,
    };
    let mut parser = Parser {
        input: header.as_bytes(),
        at: 0,
    };
    let mut challenges = Vec::new();
    loop {
        parser.skip(|b| b == b' ' || b == b'\t' || b == b',');
        if parser.at_end() {
            break;
        }
        let scheme = parser.token();
        if scheme.is_empty() {
            return Err(invalid("expected an authentication scheme"));
        }
        let mut params = HashMap::new();
        loop {
            parser.skip(|b| b == b' ' || b == b'\t');
            let start = parser.at;
            let name = parser.token();
            parser.skip(|b| b == b' ' || b == b'\t');
            if name.is_empty() || !parser.eat(b'=') {
                // The start of the next challenge (or a token68, which we do not use).
                parser.at = start;
                break;
            }
            parser.skip(|b| b == b' ' || b == b'\t');
            let value = if parser.peek() == Some(b'"') {
                parser
                    .quoted()
                    .ok_or_else(|| invalid("unterminated quoted value"))?
            } else {
                let value = parser.token();
                // token68 padding (`Negotiate abc==`).
                parser.skip(|b| b == b'=');
                value
            };
            params.insert(name.to_ascii_lowercase(), value);
            parser.skip(|b| b == b' ' || b == b'\t');
            if !parser.eat(b',') {
                break;
            }
        }
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => challenges.push(Challenge::Basic {
                realm: params.remove("realm"),
            }),
            "bearer" => {
                let realm = params
                    .remove("realm")
                    .ok_or_else(|| invalid("a Bearer challenge needs a realm"))?;
                challenges.push(Challenge::Bearer {
                    realm,
                    service: params.remove("service"),
                    scope: params.remove("scope"),
                });
            }
            other => tracing::debug!(scheme = other, "ignoring an unsupported auth scheme"),
        }
    }
    Ok(challenges)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip(&mut self, what: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&what) {
            self.at += 1;
        }
    }

    /// An RFC 9110 token (plus `/`, which token68 values and unquoted URLs contain).
    fn token(&mut self) -> String {
        let start = self.at;
        self.skip(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/:".contains(&b) || b >= 0x80);
        String::from_utf8_lossy(&self.input[start..self.at]).into_owned()
    }

    fn quoted(&mut self) -> Option<String> {
        self.at += 1;
        let mut value = Vec::new();
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => return Some(String::from_utf8_lossy(&value).into_owned()),
                b'\\' => {
                    value.push(self.peek()?);
                    self.at += 1;
                }
                other => value.push(other),
            }
        }
    }
}

/// Whether a token server at `realm` may receive the credentials of `registry_host` (a host
/// name or IP address, without port): the realm's host must be the registry's host, or a
/// subdomain of the registry's host or of its parent domain (`registry-1.docker.io` →
/// `auth.docker.io`). A parent that is only a public suffix (`io`, `co.uk`) does not count;
/// IP addresses must match exactly.
pub fn realm_may_see_credentials(registry_host: &str, realm: &Url) -> bool {
    let Some(realm_host) = realm.host_str() else {
        return false;
    };
    let realm_host = realm_host.trim_end_matches('.').to_ascii_lowercase();
    let registry_host = registry_host
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let realm_host = realm_host.trim_start_matches('[').trim_end_matches(']');
    if realm_host == registry_host {
        return true;
    }
    if registry_host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let within = |domain: &str| realm_host.ends_with(&format!(".{domain}"));
    if within(&registry_host) {
        return true;
    }
    match registry_host.split_once('.') {
        Some((_, parent)) if is_registrable(parent) => within(parent),
        _ => false,
    }
}

/// Whether sending credentials to `realm` would downgrade them to cleartext: the registry
/// (`registry_url`, any URL of its API) is HTTPS and the realm is not. A plain-HTTP
/// registry (loopback, `--insecure`) may use a plain-HTTP realm: its own requests carry
/// the credentials in cleartext anyway.
pub fn realm_downgrades_credentials(registry_url: &Url, realm: &Url) -> bool {
    registry_url.scheme() == "https" && realm.scheme() != "https"
}

/// Whether `domain` is more than a public suffix (a small built-in list of the common
/// two-label suffixes; sealer carries no public suffix list).
fn is_registrable(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    match labels.as_slice() {
        [] | [_] => false,
        [second, _top] => !matches!(
            *second,
            "co" | "com" | "net" | "org" | "gov" | "edu" | "ac" | "or" | "ne" | "go"
        ),
        _ => true,
    }
}

/// The token server's answer.
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Lifetime of a token whose answer has no `expires_in` (the distribution spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);

/// A bearer token and when to stop using it.
#[derive(Debug, Clone)]
pub struct Token {
    /// The token.
    pub value: String,
    /// Shortly before it expires: refreshed from then on.
    pub refresh_at: Instant,
}

impl Token {
    /// A token valid for `lifetime` from now; it is used until shortly before that (a tenth
    /// of the lifetime early, at most 30 s).
    pub fn new(value: String, lifetime: Duration) -> Self {
        let margin = (lifetime / 10).min(Duration::from_secs(30));
        Self {
            value,
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        }
    }

    /// Parses the token server's JSON answer: `token` or `access_token`, and `expires_in`
    /// (seconds, default 60).
    pub fn from_answer(realm: &str, body: &[u8]) -> Result<Self, AuthError> {
        let invalid = |reason: String| AuthError::TokenResponse {
            realm: realm.to_owned(),
            reason,
        };
        let answer: TokenAnswer =
            serde_json::from_slice(body).map_err(|error| invalid(error_chain(&error)))?;
        let value = answer
            .token
            .filter(|token| !token.is_empty())
            .or(answer.access_token.filter(|token| !token.is_empty()))
            .ok_or_else(|| invalid("it holds neither `token` nor `access_token`".to_owned()))?;
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Ok(Self::new(value, lifetime))
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// What a token is cached under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    /// The token server.
    pub realm: String,
    /// The `service` parameter.
    pub service: String,
    /// The scope(s), space separated.
    pub scope: String,
    /// Who asked: an identity of the credentials (never the secret itself), or empty for
    /// anonymous tokens.
    pub identity: String,
}

type Slot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Bearer tokens per [`TokenKey`], reused until shortly before they expire. Concurrent
/// requests for one key wait for a single fetch (each key has its own async lock).
#[derive(Debug, Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<TokenKey, Slot>>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, key: &TokenKey) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(key.clone()).or_default().clone()
    }

    /// The cached token for `key`, or the one `fetch` returns (then cached). While one
    /// caller fetches, the others with the same key wait and then use its token.
    pub async fn get_or_fetch<E, F, Fut>(&self, key: &TokenKey, fetch: F) -> Result<String, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Token, E>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(token) = cached.as_ref().filter(|token| token.is_fresh()) {
            return Ok(token.value.clone());
        }
        let token = fetch().await?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// Forgets the token for `key` if it is still `value` (the registry refused it).
    pub async fn invalidate(&self, key: &TokenKey, value: &str) {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if cached.as_ref().is_some_and(|token| token.value == value) {
            *cached = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn parses_bearer_with_quoted_commas() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#;
        assert_eq!(
            parse_challenges(header).unwrap(),
            vec![Challenge::Bearer {
                realm: "https://auth.docker.io/token".to_owned(),
                service: Some("registry.docker.io".to_owned()),
                scope: Some("repository:library/nginx:pull,push".to_owned()),
            }]
        );
    }

    #[test]
    fn parses_several_challenges_escapes_and_case() {
        let header =
            r#"Basic realm="Registry \"Realm\"", bearer Realm=https://h/token , Service="s""#;
        let parsed = parse_challenges(header).unwrap();
        assert_eq!(
            parsed,
            vec![
                Challenge::Basic {
                    realm: Some("Registry \"Realm\"".to_owned())
                },
                Challenge::Bearer {
                    realm: "https://h/token".to_owned(),
                    service: Some("s".to_owned()),
                    scope: None,
                },
            ]
        );
        assert!(matches!(
            Challenge::parse_supported(header).unwrap(),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(
            parse_challenges(r#"Basic realm="basic-realm""#).unwrap(),
            vec![Challenge::Basic {
                realm: Some("basic-realm".to_owned())
            }]
        );
        assert_eq!(
            parse_challenges("Negotiate abc==, Basic").unwrap(),
            vec![Challenge::Basic { realm: None }]
        );
    }

    #[test]
    fn rejects_broken_challenges() {
        assert!(parse_challenges(r#"Bearer realm="unterminated"#).is_err());
        assert!(parse_challenges(r#"Bearer service="no realm""#).is_err());
        assert!(parse_challenges("").unwrap().is_empty());
    }

    #[test]
    fn realms_are_bound_to_the_registry_domain() {
        let url = |text: &str| Url::parse(text).unwrap();
        let allowed = [
            ("registry-1.docker.io", "https://auth.docker.io/token"),
            ("docker.io", "https://auth.docker.io/token"),
            ("quay.io", "https://quay.io/v2/auth"),
            ("registry.example.com", "https://auth.example.com/t"),
            ("127.0.0.1", "http://127.0.0.1:5001/token"),
            ("ghcr.io", "https://ghcr.io/token"),
        ];
        for (registry, realm) in allowed {
            assert!(
                realm_may_see_credentials(registry, &url(realm)),
                "{registry} {realm}"
            );
        }
        let refused = [
            ("registry-1.docker.io", "https://evil.io/token"),
            ("quay.io", "https://evil.io/token"),
            ("registry.example.co.uk", "https://evil.co.uk/t"),
            ("registry.example.com", "https://example.com.evil.net/t"),
            ("127.0.0.1", "http://127.0.0.2/token"),
            ("a.example.com", "https://notexample.com/t"),
        ];
        for (registry, realm) in refused {
            assert!(
                !realm_may_see_credentials(registry, &url(realm)),
                "{registry} {realm}"
            );
        }
    }

    #[test]
    fn an_https_registry_keeps_credentials_off_plain_http_realms() {
        let url = |text: &str| Url::parse(text).unwrap();
        let https = url("https://127.0.0.1:5000/v2/");
        let http = url("http://127.0.0.1:5000/v2/");
        assert!(realm_downgrades_credentials(
            &https,
            &url("http://127.0.0.1:5001/token")
        ));
        assert!(!realm_downgrades_credentials(
            &https,
            &url("https://127.0.0.1:5001/token")
        ));
        assert!(!realm_downgrades_credentials(
            &http,
            &url("http://127.0.0.1:5001/token")
        ));
        let message = AuthError::CleartextRealm {
            realm: "http://127.0.0.1:5001/token".to_owned(),
        }
        .to_string();
        assert!(
            message.contains("cleartext; the registry is https"),
            "{message}"
        );
    }

    #[test]
    fn token_answers() {
        let token = Token::from_answer("r", br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!(token.value, "abc");
        assert!(token.is_fresh());
        let token = Token::from_answer("r", br#"{"access_token":"x"}"#).unwrap();
        assert_eq!(token.value, "x");
        assert!(Token::from_answer("r", br#"{"token":""}"#).is_err());
        assert!(Token::from_answer("r", b"<html>").is_err());
        let expired = Token::new("old".to_owned(), Duration::ZERO);
        assert!(!expired.is_fresh());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_fetch_per_key_under_concurrency() {
        let cache = Arc::new(TokenCache::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let key = TokenKey {
            realm: "https://auth/token".to_owned(),
            service: "svc".to_owned(),
            scope: "repository:a:pull".to_owned(),
            identity: String::new(),
        };
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (cache, fetches, key) = (cache.clone(), fetches.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(&key, || async {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, AuthError>(Token::new("t".to_owned(), Duration::from_secs(60)))
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), "t");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        // Another scope is another token; a refused token is fetched again.
        let other = TokenKey {
            scope: "repository:b:pull".to_owned(),
            ..key.clone()
        };
        let fetch = || async {
            fetches.fetch_add(1, Ordering::SeqCst);
            Ok::<_, AuthError>(Token::new("u".to_owned(), Duration::from_secs(60)))
        };
        assert_eq!(cache.get_or_fetch(&other, fetch).await.unwrap(), "u");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        cache.invalidate(&key, "t").await;
        assert_eq!(cache.get_or_fetch(&key, fetch).await.unwrap(), "u");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);
        // A failed fetch caches nothing.
        let failing = || async {
            Err::<Token, _>(AuthError::NoCredentials {
                registry: "r".to_owned(),
            })
        };
        let third = TokenKey {
            scope: "c".to_owned(),
            ..key
        };
        assert!(cache.get_or_fetch(&third, failing).await.is_err());
        assert_eq!(cache.get_or_fetch(&third, fetch).await.unwrap(), "u");
    }
}
