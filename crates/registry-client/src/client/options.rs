//! [`ClientOptions`]: how a [`RegistryClient`](super::RegistryClient) connects, retries
//! and authenticates.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::address_policy::AddressPolicy;
use crate::credentials::CredentialStore;
use crate::retry::RetryPolicy;

use super::DEFAULT_MONOLITHIC_LIMIT;

/// How a [`RegistryClient`](crate::RegistryClient) behaves.
#[derive(Debug)]
pub struct ClientOptions {
    /// Registries (`host` or `host:port`) that may be spoken to over plain HTTP, after
    /// HTTPS failed. Loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) always may. TLS,
    /// when used, is always verified: add private CAs with `ca_files`.
    pub insecure_hosts: Vec<String>,
    /// Extra PEM files of CA certificates trusted besides the system's (not read when
    /// `tls` is given).
    pub ca_files: Vec<PathBuf>,
    /// A TLS configuration built beforehand (by [`tls_config`](crate::tls_config)), used
    /// instead of building one from the system's CA certificates and `ca_files`: clients
    /// that trust the same CAs share it, and the certificates are read (blocking disk I/O)
    /// once, where the caller chooses. `None` (the default): [`RegistryClient::new`]
    /// builds it.
    ///
    /// [`RegistryClient::new`]: crate::RegistryClient::new
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Blobs transferred at once (default 4).
    pub max_concurrency: usize,
    /// Where credentials come from.
    pub credentials: CredentialStore,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// How failed requests are retried.
    pub retries: RetryPolicy,
    /// Times a blob download resumes with `Range` after its connection broke.
    pub max_resumes: u32,
    /// Connection timeout.
    pub connect_timeout: Duration,
    /// The longest silence while waiting for response data.
    pub read_timeout: Duration,
    /// Blobs up to this size are pushed in one `PUT` (default 8 MiB).
    pub monolithic_limit: u64,
    /// Larger blobs are pushed in `PATCH` chunks of this size, or in one streamed `PATCH`
    /// when `None` (the default).
    pub chunk_size: Option<u64>,
    /// The API base URL of registries whose address is known (`docker.io` →
    /// `https://registry-1.docker.io/`, `10.0.0.5:5000` → `http://10.0.0.5:5000/`), used
    /// as given instead of probing HTTPS first: a configured upstream that accepts
    /// connections but never answers then cannot stall the probe. `http://` only for
    /// hosts that allow plain HTTP (loopback and `insecure_hosts`).
    pub base_urls: BTreeMap<String, String>,
    /// Which addresses connections may go to (`None`: any). With a policy, every name is
    /// resolved through it at every connection and every IP literal (request URLs,
    /// redirect hops, token realms) is checked: a refused address fails the request with
    /// [`ClientError::AddressRefused`](crate::ClientError::AddressRefused), never retried.
    /// Such a client connects directly, ignoring `HTTP(S)_PROXY`: a proxy would resolve
    /// names out of the policy's sight. Shared: the clients of one policy (and their
    /// resolvers and redirect checks) hold one copy.
    pub address_policy: Option<Arc<AddressPolicy>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            insecure_hosts: Vec::new(),
            ca_files: Vec::new(),
            tls: None,
            max_concurrency: 4,
            credentials: CredentialStore::from_env(),
            user_agent: format!("sealer/{}", env!("CARGO_PKG_VERSION")),
            retries: RetryPolicy::default(),
            max_resumes: 5,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            monolithic_limit: DEFAULT_MONOLITHIC_LIMIT,
            chunk_size: None,
            base_urls: BTreeMap::new(),
            address_policy: None,
        }
    }
}
