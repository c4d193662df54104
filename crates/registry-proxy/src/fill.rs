//! Blob fills: ONE upstream `GET` per digest, however many clients ask at once.
//!
//! [`Fills`] maps each digest being fetched to its [`Fill`]. The first client that misses
//! starts one: a task, spawned apart from every client (it finishes and commits even when
//! they all leave), streams the upstream body into the backend's fill scratch, a
//! [`BlobUpload`] (appended to `uploads/<id>` of the local store, or of a bucket backend's
//! per-process scratch store, with a running SHA-256, on a blocking writer thread; the
//! backend commits it once verified: `RegistryBackend::commit_fill`) and keeps the most
//! recent chunks in a ring in memory. Every client that asks for the digest meanwhile
//! follows the same fill: it reads what is still in the ring, what the ring no longer holds
//! from the upload's file (a late joiner, a slow client), then follows live, woken by a
//! `watch` channel whenever bytes arrive or the fill ends.
//!
//! Every follower **holds back its last piece** until the fill has verified the digest (the
//! commit — fsync, rename into `blobs/` — follows, off the clients' critical path): on a
//! mismatch nothing is committed and every follower ends with an error instead, so the
//! response is cut and no client ever receives a complete body of wrong bytes. The fill then leaves the registry and the next request starts a new
//! one. A range is served from the same fill (the fill always fetches the whole blob; no
//! partial object is cached), with the same hold-back.
//!
//! Over 800 lines on purpose: one state machine, a blob fill (upstream or peer stream, writer
//! thread, ring, followers, hold-back, commit, lease), whose parts share its private state.

use std::collections::{HashMap, VecDeque};
use std::io::{Seek as _, SeekFrom};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use sealer_fs_abstraction::{ErrorChain, ReadFile, error_chain};
use sealer_image_store::{BlobUpload, Digest, StoreError};
use sealer_registry_client::{BlobDownload, ClientError, RegistryClient};
use tokio::sync::{mpsc, watch};

use crate::backend::RegistryBackend;
use crate::bucket::{Acquire, Lease, LeaseError};
use crate::cluster::Cluster;
use crate::metrics::{FailureReason, UpstreamMetrics};
use crate::peer::PeerError;
use crate::source::BlobStream;
use crate::stream::{READ_CHUNK, read_chunk};

/// Bytes of recent chunks a fill keeps in memory for its followers (beyond that, chunks
/// already on disk are dropped and late readers read the upload's file).
const RING_CAPACITY: usize = 8 << 20;
/// Chunks queued between the fill and its writer thread.
const WRITE_QUEUE: usize = 16;

/// Why fetching from an upstream failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FetchError {
    /// The upstream says it does not have it (404).
    NotFound(String),
    /// The upstream did not answer in time.
    Timeout(Duration),
    /// The upstream refused, failed or broke off.
    Upstream(String),
    /// The bytes do not hash to the digest: nothing was stored.
    DigestMismatch(String),
    /// The upstream's answer is not valid (a manifest that does not parse).
    Invalid(String),
    /// The store failed.
    Store(String),
    /// The address policy refused the upstream's address (or a redirect's): nothing was
    /// fetched.
    Refused(String),
}

impl FetchError {
    /// A client error: 404 is [`Self::NotFound`], anything else [`Self::Upstream`].
    pub(crate) fn from_client(error: &ClientError) -> Self {
        // The whole chain: the cause (refused, reset, DNS, TLS) is what the client needs.
        let message = sealer_registry_client::error_chain(error);
        if error.address_refused().is_some() {
            Self::Refused(message)
        } else if error.status() == Some(404) {
            Self::NotFound(message)
        } else {
            Self::Upstream(message)
        }
    }

