//! Image references (`[registry/]repository[:tag][@digest]`), normalised as Docker does:
//! `nginx` → `docker.io/library/nginx:latest`, `index.docker.io` → `docker.io`.

use std::fmt;
use std::str::FromStr;

use sealer_fs_abstraction::error_chain;

use crate::digest::Digest;

/// The registry of names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of names without a tag or digest.
pub const DEFAULT_TAG: &str = "latest";

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    /// The rejected input.
    pub input: String,
    /// What was expected.
    pub reason: String,
}

impl Reference {
    /// Builds a reference from parts (validated as by [`str::parse`]).
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Self, ReferenceError> {
        let mut text = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = digest {
            text.push('@');
            text.push_str(&digest.to_string());
        }
        text.parse()
    }

    /// The registry host (with port), e.g. `docker.io`, `quay.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path, e.g. `library/nginx`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` is filled in when neither tag nor digest is given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same reference with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        Self::new(&self.registry, &self.repository, Some(tag), None)
    }

    /// The same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// Parses a reference a user typed or pasted, which may carry a containers-image
    /// transport prefix (skopeo's and podman's spelling): `docker://host/x:1` is `host/x:1`;
    /// another transport (`oci:`, `docker-archive:`, …) is refused with what to do instead.
    /// Strings found in content are parsed with [`str::parse`], where no prefix is accepted.
    pub fn parse_user_input(input: &str) -> Result<Self, ReferenceError> {
        if let Some(rest) = input.strip_prefix("docker://") {
            return rest.parse();
        }
        if let Some((transport, _)) = input.split_once(':')
            && let Some(hint) = transport_hint(transport)
            // `oci:5000/x` is a host and port, not a transport.
            && !input[transport.len() + 1..].starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(ReferenceError {
                input: input.to_owned(),
                reason: format!(
                    "{transport}: is a transport, not a registry; only docker:// (a registry) is \
                     accepted here: {hint}"
                ),
            });
        }
        input.parse()
    }

    /// The name under which a store tags this image: `registry/repository:tag`, or `None`
    /// for a digest-only reference.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.name()))
    }
}

/// What to use instead of a containers-image transport other than `docker://`.
fn transport_hint(transport: &str) -> Option<&'static str> {
    Some(match transport {
        "oci" => "for an OCI layout directory use `sealer load -i DIR`",
        "oci-archive" | "docker-archive" => "for an archive use `sealer load -i FILE`",
        "dir" | "containers-storage" | "docker-daemon" | "ostree" | "sif" | "tarball" => {
            "copy the image into a registry or an archive first (skopeo copy)"
        }
        _ => return None,
    })
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| ReferenceError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(invalid("it is empty"));
        }
        if input.len() > 4096 {
            return Err(invalid("it is longer than 4096 characters"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|error| invalid(&error_chain(&error)))?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |at| at + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(at) => (&rest[..last_slash + at], Some(&rest[last_slash + at + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag).map_err(&invalid)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, remainder.to_owned())
            }
            _ => (DEFAULT_REGISTRY, name.to_owned()),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
            other => other,
        };
        validate_registry(registry).map_err(&invalid)?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(|reason| invalid(&reason))?;
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(Self {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Tags: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn validate_tag(tag: &str) -> Result<(), &'static str> {
    let mut bytes = tag.bytes();
    let valid_first = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid_first || tag.len() > 128 {
        return Err("a tag is 1 to 128 characters and starts with a letter, digit or `_`");
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err("a tag holds only letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

fn validate_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, Some(port)),
        _ => (registry, None),
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the registry port must be a number");
    }
    let ipv6 = host.starts_with('[') && host.ends_with(']');
    let valid_host = !host.is_empty()
        && (ipv6
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')));
    if !valid_host {
        return Err("the registry host holds only letters, digits, `.` and `-`");
    }
    Ok(())
}

/// Repository paths: `/`-separated lowercase components of `[a-z0-9]` joined by `.`, `_`,
/// `__` or runs of `-`.
pub fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.len() > 255 {
        return Err("the repository path is longer than 255 characters".to_owned());
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err("the repository path has an empty component".to_owned());
        }
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "repository component {component:?} must be lowercase"
            ));
        }
        if !component_is_valid(component) {
            return Err(format!(
                "repository component {component:?} must be [a-z0-9] runs joined by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

fn component_is_valid(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().copied().is_some_and(alnum) || !bytes.last().copied().is_some_and(alnum) {
        return false;
    }
    let mut at = 0;
    while at < bytes.len() {
        if alnum(bytes[at]) {
            at += 1;
            continue;
        }
        let start = at;
        while at < bytes.len() && !alnum(bytes[at]) {
            at += 1;
        }
        let separator = &component[start..at];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(input: &str) -> String {
        input.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn user_input_may_carry_the_docker_transport() {
        let parse = |input| Reference::parse_user_input(input).map(|r| r.to_string());
        assert_eq!(parse("docker://host:5000/x:1").unwrap(), "host:5000/x:1");
        assert_eq!(
            parse("docker://nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(parse("oci:5000/x").unwrap(), "oci:5000/x:latest");
        let error = parse("docker-archive:/tmp/a.tar").unwrap_err().to_string();
        assert!(error.contains("sealer load -i FILE"), "{error}");
        let error = parse("oci:/tmp/layout:1").unwrap_err().to_string();
        assert!(error.contains("is a transport"), "{error}");
        // Content is parsed strictly.
        assert!("docker://host/x:1".parse::<Reference>().is_err());
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(norm("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(norm("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(
            norm("index.docker.io/library/nginx"),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(norm("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(norm("quay.io/coreos/etcd:v3.5"), "quay.io/coreos/etcd:v3.5");
        assert_eq!(norm("localhost/app"), "localhost/app:latest");
        assert_eq!(norm("127.0.0.1:5000/a/b/c:t"), "127.0.0.1:5000/a/b/c:t");
        let digest = Digest::sha256(b"x");
        assert_eq!(
            norm(&format!("nginx@{digest}")),
            format!("docker.io/library/nginx@{digest}")
        );
        assert_eq!(
            norm(&format!("registry.k8s.io/pause:3.9@{digest}")),
            format!("registry.k8s.io/pause:3.9@{digest}")
        );
        let parsed: Reference = "localhost:5000/x:1".parse().unwrap();
        assert_eq!(parsed.registry(), "localhost:5000");
        assert_eq!(parsed.repository(), "x");
        assert_eq!(parsed.tagged_name().unwrap(), "localhost:5000/x:1");
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "nginx@sha256:zz",
            "a/b_/c",
            "ex ample/x",
            "-a",
        ] {
            let error = bad.parse::<Reference>().unwrap_err();
            assert!(!error.reason.is_empty(), "{bad}");
        }
        assert!(
            "Quay.io/A"
                .parse::<Reference>()
                .unwrap_err()
                .reason
                .contains("lowercase")
        );
    }
}
