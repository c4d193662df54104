//! `sealer registry mirror-config`: the files that make container runtimes pull through this
//! registry, generated from the configured upstreams. Pure: text in, text out; the CLI
//! writes the files.
//!
//! Each runtime names the upstream differently (REFERENCE §2), and the registry routes all
//! three ways:
//!
//! * **containerd** — one `certs.d/<upstream>/hosts.toml` per upstream, the registry as a
//!   `[host."<endpoint>"]` with `pull` and `resolve`. containerd appends `?ns=<upstream>`
//!   to every request it sends to a mirror.
//! * **CRI-O, podman, skopeo, buildah** — one `registries.conf.d/` drop-in with a
//!   `[[registry]]` per upstream whose `[[registry.mirror]]` is `<endpoint host>/<upstream>`:
//!   the upstream travels as the first path component (`/v2/quay.io/coreos/etcd/…`).
//! * **Docker Engine** — two mechanisms, both written:
//!   - `certs.d/<upstream>/hosts.toml` under `/etc/docker`, the same files as containerd's,
//!     which Docker Engine 28.0 and later reads when it pulls through the containerd image
//!     store (moby PR #47380; the default store of new installs from 29.0): every upstream
//!     is mirrored, with `?ns=` as from containerd.
//!   - `daemon.json` with `registry-mirrors` for the engines that do not read them (27.x
//!     and older, or the classic graphdriver store). Docker applies it to Docker Hub only
//!     (moby#18818), and sends without naming the registry: the docker.io upstream must be
//!     the registry's `default_upstream`. Every other upstream is reached there by prefix
//!     names (`<endpoint host>/quay.io/coreos/etcd`), listed in the notes.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sealer_fs_abstraction::error_chain;
use serde::Deserialize as _;

use crate::config::{ServerConfig, UpstreamConfig, UpstreamUrl};
use crate::route::{host_path_component, normalise_host};

/// Docker Hub's registry host, as image references name it.
const DOCKER_HUB: &str = "docker.io";

/// The name of the CRI-O/podman drop-in file.
pub const REGISTRIES_CONF_DROP_IN: &str = "registries.conf.d/50-sealer-mirror.conf";

/// Why no configuration can be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorConfigError {
    /// The endpoint is not `http(s)://HOST[:PORT]`.
    #[error("endpoint {text:?}: {reason}")]
    Endpoint {
        /// As given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// An `--upstream` is not a registry host or URL.
    #[error("upstream {text:?}: {reason}")]
    Upstream {
        /// As given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// There is nothing to mirror.
    #[error("no upstreams: the configuration lists none")]
    NoUpstreams,
}

/// The container runtime to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (and everything on its CRI plugin: kubelet, crictl, nerdctl).
    Containerd,
    /// CRI-O, and podman/skopeo/buildah, which share `registries.conf`.
    Crio,
    /// Docker Engine.
    Docker,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Containerd => "containerd",
            Self::Crio => "crio",
            Self::Docker => "docker",
        })
    }
}

/// Where nodes reach this registry: `http://HOST[:PORT]` or `https://HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`, a registry host (with a `.` or a port, or `localhost`): image names
    /// start with it.
    pub host: String,
}

impl Endpoint {
    /// Whether the endpoint is plain HTTP.
    pub fn is_plain_http(&self) -> bool {
        self.scheme == "http"
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)
    }
}

impl FromStr for Endpoint {
    type Err = MirrorConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| MirrorConfigError::Endpoint {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected http://HOST[:PORT] or https://HOST[:PORT]"))?;
        if scheme != "http" && scheme != "https" {
            return Err(invalid("the scheme must be http or https"));
        }
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.contains(['/', '?', '#', '@']) {
            return Err(invalid(
                "a registry endpoint is a scheme and a host, without path, query or user",
            ));
        }
        let looks_like_registry = host.contains(['.', ':']) || host == "localhost";
        match normalise_host(host) {
            Some(normalised) if looks_like_registry && normalised == host => Ok(Self {
                scheme: scheme.to_owned(),
                host: host.to_owned(),
            }),
            Some(_) if looks_like_registry => Err(invalid(
                "that is Docker Hub's address; give the address of the sealer registry",
            )),
            _ => Err(invalid(
                "the host needs a `.` or a port, or is `localhost` (image names such as \
                 HOST/quay.io/x are read as Docker Hub names otherwise)",
            )),
        }
    }
}

