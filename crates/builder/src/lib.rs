//! Parses Kubefiles and builds cluster images into a sealer image store.
#![deny(missing_docs)]
