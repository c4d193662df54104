//! The instructions that change the image's metadata only (no layer): FROM, ARG and
//! MAINTAINER (nothing to do here), ENV (applied by the expansion), LABEL, KUBEVERSION,
//! APPCMDS, APPENV, LAUNCH, CMDS and CMD.

use super::StepAt;
use crate::engine::StepOutcome;
use crate::engine::image::ImageState;
use crate::engine::metadata::{Application, ImageExtension};
use crate::kubefile::{Command, Instruction, KUBE_VERSION_LABEL, ResolvedInstruction};

/// Applies a metadata instruction to `state` (the layer steps are not its to run).
pub(super) fn step(
    state: &mut ImageState,
    at: &StepAt<'_>,
    instruction: &ResolvedInstruction,
) -> StepOutcome {
    match instruction {
        Instruction::From(_)
        | Instruction::Arg(_)
        | Instruction::Maintainer(_)
        | Instruction::Env(_)
        | Instruction::Copy(_)
        | Instruction::Add(_)
        | Instruction::App(_)
        | Instruction::Cni(_)
        | Instruction::Csi(_)
        | Instruction::Run(_) => {}
        Instruction::Label(pairs) => {
            for pair in &pairs.pairs {
                state.labels.insert(pair.key.clone(), pair.value.clone());
            }
        }
        Instruction::KubeVersion(range) => {
            state
                .labels
                .insert(KUBE_VERSION_LABEL.to_owned(), range.clone());
        }
        Instruction::AppCmds(cmds) => {
            app_entry(&mut state.extension, &cmds.app).cmds = cmds.commands.clone();
        }
        Instruction::AppEnv(env) => {
            let entry = app_entry(&mut state.extension, &env.app);
            for pair in &env.vars {
                entry.env.insert(pair.key.clone(), pair.value.clone());
            }
        }
        Instruction::Launch(apps) => state.extension.launch.app_names = apps.clone(),
        Instruction::Cmds(cmds) => state.extension.launch.cmds = cmds.clone(),
        Instruction::Cmd(command) => {
            let text = match command {
                Command::Shell(text) => text.clone(),
                Command::Exec(args) => args.join(" "),
            };
            state.extension.launch.cmds.push(text);
        }
    }
    StepOutcome::Metadata(at.started.elapsed())
}

/// The app `name` of `extension`, added when missing.
pub(super) fn app_entry<'e>(extension: &'e mut ImageExtension, name: &str) -> &'e mut Application {
    let position = match extension
        .applications
        .iter()
        .position(|app| app.name == name)
    {
        Some(position) => position,
        None => {
            extension.applications.push(Application {
                name: name.to_owned(),
                ..Application::default()
            });
            extension.applications.len() - 1
        }
    };
    &mut extension.applications[position]
}
