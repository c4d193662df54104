//! `sealer registry serve`, `sealer registry config`, `sealer registry gc` (and the dispatch of
//! `sealer registry mirror-config`).

use std::path::Path;

use anyhow::{Context, Result};
use sealer_image_store::Store;
use sealer_registry_proxy::{DEFAULT_CONFIG, ServerConfig};

use crate::cli::RegistryCommand;

pub fn run(root: Option<&Path>, command: &RegistryCommand) -> Result<()> {
    match command {
        RegistryCommand::Serve(args) => {
            let mut config = match &args.config {
                Some(path) => ServerConfig::load(path)?,
                None => {
                    tracing::info!(
                        "no --config: serving with the defaults (read-only, no upstreams); \
                         `sealer registry config` prints them"
                    );
                    ServerConfig::default()
                }
            };
            config.images.extend(args.images.iter().cloned());
            if let Some(listen) = args.listen {
                config.listen = listen;
            }
            // The CLI's store: the registry's storage unless one is configured, and where the
            // cluster images of `--image` are found when the storage is a bucket.
            let cli_store = || match root {
                Some(root) => Ok(root.to_path_buf()),
                None => Store::default_root().context(
                    "no store location: set `storage`, --root, SEALER_ROOT, XDG_DATA_HOME or HOME",
                ),
            };
            match &config.storage {
                None => config.storage = Some(sealer_registry_proxy::Storage::Path(cli_store()?)),
                Some(sealer_registry_proxy::Storage::S3(_)) if !config.images.is_empty() => {
                    config.image_store = Some(cli_store()?);
                }
                Some(_) => {}
            }
            super::runtime()?
                .block_on(sealer_registry_proxy::run(
                    &config,
                    sealer_registry_proxy::shutdown_signal(),
                ))
                .with_context(|| match &args.config {
                    Some(path) => format!("serving {}", path.display()),
                    None => format!("serving on {}", config.listen),
                })
        }
        RegistryCommand::Config => {
            say!("{}", DEFAULT_CONFIG.trim_end());
            Ok(())
        }
        RegistryCommand::MirrorConfig(args) => super::mirror_config::run(root, args),
        RegistryCommand::Gc(args) => {
            let config = ServerConfig::load(&args.config)?;
            let options = sealer_registry_proxy::bucket::GcOptions {
                grace: args.grace.0,
                upload_idle: args.upload_idle.0,
                claim_wait: args.claim_wait.0,
                dry_run: args.dry_run,
            };
            let report = super::runtime()?
                .block_on(sealer_registry_proxy::collect_garbage(&config, &options))
                .with_context(|| format!("collecting garbage of {}", args.config.display()))?;
            if args.dry_run {
                say!(
                    "{} unreferenced blobs older than {:?} would be deleted; {} live",
                    report.candidates,
                    args.grace.0,
                    report.live
                );
            } else {
                say!(
                    "Deleted {} of {} unreferenced blobs ({}); {} live, {} kept for a writer, {} abandoned uploads purged",
                    report.deleted,
                    report.candidates,
                    indicatif::BinaryBytes(report.bytes_freed),
                    report.live,
                    report.kept_by_writer,
                    report.uploads_purged
                );
            }
            Ok(())
        }
    }
}
