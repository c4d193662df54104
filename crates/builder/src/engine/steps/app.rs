//! APP, CNI and CSI: an app's files under `application/apps/<name>/`, its detected type,
//! launch files and default commands.

use std::path::PathBuf;

use sealer_image_store::Digest;
use sealer_layer_cache::InputHasher;

use super::StepCx;
use super::metadata::app_entry;
use super::remote::{Requester, fetch_remote};
use crate::engine::copy::{add_sources, detect_app, expand_sources};
use crate::engine::layer::{LayerTree, Node, write_layer};
use crate::engine::metadata::ImageExtension;
use crate::engine::{Result, StepOutcome};
use crate::kubefile::{
    App, AppSource, AppType, CNI_LABEL_PREFIX, CSI_LABEL_PREFIX, Instruction, ResolvedInstruction,
};

/// Runs an APP, CNI or CSI step.
pub(super) fn step(
    cx: StepCx<'_, '_>,
    instruction: &ResolvedInstruction,
    app: &App<String>,
) -> Result<StepOutcome> {
    let span = cx.at.span;
    let context = cx.env.context;
    let keyword = instruction.keyword();
    let mut locals = Vec::new();
    let mut remotes = Vec::new();
    for source in app.parsed_sources() {
        match source {
            AppSource::Local(path) => locals.push(path),
            AppSource::Remote(url) => remotes.push(url),
        }
    }
    let sources = expand_sources(context, span, keyword, &locals)?;
    let app_dir = PathBuf::from("application/apps").join(&app.name);
    let dest = format!("{}/", app_dir.display());
    let mut tree = LayerTree::default();
    add_sources(context, &mut tree, span, keyword, &sources, &dest, None)?;
    let mut input = InputHasher::new();
    for source in &sources {
        input.add_path(context, source, &mut cx.progress.stat)?;
    }
    let requester = Requester::App {
        keyword,
        app: &app.name,
    };
    for url in &remotes {
        // App sources are manifests and scripts: read whole, as the app type detection
        // reads them.
        let (name, data) = fetch_remote(
            cx.env.options.fetch,
            span,
            &requester,
            url,
            &mut input,
            |fetch| {
                let mut data = Vec::new();
                Ok(fetch(url, &mut data).map(|()| {
                    let digest = Digest::sha256(&data);
                    (data, digest)
                }))
            },
        )?;
        tree.insert(app_dir.join(name), Node::Data(data.into(), 0o644));
    }
    let detected = detect_app(&tree, &app_dir);
    let key = cx.state.key.next(cx.at.text, &input.finish());
    let outcome =
        cx.progress
            .layers
            .reuse_or_build(cx.state, key, cx.at.text, cx.at.started, &mut || {
                write_layer(
                    &tree,
                    context,
                    cx.env.epoch,
                    cx.env.layer_compression,
                    cx.env.ingest,
                )
            })?;
    let (app_type, files) = match detected {
        Some((app_type, files)) => {
            cx.state.app_types.insert(app.name.clone(), app_type);
            (Some(app_type), files)
        }
        None => (None, Vec::new()),
    };
    let prefix = match instruction {
        Instruction::Cni(_) => Some(CNI_LABEL_PREFIX),
        Instruction::Csi(_) => Some(CSI_LABEL_PREFIX),
        _ => None,
    };
    if let Some(prefix) = prefix {
        cx.state
            .labels
            .insert(format!("{prefix}{}", app.name), "true".to_owned());
    }
    set_app(&mut cx.state.extension, &app.name, app_type, files);
    Ok(outcome)
}

/// Records a (re)defined app with its detected type, launch files and default commands.
fn set_app(
    extension: &mut ImageExtension,
    name: &str,
    app_type: Option<AppType>,
    files: Vec<String>,
) {
    let dir = format!("application/apps/{name}");
    let cmds = match app_type {
        Some(AppType::Kube) => files
            .iter()
            .map(|file| format!("kubectl apply -f {dir}/{file}"))
            .collect(),
        Some(AppType::Helm) => files
            .iter()
            .map(|chart| {
                let path = if chart == "." {
                    dir.clone()
                } else {
                    format!("{dir}/{chart}")
                };
                format!("helm install {name} {path}")
            })
            .collect(),
        Some(AppType::Shell) => files
            .iter()
            .map(|file| format!("bash {dir}/{file}"))
            .collect(),
        None => Vec::new(),
    };
    let entry = app_entry(extension, name);
    entry.app_type = match app_type {
        Some(AppType::Helm) => "helm",
        Some(AppType::Kube) => "kube",
        Some(AppType::Shell) => "shell",
        None => "",
    }
    .to_owned();
    entry.launchfiles = files;
    entry.cmds = cmds;
}
