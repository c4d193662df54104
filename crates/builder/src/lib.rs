//! Parses Kubefiles and builds cluster images into a sealer image store.
//!
//! * [`kubefile`]: the Kubefile parser — syntax tree, validation, variable expansion.
#![deny(missing_docs)]

pub mod kubefile;
