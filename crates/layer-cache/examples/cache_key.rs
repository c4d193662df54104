//! Computes the cache key of `COPY . /` over a build context directory, looks it up in the
//! layer cache of an image store and, on a miss, stores the context as an uncompressed layer
//! and records it, then looks it up again:
//! `cargo run -p sealer-layer-cache --example cache_key -- CONTEXT ROOT`.
//!
//! `ROOT` is the store directory (created when missing). Run it twice: the second run hits,
//! whatever the files' modification times; change a file's content or mode and it misses.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use sealer_fs_abstraction::tar::{PackOptions, pack};
use sealer_fs_abstraction::{RealFs, error_chain};
use sealer_image_store::model::media_type;
use sealer_image_store::{BlobStore, Descriptor, Digest, Store};
use sealer_layer_cache::{CacheEntry, CacheKey, InputHasher, LayerCache};

const USAGE: &str = "usage: cache_key CONTEXT ROOT";
const INSTRUCTION: &str = "COPY . /";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(context), Some(root), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(error) = run(Path::new(&context), Path::new(&root)) {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(context_dir: &Path, root: &Path) -> Result<(), Box<dyn Error>> {
    let context = RealFs::open_root(context_dir)?;
    let store = Store::open_dir(root)?;
    let cache = LayerCache::open(&store)?;

    // The stat cache lets an unchanged context be hashed from `stat` alone next time.
    let mut stat = cache.load_stat_cache(&context)?;
    let mut input = InputHasher::new();
    input.add_path(&context, Path::new("."), &mut stat)?;
    let key = CacheKey::scratch().next(INSTRUCTION, &input.finish());
    cache.save_stat_cache(&context, &mut stat)?;
    println!(
        "cache key of `{INSTRUCTION}` over {}: {key}",
        context_dir.display()
    );

    if let Some(entry) = cache.get(&key)? {
        println!(
            "hit: layer {} ({} bytes)",
            entry.layer.digest, entry.layer.size
        );
        return Ok(());
    }
    println!("miss: storing the context as a layer");
    // Entries normalised (mtime 0, owner 0:0), so the same files give the same layer.
    let options = PackOptions {
        mtime: Some(0),
        uid_gid: Some((0, 0)),
    };
    let layer = pack(&context, Path::new("."), Vec::new(), &options)?;
    let digest = Digest::sha256(&layer);
    let size = u64::try_from(layer.len())?;
    store
        .blobs()
        .put(&digest, Some(size), &mut layer.as_slice())?;
    let entry = CacheEntry {
        layer: Descriptor::new(media_type::OCI_LAYER, digest.clone(), size),
        // Uncompressed: the diff id is the layer's own digest.
        diff_id: digest,
        created_by: INSTRUCTION.to_owned(),
    };
    cache.put(&key, &entry)?;
    match cache.get(&key)? {
        Some(found) => println!("inserted, and found again: layer {}", found.layer.digest),
        None => return Err("the entry just inserted was not found".into()),
    }
    Ok(())
}
