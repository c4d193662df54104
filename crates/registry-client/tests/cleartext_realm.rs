//! An HTTPS registry whose `401` challenge names a plain-HTTP token realm: the client must
//! not send it credentials (a real TLS server made with the `openssl` CLI, and a plain TCP
//! listener standing in for the realm that records every byte it receives).
// Test code: it writes the certificate files and serves raw sockets directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sealer_registry_client::auth::AuthError;
use sealer_registry_client::{
    ClientError, ClientOptions, Credential, CredentialStore, RegistryClient, RetryPolicy,
};
use sealer_test_harness::{require_tools, self_signed_certificate};

const TIMEOUT: Duration = Duration::from_secs(10);
/// Connections each fake server answers before its thread ends.
const MAX_CONNECTIONS: usize = 16;

/// Reads a request head (up to the blank line, bounded).
fn read_head(stream: &mut impl Read) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    head
}

/// An HTTPS "registry" on a kernel-chosen port that answers every request with a `401`
/// Bearer challenge naming `realm`. Returns its port.
fn https_registry(cert: &Path, key: &Path, realm: String) -> u16 {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for stream in listener.incoming().take(MAX_CONNECTIONS) {
            let Ok(stream) = stream else { continue };
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let connection = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(connection, stream);
            let head = read_head(&mut tls);
            if head.is_empty() {
                continue;
            }
            let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"auth"}]}"#;
            let answer = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"test\"\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    port
}

/// A plain TCP "token realm" that records every byte sent to it and hands out a token.
fn recording_realm() -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = received.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(MAX_CONNECTIONS) {
            let Ok(mut stream): Result<TcpStream, _> = stream else {
                continue;
            };
            stream.set_read_timeout(Some(TIMEOUT)).unwrap();
            let head = read_head(&mut stream);
            record.lock().unwrap().extend_from_slice(&head);
            let body = r#"{"token":"t"}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, received)
}

#[test]
fn an_https_registry_never_sends_credentials_to_a_plain_http_realm() {
    require_tools!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path()).unwrap();
    let (realm_port, received) = recording_realm();
    let realm = format!("http://127.0.0.1:{realm_port}/token");
    let registry_port = https_registry(&cert, &key, realm.clone());
    let registry = format!("127.0.0.1:{registry_port}");
    let client = RegistryClient::new(ClientOptions {
        ca_files: vec![cert],
        base_urls: BTreeMap::from([(registry.clone(), format!("https://{registry}/"))]),
        credentials: CredentialStore::anonymous().with_credential(
            &registry,
            Credential::Basic {
                username: "robot".to_owned(),
                password: "s3cret".to_owned(),
            },
        ),
        retries: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        read_timeout: TIMEOUT,
        connect_timeout: TIMEOUT,
        ..ClientOptions::default()
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // Stored credentials (a pull) and explicit ones (a login) alike.
    let pull = runtime.block_on(client.head_manifest(&registry, "team/app", "v1"));
    let login = runtime.block_on(client.login(&registry, "robot", "s3cret"));
    for result in [pull.map(|_| ()), login.map(|_| ())] {
        let error = result.unwrap_err();
        assert!(
            matches!(&error, ClientError::Auth(AuthError::CleartextRealm { .. })),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&realm) && message.contains("cleartext; the registry is https"),
            "{message}"
        );
    }
    let received = String::from_utf8_lossy(&received.lock().unwrap()).to_ascii_lowercase();
    assert!(!received.contains("authorization"), "{received}");
    assert!(received.is_empty(), "the realm was contacted: {received}");
}
