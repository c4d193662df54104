//! `upstream_policy:`: upstreams admitted by host pattern instead of listed one by one. A
//! request whose namespace (`?ns=` or a path prefix) is an admitted host gets that host as
//! an upstream on the fly ([`crate::PullThroughSource`] builds it from a synthesised
//! [`UpstreamConfig`], so it caches, herds, goes stale and counts exactly as a configured
//! one): HTTPS with verified TLS, credentials from docker's `config.json` when enabled, and
//! connections only to public addresses unless `allow_ranges` admits a range
//! ([`sealer_registry_client::AddressPolicy`]).
//!
//! Without the section nothing is admitted (never an open proxy by accident); configured
//! upstreams keep their own settings and win over the policy.

use std::fmt;
use std::path::PathBuf;

use sealer_fs_abstraction::ErrorChain;
use sealer_registry_client::{AddressPolicy, AddressRange, api_host};
use serde::Deserialize;

use crate::config::{TagTtl, UpstreamConfig, UpstreamUrl};
use crate::route::{self, Namespace, NamespaceVia, canonical_name, split_host_port};

/// A pattern of registry hosts: `quay.io` (that host, default port), `*.gcr.io` (any
/// subdomain of `gcr.io`, not `gcr.io` itself), `registry.lan:*` or `127.0.0.1:*` (that
/// host with any port or none), `registry.lan:5000` (that port), `*` (every host and port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostPart,
    port: PortPart,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPart {
    Any,
    /// `*.suffix`: the suffix, with its leading dot.
    Subdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPart {
    /// Written without a port: the scheme's default (the host without a port).
    Default,
    /// `:*`: any port, or none.
    Any,
    /// `:port`, canonical (no leading zero).
    Exact(String),
}

impl std::str::FromStr for HostPattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| {
            format!(
                "upstream_policy.admit: {text:?} {reason} (expected e.g. quay.io, *.gcr.io, \
                 registry.lan:*, or *)"
            )
        };
        let trimmed = text.trim();
        if trimmed == "*" {
            return Ok(Self {
                host: HostPart::Any,
                port: PortPart::Any,
                text: trimmed.to_owned(),
            });
        }
        let (wildcard, pattern) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        // More colons than a port's: no host, which the checks below refuse.
        let (name, port) = split_host_port(pattern).unwrap_or((pattern, None));
        if name.contains('*') {
            return Err(invalid(
                "has a `*` other than a leading `*.` or a port `:*`",
            ));
        }
        let not_a_host = || invalid("is not a registry host pattern");
        let (port, followed_by) = match port {
            None => (PortPart::Default, None),
            // The name is spelled as before a port (`index.docker.io:*` names
            // `index.docker.io`, not Docker Hub's `docker.io`); any port spells it alike.
            Some("*") => (PortPart::Any, Some(1)),
            Some(port) => {
                let port = route::canonical_port(port).ok_or_else(not_a_host)?;
                (PortPart::Exact(port.to_string()), Some(port))
            }
        };
        let canonical_name = canonical_name(name, followed_by).ok_or_else(not_a_host)?;
        let host = if wildcard {
            if !canonical_name.contains('.') {
                return Err(invalid("names no domain after `*.`"));
            }
            HostPart::Subdomain(format!(".{canonical_name}"))
        } else {
            HostPart::Exact(canonical_name)
        };
        Ok(Self {
            host,
            port,
            text: trimmed.to_owned(),
        })
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl HostPattern {
    /// Whether the canonical host `host` (as [`normalise_host`](route::normalise_host) writes
    /// it) matches.
    pub fn matches(&self, host: &str) -> bool {
        let (name, port) = split_host_port(host).unwrap_or((host, None));
        let port_matches = match &self.port {
            PortPart::Any => true,
            PortPart::Default => port.is_none(),
            PortPart::Exact(wanted) => port == Some(wanted.as_str()),
        };
        port_matches
            && match &self.host {
                HostPart::Any => true,
                HostPart::Exact(wanted) => name == wanted,
                HostPart::Subdomain(suffix) => {
                    name.len() > suffix.len() && name.ends_with(suffix.as_str())
                }
            }
    }
}

/// An address range in the configuration (`127.0.0.0/8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigRange(pub AddressRange);

impl<'de> Deserialize<'de> for ConfigRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map(Self)
            .map_err(|error| {
                serde::de::Error::custom(format!(
                    "upstream_policy.allow_ranges: {}",
                    ErrorChain(&error)
                ))
            })
    }
}

