//! TLS with rustls (ring provider): the server configuration from PEM files. Handshakes
//! run in each connection's own task, bounded by `server.tls_handshake_timeout` (see the
//! accept loop), so a slow client never holds up the others.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsConfig, read_text};

/// The TLS acceptor of `tls`: [`server_config`], shared by every connection.
pub fn acceptor(tls: &TlsConfig) -> Result<TlsAcceptor, ConfigError> {
    Ok(TlsAcceptor::from(Arc::new(server_config(tls)?)))
}

/// Builds the rustls server configuration of `tls` (ring provider, the safe default
/// protocol versions, no client authentication; HTTP/2 and HTTP/1.1 offered by ALPN):
/// `ConfigError::Read` when a PEM file cannot be read, `ConfigError::Invalid` (naming the
/// file) when it holds no certificate chain or private key, or the key does not fit the
/// certificate.
pub fn server_config(tls: &TlsConfig) -> Result<rustls::ServerConfig, ConfigError> {
    let invalid = |path: &std::path::Path, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: None,
        message,
    };
    let cert_text = read_text(&tls.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|error| {
            invalid(
                &tls.cert,
                format!("not a PEM certificate chain: {}", ErrorChain(&error)),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(&tls.cert, "holds no CERTIFICATE block".to_owned()));
    }
    let key_text = read_text(&tls.key)?;
    let key = PrivateKeyDer::from_pem_slice(key_text.as_bytes()).map_err(|error| {
        invalid(
            &tls.key,
            format!("not a PEM private key: {}", ErrorChain(&error)),
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(&tls.cert, error_chain(&error)))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| {
            invalid(
                &tls.key,
                format!(
                    "the key does not fit the certificate: {}",
                    ErrorChain(&error)
                ),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