    /// The metrics label of a failed fill.
    fn reason(&self) -> FailureReason {
        match self {
            Self::DigestMismatch(_) => FailureReason::DigestMismatch,
            Self::Store(_) => FailureReason::Store,
            Self::NotFound(_)
            | Self::Timeout(_)
            | Self::Upstream(_)
            | Self::Invalid(_)
            | Self::Refused(_) => FailureReason::Upstream,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(message) => write!(f, "not found upstream: {message}"),
            Self::Timeout(after) => write!(f, "the upstream did not answer within {after:?}"),
            Self::Upstream(message) | Self::Invalid(message) | Self::Refused(message) => {
                f.write_str(message)
            }
            Self::DigestMismatch(message) => {
                write!(f, "{message}; nothing was stored")
            }
            Self::Store(message) => write!(f, "storing: {message}"),
        }
    }
}

/// Where a fill fetches from.
#[derive(Clone)]
pub(crate) struct FillSource {
    /// The upstream's client.
    pub(crate) client: RegistryClient,
    /// The registry name the client knows the upstream by.
    pub(crate) registry: String,
    /// The repository on the upstream.
    pub(crate) repository: String,
    /// The upstream's counters.
    pub(crate) metrics: Arc<UpstreamMetrics>,
    /// Bound on getting the response head of the blob.
    pub(crate) open_timeout: Duration,
    /// The other replicas over the same bucket: the fill takes the digest's lease first,
    /// or streams from its holder. `None`: a lone server.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// The fills in flight, by digest.
#[derive(Default)]
pub(crate) struct Fills {
    running: Mutex<HashMap<Digest, Arc<Fill>>>,
}

impl Fills {
    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, Arc<Fill>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fill of `digest` in flight, if any.
    pub(crate) fn get(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.lock().get(digest).cloned()
    }

    /// Joins the fill of `digest` in flight (`true`), or starts one from `source` into
    /// `backend` (`false`).
    pub(crate) fn join_or_start(
        self: &Arc<Self>,
        digest: &Digest,
        backend: &Arc<dyn RegistryBackend>,
        source: FillSource,
    ) -> (Arc<Fill>, bool) {
        let fill = {
            let mut running = self.lock();
            // A fill that failed is about to leave the registry: start afresh.
            if let Some(fill) = running.get(digest)
                && !matches!(fill.lock().outcome, Outcome::Failed(_))
            {
                return (fill.clone(), true);
            }
            let (changed, _) = watch::channel(());
            let fill = Arc::new(Fill {
                digest: digest.clone(),
                backend: backend.clone(),
                state: Mutex::new(FillState::default()),
                changed,
            });
            running.insert(digest.clone(), fill.clone());
            fill
        };
        tokio::spawn(run(self.clone(), fill.clone(), source));
        (fill, false)
    }

    /// Forgets `fill` (when it is still the one registered for its digest).
    fn finished(&self, fill: &Arc<Fill>) {
        let mut running = self.lock();
        if running
            .get(&fill.digest)
            .is_some_and(|current| Arc::ptr_eq(current, fill))
        {
            running.remove(&fill.digest);
        }
    }
}

/// How a fill is going.
#[derive(Debug, Clone, Default)]
enum Outcome {
    #[default]
    Running,
    /// Every byte arrived and the digest matches; the commit (fsync, rename into `blobs/`)
    /// is under way. Followers may deliver their last piece.
    Verified,
    /// Verified and in `blobs/`.
    Committed,
    /// Nothing was stored.
    Failed(FetchError),
}

/// What followers see of a fill.
#[derive(Debug, Default)]
struct FillState {
    /// The blob's size, once the upstream answered.
    size: Option<u64>,
    /// The upload whose file holds the bytes written so far.
    upload: Option<String>,
    /// Bytes received from the upstream.
    received: u64,
    /// Bytes written to the upload's file (readable there).
    written: u64,
    /// Recent chunks and their offsets: `[ring start, received)`.
    ring: VecDeque<(u64, Bytes)>,
    ring_bytes: usize,
    outcome: Outcome,
}

impl FillState {
    fn push(&mut self, chunk: Bytes) {
        self.ring_bytes += chunk.len();
        let len = chunk.len() as u64;
        self.ring.push_back((self.received, chunk));
        self.received += len;
        self.evict();
    }