/// One upstream as mirror configurations need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorUpstream {
    /// The alias in the registry's configuration (`default_upstream` names it).
    pub name: String,
    /// Where the upstream is (`https://registry-1.docker.io`), the fallback of clients.
    pub url: UpstreamUrl,
    /// Whether the registry verifies it with a private CA (`ca_file`): nodes falling back to
    /// it directly need that CA too.
    pub private_ca: bool,
}

impl MirrorUpstream {
    /// The registry host image references use for it (`docker.io` for
    /// `registry-1.docker.io`): containerd's `ns`, the path prefix, the `certs.d` directory.
    pub fn registry_host(&self) -> String {
        normalise_host(&self.url.host).unwrap_or_else(|| self.url.host.clone())
    }

    /// Whether it is spoken to over plain HTTP.
    fn is_plain_http(&self) -> bool {
        self.url.scheme == "http"
    }
}

impl From<&UpstreamConfig> for MirrorUpstream {
    fn from(upstream: &UpstreamConfig) -> Self {
        Self {
            name: upstream.name.clone(),
            url: upstream.url.clone(),
            private_ca: upstream.ca_file.is_some(),
        }
    }
}

/// Whether `host[:port]` names this machine (`localhost`, `127.0.0.0/8`, `[::1]`).
fn is_loopback_host(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.split(':').next().unwrap_or(authority),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for MirrorUpstream {
    type Err = MirrorConfigError;

    /// `quay.io` (HTTPS assumed, plain HTTP for a loopback host such as `127.0.0.1:5000`,
    /// as registry clients do), `https://quay.io` or `http://10.0.0.5:5000`; the name is
    /// the host.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let url_text = if text.contains("://") {
            text.to_owned()
        } else if is_loopback_host(text) {
            format!("http://{text}")
        } else {
            format!("https://{text}")
        };
        let deserializer =
            serde::de::value::StrDeserializer::<serde::de::value::Error>::new(&url_text);
        let url = UpstreamUrl::deserialize(deserializer).map_err(|error| {
            MirrorConfigError::Upstream {
                text: text.to_owned(),
                reason: error_chain(&error),
            }
        })?;
        let upstream = Self {
            name: url.host.clone(),
            url,
            private_ca: false,
        };
        let host = upstream.registry_host();
        if !(host.contains(['.', ':']) || host == "localhost") {
            return Err(MirrorConfigError::Upstream {
                text: text.to_owned(),
                reason: "not a registry host: it needs a `.` or a port, or is `localhost`"
                    .to_owned(),
            });
        }
        Ok(upstream)
    }
}

/// One generated file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorFile {
    /// Relative to the runtime's configuration directory (`/etc/containerd`,
    /// `/etc/containers`, `/etc/docker`).
    pub path: PathBuf,
    /// The whole content.
    pub content: String,
}

/// What [`generate`] produces: files, and notes for the person installing them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorConfig {
    /// The files, in upstream order.
    pub files: Vec<MirrorFile>,
    /// Where the files go, what to restart, and what the files cannot express.
    pub notes: Vec<String>,
}

/// What a mirror configuration is made from: the upstreams a registry configuration names
/// (plus any added), its default upstream, and whether it admits any other registry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MirrorSources {
    /// The upstreams, in order.
    pub upstreams: Vec<MirrorUpstream>,
    /// The alias of the upstream for un-prefixed names (`default_upstream`).
    pub default_upstream: Option<String>,
    /// Whether the registry admits upstreams by `upstream_policy` (see [`generate_for_any`]).
    pub any_registry: bool,
}

impl MirrorSources {
    /// The sources of a registry configuration.
    pub fn from_server_config(config: &ServerConfig) -> Self {
        Self {
            upstreams: config.upstreams.iter().map(Into::into).collect(),
            default_upstream: config.default_upstream.clone(),
            any_registry: config.upstream_policy.is_some(),
        }
    }

