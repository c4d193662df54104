//! RUN: `sh -c` on the build host, in a temporary directory holding the rootfs so far.

use sealer_image_store::Platform;
use sealer_layer_cache::InputDigest;

use super::StepCx;
use crate::engine::layer::write_layer;
use crate::engine::run::Rootfs;
use crate::engine::{BuildError, Result, StepOutcome};
use crate::kubefile::Command;

/// Runs a RUN step with the environment `vars`. `None`: a plan met a RUN step whose layer
/// neither this run nor the cache has (a plan never runs commands), and said so in the
/// report's warnings.
pub(super) fn step(
    cx: StepCx<'_, '_>,
    command: &Command,
    vars: &[(String, String)],
) -> Result<Option<StepOutcome>> {
    let key = cx
        .state
        .key
        .next(cx.at.text, &InputDigest::of_env(vars.to_vec()));
    if cx.env.plan && !cx.progress.layers.known(&key)? {
        // Only a layer an earlier build cached shows what this one makes.
        cx.progress.report.warnings.push(format!(
            "step {} ({}): {}: not run, so the files it makes are not scanned (a build caches its layer; scan again after one)",
            cx.at.number, cx.at.platform, cx.at.text
        ));
        cx.state.key = key;
        return Ok(None);
    }
    let layers = cx.state.layers.clone();
    let platform = cx.at.platform;
    let outcome = cx.progress
        .layers
        .reuse_or_build(cx.state, key, cx.at.text, cx.at.started, &mut || {
            let host = Platform::host();
            if platform.os != host.os || platform.architecture != host.architecture {
                return Err(BuildError::at(
                    cx.at.span,
                    format!(
                        "RUN runs on the build host ({host}), so it cannot build for {platform}: build that platform on a {platform} host, or move the command's output into the build context and COPY it"
                    ),
                ));
            }
            let rootfs = Rootfs::materialise(cx.env.ingest, &layers)?;
            let tree = rootfs.run(cx.at.span, command, vars)?;
            write_layer(&tree, rootfs.fs(), cx.env.epoch, cx.env.layer_compression, cx.env.ingest)
        })?;
    Ok(Some(outcome))
}
