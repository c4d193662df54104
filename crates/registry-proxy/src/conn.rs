//! The accept loop and the life of one connection, on hyper directly (not `axum::serve`), so
//! that a client cannot hold the server's sockets by sending slowly or not at all:
//!
//! * a request head must arrive within `header_read_timeout` (hyper's HTTP/1 timer; on a
//!   keep-alive connection it runs from the end of the previous response);
//! * a connection with no request in progress and no bytes moving for `idle_timeout` is
//!   closed (also a connection that never sends a byte, and idle HTTP/2 connections);
//! * a request body that delivers nothing for `body_timeout` fails its request;
//! * at most `max_connections` connections are served at once; TLS handshakes are bounded.
//!
//! Every request carries the client's address ([`PeerAddr`]) in its extensions.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sealer_fs_abstraction::ErrorChain;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::ConnectionLimits;

/// The address of the client that sent a request (in the request's extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// Connections served at most when the open-file limit is unknown or very high.
const MAX_CONNECTIONS_CEILING: usize = 16_384;
/// Open files kept for the store (blobs, uploads, index) and the upstream clients.
const FILES_FOR_THE_STORE: u64 = 256;

/// Raises the soft open-file limit to the hard limit where allowed; returns the soft limit
/// in force afterwards (`None`: unlimited or unknown).
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let old = getrlimit(Resource::Nofile);
    if old.current == old.maximum {
        return old.current;
    }
    let raised = rustix::process::Rlimit {
        current: old.maximum,
        maximum: old.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::info!(old = ?old.current, new = ?old.maximum, "raised the open-file limit");
            old.maximum
        }
        Err(error) => {
            tracing::warn!(error = %ErrorChain(&error), soft = ?old.current, hard = ?old.maximum, "cannot raise the open-file limit");
            old.current
        }
    }
}

/// The connection cap: configured, or the open-file limit less what the store needs.
pub(crate) fn max_connections(configured: Option<usize>, open_files: Option<u64>) -> usize {
    configured.unwrap_or_else(|| {
        let usable = open_files
            .map_or(u64::MAX, |limit| limit.saturating_sub(FILES_FOR_THE_STORE))
            .max(16);
        usize::try_from(usable)
            .unwrap_or(usize::MAX)
            .min(MAX_CONNECTIONS_CEILING)
    })
}

/// Accepts on `listener` until `stop` turns true, then tells every connection to finish its
/// requests and close; returns the connections still running for the caller to drain.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ConnectionLimits,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
) -> JoinSet<()> {
    // At the cap the loop stops accepting: new clients wait in the listen backlog and are
    // served as soon as a connection closes (the timeouts close idle ones), rather than
    // being accepted and closed at once, which clients see as a reset and retry at once.
    // Connections already open keep working either way.
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    loop {
        // Finished connections leave their result in the set until joined.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %ErrorChain(&error), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Responses are written in pieces (headers, then body chunks as they come, a
        // pull-through miss's last piece after its digest is verified): without
        // TCP_NODELAY, Nagle holds a small piece back until the client's delayed ACK (40 ms).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %ErrorChain(&error), "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(stream, peer, router, limits, stop).await,
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(
                        limits.tls_handshake_timeout.0,
                        acceptor.accept(stream),
                    );
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, router, limits, stop).await
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, error = %ErrorChain(&error), "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    connections
}

/// Completes once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard it returns is not `Send`: dropped here, before any other await.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// When a connection last moved bytes, and how many of its requests are in progress.
struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last read or write.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Whether nothing is in progress and no byte moved for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.started.elapsed().saturating_sub(last) >= idle
    }
}

/// Counts a request as in progress until dropped (with its response body, once sent).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Watched {
        io,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut router = router.clone();
            let guard = InFlight::start(&activity);
            let body_timeout = limits.body_timeout.0;
            async move {
                let mut request =
                    request.map(|body| Body::new(ProgressBody::new(body, body_timeout)));
                request.extensions_mut().insert(PeerAddr(peer));
                let response = match tower_service::Service::call(&mut router, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout.0);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    let idle = limits.idle_timeout.0;
    let mut checks = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(%peer, error = %ErrorChain(&*error), "connection ended with an error");
                }
                return;
            }
            () = stopped(&mut stop), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = checks.tick(), if !closing => {
                if activity.idle_for(idle) {
                    tracing::debug!(%peer, ?idle, "closing an idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// An I/O stream that records in [`Activity`] when bytes last moved.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(written)) if written > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that keeps its request counted as in progress until it is sent.
struct TrackedBody {
    body: Body,
    _guard: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that fails when the client sends nothing for `timeout` while the body is
/// being read (the time the handler spends between reads does not count).
struct ProgressBody {
    body: Incoming,
    timeout: Duration,
    /// Running while a read waits for the client.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ProgressBody {
    fn new(body: Incoming, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: None,
        }
    }
}

/// Why a request body failed: the client stopped sending.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing for {0:?}")]
struct BodyStalled(Duration);

impl http_body::Body for ProgressBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_files_for_the_store() {
        assert_eq!(max_connections(Some(8), Some(1024)), 8);
        assert_eq!(max_connections(None, Some(1024)), 768);
        assert_eq!(
            max_connections(None, Some(1 << 20)),
            MAX_CONNECTIONS_CEILING
        );
        assert_eq!(max_connections(None, None), MAX_CONNECTIONS_CEILING);
        assert_eq!(max_connections(None, Some(100)), 16);
    }
}
