//! The bounded soak test of issue 10, small (`benches/soak.rs` runs it large): pushes,
//! pulls, manifest and blob deletes from several clients while GC and prune run in a loop;
//! afterwards every image answered 201 and not deleted pulls with its digest and `fsck` is
//! clean.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;
mod soak_driver;

#[test]
fn pushes_pulls_deletes_and_gc_interleaved_lose_no_image() {
    let report = soak_driver::run(4, 15);
    eprintln!("{} operations: {report:?}", report.operations());
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert!(report.pushes > 0 && report.gcs > 0, "{report:?}");
}
