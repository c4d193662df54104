//! Parses Kubefiles and builds cluster images into a sealer image store.
//!
//! * [`kubefile`]: the Kubefile parser — syntax tree, validation, variable expansion.
//! * [`engine`]: the build engine — layers, cache, metadata, the image in the store.
#![deny(missing_docs)]

pub mod engine;
pub mod kubefile;