    /// Drops the oldest chunks beyond the capacity, only those already on disk.
    fn evict(&mut self) {
        while self.ring_bytes > RING_CAPACITY {
            match self.ring.front() {
                Some((start, chunk)) if start + chunk.len() as u64 <= self.written => {
                    self.ring_bytes -= chunk.len();
                    self.ring.pop_front();
                }
                _ => break,
            }
        }
    }

    /// The bytes from `pos` (at most up to `end`) if the ring holds them.
    fn ring_slice(&self, pos: u64, end: u64) -> Option<Bytes> {
        let (first, _) = self.ring.front()?;
        if pos < *first || pos >= self.received {
            return None;
        }
        let index = self.ring.partition_point(|(start, _)| *start <= pos) - 1;
        let (start, chunk) = &self.ring[index];
        let from = usize::try_from(pos - start).ok()?;
        let to = chunk
            .len()
            .min(usize::try_from(end - start).unwrap_or(usize::MAX));
        Some(chunk.slice(from..to))
    }
}

/// One blob being fetched; see the module documentation.
pub(crate) struct Fill {
    digest: Digest,
    backend: Arc<dyn RegistryBackend>,
    state: Mutex<FillState>,
    /// Signalled on every change of `state`.
    changed: watch::Sender<()>,
}

impl Drop for Fill {
    fn drop(&mut self) {
        // The fill task and every follower are done with it.
        let committed = matches!(self.lock().outcome, Outcome::Committed);
        self.backend.fill_released(&self.digest, committed);
    }
}

impl Fill {
    fn lock(&self) -> MutexGuard<'_, FillState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, change: impl FnOnce(&mut FillState)) {
        self.update_if(true, change);
    }

    /// Changes the state, and wakes the followers when `notify`.
    fn update_if(&self, notify: bool, change: impl FnOnce(&mut FillState)) {
        change(&mut self.lock());
        if notify {
            self.changed.send_replace(());
        }
    }

    /// The blob's size, once the upstream told it (or the fill failed before that).
    pub(crate) fn known_size(&self) -> Option<u64> {
        self.lock().size
    }

    /// Waits until the blob's size is known: the upstream answered the `GET`.
    pub(crate) async fn size(&self) -> Result<u64, FetchError> {
        let mut changes = self.changed.subscribe();
        loop {
            changes.borrow_and_update();
            {
                let state = self.lock();
                if let Some(size) = state.size {
                    return Ok(size);
                }
                if let Outcome::Failed(error) = &state.outcome {
                    return Err(error.clone());
                }
            }
            if changes.changed().await.is_err() {
                return Err(FetchError::Upstream("the fill ended".to_owned()));
            }
        }
    }

    /// The bytes `span` of the blob as they arrive, the last piece held back until the
    /// digest is verified; an error item (the response is cut) when the fill fails.
    pub(crate) fn follow(self: &Arc<Self>, span: Range<u64>) -> BlobStream {
        let follower = Follower {
            changes: self.changed.subscribe(),
            fill: self.clone(),
            pos: span.start,
            end: span.end,
            held: None,
            done: false,
            file: None,
        };
        Box::pin(futures_util::stream::unfold(
            follower,
            |mut follower| async move { follower.next().await.map(|item| (item, follower)) },
        ))
    }
}

/// What a follower does next.
enum Step {
    /// Deliver these bytes.
    Data(Bytes),
    /// Read from the upload's file (`Some(id)`) or the committed blob, up to this offset.
    Read(Option<String>, u64),
    /// Nothing new yet.
    Wait,
    /// Everything is taken but the held piece, and the blob is verified.
    Finish,
    /// The fill failed.
    Fail(FetchError),
}

/// One client's stream over a fill.
struct Follower {
    fill: Arc<Fill>,
    changes: watch::Receiver<()>,
    /// The next offset to take.
    pos: u64,
    end: u64,
    /// The last piece taken, not yet delivered.
    held: Option<Bytes>,
    done: bool,
    /// The file read last, when the ring no longer held what was next.
    file: Option<OpenFile>,
}

