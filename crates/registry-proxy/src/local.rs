//! [`LocalSource`]: the [`ContentSource`] that serves the local store.

use std::io::{Seek, SeekFrom};
use std::sync::Arc;

use axum::http::StatusCode;
use bytes::Bytes;
use sealer_image_store::{
    BlobStore, Descriptor, Digest, MAX_MANIFEST_SIZE, ManifestDocument, Store, StoreError,
};

use crate::catalog::{Referrers, entry_repository, entry_tag};
use crate::error::{ApiError, ErrorCode};
use crate::route::{ManifestRef, RepoPath};
use crate::source::{
    BlobContent, BlobRequest, ContentSource, ManifestContent, ManifestRequest, ResponseMeta,
    Served, StoreNames, range_not_satisfiable,
};
use crate::stream::file_stream;

/// Serves manifests, blobs, tags and referrers from a [`Store`]. Every store call runs on
/// a blocking thread; blob bodies are streamed.
#[derive(Debug, Clone)]
pub struct LocalSource {
    store: Store,
    names: StoreNames,
    referrers: Arc<Referrers>,
    delete_blobs: bool,
}

/// What [`LocalSource::delete_blob`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDeleted {
    /// Nothing used the blob: its file is gone.
    Removed,
    /// Another repository's image (or a cached upstream image) uses it: the file stays,
    /// and goes through GC once nothing uses it.
    Kept,
}

impl LocalSource {
    /// Serves `store`, naming repositories with `names`.
    pub fn new(store: Store, names: StoreNames) -> Self {
        Self {
            store,
            names,
            referrers: Arc::new(Referrers::new()),
            delete_blobs: false,
        }
    }

    /// The same source with blob deletes allowed or not (the `delete_blobs` setting; off
    /// by default): see [`Self::delete_blob`].
    pub fn with_blob_deletes(mut self, allowed: bool) -> Self {
        self.delete_blobs = allowed;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// How repositories map to store names.
    pub fn names(&self) -> &StoreNames {
        &self.names
    }

    /// Stores a manifest byte-exact and names it in `repo`, as a push does: validated (JSON,
    /// media type, the blobs of an image manifest present, the digest of a digest
    /// reference), then tagged, or for a digest reference recorded as an unnamed entry of
    /// the repository. A pull-through layer fills the store through this too. Returns the
    /// manifest's digest and its subject, if any.
    pub async fn put_manifest(
        &self,
        repo: &RepoPath,
        reference: &ManifestRef,
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<(Digest, Option<Digest>), ApiError> {
        let name = self.names.name(repo)?;
        let tagged = match reference {
            ManifestRef::Tag(tag) => Some(self.names.reference(repo, tag)?.to_string()),
            ManifestRef::Digest(_) => None,
        };
        let store = self.store.clone();
        let reference = reference.clone();
        blocking("store a manifest", move || {
            crate::handlers::store_manifest(&store, &name, tagged, &reference, &bytes, content_type)
        })
        .await
    }
}

impl LocalSource {
    /// `DELETE /v2/<repo>/blobs/<digest>`. The store has no per-repository blob links, so a
    /// delete drops `repo`'s claim on the blob without ever breaking another repository's
    /// image. Under the GC lock (no push names a manifest meanwhile):
    ///
    /// * blob deletes are off (`delete_blobs: false`) → 405 `UNSUPPORTED`;
    /// * the blob is absent → 404 `BLOB_UNKNOWN`;
    /// * an entry of `repo` (a tag, or a manifest pushed by digest) reaches it → 409
    ///   `DENIED` naming that manifest: delete the manifest first;
    /// * an entry of another repository, a cached upstream image, or an unnamed entry
    ///   reaches it → [`BlobDeleted::Kept`] (202; GC removes it once nothing does);
    /// * nothing reaches it → its file is removed, [`BlobDeleted::Removed`] (202). A push
    ///   still uploading its blobs then gets 400 `MANIFEST_BLOB_UNKNOWN` for its manifest,
    ///   never a 201 for a broken image.
    pub async fn delete_blob(
        &self,
        repo: &RepoPath,
        digest: &Digest,
    ) -> Result<BlobDeleted, ApiError> {
        if !self.delete_blobs {
            return Err(ApiError::new(
                ErrorCode::Unsupported,
                "blob deletes are disabled: set `delete_blobs: true` in the registry \
                 configuration to allow them",
            ));
        }
        let name = self.names.name(repo)?;
        let path_name = repo.path_name.clone();
        let store = self.store.clone();
        let digest = digest.clone();
        blocking("delete a blob", move || {
            let internal = |error: StoreError| ApiError::internal("delete a blob", error);
            let _gc = store.gc_lock().map_err(internal)?;
            if store.blobs().stat(&digest).map_err(internal)?.is_none() {
                return Err(ApiError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in the registry"),
                )
                .with_detail(serde_json::json!({ "digest": digest.to_string() })));
            }
            let mut used_elsewhere = false;
            for entry in store.index().map_err(internal)?.manifests {
                let reach = store
                    .reachable(std::slice::from_ref(&entry))
                    .map_err(internal)?;
                if !reach.present.contains(&digest) {
                    continue;
                }
                if entry_repository(&entry) == Some(name.as_str()) {
                    let manifest = entry
                        .ref_name()
                        .map_or_else(|| entry.digest.to_string(), str::to_owned);
                    return Err(ApiError::new(
                        ErrorCode::Denied,
                        format!(
                            "blob {digest} is used by manifest {manifest} of repository \
                             {path_name}: delete the manifest first"
                        ),
                    )
                    .with_status(StatusCode::CONFLICT));
                }
                used_elsewhere = true;
            }
            if used_elsewhere {
                return Ok(BlobDeleted::Kept);
            }
            store.blobs().delete(&digest).map_err(internal)?;
            Ok(BlobDeleted::Removed)
        })
        .await
    }
}

/// Runs blocking store work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ApiError::internal(what, error))?
}

