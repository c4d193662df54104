//! Denial of service and authentication: upload limits per client, the largest blob, idle
//! upload sessions, leftovers of a crashed server, slow and idle connections, the connection
//! cap, failed PATCHes that change nothing, `nosniff`, and skopeo pushing with credentials
//! to a registry that allows anonymous pulls. Small limits and short timeouts by config;
//! every wait is bounded.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sealer_image_store::testing::{ImageSpec, write_image};
use sealer_image_store::{Digest, Store};
use sealer_registry_proxy::config::{AuthConfig, ByteSize, ConfigDuration};
use sealer_registry_proxy::{Mode, Registry, ServerConfig};
use sealer_test_harness::{
    HttpResponse, http_request, require_tools, run_ok, self_signed_certificate,
};
use serde_json::json;

mod common;
#[path = "common/errors.rs"]
mod errors;
use common::InProcess;
use errors::assert_error;

const TIMEOUT: Duration = Duration::from_secs(30);
/// How long a test waits for the server to close a connection it should close (far more
/// than the short timeouts configured, far less than the defaults).
const CLOSE_WAIT: Duration = Duration::from_secs(10);
const SKOPEO: Duration = Duration::from_secs(120);

struct TestServer {
    server: InProcess,
    store: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// A read-write server over a new store, its config changed by `adjust`.
    fn with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            storage: Some(dir.path().join("store").into()),
            mode: Mode::ReadWrite,
            shutdown_timeout: ConfigDuration(Duration::from_secs(2)),
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let store = config
            .storage
            .as_ref()
            .and_then(|storage| storage.path())
            .unwrap()
            .to_path_buf();
        Self {
            server: InProcess::start(config),
            store,
            _dir: dir,
        }
    }

    fn address(&self) -> SocketAddr {
        self.server.address
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        let url = format!("http://{}{path}", self.address());
        http_request(method, &url, headers, body, TIMEOUT).unwrap()
    }

    /// The files in the store's `uploads/` (upload files and their lock files).
    fn upload_files(&self) -> Vec<String> {
        files_in(&self.store.join("uploads"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.server.stop();
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
        Err(error) => panic!("{}: {error}", dir.display()),
    }
}

/// A TCP connection to `server` from the loopback address `source`.
fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let stream = runtime
        .block_on(async {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
            socket.connect(server).await
        })
        .unwrap();
    let stream = stream.into_std().unwrap();
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    stream
}

/// Reads one response (head, then `Content-Length` bytes of body) from `stream`.
fn read_response(stream: &mut TcpStream) -> HttpResponse {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream.read(&mut buffer).expect("no response");
        assert!(read > 0, "closed before a response: {raw:?}");
        raw.extend_from_slice(&buffer[..read]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| value.parse().unwrap());
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut buffer).unwrap();
        assert!(read > 0, "closed in the body");
        body.extend_from_slice(&buffer[..read]);
    }
    HttpResponse {
        status,
        headers,
        body,
        complete: true,
    }
}

/// Whether the server closes `stream` (EOF or reset) within [`CLOSE_WAIT`], reading and
/// dropping anything it sends first.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Starts an upload session in `repo`; returns its location.
fn start_session(server: &TestServer, repo: &str) -> String {
    let response = server.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[]);
    assert_eq!(response.status, 202, "{response:?}");
    response.header("location").unwrap().to_owned()
}

/// `PATCH` of `body` to `location` with a `Content-Range` from `start`.
fn patch(server: &TestServer, location: &str, start: usize, body: &[u8]) -> HttpResponse {
    let range = format!("{start}-{}", start + body.len() - 1);
    server.request("PATCH", location, &[("Content-Range", &range)], body)
}

fn with_query(location: &str, query: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}{query}")
}

// ---- upload limits ----

