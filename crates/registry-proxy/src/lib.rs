//! An OCI distribution server over a sealer image store that is also a pull-through cache
//! for many upstream registries at once (routed by `?ns=` and by path prefix).
//!
//! * [`route`]: a pure parser from `(method, path, query)` to a [`Route`]; repository names
//!   contain `/`, and the upstream namespace comes from `?ns=` or a path prefix.
//! * [`RegistryBackend`]: the storage seam, every storage operation the server needs;
//!   [`LocalBackend`] is the local store.
//! * [`ContentSource`]: where reads come from. [`LocalSource`] serves the store;
//!   [`PullThroughSource`] wraps it as a pull-through cache of many upstreams at once
//!   (one upstream `GET` per blob digest shared by every client, commit on a digest match,
//!   tags revalidated per TTL, stale answers when an upstream fails) and reports
//!   `X-Cache`/`OCI-Namespace` through [`ResponseMeta`]; its counters are served at
//!   `/metrics`, after the server's own (requests by method, route kind and status,
//!   latencies, bytes sent, `process_*`, build info), which every mode serves.
//! * Operations: an access log line per request (client, method, path, status, bytes,
//!   duration, user agent) at the end of its response; `/healthz` (liveness) and `/readyz`
//!   (the store's index reads and its directory is writable), both without credentials.
//! * [`Registry`]: the axum server — every endpoint of the distribution spec (pull, push
//!   monolithic/chunked/streamed, mount, tags, referrers, deletes, Range), htpasswd basic
//!   auth, read-only mode, TLS (rustls with ring), bounded graceful shutdown.
//! * [`ServerConfig`]: the YAML/TOML configuration of `sealer registry serve`.
//! * [`cluster`]: replicas over one bucket: fill leases, so the cluster sends one upstream
//!   `GET` per blob (the others stream it from the lease holder, [`peer`]), and presigned
//!   307 redirects of complete blobs.
//! * [`mirror_config`]: the containerd, CRI-O/podman and Docker configuration files that make
//!   nodes pull the configured upstreams through this registry.
//!
//! Repository `R` requested in namespace `N` is the store name `N/R` (Docker-normalised:
//! `docker.io` + `nginx` → `docker.io/library/nginx`); without a namespace, the configured
//! local namespace (default `localhost`). Blobs are global, manifests byte-exact, and every
//! store call runs on a blocking thread; blob bodies are streamed both ways.

#![deny(missing_docs)]

mod access;
mod auth;
pub mod backend;
pub mod bucket;
mod bucket_backend;
pub mod cache;
pub mod catalog;
pub mod cluster;
pub mod config;
mod conn;
mod error;
mod fill;
mod handlers;
mod health;
mod local;
mod metrics;
pub mod mirror_config;
pub mod peer;
pub mod pull_through;
pub mod range;
pub mod route;
mod server;
pub mod source;
mod stream;
pub mod tls;
mod uploads;
pub mod upstream_policy;

pub use auth::Htpasswd;
pub use backend::{BackendUpload, LocalBackend, RegistryBackend};
pub use bucket_backend::BucketBackend;
pub use config::{ConfigError, DEFAULT_CONFIG, Mode, ServerConfig, Storage};
pub use error::{ApiError, ErrorCode, ServeError};
pub use local::{BlobDeleted, LocalSource};
pub use pull_through::PullThroughSource;
pub use route::{Route, RouteError, RouteParser, parse};
pub use server::{Registry, collect_garbage, run, serve, shutdown_signal};
pub use source::{
    BlobContent, BlobRequest, BlobStream, CacheStatus, ContentSource, ManifestContent,
    ManifestRequest, ResponseMeta, Served, StoreNames,
};
