//! Several replicas over one bucket: the `cluster:` and `redirect:` configuration, and what
//! the server builds from them.
//!
//! With `cluster` set, a replica that misses a blob takes the digest's fill lease in the
//! bucket before it asks the upstream; when another replica holds a live lease, it streams
//! the blob from that holder's peer route ([`crate::peer`]) instead, so the whole cluster
//! sends one upstream `GET` per blob (see `fill.rs`). With `redirect.presigned`, a `GET` of a
//! complete blob in the bucket is answered 307 to a presigned URL (see `handlers.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::Digest;
use serde::Deserialize;

use crate::bucket::{Bucket, MAX_PRESIGNED_EXPIRY};
use crate::config::{ConfigDuration, ConfigError, read_text};
use crate::fill::Fills;
use crate::peer::{PeerClient, PeerClientOptions, PeerFill, PeerFillSource, PeerSecret};

/// The `cluster:` key: this replica among others over the same bucket (`storage: { s3 }`
/// only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This replica's base URL as the other replicas reach it (`http(s)://host:port`),
    /// written into the fill leases it holds.
    pub advertise_url: String,
    /// The secret every replica shares for the peer route, inline.
    #[serde(default)]
    pub peer_secret: Option<String>,
    /// A file holding that secret (surrounding whitespace trimmed); exactly one of
    /// `peer_secret` and `peer_secret_file`.
    #[serde(default)]
    pub peer_secret_file: Option<PathBuf>,
    /// How long a fill lease lives without renewal; its holder renews it every third of it.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: ConfigDuration,
    /// Bound on connecting to another replica.
    #[serde(default = "default_peer_connect_timeout")]
    pub peer_connect_timeout: ConfigDuration,
    /// Bound on each wait for bytes from another replica.
    #[serde(default = "default_peer_read_timeout")]
    pub peer_read_timeout: ConfigDuration,
}

fn default_lease_ttl() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

fn default_peer_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(5))
}

fn default_peer_read_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}

impl ClusterConfig {
    /// Checks what one field alone cannot: returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let url = reqwest::Url::parse(&self.advertise_url).map_err(|error| {
            (
                "advertise_url",
                format!(
                    "cluster.advertise_url {:?}: expected http(s)://host:port: {error}",
                    self.advertise_url
                ),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err((
                "advertise_url",
                format!(
                    "cluster.advertise_url {:?}: expected an http:// or https:// URL with a host",
                    self.advertise_url
                ),
            ));
        }
        match (&self.peer_secret, &self.peer_secret_file) {
            (Some(_), Some(_)) => {
                return Err((
                    "peer_secret_file",
                    "cluster: give peer_secret or peer_secret_file, not both".to_owned(),
                ));
            }
            (None, None) => {
                return Err((
                    "cluster",
                    "cluster: expected peer_secret_file (or peer_secret): the secret every \
                     replica shares for the peer route"
                        .to_owned(),
                ));
            }
            (Some(secret), None) => {
                PeerSecret::new(secret)
                    .map_err(|error| ("peer_secret", format!("cluster.{}", ErrorChain(&error))))?;
            }
            (None, Some(_)) => {}
        }
        for (key, value) in [
            ("lease_ttl", self.lease_ttl),
            ("peer_connect_timeout", self.peer_connect_timeout),
            ("peer_read_timeout", self.peer_read_timeout),
        ] {
            if value.0.is_zero() {
                return Err((key, format!("cluster.{key} must be more than 0")));
            }
        }
        Ok(())
    }

    /// The peer secret: inline, or read from its file.
    pub(crate) fn secret(&self) -> Result<PeerSecret, ConfigError> {
        let (text, path) = match (&self.peer_secret, &self.peer_secret_file) {
            (Some(secret), _) => (secret.clone(), PathBuf::from("cluster.peer_secret")),
            (None, Some(path)) => (read_text(path)?, path.clone()),
            (None, None) => {
                return Err(ConfigError::Invalid {
                    path: PathBuf::from("cluster"),
                    line: None,
                    message: "expected peer_secret_file or peer_secret".to_owned(),
                });
            }
        };
        PeerSecret::new(&text).map_err(|error| ConfigError::Invalid {
            path,
            line: None,
            message: error_chain(&error),
        })
    }
}

/// The `redirect:` key: answer a `GET` of a complete blob with a 307 to a presigned bucket
/// URL (`storage: { s3 }` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedirectConfig {
    /// Whether to redirect (never for Range requests, `HEAD`, or fills in progress).
    pub presigned: bool,
    /// How long a presigned URL is valid: whole seconds, 1 s to 7 days.
    pub expires: ConfigDuration,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        Self {
            presigned: false,
            expires: ConfigDuration(Duration::from_secs(300)),
        }
    }
}

impl RedirectConfig {
    /// Checks the expiry: returns the offending key and why.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let expires = self.expires.0;
        if expires < Duration::from_secs(1)
            || expires > MAX_PRESIGNED_EXPIRY
            || expires.subsec_nanos() != 0
        {
            return Err((
                "expires",
                format!(
                    "redirect.expires {expires:?}: expected whole seconds from 1s to {}s (7 days)",
                    MAX_PRESIGNED_EXPIRY.as_secs()
                ),
            ));
        }
        Ok(())
    }
}

