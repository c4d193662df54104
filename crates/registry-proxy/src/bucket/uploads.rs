//! Chunked uploads whose state lives in the bucket, so that their PATCHes may reach any
//! replica.
//!
//! `uploads/<id>/state.json` holds the offset, the multipart upload of `uploads/<id>/data`
//! and its parts, the name of the tail object (the bytes after the last part, fewer than
//! S3's minimum part size) and the serialized SHA-256 state of every byte so far. Each append
//! writes new objects (a part, or a tail under a fresh name) and then replaces the state with
//! `If-Match` on the version it read: a writer holding a stale state is refused and changes
//! nothing another writer relies on. Two appends to one session at the same offset are a
//! protocol error (the API orders PATCHes by `Content-Range`); if they still race on a part
//! number, S3's check of the recorded part ETags at completion fails the upload rather than
//! assembling wrong bytes, and the digest is checked before anything is visible anyway.
//!
//! A purge of an idle session first marks its state `purged` with `If-Match` on the idle
//! version it read, so a writer that advanced the session meanwhile keeps it, and a writer
//! that finds its objects gone is told the upload is unknown (the client starts again),
//! never that the storage failed.

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{
    GetOptions, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use sealer_fs_abstraction::{ErrorChain, error_chain};
use sealer_image_store::{Algorithm, Digest};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

use super::{BlobPut, Bucket, BucketError, is_conflict, store_error};

/// S3's smallest part (every part but the last); smaller appends collect in the tail object.
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// A chunked upload's state as one replica read it.
#[derive(Debug, Clone)]
pub struct UploadState {
    id: String,
    version: UpdateVersion,
    doc: StateDoc,
}

/// `uploads/<id>/state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDoc {
    /// The repository it was started for: a request naming another one does not find it.
    #[serde(default)]
    repository: String,
    /// Bytes received.
    offset: u64,
    /// The multipart upload of `data`, created when the first part is due.
    multipart_id: Option<String>,
    /// ETags of the parts uploaded, in order.
    parts: Vec<String>,
    /// Bytes in parts.
    parts_size: u64,
    /// The object holding the bytes after the parts, if any.
    tail: Option<String>,
    /// `SerializableState` of the SHA-256 of every byte so far, hex.
    sha256: String,
    /// Written by a purge before it removes the session's objects: the session is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    purged: bool,
}

impl UploadState {
    /// The upload id (letters and digits).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Bytes received so far (the next append starts here).
    pub fn offset(&self) -> u64 {
        self.doc.offset
    }

    /// The repository the upload was started for.
    pub fn repository(&self) -> &str {
        &self.doc.repository
    }
}