#[test]
fn one_client_over_its_upload_limit_gets_429_while_another_still_pushes() {
    let server = TestServer::with(|config| {
        config.uploads.max_sessions_per_client = 3;
    });
    for _ in 0..3 {
        start_session(&server, "team/a");
    }
    let refused = server.request("POST", "/v2/team/a/blobs/uploads/", &[], &[]);
    assert_error(&refused, 429, "TOOMANYREQUESTS");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!(retry > 0);
    // Refused sessions leave no file: three uploads, each a file and its lock.
    assert_eq!(
        server.upload_files().len(),
        6,
        "{:?}",
        server.upload_files()
    );

    // Another client address pushes as usual.
    let data = b"pushed by another client";
    let digest = Digest::sha256(data);
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2), server.address());
    write!(
        other,
        "POST /v2/team/b/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let started = read_response(&mut other);
    assert_eq!(started.status, 202, "{started:?}");
    let location = with_query(
        started.header("location").unwrap(),
        &format!("digest={digest}"),
    );
    write!(
        other,
        "PUT {location} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    )
    .unwrap();
    other.write_all(data).unwrap();
    let finished = read_response(&mut other);
    assert_eq!(finished.status, 201, "{finished:?}");
    let blob = server.request("GET", &format!("/v2/team/b/blobs/{digest}"), &[], &[]);
    assert_eq!(blob.body, data);
}

#[test]
fn upload_limits_count_per_user_when_authenticated() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("pw", 4).unwrap();
    std::fs::write(
        dir.path().join("htpasswd"),
        format!("alice:{hash}\nbob:{hash}\n"),
    )
    .unwrap();
    let server = TestServer::with(|config| {
        config.uploads.max_sessions_per_client = 2;
        config.auth = Some(AuthConfig {
            htpasswd: dir.path().join("htpasswd"),
            realm: "test".to_owned(),
            anonymous_pull: false,
        });
    });
    let basic = |user: &str| {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:pw"));
        format!("Basic {encoded}")
    };
    let post = |user: &str| {
        server.request(
            "POST",
            "/v2/team/a/blobs/uploads/",
            &[("Authorization", &basic(user))],
            &[],
        )
    };
    assert_eq!(post("alice").status, 202);
    assert_eq!(post("alice").status, 202);
    assert_error(&post("alice"), 429, "TOOMANYREQUESTS");
    // Same address, another user: its own limit.
    assert_eq!(post("bob").status, 202);
}

#[test]
fn an_upload_over_the_maximum_size_is_refused_and_its_file_removed() {
    let server = TestServer::with(|config| {
        config.uploads.max_blob_size = ByteSize(1000);
    });
    let big = vec![7u8; 1500];
    let digest = Digest::sha256(&big);
    // Monolithic: refused from its Content-Length, nothing written.
    let monolithic = server.request(
        "POST",
        &format!("/v2/team/a/blobs/uploads/?digest={digest}"),
        &[],
        &big,
    );
    assert_error(&monolithic, 413, "SIZE_INVALID");
    // Chunked: the PATCH that would pass the bound drops the session and its file.
    let location = start_session(&server, "team/a");
    assert_eq!(patch(&server, &location, 0, &big[..600]).status, 202);
    assert_eq!(server.upload_files().len(), 2);
    let over = patch(&server, &location, 600, &big[600..1200]);
    assert_error(&over, 413, "SIZE_INVALID");
    assert_error(
        &server.request("GET", &location, &[], &[]),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_eq!(server.upload_files(), Vec::<String>::new());
    // A body without a length is cut where it passes the bound.
    let location = start_session(&server, "team/a");
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for _ in 0..3 {
        stream.write_all(b"258\r\n").unwrap(); // 600 bytes per chunk
        stream.write_all(&[1u8; 600]).unwrap();
        if stream.write_all(b"\r\n").is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    assert_error(&read_response(&mut stream), 413, "SIZE_INVALID");
    assert_eq!(server.upload_files(), Vec::<String>::new());
    assert_eq!(
        server
            .request("HEAD", &format!("/v2/team/a/blobs/{digest}"), &[], &[])
            .status,
        404
    );
}

#[test]
fn idle_upload_sessions_are_reaped_with_their_files() {
    let server = TestServer::with(|config| {
        config.uploads.idle_timeout = ConfigDuration(Duration::from_secs(1));
    });
    let location = start_session(&server, "team/a");
    assert_eq!(patch(&server, &location, 0, b"some bytes").status, 202);
    assert_eq!(server.upload_files().len(), 2);
    let deadline = Instant::now() + CLOSE_WAIT;
    while !server.upload_files().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(server.upload_files(), Vec::<String>::new());
    assert_error(
        &server.request("GET", &location, &[], &[]),
        404,
        "BLOB_UPLOAD_UNKNOWN",
    );
}

#[test]
fn leftovers_of_a_crashed_server_are_removed_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open_dir(&root).unwrap();
    // A live upload of this process: its lock is held, so it stays.
    let mut live = store.begin_upload().unwrap();
    live.write_all(b"still arriving").unwrap();
    // What a killed server leaves: files whose lock files nobody holds.
    std::fs::write(root.join("uploads/999-1-1"), vec![0u8; 4096]).unwrap();
    std::fs::write(root.join("uploads/999-1-1.lock"), b"").unwrap();
    std::fs::create_dir_all(root.join("ingest/999-1-2/blobs")).unwrap();
    std::fs::write(root.join("ingest/999-1-2/blobs/x"), b"staged").unwrap();
    std::fs::write(root.join("ingest/999-1-2.lock"), b"").unwrap();
    let config = ServerConfig {
        storage: Some(root.clone().into()),
        ..ServerConfig::default()
    };
    let _registry = Registry::open(&config).unwrap();
    let mut uploads = files_in(&root.join("uploads"));
    uploads.sort();
    let live_id = live.id().to_owned();
    assert_eq!(uploads, [live_id.clone(), format!("{live_id}.lock")]);
    assert_eq!(files_in(&root.join("ingest")), Vec::<String>::new());
}

// ---- slow and idle connections ----

#[test]
fn a_half_sent_request_head_is_closed_within_the_header_timeout() {
    let server = TestServer::with(|config| {
        config.server.header_read_timeout = ConfigDuration(Duration::from_millis(500));
        config.server.idle_timeout = ConfigDuration(Duration::from_secs(60));
    });
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAcc")
        .unwrap();
    assert!(closed_by_server(&mut stream));
}

#[test]
fn idle_connections_are_closed_within_the_idle_timeout() {
    let server = TestServer::with(|config| {
        config.server.header_read_timeout = ConfigDuration(Duration::from_secs(60));
        config.server.idle_timeout = ConfigDuration(Duration::from_millis(500));
    });
    // Keep-alive after a request.
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut stream).status, 200);
    assert!(closed_by_server(&mut stream));
    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(server.address()).unwrap();
    assert!(closed_by_server(&mut silent));
}

