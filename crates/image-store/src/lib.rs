//! The local content-addressed image store.
#![deny(missing_docs)]
