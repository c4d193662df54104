//! Finds every container image a cluster needs in Kubernetes YAML, Helm charts, image lists
//! and application directories, with the file and line that asked for each.
#![deny(missing_docs)]
