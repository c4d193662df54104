//! What the store's `index.json` says about repositories: which entries belong to which
//! repository, the tags of a repository, and which manifests refer to a subject (the
//! referrers API), derived from the store so that it is right after a restart and for
//! content that arrived by `sealer load` too.
//!
//! Entries named `registry/repository:tag` belong to `registry/repository`. Manifests pushed
//! by digest get an unnamed entry annotated with [`REPOSITORY_ANNOTATION`], so that `gc`
//! keeps them and they stay listed in their repository.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use sealer_image_store::model::media_type;
use sealer_image_store::{
    BlobStore, Descriptor, Digest, MAX_MANIFEST_SIZE, ManifestDocument, Store, StoreError,
};

pub use sealer_image_store::entry_repository;
pub use sealer_image_store::model::REPOSITORY_ANNOTATION;

/// Nested indexes deeper than this are not walked.
const MAX_DEPTH: usize = 8;

/// The tag of an entry named in `repository`, if it is.
pub fn entry_tag<'e>(entry: &'e Descriptor, repository: &str) -> Option<&'e str> {
    entry
        .ref_name()?
        .strip_prefix(repository)?
        .strip_prefix(':')
}

/// What the referrers API needs of a manifest.
#[derive(Debug, Clone)]
struct DocInfo {
    media_type: String,
    size: u64,
    subject: Option<Digest>,
    artifact_type: Option<String>,
    annotations: BTreeMap<String, String>,
    /// Entries of an index (empty for an image manifest).
    children: Vec<Descriptor>,
}

/// A manifest with a subject, and the repositories it is reachable from.
#[derive(Debug, Clone)]
struct Referrer {
    repositories: BTreeSet<String>,
    descriptor: Descriptor,
}

#[derive(Debug, Default)]
struct Cache {
    /// The SHA-256 of the `index.json` the rest was computed from.
    fingerprint: Option<Digest>,
    by_subject: HashMap<Digest, Vec<Referrer>>,
    /// Parsed manifests (`None`: absent or not a manifest), kept across rebuilds.
    docs: HashMap<Digest, Option<DocInfo>>,
}

/// The referrers of every subject, recomputed when `index.json` changes (only manifests
/// not seen before are read).
#[derive(Debug, Default)]
pub struct Referrers {
    cache: Mutex<Cache>,
}

impl Referrers {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Descriptors of the manifests in `repository` (`registry/repository`) whose subject
    /// is `subject`, ordered by digest. Blocking: call it from a blocking task.
    pub fn referrers(
        &self,
        store: &Store,
        repository: &str,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>, StoreError> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let index_bytes = store.fs().read(Path::new("index.json"))?;
        let fingerprint = Digest::sha256(&index_bytes);
        if cache.fingerprint.as_ref() != Some(&fingerprint) {
            rebuild(&mut cache, store)?;
            cache.fingerprint = Some(fingerprint);
        }
        let mut found: Vec<Descriptor> = cache
            .by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|referrer| referrer.repositories.contains(repository))
            .map(|referrer| referrer.descriptor.clone())
            .collect();
        found.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(found)
    }
}

fn rebuild(cache: &mut Cache, store: &Store) -> Result<(), StoreError> {
    let roots = store.index()?.manifests;
    let mut referrers: HashMap<Digest, Referrer> = HashMap::new();
    let mut seen = HashSet::new();
    for root in &roots {
        let Some(repository) = entry_repository(root) else {
            continue;
        };
        let mut pending = vec![(root.digest.clone(), 0)];
        let mut visited = BTreeSet::new();
        while let Some((digest, depth)) = pending.pop() {
            if depth > MAX_DEPTH || !visited.insert(digest.clone()) {
                continue;
            }
            seen.insert(digest.clone());
            let Some(info) = doc_info(cache, store, &digest)? else {
                continue;
            };
            if info.subject.is_some() {
                let referrer = referrers.entry(digest.clone()).or_insert_with(|| Referrer {
                    repositories: BTreeSet::new(),
                    descriptor: referrer_descriptor(&digest, &info),
                });
                referrer.repositories.insert(repository.to_owned());
            }
            for child in &info.children {
                pending.push((child.digest.clone(), depth + 1));
            }
        }
    }
    cache.docs.retain(|digest, _| seen.contains(digest));
    cache.by_subject.clear();
    for (digest, referrer) in referrers {
        let subject = cache
            .docs
            .get(&digest)
            .and_then(|info| info.as_ref())
            .and_then(|info| info.subject.clone());
        if let Some(subject) = subject {
            cache.by_subject.entry(subject).or_default().push(referrer);
        }
    }
    Ok(())
}

