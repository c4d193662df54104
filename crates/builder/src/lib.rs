//! Parses Kubefiles and builds cluster images into a sealer image store.
//!
//! * [`kubefile`]: the Kubefile syntax tree.
#![deny(missing_docs)]

pub mod kubefile;
