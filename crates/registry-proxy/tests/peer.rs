//! Replica-to-replica fill streaming (`sealer_registry_proxy::peer`): the peer route served by
//! an in-process axum server on 127.0.0.1 from a fake fill that grows over time, read by
//! `PeerClient` as another replica would.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sealer_image_store::Digest;
use sealer_registry_proxy::BlobStream;
use sealer_registry_proxy::peer::{
    PeerClient, PeerClientOptions, PeerError, PeerFill, PeerFillSource, PeerSecret, peer_router,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

const SECRET: &str = "replicas-share-this-secret";
const CHUNK: usize = 16 * 1024;

/// Bytes that differ at every offset (a misplaced offset shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

/// A fill of one blob whose bytes arrive a chunk at a time, with pauses (as from an
/// upstream), and that may fail after `fail_at` bytes.
struct GrowingFill {
    digest: Digest,
    data: Arc<Vec<u8>>,
    fail_at: Option<usize>,
}

#[async_trait::async_trait]
impl PeerFillSource for GrowingFill {
    async fn open(&self, digest: &Digest, offset: u64) -> std::io::Result<Option<PeerFill>> {
        if *digest != self.digest {
            return Ok(None);
        }
        let data = self.data.clone();
        let fail_at = self.fail_at;
        let start = usize::try_from(offset).unwrap().min(data.len());
        let body: BlobStream = Box::pin(futures_util::stream::unfold(start, move |pos| {
            let data = data.clone();
            async move {
                if pos >= data.len() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                if fail_at.is_some_and(|fail_at| pos >= fail_at) {
                    // The stream ends after its error (as the fill's follower does).
                    return Some((Err(std::io::Error::other("upstream reset")), data.len()));
                }
                let end = (pos + CHUNK).min(data.len());
                Some((Ok(Bytes::copy_from_slice(&data[pos..end])), end))
            }
        }));
        Ok(Some(PeerFill {
            size: self.data.len() as u64,
            body,
        }))
    }
}

/// The peer route on 127.0.0.1: its base URL and the fill's digest and bytes.
async fn serve(len: usize, fail_at: Option<usize>) -> (String, Digest, Arc<Vec<u8>>) {
    let data = Arc::new(pattern(len));
    let digest = Digest::sha256(&data);
    let source = GrowingFill {
        digest: digest.clone(),
        data: data.clone(),
        fail_at,
    };
    let router = peer_router(Arc::new(source), PeerSecret::new(SECRET).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), digest, data)
}

fn client(secret: &str) -> PeerClient {
    let options = PeerClientOptions {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        tls: None,
    };
    PeerClient::new(PeerSecret::new(secret).unwrap(), options).unwrap()
}

/// Reads the whole body: the bytes and the error that ended it, if any.
async fn drain(mut body: BlobStream) -> (Vec<u8>, Option<std::io::Error>) {
    let mut bytes = Vec::new();
    // Bounded: the fake fill ends, and the client's read timeout bounds every wait.
    while let Some(item) = body.next().await {
        match item {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(error) => return (bytes, Some(error)),
        }
    }
    (bytes, None)
}

