//! The access log and the request metrics: a middleware around the whole router times every
//! request and counts its response body's bytes as hyper takes them; when the body ends (or
//! the client leaves before it did) the request is recorded in [`ServerMetrics`] and logged
//! in one line (`sealer::access`, INFO): client address, method, path, status, bytes,
//! duration, user agent, and whether the body was sent whole. Logging at the end, as web
//! servers do, makes bytes and duration those of the whole transfer, not of the headers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tracing::Instrument as _;

use crate::conn::PeerAddr;
use crate::metrics::{RouteKind, ServerMetrics, method_label};
use crate::server::AppState;

/// The status recorded for a request whose client left before the answer was ready (the
/// handler's future was dropped), as nginx logs it.
const CLIENT_CLOSED: u16 = 499;

/// The middleware (`axum::middleware::from_fn_with_state`).
pub(crate) async fn observe(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let uri = request.uri();
    let route = RouteKind::classify(&state.parser, request.method(), uri.path(), uri.query());
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |whole| whole.as_str().to_owned());
    let user_agent = request
        .headers()
        .get(header::USER_AGENT)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let client = request
        .extensions()
        .get::<PeerAddr>()
        .map(|PeerAddr(peer)| *peer);
    let method = method_label(request.method());
    // What handlers log while answering carries the request; the access line comes after.
    let span = tracing::info_span!("request", method, path = path.as_str());
    state.metrics.started();
    let mut pending = Pending(Some(Record {
        metrics: state.metrics.clone(),
        started,
        client,
        method,
        route,
        path,
        status: CLIENT_CLOSED,
        user_agent,
        sent: 0,
    }));
    let response = next.run(request).instrument(span).await;
    match pending.0.take() {
        Some(mut record) => {
            record.status = response.status().as_u16();
            response.map(|body| {
                Body::new(ObservedBody {
                    body,
                    record: Some(record),
                })
            })
        }
        None => response,
    }
}

/// A request whose response is not ready yet: recorded as [`CLIENT_CLOSED`] if the
/// middleware's future is dropped before (hyper drops it when the connection closes).
struct Pending(Option<Record>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(record) = self.0.take() {
            record.finish(false);
        }
    }
}

/// One request, until its response body ends.
struct Record {
    metrics: Arc<ServerMetrics>,
    started: Instant,
    client: Option<SocketAddr>,
    method: &'static str,
    route: RouteKind,
    path: String,
    status: u16,
    user_agent: Option<String>,
    /// Body bytes handed to hyper so far.
    sent: u64,
}

impl Record {
    fn finish(self, complete: bool) {
        let elapsed = self.started.elapsed();
        self.metrics
            .finished(self.method, self.route, self.status, self.sent, elapsed);
        let client = self
            .client
            .map_or_else(|| "-".to_owned(), |client| client.to_string());
        // Microseconds, as milliseconds with a fraction.
        let duration_ms = elapsed.as_micros() as f64 / 1000.0;
        // Path and user agent are the client's text: passed as strings, so that the text
        // format quotes and escapes them and the JSON format encodes them.
        tracing::info!(
            target: "sealer::access",
            client = client.as_str(),
            method = self.method,
            path = self.path.as_str(),
            status = self.status,
            bytes = self.sent,
            duration_ms,
            user_agent = self.user_agent.as_deref().unwrap_or("-"),
            complete,
            "request served"
        );
    }
}

/// A response body that records its request when it ends or is dropped.
struct ObservedBody {
    body: Body,
    record: Option<Record>,
}

impl http_body::Body for ObservedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let length = frame.data_ref().map_or(0, |data| data.len() as u64);
                if let Some(record) = &mut self.record {
                    record.sent += length;
                }
                if self.body.is_end_stream()
                    && let Some(record) = self.record.take()
                {
                    record.finish(true);
                }
            }
            Poll::Ready(None) => {
                if let Some(record) = self.record.take() {
                    record.finish(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(record) = self.record.take() {
                    record.finish(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            // An empty body (HEAD, 201, 204) is never polled: it was sent whole.
            let complete = self.body.is_end_stream();
            record.finish(complete);
        }
    }
}