#[test]
fn a_half_sent_body_fails_within_the_body_timeout_and_changes_nothing() {
    let server = TestServer::with(|config| {
        config.server.body_timeout = ConfigDuration(Duration::from_millis(500));
    });
    let location = start_session(&server, "team/a");
    assert_eq!(patch(&server, &location, 0, b"0123456789").status, 202);
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: 10-1009\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(b"abcdefghij").unwrap();
    assert_error(&read_response(&mut stream), 400, "BLOB_UPLOAD_INVALID");
    assert!(closed_by_server(&mut stream));
    let status = server.request("GET", &location, &[], &[]);
    assert_eq!(status.status, 204);
    assert_eq!(status.header("range"), Some("0-9"));
    // A monolithic upload cut the same way stores nothing.
    let data = vec![3u8; 1000];
    let digest = Digest::sha256(&data);
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    write!(
        stream,
        "POST /v2/team/a/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    )
    .unwrap();
    stream.write_all(&data[..10]).unwrap();
    assert_error(&read_response(&mut stream), 400, "BLOB_UPLOAD_INVALID");
    assert_eq!(
        server
            .request("HEAD", &format!("/v2/team/a/blobs/{digest}"), &[], &[])
            .status,
        404
    );
    // Only the open session's file and lock remain.
    assert_eq!(server.upload_files().len(), 2);
}

#[test]
fn connections_over_the_cap_wait_until_idle_ones_are_closed() {
    let server = TestServer::with(|config| {
        config.server.max_connections = Some(8);
        config.server.idle_timeout = ConfigDuration(Duration::from_secs(3));
    });
    // Eight clients that made a request (so they are surely accepted) and then sit idle.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = TcpStream::connect(server.address()).unwrap();
            stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
            stream
                .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut stream).status, 200);
            stream
        })
        .collect();
    // A ninth waits in the backlog: not served while the eight hold every slot...
    let mut ninth = TcpStream::connect(server.address()).unwrap();
    ninth
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = ninth.read(&mut byte);
    assert!(
        matches!(&early, Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "served beyond the cap: {early:?}"
    );
    // ...and served once the idle ones are closed.
    for stream in &mut idle {
        assert!(closed_by_server(stream));
    }
    ninth.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    assert_eq!(read_response(&mut ninth).status, 200);
}

