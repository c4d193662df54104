//! TLS: rustls with the system roots plus the configured CA files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sealer_fs_abstraction::{ErrorChain, Fs, RealFs, error_chain};

use super::ClientError;

/// The rustls configuration every HTTPS client of sealer uses: the system's CA
/// certificates plus the PEM certificates of `ca_files`, the ring provider, HTTP/2 and
/// HTTP/1.1 offered by ALPN. Give it to `reqwest::ClientBuilder::tls_backend_preconfigured`.
///
/// # Errors
/// [`ClientError::CaFile`] naming a CA file that cannot be read or holds no valid PEM
/// certificate; [`ClientError::Tls`] when rustls rejects the protocol versions.
pub fn tls_config(ca_files: &[PathBuf]) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(error = %ErrorChain(&error), "skipping a system CA certificate source");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system CA certificates");
    for path in ca_files {
        let ca_error = |reason: String| ClientError::CaFile {
            path: path.clone(),
            reason,
        };
        let bytes = read_file(path).map_err(|error| ca_error(error_chain(&error)))?;
        let mut count = 0;
        for certificate in CertificateDer::pem_slice_iter(&bytes) {
            let certificate = certificate.map_err(|error| ca_error(error_chain(&error)))?;
            roots
                .add(certificate)
                .map_err(|error| ca_error(error_chain(&error)))?;
            count += 1;
        }
        if count == 0 {
            return Err(ca_error("no PEM certificate in it".to_owned()));
        }
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates found (install ca-certificates, or pass CA files)");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| ClientError::Tls(error_chain(&error)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reads a file through a [`RealFs`] rooted at its directory.
pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, sealer_fs_abstraction::FsError> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path.file_name().map(Path::new).unwrap_or(path);
    RealFs::open_root(dir)?.read(name)
}
