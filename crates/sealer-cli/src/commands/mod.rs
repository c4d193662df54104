//! One module per subcommand; each wires arguments to library calls and prints the result.

mod build;
mod fsck;
mod images;
mod inspect;
mod load;
mod login;
mod mirror_config;
mod prune;
mod pull;
mod push;
mod registry;
mod rmi;
mod save;
mod scan;
mod tag;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sealer_fs_abstraction::RealFs;
use sealer_image_store::{Platform, Store};

use crate::cli::{Cli, Command};

/// Runs the subcommand.
pub fn run(cli: Cli) -> Result<()> {
    // Commands that only read never create a store (a mistyped --root must not make one).
    let existing = || open_store(cli.root.as_deref(), Store::open_existing);
    let store = || open_store(cli.root.as_deref(), Store::open_dir);
    match cli.command {
        Command::Build(args) => build::run(&store()?, &args),
        Command::Images(args) => images::run(&existing()?, &args),
        Command::Tag(args) => tag::run(&existing()?, &args),
        Command::Rmi(args) => rmi::run(&existing()?, &args),
        Command::Inspect(args) => inspect::run(&existing()?, &args),
        Command::Save(args) => save::run(&existing()?, &args),
        Command::Load(args) => load::run(&store()?, &args),
        Command::Prune(args) => prune::run(&existing()?, &args),
        Command::Fsck => fsck::run(&existing()?),
        Command::Pull(args) => pull::run(&store()?, &args),
        Command::Push(args) => push::run(&existing()?, &args),
        Command::Login(args) => login::login(&args),
        Command::Logout(args) => login::logout(&args),
        Command::Scan(args) => scan::run(cli.root.as_deref(), &args),
        Command::Registry { command } => registry::run(cli.root.as_deref(), &command),
    }
}

fn open_store(
    root: Option<&Path>,
    open: fn(&Path) -> sealer_image_store::Result<Store>,
) -> Result<Store> {
    let root: PathBuf = match root {
        Some(root) => root.to_path_buf(),
        None => Store::default_root()
            .context("no store location: set --root, SEALER_ROOT, XDG_DATA_HOME or HOME")?,
    };
    open(&root).with_context(|| format!("opening the image store {}", root.display()))
}

/// A registry client for `host` (plain HTTP allowed there with `--insecure`).
fn registry_client(
    host: &str,
    registry: &crate::cli::RegistryArgs,
    jobs: u16,
) -> Result<sealer_registry_client::RegistryClient> {
    let options = sealer_registry_client::ClientOptions {
        insecure_hosts: if registry.insecure {
            vec![host.to_owned()]
        } else {
            Vec::new()
        },
        ca_files: registry.ca_files.clone(),
        max_concurrency: usize::from(jobs),
        ..sealer_registry_client::ClientOptions::default()
    };
    Ok(sealer_registry_client::RegistryClient::new(options)?)
}

/// A runtime for the commands that talk to registries (pull needs several threads).
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn parse_platform(text: Option<&str>) -> Result<Option<Platform>> {
    text.map(Platform::parse).transpose().map_err(Into::into)
}

/// The directory holding `path` (`.` for a bare file name) and the file name, for opening a
/// [`RealFs`] rooted at the directory.
fn split_file(path: &Path) -> Result<(RealFs, PathBuf)> {
    let name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let fs = RealFs::open_root(parent)?;
    Ok((fs, PathBuf::from(name)))
}
