//! [`LocalSource`]: the [`ContentSource`] that serves the registry's own content, through
//! its [`RegistryBackend`].

use std::sync::Arc;

use bytes::Bytes;
use sealer_image_store::{Descriptor, Digest, Store};

use crate::backend::{LocalBackend, RegistryBackend};
use crate::error::{ApiError, ErrorCode};
use crate::route::{ManifestRef, RepoPath};
use crate::source::{
    BlobContent, BlobRequest, ContentSource, ManifestContent, ManifestRequest, ResponseMeta,
    Served, StoreNames,
};

/// Serves manifests, blobs, tags and referrers from a [`RegistryBackend`] (the local store
/// by default). Every store call runs on a blocking thread; blob bodies are streamed.
#[derive(Debug, Clone)]
pub struct LocalSource {
    backend: Arc<dyn RegistryBackend>,
    names: StoreNames,
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
        Self::with_backend(Arc::new(LocalBackend::new(store)), names)
    }

    /// Serves the content of `backend` (the local store, a bucket), naming repositories
    /// with `names`.
    pub fn with_backend(backend: Arc<dyn RegistryBackend>, names: StoreNames) -> Self {
        Self {
            backend,
            names,
            delete_blobs: false,
        }
    }

    /// The same source with blob deletes allowed or not (the `delete_blobs` setting; off
    /// by default): see [`Self::delete_blob`].
    pub fn with_blob_deletes(mut self, allowed: bool) -> Self {
        self.delete_blobs = allowed;
        self
    }

    /// The backend every read and write of this source goes through.
    pub fn backend(&self) -> &Arc<dyn RegistryBackend> {
        &self.backend
    }

    /// How repositories map to store names.
    pub fn names(&self) -> &StoreNames {
        &self.names
    }

    /// Stores a manifest byte-exact and names it in `repo`, as a push does: validated (JSON,
    /// media type, the blobs of an image manifest present, the digest of a digest
    /// reference), then tagged (by the reference's tag, or a digest reference by `tags`),
    /// or for a digest reference without `tags` recorded as an unnamed entry of the
    /// repository. A pull-through layer fills the store through this too. Returns the
    /// manifest's digest and its subject, if any.
    pub async fn put_manifest(
        &self,
        repo: &RepoPath,
        reference: &ManifestRef,
        tags: &[String],
        bytes: Bytes,
        content_type: Option<String>,
    ) -> Result<(Digest, Option<Digest>), ApiError> {
        let name = self.names.name(repo)?;
        let own = match reference {
            ManifestRef::Tag(tag) => Some(tag),
            ManifestRef::Digest(_) => None,
        };
        let tagged = own
            .into_iter()
            .chain(tags)
            .map(|tag| Ok(self.names.reference(repo, tag)?.to_string()))
            .collect::<Result<Vec<_>, ApiError>>()?;
        self.backend
            .put_manifest(name, tagged, reference.clone(), bytes, content_type)
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
        self.backend
            .delete_blob(name, repo.path_name.clone(), digest.clone())
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
        let (digest, listed) = match reference {
            ManifestRef::Tag(tag) => {
                let name = self.names.reference(repo, tag)?.to_string();
                let (digest, media_type) = self
                    .backend
                    .resolve_tag(name)
                    .await?
                    .ok_or_else(|| manifest_unknown(repo, reference))?;
                (digest, Some(media_type))
            }
            ManifestRef::Digest(digest) => (digest.clone(), None),
        };
        let found = self.backend.manifest(digest.clone(), listed).await?;
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
        let content = self.backend.blob(digest.clone(), request).await?;
        Ok(Served {
            content,
            meta: ResponseMeta::local(repo),
        })
    }

    async fn tags(&self, repo: &RepoPath) -> Result<Served<Vec<String>>, ApiError> {
        let name = self.names.name(repo)?;
        let tags = self.backend.tags(name).await?.ok_or_else(|| {
            ApiError::new(
                ErrorCode::NameUnknown,
                format!("repository {} is not in the registry", repo.path_name),
            )
        })?;
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
        let found = self.backend.referrers(name, subject.clone()).await?;
        Ok(Served {
            content: found,
            meta: ResponseMeta::local(repo),
        })
    }
}
