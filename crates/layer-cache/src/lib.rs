//! Reuses build layers when the base image, the instruction and its inputs are unchanged.
#![deny(missing_docs)]