/// The `upstream_policy:` section; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPolicyConfig {
    /// Host patterns of the registries requests may name as upstream.
    #[serde(default)]
    pub admit: Vec<HostPattern>,
    /// Ranges an admitted host may resolve (or redirect) to although its addresses are
    /// loopback, private, link-local, shared or metadata addresses.
    #[serde(default)]
    pub allow_ranges: Vec<ConfigRange>,
    /// How long a cached tag of an admitted upstream is trusted (as an upstream's).
    #[serde(default)]
    pub tag_ttl: TagTtl,
    /// Credentials from docker's `config.json` and its credential helpers.
    #[serde(default = "default_true")]
    pub use_docker_config: bool,
    /// An extra CA bundle (PEM) trusted besides the system's (TLS is always verified).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Bound on the upstreams created by the policy; a namespace beyond it is answered
    /// from the store only.
    #[serde(default = "default_max_upstreams")]
    pub max_upstreams: usize,
}

fn default_true() -> bool {
    true
}

fn default_max_upstreams() -> usize {
    64
}

impl UpstreamPolicyConfig {
    /// Whether a request may name the canonical host `host` as its upstream.
    pub fn admits(&self, host: &str) -> bool {
        self.admit.iter().any(|pattern| pattern.matches(host))
    }

    /// Whether a request's `namespace` is a host this policy admits: named as a host (not
    /// an alias) and not the server's own `local_namespace`.
    pub fn admits_namespace(&self, namespace: &Namespace, local_namespace: &str) -> bool {
        namespace.via != NamespaceVia::PathAlias
            && namespace.name != local_namespace
            && self.admits(&namespace.name)
    }

    /// The addresses connections to admitted upstreams may go to.
    pub fn address_policy(&self) -> AddressPolicy {
        AddressPolicy::public_and(self.allow_ranges.iter().map(|range| range.0).collect())
    }

    /// The configuration an admitted `host` (canonical) gets: HTTPS to its API host (Docker
    /// Hub's for `docker.io`), named after the host (its metrics label).
    pub(crate) fn upstream_for(&self, host: &str) -> UpstreamConfig {
        UpstreamConfig {
            name: host.to_owned(),
            url: UpstreamUrl {
                scheme: "https".to_owned(),
                host: api_host(host).to_owned(),
            },
            credentials: None,
            use_docker_config: self.use_docker_config,
            insecure: false,
            ca_file: self.ca_file.clone(),
            tag_ttl: self.tag_ttl,
        }
    }

