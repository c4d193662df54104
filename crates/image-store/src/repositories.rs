//! The entries of `index.json` a registry keeps per repository: a tag is an entry named
//! with the full reference (`org.opencontainers.image.ref.name`); a manifest pushed by digest
//! is an unnamed entry annotated [`REPOSITORY_ANNOTATION`] with the repository's store name,
//! so that `gc` keeps it and the repository lists it. This module is the one place that
//! writes them.

use crate::digest::Digest;
use crate::error::Result;
use crate::model::{Descriptor, Index, REF_NAME_ANNOTATION, REPOSITORY_ANNOTATION};
use crate::store::Store;

/// The repository (store name, `registry/repository`) an `index.json` entry belongs to: its
/// reference without the tag, or its repository annotation when it has no name.
pub fn entry_repository(entry: &Descriptor) -> Option<&str> {
    if let Some(name) = entry.ref_name() {
        let last_slash = name.rfind('/').map_or(0, |at| at + 1);
        return name[last_slash..]
            .rfind(':')
            .map(|at| &name[..last_slash + at]);
    }
    entry
        .annotations
        .get(REPOSITORY_ANNOTATION)
        .map(String::as_str)
}

impl Store {
    /// Names the manifest `entry` in `repository`: under each of `tags` (full references,
    /// replacing what they named), or with no tag as an unnamed entry of the repository
    /// (unless it has one for that digest already). The repository's unnamed entries for
    /// `superseded` (the children of a pushed index, now reached through it) are dropped. One
    /// `index.json` update.
    pub fn name_in_repository(
        &self,
        repository: &str,
        tags: &[String],
        entry: Descriptor,
        superseded: &[Digest],
    ) -> Result<()> {
        self.update_index(|index| {
            index.manifests.retain(|existing| {
                !(existing.ref_name().is_none()
                    && entry_repository(existing) == Some(repository)
                    && superseded.contains(&existing.digest))
            });
            if tags.is_empty() {
                name_entry(index, repository, None, entry.clone());
            }
            for tag in tags {
                name_entry(index, repository, Some(tag), entry.clone());
            }
            Ok(())
        })
    }

    /// Drops every entry of `repository` (tags included) for the manifest `digest`. One
    /// `index.json` update; the blob stays (the caller decides whether anything else uses it).
    pub fn unname_in_repository(&self, repository: &str, digest: &Digest) -> Result<()> {
        self.update_index(|index| {
            index.manifests.retain(|entry| {
                !(&entry.digest == digest && entry_repository(entry) == Some(repository))
            });
            Ok(())
        })
    }
}

/// Names `entry` in `repository` of `index`: as the tag `tagged` (full reference), replacing
/// what it pointed to, or else as an unnamed entry annotated with the repository, unless the
/// repository already has one for that digest.
fn name_entry(index: &mut Index, repository: &str, tagged: Option<&str>, mut entry: Descriptor) {
    match tagged {
        Some(tagged) => {
            entry
                .annotations
                .insert(REF_NAME_ANNOTATION.to_owned(), tagged.to_owned());
            match index
                .manifests
                .iter_mut()
                .find(|existing| existing.ref_name() == Some(tagged))
            {
                Some(existing) => *existing = entry,
                None => index.manifests.push(entry),
            }
        }
        None => {
            let known = index.manifests.iter().any(|existing| {
                existing.digest == entry.digest && entry_repository(existing) == Some(repository)
            });
            if !known {
                entry
                    .annotations
                    .insert(REPOSITORY_ANNOTATION.to_owned(), repository.to_owned());
                index.manifests.push(entry);
            }
        }
    }
}
