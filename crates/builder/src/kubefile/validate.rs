//! Validation as sealer does it: the structure (at parse time), then what needs the base
//! image (inherited app names) and the context (detected app types).

use std::collections::{BTreeMap, BTreeSet};

use crate::kubefile::ast::{AppType, Instruction, Kubefile, Span};
use crate::kubefile::error::{KubefileError, Result};

/// Checks an app name: it becomes a directory under `application/apps/`.
pub(crate) fn check_app_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.len() <= 128;
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid app name {name:?}: use letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit"
        ))
    }
}

/// The structural rules, checked by `parse`.
pub(crate) fn structure(kubefile: &Kubefile) -> Result<()> {
    let mut from: Option<&Span> = None;
    let mut launch: Option<&Span> = None;
    let mut cmds: Option<&Span> = None;
    let mut cmd: Option<&Span> = None;
    let mut apps: BTreeMap<&str, &Span> = BTreeMap::new();
    let mut app_cmds: BTreeMap<&str, &Span> = BTreeMap::new();
    let mut last_final: Option<(&str, &Span)> = None;
    for spanned in &kubefile.instructions {
        let (span, instruction) = (&spanned.span, &spanned.node);
        let keyword = instruction.keyword();
        let error = |message: String| Err(KubefileError::at(span.clone(), message));
        let is_final = matches!(instruction, Instruction::Launch(_) | Instruction::Cmds(_));
        if let Some((final_keyword, final_span)) = last_final.filter(|_| !is_final) {
            return Err(KubefileError::at(
                final_span.clone(),
                format!(
                    "{final_keyword} must be the last instruction, but {keyword} follows at {span}"
                ),
            ));
        }
        match instruction {
            Instruction::From(_) => {
                if let Some(first) = from {
                    return error(format!(
                        "a Kubefile has one FROM (multi-stage builds are not supported); the first is at {first}"
                    ));
                }
                from = Some(span);
                continue;
            }
            Instruction::Arg(_) => continue,
            _ if from.is_none() => {
                return error(format!(
                    "expected FROM before {keyword} (only ARG may come before FROM)"
                ));
            }
            _ => {}
        }
        match instruction {
            Instruction::Launch(_) => {
                if let Some(first) = launch {
                    return error(format!(
                        "LAUNCH may appear only once; the first is at {first}"
                    ));
                }
                if let Some(other) = cmds {
                    return error(format!(
                        "LAUNCH and CMDS are mutually exclusive; CMDS is at {other}"
                    ));
                }
                if let Some(other) = cmd {
                    return error(format!(
                        "LAUNCH and CMD are mutually exclusive; CMD is at {other}"
                    ));
                }
                launch = Some(span);
                last_final = Some(("LAUNCH", span));
            }
            Instruction::Cmds(_) => {
                if let Some(first) = cmds {
                    return error(format!(
                        "CMDS may appear only once; the first is at {first}"
                    ));
                }
                if let Some(other) = launch {
                    return error(format!(
                        "CMDS and LAUNCH are mutually exclusive; LAUNCH is at {other}"
                    ));
                }
                cmds = Some(span);
                last_final = Some(("CMDS", span));
            }
            Instruction::Cmd(_) => {
                cmd.get_or_insert(span);
            }
            Instruction::App(app) | Instruction::Cni(app) | Instruction::Csi(app) => {
                if let Some(first) = apps.insert(&app.name, span) {
                    return error(format!("app {:?} is already defined at {first}", app.name));
                }
            }
            Instruction::AppCmds(cmds) => {
                if let Some(first) = app_cmds.insert(&cmds.app, span) {
                    return error(format!(
                        "APPCMDS for app {:?} is already given at {first}",
                        cmds.app
                    ));
                }
            }
            _ => {}
        }
    }
    if from.is_none() {
        let span = kubefile.instructions.last().map_or_else(
            || Span::new(kubefile.file.clone(), 1, 1),
            |last| last.span.clone(),
        );
        return Err(KubefileError::at(
            span,
            "no FROM instruction: a Kubefile starts with FROM <image> or FROM scratch",
        ));
    }
    Ok(())
}

impl Kubefile {
    /// Checks that every app LAUNCH, APPCMDS and APPENV name is defined by an APP, CNI or
    /// CSI instruction before it, or inherited from the base image (`inherited`: the app
    /// names of the base's `sealer.image.extension`, which the engine knows once it has
    /// resolved FROM; empty for `FROM scratch`).
    pub fn check_app_names<S: AsRef<str>>(&self, inherited: &[S]) -> Result<()> {
        let mut known: BTreeSet<&str> = inherited.iter().map(AsRef::as_ref).collect();
        let defined_later: BTreeMap<&str, &Span> = self
            .instructions
            .iter()
            .filter_map(|spanned| Some((spanned.node.defined_app()?.name.as_str(), &spanned.span)))
            .collect();
        for spanned in &self.instructions {
            let instruction = &spanned.node;
            if let Some(app) = instruction.defined_app() {
                known.insert(&app.name);
                continue;
            }
            let names: Vec<&str> = match instruction {
                Instruction::Launch(apps) => apps.iter().map(String::as_str).collect(),
                Instruction::AppCmds(cmds) => vec![&cmds.app],
                Instruction::AppEnv(env) => vec![&env.app],
                _ => continue,
            };
            for name in names {
                if known.contains(name) {
                    continue;
                }
                let keyword = instruction.keyword();
                let message = match defined_later.get(name) {
                    Some(at) => {
                        format!("{keyword} names app {name:?} before it is defined at {at}")
                    }
                    None => {
                        let list = if known.is_empty() {
                            "there are none".to_owned()
                        } else {
                            format!(
                                "known apps: {}",
                                known.iter().copied().collect::<Vec<_>>().join(", ")
                            )
                        };
                        format!(
                            "{keyword} names app {name:?}, which is neither defined by APP, CNI or CSI nor inherited from the base image ({list})"
                        )
                    }
                };
                return Err(KubefileError::at(spanned.span.clone(), message));
            }
        }
        Ok(())
    }

    /// Checks that every app this Kubefile defines whose type the engine could not detect
    /// (`app_type` returns `None`: not a helm chart, kube manifests or shell scripts) has
    /// its launch commands given by an APPCMDS of this Kubefile, as sealer requires.
    pub fn check_app_types(&self, app_type: impl Fn(&str) -> Option<AppType>) -> Result<()> {
        let with_cmds: BTreeSet<&str> = self
            .instructions
            .iter()
            .filter_map(|spanned| match &spanned.node {
                Instruction::AppCmds(cmds) => Some(cmds.app.as_str()),
                _ => None,
            })
            .collect();
        for spanned in &self.instructions {
            let Some(app) = spanned.node.defined_app() else {
                continue;
            };
            if app_type(&app.name).is_none() && !with_cmds.contains(app.name.as_str()) {
                return Err(KubefileError::at(
                    spanned.span.clone(),
                    format!(
                        r#"the type of app {name:?} cannot be detected (a helm chart, kube manifests or shell scripts): give its launch commands with APPCMDS {name} ["…"]"#,
                        name = app.name
                    ),
                ));
            }
        }
        Ok(())
    }
}
