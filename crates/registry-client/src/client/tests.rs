//! Unit tests of the client's private parts (plain-HTTP policy, names, redirects,
//! retries, TLS).
// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;

use super::*;
use crate::retry::RetryPolicy;

#[test]
fn plain_http_only_for_loopback_and_insecure_hosts() {
    let policy = PlainHttpPolicy {
        insecure: ["reg.lan".to_owned(), "other.lan:5000".to_owned()]
            .into_iter()
            .collect(),
    };
    for allowed in [
        "localhost:5000",
        "127.0.0.1:1",
        "[::1]:5000",
        "reg.lan:443",
        "reg.lan",
        "other.lan:5000",
    ] {
        assert!(policy.allows(allowed), "{allowed}");
    }
    for refused in [
        "quay.io",
        "10.0.0.1:5000",
        "other.lan:5001",
        "other.lan",
        "localhost.evil.com",
    ] {
        assert!(!policy.allows(refused), "{refused}");
    }
}

#[test]
fn registry_names_are_normalised() {
    assert_eq!(
        normalize_registry("https://index.docker.io/v1/").unwrap(),
        "docker.io"
    );
    assert_eq!(normalize_registry("docker.io").unwrap(), "docker.io");
    assert_eq!(
        normalize_registry("localhost:5000").unwrap(),
        "localhost:5000"
    );
    assert_eq!(normalize_registry("quay.io").unwrap(), "quay.io");
    assert!(normalize_registry("nginx").is_err());
    assert!(normalize_registry("bad host").is_err());
    // A password typed into the URL stays out of the message.
    let error = normalize_registry("https://u:hunter2@registry.example.com")
        .unwrap_err()
        .to_string();
    assert!(
        !error.contains("hunter2") && error.contains("u:***@"),
        "{error}"
    );
    assert_eq!(api_host("docker.io"), "registry-1.docker.io");
}

/// A loopback HTTP server answering one canned response per connection; returns its
/// address and the request heads it received.
fn fake_server(
    ip: &str,
    responses: Vec<String>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for response in responses {
            let stream = loop {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                // The client's HTTPS probe (a TLS handshake): refuse it, as a plain
                // HTTP registry does, without using up a response.
                let mut first = [0u8; 1];
                if stream.peek(&mut first).is_ok() && first[0] == 0x16 {
                    continue;
                }
                break stream;
            };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            record.lock().unwrap().push(head);
            let mut stream = stream;
            let _ = stream.write_all(response.as_bytes());
        }
    });
    (addr, seen)
}

fn answer(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn test_client(credentials: CredentialStore) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        credentials,
        retries: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_to_another_host_do_not_carry_authorization() {
    let (storage, storage_seen) =
        fake_server("127.0.0.2", vec![answer("200 OK", "", "blob-bytes")]);
    let redirect = format!("Location: http://{storage}/bucket/blob?sig=1\r\n");
    let (registry, registry_seen) = fake_server(
        "127.0.0.1",
        vec![
            answer(
                "401 Unauthorized",
                "WWW-Authenticate: Basic realm=\"r\"\r\n",
                "",
            ),
            answer("307 Temporary Redirect", &redirect, ""),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let host = registry.to_string();
    CredentialStore::with_docker_config_dir(dir.path())
        .save_login(&host, "user", "secret")
        .unwrap();
    let client = test_client(CredentialStore::with_docker_config_dir(dir.path()));
    let scope = Scope::pull("repo");
    let url = client
        .api_url(&host, "repo", "blobs/sha256:00")
        .await
        .unwrap();
    let response = client
        .send_ok(Request::new(Method::GET, &host, url, &scope))
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "blob-bytes");
    let registry_seen = registry_seen.lock().unwrap().clone();
    assert_eq!(registry_seen.len(), 2);
    assert!(
        !registry_seen[0]
            .to_ascii_lowercase()
            .contains("authorization")
    );
    assert!(
        registry_seen[1]
            .to_ascii_lowercase()
            .contains("authorization: basic")
    );
    let storage_seen = storage_seen.lock().unwrap().clone();
    assert_eq!(storage_seen.len(), 1);
    assert!(
        !storage_seen[0]
            .to_ascii_lowercase()
            .contains("authorization"),
        "{}",
        storage_seen[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_registries_are_retried_honouring_retry_after() {
    let (registry, seen) = fake_server(
        "127.0.0.1",
        vec![
            answer("503 Service Unavailable", "Retry-After: 1\r\n", ""),
            answer("429 Too Many Requests", "", ""),
            answer("200 OK", "", "{}"),
        ],
    );
    let client = test_client(CredentialStore::anonymous());
    let host = registry.to_string();
    let scope = Scope::pull("repo");
    let url = client.api_url(&host, "repo", "tags/list").await.unwrap();
    let started = std::time::Instant::now();
    let response = client
        .send_ok(Request::new(Method::GET, &host, url, &scope))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(seen.lock().unwrap().len(), 3);

    // A 404 is an answer, not retried.
    let (registry, seen) = fake_server(
        "127.0.0.1",
        vec![answer(
            "404 Not Found",
            "Content-Type: application/json\r\n",
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
        )],
    );
    let host = registry.to_string();
    let url = client.api_url(&host, "repo", "blobs/x").await.unwrap();
    let error = client
        .send_ok(Request::new(Method::GET, &host, url, &scope))
        .await
        .unwrap_err();
    assert_eq!(error.status(), Some(404));
    assert!(error.to_string().contains("BLOB_UNKNOWN"), "{error}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[test]
fn the_client_builds_with_the_system_roots() {
    let client = RegistryClient::new(ClientOptions {
        credentials: CredentialStore::anonymous(),
        ..ClientOptions::default()
    });
    assert!(client.is_ok(), "{:?}", client.err());
    let missing = RegistryClient::new(ClientOptions {
        ca_files: vec![PathBuf::from("/nonexistent/ca.pem")],
        credentials: CredentialStore::anonymous(),
        ..ClientOptions::default()
    });
    assert!(matches!(missing, Err(ClientError::CaFile { .. })));
}
