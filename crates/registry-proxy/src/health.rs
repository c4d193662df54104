//! `/healthz` (liveness: the server answers) and `/readyz` (the storage works: the store's
//! `index.json` reads and parses, and its directory takes a new file). Both answer without
//! credentials, so that probes need none; what failed goes to the log, not to the client
//! (the errors name paths of the server's disk).

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealer_fs_abstraction::{AtomicFile, ErrorChain, FsError};
use sealer_image_store::Store;
use serde_json::json;

use crate::error::{ApiError, ErrorCode};
use crate::server::{AppState, OpenStorage};

/// The name the write check's temporary file is made for, in the store's directory.
const PROBE: &str = "readyz-probe";

/// `GET /healthz`: 200 while the process serves requests.
pub(crate) async fn healthz(request: Request) -> Response {
    if let Err(refused) = only_reads(request.method(), "/healthz") {
        return refused.into_response();
    }
    answer(StatusCode::OK, json!({"status": "ok"}))
}

/// `GET /readyz`: 200 when the store's index reads and its directory is writable (a bucket:
/// when it answers a listing), else 503; the body names each check's outcome.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(refused) = only_reads(request.method(), "/readyz") {
        return refused.into_response();
    }
    // One check at a time: probes sent faster than the disk answers wait for it instead
    // of taking a blocking thread each.
    let _running = state.readiness.lock().await;
    let (ready, checks) = match &state.storage {
        OpenStorage::Local(store) => {
            let store = store.clone();
            let checks = tokio::task::spawn_blocking(move || check_storage(&store)).await;
            let (index, writable) = match checks {
                Ok(checks) => checks,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "readiness check failed to run");
                    (false, false)
                }
            };
            (
                index && writable,
                json!({"index": outcome(index), "writable": outcome(writable)}),
            )
        }
        OpenStorage::Bucket(bucket) => {
            let answered = match bucket.probe().await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(error = %ErrorChain(&error), "not ready: the bucket does not answer");
                    false
                }
            };
            (answered, json!({"bucket": outcome(answered)}))
        }
    };
    answer(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if ready { "ready" } else { "unready" },
            "checks": checks,
        }),
    )
}

fn outcome(ok: bool) -> &'static str {
    if ok { "ok" } else { "failed" }
}

fn only_reads(method: &Method, path: &str) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unsupported,
            format!("method {method} is not supported on {path}"),
        ))
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = (status, format!("{body}\n")).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// (index readable, directory writable); failures are logged with their cause.
fn check_storage(store: &Store) -> (bool, bool) {
    let index = match store.index() {
        Ok(_) => true,
        Err(error) => {
            tracing::warn!(store = %store.location().display(), error = %ErrorChain(&error), "not ready: the store's index cannot be read");
            false
        }
    };
    let writable = match write_probe(store) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(store = %store.location().display(), error = %ErrorChain(&error), "not ready: the store's directory is not writable");
            false
        }
    };
    (index, writable)
}

/// Creates a new file in the store's directory and writes a byte to it: an [`AtomicFile`]
/// that is never committed, so it is removed when dropped (and a crash leftover carries the
/// temporary prefix that cleanups know).
fn write_probe(store: &Store) -> Result<(), FsError> {
    let fs = store.fs();
    let mut probe = AtomicFile::create(fs.as_ref(), Path::new(PROBE))?;
    probe
        .write_all(b"1")
        .map_err(|source| FsError::io("write", fs.display_path(Path::new(PROBE)), source))
}
