//! [`ServerConfig`]: the configuration of `sealer registry serve`, read from YAML
//! (`.yaml`/`.yml`) or TOML (`.toml`). Unknown keys are errors; every error names the file
//! and, where it can, the line. Relative paths are relative to the configuration file.
//!
//! The upstream fields (`upstreams`, `upstream_policy`, `default_upstream`,
//! `upstream_timeout`, `upstream_fetch_timeout`, `upstream_probe_interval`, `offline`)
//! configure the pull-through cache ([`crate::PullThroughSource`]).

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealer_fs_abstraction::{RealFs, error_chain};
use serde::Deserialize;

use crate::bucket::BucketConfig;
use crate::cache::CacheConfig;
use crate::cluster::{ClusterConfig, RedirectConfig};
use crate::upstream_policy::UpstreamPolicyConfig;

mod values;
pub use values::{ByteSize, ConfigDuration, Host, TagTtl, UpstreamUrl};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file does not parse, or a value is invalid.
    #[error("{}{}: {message}", path.display(), line.map(|line| format!(":{line}")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
}

/// Whether clients may push and delete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Pulls only; every write is answered 403 `DENIED`.
    #[default]
    ReadOnly,
    /// Pulls, pushes and deletes.
    ReadWrite,
}

/// Bounds on pushes (`uploads:`), so that no client can take the upload sessions, the disk
/// or the open files of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadLimits {
    /// Upload sessions open at once, all clients together (each holds two open files).
    pub max_sessions: usize,
    /// Upload sessions open at once per client: per user when authenticated, else per
    /// client IP address.
    pub max_sessions_per_client: usize,
    /// The largest blob a client may push.
    pub max_blob_size: ByteSize,
    /// A session nobody used for this long is dropped and its file removed.
    pub idle_timeout: ConfigDuration,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1024,
            max_sessions_per_client: 64,
            max_blob_size: ByteSize(64 << 30),
            idle_timeout: ConfigDuration(Duration::from_secs(600)),
        }
    }
}

/// Connection handling (`server:`): timeouts that close connections of clients that send
/// too slowly or not at all, and a bound on connections at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    /// `None`: the open-file limit less 256 (for store files), at most 16384.
    pub max_connections: Option<usize>,
    /// A request head (request line and headers) must arrive within this; on a keep-alive
    /// connection it runs from the end of the previous response, so it also closes idle
    /// HTTP/1 connections.
    pub header_read_timeout: ConfigDuration,
    /// A connection with no request in progress and no bytes moving for this long is
    /// closed (HTTP/1 keep-alive and HTTP/2 alike).
    pub idle_timeout: ConfigDuration,
    /// A request body that delivers nothing for this long fails the request (its upload
    /// changes nothing).
    pub body_timeout: ConfigDuration,
    /// Bound on a TLS handshake.
    pub tls_handshake_timeout: ConfigDuration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            header_read_timeout: ConfigDuration(Duration::from_secs(30)),
            idle_timeout: ConfigDuration(Duration::from_secs(60)),
            body_timeout: ConfigDuration(Duration::from_secs(60)),
            tls_handshake_timeout: ConfigDuration(Duration::from_secs(10)),
        }
    }
}

/// Client authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// An htpasswd file with bcrypt entries (`htpasswd -B`).
    pub htpasswd: PathBuf,
    /// The realm of the `WWW-Authenticate: Basic` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// Whether pulls (GET/HEAD) need no credentials; pushes always do.
    #[serde(default)]
    pub anonymous_pull: bool,
}

fn default_realm() -> String {
    "sealer-registry".to_owned()
}

/// TLS: PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Credentials for an upstream.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// One upstream registry of the pull-through cache.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Its alias: `/v2/<name>/<repo>/…` routes to it, besides its host.
    pub name: String,
    /// Where it is.
    pub url: UpstreamUrl,
    /// Credentials.
    #[serde(default)]
    pub credentials: Option<Credentials>,
    /// Look credentials up in the docker `config.json` instead.
    #[serde(default)]
    pub use_docker_config: bool,
    /// Allow plain HTTP: an `http://` URL to a host that is not loopback needs it. TLS,
    /// when used, is always verified (add a private CA with `ca_file`).
    #[serde(default)]
    pub insecure: bool,
    /// A CA bundle (PEM) to verify it with.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// How long a cached tag is trusted (`0`: revalidate every time, `never`: offline).
    #[serde(default)]
    pub tag_ttl: TagTtl,
}