fn peer_error(error: &std::io::Error) -> &PeerError {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<PeerError>())
        .unwrap_or_else(|| panic!("not a PeerError: {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_route_refuses_without_or_with_a_wrong_secret() {
    let (base, digest, _) = serve(1000, None).await;
    let url = format!("{base}/_sealer/peer/v1/fills/{digest}");
    let plain = reqwest::Client::new();
    for authorization in [
        None,
        Some("Bearer wrong-secret-of-the-same-sort".to_owned()),
        Some(format!("Bearer {SECRET}x")),
        Some(format!("Basic {SECRET}")),
        Some(SECRET.to_owned()),
    ] {
        let mut request = plain.get(&url);
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        assert_eq!(
            response.headers().get("www-authenticate").unwrap(),
            "Bearer"
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains(SECRET), "the secret never shows: {body}");
    }

    let error = client("another-replicas-secret")
        .stream(&base, &digest, 0)
        .await
        .unwrap_err();
    assert!(
        matches!(error, PeerError::Refused { status: 401, .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stream_delivers_a_growing_fill_from_zero_and_from_an_offset() {
    let len = 40 * CHUNK + 123;
    let (base, digest, data) = serve(len, None).await;
    let client = client(SECRET);

    let stream = client.stream(&base, &digest, 0).await.unwrap();
    assert_eq!((stream.size, stream.offset), (len as u64, 0));
    let (bytes, error) = drain(stream.body).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, *data);

    let offset = 3 * CHUNK + 17;
    let stream = client
        .stream(&format!("{base}/"), &digest, offset as u64)
        .await
        .unwrap();
    assert_eq!((stream.size, stream.offset), (len as u64, offset as u64));
    let bytes: Vec<Bytes> = stream.body.try_collect().await.unwrap();
    assert_eq!(bytes.concat(), data[offset..]);

    // At the very end: nothing more, not an error.
    let stream = client.stream(&base, &digest, len as u64).await.unwrap();
    let (bytes, error) = drain(stream.body).await;
    assert!(bytes.is_empty() && error.is_none(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stream_of_a_fill_failing_midway_ends_with_an_error() {
    let len = 40 * CHUNK;
    let fail_at = 25 * CHUNK;
    let (base, digest, data) = serve(len, Some(fail_at)).await;
    for offset in [0, 10 * CHUNK] {
        let stream = client(SECRET)
            .stream(&base, &digest, offset as u64)
            .await
            .unwrap();
        let (bytes, error) = drain(stream.body).await;
        let error = error.expect("a cut transfer is an error, never a short body");
        match peer_error(&error) {
            PeerError::Cut {
                received, expected, ..
            } => {
                assert_eq!(*expected, (len - offset) as u64);
                assert_eq!(*received, bytes.len() as u64);
                assert!(*received < *expected);
            }
            other => panic!("{other:?}"),
        }
        // What did arrive is the right bytes.
        assert_eq!(bytes, data[offset..offset + bytes.len()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_stream_refuses_unknown_digests_and_offsets_past_the_end() {
    let (base, digest, _) = serve(1000, None).await;
    let client = client(SECRET);
    let other = Digest::sha256(b"not filled here");
    let error = client.stream(&base, &other, 0).await.unwrap_err();
    assert!(
        matches!(&error, PeerError::Refused { status: 404, .. }),
        "{error:?}"
    );
    let error = client.stream(&base, &digest, 1001).await.unwrap_err();
    assert!(
        matches!(&error, PeerError::Refused { status: 416, .. }),
        "{error:?}"
    );
    let error = client.stream("ftp://peer", &digest, 0).await.unwrap_err();
    assert!(matches!(&error, PeerError::Url { .. }), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_client_reports_a_gone_peer() {
    // Nothing listens on a port just released.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let digest = Digest::sha256(b"x");
    let error = client(SECRET).stream(&base, &digest, 0).await.unwrap_err();
    assert!(matches!(&error, PeerError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("unreachable"), "{error}");
}

/// A peer that answers the head, sends `sent` of `announced` bytes, then (when `close`) dies,
/// or else stalls.
async fn dying_peer(announced: usize, sent: usize, close: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {announced}\r\nx-sealer-blob-size: {announced}\r\n\r\n"
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&vec![7u8; sent]).await.unwrap();
        socket.flush().await.unwrap();
        if !close {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_client_reports_a_cut_or_stalled_transfer() {
    let digest = Digest::sha256(b"x");
    let cut = dying_peer(10_000, 4_000, true).await;
    let stream = client(SECRET).stream(&cut, &digest, 0).await.unwrap();
    let (bytes, error) = drain(stream.body).await;
    assert_eq!(bytes.len(), 4_000);
    let error = error.expect("a cut transfer is an error");
    assert!(
        matches!(
            peer_error(&error),
            PeerError::Cut {
                received: 4_000,
                expected: 10_000,
                ..
            }
        ),
        "{error:?}"
    );

    let stalled = dying_peer(10_000, 4_000, false).await;
    let options = PeerClientOptions {
        read_timeout: Duration::from_millis(300),
        ..PeerClientOptions::default()
    };
    let client = PeerClient::new(PeerSecret::new(SECRET).unwrap(), options).unwrap();
    let stream = client.stream(&stalled, &digest, 0).await.unwrap();
    let (_, error) = tokio::time::timeout(Duration::from_secs(20), drain(stream.body))
        .await
        .expect("the read timeout ends a stalled transfer");
    let error = error.expect("a stalled transfer is an error");
    assert!(
        matches!(peer_error(&error), PeerError::Cut { .. }),
        "{error:?}"
    );
}

#[test]
fn peer_secret_is_checked_and_never_printed() {
    assert!(PeerSecret::new("short").is_err());
    assert!(PeerSecret::new("has a space inside it").is_err());
    let secret = PeerSecret::new(&format!("  {SECRET}\n")).unwrap();
    assert!(!format!("{secret:?}").contains(SECRET));
    let header = |text: &str| Some(axum::http::HeaderValue::from_str(text).unwrap());
    assert!(secret.authorizes(header(&format!("Bearer {SECRET}")).as_ref()));
    assert!(!secret.authorizes(header("Bearer ").as_ref()));
    assert!(!secret.authorizes(None));
}
