//! The distribution API's routes, parsed by a pure function: `(method, path, query)` →
//! [`Route`]. Repository names contain `/`, so the whole path after `/v2/` is parsed here
//! from its end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, …), not by a router's
//! patterns.
//!
//! The upstream namespace of a request (which registry a pull-through cache would ask) comes
//! from `?ns=<host>` (containerd's `hosts.toml` mirrors), or from a first path component
//! that is a registry host (`/v2/quay.io/coreos/etcd/…`, podman/CRI-O mirrors and Docker
//! prefix names; a host with a port as `registry.lan_5000`, see [`host_path_component`]) or
//! a configured upstream alias.

use std::collections::BTreeSet;

use axum::http::Method;
use sealer_fs_abstraction::error_chain;
use sealer_image_store::Digest;
use sealer_image_store::reference::{Reference, validate_repository, validate_tag};

use crate::error::{ApiError, ErrorCode};

/// How a request named its upstream namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceVia {
    /// The `ns` query parameter; the answer carries `OCI-Namespace`.
    Query,
    /// A first path component that is a registry host (`quay.io`, `localhost:5000`).
    PathHost,
    /// A first path component that is a configured upstream alias.
    PathAlias,
}

/// The upstream namespace a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// A registry host (normalised: `index.docker.io` → `docker.io`) or an alias.
    pub name: String,
    /// Where it came from.
    pub via: NamespaceVia,
}

/// The repository a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPath {
    /// The upstream namespace, when the request names one; `None` means the server's
    /// default (its local namespace, or later a default upstream).
    pub namespace: Option<Namespace>,
    /// The repository inside the namespace, e.g. `library/nginx`, `team/app`.
    pub repository: String,
    /// The name as it appeared in the path (prefix included), for `Location` headers.
    pub path_name: String,
}

impl RepoPath {
    /// `/v2/<name>` as the client wrote it, with `?ns=` when it used it.
    pub fn url(&self, rest: &str) -> String {
        match &self.namespace {
            Some(Namespace {
                name,
                via: NamespaceVia::Query,
            }) => format!("/v2/{}/{rest}?ns={name}", self.path_name),
            _ => format!("/v2/{}/{rest}", self.path_name),
        }
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestRef {
    /// A tag.
    Tag(String),
    /// A digest.
    Digest(Digest),
}

impl std::fmt::Display for ManifestRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tag(tag) => f.write_str(tag),
            Self::Digest(digest) => write!(f, "{digest}"),
        }
    }
}

/// What is done to a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestOp {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

/// What is done to a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOp {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `DELETE`.
    Delete,
}

