//! `sealer tag`.

use anyhow::{Context, Result};
use sealer_image_store::{Reference, Store};

use crate::cli::TagArgs;

pub fn run(store: &Store, args: &TagArgs) -> Result<()> {
    let source = store.lookup(&args.source)?;
    let target: Reference = args.target.parse()?;
    store
        .tag(&target, &source.descriptor)
        .with_context(|| format!("tagging {} as {target}", args.source))?;
    say!("Tagged {target} ({})", source.descriptor.digest);
    Ok(())
}
