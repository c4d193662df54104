//! Talks to remote OCI/Docker registries: authentication, streaming manifest and blob
//! transfers, and pull/push between a registry and a sealer image store.
//!
//! The transfer engine arrives with the registry-client issue; image references are parsed
//! by `sealer_image_store::reference`, which this crate shares.
#![deny(missing_docs)]
