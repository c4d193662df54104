//! The steps of a build, one file per kind: COPY/ADD ([`copy_add`]), APP/CNI/CSI ([`app`]),
//! RUN ([`run`]) and the instructions that change metadata only ([`metadata`]). Every layer
//! step goes through [`LayerReuse::reuse_or_build`], every remote source of ADD and APP
//! through [`remote::fetch_remote`].

mod app;
mod copy_add;
mod metadata;
mod remote;
mod run;

use std::time::Instant;

use sealer_fs_abstraction::Fs;
use sealer_image_store::{Ingest, Platform, Store};
use sealer_layer_cache::{CacheEntry, CacheKey, LayerCache, StatCache};

use crate::engine::image::ImageState;
use crate::engine::layer::BuiltLayer;
use crate::engine::{
    BuildObserver, BuildOptions, BuildReport, LayerCompression, PlatformImages, Result, StepInfo,
    StepOutcome,
};
use crate::kubefile::{Instruction, Span, Step};

/// What every step of one build reads.
pub(super) struct StepEnv<'b> {
    /// The build context.
    pub(super) context: &'b dyn Fs,
    pub(super) store: &'b Store,
    pub(super) options: &'b BuildOptions<'b>,
    /// Where the build's blobs go (committed at the end, dropped by a plan).
    pub(super) ingest: &'b Ingest<'b>,
    /// `SOURCE_DATE_EPOCH`.
    pub(super) epoch: u64,
    /// The compression layers are written with (none for a plan).
    pub(super) layer_compression: LayerCompression,
    /// Whether this run only plans the images ([`crate::engine::plan_images`]).
    pub(super) plan: bool,
}

/// What the steps of one build add to.
pub(super) struct Progress<'b> {
    pub(super) layers: LayerReuse<'b>,
    /// The context files' hashes, saved after a build.
    pub(super) stat: StatCache,
    pub(super) report: BuildReport,
    /// A plan's images, per platform.
    pub(super) plans: Vec<PlatformImages>,
}

/// The step being run.
pub(super) struct StepAt<'s> {
    pub(super) span: &'s Span,
    /// The step's canonical text (its cache key and history entry).
    pub(super) text: &'s str,
    pub(super) number: usize,
    pub(super) platform: &'s Platform,
    pub(super) started: Instant,
}

/// What a step works with: the build's inputs, what the build adds to, the image it grows
/// and the step itself.
pub(super) struct StepCx<'c, 'p> {
    pub(super) env: &'c StepEnv<'c>,
    pub(super) progress: &'c mut Progress<'p>,
    pub(super) state: &'c mut ImageState,
    pub(super) at: &'c StepAt<'c>,
}

/// Reuses a layer made earlier (by this build or, unless `--no-cache`, a cached one) or
/// builds it; remembers what this build made, to record in the cache after the commit.
pub(super) struct LayerReuse<'b> {
    cache: &'b LayerCache,
    no_cache: bool,
    /// `SOURCE_DATE_EPOCH`, for the history entries.
    epoch: u64,
    made: Vec<(CacheKey, CacheEntry)>,
}

impl<'b> LayerReuse<'b> {
    pub(super) fn new(cache: &'b LayerCache, no_cache: bool, epoch: u64) -> Self {
        Self {
            cache,
            no_cache,
            epoch,
            made: Vec::new(),
        }
    }

    /// Whether this build made, or the cache holds, the layer of `key` (whatever
    /// `--no-cache` says).
    pub(super) fn known(&self, key: &CacheKey) -> Result<bool> {
        Ok(self.made.iter().any(|(made, _)| made == key) || self.cache.get(key)?.is_some())
    }

    /// Appends the layer of `key` to `state`, with `text` as its history: the one this
    /// build already made (another platform's identical step), else the cached one, else
    /// what `make` builds (timed from `started`). `state`'s key becomes `key`.
    pub(super) fn reuse_or_build(
        &mut self,
        state: &mut ImageState,
        key: CacheKey,
        text: &str,
        started: Instant,
        make: &mut dyn FnMut() -> Result<BuiltLayer>,
    ) -> Result<StepOutcome> {
        let made = self
            .made
            .iter()
            .find(|(made, _)| *made == key)
            .map(|(_, entry)| entry.clone());
        let reused = match made {
            Some(entry) => Some(entry),
            None if !self.no_cache => self.cache.get(&key)?,
            None => None,
        };
        if let Some(entry) = reused {
            state.push_layer(&entry.layer, &entry.diff_id, text, self.epoch);
            state.key = key;
            return Ok(StepOutcome::Cached);
        }
        let built = make()?;
        state.push_layer(&built.descriptor, &built.diff_id, text, self.epoch);
        self.made.push((
            key.clone(),
            CacheEntry {
                layer: built.descriptor,
                diff_id: built.diff_id,
                created_by: text.to_owned(),
            },
        ));
        state.key = key;
        Ok(StepOutcome::Built(started.elapsed()))
    }

    /// The layers this build made, with their keys.
    pub(super) fn into_made(self) -> Vec<(CacheKey, CacheEntry)> {
        self.made
    }
}

/// Runs one step of a platform's image: `info` is what the observer and the report see.
pub(super) fn run_step(
    env: &StepEnv<'_>,
    progress: &mut Progress<'_>,
    state: &mut ImageState,
    step: &Step,
    info: StepInfo,
    observer: &mut dyn BuildObserver,
) -> Result<()> {
    observer.step_started(&info);
    let at = StepAt {
        span: &step.instruction.span,
        text: &info.text,
        number: info.number,
        platform: &info.platform,
        started: Instant::now(),
    };
    let instruction = step.instruction.node.with_arch(&info.platform.architecture);
    let outcome = {
        let cx = StepCx {
            env,
            progress: &mut *progress,
            state: &mut *state,
            at: &at,
        };
        match &instruction {
            Instruction::Copy(copy) | Instruction::Add(copy) => {
                Some(copy_add::step(cx, &instruction, copy)?)
            }
            Instruction::App(app) | Instruction::Cni(app) | Instruction::Csi(app) => {
                Some(app::step(cx, &instruction, app)?)
            }
            Instruction::Run(command) => run::step(cx, command, &step.env)?,
            other => Some(metadata::step(cx.state, &at, other)),
        }
    };
    let Some(outcome) = outcome else {
        // A plan's RUN step that was not run: no layer, no history entry.
        let outcome = StepOutcome::Metadata(at.started.elapsed());
        observer.step_finished(&info, outcome);
        progress.report.steps.push((info, outcome));
        return Ok(());
    };
    match outcome {
        StepOutcome::Cached => progress.report.layers_cached += 1,
        StepOutcome::Built(_) => progress.report.layers_built += 1,
        StepOutcome::Metadata(_) => {
            if !matches!(instruction, Instruction::From(_) | Instruction::Arg(_)) {
                state.push_empty_layer(at.text, env.epoch);
            }
        }
    }
    observer.step_finished(&info, outcome);
    progress.report.steps.push((info, outcome));
    Ok(())
}
