//! `sealer registry mirror-config`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sealer_builder::engine::carried_images;
use sealer_fs_abstraction::{Fs, RealFs};
use sealer_image_store::{Reference, Store};
use sealer_registry_proxy::ServerConfig;
use sealer_registry_proxy::mirror_config::{Endpoint, MirrorSources, Runtime};

use crate::cli::{MirrorConfigArgs, MirrorRuntime};

pub fn run(root: Option<&Path>, args: &MirrorConfigArgs) -> Result<()> {
    let endpoint: Endpoint = args.endpoint.parse()?;
    let runtime = match args.runtime {
        MirrorRuntime::Containerd => Runtime::Containerd,
        MirrorRuntime::Crio => Runtime::Crio,
        MirrorRuntime::Docker => Runtime::Docker,
    };
    let mut sources = match &args.config {
        Some(path) => MirrorSources::from_server_config(&ServerConfig::load(path)?),
        None => MirrorSources::default(),
    };
    for text in &args.upstreams {
        sources.upstreams.push(text.parse()?);
    }
    if !args.images.is_empty() {
        let store = super::open_store(root, Store::open_existing)?;
        let mut hosts = BTreeSet::new();
        for image in &args.images {
            for carried in carried_images(&store, image)? {
                hosts.insert(carried.image.parse::<Reference>()?.registry().to_owned());
            }
        }
        for host in hosts {
            sources.add_if_new(host.parse()?);
        }
    }
    let generated = sources.generate(runtime, &endpoint)?;

    let Some(dir) = &args.output else {
        for (at, file) in generated.files.iter().enumerate() {
            if at > 0 {
                say!();
            }
            say!("# file: {}", file.path.display());
            say!("{}", file.content.trim_end());
        }
        for note in &generated.notes {
            say!("# note: {note}");
        }
        return Ok(());
    };

    let context = || format!("writing under {}", dir.display());
    let fs = RealFs::create_root(dir).with_context(context)?;
    // Nothing is written when any file would replace different content without --force.
    let mut conflicts = Vec::new();
    for file in &generated.files {
        match fs.read(&file.path) {
            Ok(existing) if existing != file.content.as_bytes() && !args.force => {
                conflicts.push(fs.display_path(&file.path).display().to_string());
            }
            Ok(_) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error).with_context(context),
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "{} already exist(s) with other content: merge by hand, or replace with --force",
            conflicts.join(", ")
        );
    }
    for file in &generated.files {
        if let Some(parent) = file.path.parent()
            && !parent.as_os_str().is_empty()
        {
            fs.create_dir_all(parent).with_context(context)?;
        }
        // Written to a temporary name and renamed: a node never reads half a file.
        fs.write_atomic(&file.path, file.content.as_bytes())
            .with_context(context)?;
        say!("Wrote {}", fs.display_path(&file.path).display());
    }
    for note in &generated.notes {
        say!("note: {note}");
    }
    Ok(())
}
