//! Writes a small multi-platform demo image into a store, for the quickstart:
//! `cargo run -p sealer-image-store --example write_demo_image -- ROOT [NAME] [--seed N]
//! [--platform OS/ARCH[/VARIANT][,…]]`.
//!
//! By default the image is `localhost/sealer/demo:v1` for linux/amd64 and linux/arm64 with
//! seed 2024. Another `--seed` gives other layers, so other digests: the offline journey
//! seeds its loopback registries with several different images this way. The image is
//! synthetic (layers of pseudo-random bytes; the first layer is shared by every platform),
//! made through the store's public API in one all-or-nothing import.

use std::path::PathBuf;
use std::process::ExitCode;

use sealer_image_store::Platform;
use sealer_image_store::Store;
use sealer_image_store::testing::{ImageSpec, write_image};

const USAGE: &str =
    "usage: write_demo_image ROOT [NAME] [--seed N] [--platform OS/ARCH[/VARIANT][,...]]";

/// The parsed command line.
struct Args {
    root: PathBuf,
    name: String,
    seed: u64,
    platforms: Vec<Platform>,
}

fn parse_platform(text: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = text.split('/').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|part| part.is_empty()) {
        return Err(format!(
            "invalid platform {text:?}: expected OS/ARCH[/VARIANT]"
        ));
    }
    Ok(Platform::new(parts[0], parts[1], parts.get(2).copied()))
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut seed = 2024;
    let mut platforms = vec![
        Platform::new("linux", "amd64", None),
        Platform::new("linux", "arm64", None),
    ];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = |flag: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seed" => {
                let text = value("--seed")?;
                seed = text
                    .parse()
                    .map_err(|_| format!("invalid seed {text:?}: expected an unsigned integer"))?;
            }
            "--platform" => {
                platforms = value("--platform")?
                    .split(',')
                    .map(parse_platform)
                    .collect::<Result<_, _>>()?;
            }
            "-h" | "--help" => return Err(String::new()),
            _ if flag.starts_with('-') && flag.len() > 1 => {
                return Err(format!("unknown option {flag}"));
            }
            _ => positional.push(arg),
        }
    }
    if positional.is_empty() || positional.len() > 2 {
        return Err("expected ROOT and at most one NAME".to_owned());
    }
    let mut positional = positional.into_iter();
    let root = PathBuf::from(positional.next().unwrap_or_default());
    let name = positional
        .next()
        .unwrap_or_else(|| "localhost/sealer/demo:v1".to_owned());
    Ok(Args {
        root,
        name,
        seed,
        platforms,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let spec = ImageSpec {
        name: Some(args.name.clone()),
        platforms: args.platforms,
        layer_sizes: vec![256 << 10, 64 << 10],
        seed: args.seed,
        gzip_level: 6,
    };
    let root = &args.root;
    let result = Store::open_dir(root).and_then(|store| write_image(&store, &spec));
    match result {
        Ok(descriptor) => {
            println!(
                "wrote {} ({}) into {}",
                args.name,
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
