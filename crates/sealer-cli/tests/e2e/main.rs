//! End-to-end tests of the `sealer` binary against real skopeo, umoci and docker-registry.
//!
//! They live in sealer-cli because only a package's own tests get `CARGO_BIN_EXE_sealer`
//! (and `cargo test` builds the binary before them). Tests that need skopeo or umoci print
//! `SKIPPED: <tool> not installed` and pass when it is missing, except under `CI=true`,
//! where they fail.
//!
//! The harness touches the disk directly (corrupting blobs, counting files: what it checks
//! is sealer's behaviour, not its own), and a failed expectation is a failed test.
#![allow(
    clippy::disallowed_methods,
    clippy::disallowed_types,
    clippy::expect_used,
    clippy::unwrap_used
)]

mod build;
mod corruption;
mod crash;
mod errors;
mod images;
mod interop;
mod lifecycle;
mod mirror_config;
mod pipes;
mod platforms;
mod registry;
mod roundtrip;
mod scan;
mod serve;
mod streams;
mod support;