/// The `storage` key: a path (the local image store, an OCI layout) or `{ s3: … }` (an
/// S3-compatible bucket that several server processes may share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// The local image store at this directory.
    Path(PathBuf),
    /// A bucket.
    S3(BucketConfig),
}

impl Storage {
    /// The local store's directory, when the storage is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Path(path) => Some(path),
            Self::S3(_) => None,
        }
    }
}

impl From<PathBuf> for Storage {
    fn from(path: PathBuf) -> Self {
        Self::Path(path)
    }
}

impl<'de> Deserialize<'de> for Storage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Storage;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a directory path, or `{ s3: { bucket: …, … } }`")
            }

            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Storage, E> {
                Ok(Storage::Path(PathBuf::from(value)))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Storage, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(serde::de::Error::custom(
                        "storage: an empty map; expected `s3: { bucket: …, … }`",
                    ));
                };
                if key != "s3" {
                    return Err(serde::de::Error::custom(format!(
                        "storage: unknown backend {key:?}; expected a path or `s3`"
                    )));
                }
                let config: BucketConfig = map.next_value()?;
                if let Some(other) = map.next_key::<String>()? {
                    return Err(serde::de::Error::custom(format!(
                        "storage: {other:?} beside `s3`; name one backend"
                    )));
                }
                Ok(Storage::S3(config))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Why `cache.max_size` is refused over a bucket: both `validate` and a server opened from a
/// config built in code say it.
pub(crate) const CACHE_LIMIT_OVER_A_BUCKET: &str = "cache.max_size bounds the pull-through \
    cache in a local store; with `storage: { s3: … }` use the bucket's lifecycle rules instead";

/// The configuration of `sealer registry serve`; see `examples/registry.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the registry's content lives: an image store directory, or `{ s3: … }` a
    /// bucket; `None`: the CLI's store (`--root`, `$SEALER_ROOT`, …).
    #[serde(default)]
    pub storage: Option<Storage>,
    /// read-only (default) or read-write.
    #[serde(default)]
    pub mode: Mode,
    /// Whether `DELETE /v2/<repo>/blobs/<digest>` is served (read-write mode only); off, it
    /// is answered 405 `UNSUPPORTED`, as distribution does by default. On, a blob delete
    /// never breaks an image: a blob another repository's image (or a cached upstream
    /// image) uses is kept, one this repository's own manifests use is refused (409
    /// `DENIED`: delete the manifest first), and only a blob nothing uses is removed (see
    /// [`crate::LocalSource::delete_blob`]).
    #[serde(default)]
    pub delete_blobs: bool,
    /// Whether a pushed manifest may name content this registry does not hold: the
    /// non-distributable (foreign) layers of an image, or layers with `urls`, and the
    /// children of an index (a sparse index). Off, such a push is refused (400
    /// `MANIFEST_BLOB_UNKNOWN`), as for any absent blob; the config and the other layers
    /// of an image must be present either way.
    #[serde(default)]
    pub sparse_manifests: bool,
    /// The registry host under which repositories requested without a namespace are
    /// stored (`team/app` → `localhost/team/app`).
    #[serde(default = "default_namespace")]
    pub local_namespace: Host,
    /// Client authentication (none: anonymous).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS (none: plain HTTP).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
    /// Upstream registries of the pull-through cache.
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// Upstreams admitted by host pattern, created when a request names one (none: only
    /// the listed `upstreams`).
    #[serde(default)]
    pub upstream_policy: Option<UpstreamPolicyConfig>,
    /// The upstream of requests without a namespace (by name).
    #[serde(default)]
    pub default_upstream: Option<String>,
    /// Bound on one upstream exchange before stale content is served.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout: ConfigDuration,
    /// Bound on fetching what is not cached at all (a manifest, a blob's response head):
    /// there is nothing to fall back to, so it is longer than `upstream_timeout`.
    #[serde(default = "default_upstream_fetch_timeout")]
    pub upstream_fetch_timeout: ConfigDuration,
    /// While an upstream is failing (its last revalidation failed), cached tags are served
    /// STALE without asking it, and one request per this interval probes it.
    #[serde(default = "default_upstream_probe_interval")]
    pub upstream_probe_interval: ConfigDuration,
    /// Never contact upstreams; serve what is cached.
    #[serde(default)]
    pub offline: bool,
    /// Cluster images in the store whose carried images (their `registry/` layer) are
    /// served: imported under their source names when the server starts, and pinned (their
    /// tags are never revalidated upstream).
    #[serde(default)]
    pub images: Vec<String>,
    /// The local store the cluster images of `images` are read from when `storage` is a
    /// bucket (not a configuration key: `sealer registry serve` sets its own store).
    #[serde(skip)]
    pub image_store: Option<PathBuf>,
    /// Bounds on pushes.
    #[serde(default)]
    pub uploads: UploadLimits,
    /// Connection timeouts and the connection cap.
    #[serde(default)]
    pub server: ConnectionLimits,
    /// Replicas over one bucket (`storage: { s3 }` only): fill leases and the peer route, so
    /// the cluster makes one upstream `GET` per blob.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Presigned redirects of complete blobs (`storage: { s3 }` only).
    #[serde(default)]
    pub redirect: RedirectConfig,
    /// The pull-through cache's size limit (local storage only).
    #[serde(default)]
    pub cache: CacheConfig,
}