    /// Adds `upstream` unless an upstream of the same registry host is there already.
    pub fn add_if_new(&mut self, upstream: MirrorUpstream) {
        let host = upstream.registry_host();
        if !self
            .upstreams
            .iter()
            .any(|known| known.registry_host() == host)
        {
            self.upstreams.push(upstream);
        }
    }

    /// The configuration of `runtime` for these sources ([`generate_for_any`]).
    pub fn generate(
        &self,
        runtime: Runtime,
        endpoint: &Endpoint,
    ) -> Result<MirrorConfig, MirrorConfigError> {
        generate_for_any(
            runtime,
            &self.upstreams,
            self.default_upstream.as_deref(),
            endpoint,
            self.any_registry,
        )
    }
}

/// The configuration of `runtime` for the upstreams of a registry configuration.
pub fn for_server_config(
    runtime: Runtime,
    config: &ServerConfig,
    endpoint: &Endpoint,
) -> Result<MirrorConfig, MirrorConfigError> {
    MirrorSources::from_server_config(config).generate(runtime, endpoint)
}

/// [`generate`], plus, when `any_registry` (the registry admits upstreams by
/// `upstream_policy`), what sends every other registry through it as well: containerd's
/// (and Docker's) `certs.d/_default/hosts.toml`, which containerd reads for a registry
/// without a directory of its own; CRI-O has no such default, its notes give the prefix
/// form. With `any_registry`, no listed upstream is needed.
pub fn generate_for_any(
    runtime: Runtime,
    upstreams: &[MirrorUpstream],
    default_upstream: Option<&str>,
    endpoint: &Endpoint,
    any_registry: bool,
) -> Result<MirrorConfig, MirrorConfigError> {
    let mut config = match generate(runtime, upstreams, default_upstream, endpoint) {
        Ok(config) => config,
        Err(MirrorConfigError::NoUpstreams) if any_registry => MirrorConfig::default(),
        Err(error) => return Err(error),
    };
    if !any_registry {
        return Ok(config);
    }
    match runtime {
        Runtime::Containerd | Runtime::Docker => {
            let mut text = header(runtime, endpoint);
            text.push_str(
                "# Every registry without a directory of its own here is pulled through the \
                 sealer registry\n# first (it admits them by `upstream_policy`), then from the \
                 registry itself.\n# No `server`: the fallback is the registry the image names.\n",
            );
            text.push_str(&host_section(endpoint));
            config.files.push(MirrorFile {
                path: PathBuf::from("certs.d").join("_default").join("hosts.toml"),
                content: text,
            });
            config.notes.push(
                "certs.d/_default/hosts.toml sends every other registry through the sealer \
                 registry (containerd 1.6 and later, Docker Engine 28.0 and later on the \
                 containerd image store); the registry answers only those its \
                 upstream_policy admits, the runtime then falls back to the registry itself"
                    .to_owned(),
            );
        }
        Runtime::Crio => config.notes.push(format!(
            "CRI-O, podman and skopeo have no default mirror for registries not listed: pull \
             a registry the upstream_policy admits by its prefix name, \
             {}/<registry host>/<repo> (a host's :port written _port)",
            endpoint.host
        )),
    }
    Ok(config)
}

/// The configuration that makes `runtime` pull `upstreams` through the registry at
/// `endpoint`. `default_upstream` is the registry's (its name), when known: Docker needs the
/// docker.io upstream to be it. Upstreams with the same registry host are listed once.
pub fn generate(
    runtime: Runtime,
    upstreams: &[MirrorUpstream],
    default_upstream: Option<&str>,
    endpoint: &Endpoint,
) -> Result<MirrorConfig, MirrorConfigError> {
    let mut seen = BTreeSet::new();
    let mut notes = Vec::new();
    let mut unique = Vec::new();
    for upstream in upstreams {
        let host = upstream.registry_host();
        if seen.insert(host.clone()) {
            unique.push(upstream);
        } else {
            notes.push(format!(
                "upstream {:?} ({}) repeats the registry host {host}: clients cannot tell \
                 them apart, so only the first is configured",
                upstream.name, upstream.url
            ));
        }
    }
    if unique.is_empty() {
        return Err(MirrorConfigError::NoUpstreams);
    }
    let mut config = match runtime {
        Runtime::Containerd => containerd(&unique, endpoint),
        Runtime::Crio => crio(&unique, endpoint),
        Runtime::Docker => docker(&unique, default_upstream, endpoint),
    };
    for upstream in &unique {
        if upstream.private_ca {
            let host = upstream.registry_host();
            let place = match runtime {
                Runtime::Containerd => format!("`ca` in certs.d/{host}/hosts.toml"),
                Runtime::Crio => format!("/etc/containers/certs.d/{host}/ca.crt"),
                Runtime::Docker => format!("/etc/docker/certs.d/{host}/ca.crt"),
            };
            notes.push(format!(
                "the registry verifies upstream {host} with a private CA (`ca_file`): nodes \
                 that fall back to it directly need that CA too ({place})"
            ));
        }
    }
    config.notes.extend(notes);
    Ok(config)
}