impl Follower {
    async fn next(&mut self) -> Option<std::io::Result<Bytes>> {
        loop {
            if self.done {
                return None;
            }
            self.changes.borrow_and_update();
            let step = self.step(&self.fill.lock());
            match step {
                Step::Data(bytes) => {
                    if let Some(ready) = self.take(bytes) {
                        return Some(Ok(ready));
                    }
                }
                Step::Read(upload, upto) => match self.read(upload, upto).await {
                    Ok(Some(bytes)) => {
                        if let Some(ready) = self.take(bytes) {
                            return Some(Ok(ready));
                        }
                    }
                    // The upload's file moved into blobs/ (or went away): the outcome
                    // tells which, once it is set.
                    Ok(None) => self.wait().await,
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                },
                Step::Wait => self.wait().await,
                Step::Finish => {
                    self.done = true;
                    return self.held.take().map(Ok);
                }
                Step::Fail(error) => {
                    self.done = true;
                    self.held = None;
                    return Some(Err(std::io::Error::other(format!(
                        "blob {}: {error}",
                        self.fill.digest
                    ))));
                }
            }
        }
    }

    async fn wait(&mut self) {
        // The sender lives in the fill, which this follower keeps alive.
        let _ = self.changes.changed().await;
    }

    /// Takes `bytes` as the new held piece; returns the previous one, now deliverable.
    fn take(&mut self, bytes: Bytes) -> Option<Bytes> {
        self.pos += bytes.len() as u64;
        self.held.replace(bytes)
    }

    fn step(&self, state: &FillState) -> Step {
        let (verified, committed) = match &state.outcome {
            Outcome::Failed(error) => return Step::Fail(error.clone()),
            Outcome::Committed => (true, true),
            Outcome::Verified => (true, false),
            Outcome::Running => (false, false),
        };
        if self.pos >= self.end {
            return if verified { Step::Finish } else { Step::Wait };
        }
        if let Some(bytes) = state.ring_slice(self.pos, self.end) {
            return Step::Data(bytes);
        }
        if committed {
            return Step::Read(None, self.end);
        }
        match &state.upload {
            Some(upload) if self.pos < state.written => {
                Step::Read(Some(upload.clone()), state.written.min(self.end))
            }
            _ => Step::Wait,
        }
    }

    /// Reads from `pos` (at most [`READ_CHUNK`] bytes, up to `upto`) from the upload's file
    /// or the committed blob; `None` when the upload's file is gone. The file stays open for
    /// the next read (an open upload file stays readable after its rename into `blobs/`).
    async fn read(&mut self, upload: Option<String>, upto: u64) -> std::io::Result<Option<Bytes>> {
        let backend = self.fill.backend.clone();
        let digest = self.fill.digest.clone();
        let pos = self.pos;
        let want = usize::try_from((upto - pos).min(READ_CHUNK as u64)).unwrap_or(READ_CHUNK);
        let open = self.file.take().filter(|open| open.upload == upload);
        let (open, read) = tokio::task::spawn_blocking(move || {
            let mut open = match open {
                Some(open) => open,
                None => {
                    let opened = match &upload {
                        Some(id) => backend.open_upload_blocking(id),
                        None => backend.open_blob_blocking(&digest).map(Some),
                    };
                    match opened {
                        Ok(Some(file)) => OpenFile {
                            upload,
                            file,
                            pos: 0,
                        },
                        Ok(None) => return (None, Ok(None)),
                        Err(error) => return (None, Err(error)),
                    }
                }
            };
            let read = open.read_at(pos, want);
            (Some(open), read.map(Some))
        })
        .await
        .map_err(std::io::Error::other)?;
        if read.is_ok() {
            self.file = open;
        }
        read
    }
}