/// The documented configuration: every key with its default, commented (what
/// `sealer registry config` prints; it is `examples/registry.yaml`, and it parses to
/// [`ServerConfig::default`]).
pub const DEFAULT_CONFIG: &str = include_str!("../examples/registry.yaml");

/// The commented-out block of [`DEFAULT_CONFIG`] that starts with `first_lines`, uncommented
/// (its own comments and `…` placeholders left out): what the tests parse to check the
/// example configuration documents valid settings.
#[cfg(test)]
pub(crate) fn documented_block(first_lines: &str) -> String {
    let start = DEFAULT_CONFIG
        .find(first_lines)
        .unwrap_or(DEFAULT_CONFIG.len());
    DEFAULT_CONFIG[start..]
        .lines()
        .take_while(|line| line.starts_with('#'))
        .map(|line| line.trim_start_matches('#').strip_prefix(' ').unwrap_or(""))
        .filter(|line| !line.trim_start().starts_with('#') && !line.contains('…'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` parsed as a `registry.yaml`, its error as text: what the tests of each block check.
#[cfg(test)]
pub(crate) fn parse_for_test(text: &str) -> Result<ServerConfig, String> {
    ServerConfig::parse(text, Path::new("registry.yaml")).map_err(|error| error.to_string())
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}

fn default_namespace() -> Host {
    Host("localhost".to_owned())
}

fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_upstream_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}

fn default_upstream_fetch_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_upstream_probe_interval() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            storage: None,
            mode: Mode::default(),
            delete_blobs: false,
            sparse_manifests: false,
            local_namespace: default_namespace(),
            auth: None,
            tls: None,
            shutdown_timeout: default_shutdown_timeout(),
            upstreams: Vec::new(),
            upstream_policy: None,
            default_upstream: None,
            upstream_timeout: default_upstream_timeout(),
            upstream_fetch_timeout: default_upstream_fetch_timeout(),
            upstream_probe_interval: default_upstream_probe_interval(),
            offline: false,
            images: Vec::new(),
            image_store: None,
            uploads: UploadLimits::default(),
            server: ConnectionLimits::default(),
            cluster: None,
            redirect: RedirectConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Whether anything is pulled through: upstreams listed, or admitted by
    /// `upstream_policy`.
    pub fn pulls_through(&self) -> bool {
        !self.upstreams.is_empty() || self.upstream_policy.is_some()
    }

    /// Reads and validates `path` (YAML or TOML by extension); relative paths in it are made
    /// relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = read_text(path)?;
        let mut config = Self::parse(&text, path)?;
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        config.resolve_paths(&base);
        Ok(config)
    }

    /// Parses configuration text; `path`'s extension picks the format, and names the file in
    /// errors. Paths are left as written.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let invalid = |line: Option<usize>, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line,
            message,
        };
        let extension = path
            .extension()
            .and_then(|extension| extension.to_str())
            .unwrap_or_default();
        let config: Self = match extension {
            "yaml" | "yml" => serde_saphyr::from_str(text).map_err(|error| {
                let line = error
                    .location()
                    .and_then(|location| usize::try_from(location.line()).ok());
                invalid(line, first_line(&error_chain(&error)))
            })?,
            "toml" => toml::from_str(text).map_err(|error| {
                let line = error
                    .span()
                    .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
                invalid(line, error.message().to_owned())
            })?,
            _ => {
                return Err(invalid(
                    None,
                    "unknown configuration format: use a .yaml, .yml or .toml file".to_owned(),
                ));
            }
        };
        config
            .validate()
            .map_err(|(key, message)| invalid(line_of(text, key), message))?;
        Ok(config)
    }

    /// Checks what one field alone cannot: returns the offending key and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let mut names = BTreeSet::new();
        for upstream in &self.upstreams {
            if upstream.name.is_empty()
                || !upstream
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err((
                    "name",
                    format!(
                        "upstream name {:?}: use lowercase letters, digits and `-`",
                        upstream.name
                    ),
                ));
            }
            if !names.insert(upstream.name.as_str()) {
                return Err((
                    "name",
                    format!("two upstreams are named {:?}", upstream.name),
                ));
            }
            if upstream.credentials.is_some() && upstream.use_docker_config {
                return Err((
                    "use_docker_config",
                    format!(
                        "upstream {:?}: give credentials or use_docker_config, not both",
                        upstream.name
                    ),
                ));
            }
            if upstream.url.scheme == "http" && upstream.ca_file.is_some() {
                return Err((
                    "ca_file",
                    format!(
                        "upstream {:?}: its url is plain http, so a ca_file means nothing",
                        upstream.name
                    ),
                ));
            }
            if upstream.url.scheme == "http"
                && !upstream.insecure
                && !is_loopback(&upstream.url.host)
            {
                return Err((
                    "url",
                    format!(
                        "upstream {:?}: plain http to {} needs `insecure: true` (only loopback \
                         hosts may be spoken to over http without it)",
                        upstream.name, upstream.url.host
                    ),
                ));
            }
        }
        if let Some(policy) = &self.upstream_policy {
            policy.validate()?;
        }
        if let Some(default) = &self.default_upstream
            && !names.contains(default.as_str())
        {
            return Err((
                "default_upstream",
                format!("default_upstream {default:?} is not the name of an upstream"),
            ));
        }
        for (key, value) in [
            ("upstream_timeout", self.upstream_timeout),
            ("upstream_fetch_timeout", self.upstream_fetch_timeout),
            ("upstream_probe_interval", self.upstream_probe_interval),
        ] {
            if value.0.is_zero() {
                return Err((key, format!("{key} must be more than 0")));
            }
        }
        let positive = [
            ("max_sessions", self.uploads.max_sessions as u64),
            (
                "max_sessions_per_client",
                self.uploads.max_sessions_per_client as u64,
            ),
            ("max_blob_size", self.uploads.max_blob_size.0),
            (
                "max_connections",
                self.server.max_connections.unwrap_or(1) as u64,
            ),
        ];
        let durations = [
            ("idle_timeout", self.uploads.idle_timeout),
            ("header_read_timeout", self.server.header_read_timeout),
            ("idle_timeout", self.server.idle_timeout),
            ("body_timeout", self.server.body_timeout),
            ("tls_handshake_timeout", self.server.tls_handshake_timeout),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, format!("{key} must be more than 0")));
            }
        }
        for (key, value) in durations {
            if value.0.is_zero() {
                return Err((key, format!("{key} must be more than 0")));
            }
        }
        self.validate_cluster()?;
        self.validate_cache()
    }

    /// `cache.max_size`: more than 0, and only over the local store (a bucket's lifecycle
    /// rules bound what it keeps).
    fn validate_cache(&self) -> Result<(), (&'static str, String)> {
        let Some(max_size) = self.cache.max_size else {
            return Ok(());
        };
        if max_size.0 == 0 {
            return Err(("max_size", "cache.max_size must be more than 0".to_owned()));
        }
        if matches!(self.storage, Some(Storage::S3(_))) {
            return Err((
                "max_size",
                format!("{CACHE_LIMIT_OVER_A_BUCKET} (remove the `cache` key)"),
            ));
        }
        Ok(())
    }

    /// `cluster` and `redirect`: valid, and only over a bucket.
    fn validate_cluster(&self) -> Result<(), (&'static str, String)> {
        let on_bucket = matches!(self.storage, Some(Storage::S3(_)));
        if let Some(cluster) = &self.cluster {
            if !on_bucket {
                return Err((
                    "cluster",
                    "cluster: replicas share a bucket: it needs `storage: { s3: … }`".to_owned(),
                ));
            }
            cluster.validate()?;
        }
        if self.redirect.presigned && !on_bucket {
            return Err((
                "presigned",
                "redirect.presigned: presigned URLs point into a bucket: it needs \
                 `storage: { s3: … }`"
                    .to_owned(),
            ));
        }
        self.redirect.validate()
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(Storage::Path(storage)) = &mut self.storage {
            resolve(storage);
        }
        if let Some(auth) = &mut self.auth {
            resolve(&mut auth.htpasswd);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        for upstream in &mut self.upstreams {
            if let Some(ca_file) = &mut upstream.ca_file {
                resolve(ca_file);
            }
        }
        if let Some(ca_file) = self
            .upstream_policy
            .as_mut()
            .and_then(|policy| policy.ca_file.as_mut())
        {
            resolve(ca_file);
        }
        if let Some(secret_file) = self
            .cluster
            .as_mut()
            .and_then(|cluster| cluster.peer_secret_file.as_mut())
        {
            resolve(secret_file);
        }
    }
}

/// Whether `authority` (`host[:port]`) is a loopback host.
fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.split(':').next().unwrap_or(authority),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Reads a whole (small) text file through a [`RealFs`] rooted at its directory.
pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_error = |reason: String| ConfigError::Read {
        path: path.to_path_buf(),
        reason,
    };
    let name = path
        .file_name()
        .ok_or_else(|| read_error("not a file name".to_owned()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let fs = RealFs::open_root(parent).map_err(|error| read_error(error_chain(&error)))?;
    let bytes = sealer_fs_abstraction::Fs::read(&fs, Path::new(name))
        .map_err(|error| read_error(error_chain(&error)))?;
    String::from_utf8(bytes).map_err(|_| read_error("not UTF-8 text".to_owned()))
}

/// The first line of a (possibly multi-line, rendered) parser message, without the
/// `error: line N column M:` prefix (the line is reported separately).
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    let line = line.strip_prefix("error:").map_or(line, str::trim_start);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((position, rest)) if position.contains("column") => rest.to_owned(),
        _ => line.to_owned(),
    }
}

/// The 1-based line where `key` is first set (`key:` or `key =`), for messages.
fn line_of(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with([':', '=']))
        })
        .map(|at| at + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Result<ServerConfig, ConfigError> {
        ServerConfig::parse(text, Path::new("registry.yaml"))
    }

    #[test]
    fn storage_is_a_path_or_an_s3_bucket() {
        let local = yaml("storage: store\n").unwrap();
        assert_eq!(local.storage, Some(Storage::Path(PathBuf::from("store"))));
        let bucket = yaml(
            "storage:\n  s3:\n    bucket: registry\n    prefix: prod\n    endpoint: http://127.0.0.1:9000\n    region: eu-west-1\n    path_style: false\n    allow_http: true\n",
        )
        .unwrap();
        let Some(Storage::S3(s3)) = bucket.storage else {
            panic!("{:?}", bucket.storage);
        };
        assert_eq!(s3.bucket, "registry");
        assert_eq!(s3.prefix.as_deref(), Some("prod"));
        assert_eq!(s3.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s3.region.as_deref(), Some("eu-west-1"));
        assert!(!s3.path_style && s3.allow_http);
        let toml = ServerConfig::parse(
            "[storage.s3]\nbucket = \"registry\"\n",
            Path::new("registry.toml"),
        )
        .unwrap();
        assert!(
            matches!(toml.storage, Some(Storage::S3(ref s3)) if s3.bucket == "registry" && s3.path_style)
        );
        for (text, expected) in [
            (
                "storage:\n  gcs:\n    bucket: x\n",
                "unknown backend \"gcs\"",
            ),
            (
                "storage:\n  s3:\n    bucket: x\n    colour: red\n",
                "colour",
            ),
            (
                "storage:\n  s3:\n    bucket: x\n  other: 1\n",
                "beside `s3`",
            ),
        ] {
            let error = yaml(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    /// The commented `storage: s3:` block of the example configuration parses.
    #[test]
    fn the_documented_s3_storage_parses() {
        let block = documented_block("# storage:\n#   s3:");
        assert!(!block.is_empty());
        let config = yaml(&block).unwrap_or_else(|error| panic!("{block}\n{error}"));
        assert!(matches!(config.storage, Some(Storage::S3(_))), "{block}");
    }

    #[test]
    fn defaults_and_a_full_yaml_file() {
        let config = yaml("{}").unwrap();
        assert_eq!(config, ServerConfig::default());
        let config = yaml(
            "listen: 0.0.0.0:5001\nstorage: /srv/store\nmode: read-write\nlocal_namespace: registry.local:5001\n\
             auth:\n  htpasswd: htpasswd\n  anonymous_pull: true\n\
             tls:\n  cert: c.pem\n  key: k.pem\nshutdown_timeout: 5s\n\
             upstreams:\n  - name: hub\n    url: https://registry-1.docker.io\n    tag_ttl: 10m\n\
             \x20 - name: quay\n    url: https://quay.io/\n    credentials: {username: u, password: p}\n    tag_ttl: never\n\
             default_upstream: hub\nupstream_timeout: 1500ms\nupstream_fetch_timeout: 10s\n\
             upstream_probe_interval: 1s\noffline: false\n",
        )
        .unwrap();
        assert_eq!(config.listen.port(), 5001);
        assert_eq!(config.mode, Mode::ReadWrite);
        assert_eq!(config.local_namespace.0, "registry.local:5001");
        assert!(config.auth.as_ref().unwrap().anonymous_pull);
        assert_eq!(config.auth.unwrap().realm, "sealer-registry");
        assert_eq!(config.shutdown_timeout.0, Duration::from_secs(5));
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[0].url.host, "registry-1.docker.io");
        assert_eq!(
            config.upstreams[0].tag_ttl,
            TagTtl::After(Duration::from_secs(600))
        );
        assert_eq!(config.upstreams[1].tag_ttl, TagTtl::Never);
        assert_eq!(config.upstreams[1].url.to_string(), "https://quay.io");
        assert!(!format!("{:?}", config.upstreams[1].credentials).contains("\"p\""));
        assert_eq!(config.upstream_timeout.0, Duration::from_millis(1500));
        assert_eq!(config.upstream_fetch_timeout.0, Duration::from_secs(10));
        assert_eq!(config.upstream_probe_interval.0, Duration::from_secs(1));
    }

    #[test]
    fn the_documented_configuration_is_the_defaults() {
        assert_eq!(
            ServerConfig::parse(DEFAULT_CONFIG, Path::new("registry.yaml")).unwrap(),
            ServerConfig::default()
        );
    }

    #[test]
    fn passwords_in_upstream_urls_are_never_echoed() {
        for url in [
            "https://u:hunter2@127.0.0.1:1/",
            "https://u:hunter2@127.0.0.1:1/path",
            "ftp://u:hunter2@127.0.0.1:1",
            "https://u:hunter2@",
        ] {
            let error = yaml(&format!("upstreams:\n  - name: a\n    url: {url}\n")).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("u:***@"), "{message}");
            let error = ServerConfig::parse(
                &format!("[[upstreams]]\nname = \"a\"\nurl = \"{url}\"\n"),
                Path::new("r.toml"),
            )
            .unwrap_err();
            assert!(!error.to_string().contains("hunter2"), "{error}");
        }
        let error = yaml("upstreams:\n  - name: a\n    url: https://u:p@a.io\n").unwrap_err();
        assert!(error.to_string().contains("credentials:"), "{error}");
    }

    #[test]
    fn toml_works_too() {
        let config = ServerConfig::parse(
            "listen = \"127.0.0.1:6000\"\nmode = \"read-only\"\nupstream_timeout = 3\n\
             [[upstreams]]\nname = \"ghcr\"\nurl = \"https://ghcr.io\"\ntag_ttl = 0\n",
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.upstream_timeout.0, Duration::from_secs(3));
        assert_eq!(config.upstreams[0].tag_ttl, TagTtl::After(Duration::ZERO));
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let error = yaml("listen: 127.0.0.1:5000\nmode: read-mostly\n").unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("registry.yaml:2: unknown variant"),
            "{text}"
        );
        let error = yaml("listen: 127.0.0.1:5000\n\nlisten_typo: 1\n").unwrap_err();
        assert!(
            error.to_string().starts_with("registry.yaml:3: "),
            "{error}"
        );
        let error = yaml("local_namespace: nohost\n").unwrap_err();
        assert!(error.to_string().contains("not a registry host"), "{error}");
        let error = yaml("shutdown_timeout: 5 parsecs\n").unwrap_err();
        assert!(error.to_string().contains("duration"), "{error}");
        let error = yaml("upstream_probe_interval: 0s\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("upstream_probe_interval must be more than 0"),
            "{error}"
        );
        let error = yaml("upstreams:\n  - name: a\n    url: https://a.io\ndefault_upstream: b\n")
            .unwrap_err();
        assert!(
            error.to_string().starts_with("registry.yaml:4: "),
            "{error}"
        );
        let error = yaml("upstreams:\n  - name: a\n    url: ftp://a.io\n").unwrap_err();
        assert!(error.to_string().contains("http or https"), "{error}");
        let error = yaml("upstreams:\n  - name: a\n    url: http://a.lan:5000\n").unwrap_err();
        assert!(
            error.to_string().starts_with("registry.yaml:3: ")
                && error.to_string().contains("insecure: true"),
            "{error}"
        );
        yaml("upstreams:\n  - name: a\n    url: http://a.lan:5000\n    insecure: true\n").unwrap();
        yaml("upstreams:\n  - name: a\n    url: http://127.0.0.1:5000\n").unwrap();
        yaml("upstreams:\n  - name: a\n    url: http://localhost:5000\n").unwrap();
        let error = yaml(
            "upstreams:\n  - name: a\n    url: https://a.io\n  - name: a\n    url: https://b.io\n",
        )
        .unwrap_err();
        assert!(error.to_string().contains("two upstreams"), "{error}");
        let error = ServerConfig::parse("listen = [", Path::new("x.toml")).unwrap_err();
        assert!(error.to_string().starts_with("x.toml:1: "), "{error}");
        let error = ServerConfig::parse("{}", Path::new("x.json")).unwrap_err();
        assert!(error.to_string().contains(".yaml"), "{error}");
    }

    #[test]
    fn upload_and_connection_limits() {
        let config = yaml(
            "uploads:\n  max_sessions_per_client: 8\n  max_blob_size: 10GiB\n  idle_timeout: 2m\n\
             server:\n  max_connections: 100\n  header_read_timeout: 5s\n  idle_timeout: 61s\n\
             \x20 body_timeout: 62s\n  tls_handshake_timeout: 3s\n",
        )
        .unwrap();
        assert_eq!(config.uploads.max_sessions_per_client, 8);
        assert_eq!(config.uploads.max_sessions, 1024);
        assert_eq!(config.uploads.max_blob_size, ByteSize(10 << 30));
        assert_eq!(config.uploads.idle_timeout.0, Duration::from_secs(120));
        assert_eq!(config.server.max_connections, Some(100));
        assert_eq!(config.server.header_read_timeout.0, Duration::from_secs(5));
        assert_eq!(config.server.idle_timeout.0, Duration::from_secs(61));
        assert_eq!(config.server.body_timeout.0, Duration::from_secs(62));
        assert_eq!(
            config.server.tls_handshake_timeout.0,
            Duration::from_secs(3)
        );
        let defaults = yaml("{}").unwrap();
        assert_eq!(defaults.server.max_connections, None);
        assert_eq!(defaults.server.body_timeout.0, Duration::from_secs(60));
        assert_eq!(defaults.uploads.max_blob_size, ByteSize(64 << 30));
        for (text, bytes) in [("1024", 1024), ("3MB", 3_000_000), ("2 KiB", 2048)] {
            assert_eq!(text.parse::<ByteSize>().unwrap(), ByteSize(bytes));
        }
        for text in ["", "GiB", "5 parsecs", "99999999999TiB"] {
            assert!(text.parse::<ByteSize>().is_err(), "{text}");
        }
        let error = yaml("uploads:\n  max_blob_size: 0\n").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("registry.yaml:2: max_blob_size"),
            "{error}"
        );
        let error = yaml("server:\n  idle_time: 5s\n").unwrap_err();
        assert!(
            error.to_string().starts_with("registry.yaml:2: "),
            "{error}"
        );
    }
}
