//! Bridges between the store's blocking I/O and async bodies: a file read on a blocking
//! thread into a [`BlobStream`], and a request body written into a backend's upload
//! ([`BackendUpload`]). Neither buffers more than a few chunks.

use std::io::Read;
use std::sync::{Mutex, PoisonError};

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use sealer_fs_abstraction::{ReadFile, error_chain};
use tokio::sync::mpsc;

use crate::backend::BackendUpload;
use crate::error::ApiError;
use crate::source::BlobStream;

/// Bytes per chunk read from a blob file: large enough that the reading thread hands few
/// chunks over (each is a wakeup of the response's task) and hyper sends each with few
/// `writev`s.
pub(crate) const READ_CHUNK: usize = 1 << 20;
/// Chunks queued between the reading thread and the response: with the one being read and
/// the one hyper is sending, a response holds at most 4 MiB (more depth did not help).
const READ_DEPTH: usize = 2;
/// Chunks in flight between a request body and the thread writing it to an upload.
const CHANNEL_DEPTH: usize = 4;
/// Buffers kept for reuse, process-wide (at most this many × [`READ_CHUNK`] bytes idle:
/// what 16 responses at full speed hold).
const POOL_BUFFERS: usize = 64;

/// Buffers of [`READ_CHUNK`] bytes that were sent and dropped, ready to be read into
/// again: no allocation, page faults or zeroing per chunk.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A filled buffer handed out as [`Bytes`] (zero-copy, [`Bytes::from_owner`]); its memory
/// goes back to [`POOL`] when the last `Bytes` of it is dropped (once hyper has sent it).
struct PooledChunk {
    buffer: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for PooledChunk {
    fn as_ref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl Drop for PooledChunk {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.buffer);
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < POOL_BUFFERS {
            pool.push(buffer);
        }
    }
}

/// A buffer of [`READ_CHUNK`] initialised bytes, from the pool when it has one.
fn pooled_buffer() -> Vec<u8> {
    let reused = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
    reused.unwrap_or_else(|| vec![0u8; READ_CHUNK])
}

/// Reads up to `want` (at most [`READ_CHUNK`]) bytes of `file` into a pooled buffer:
/// `Ok(None)` at the end of the file, else the bytes read (fewer than `want` only at the
/// end of the file).
pub(crate) fn read_chunk(file: &mut dyn Read, want: usize) -> std::io::Result<Option<Bytes>> {
    let mut buffer = pooled_buffer();
    let want = want.min(buffer.len());
    let read = read_full(file, &mut buffer[..want]);
    // Wrapped at once, so that the buffer returns to the pool on every path.
    let mut chunk = PooledChunk { buffer, len: 0 };
    match read {
        Ok(0) => Ok(None),
        Ok(len) => {
            chunk.len = len;
            Ok(Some(Bytes::from_owner(chunk)))
        }
        Err(error) => Err(error),
    }
}

/// Streams `len` bytes of `file` (positioned already) from a blocking thread. A file that
/// ends early yields an error, so the response is cut rather than cleanly short.
pub fn file_stream(mut file: Box<dyn ReadFile>, len: u64) -> BlobStream {
    let (sender, receiver) = mpsc::channel::<std::io::Result<Bytes>>(READ_DEPTH);
    tokio::task::spawn_blocking(move || {
        let mut remaining = len;
        while remaining > 0 {
            let want = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let item = match read_chunk(&mut file, want) {
                Ok(None) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the blob file is shorter than its size",
                )),
                Ok(Some(chunk)) => {
                    remaining -= chunk.len() as u64;
                    Ok(chunk)
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
    /// Writing to the storage failed; the upload is unusable.
    Store(ApiError),
    /// The body was longer than `limit`.
    TooLarge,
    /// The upload would grow past the largest blob allowed (the bound, in bytes).
    OverMaxSize(u64),
}

/// Appends `body` to `upload` (the backend writes while the body streams in), refusing
/// more than `limit` bytes and growing the upload past `max_size` bytes. Returns the
/// outcome; on an error, what arrived before it is written (after a
/// [`PumpError::Store`] the upload is unusable).
pub async fn pump(
    upload: &mut dyn BackendUpload,
    body: Body,
    limit: Option<u64>,
    max_size: u64,
) -> Result<u64, PumpError> {
    let room = max_size.saturating_sub(upload.size());
    let (sender, receiver) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let reading = async move {
        let mut stream = body.into_data_stream();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    received += chunk.len() as u64;
                    if limit.is_some_and(|limit| received > limit) {
                        return Err(PumpError::TooLarge);
                    }
                    if received > room {
                        return Err(PumpError::OverMaxSize(max_size));
                    }
                    // The writer stopped: its result says why.
                    if sender.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
                Err(error) => return Err(PumpError::Client(error_chain(&error))),
            }
        }
        Ok(())
    };
    // The sender is dropped when `reading` ends, which ends the append.
    let (outcome, written) = tokio::join!(reading, upload.append(receiver));
    let written = written.map_err(PumpError::Store)?;
    outcome.map(|()| written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_streams_deliver_every_byte_and_fail_on_a_short_file() {
        let data: Vec<u8> = (0..2 * READ_CHUNK + 777).map(|i| (i % 251) as u8).collect();
        for round in 0..3 {
            // Later rounds read into buffers that went back to the pool.
            let mut stream =
                file_stream(Box::new(std::io::Cursor::new(data.clone())), 5000 + round);
            let mut read = Vec::new();
            while let Some(chunk) = stream.next().await {
                read.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(read, &data[..5000 + round as usize]);
            let whole = file_stream(
                Box::new(std::io::Cursor::new(data.clone())),
                data.len() as u64,
            );
            let chunks: Vec<Bytes> = whole.map(|chunk| chunk.unwrap()).collect().await;
            assert!(chunks.iter().all(|chunk| chunk.len() <= READ_CHUNK));
            assert_eq!(chunks.concat(), data);
        }
        let short = file_stream(
            Box::new(std::io::Cursor::new(data.clone())),
            data.len() as u64 + 1,
        );
        let items: Vec<std::io::Result<Bytes>> = short.collect().await;
        let (last, rest) = items.split_last().unwrap();
        assert!(last.is_err());
        assert_eq!(
            rest.iter()
                .map(|chunk| chunk.as_ref().unwrap().len())
                .sum::<usize>(),
            data.len()
        );
    }
}