fn header(runtime: Runtime, endpoint: &Endpoint) -> String {
    format!(
        "# Generated by `sealer registry mirror-config --runtime {runtime} --endpoint {endpoint}`.\n"
    )
}

fn containerd(upstreams: &[&MirrorUpstream], endpoint: &Endpoint) -> MirrorConfig {
    let notes = vec![
        "install under /etc/containerd (files certs.d/<upstream>/hosts.toml); the CRI plugin \
         reads them when its registry `config_path` is /etc/containerd/certs.d, without a \
         restart (`ctr` needs --hosts-dir /etc/containerd/certs.d)"
            .to_owned(),
    ];
    MirrorConfig {
        files: hosts_tomls(Runtime::Containerd, upstreams, endpoint),
        notes,
    }
}

/// One containerd-style `certs.d/<upstream>/hosts.toml` per upstream (containerd's, and
/// Docker's own since Engine 28.0), headed with `runtime`'s command line.
fn hosts_tomls(
    runtime: Runtime,
    upstreams: &[&MirrorUpstream],
    endpoint: &Endpoint,
) -> Vec<MirrorFile> {
    let mut files = Vec::new();
    for upstream in upstreams {
        let host = upstream.registry_host();
        let mut text = header(runtime, endpoint);
        text.push_str(&format!(
            "# Pulls of {host}/… try the sealer registry first, then {host} itself.\n\
             # containerd adds `?ns={host}` to the registry's requests; the registry routes on it.\n\
             server = {}\n",
            toml_string(&upstream.url.to_string())
        ));
        if upstream.private_ca {
            text.push_str(
                "# The registry verifies this upstream with a private CA (`ca_file`): add \
                 `ca = \"/path/to/ca.pem\"`\n# here too, for the direct fallback.\n",
            );
        }
        text.push_str(&host_section(endpoint));
        files.push(MirrorFile {
            path: PathBuf::from("certs.d").join(&host).join("hosts.toml"),
            content: text,
        });
    }
    files
}

/// A hosts.toml's `[host."…"]` section for the sealer registry at `endpoint`, with what
/// its scheme asks of the node.
fn host_section(endpoint: &Endpoint) -> String {
    let mut text = format!(
        "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
        toml_string(&endpoint.to_string())
    );
    if endpoint.is_plain_http() {
        text.push_str(
            "  # Plain HTTP (the http:// scheme): no TLS, so neither `ca` nor `skip_verify` \
             applies.\n  # Only on a network you trust.\n",
        );
    } else {
        text.push_str(
            "  # A certificate from a private CA: add `ca = \"/path/to/ca.pem\"` \
             (`skip_verify = true` only for tests).\n",
        );
    }
    text
}

fn crio(upstreams: &[&MirrorUpstream], endpoint: &Endpoint) -> MirrorConfig {
    let mut text = header(Runtime::Crio, endpoint);
    text.push_str(
        "# Each upstream's images are pulled from the sealer registry first (the upstream\n\
         # travels as the first path component of the mirror's location), then from the\n\
         # upstream itself. A [[registry]] here replaces one with the same prefix in\n\
         # registries.conf.\n",
    );
    for upstream in upstreams {
        let host = upstream.registry_host();
        text.push_str(&format!(
            "\n[[registry]]\nprefix = {host}\nlocation = {host}\n",
            host = toml_string(&host)
        ));
        if upstream.is_plain_http() {
            text.push_str("insecure = true\n");
        }
        text.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = {}\n",
            toml_string(&format!("{}/{}", endpoint.host, host_path_component(&host)))
        ));
        if endpoint.is_plain_http() {
            text.push_str("insecure = true\n");
        }
    }
    let notes = vec![format!(
        "install as /etc/containers/{REGISTRIES_CONF_DROP_IN}; podman, skopeo and buildah \
         read it on their next run, CRI-O on a reload (systemctl reload crio)"
    )];
    MirrorConfig {
        files: vec![MirrorFile {
            path: PathBuf::from(REGISTRIES_CONF_DROP_IN),
            content: text,
        }],
        notes,
    }
}