impl Bucket {
    /// Starts a chunked upload into `repository` with a fresh random id.
    pub async fn start_upload(&self, repository: &str) -> Result<UploadState, BucketError> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|error| BucketError::Random {
            what: "an upload id",
            reason: error_chain(&error),
        })?;
        let id = hex::encode(raw);
        let doc = StateDoc {
            repository: repository.to_owned(),
            offset: 0,
            multipart_id: None,
            parts: Vec::new(),
            parts_size: 0,
            tail: None,
            sha256: hex::encode(Sha256::new().serialize().as_slice()),
            purged: false,
        };
        let path = self.upload_path(&id, "state.json")?;
        let version = self
            .write_json(&path, &doc, PutMode::Create)
            .await
            .map_err(store_error("creating upload state", &path))?;
        Ok(UploadState { id, version, doc })
    }

    /// Reads an upload's current state (any replica may have advanced it).
    pub async fn read_upload(&self, id: &str) -> Result<UploadState, BucketError> {
        let path = self.upload_path(id, "state.json")?;
        let Some((bytes, version)) = self.read_versioned(&path, "reading upload state").await?
        else {
            return Err(BucketError::NotFound {
                what: "upload",
                path: path.to_string(),
            });
        };
        let doc: StateDoc =
            serde_json::from_slice(&bytes).map_err(|error| BucketError::Corrupt {
                what: "upload state",
                path: path.to_string(),
                reason: error_chain(&error),
            })?;
        if doc.purged {
            return Err(upload_gone(&path));
        }
        Ok(UploadState {
            id: id.to_owned(),
            version,
            doc,
        })
    }

    /// Appends `data` at `state.offset()` and returns the new state. Fails with
    /// [`BucketError::StaleUpload`] (nothing changed) when another writer advanced the
    /// upload since `state` was read.
    pub async fn append_upload(
        &self,
        state: &UploadState,
        data: Bytes,
    ) -> Result<UploadState, BucketError> {
        let mut doc = state.doc.clone();
        let mut hasher = self.hasher(state)?;
        hasher.update(&data);
        doc.sha256 = hex::encode(hasher.serialize().as_slice());
        doc.offset += data.len() as u64;

        let pending = match &state.doc.tail {
            Some(tail) => {
                let old = self
                    .read_session_object(&self.upload_path(&state.id, tail)?)
                    .await?;
                let mut joined = BytesMut::with_capacity(old.len() + data.len());
                joined.extend_from_slice(&old);
                joined.extend_from_slice(&data);
                joined.freeze()
            }
            None => data,
        };
        // What this append wrote, removed again when its state write is refused.
        let mut created_multipart = None;
        let mut new_tail = None;
        let data_path = self.upload_path(&state.id, "data")?;
        if pending.len() >= MIN_PART_SIZE {
            let multipart_id = match &doc.multipart_id {
                Some(id) => id.clone(),
                None => {
                    let id = self
                        .multipart
                        .create_multipart(&data_path)
                        .await
                        .map_err(store_error("starting the multipart upload of", &data_path))?;
                    created_multipart = Some(id.clone());
                    id
                }
            };
            let part = self
                .multipart
                .put_part(
                    &data_path,
                    &multipart_id,
                    doc.parts.len(),
                    PutPayload::from(pending.clone()),
                )
                .await
                .map_err(session_error("uploading a part of", &data_path))?;
            doc.multipart_id = Some(multipart_id);
            doc.parts.push(part.content_id);
            doc.parts_size += pending.len() as u64;
            doc.tail = None;
        } else if pending.is_empty() {
            doc.tail = None;
        } else {
            let name = format!("tail-{}-{}", doc.offset, random_suffix()?);
            let path = self.upload_path(&state.id, &name)?;
            self.store
                .put(&path, PutPayload::from(pending))
                .await
                .map_err(store_error("writing the tail of", &path))?;
            new_tail = Some(path);
            doc.tail = Some(name);
        }

        let state_path = self.upload_path(&state.id, "state.json")?;
        match self
            .write_json(&state_path, &doc, PutMode::Update(state.version.clone()))
            .await
        {
            Ok(version) => {
                if let Some(old) = &state.doc.tail {
                    self.remove_quietly(&self.upload_path(&state.id, old)?)
                        .await;
                }
                Ok(UploadState {
                    id: state.id.clone(),
                    version,
                    doc,
                })
            }
            Err(error) => {
                if let Some(path) = new_tail {
                    self.remove_quietly(&path).await;
                }
                if let Some(id) = created_multipart
                    && let Err(error) = self.multipart.abort_multipart(&data_path, &id).await
                {
                    tracing::warn!(error = %ErrorChain(&error), upload = state.id, "aborting an unused multipart upload");
                }
                if is_conflict(&error) {
                    // Moved on by another writer, or purged (then the upload is unknown).
                    self.read_upload(&state.id).await?;
                    Err(BucketError::StaleUpload {
                        id: state.id.clone(),
                        offset: state.doc.offset,
                    })
                } else {
                    Err(store_error("writing upload state", &state_path)(error))
                }
            }
        }
    }

    /// Completes the upload as the blob `digest`: the hash state must match (else the upload
    /// is removed and nothing is visible); the bytes become `blobs/<alg>/<hex>` unless that
    /// blob already exists; the session's objects are removed either way.
    pub async fn complete_upload(
        &self,
        state: &UploadState,
        digest: &Digest,
    ) -> Result<BlobPut, BucketError> {
        if digest.algorithm() != Algorithm::Sha256 {
            return Err(BucketError::UnsupportedDigest {
                id: state.id.clone(),
                digest: digest.clone(),
            });
        }
        let actual = self.hasher(state)?.finalize();
        let actual: Digest = format!("sha256:{}", hex::encode(actual))
            .parse()
            .map_err(|_| BucketError::Corrupt {
                what: "upload state",
                path: state.id.clone(),
                reason: "the hash state gives no digest".to_owned(),
            })?;
        let size = state.doc.offset;
        if actual != *digest {
            self.cancel_upload(state).await?;
            return Err(BucketError::DigestMismatch {
                expected: digest.clone(),
                actual,
                size,
            });
        }
        // As `put_blob`: a blob present is referenced (a GC claim on it cleared), one a GC
        // run is deleting is written anew once the delete is done.
        if let Some(stat) = self.before_writing(digest).await? {
            self.cancel_upload(state).await?;
            return Ok(BlobPut {
                size: stat.size,
                created: false,
            });
        }
        let blob_path = self.blob_path(digest);
        let tail = match &state.doc.tail {
            Some(tail) => {
                self.read_session_object(&self.upload_path(&state.id, tail)?)
                    .await?
            }
            None => Bytes::new(),
        };
        match &state.doc.multipart_id {
            None => {
                // Everything is in the tail: one conditional PUT (a racing writer of the same
                // digest writes the same bytes).
                let options = PutOptions {
                    mode: PutMode::Create,
                    ..PutOptions::default()
                };
                match self
                    .store
                    .put_opts(&blob_path, PutPayload::from(tail), options)
                    .await
                {
                    Ok(_) => {}
                    Err(error) if is_conflict(&error) => {}
                    Err(error) => return Err(store_error("writing", &blob_path)(error)),
                }
            }
            Some(multipart_id) => {
                let data_path = self.upload_path(&state.id, "data")?;
                let mut parts: Vec<PartId> = state
                    .doc
                    .parts
                    .iter()
                    .map(|content_id| PartId {
                        content_id: content_id.clone(),
                    })
                    .collect();
                if !tail.is_empty() {
                    let part = self
                        .multipart
                        .put_part(
                            &data_path,
                            multipart_id,
                            parts.len(),
                            PutPayload::from(tail),
                        )
                        .await
                        .map_err(session_error("uploading the last part of", &data_path))?;
                    parts.push(part);
                }
                self.multipart
                    .complete_multipart(&data_path, multipart_id, parts)
                    .await
                    .map_err(session_error(
                        "completing the multipart upload of",
                        &data_path,
                    ))?;
                // The bytes are verified (hash state and part ETags); a server-side copy puts
                // them under their digest.
                self.store
                    .copy(&data_path, &blob_path)
                    .await
                    .map_err(store_error("copying the upload to", &blob_path))?;
                self.remove_quietly(&data_path).await;
            }
        }
        self.remove_session_objects(state).await;
        tracing::debug!(%digest, size, upload = state.id, "chunked upload completed");
        self.after_writing(digest, size).await
    }

    /// Removes an upload: its multipart upload is aborted, its objects deleted.
    pub async fn cancel_upload(&self, state: &UploadState) -> Result<(), BucketError> {
        if let Some(multipart_id) = &state.doc.multipart_id {
            let data_path = self.upload_path(&state.id, "data")?;
            match self
                .multipart
                .abort_multipart(&data_path, multipart_id)
                .await
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(error) => {
                    return Err(store_error("aborting the multipart upload of", &data_path)(
                        error,
                    ));
                }
            }
        }
        self.remove_session_objects(state).await;
        Ok(())
    }

    /// Removes every upload left idle longer than `idle` (its state unchanged since), and
    /// every object under `uploads/` older than that whose session has no state any more (a
    /// crash between writes). Returns how many sessions were removed. A writer that advances
    /// a session while it is being purged keeps it (the purge's compare-and-swap loses); one
    /// that finds it purged gets [`BucketError::NotFound`]. Nothing else is touched.
    pub async fn purge_uploads(&self, idle: std::time::Duration) -> Result<usize, BucketError> {
        let prefix = self.path(["uploads"]);
        let cutoff = std::time::SystemTime::now()
            .checked_sub(idle)
            .unwrap_or(std::time::UNIX_EPOCH);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(store_error("listing uploads under", &prefix))?;
        let mut sessions = std::collections::BTreeSet::new();
        let mut old_objects = Vec::new();
        for meta in &objects {
            let Some(mut parts) = meta.location.prefix_match(&prefix) else {
                continue;
            };
            let (Some(id), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (id, name) = (id.as_ref().to_owned(), name.as_ref().to_owned());
            if name == "state.json" {
                sessions.insert(id.clone());
            }
            if std::time::SystemTime::from(meta.last_modified) < cutoff {
                old_objects.push((id, name, meta.location.clone()));
            }
        }
        let mut purged = 0;
        for (id, name, location) in old_objects {
            if name == "state.json" {
                if self.purge_session(&id, &location, cutoff).await? {
                    purged += 1;
                }
            } else if !sessions.contains(&id) {
                self.remove_quietly(&location).await;
            }
        }
        if purged > 0 {
            tracing::info!(purged, "abandoned uploads removed");
        }
        Ok(purged)
    }

    /// Purges the session whose state is at `path` if that state is still older than
    /// `cutoff`: marks it purged with `If-Match` on the version read, then removes its
    /// objects. False when it is gone or a writer moved it on first.
    async fn purge_session(
        &self,
        id: &str,
        path: &Path,
        cutoff: std::time::SystemTime,
    ) -> Result<bool, BucketError> {
        let Some((bytes, version, modified)) = self
            .read_versioned_dated(path, "reading upload state")
            .await?
        else {
            return Ok(false);
        };
        // Read again after the listing: a writer may have advanced it since.
        if modified >= cutoff {
            return Ok(false);
        }
        let Ok(mut doc) = serde_json::from_slice::<StateDoc>(&bytes) else {
            // Not ours to interpret: an old object without a session; it goes.
            self.remove_quietly(path).await;
            return Ok(true);
        };
        let version = if doc.purged {
            version
        } else {
            doc.purged = true;
            match self.write_json(path, &doc, PutMode::Update(version)).await {
                Ok(written) => written,
                Err(error) if is_conflict(&error) => return Ok(false),
                Err(error) => return Err(store_error("marking an upload purged", path)(error)),
            }
        };
        let state = UploadState {
            id: id.to_owned(),
            version,
            doc,
        };
        self.cancel_upload(&state).await?;
        Ok(true)
    }

    /// The tail and the state (the state last: a crash in between leaves a session that a
    /// purge of old sessions removes).
    async fn remove_session_objects(&self, state: &UploadState) {
        if let Some(tail) = &state.doc.tail
            && let Ok(path) = self.upload_path(&state.id, tail)
        {
            self.remove_quietly(&path).await;
        }
        if let Ok(path) = self.upload_path(&state.id, "state.json") {
            self.remove_quietly(&path).await;
        }
    }

    fn hasher(&self, state: &UploadState) -> Result<Sha256, BucketError> {
        let corrupt = |reason: &str| BucketError::Corrupt {
            what: "upload state",
            path: state.id.clone(),
            reason: format!("sha256 state: {reason}"),
        };
        let raw = hex::decode(&state.doc.sha256).map_err(|_| corrupt("not hex"))?;
        let serialized = SerializedState::<Sha256>::try_from(raw.as_slice())
            .map_err(|_| corrupt("wrong length"))?;
        Sha256::deserialize(&serialized).map_err(|_| corrupt("does not deserialize"))
    }

    /// An object of a session; gone means the session was purged.
    async fn read_session_object(&self, path: &Path) -> Result<Bytes, BucketError> {
        let result = self
            .store
            .get_opts(path, GetOptions::default())
            .await
            .map_err(session_error("reading", path))?;
        result.bytes().await.map_err(session_error("reading", path))
    }

    /// Deletes an object that nothing refers to any more; a failure only leaves garbage.
    async fn remove_quietly(&self, path: &Path) {
        if let Err(error) = self.store.delete(path).await {
            tracing::warn!(error = %ErrorChain(&error), %path, "removing an object left it behind");
        }
    }

    /// `uploads/<id>/<name>`, the id checked.
    fn upload_path(&self, id: &str, name: &str) -> Result<Path, BucketError> {
        if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(BucketError::Invalid {
                what: "upload id",
                value: id.to_owned(),
                reason: "1 to 128 letters and digits".to_owned(),
            });
        }
        Ok(self.path(["uploads", id, name]))
    }
}

/// The error of a session whose objects are gone: a purge removed them while a writer held
/// the session, which the client learns as an unknown upload.
fn upload_gone(path: &Path) -> BucketError {
    BucketError::NotFound {
        what: "upload",
        path: path.to_string(),
    }
}

/// [`store_error`], but an object (or multipart upload) of a session that is not found means
/// the session was purged: [`upload_gone`].
fn session_error(
    operation: &'static str,
    path: &Path,
) -> impl FnOnce(object_store::Error) -> BucketError {
    let path = path.clone();
    move |error| match error {
        object_store::Error::NotFound { .. } => upload_gone(&path),
        other => store_error(operation, &path)(other),
    }
}

/// 8 random bytes, hex.
fn random_suffix() -> Result<String, BucketError> {
    let mut raw = [0u8; 8];
    getrandom::fill(&mut raw).map_err(|error| BucketError::Random {
        what: "an object name",
        reason: error_chain(&error),
    })?;
    Ok(hex::encode(raw))
}
