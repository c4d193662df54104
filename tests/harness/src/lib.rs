//! Test harness: runs REAL registry parts on loopback for the registry-client,
//! registry-proxy and end-to-end tests. Nothing here mocks a registry.
//!
//! * [`Registry`]: Debian's `docker-registry` (distribution 2.8.2) on a kernel-chosen port of
//!   127.0.0.1, anonymous, htpasswd or token auth, optionally in distribution's own
//!   pull-through mode; its access log parsed into [`AccessEntry`]s to count requests.
//! * [`TokenServer`]: a tiny token realm signing RS256 JWTs (key and certificate made with the
//!   `openssl` CLI) that docker-registry verifies itself; every token request recorded.
//! * [`FaultProxy`]: an HTTP/1.1-aware TCP proxy that cuts, corrupts or stalls chosen
//!   responses ([`Fault`]).
//! * [`seed_image`]: pushes a synthetic image ([`ImageSpec`]) with `skopeo copy`.
//! * [`Moto`]: moto's S3 server (`moto_server`, from the virtual environment of
//!   `scripts/install-moto.sh`) with a bucket, for the object-storage backend.
//! * [`http_request`]: a minimal blocking HTTP/1.1 client with a deadline, for raw checks.
//! * [`Containerd`]: a private containerd daemon, driven with `ctr`, to check `hosts.toml`
//!   files against containerd's own resolver.
//!
//! Every child process is killed and every temporary directory removed on drop; every wait is
//! bounded. Missing tools: [`require_tool`] / [`require_tools!`] skip a test (and fail it
//! when `CI=true`).

// Test code: it drives real processes and files directly, outside the `Fs` abstraction.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

mod containerd;
mod fault;
mod http;
mod moto;
mod process;
mod registry;
mod seed;
mod token;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::Path;

pub use containerd::Containerd;
pub use fault::{Fault, FaultProxy, ProxiedRequest};
pub use http::{HttpResponse, http_get, http_request};
pub use moto::{Moto, MotoMode, moto_server_path, require_moto};
pub use process::{run_bounded, run_ok};
pub use registry::{
    AccessEntry, ProxyUpstream, Registry, RegistryAuth, RegistryOptions, S3Storage,
};
pub use sealer_image_store::testing::ImageSpec;
pub use seed::{SeededImage, SeededPlatform, seed_image};
pub use token::{AnonymousAccess, TokenOptions, TokenRequest, TokenServer};

/// The harness's result type (errors carry the context a failing test needs, e.g. the tail of
/// a registry's log).
pub type Result<T> = anyhow::Result<T>;

/// Whether `tool` is on `PATH`. When it is not: panics under `CI=true` (CI installs every
/// tool), else prints `SKIPPED: <tool> not installed` to stderr and returns false.
pub fn require_tool(tool: &str) -> bool {
    if on_path(tool) {
        return true;
    }
    tool_missing(tool, "./scripts/test.sh installs it")
}

/// Reports a missing tool: panics under `CI=true`, else prints `SKIPPED: <tool> not
/// installed` and returns false. `how` says what installs it.
pub(crate) fn tool_missing(tool: &str, how: &str) -> bool {
    skip(
        format_args!("{tool} is required when CI=true ({how})"),
        format_args!("{tool} not installed"),
    )
}

/// Skips a test: panics with `ci_panic` under `CI=true`, else prints `SKIPPED: <reason>` to
/// stderr and returns false.
fn skip(ci_panic: std::fmt::Arguments<'_>, reason: std::fmt::Arguments<'_>) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{ci_panic}");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and
    // scripts/test.sh counts these lines.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {reason}");
    false
}

/// Returns from the calling test (skips it) unless every tool is installed; see
/// [`require_tool`].
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),+ $(,)?) => {
        if !($($crate::require_tool($tool))&&+) {
            return;
        }
    };
}

/// Whether this process runs as root, which `what` needs. When it does not: panics under
/// `CI=true` (CI runs as root), else prints `SKIPPED: <what> (needs root)` and returns false.
pub fn require_root(what: &str) -> bool {
    let uid = run_ok("id", &["-u"], std::time::Duration::from_secs(10)).unwrap_or_default();
    if String::from_utf8_lossy(&uid).trim() == "0" {
        return true;
    }
    skip(
        format_args!("{what} needs root, and CI=true runs every test (CI runs as root)"),
        format_args!("{what} (needs root)"),
    )
}

/// Whether an executable file named `tool` is in a directory of `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// A TCP port of 127.0.0.1 that the kernel reports free: bound, read and released. Another
/// process may take it before the caller binds it; callers retry on that race.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// A fresh temporary directory named `sealer-harness-*`, removed when dropped.
pub fn temp_dir() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("sealer-harness-")
        .tempdir()?)
}

/// Makes a self-signed certificate for `127.0.0.1` in `dir` with the `openssl` CLI (RSA,
/// one day, `subjectAltName=IP:127.0.0.1`, not a CA, so rustls accepts it as a trusted end
/// entity); returns `(cert.pem, key.pem)`.
pub fn self_signed_certificate(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
            path_str(&key)?,
            "-out",
            path_str(&cert)?,
        ],
        std::time::Duration::from_secs(60),
    )?;
    Ok((cert, key))
}

/// A path as a `&str` (temporary paths are UTF-8 here), or an error naming it.
pub(crate) fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow::anyhow!("path is not UTF-8: {}", path.display()))
}