fn docker(
    upstreams: &[&MirrorUpstream],
    default_upstream: Option<&str>,
    endpoint: &Endpoint,
) -> MirrorConfig {
    let mut notes = Vec::new();
    let mut daemon = serde_json::Map::new();
    let hub = upstreams
        .iter()
        .find(|upstream| upstream.registry_host() == DOCKER_HUB);
    match hub {
        Some(hub) => {
            daemon.insert(
                "registry-mirrors".to_owned(),
                serde_json::json!([endpoint.to_string()]),
            );
            if default_upstream != Some(hub.name.as_str()) {
                notes.push(format!(
                    "Docker sends Docker Hub pulls to a mirror without naming the registry \
                     (no `ns`, no prefix): set `default_upstream: {}` in the registry's \
                     configuration, or they are looked up in its local namespace",
                    hub.name
                ));
            }
        }
        None => notes.push(
            "no docker.io upstream: `registry-mirrors` (which Docker applies to Docker Hub \
             only) is left out"
                .to_owned(),
        ),
    }
    if endpoint.is_plain_http() {
        daemon.insert(
            "insecure-registries".to_owned(),
            serde_json::json!([endpoint.host]),
        );
    }
    let others: Vec<String> = upstreams
        .iter()
        .map(|upstream| upstream.registry_host())
        .filter(|host| host != DOCKER_HUB)
        .collect();
    if !others.is_empty() {
        let examples: Vec<String> = others
            .iter()
            .map(|host| {
                format!(
                    "{host}/<repo> as {}/{}/<repo>",
                    endpoint.host,
                    host_path_component(host)
                )
            })
            .collect();
        notes.push(format!(
            "on engines that do not read hosts.toml, Docker mirrors only Docker Hub \
             (moby#18818): pull the other upstreams by prefix names: {}",
            examples.join(", ")
        ));
    }
    let mut files = hosts_tomls(Runtime::Docker, upstreams, endpoint);
    notes.insert(
        0,
        "install certs.d/<upstream>/hosts.toml under /etc/docker: Docker Engine 28.0 and later \
         reads them at each pull when it uses the containerd image store (the default of new \
         installs from 29.0; on 28.x `\"features\": {\"containerd-snapshotter\": true}` in \
         daemon.json), and then mirrors every upstream listed, Docker Hub included; Docker \
         27.x and older, and the classic graphdriver store, ignore them and use daemon.json"
            .to_owned(),
    );
    if daemon.is_empty() {
        notes.push(
            "nothing to put in daemon.json: an https endpoint needs no entry for prefix names"
                .to_owned(),
        );
    } else {
        notes.insert(
            1,
            "merge daemon.json into /etc/docker/daemon.json (it replaces the whole file), then \
             restart dockerd (systemctl restart docker): `registry-mirrors` serves Docker Hub \
             on engines of every version, `insecure-registries` lets them speak plain HTTP to \
             the registry"
                .to_owned(),
        );
        let mut content =
            serde_json::to_string_pretty(&serde_json::Value::Object(daemon)).unwrap_or_default();
        content.push('\n');
        files.push(MirrorFile {
            path: PathBuf::from("daemon.json"),
            content,
        });
    }
    MirrorConfig { files, notes }
}