/// A file a follower reads (the upload's or the committed blob), kept open between reads.
struct OpenFile {
    /// The upload it belongs to; `None`: the committed blob.
    upload: Option<String>,
    file: Box<dyn ReadFile>,
    /// The file's position.
    pos: u64,
}

impl OpenFile {
    /// Exactly `want` bytes from `pos` (the caller knows they are written).
    fn read_at(&mut self, pos: u64, want: usize) -> std::io::Result<Bytes> {
        if self.pos != pos {
            self.file.seek(SeekFrom::Start(pos))?;
            self.pos = pos;
        }
        let chunk = read_chunk(&mut self.file, want)?.unwrap_or_default();
        self.pos += chunk.len() as u64;
        if chunk.len() != want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the blob file is shorter than what was written",
            ));
        }
        Ok(chunk)
    }
}

/// The fill task: fetch, publish the outcome, leave the registry.
async fn run(fills: Arc<Fills>, fill: Arc<Fill>, source: FillSource) {
    let mut started = false;
    let result = transfer(&fill, &source, &mut started).await;
    let failure = result.as_ref().err().map(FetchError::reason);
    match result {
        Ok(()) => {
            tracing::debug!(digest = %fill.digest, "fill committed");
            fill.update(|state| state.outcome = Outcome::Committed);
        }
        Err(error) => {
            tracing::warn!(digest = %fill.digest, registry = %source.registry, %error, "fill failed; nothing stored");
            fill.update(|state| state.outcome = Outcome::Failed(error));
        }
    }
    fills.finished(&fill);
    if started {
        source.metrics.fill_ended(failure);
    }
}

/// What the fill tells its writer thread.
enum Write {
    Chunk(Bytes),
    /// Every byte arrived: verify and commit.
    Finish,
}

/// Where a fill's bytes come from.
enum Incoming {
    /// The upstream's response.
    Upstream(Box<BlobDownload>),
    /// Another replica's fill of the digest, through its peer route.
    Peer(BlobStream),
}

impl Incoming {
    async fn chunk(&mut self) -> Result<Option<Bytes>, FetchError> {
        match self {
            Self::Upstream(download) => download
                .chunk()
                .await
                .map_err(|error| FetchError::from_client(&error)),
            Self::Peer(body) => body.next().await.transpose().map_err(|error| {
                FetchError::Upstream(format!("from the lease holder: {}", ErrorChain(&error)))
            }),
        }
    }
}

/// How many times a fill over a cluster looks for the blob again after the lease holder it
/// went to had finished (404 from its peer route) without the blob being in the bucket.
const PEER_ATTEMPTS: usize = 3;

/// Fetches and commits the blob; `started` is set once the upstream (or a peer) is asked (a
/// blob that turns out to be stored already is no fill).
async fn transfer(
    fill: &Arc<Fill>,
    source: &FillSource,
    started: &mut bool,
) -> Result<(), FetchError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        if stored_already(fill).await? {
            return Ok(());
        }
        let Some(cluster) = &source.cluster else {
            return fetch(fill, source, started, None).await;
        };
        let acquired = cluster
            .bucket
            .acquire_fill_lease(&fill.digest, &cluster.advertise_url, cluster.lease_ttl)
            .await
            .map_err(|error| FetchError::Store(error_chain(&error)))?;
        let holder = match acquired {
            Acquire::Acquired(lease) => {
                return fetch_under_lease(fill, source, started, cluster, lease).await;
            }
            // A lease of our own URL outlived its fill (a previous process, or a release that
            // failed): this process runs the only fill of the digest, so it fetches; other
            // replicas that find the lease stream from this fill.
            Acquire::HeldBy { holder, .. } if holder == cluster.advertise_url => {
                return fetch(fill, source, started, None).await;
            }
            Acquire::HeldBy { holder, .. } => holder,
        };
        match cluster.peers.stream(&holder, &fill.digest, 0).await {
            Ok(stream) => {
                tracing::info!(digest = %fill.digest, %holder, "streaming a fill from the lease holder");
                *started = true;
                source.metrics.peer_fill_started();
                let size = stream.size;
                return store(
                    fill,
                    source,
                    Incoming::Peer(stream.body),
                    size,
                    Some(cluster),
                )
                .await;
            }
            // Its fill ended (committed, or failed and released) between our read of the
            // lease and the request: look in the bucket again.
            Err(PeerError::Refused { status: 404, .. }) if attempt < PEER_ATTEMPTS => {
                tracing::debug!(digest = %fill.digest, %holder, "the lease holder's fill ended; looking again");
            }
            Err(error) => {
                return Err(FetchError::Upstream(format!(
                    "streaming from the fill lease holder {holder}: {} (retried once the \
                     lease expires)",
                    ErrorChain(&error)
                )));
            }
        }
    }
}

