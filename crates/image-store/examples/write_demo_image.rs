//! Writes a small two-platform (linux/amd64, linux/arm64) demo image into a store, for the
//! quickstart: `cargo run -p sealer-image-store --example write_demo_image -- ROOT [NAME]`.
//!
//! The image is synthetic (layers of pseudo-random bytes; the first layer is shared by both
//! platforms), made through the store's public API in one all-or-nothing import. Building
//! real cluster images from a Kubefile is `sealer build`'s job (sealer-builder, later).

use std::path::PathBuf;
use std::process::ExitCode;

use sealer_image_store::Platform;
use sealer_image_store::Store;
use sealer_image_store::testing::{ImageSpec, write_image};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(root) = args.next().map(PathBuf::from) else {
        eprintln!("usage: write_demo_image ROOT [NAME]");
        return ExitCode::from(2);
    };
    let name = args
        .next()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "localhost/sealer/demo:v1".to_owned());
    let spec = ImageSpec {
        name: Some(name.clone()),
        platforms: vec![
            Platform::new("linux", "amd64", None),
            Platform::new("linux", "arm64", None),
        ],
        layer_sizes: vec![256 << 10, 64 << 10],
        seed: 2024,
        gzip_level: 6,
    };
    let result = Store::open_dir(&root).and_then(|store| write_image(&store, &spec));
    match result {
        Ok(descriptor) => {
            println!(
                "wrote {name} ({}) into {}",
                descriptor.digest,
                root.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "error: writing the demo image into {}: {error}",
                root.display()
            );
            ExitCode::FAILURE
        }
    }
}