/// A TOML basic string (JSON's string syntax is a subset of it).
fn toml_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn upstreams() -> Vec<MirrorUpstream> {
        let config = ServerConfig::parse(
            "upstreams:\n\
             \x20 - name: hub\n    url: https://registry-1.docker.io\n\
             \x20 - name: quay\n    url: https://quay.io\n\
             \x20 - name: lab\n    url: http://10.0.0.5:5000\n    insecure: true\n\
             \x20 - name: private\n    url: https://registry.lab.example\n    ca_file: ca.pem\n\
             default_upstream: hub\n",
            Path::new("registry.yaml"),
        )
        .unwrap();
        config.upstreams.iter().map(Into::into).collect()
    }

    fn http() -> Endpoint {
        "http://10.0.0.2:5000".parse().unwrap()
    }

    fn https() -> Endpoint {
        "https://mirror.example.com/".parse().unwrap()
    }

    fn toml(file: &MirrorFile) -> toml::Table {
        file.content
            .parse()
            .unwrap_or_else(|error| panic!("{}: {error}\n{}", file.path.display(), file.content))
    }

    #[test]
    fn endpoints_are_a_scheme_and_a_registry_host() {
        let endpoint = http();
        assert_eq!(
            (endpoint.scheme.as_str(), endpoint.host.as_str()),
            ("http", "10.0.0.2:5000")
        );
        assert_eq!(https().to_string(), "https://mirror.example.com");
        assert!("localhost:5000".parse::<Endpoint>().is_err());
        assert!("ftp://mirror.example.com".parse::<Endpoint>().is_err());
        assert!("http://mirror.example.com/v2".parse::<Endpoint>().is_err());
        assert!(
            "http://user@mirror.example.com"
                .parse::<Endpoint>()
                .is_err()
        );
        let error = "http://mirror".parse::<Endpoint>().unwrap_err();
        assert!(error.to_string().contains("needs a `.`"), "{error}");
        assert!("http://localhost".parse::<Endpoint>().is_ok());
        assert!("https://index.docker.io".parse::<Endpoint>().is_err());
    }

    #[test]
    fn upstreams_from_the_command_line() {
        let quay: MirrorUpstream = "quay.io".parse().unwrap();
        assert_eq!(quay.url.to_string(), "https://quay.io");
        assert_eq!(quay.registry_host(), "quay.io");
        let hub: MirrorUpstream = "https://registry-1.docker.io".parse().unwrap();
        assert_eq!(hub.registry_host(), "docker.io");
        let lab: MirrorUpstream = "http://127.0.0.1:5001".parse().unwrap();
        assert_eq!(lab.registry_host(), "127.0.0.1:5001");
        // A bare loopback host is plain HTTP, as registry clients treat it; others HTTPS.
        for (text, plain) in [
            ("127.0.0.1:5001", true),
            ("localhost:5000", true),
            ("[::1]:5000", true),
            ("10.0.0.5:5000", false),
            ("quay.io", false),
        ] {
            let upstream: MirrorUpstream = text.parse().unwrap();
            assert_eq!(upstream.is_plain_http(), plain, "{text}");
        }
        assert!("quay.io/coreos".parse::<MirrorUpstream>().is_err());
        assert!("ftp://quay.io".parse::<MirrorUpstream>().is_err());
        assert!("quay".parse::<MirrorUpstream>().is_err());
    }

    #[test]
    fn containerd_gets_one_hosts_toml_per_upstream() {
        let config = generate(Runtime::Containerd, &upstreams(), Some("hub"), &http()).unwrap();
        let paths: Vec<_> = config.files.iter().map(|file| file.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "certs.d/docker.io/hosts.toml",
                "certs.d/quay.io/hosts.toml",
                "certs.d/10.0.0.5:5000/hosts.toml",
                "certs.d/registry.lab.example/hosts.toml",
            ]
            .map(PathBuf::from)
        );
        let hub = toml(&config.files[0]);
        assert_eq!(hub["server"].as_str(), Some("https://registry-1.docker.io"));
        assert!(hub.get("skip_verify").is_none());
        let host = hub["host"]["http://10.0.0.2:5000"].as_table().unwrap();
        let capabilities: Vec<_> = host["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_str().unwrap())
            .collect();
        assert_eq!(capabilities, ["pull", "resolve"]);
        assert_eq!(
            host.len(),
            1,
            "no push, no skip_verify for plain HTTP: {host:?}"
        );
        assert!(config.files[0].content.contains("?ns=docker.io"));
        assert!(config.files[0].content.contains("Plain HTTP"));
        let lab = toml(&config.files[2]);
        assert_eq!(lab["server"].as_str(), Some("http://10.0.0.5:5000"));
        let private = toml(&config.files[3]);
        assert!(private.get("skip_verify").is_none());
        assert!(config.files[3].content.contains("private CA"));
        assert!(config.notes.join("\n").contains("registry.lab.example"));
        assert!(config.notes[0].contains("config_path"));

        let config = generate(Runtime::Containerd, &upstreams(), Some("hub"), &https()).unwrap();
        let quay = toml(&config.files[1]);
        assert!(quay["host"]["https://mirror.example.com"].is_table());
        assert!(config.files[1].content.contains("ca = "));
    }

    #[test]
    fn crio_gets_one_drop_in_with_prefix_mirrors() {
        let config = generate(Runtime::Crio, &upstreams(), None, &http()).unwrap();
        assert_eq!(config.files.len(), 1);
        assert_eq!(config.files[0].path, Path::new(REGISTRIES_CONF_DROP_IN));
        let conf = toml(&config.files[0]);
        let registries = conf["registry"].as_array().unwrap();
        assert_eq!(registries.len(), 4);
        let expected = [
            ("docker.io", false),
            ("quay.io", false),
            ("10.0.0.5:5000", true),
            ("registry.lab.example", false),
        ];
        for (registry, (host, insecure)) in registries.iter().zip(expected) {
            assert_eq!(registry["prefix"].as_str(), Some(host));
            assert_eq!(registry["location"].as_str(), Some(host));
            assert_eq!(
                registry.get("insecure").and_then(|value| value.as_bool()),
                insecure.then_some(true),
                "{registry:?}"
            );
            let mirrors = registry["mirror"].as_array().unwrap();
            assert_eq!(mirrors.len(), 1);
            // References allow no `:` in their path: a port travels as `_`.
            let location = format!("10.0.0.2:5000/{}", host.replace(':', "_"));
            assert_eq!(mirrors[0]["location"].as_str(), Some(location.as_str()));
            assert_eq!(mirrors[0]["insecure"].as_bool(), Some(true));
        }

        let config = generate(Runtime::Crio, &upstreams()[..1], None, &https()).unwrap();
        let conf = toml(&config.files[0]);
        let mirror = &conf["registry"][0]["mirror"][0];
        assert_eq!(
            mirror["location"].as_str(),
            Some("mirror.example.com/docker.io")
        );
        assert!(mirror.get("insecure").is_none());
        assert!(config.notes[0].contains("/etc/containers/registries.conf.d/"));
    }

    #[test]
    fn docker_mirrors_docker_hub_and_lists_prefix_names() {
        let config = generate(Runtime::Docker, &upstreams(), Some("hub"), &http()).unwrap();
        // Every upstream's hosts.toml (Docker >= 28, containerd store), as containerd gets
        // them but for the header, then daemon.json.
        let containerd = generate(Runtime::Containerd, &upstreams(), Some("hub"), &http()).unwrap();
        assert_eq!(config.files.len(), containerd.files.len() + 1);
        for (docker, containerd) in config.files.iter().zip(&containerd.files) {
            assert_eq!(docker.path, containerd.path);
            assert_eq!(toml(docker), toml(containerd));
            assert!(
                docker.content.contains("--runtime docker"),
                "{}",
                docker.content
            );
        }
        let daemon_file = config.files.last().unwrap();
        assert_eq!(daemon_file.path, Path::new("daemon.json"));
        let daemon: serde_json::Value = serde_json::from_str(&daemon_file.content).unwrap();
        assert_eq!(
            daemon,
            serde_json::json!({
                "registry-mirrors": ["http://10.0.0.2:5000"],
                "insecure-registries": ["10.0.0.2:5000"],
            })
        );
        let notes = config.notes.join("\n");
        assert!(notes.contains("moby#18818"), "{notes}");
        assert!(notes.contains("Docker Engine 28.0 and later"), "{notes}");
        assert!(notes.contains("27.x and older"), "{notes}");
        assert!(
            notes.contains("quay.io/<repo> as 10.0.0.2:5000/quay.io/<repo>"),
            "{notes}"
        );
        assert!(
            notes.contains("10.0.0.2:5000/10.0.0.5_5000/<repo>"),
            "{notes}"
        );
        assert!(!notes.contains("default_upstream"), "{notes}");

        // Docker Hub not the default upstream: a warning.
        let config = generate(Runtime::Docker, &upstreams(), None, &https()).unwrap();
        let daemon: serde_json::Value =
            serde_json::from_str(&config.files.last().unwrap().content).unwrap();
        assert_eq!(
            daemon,
            serde_json::json!({"registry-mirrors": ["https://mirror.example.com"]})
        );
        assert!(config.notes.join("\n").contains("default_upstream: hub"));

        // No Docker Hub upstream: nothing for registry-mirrors; over https no daemon.json.
        let config = generate(Runtime::Docker, &upstreams()[1..2], None, &https()).unwrap();
        let paths: Vec<_> = config.files.iter().map(|file| file.path.clone()).collect();
        assert_eq!(paths, [Path::new("certs.d/quay.io/hosts.toml")]);
        assert!(
            config
                .notes
                .join("\n")
                .contains("mirror.example.com/quay.io/<repo>")
        );
        let config = generate(Runtime::Docker, &upstreams()[1..2], None, &http()).unwrap();
        let daemon: serde_json::Value =
            serde_json::from_str(&config.files.last().unwrap().content).unwrap();
        assert_eq!(
            daemon,
            serde_json::json!({"insecure-registries": ["10.0.0.2:5000"]})
        );
    }

    #[test]
    fn a_policy_adds_a_default_hosts_toml_and_needs_no_listed_upstream() {
        let config = ServerConfig::parse(
            "upstream_policy:\n  admit: [\"quay.io\"]\n",
            Path::new("registry.yaml"),
        )
        .unwrap();
        for runtime in [Runtime::Containerd, Runtime::Docker] {
            let generated = for_server_config(runtime, &config, &http()).unwrap();
            let paths: Vec<_> = generated
                .files
                .iter()
                .map(|file| file.path.clone())
                .collect();
            assert_eq!(
                paths,
                [Path::new("certs.d/_default/hosts.toml")],
                "{runtime}"
            );
            let hosts = toml(&generated.files[0]);
            assert!(hosts.get("server").is_none(), "{hosts:?}");
            assert!(
                hosts["host"].get("http://10.0.0.2:5000").is_some(),
                "{hosts:?}"
            );
            assert!(generated.notes.join("\n").contains("_default"), "{runtime}");
        }
        let crio = for_server_config(Runtime::Crio, &config, &http()).unwrap();
        assert!(crio.files.is_empty());
        assert!(
            crio.notes
                .join("\n")
                .contains("10.0.0.2:5000/<registry host>/<repo>"),
            "{:?}",
            crio.notes
        );
        // Without a policy, nothing listed is still an error.
        let plain = ServerConfig::parse("{}", Path::new("registry.yaml")).unwrap();
        assert_eq!(
            for_server_config(Runtime::Containerd, &plain, &http()),
            Err(MirrorConfigError::NoUpstreams)
        );
    }

    #[test]
    fn repeated_hosts_are_configured_once_and_no_upstreams_is_an_error() {
        let mut list = upstreams();
        list.push("https://index.docker.io".parse().unwrap());
        let config = generate(Runtime::Containerd, &list, None, &http()).unwrap();
        assert_eq!(config.files.len(), 4);
        assert!(
            config
                .notes
                .join("\n")
                .contains("repeats the registry host docker.io")
        );
        assert_eq!(
            generate(Runtime::Crio, &[], None, &http()),
            Err(MirrorConfigError::NoUpstreams)
        );
    }

    #[test]
    fn a_server_configuration_is_used_as_it_is() {
        let config = ServerConfig::parse(
            "upstreams:\n  - name: ghcr\n    url: https://ghcr.io\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        let generated = for_server_config(Runtime::Containerd, &config, &http()).unwrap();
        assert_eq!(
            generated.files[0].path,
            Path::new("certs.d/ghcr.io/hosts.toml")
        );
        assert_eq!(
            for_server_config(Runtime::Containerd, &ServerConfig::default(), &http()),
            Err(MirrorConfigError::NoUpstreams)
        );
    }
}
