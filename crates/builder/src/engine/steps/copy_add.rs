//! COPY and ADD: local sources (ADD extracts tar archives) and, for ADD, `http(s)://`
//! sources streamed into the build's scratch directory.

use std::path::PathBuf;
use std::sync::Arc;

use sealer_fs_abstraction::{FileKind, Fs};
use sealer_image_store::Descriptor;
use sealer_layer_cache::InputHasher;

use super::remote::{Requester, fetch_remote};
use super::{StepAt, StepCx, StepEnv};
use crate::engine::copy::{
    add_archive, add_sources, dest_path, download_into, expand_sources, is_archive, parse_chmod,
    scratch_dir,
};
use crate::engine::layer::{BuiltLayer, LayerTree, Node, write_layer};
use crate::engine::run::is_dir_in_layers;
use crate::engine::{BuildError, Result, StepOutcome};
use crate::kubefile::{AppSource, CopyArgs, Instruction, ResolvedInstruction};

/// A downloaded ADD source: its file name, and where it lies.
struct Download {
    name: String,
    fs: Arc<dyn Fs>,
    file: PathBuf,
    len: u64,
}

/// Runs a COPY or ADD step.
pub(super) fn step(
    cx: StepCx<'_, '_>,
    instruction: &ResolvedInstruction,
    copy: &CopyArgs<String>,
) -> Result<StepOutcome> {
    let span = cx.at.span;
    let keyword = instruction.keyword();
    let is_add = matches!(instruction, Instruction::Add(_));
    let (urls, locals): (Vec<String>, Vec<String>) = copy
        .sources
        .iter()
        .cloned()
        .partition(|source| matches!(AppSource::parse(source), Some(AppSource::Remote(_))));
    if !urls.is_empty() && !is_add {
        return Err(BuildError::at(
            span,
            "COPY cannot download a URL: use ADD, or APP with http(s):// sources",
        ));
    }
    let chmod = parse_chmod(span, copy.chmod.as_deref())?;
    let sources = expand_sources(cx.env.context, span, keyword, &locals)?;
    let mut input = InputHasher::new();
    for source in &sources {
        input.add_path(cx.env.context, source, &mut cx.progress.stat)?;
    }
    // Downloads are streamed into files here, removed after the step.
    let mut scratch = None;
    let mut downloads = Vec::new();
    for (index, url) in urls.iter().enumerate() {
        let (name, (fs, file, len)) = fetch_remote(
            cx.env.options.fetch,
            span,
            &Requester::Add,
            url,
            &mut input,
            |fetch| {
                let fs = match &scratch {
                    Some((_, fs)) => Arc::clone(fs),
                    None => {
                        let (dir, fs) = scratch_dir("sealer-build-download-")?;
                        scratch = Some((dir, Arc::clone(&fs)));
                        fs
                    }
                };
                let file = PathBuf::from(index.to_string());
                Ok(download_into(fetch, url, fs.as_ref(), &file)?
                    .map(|(len, digest)| ((fs, file, len), digest)))
            },
        )?;
        downloads.push(Download {
            name,
            fs,
            file,
            len,
        });
    }
    let count = sources.len() + downloads.len();
    if count > 1 && !copy.dest.ends_with('/') {
        return Err(BuildError::at(
            span,
            format!(
                "{keyword} with more than one source file needs a directory destination ending with /, not {:?}",
                copy.dest
            ),
        ));
    }
    let key = cx.state.key.next(cx.at.text, &input.finish());
    let layers = cx.state.layers.clone();
    let layer = CopyLayer {
        at: cx.at,
        keyword,
        is_add,
        dest: &copy.dest,
        chmod,
        sources: &sources,
        downloads: &downloads,
        layers: &layers,
    };
    let mut warnings = Vec::new();
    let outcome =
        cx.progress
            .layers
            .reuse_or_build(cx.state, key, cx.at.text, cx.at.started, &mut || {
                layer.write(cx.env, &mut warnings)
            })?;
    drop(scratch);
    cx.progress.report.warnings.append(&mut warnings);
    Ok(outcome)
}

/// What a COPY/ADD layer holds.
struct CopyLayer<'c> {
    at: &'c StepAt<'c>,
    keyword: &'c str,
    is_add: bool,
    dest: &'c str,
    chmod: Option<u32>,
    sources: &'c [PathBuf],
    downloads: &'c [Download],
    /// The image's layers before the step.
    layers: &'c [Descriptor],
}

impl CopyLayer<'_> {
    /// Writes the layer; what ADD skips in archives goes into `warnings`.
    fn write(&self, env: &StepEnv<'_>, warnings: &mut Vec<String>) -> Result<BuiltLayer> {
        let context = env.context;
        let span = self.at.span;
        let dest = self.destination(env)?;
        let mut tree = LayerTree::default();
        let mut plain = Vec::new();
        let mut extracted = Vec::new();
        for source in self.sources {
            if self.is_add && is_archive(context, source)? {
                let into = format!("{}/", dest.trim_end_matches('/'));
                extracted.push(add_archive(
                    context, &mut tree, span, source, &into, warnings,
                )?);
            } else {
                plain.push(source.clone());
            }
        }
        if !plain.is_empty() {
            add_sources(
                context,
                &mut tree,
                span,
                self.keyword,
                &plain,
                &dest,
                self.chmod,
            )?;
        }
        for download in self.downloads {
            let target = if dest.ends_with('/') {
                dest_path(&dest).join(&download.name)
            } else {
                dest_path(&dest)
            };
            tree.insert(
                target,
                Node::Extern {
                    fs: download.fs.clone(),
                    source: download.file.clone(),
                    mode: self.chmod.unwrap_or(0o600),
                    len: download.len,
                },
            );
        }
        let written = write_layer(&tree, context, env.epoch, env.layer_compression, env.ingest);
        drop(extracted);
        written
    }

    /// The destination, as a directory (`/` at the end) when a single file is copied onto
    /// a directory of the image: Docker's rule, even without a trailing `/`.
    fn destination(&self, env: &StepEnv<'_>) -> Result<String> {
        let count = self.sources.len() + self.downloads.len();
        let single_file = count == 1
            && match self.sources {
                [source] => env.context.metadata(source)?.kind == FileKind::File,
                _ => true,
            };
        Ok(
            if single_file
                && !self.dest.ends_with('/')
                && is_dir_in_layers(env.ingest, self.layers, self.dest)?
            {
                format!("{}/", self.dest)
            } else {
                self.dest.to_owned()
            },
        )
    }
}
