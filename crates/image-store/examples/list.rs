//! Opens an image store and lists its images: name, digest, platforms and size, as
//! `sealer images` does: `cargo run -p sealer-image-store --example list -- ROOT`.
//!
//! `ROOT` must already be a store (an OCI image layout); make one with
//! `cargo run -p sealer-image-store --example write_demo_image -- ROOT`. Nothing is written.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use sealer_fs_abstraction::error_chain;
use sealer_image_store::Store;

const USAGE: &str = "usage: list ROOT";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(root), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(error) = run(Path::new(&root)) {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(root: &Path) -> Result<(), Box<dyn Error>> {
    // `open_existing` refuses a directory that is not a store instead of making one.
    let store = Store::open_existing(root)?;
    let images = store.images()?;
    if images.is_empty() {
        println!("no images in {}", root.display());
        return Ok(());
    }
    println!("{:<40} {:<28} {:>10}  DIGEST", "NAME", "PLATFORMS", "SIZE");
    for image in images {
        let summary = store.summary(&image.descriptor)?;
        let platforms: Vec<String> = summary.platforms.iter().map(ToString::to_string).collect();
        println!(
            "{:<40} {:<28} {:>10}  {}",
            image.name.as_deref().unwrap_or("<untagged>"),
            platforms.join(","),
            human_size(summary.size),
            image.descriptor.digest,
        );
    }
    Ok(())
}

/// `size` in B, KiB, MiB or GiB with one decimal.
fn human_size(size: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{size} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