/// What a fill needs to coordinate with the other replicas.
#[derive(Debug)]
pub(crate) struct Cluster {
    /// The shared bucket, where the leases live.
    pub(crate) bucket: Bucket,
    /// This replica's advertised base URL.
    pub(crate) advertise_url: String,
    /// A lease's lifetime without renewal.
    pub(crate) lease_ttl: Duration,
    /// Streams fills from other replicas.
    pub(crate) peers: PeerClient,
}

impl Cluster {
    /// The cluster of `config` over `bucket`, its secret read.
    pub(crate) fn new(
        config: &ClusterConfig,
        bucket: Bucket,
    ) -> Result<(Arc<Self>, PeerSecret), ConfigError> {
        let secret = config.secret()?;
        let peers = PeerClient::new(
            secret.clone(),
            PeerClientOptions {
                connect_timeout: config.peer_connect_timeout.0,
                read_timeout: config.peer_read_timeout.0,
                tls: None,
            },
        )
        .map_err(|error| ConfigError::Invalid {
            path: PathBuf::from("cluster"),
            line: None,
            message: error_chain(&error),
        })?;
        let cluster = Self {
            bucket,
            advertise_url: config.advertise_url.trim_end_matches('/').to_owned(),
            lease_ttl: config.lease_ttl.0,
            peers,
        };
        Ok((Arc::new(cluster), secret))
    }
}

/// The peer route's source: this process's fills, followed from the requested offset.
pub(crate) struct FillsPeerSource(pub(crate) Arc<Fills>);

#[async_trait::async_trait]
impl PeerFillSource for FillsPeerSource {
    async fn open(&self, digest: &Digest, offset: u64) -> std::io::Result<Option<PeerFill>> {
        let Some(fill) = self.0.get(digest) else {
            return Ok(None);
        };
        let size = fill
            .size()
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        Ok(Some(PeerFill {
            size,
            body: fill.follow(offset.min(size)..size),
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{documented_block, parse_for_test as yaml};

    const S3: &str = "storage:\n  s3:\n    bucket: registry\n";

    /// The commented `cluster:` block of the example configuration parses over a bucket.
    #[test]
    fn the_documented_cluster_parses() {
        let block = documented_block("# cluster:\n");
        assert!(!block.is_empty());
        let config = yaml(&format!("{S3}{block}\n")).unwrap_or_else(|error| panic!("{error}"));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.advertise_url, "http://10.0.0.5:5000");
        assert_eq!(cluster.lease_ttl.0.as_secs(), 30);
        assert_eq!(cluster.peer_read_timeout.0.as_secs(), 60);
        assert!(!config.redirect.presigned);
        assert_eq!(config.redirect.expires.0.as_secs(), 300);
    }

    #[test]
    fn cluster_and_redirect_are_checked() {
        let cluster = "cluster:\n  advertise_url: http://127.0.0.1:5000\n  peer_secret: 0123456789abcdef0123\n";
        let config = yaml(&format!(
            "{S3}{cluster}redirect:\n  presigned: true\n  expires: 1h\n"
        ))
        .unwrap();
        assert_eq!(config.cluster.unwrap().lease_ttl.0.as_secs(), 30);
        assert_eq!(config.redirect.expires.0.as_secs(), 3600);
        for (text, expected) in [
            (
                format!("storage: /srv\n{cluster}"),
                "needs `storage: { s3: … }`",
            ),
            (
                "redirect:\n  presigned: true\n".to_owned(),
                "needs `storage: { s3: … }`",
            ),
            (
                format!("{S3}cluster:\n  advertise_url: http://a:1\n"),
                "expected peer_secret_file (or peer_secret)",
            ),
            (
                format!(
                    "{S3}cluster:\n  advertise_url: http://a:1\n  peer_secret: 0123456789abcdef0\n  peer_secret_file: s\n"
                ),
                "not both",
            ),
            (
                format!("{S3}cluster:\n  advertise_url: http://a:1\n  peer_secret: short\n"),
                "too short",
            ),
            (
                format!("{S3}cluster:\n  advertise_url: 10.0.0.5:5000\n  peer_secret_file: s\n"),
                "cluster.advertise_url",
            ),
            (
                format!(
                    "{S3}cluster:\n  advertise_url: http://a:1\n  peer_secret_file: s\n  lease_ttl: 0s\n"
                ),
                "lease_ttl must be more than 0",
            ),
            (
                format!("{S3}redirect:\n  expires: 8d\n"),
                "invalid duration",
            ),
            (
                format!("{S3}redirect:\n  expires: 1500ms\n"),
                "redirect.expires",
            ),
            (
                format!("{S3}redirect:\n  expires: 200h\n"),
                "redirect.expires",
            ),
            (format!("{S3}redirect:\n  colour: red\n"), "colour"),
        ] {
            let error = yaml(&text).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
