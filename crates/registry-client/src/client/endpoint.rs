//! Where requests go: registry names normalised, each registry's base URL (plain HTTP only
//! for loopback or `--insecure` hosts), API URLs and redirect locations.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Response, Url};
use sealer_fs_abstraction::{ErrorChain, error_chain};

use crate::redact::redact_url;

use super::{ClientError, RegistryClient};

/// Which hosts may be spoken to over plain HTTP.
#[derive(Debug)]
pub(super) struct PlainHttpPolicy {
    pub(super) insecure: HashSet<String>,
}

impl PlainHttpPolicy {
    /// `authority` is `host` or `host:port`.
    pub(super) fn allows(&self, authority: &str) -> bool {
        let host = host_of(authority);
        is_loopback(host)
            || self.insecure.contains(&authority.to_ascii_lowercase())
            || self.insecure.contains(&host.to_ascii_lowercase())
    }

    pub(super) fn allows_url(&self, url: &Url) -> bool {
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
pub(super) fn base_url_of(base: &str, plain_http: &PlainHttpPolicy) -> Result<Url, ClientError> {
    let invalid = |reason: String| ClientError::Url {
        url: redact_url(base),
        reason,
    };
    let url = Url::parse(base).map_err(|error| invalid(error_chain(&error)))?;
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
pub(super) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

pub(super) fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host that serves the API of `registry` (Docker Hub's is not `docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
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

impl RegistryClient {
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
                reason: error_chain(&error),
            })
        };
        let https = parse("https")?;
        self.check_address(&reqwest::Method::GET, &https)?;
        let base = if self.inner.plain_http.allows(host) {
            let probe = self
                .inner
                .http
                .get(https.join("v2/").map_err(|error| ClientError::Url {
                    url: https.to_string(),
                    reason: error_chain(&error),
                })?)
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match probe {
                Ok(_) => https,
                Err(error) => {
                    tracing::debug!(registry, error = %ErrorChain(&error), "no HTTPS; using plain HTTP");
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
            reason: error_chain(&error),
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
            reason: format!("invalid Location {location:?}: {}", ErrorChain(&error)),
        })?;
        if next.scheme() != "https" && !self.inner.plain_http.allows_url(&next) {
            return Err(ClientError::Url {
                url: next.to_string(),
                reason: "refusing plain HTTP to a host not marked insecure".to_owned(),
            });
        }
        Ok(next)
    }
}