/// A manifest as stored: exact bytes and media type.
pub(crate) fn read_manifest(
    store: &Store,
    digest: &Digest,
    listed_type: Option<String>,
) -> Result<Option<(Bytes, String)>, ApiError> {
    match store.blobs().stat(digest) {
        Ok(Some(size)) if size <= MAX_MANIFEST_SIZE => {}
        Ok(_) => return Ok(None),
        Err(error) => return Err(ApiError::internal("stat a manifest", error)),
    }
    let bytes = match store.read_verified(digest) {
        Ok(bytes) => bytes,
        Err(StoreError::BlobNotFound(_)) => return Ok(None),
        Err(error) => return Err(ApiError::internal("read a manifest", error)),
    };
    let media_type = match listed_type {
        Some(media_type) => media_type,
        None => match ManifestDocument::parse(&bytes, None) {
            Ok((media_type, _)) => media_type,
            // A layer or config asked for as a manifest.
            Err(_) => return Ok(None),
        },
    };
    Ok(Some((Bytes::from(bytes), media_type)))
}

/// 404 `MANIFEST_UNKNOWN` for a platform manifest a multi-arch image lists but the store
/// does not carry; the message (and `detail`) name the platforms it carries.
fn platform_not_carried(absent: &StoreError) -> ApiError {
    let mut error = ApiError::new(ErrorCode::ManifestUnknown, absent.to_string());
    if let StoreError::PlatformNotCarried {
        reference,
        platform,
        carried,
    } = absent
    {
        error = error.with_detail(serde_json::json!({
            "image": reference,
            "platform": platform,
            "carried": carried.split(", ").collect::<Vec<_>>(),
        }));
    }
    error
}

fn manifest_unknown(repo: &RepoPath, reference: &ManifestRef) -> ApiError {
    ApiError::new(
        ErrorCode::ManifestUnknown,
        format!(
            "manifest {reference} is not in repository {}",
            repo.path_name
        ),
    )
}

