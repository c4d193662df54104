//! `sealer rmi`.

use anyhow::{Context, Result};
use sealer_image_store::Store;

use crate::cli::RmiArgs;

pub fn run(store: &Store, args: &RmiArgs) -> Result<()> {
    for image in &args.images {
        let removed = store
            .remove_image(image)
            .with_context(|| format!("removing {image}"))?;
        for descriptor in removed {
            match descriptor.ref_name() {
                Some(name) => say!("Untagged {name} ({})", descriptor.digest),
                None => say!("Removed unnamed {}", descriptor.digest),
            }
        }
    }
    Ok(())
}