/// The parsed manifest `digest`, memoised.
fn doc_info(
    cache: &mut Cache,
    store: &Store,
    digest: &Digest,
) -> Result<Option<DocInfo>, StoreError> {
    if let Some(known) = cache.docs.get(digest) {
        return Ok(known.clone());
    }
    let info = match store.blobs().stat(digest)? {
        Some(size) if size <= MAX_MANIFEST_SIZE => {
            let bytes = store.read_verified(digest)?;
            match ManifestDocument::parse(&bytes, None) {
                Ok((media_type, document)) => Some(describe(media_type, size, document)),
                Err(_) => None,
            }
        }
        _ => None,
    };
    cache.docs.insert(digest.clone(), info.clone());
    Ok(info)
}

fn describe(media_type: String, size: u64, document: ManifestDocument) -> DocInfo {
    match document {
        ManifestDocument::Image(manifest) => {
            let artifact_type = manifest
                .artifact_type
                .clone()
                .or_else(|| Some(manifest.config.media_type.clone()));
            DocInfo {
                media_type,
                size,
                subject: manifest.subject.map(|subject| subject.digest),
                artifact_type,
                annotations: manifest.annotations,
                children: Vec::new(),
            }
        }
        ManifestDocument::Index(index) => DocInfo {
            media_type,
            size,
            subject: index.subject.map(|subject| subject.digest),
            artifact_type: index.artifact_type,
            annotations: index.annotations,
            children: index
                .manifests
                .into_iter()
                .filter(|child| {
                    media_type::is_index(&child.media_type)
                        || media_type::is_manifest(&child.media_type)
                })
                .collect(),
        },
    }
}

/// The subject of the manifest `bytes` (digest `digest`) and its descriptor as the referrers
/// API lists it (media type, size, artifact type, annotations); `None` when it is no
/// manifest or has no subject.
pub(crate) fn referrer_of(digest: &Digest, bytes: &[u8]) -> Option<(Digest, Descriptor)> {
    let (media_type, document) = ManifestDocument::parse(bytes, None).ok()?;
    let info = describe(media_type, bytes.len() as u64, document);
    let subject = info.subject.clone()?;
    Some((subject, referrer_descriptor(digest, &info)))
}

fn referrer_descriptor(digest: &Digest, info: &DocInfo) -> Descriptor {
    let mut descriptor = Descriptor::new(info.media_type.clone(), digest.clone(), info.size);
    descriptor.artifact_type = info.artifact_type.clone();
    descriptor.annotations = info.annotations.clone();
    descriptor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: Option<&str>, repository: Option<&str>) -> Descriptor {
        let mut descriptor = Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256(b"m"), 1);
        if let Some(name) = name {
            descriptor.annotations.insert(
                sealer_image_store::model::REF_NAME_ANNOTATION.to_owned(),
                name.to_owned(),
            );
        }
        if let Some(repository) = repository {
            descriptor
                .annotations
                .insert(REPOSITORY_ANNOTATION.to_owned(), repository.to_owned());
        }
        descriptor
    }

    #[test]
    fn entries_belong_to_the_repository_of_their_name_or_annotation() {
        let tagged = entry(Some("localhost:5000/team/app:v1"), None);
        assert_eq!(entry_repository(&tagged), Some("localhost:5000/team/app"));
        assert_eq!(entry_tag(&tagged, "localhost:5000/team/app"), Some("v1"));
        assert_eq!(entry_tag(&tagged, "localhost:5000/team/ap"), None);
        assert_eq!(entry_tag(&tagged, "localhost:5000/team"), None);
        let unnamed = entry(None, Some("docker.io/library/nginx"));
        assert_eq!(entry_repository(&unnamed), Some("docker.io/library/nginx"));
        assert_eq!(entry_tag(&unnamed, "docker.io/library/nginx"), None);
        assert_eq!(entry_repository(&entry(None, None)), None);
        // A bare name without a tag (as some layouts write) belongs to no repository.
        assert_eq!(entry_repository(&entry(Some("latest"), None)), None);
    }
}