#[test]
fn a_stalled_tls_handshake_is_closed_within_its_timeout() {
    require_tools!("openssl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_certificate(dir.path()).unwrap();
    let server = TestServer::with(|config| {
        config.tls = Some(sealer_registry_proxy::config::TlsConfig {
            cert: cert.clone(),
            key: key.clone(),
        });
        config.server.tls_handshake_timeout = ConfigDuration(Duration::from_millis(500));
        config.server.idle_timeout = ConfigDuration(Duration::from_secs(60));
    });
    // The first bytes of a ClientHello record header, then nothing.
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.write_all(&[0x16, 0x03, 0x01]).unwrap();
    assert!(closed_by_server(&mut stream));
}

// ---- a failed PATCH changes nothing ----

/// Sends a chunked `PATCH` whose body is `pieces` (each its own chunk, sent apart).
fn chunked_patch(
    server: &TestServer,
    location: &str,
    range: &str,
    pieces: &[&[u8]],
) -> HttpResponse {
    let mut stream = TcpStream::connect(server.address()).unwrap();
    stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
    stream.set_nodelay(true).unwrap();
    write!(
        stream,
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Range: {range}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    for piece in pieces {
        let sent = write!(stream, "{:x}\r\n", piece.len())
            .and_then(|()| stream.write_all(piece))
            .and_then(|()| stream.write_all(b"\r\n"));
        if sent.is_err() {
            break;
        }
        // Apart, so that the server reads (and writes) them one by one.
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    read_response(&mut stream)
}

#[test]
fn a_patch_that_disagrees_with_its_content_range_keeps_nothing() {
    let server = TestServer::with(|_| {});
    let location = start_session(&server, "team/a");
    assert_eq!(patch(&server, &location, 0, b"0123456789").status, 202);
    let status = |server: &TestServer| {
        let response = server.request("GET", &location, &[], &[]);
        assert_eq!(response.status, 204);
        response.header("range").unwrap().to_owned()
    };
    // Longer than announced: 15 bytes for 10-19.
    let longer = chunked_patch(&server, &location, "10-19", &[b"abcde", b"fghij", b"klmno"]);
    assert_eq!(longer.status, 416, "{longer:?}");
    assert_eq!(status(&server), "0-9");
    // Shorter than announced: 5 bytes for 10-19.
    let shorter = chunked_patch(&server, &location, "10-19", &[b"abcde"]);
    assert_error(&shorter, 400, "SIZE_INVALID");
    assert_eq!(status(&server), "0-9");
    // The session still works: the right chunk, then the commit.
    assert_eq!(patch(&server, &location, 10, b"ABCDEFGHIJ").status, 202);
    let data = b"0123456789ABCDEFGHIJ";
    let digest = Digest::sha256(data);
    let done = server.request(
        "PUT",
        &with_query(&location, &format!("digest={digest}")),
        &[],
        &[],
    );
    assert_eq!(done.status, 201, "{done:?}");
    let blob = server.request("GET", &format!("/v2/team/a/blobs/{digest}"), &[], &[]);
    assert_eq!(blob.body, data);
}

// ---- nosniff ----

#[test]
fn every_response_says_nosniff() {
    let server = TestServer::with(|_| {});
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"a layer";
    let mut digests = Vec::new();
    for data in [&config[..], &layer[..]] {
        let digest = Digest::sha256(data);
        let pushed = server.request(
            "POST",
            &format!("/v2/team/a/blobs/uploads/?digest={digest}"),
            &[],
            data,
        );
        assert_eq!(pushed.status, 201);
        digests.push(digest);
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": digests[0].to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digests[1].to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let put = server.request(
        "PUT",
        "/v2/team/a/manifests/v1",
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        &manifest,
    );
    assert_eq!(put.status, 201, "{put:?}");
    for (path, status) in [
        ("/v2/".to_owned(), 200),
        ("/v2/team/a/manifests/v1".to_owned(), 200),
        (format!("/v2/team/a/blobs/{}", digests[1]), 200),
        ("/v2/team/a/manifests/missing".to_owned(), 404),
        ("/v2/Not..Valid/tags/list".to_owned(), 400),
        ("/elsewhere".to_owned(), 404),
        ("/metrics".to_owned(), 200),
    ] {
        let response = server.request("GET", &path, &[], &[]);
        assert_eq!(response.status, status, "{path}");
        assert_eq!(
            response.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
}

// ---- anonymous pulls with authenticated pushes ----

#[test]
fn skopeo_pushes_with_credentials_where_pulls_are_anonymous() {
    require_tools!("skopeo");
    let dir = tempfile::tempdir().unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let server = TestServer::with(|config| {
        config.auth = Some(AuthConfig {
            htpasswd: dir.path().join("htpasswd"),
            realm: "test".to_owned(),
            anonymous_pull: true,
        });
    });
    let layout = tempfile::tempdir().unwrap();
    let store = Store::open_dir(layout.path()).unwrap();
    let top = write_image(&store, &ImageSpec::new("localhost/src:v1", &[3_000], 5))
        .unwrap()
        .digest;
    let layout_path = layout.path().to_str().unwrap();
    let host = server.address().to_string();
    run_ok(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "alice:s3cret",
            &format!("oci:{layout_path}:localhost/src:v1"),
            &format!("docker://{host}/team/app:v1"),
        ],
        SKOPEO,
    )
    .unwrap();
    let raw = run_ok(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--no-creds",
            &format!("docker://{host}/team/app:v1"),
        ],
        SKOPEO,
    )
    .unwrap();
    assert_eq!(Digest::sha256(&raw), top);
}
