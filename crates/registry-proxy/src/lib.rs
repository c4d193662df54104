//! An OCI distribution server over a sealer image store that is also a pull-through cache for
//! many upstream registries at once, routed by `?ns=` and by path prefix.
#![deny(missing_docs)]