/// What is done to an upload session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOp {
    /// `GET`: its status.
    Status,
    /// `PATCH`: a chunk or a stream.
    Patch,
    /// `PUT ?digest=`: the last bytes (optional) and the commit.
    Finish(Digest),
    /// `DELETE`: cancel.
    Cancel,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`.
    Base,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// The repository.
        repo: RepoPath,
        /// Tag or digest.
        reference: ManifestRef,
        /// The operation.
        op: ManifestOp,
        /// The `tag` parameters of a `PUT` by digest: further tags to name it with (empty
        /// otherwise).
        tags: Vec<String>,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// The repository.
        repo: RepoPath,
        /// The blob.
        digest: Digest,
        /// The operation.
        op: BlobOp,
    },
    /// `POST /v2/<name>/blobs/uploads/`.
    StartUpload {
        /// The repository.
        repo: RepoPath,
        /// `?digest=`: a monolithic upload of the request body.
        digest: Option<Digest>,
        /// `?mount=<digest>`: mount a blob from another repository.
        mount: Option<Digest>,
        /// `?from=<repository>` of a mount (not validated: a bad one only means no mount).
        from: Option<String>,
    },
    /// `/v2/<name>/blobs/uploads/<id>`.
    Upload {
        /// The repository.
        repo: RepoPath,
        /// The session id.
        id: String,
        /// The operation.
        op: UploadOp,
    },
    /// `GET /v2/<name>/tags/list`.
    Tags {
        /// The repository.
        repo: RepoPath,
        /// `?n=`: at most this many tags.
        n: Option<usize>,
        /// `?last=`: tags after this one.
        last: Option<String>,
    },
    /// `GET /v2/_catalog`.
    Catalog {
        /// `?n=`: at most this many repositories.
        n: Option<usize>,
        /// `?last=`: repositories after this one.
        last: Option<String>,
    },
    /// `GET /v2/<name>/referrers/<digest>`.
    Referrers {
        /// The repository.
        repo: RepoPath,
        /// The subject.
        digest: Digest,
        /// `?artifactType=` filter.
        artifact_type: Option<String>,
    },
}

/// Why a request does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such endpoint.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// The endpoint exists, not with this method.
    #[error("method {method} is not supported on {path}")]
    MethodNotAllowed {
        /// The method.
        method: String,
        /// The path.
        path: String,
    },
    /// A malformed repository name or namespace.
    #[error("invalid repository name {name:?}: {reason}")]
    NameInvalid {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A malformed digest.
    #[error("invalid digest {0:?}")]
    DigestInvalid(String),
    /// A reference that is neither a tag nor a digest, in a `PUT`.
    #[error("invalid tag {0:?}")]
    TagInvalid(String),
    /// A reference that is neither a tag nor a digest, in a read or delete: no manifest
    /// can have it.
    #[error("manifest {0:?} is not in the registry (not a valid tag)")]
    ManifestUnknown(String),
    /// `n` is not a number.
    #[error("invalid page size n={0:?}")]
    PaginationInvalid(String),
    /// A malformed upload id.
    #[error("unknown upload {0:?}")]
    UploadUnknown(String),
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> Self {
        let message = error_chain(&error);
        match error {
            RouteError::NotFound(_) => ApiError::new(ErrorCode::NameUnknown, message)
                .with_status(axum::http::StatusCode::NOT_FOUND),
            RouteError::MethodNotAllowed { .. } => ApiError::new(ErrorCode::Unsupported, message),
            RouteError::NameInvalid { .. } => ApiError::new(ErrorCode::NameInvalid, message),
            RouteError::DigestInvalid(_) => ApiError::new(ErrorCode::DigestInvalid, message),
            RouteError::TagInvalid(_) => ApiError::new(ErrorCode::ManifestInvalid, message),
            RouteError::ManifestUnknown(_) => ApiError::new(ErrorCode::ManifestUnknown, message),
            RouteError::PaginationInvalid(_) => {
                ApiError::new(ErrorCode::PaginationNumberInvalid, message)
            }
            RouteError::UploadUnknown(_) => ApiError::new(ErrorCode::BlobUploadUnknown, message),
        }
    }
}

/// 405 for `method` on `path`.
fn method_not_allowed(method: &Method, path: &str) -> RouteError {
    RouteError::MethodNotAllowed {
        method: method.to_string(),
        path: path.to_owned(),
    }
}

/// Parses requests; knows the configured upstream aliases (path prefixes that are not
/// host names).
#[derive(Debug, Clone, Default)]
pub struct RouteParser {
    aliases: BTreeSet<String>,
}

impl RouteParser {
    /// A parser that recognises `aliases` as namespace prefixes besides host names.
    pub fn new(aliases: impl IntoIterator<Item = String>) -> Self {
        Self {
            aliases: aliases.into_iter().collect(),
        }
    }

    /// Parses one request. `path` is the URI path (`/v2/…`), `query` the raw query string.
    pub fn parse(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Result<Route, RouteError> {
        let params = QueryParams::parse(query.unwrap_or_default());
        let not_allowed = || method_not_allowed(method, path);
        let rest = path
            .strip_prefix("/v2")
            .ok_or_else(|| RouteError::NotFound(path.to_owned()))?;
        if rest.is_empty() || rest == "/" {
            return match *method {
                Method::GET | Method::HEAD => Ok(Route::Base),
                _ => Err(not_allowed()),
            };
        }
        let rest = rest
            .strip_prefix('/')
            .ok_or_else(|| RouteError::NotFound(path.to_owned()))?;
        if rest == "_catalog" {
            if !matches!(*method, Method::GET | Method::HEAD) {
                return Err(not_allowed());
            }
            return Ok(Route::Catalog {
                n: params.page_size()?,
                last: params.get("last").map(str::to_owned),
            });
        }
        let parts: Vec<String> = rest.split('/').map(percent_decode).collect();
        let n = parts.len();
        let part = |from_end: usize| parts[n - from_end].as_str();
        let name_of = |count: usize| parts[..n - count].join("/");
        let not_found = || RouteError::NotFound(path.to_owned());

        // `<name>/blobs/uploads/` (trailing slash) or `<name>/blobs/uploads` with POST.
        if n >= 3 && part(3) == "blobs" && part(2) == "uploads" && part(1).is_empty()
            || n >= 3 && part(2) == "blobs" && part(1) == "uploads" && *method == Method::POST
        {
            let count = if part(1).is_empty() { 3 } else { 2 };
            if *method != Method::POST {
                return Err(not_allowed());
            }
            let repo = self.repo(&name_of(count), &params)?;
            let digest = params.digest("digest")?;
            let mount = params.digest("mount")?;
            return Ok(Route::StartUpload {
                repo,
                digest,
                mount,
                from: params.get("from").map(str::to_owned),
            });
        }
        if n >= 4 && part(3) == "blobs" && part(2) == "uploads" {
            return self.upload(method, path, &name_of(3), part(1), &params);
        }
        if n >= 3 && part(2) == "manifests" {
            return self.manifest(method, path, &name_of(2), part(1), &params);
        }
        if n >= 3 && part(2) == "blobs" {
            let op = match *method {
                Method::GET => BlobOp::Get,
                Method::HEAD => BlobOp::Head,
                Method::DELETE => BlobOp::Delete,
                _ => return Err(not_allowed()),
            };
            let repo = self.repo(&name_of(2), &params)?;
            let digest = parse_digest(part(1))?;
            return Ok(Route::Blob { repo, digest, op });
        }
        if n >= 3 && part(2) == "tags" && part(1) == "list" {
            if !matches!(*method, Method::GET | Method::HEAD) {
                return Err(not_allowed());
            }
            let repo = self.repo(&name_of(2), &params)?;
            return Ok(Route::Tags {
                repo,
                n: params.page_size()?,
                last: params.get("last").map(str::to_owned),
            });
        }
        if n >= 3 && part(2) == "referrers" {
            if !matches!(*method, Method::GET | Method::HEAD) {
                return Err(not_allowed());
            }
            let repo = self.repo(&name_of(2), &params)?;
            let digest = parse_digest(part(1))?;
            return Ok(Route::Referrers {
                repo,
                digest,
                artifact_type: params.get("artifactType").map(str::to_owned),
            });
        }
        Err(not_found())
    }

    /// `<name>/blobs/uploads/<id>`: the session `id`'s status, a chunk, its end or its cancel.
    fn upload(
        &self,
        method: &Method,
        path: &str,
        name: &str,
        id: &str,
        params: &QueryParams,
    ) -> Result<Route, RouteError> {
        if !valid_upload_id(id) {
            return Err(RouteError::UploadUnknown(id.to_owned()));
        }
        let op = match *method {
            Method::GET | Method::HEAD => UploadOp::Status,
            Method::PATCH => UploadOp::Patch,
            Method::PUT => match params.digest("digest")? {
                Some(digest) => UploadOp::Finish(digest),
                None => return Err(RouteError::DigestInvalid(String::new())),
            },
            Method::DELETE => UploadOp::Cancel,
            _ => return Err(method_not_allowed(method, path)),
        };
        let repo = self.repo(name, params)?;
        Ok(Route::Upload {
            repo,
            id: id.to_owned(),
            op,
        })
    }

    /// `<name>/manifests/<reference>` (with `?tag=` on a push by digest).
    fn manifest(
        &self,
        method: &Method,
        path: &str,
        name: &str,
        reference: &str,
        params: &QueryParams,
    ) -> Result<Route, RouteError> {
        let op = match *method {
            Method::GET => ManifestOp::Get,
            Method::HEAD => ManifestOp::Head,
            Method::PUT => ManifestOp::Put,
            Method::DELETE => ManifestOp::Delete,
            _ => return Err(method_not_allowed(method, path)),
        };
        let repo = self.repo(name, params)?;
        let reference = parse_reference(reference).map_err(|error| match error {
            RouteError::TagInvalid(tag) if op != ManifestOp::Put => {
                RouteError::ManifestUnknown(tag)
            }
            other => other,
        })?;
        let tags = match (&reference, op) {
            (ManifestRef::Digest(_), ManifestOp::Put) => params
                .get_all("tag")
                .map(|tag| {
                    validate_tag(tag).map_err(|_| RouteError::TagInvalid(tag.to_owned()))?;
                    Ok(tag.to_owned())
                })
                .collect::<Result<_, RouteError>>()?,
            _ => Vec::new(),
        };
        Ok(Route::Manifest {
            repo,
            reference,
            op,
            tags,
        })
    }

    /// Splits `name` into namespace and repository and validates both.
    fn repo(&self, name: &str, params: &QueryParams) -> Result<RepoPath, RouteError> {
        let invalid = |name: &str, reason: String| RouteError::NameInvalid {
            name: name.to_owned(),
            reason,
        };
        let (namespace, repository) = match params.get("ns") {
            Some(ns) => (
                Some(Namespace {
                    name: normalise_host(ns).ok_or_else(|| {
                        invalid(ns, "the ns parameter is not a registry host".to_owned())
                    })?,
                    via: NamespaceVia::Query,
                }),
                name,
            ),
            None => match name.split_once('/') {
                Some((first, rest)) if self.aliases.contains(first) => (
                    Some(Namespace {
                        name: first.to_owned(),
                        via: NamespaceVia::PathAlias,
                    }),
                    rest,
                ),
                Some((first, rest)) if names_a_host(first) => {
                    let host = host_of_path_component(first)
                        .as_deref()
                        .and_then(normalise_host)
                        .ok_or_else(|| {
                            invalid(name, format!("{first:?} is not a registry host"))
                        })?;
                    (
                        Some(Namespace {
                            name: host,
                            via: NamespaceVia::PathHost,
                        }),
                        rest,
                    )
                }
                _ => (None, name),
            },
        };
        validate_repository(repository).map_err(|reason| invalid(name, reason))?;
        Ok(RepoPath {
            namespace,
            repository: repository.to_owned(),
            path_name: name.to_owned(),
        })
    }
}

/// Whether a first path component names a registry host: it has a `.` or a `:`, is
/// `localhost`, or is the path form of a host with a port ([`host_path_component`]).
fn names_a_host(component: &str) -> bool {
    let host = component
        .rsplit_once('_')
        .filter(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(component, |(host, _)| host);
    host.contains('.') || component.contains(':') || host == "localhost"
}

/// The registry host a first path component names: itself, or for the path form of a host
/// with a port (`registry.lan_5000`) the host (`registry.lan:5000`). `None` when it names
/// none.
pub fn host_of_path_component(component: &str) -> Option<String> {
    if !names_a_host(component) {
        return None;
    }
    Some(match component.rsplit_once('_') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}:{port}")
        }
        _ => component.to_owned(),
    })
}

/// How a registry host is written as the first path component of a prefix name
/// (`<mirror>/<host>/<repository>`): as it is, except that a port's `:` becomes `_`,
/// because image references allow no `:` in their path (`registry.lan:5000` →
/// `registry.lan_5000`; host names never contain `_`, so this is unambiguous).
pub fn host_path_component(host: &str) -> String {
    host.replace(':', "_")
}

/// Parses a request with no upstream aliases configured; see [`RouteParser::parse`].
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    RouteParser::default().parse(method, path, query)
}

/// A registry host in its one canonical spelling, or `None` when `host` is not a registry
/// host or is written in an ambiguous form. Every namespace check compares canonical
/// names, so a variant spelling of an upstream is that upstream (and write-protected),
/// never another, writable namespace:
///
/// * letters are lowercased and one trailing dot is dropped (`DOCKER.IO.` → `docker.io`);
/// * Docker Hub's API hosts are `docker.io` (`index.docker.io`, `registry-1.docker.io`);
/// * IPv4 addresses must be dotted decimal without leading zeros; the other forms that
///   resolvers accept (`127.000.000.001`, `2130706433`, octal, hex, `127.1`) are refused;
/// * ports are digits without a leading zero (`:015801` is refused);
/// * IPv6 addresses are written as `std` prints them, in brackets (`[::1]:5000`).
pub fn normalise_host(host: &str) -> Option<String> {
    let (name, port) = split_host_port(host)?;
    let port = match port {
        None => None,
        Some(port) => Some(canonical_port(port)?),
    };
    let name = canonical_name(name, port)?;
    Some(match port {
        Some(port) => format!("{name}:{port}"),
        None => name,
    })
}

/// The host name `name` (a name, an IPv4 address or a bracketed IPv6 address, without its
/// port) in its canonical spelling when `port` (canonical) follows it, as
/// [`normalise_host`] writes it; `None` when `name:port` is not a registry host. The port
/// matters only by its presence: Docker Hub's API hosts are `docker.io` only without one,
/// and a name without a dot is a registry host only with one (or as `localhost`).
pub(crate) fn canonical_name(name: &str, port: Option<u16>) -> Option<String> {
    let port = port.map(|port| format!(":{port}")).unwrap_or_default();
    let is_registry = |name: &str| {
        let canonical = format!("{name}{port}");
        Reference::new(&canonical, "x", Some("t"), None)
            .is_ok_and(|parsed| parsed.registry() == canonical)
    };
    if let Some(inner) = name.strip_prefix('[') {
        let address: std::net::Ipv6Addr = inner.strip_suffix(']')?.parse().ok()?;
        let name = format!("[{address}]");
        return is_registry(&name).then_some(name);
    }
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name);
    if name.is_empty()
        || name.ends_with('.')
        || (looks_numeric(name) && name.parse::<std::net::Ipv4Addr>().is_err())
    {
        return None;
    }
    let name = match name {
        "index.docker.io" | "registry-1.docker.io" if port.is_empty() => "docker.io",
        other => other,
    };
    is_registry(name).then(|| name.to_owned())
}

/// `host[:port]` split at the port's `:` (after an IPv6 address's `]`); `None` when there
/// are more colons than that.
pub(crate) fn split_host_port(host: &str) -> Option<(&str, Option<&str>)> {
    if host.starts_with('[') {
        let end = host.find(']')?;
        let (address, rest) = host.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(port) => Some((address, Some(port))),
            None if rest.is_empty() => Some((address, None)),
            None => None,
        };
    }
    match host.split_once(':') {
        Some((_, port)) if port.contains(':') => None,
        Some((name, port)) => Some((name, Some(port))),
        None => Some((host, None)),
    }
}

/// A port as digits without a leading zero, 1 to 65535.
pub(crate) fn canonical_port(port: &str) -> Option<u16> {
    if port.is_empty() || port.starts_with('0') || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok().filter(|port| *port != 0)
}

/// Whether resolvers would read `name` as an IPv4 address (the WHATWG URL rule: its last
/// label is a number, decimal or `0x` hex), so that it must be dotted decimal to be used.
fn looks_numeric(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_reference(text: &str) -> Result<ManifestRef, RouteError> {
    if text.contains(':') {
        return parse_digest(text).map(ManifestRef::Digest);
    }
    validate_tag(text).map_err(|_| RouteError::TagInvalid(text.to_owned()))?;
    Ok(ManifestRef::Tag(text.to_owned()))
}

fn parse_digest(text: &str) -> Result<Digest, RouteError> {
    text.parse()
        .map_err(|_| RouteError::DigestInvalid(text.to_owned()))
}

/// Upload ids are ours: letters, digits and `-`, at most 128.
fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Decoded query parameters (first value of each name wins).
struct QueryParams(Vec<(String, String)>);

impl QueryParams {
    fn parse(query: &str) -> Self {
        Self(
            query
                .split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                    (
                        percent_decode(&name.replace('+', " ")),
                        percent_decode(&value.replace('+', " ")),
                    )
                })
                .collect(),
        )
    }

    /// Every value of `name`, in order.
    fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `?n=` of a paginated list.
    fn page_size(&self) -> Result<Option<usize>, RouteError> {
        self.get("n")
            .map(|text| {
                text.parse::<usize>()
                    .map_err(|_| RouteError::PaginationInvalid(text.to_owned()))
            })
            .transpose()
    }

    fn digest(&self, name: &str) -> Result<Option<Digest>, RouteError> {
        self.get(name).map(parse_digest).transpose()
    }
}

/// `%XX` decoding; invalid escapes are kept as they are.
fn percent_decode(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%'
            && let Some(hex) = bytes.get(at + 1..at + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn get(path: &str) -> Result<Route, RouteError> {
        parse(&Method::GET, path, None)
    }

    fn repo(route: &Route) -> &RepoPath {
        match route {
            Route::Manifest { repo, .. }
            | Route::Blob { repo, .. }
            | Route::StartUpload { repo, .. }
            | Route::Upload { repo, .. }
            | Route::Tags { repo, .. }
            | Route::Referrers { repo, .. } => repo,
            Route::Base | Route::Catalog { .. } => panic!("no repository"),
        }
    }

    #[test]
    fn base_and_unknown_paths() {
        assert_eq!(get("/v2/").unwrap(), Route::Base);
        assert_eq!(get("/v2").unwrap(), Route::Base);
        assert_eq!(parse(&Method::HEAD, "/v2/", None).unwrap(), Route::Base);
        assert!(matches!(
            parse(&Method::POST, "/v2/", None),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        assert!(matches!(get("/v3/"), Err(RouteError::NotFound(_))));
        assert!(matches!(get("/v2/a/b/c"), Err(RouteError::NotFound(_))));
        assert!(matches!(get("/v2x"), Err(RouteError::NotFound(_))));
    }

    #[test]
    fn manifests_by_tag_and_digest_in_nested_repositories() {
        let route = get("/v2/team/sub/app/manifests/v1.0").unwrap();
        let Route::Manifest {
            repo,
            reference,
            op,
            ..
        } = &route
        else {
            panic!("{route:?}")
        };
        assert_eq!(repo.repository, "team/sub/app");
        assert_eq!(repo.namespace, None);
        assert_eq!(reference, &ManifestRef::Tag("v1.0".to_owned()));
        assert_eq!(*op, ManifestOp::Get);
        let route = parse(&Method::PUT, &format!("/v2/a/manifests/{D}"), None).unwrap();
        assert!(matches!(
            route,
            Route::Manifest {
                reference: ManifestRef::Digest(_),
                op: ManifestOp::Put,
                ..
            }
        ));
        // A repository may have a component called `manifests` or `blobs`.
        let nested = get("/v2/manifests/blobs/manifests/latest").unwrap();
        assert_eq!(self::repo(&nested).repository, "manifests/blobs");
        assert!(matches!(
            parse(&Method::POST, "/v2/a/manifests/x", None),
            Err(RouteError::MethodNotAllowed { .. })
        ));
    }

    #[test]
    fn malformed_names_digests_and_tags_are_client_errors() {
        assert!(matches!(
            get("/v2/Upper/manifests/x"),
            Err(RouteError::NameInvalid { .. })
        ));
        assert!(matches!(
            get("/v2/a//b/manifests/x"),
            Err(RouteError::NameInvalid { .. })
        ));
        assert!(matches!(
            get("/v2/a/blobs/sha256:nothex"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            get("/v2/a/blobs/md5:00"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            get("/v2/a/manifests/sha256:abc"),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            get("/v2/a/manifests/.INVALID_MANIFEST_NAME"),
            Err(RouteError::ManifestUnknown(_))
        ));
        assert!(matches!(
            parse(&Method::PUT, "/v2/a/manifests/-bad", None),
            Err(RouteError::TagInvalid(_))
        ));
        assert!(matches!(
            get("/v2/a/referrers/latest"),
            Err(RouteError::DigestInvalid(_))
        ));
        let sha512 = format!("sha512:{}", "a".repeat(128));
        assert!(get(&format!("/v2/a/blobs/{sha512}")).is_ok());
        // Percent-encoded colons are decoded.
        assert!(get(&format!("/v2/a/blobs/{}", D.replace(':', "%3A"))).is_ok());
    }

    #[test]
    fn blobs_and_uploads() {
        let route = parse(&Method::DELETE, &format!("/v2/a/b/blobs/{D}"), None).unwrap();
        assert!(matches!(
            route,
            Route::Blob {
                op: BlobOp::Delete,
                ..
            }
        ));
        for path in ["/v2/a/b/blobs/uploads/", "/v2/a/b/blobs/uploads"] {
            let route = parse(&Method::POST, path, Some(&format!("digest={D}"))).unwrap();
            let Route::StartUpload {
                repo,
                digest,
                mount,
                ..
            } = route
            else {
                panic!()
            };
            assert_eq!(repo.repository, "a/b");
            assert_eq!(digest.unwrap().to_string(), D);
            assert!(mount.is_none());
        }
        let route = parse(
            &Method::POST,
            "/v2/a/blobs/uploads/",
            Some(&format!("mount={D}&from=other/repo")),
        )
        .unwrap();
        assert!(matches!(
            route,
            Route::StartUpload { mount: Some(_), from: Some(ref from), .. } if from == "other/repo"
        ));
        assert!(matches!(
            parse(&Method::POST, "/v2/a/blobs/uploads/", Some("mount=bad")),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse(&Method::GET, "/v2/a/blobs/uploads/", None),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        let id = "0a1b2c3d-0000-4000-8000-000000000000";
        let path = format!("/v2/a/blobs/uploads/{id}");
        assert!(matches!(
            parse(&Method::PATCH, &path, None).unwrap(),
            Route::Upload { op: UploadOp::Patch, ref id, .. } if id == "0a1b2c3d-0000-4000-8000-000000000000"
        ));
        assert!(matches!(
            parse(&Method::GET, &path, None).unwrap(),
            Route::Upload {
                op: UploadOp::Status,
                ..
            }
        ));
        assert!(matches!(
            parse(&Method::PUT, &path, Some(&format!("digest={D}"))).unwrap(),
            Route::Upload {
                op: UploadOp::Finish(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&Method::PUT, &path, None),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse(&Method::PUT, &path, Some("digest=sha256:zz")),
            Err(RouteError::DigestInvalid(_))
        ));
        assert!(matches!(
            parse(&Method::DELETE, &path, None).unwrap(),
            Route::Upload {
                op: UploadOp::Cancel,
                ..
            }
        ));
        assert!(matches!(
            parse(&Method::PATCH, "/v2/a/blobs/uploads/..%2F..", None),
            Err(RouteError::UploadUnknown(_))
        ));
    }

    #[test]
    fn catalog_pages_and_tags_on_push() {
        assert_eq!(
            parse(&Method::GET, "/v2/_catalog", Some("n=2&last=a%2Fb")).unwrap(),
            Route::Catalog {
                n: Some(2),
                last: Some("a/b".to_owned())
            }
        );
        assert!(matches!(
            parse(&Method::GET, "/v2/_catalog", Some("n=-1")),
            Err(RouteError::PaginationInvalid(_))
        ));
        assert!(matches!(
            parse(&Method::DELETE, "/v2/_catalog", None),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        let tags = |reference: &str, query: &str| match parse(
            &Method::PUT,
            &format!("/v2/a/manifests/{reference}"),
            Some(query),
        ) {
            Ok(Route::Manifest { tags, .. }) => Ok(tags),
            Ok(other) => panic!("{other:?}"),
            Err(error) => Err(error),
        };
        assert_eq!(tags(D, "tag=v1&tag=latest").unwrap(), ["v1", "latest"]);
        // Only a push by digest names further tags.
        assert!(tags("v1", "tag=latest").unwrap().is_empty());
        assert_eq!(
            tags(D, "tag=ok&tag=-bad"),
            Err(RouteError::TagInvalid("-bad".to_owned()))
        );
    }

    #[test]
    fn tags_and_referrers() {
        let route = parse(&Method::GET, "/v2/a/b/tags/list", Some("n=2&last=v1")).unwrap();
        assert_eq!(
            route,
            Route::Tags {
                repo: RepoPath {
                    namespace: None,
                    repository: "a/b".to_owned(),
                    path_name: "a/b".to_owned()
                },
                n: Some(2),
                last: Some("v1".to_owned())
            }
        );
        assert!(matches!(
            parse(&Method::GET, "/v2/a/tags/list", Some("n=x")),
            Err(RouteError::PaginationInvalid(_))
        ));
        let route = parse(
            &Method::GET,
            &format!("/v2/a/referrers/{D}"),
            Some("artifactType=application%2Fvnd.example%2Bjson"),
        )
        .unwrap();
        assert!(matches!(
            route,
            Route::Referrers { artifact_type: Some(ref t), .. } if t == "application/vnd.example+json"
        ));
    }

    #[test]
    fn namespaces_from_ns_path_hosts_and_aliases() {
        let route = parse(
            &Method::GET,
            "/v2/library/nginx/manifests/1.25",
            Some("ns=docker.io"),
        )
        .unwrap();
        let first = repo(&route);
        assert_eq!(
            first.namespace,
            Some(Namespace {
                name: "docker.io".to_owned(),
                via: NamespaceVia::Query
            })
        );
        assert_eq!(first.repository, "library/nginx");
        assert_eq!(
            first.url("blobs/uploads/x"),
            "/v2/library/nginx/blobs/uploads/x?ns=docker.io"
        );
        let route = parse(
            &Method::GET,
            "/v2/nginx/manifests/1",
            Some("ns=index.docker.io"),
        )
        .unwrap();
        assert_eq!(repo_ns(&route), Some("docker.io"));

        for (path, ns, repository) in [
            (
                "/v2/quay.io/coreos/etcd/manifests/v3",
                "quay.io",
                "coreos/etcd",
            ),
            ("/v2/localhost:5000/a/manifests/v3", "localhost:5000", "a"),
            (
                "/v2/localhost/team/app/manifests/v3",
                "localhost",
                "team/app",
            ),
            (
                "/v2/127.0.0.1:5000/a/b/manifests/v3",
                "127.0.0.1:5000",
                "a/b",
            ),
            // The form clients can write: references allow no `:` in their path.
            (
                "/v2/127.0.0.1_5000/a/b/manifests/v3",
                "127.0.0.1:5000",
                "a/b",
            ),
            ("/v2/localhost_5000/a/manifests/v3", "localhost:5000", "a"),
            (
                "/v2/registry.lan_443/team/app/manifests/v3",
                "registry.lan:443",
                "team/app",
            ),
        ] {
            let route = get(path).unwrap();
            assert_eq!(repo_ns(&route), Some(ns), "{path}");
            assert_eq!(repo(&route).repository, repository, "{path}");
            assert_eq!(
                repo(&route).namespace.as_ref().unwrap().via,
                NamespaceVia::PathHost
            );
        }
        // `_` is no port separator unless what precedes it names a host.
        for path in [
            "/v2/team_2/app/manifests/v3",
            "/v2/localhost_x/app/manifests/v3",
        ] {
            let route = get(path).unwrap();
            assert_eq!(repo_ns(&route), None, "{path}");
        }
        assert_eq!(host_path_component("127.0.0.1:5000"), "127.0.0.1_5000");
        assert_eq!(host_path_component("quay.io"), "quay.io");
        assert_eq!(
            host_of_path_component("127.0.0.1_5000").as_deref(),
            Some("127.0.0.1:5000")
        );
        assert_eq!(host_of_path_component("team_2"), None);
        // A single component is a repository, even with a dot.
        let route = get("/v2/my.app/manifests/v3").unwrap();
        assert_eq!(repo_ns(&route), None);
        assert_eq!(repo(&route).repository, "my.app");
        // With `ns`, the path is the repository as it is.
        let route = parse(
            &Method::GET,
            "/v2/quay.io/x/manifests/v3",
            Some("ns=ghcr.io"),
        )
        .unwrap();
        assert_eq!(repo_ns(&route), Some("ghcr.io"));
        assert_eq!(repo(&route).repository, "quay.io/x");

        let parser = RouteParser::new(["hub".to_owned()]);
        let route = parser
            .parse(&Method::GET, "/v2/hub/library/nginx/manifests/1", None)
            .unwrap();
        assert_eq!(
            repo(&route).namespace,
            Some(Namespace {
                name: "hub".to_owned(),
                via: NamespaceVia::PathAlias
            })
        );
        assert_eq!(repo(&route).repository, "library/nginx");
        assert_eq!(repo(&route).url("x"), "/v2/hub/library/nginx/x");

        assert!(matches!(
            parse(&Method::GET, "/v2/a/manifests/v3", Some("ns=bad host")),
            Err(RouteError::NameInvalid { .. })
        ));
        assert_eq!(normalise_host("nohost"), None);
        assert!(matches!(
            get("/v2/bad_host.io:x/a/manifests/v3"),
            Err(RouteError::NameInvalid { .. })
        ));
    }

    #[test]
    fn host_variants_are_canonical_or_refused() {
        for (variant, canonical) in [
            ("DOCKER.IO", "docker.io"),
            ("docker.io.", "docker.io"),
            ("Registry-1.Docker.IO.", "docker.io"),
            ("QUAY.io:5000", "quay.io:5000"),
            ("127.0.0.1:15801", "127.0.0.1:15801"),
            ("LOCALHOST:5000", "localhost:5000"),
            ("[::1]:5000", "[::1]:5000"),
            ("[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"),
            ("[FE80::A]:443", "[fe80::a]:443"),
        ] {
            assert_eq!(
                normalise_host(variant).as_deref(),
                Some(canonical),
                "{variant}"
            );
        }
        for refused in [
            "127.000.000.001",
            "127.0.0.01",
            "2130706433",
            "0x7f000001",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1:015801",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:+1",
            "docker.io..",
            "a:1:2",
            "[::1]5000",
            "[::g]",
            "",
        ] {
            assert_eq!(normalise_host(refused), None, "{refused}");
        }

        // Each spelling reaches the same namespace (or is refused) by `?ns=` and by path.
        let query = |ns: &str| {
            parse(
                &Method::PUT,
                "/v2/library/nginx/manifests/1",
                Some(&format!("ns={ns}")),
            )
            .map(|route| repo_ns(&route).map(str::to_owned))
        };
        assert_eq!(query("DOCKER.IO").unwrap().as_deref(), Some("docker.io"));
        assert_eq!(query("docker.io.").unwrap().as_deref(), Some("docker.io"));
        assert!(matches!(
            query("127.000.000.001:15801"),
            Err(RouteError::NameInvalid { .. })
        ));
        assert!(matches!(
            query("127.0.0.1:015801"),
            Err(RouteError::NameInvalid { .. })
        ));
        let path = |prefix: &str| {
            get(&format!("/v2/{prefix}/library/nginx/manifests/1"))
                .map(|route| repo_ns(&route).map(str::to_owned))
        };
        assert_eq!(path("DOCKER.IO").unwrap().as_deref(), Some("docker.io"));
        assert_eq!(path("docker.io.").unwrap().as_deref(), Some("docker.io"));
        assert_eq!(
            path("127.0.0.1_15801").unwrap().as_deref(),
            Some("127.0.0.1:15801")
        );
        for refused in ["127.000.000.001_15801", "127.0.0.1_015801", "0x7f.0.0.1"] {
            assert!(
                matches!(path(refused), Err(RouteError::NameInvalid { .. })),
                "{refused}"
            );
        }
    }

    fn repo_ns(route: &Route) -> Option<&str> {
        repo(route).namespace.as_ref().map(|ns| ns.name.as_str())
    }
}
