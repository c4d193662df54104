//! One module per subcommand; each wires arguments to library calls and prints the result.

mod fsck;
mod images;
mod inspect;
mod load;
mod prune;
mod rmi;
mod save;
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
        Command::Images(args) => images::run(&existing()?, &args),
        Command::Tag(args) => tag::run(&existing()?, &args),
        Command::Rmi(args) => rmi::run(&existing()?, &args),
        Command::Inspect(args) => inspect::run(&existing()?, &args),
        Command::Save(args) => save::run(&existing()?, &args),
        Command::Load(args) => load::run(&store()?, &args),
        Command::Prune => prune::run(&existing()?),
        Command::Fsck => fsck::run(&existing()?),
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