    /// Checks what one field alone cannot: returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_upstreams == 0 {
            return Err((
                "max_upstreams",
                "upstream_policy.max_upstreams must be more than 0".to_owned(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> HostPattern {
        text.parse().unwrap()
    }

    #[test]
    fn patterns_match_hosts_ports_and_subdomains() {
        let quay = pattern("quay.io");
        assert!(quay.matches("quay.io"));
        assert!(!quay.matches("quay.io:8443"));
        assert!(!quay.matches("evil-quay.io"));
        assert!(!quay.matches("a.quay.io"));
        let gcr = pattern("*.gcr.io");
        assert!(gcr.matches("eu.gcr.io"));
        assert!(gcr.matches("a.b.gcr.io"));
        assert!(!gcr.matches("gcr.io"));
        assert!(!gcr.matches("evilgcr.io"));
        assert!(!gcr.matches("eu.gcr.io:5000"));
        let loopback = pattern("127.0.0.1:*");
        assert!(loopback.matches("127.0.0.1:5000"));
        // `:*` is any port, the default one included.
        assert!(loopback.matches("127.0.0.1"));
        assert!(!loopback.matches("127.0.0.2:5000"));
        let exact = pattern("registry.lan:5000");
        assert!(exact.matches("registry.lan:5000"));
        assert!(!exact.matches("registry.lan:5001"));
        let upper = pattern("QUAY.IO.");
        assert!(upper.matches("quay.io"));
        // Docker Hub's API hosts are docker.io, as namespaces are.
        assert!(pattern("index.docker.io").matches("docker.io"));
        let v6 = pattern("[::1]:*");
        assert!(v6.matches("[::1]:5000"));
        assert!(!v6.matches("[::2]:5000"));
        let all = pattern("*");
        assert!(all.matches("anything.example:1234"));
        assert!(all.matches("docker.io"));
    }

    #[test]
    fn malformed_patterns_are_refused_with_the_expected_form() {
        for bad in [
            "",
            "*.io*",
            "a.*.io",
            "quay.io:0",
            "quay.io:x",
            "*.",
            "*.localhost",
            "a b",
        ] {
            let error = bad.parse::<HostPattern>().unwrap_err();
            assert!(error.contains("expected e.g."), "{bad}: {error}");
        }
    }

    #[test]
    fn the_section_is_read_from_a_server_configuration_with_located_errors() {
        use crate::config::ServerConfig;
        let parse = |text: &str| ServerConfig::parse(text, std::path::Path::new("r.yaml"));
        let config = parse("upstream_policy:\n  admit: [quay.io]\n").unwrap();
        assert!(config.upstream_policy.unwrap().admits("quay.io"));
        assert!(
            parse("listen: 127.0.0.1:5000\n")
                .unwrap()
                .upstream_policy
                .is_none()
        );
        let error = parse("upstream_policy:\n  admit: [quay.io]\n  max_upstreams: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("r.yaml:3:") && error.contains("max_upstreams"),
            "{error}"
        );
        let error = parse("upstream_policy:\n  admit: [\"a.*.io\"]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("expected e.g."), "{error}");
        let error = parse("upstream_policy:\n  allow: []\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("allow"), "{error}");
    }

    #[test]
    fn an_admitted_host_gets_https_and_the_policy_settings() {
        let config: UpstreamPolicyConfig = serde_saphyr::from_str(
            "admit: [\"docker.io\", \"*.example.com\"]\nallow_ranges: [10.0.0.0/8]\n\
             tag_ttl: 5m\nca_file: ca.pem\n",
        )
        .unwrap();
        assert!(config.admits("docker.io"));
        assert!(config.admits("r.example.com"));
        assert!(!config.admits("example.com"));
        assert!(config.use_docker_config);
        assert_eq!(config.max_upstreams, 64);
        let hub = config.upstream_for("docker.io");
        assert_eq!(hub.url.to_string(), "https://registry-1.docker.io");
        assert_eq!(hub.name, "docker.io");
        assert_eq!(
            hub.tag_ttl,
            TagTtl::After(std::time::Duration::from_secs(300))
        );
        assert_eq!(hub.ca_file, Some(PathBuf::from("ca.pem")));
        let policy = config.address_policy();
        assert!(
            policy
                .check("r.example.com", "10.1.1.1".parse().unwrap())
                .is_ok()
        );
        assert!(
            policy
                .check("r.example.com", "192.168.1.1".parse().unwrap())
                .is_err()
        );
        let error = serde_saphyr::from_str::<UpstreamPolicyConfig>("allow_ranges: [10.0.0.1/8]\n")
            .unwrap_err();
        assert!(error.to_string().contains("allow_ranges"), "{error}");
    }
}