/// Whether the blob is in the store already (a fill that ended just before this one
/// started, or another replica's): then the followers read it from there.
async fn stored_already(fill: &Arc<Fill>) -> Result<bool, FetchError> {
    let present = fill
        .backend
        .stat_blob(fill.digest.clone())
        .await
        .map_err(|error| FetchError::Store(error.message))?;
    if let Some(size) = present {
        fill.update(|state| {
            state.size = Some(size);
            state.written = size;
        });
    }
    Ok(present.is_some())
}

/// [`fetch`] while holding `lease`: renewed every third of its lifetime while the fill
/// runs, released once it ended either way.
async fn fetch_under_lease(
    fill: &Arc<Fill>,
    source: &FillSource,
    started: &mut bool,
    cluster: &Arc<Cluster>,
    lease: Lease,
) -> Result<(), FetchError> {
    let (stop, mut stopped) = watch::channel(false);
    let renewer = {
        let cluster = cluster.clone();
        let mut lease = lease.clone();
        tokio::spawn(async move {
            let period = (cluster.lease_ttl / 3).max(Duration::from_millis(1));
            loop {
                tokio::select! {
                    _ = stopped.changed() => return lease,
                    () = tokio::time::sleep(period) => {}
                }
                match cluster
                    .bucket
                    .renew_fill_lease(&lease, cluster.lease_ttl)
                    .await
                {
                    Ok(renewed) => lease = renewed,
                    Err(error) => {
                        // Another replica took it over (it thought this one dead): this fill
                        // still completes and verifies; the other fetches too.
                        tracing::warn!(digest = %lease.digest(), error = %ErrorChain(&error), "renewing a fill lease");
                        if matches!(error, LeaseError::Lost { .. }) {
                            return lease;
                        }
                    }
                }
            }
        })
    };
    let result = fetch(fill, source, started, Some(lease.generation())).await;
    let _ = stop.send(true);
    let lease = renewer.await.unwrap_or(lease);
    match cluster.bucket.release_fill_lease(&lease).await {
        Ok(released) => {
            tracing::debug!(digest = %fill.digest, released, "fill lease given up");
        }
        Err(error) => {
            tracing::warn!(digest = %fill.digest, error = %ErrorChain(&error), "releasing a fill lease (it expires by itself)");
        }
    }
    result
}

/// Fetches the blob from the upstream and commits it; `lease`: the generation of the fill
/// lease held, for the logs.
async fn fetch(
    fill: &Arc<Fill>,
    source: &FillSource,
    started: &mut bool,
    lease: Option<u64>,
) -> Result<(), FetchError> {
    *started = true;
    source.metrics.fill_started();
    if let Some(generation) = lease {
        tracing::info!(digest = %fill.digest, generation, "fetching from the upstream under the fill lease");
    }
    let opened = tokio::time::timeout(
        source.open_timeout,
        source
            .client
            .get_blob(&source.registry, &source.repository, &fill.digest, 0),
    )
    .await;
    let download = match opened {
        Err(_) => return Err(FetchError::Timeout(source.open_timeout)),
        Ok(Err(error)) => return Err(FetchError::from_client(&error)),
        Ok(Ok(download)) => download,
    };
    let size = download.size().ok_or_else(|| {
        FetchError::Upstream("the upstream sent the blob without a Content-Length".to_owned())
    })?;
    store(
        fill,
        source,
        Incoming::Upstream(Box::new(download)),
        size,
        None,
    )
    .await
}

