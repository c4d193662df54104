//! Bridges between the store's blocking I/O and async bodies: a file read on a blocking
//! thread into a [`BlobStream`], and a request body written into a [`BlobUpload`] on a
//! blocking thread. Neither buffers more than a few chunks.

use std::io::Read;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sealer_fs_abstraction::ReadFile;
use sealer_image_store::{BlobUpload, StoreError};
use tokio::sync::mpsc;

use crate::source::BlobStream;

/// Bytes per chunk read from a blob file.
const READ_CHUNK: usize = 256 * 1024;
/// Chunks in flight between the reading thread and the response (and between the request
/// and the writing thread).
const CHANNEL_DEPTH: usize = 4;

/// Streams `len` bytes of `file` (positioned already) from a blocking thread. A file that
/// ends early yields an error, so the response is cut rather than cleanly short.
pub fn file_stream(mut file: Box<dyn ReadFile>, len: u64) -> BlobStream {
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(CHANNEL_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut remaining = len;
        while remaining > 0 {
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let mut buffer = vec![0u8; want];
            let item = match read_full(&mut file, &mut buffer) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob file is shorter than its size",
                )),
                Ok(read) => {
                    buffer.truncate(read);
                    remaining -= read as u64;
                    Ok(Bytes::from(buffer))
                }
                Err(error) => Err(error),
            };
            let failed = item.is_err();
            // The receiver is gone when the client went away: stop reading.
            if sender.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

fn read_full(file: &mut dyn Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// How writing a request body into an upload ended.
#[derive(Debug)]
pub enum PumpError {
    /// The client's body failed (disconnect, bad chunking); what arrived before is kept.
    Client(String),
    /// Writing to the store failed; the upload is unusable.
    Store(StoreError),
    /// The body was longer than `limit`.
    TooLarge,
}

/// Appends `body` to `upload` on a blocking thread, refusing more than `limit` bytes.
/// Returns the upload (unless the store failed, which makes it unusable) and the outcome.
pub async fn pump(
    upload: BlobUpload,
    body: Body,
    limit: Option<u64>,
) -> (Option<BlobUpload>, Result<u64, PumpError>) {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = upload;
        let mut written = 0u64;
        while let Some(chunk) = receiver.blocking_recv() {
            if let Err(error) = upload.write_all(&chunk) {
                return (None, Err(error));
            }
            written += chunk.len() as u64;
        }
        (Some(upload), Ok(written))
    });
    let mut stream = body.into_data_stream();
    let mut outcome = Ok(());
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                received += chunk.len() as u64;
                if limit.is_some_and(|limit| received > limit) {
                    outcome = Err(PumpError::TooLarge);
                    break;
                }
                if sender.send(chunk).await.is_err() {
                    break;
                }
            }
            Err(error) => {
                outcome = Err(PumpError::Client(error.to_string()));
                break;
            }
        }
    }
    drop(sender);
    match writer.await {
        Ok((upload, Ok(written))) => (upload, outcome.map(|()| written)),
        Ok((_, Err(error))) => (None, Err(PumpError::Store(error))),
        Err(join) => (
            None,
            Err(PumpError::Store(StoreError::io(
                "writing an upload",
                std::io::Error::other(join.to_string()),
            ))),
        ),
    }
}
