//! The soak of issue 10 with large numbers: `SOAK_CLIENTS` clients (default 16) push, pull
//! and delete for `SOAK_ROUNDS` rounds each (default 200) against an in-process server while
//! GC and prune run in a loop; prints the operations done and whether every image answered
//! 201 and not deleted still pulls and `fsck` is clean.
//!
//! Run: `cargo bench -p sealer-registry-proxy --bench soak`.
#![allow(clippy::disallowed_methods, clippy::expect_used, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/soak_driver/mod.rs"]
mod soak_driver;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo test --benches` must not spend minutes here.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("soak benchmark: run it with `cargo bench -p sealer-registry-proxy --bench soak`");
        return;
    }
    let clients = env_or("SOAK_CLIENTS", 16);
    let rounds = env_or("SOAK_ROUNDS", 200);
    let started = std::time::Instant::now();
    let report = soak_driver::run(clients, rounds);
    println!(
        "soak: {clients} clients x {rounds} rounds in {:.1?}: {} operations \
         ({} pushes answered 201, {} given up, {} pulls, {} manifest deletes, \
         blob deletes {} accepted / {} refused / {} unknown, {} GCs, {} images pulled at the end)",
        started.elapsed(),
        report.operations(),
        report.pushes,
        report.pushes_given_up,
        report.pulls,
        report.manifest_deletes,
        report.blob_deletes[0],
        report.blob_deletes[1],
        report.blob_deletes[2],
        report.gcs,
        report.images_at_end,
    );
    if report.failures.is_empty() {
        println!("soak: PASSED (every image answered 201 and not deleted pulls; fsck clean)");
    } else {
        println!("soak: FAILED");
        for failure in &report.failures {
            println!("  {failure}");
        }
        std::process::exit(1);
    }
}
