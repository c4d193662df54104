//! RUN: `sh -c` on the build host, in a temporary directory holding the rootfs so far.

use sealer_image_store::Platform;
use sealer_layer_cache::InputDigest;

use super::{Progress, StepAt, StepEnv};
use crate::engine::image::ImageState;
use crate::engine::layer::write_layer;
use crate::engine::run::Rootfs;
use crate::engine::{BuildError, Result, StepOutcome};
use crate::kubefile::Command;

/// Runs a RUN step with the environment `vars`. `None`: a plan met a RUN step whose layer
/// neither this run nor the cache has (a plan never runs commands), and said so in the
/// report's warnings.
pub(super) fn step(
    env: &StepEnv<'_>,
    progress: &mut Progress<'_>,
    state: &mut ImageState,
    at: &StepAt<'_>,
    command: &Command,
    vars: &[(String, String)],
) -> Result<Option<StepOutcome>> {
    let key = state.key.next(at.text, &InputDigest::of_env(vars.to_vec()));
    if env.plan && !progress.layers.known(&key)? {
        // Only a layer an earlier build cached shows what this one makes.
        progress.report.warnings.push(format!(
            "step {} ({}): {}: not run, so the files it makes are not scanned (a build caches its layer; scan again after one)",
            at.number, at.platform, at.text
        ));
        state.key = key;
        return Ok(None);
    }
    let layers = state.layers.clone();
    let platform = at.platform;
    let outcome = progress
        .layers
        .reuse_or_build(state, key, at.text, at.started, &mut || {
            let host = Platform::host();
            if platform.os != host.os || platform.architecture != host.architecture {
                return Err(BuildError::at(
                    at.span,
                    format!(
                        "RUN runs on the build host ({host}), so it cannot build for {platform}: build that platform on a {platform} host, or move the command's output into the build context and COPY it"
                    ),
                ));
            }
            let rootfs = Rootfs::materialise(env.ingest, &layers)?;
            let tree = rootfs.run(at.span, command, vars)?;
            write_layer(&tree, rootfs.fs(), env.epoch, env.layer_compression, env.ingest)
        })?;
    Ok(Some(outcome))
}