#[async_trait::async_trait]
impl ContentSource for LocalSource {
    async fn manifest(
        &self,
        repo: &RepoPath,
        reference: &ManifestRef,
        _request: &ManifestRequest,
    ) -> Result<Served<ManifestContent>, ApiError> {
        let store = self.store.clone();
        let (digest, listed) = match reference {
            ManifestRef::Tag(tag) => {
                let name = self.names.reference(repo, tag)?.to_string();
                let index = {
                    let store = store.clone();
                    blocking("read index.json", move || {
                        store
                            .index_snapshot()
                            .map_err(|error| ApiError::internal("read index.json", error))
                    })
                    .await?
                };
                let entry = index
                    .by_name(&name)
                    .ok_or_else(|| manifest_unknown(repo, reference))?;
                (entry.digest.clone(), Some(entry.media_type.clone()))
            }
            ManifestRef::Digest(digest) => (digest.clone(), None),
        };
        let read_digest = digest.clone();
        let found = blocking("read a manifest", move || {
            let listed = match listed {
                Some(listed) => Some(listed),
                None => store
                    .index_snapshot()
                    .map_err(|error| ApiError::internal("read index.json", error))?
                    .by_digest(&read_digest)
                    .map(|entry| entry.media_type.clone()),
            };
            let found = read_manifest(&store, &read_digest, listed)?;
            if found.is_none() {
                // A platform a partial multi-arch image lists but does not carry: the 404
                // names the platforms there are.
                let absent = store
                    .absent_platform(&read_digest)
                    .map_err(|error| ApiError::internal("read a manifest", error))?;
                if let Some(absent) = absent {
                    return Err(platform_not_carried(&absent));
                }
            }
            Ok(found)
        })
        .await?;
        let (bytes, media_type) = found.ok_or_else(|| manifest_unknown(repo, reference))?;
        Ok(Served {
            content: ManifestContent {
                digest,
                media_type,
                size: bytes.len() as u64,
                bytes: Some(bytes),
            },
            meta: ResponseMeta::local(repo),
        })
    }

    async fn blob(
        &self,
        repo: &RepoPath,
        digest: &Digest,
        request: BlobRequest,
    ) -> Result<Served<BlobContent>, ApiError> {
        let store = self.store.clone();
        let digest = digest.clone();
        let content = blocking("read a blob", move || {
            let unknown = || {
                ApiError::new(
                    ErrorCode::BlobUnknown,
                    format!("blob {digest} is not in the registry"),
                )
                .with_detail(serde_json::json!({ "digest": digest.to_string() }))
            };
            let size = store
                .blobs()
                .stat(&digest)
                .map_err(|error| ApiError::internal("stat a blob", error))?
                .ok_or_else(unknown)?;
            let range = match request.range {
                Some(range) => Some(
                    range
                        .resolve(size)
                        .ok_or_else(|| range_not_satisfiable(size))?,
                ),
                None => None,
            };
            if request.head {
                return Ok(BlobContent {
                    size,
                    range,
                    body: None,
                });
            }
            let mut file = match store.blobs().open(&digest) {
                Ok(file) => file,
                Err(StoreError::BlobNotFound(_)) => return Err(unknown()),
                Err(error) => return Err(ApiError::internal("open a blob", error)),
            };
            let span = range.clone().unwrap_or(0..size);
            if span.start > 0 {
                file.seek(SeekFrom::Start(span.start))
                    .map_err(|error| ApiError::internal("seek in a blob", error))?;
            }
            Ok(BlobContent {
                size,
                range,
                body: Some(file_stream(file, span.end - span.start)),
            })
        })
        .await?;
        Ok(Served {
            content,
            meta: ResponseMeta::local(repo),
        })
    }

    async fn tags(&self, repo: &RepoPath) -> Result<Served<Vec<String>>, ApiError> {
        let name = self.names.name(repo)?;
        let store = self.store.clone();
        let index = blocking("read index.json", move || {
            store
                .index_snapshot()
                .map_err(|error| ApiError::internal("read index.json", error))
        })
        .await?;
        let mut known = false;
        let mut tags: Vec<String> = Vec::new();
        for entry in &index.index().manifests {
            if entry_repository(entry) == Some(name.as_str()) {
                known = true;
            }
            if let Some(tag) = entry_tag(entry, &name) {
                tags.push(tag.to_owned());
            }
        }
        if !known {
            return Err(ApiError::new(
                ErrorCode::NameUnknown,
                format!("repository {} is not in the registry", repo.path_name),
            ));
        }
        tags.sort();
        tags.dedup();
        Ok(Served {
            content: tags,
            meta: ResponseMeta::local(repo),
        })
    }

    async fn referrers(
        &self,
        repo: &RepoPath,
        subject: &Digest,
    ) -> Result<Served<Vec<Descriptor>>, ApiError> {
        let name = self.names.name(repo)?;
        let store = self.store.clone();
        let referrers = self.referrers.clone();
        let subject = subject.clone();
        let found = blocking("list referrers", move || {
            referrers
                .referrers(&store, &name, &subject)
                .map_err(|error| ApiError::internal("list referrers", error))
        })
        .await?;
        Ok(Served {
            content: found,
            meta: ResponseMeta::local(repo),
        })
    }
}