/// Streams `incoming` (`size` bytes) through the ring and the writer, verifies and commits
/// it. `peer_of`: the cluster whose lease holder sends the bytes (they are not counted as
/// received from the upstream, and the holder's own commit is awaited first).
async fn store(
    fill: &Arc<Fill>,
    source: &FillSource,
    mut incoming: Incoming,
    size: u64,
    peer_of: Option<&Cluster>,
) -> Result<(), FetchError> {
    let from_peer = peer_of.is_some();
    let backend = fill.backend.clone();
    let digest = fill.digest.clone();
    let upload = backend
        .begin_fill()
        .await
        .map_err(|error| FetchError::Store(error.message))?;
    let id = upload.id().to_owned();
    let (sender, receiver) = mpsc::channel(WRITE_QUEUE);
    let writer = {
        let fill = fill.clone();
        tokio::task::spawn_blocking(move || write(upload, receiver, &fill, size))
    };
    fill.update(|state| {
        state.size = Some(size);
        state.upload = Some(id);
    });
    let streamed = loop {
        match incoming.chunk().await {
            Ok(Some(chunk)) => {
                if !from_peer {
                    source.metrics.received(chunk.len() as u64);
                }
                fill.update(|state| state.push(chunk.clone()));
                if sender.send(Write::Chunk(chunk)).await.is_err() {
                    // The writer failed; its result says why.
                    break Ok(());
                }
            }
            Ok(None) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    if streamed.is_ok() {
        let _ = sender.send(Write::Finish).await;
    }
    // Without `Finish` the writer drops the upload, which removes its file.
    drop(sender);
    let written = writer
        .await
        .map_err(|error| FetchError::Store(error_chain(&error)))?;
    streamed?;
    let written = written?;
    if let Some(cluster) = peer_of {
        await_holder_commit(fill, cluster).await;
    }
    // Verified; the followers may finish. Held fresh by the commit: the cached manifest
    // that needs it may be gone already, so GC keeps it a while. A bucket backend skips the
    // upload when the blob is there already (the lease holder committed it).
    backend
        .commit_fill(written, digest)
        .await
        .map_err(|error| FetchError::Store(error.message))
}

/// Waits (at most one lease lifetime) until the blob streamed from the lease holder is in
/// the bucket, committed by the holder, so this replica does not upload it a second time.
/// The followers are not held up: they finish once the digest is verified.
async fn await_holder_commit(fill: &Fill, cluster: &Cluster) {
    const POLL: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + cluster.lease_ttl;
    loop {
        match cluster.bucket.stat_blob(&fill.digest).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            // The commit that follows reports a bucket that fails.
            Err(_) => return,
        }
        if tokio::time::Instant::now() + POLL > deadline {
            tracing::debug!(digest = %fill.digest, "the lease holder has not committed the blob; committing it here");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The writer thread: appends chunks to the upload, publishes progress, and on `Finish`
/// verifies and hands the upload back for the commit. Anything else drops the upload (its
/// file is removed).
fn write(
    mut upload: BlobUpload,
    mut receiver: mpsc::Receiver<Write>,
    fill: &Fill,
    size: u64,
) -> Result<BlobUpload, FetchError> {
    let store_error = |error: StoreError| FetchError::Store(error_chain(&error));
    // Written bytes not announced yet: followers are woken by every chunk received, so
    // the writer wakes them only every READ_CHUNK bytes (for those reading the file, once
    // the upstream is done) and when the digest is verified.
    let mut unannounced = 0usize;
    while let Some(message) = receiver.blocking_recv() {
        match message {
            Write::Chunk(chunk) => {
                upload.write_all(&chunk).map_err(store_error)?;
                unannounced += chunk.len();
                let announce = unannounced >= READ_CHUNK;
                if announce {
                    unannounced = 0;
                }
                fill.update_if(announce, |state| {
                    state.written += chunk.len() as u64;
                    state.evict();
                });
            }
            Write::Finish => {
                if upload.size() != size {
                    return Err(FetchError::Upstream(format!(
                        "the upstream sent {} of {size} bytes",
                        upload.size()
                    )));
                }
                // Verified, the followers may finish; the fsync is not their business.
                let actual = upload
                    .digest(fill.digest.algorithm())
                    .map_err(store_error)?;
                if actual != fill.digest {
                    return Err(FetchError::DigestMismatch(format!(
                        "the upstream's bytes hash to {actual}, not {}",
                        fill.digest
                    )));
                }
                fill.update(|state| state.outcome = Outcome::Verified);
                return Ok(upload);
            }
        }
    }
    Err(FetchError::Upstream(
        "the transfer stopped before the end".to_owned(),
    ))
}

// Scratch directories from `tempfile` (clippy.toml bans it outside fs-abstraction).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use sealer_image_store::Store;

    async fn collect(mut stream: BlobStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        bytes
    }

    /// Followers behind the ring read the upload's file, then the committed blob, in
    /// pieces of at most READ_CHUNK from wherever their span starts, and deliver the last
    /// piece only once the digest is verified.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn followers_behind_the_ring_read_the_upload_file_and_then_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(dir.path()).unwrap();
        let data: Vec<u8> = (0..3 * READ_CHUNK + 12_345)
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        let size = data.len() as u64;
        let digest = Digest::sha256(&data);
        let mut upload = store.begin_upload().unwrap();
        upload.write_all(&data).unwrap();
        let (changed, _) = watch::channel(());
        let fill = Arc::new(Fill {
            digest: digest.clone(),
            backend: Arc::new(LocalBackend::new(store.clone())),
            // Everything is on disk and the ring holds none of it.
            state: Mutex::new(FillState {
                size: Some(size),
                upload: Some(upload.id().to_owned()),
                received: size,
                written: size,
                ..FillState::default()
            }),
            changed,
        });
        let whole = tokio::spawn(collect(fill.follow(0..size)));
        let from = READ_CHUNK as u64 + 999;
        let ranged = tokio::spawn(collect(fill.follow(from..size - 5)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Not verified yet: both are waiting with their last piece held.
        assert!(!whole.is_finished() && !ranged.is_finished());
        upload.commit(&digest).unwrap();
        fill.update(|state| state.outcome = Outcome::Committed);
        assert_eq!(whole.await.unwrap(), data);
        assert_eq!(ranged.await.unwrap(), &data[from as usize..data.len() - 5]);
        // A follower starting after the commit reads the blob.
        let late = collect(fill.follow(17..size)).await;
        assert_eq!(late, &data[17..]);
    }

    #[test]
    fn the_ring_serves_what_it_holds_and_evicts_only_what_is_on_disk() {
        let mut state = FillState::default();
        state.push(Bytes::from_static(b"0123"));
        state.push(Bytes::from_static(b"4567"));
        assert_eq!(state.ring_slice(0, 8).unwrap(), Bytes::from_static(b"0123"));
        assert_eq!(state.ring_slice(2, 8).unwrap(), Bytes::from_static(b"23"));
        assert_eq!(state.ring_slice(5, 7).unwrap(), Bytes::from_static(b"56"));
        assert!(state.ring_slice(8, 9).is_none());
        let big = Bytes::from(vec![7u8; RING_CAPACITY]);
        state.push(big);
        // Nothing is on disk yet: nothing is dropped.
        assert_eq!(state.ring.len(), 3);
        state.written = 8;
        state.evict();
        assert_eq!(state.ring.len(), 1);
        assert!(state.ring_slice(0, 8).is_none());
        assert_eq!(state.ring_slice(8, 10).unwrap().len(), 2);
    }
}
