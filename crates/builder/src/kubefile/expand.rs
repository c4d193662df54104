//! Variable expansion with Dockerfile rules.
//!
//! * ARGs before FROM are global: usable in FROM only. After FROM an ARG is in scope from
//!   its declaration on; `ARG NAME` without a default takes the global value of NAME.
//! * A `--build-arg` overrides an ARG's default; build args no ARG declares are reported in
//!   [`Expanded::unused_build_args`] (Docker warns about them too).
//! * ENV (the base image's, then the Kubefile's) wins over an ARG of the same name; all
//!   pairs of one ENV see the variables as they were before that ENV.
//! * Substituted: FROM (image, `--platform`), COPY/ADD (flags, sources, destination), ARG
//!   defaults, ENV, LABEL and APPENV values, APP/CNI/CSI sources, KUBEVERSION. Not
//!   substituted: RUN, CMD, CMDS, APPCMDS (the shell sees RUN's environment), LAUNCH,
//!   MAINTAINER, app names, keys.
//! * Resolved instructions have one canonical form: COPY/ADD are never `json_form`,
//!   ENV/LABEL never `legacy` (their text is then `KEY=value`).
//! * `$ARCH`/`${ARCH}` in COPY/ADD/APP/CNI/CSI sources stay as `${ARCH}` whatever the
//!   variables say; [`Instruction::with_arch`] replaces them per platform.

use std::collections::{BTreeMap, BTreeSet};

use crate::kubefile::ast::{
    App, AppEnv, ArgVar, Base, CopyArgs, Instruction, KeyValue, KeyValues, Kubefile,
    ResolvedInstruction, Span, Spanned, Word,
};
use crate::kubefile::error::{KubefileError, Result};
use crate::kubefile::kubeversion;
use crate::kubefile::parser::{KUBEVERSION_USAGE, check_app_source};
use crate::kubefile::shell::{self, Mode};

/// `--build-arg` values by name.
pub type BuildArgs = BTreeMap<String, String>;

/// A Kubefile with every variable resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// Every instruction, in order (ARGs and FROM included), resolved.
    pub steps: Vec<Step>,
    /// The image's environment after the build: the base image's, then each ENV (a later
    /// value replaces an earlier one in place). It is also sealer's global env.
    pub env: Vec<(String, String)>,
    /// Build args that no ARG declares, sorted.
    pub unused_build_args: Vec<String>,
}

/// One resolved instruction and the variables in scope when it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The instruction, resolved (`${ARCH}` still to replace with
    /// [`Instruction::with_arch`]).
    pub instruction: Spanned<ResolvedInstruction>,
    /// The environment of a RUN at this point, sorted by name: the ARGs in scope that have
    /// a value, overridden by the ENV variables (base image's included). The layer cache
    /// keys RUN steps on it.
    pub env: Vec<(String, String)>,
}

/// Variables while walking the instructions.
#[derive(Default)]
struct Scope {
    /// ARGs declared before FROM (`None`: declared without a value).
    global: BTreeMap<String, Option<String>>,
    /// ARGs declared after FROM.
    args: BTreeMap<String, Option<String>>,
    /// ENV, in order.
    env: Vec<(String, String)>,
    after_from: bool,
    used: BTreeSet<String>,
}

impl Scope {
    fn lookup(&self, name: &str) -> Option<String> {
        if !self.after_from {
            return self.global.get(name).cloned().flatten();
        }
        if let Some((_, value)) = self.env.iter().find(|(key, _)| key == name) {
            return Some(value.clone());
        }
        self.args.get(name).cloned().flatten()
    }

    fn set_env(&mut self, key: String, value: String) {
        match self.env.iter_mut().find(|(existing, _)| *existing == key) {
            Some(slot) => slot.1 = value,
            None => self.env.push((key, value)),
        }
    }

    fn run_env(&self) -> Vec<(String, String)> {
        let mut vars: BTreeMap<String, String> = self
            .args
            .iter()
            .filter_map(|(name, value)| Some((name.clone(), value.clone()?)))
            .collect();
        vars.extend(self.env.iter().cloned());
        vars.into_iter().collect()
    }
}

/// Resolves words of one instruction.
struct Expander<'a> {
    scope: &'a Scope,
    span: &'a Span,
}

impl Expander<'_> {
    fn word(&self, word: &Word) -> Result<String> {
        self.process(word, false)
    }

    fn source(&self, word: &Word) -> Result<String> {
        self.process(word, true)
    }

    fn process(&self, word: &Word, keep_arch: bool) -> Result<String> {
        let lookup = |name: &str| self.scope.lookup(name);
        shell::process(
            word.raw(),
            &Mode::Expand {
                lookup: &lookup,
                keep_arch,
            },
        )
        .map_err(|error| KubefileError::at(self.span.clone(), error.message))
    }

    fn not_empty(&self, what: &str, word: &Word, value: String) -> Result<String> {
        if value.is_empty() {
            return Err(KubefileError::at(
                self.span.clone(),
                format!("{what} {} expanded to nothing", word.raw()),
            ));
        }
        Ok(value)
    }

    fn optional(&self, word: Option<&Word>) -> Result<Option<String>> {
        word.map(|word| self.word(word)).transpose()
    }

    fn pairs(&self, pairs: &[KeyValue]) -> Result<Vec<KeyValue<String>>> {
        pairs
            .iter()
            .map(|pair| {
                Ok(KeyValue {
                    key: pair.key.clone(),
                    value: self.word(&pair.value)?,
                })
            })
            .collect()
    }

    fn base(&self, base: &Base) -> Result<Base<String>> {
        let image = self.word(&base.image)?;
        let platform = match &base.platform {
            Some(platform) => {
                let value = self.word(platform)?;
                Some(self.not_empty("FROM --platform", platform, value)?)
            }
            None => None,
        };
        Ok(Base {
            platform,
            image: self.not_empty("FROM image", &base.image, image)?,
        })
    }

    fn copy(&self, keyword: &str, copy: &CopyArgs) -> Result<CopyArgs<String>> {
        let sources = copy
            .sources
            .iter()
            .map(|source| {
                let value = self.source(source)?;
                self.not_empty(&format!("{keyword} source"), source, value)
            })
            .collect::<Result<_>>()?;
        let dest = self.word(&copy.dest)?;
        Ok(CopyArgs {
            chown: self.optional(copy.chown.as_ref())?,
            chmod: self.optional(copy.chmod.as_ref())?,
            sources,
            dest: self.not_empty(&format!("{keyword} destination"), &copy.dest, dest)?,
            json_form: false,
        })
    }

    fn app(&self, keyword: &str, app: &App) -> Result<App<String>> {
        let sources = app
            .sources
            .iter()
            .map(|source| {
                let value = self.source(source)?;
                check_app_source(keyword, &value)
                    .map_err(|message| KubefileError::at(self.span.clone(), message))?;
                Ok(value)
            })
            .collect::<Result<_>>()?;
        Ok(App {
            name: app.name.clone(),
            sources,
        })
    }
}

impl Kubefile {
    /// Resolves the FROM instruction alone (with the ARGs before it and `build_args`), for
    /// the engine to pull the base image and learn its environment and apps before calling
    /// [`expand`](Self::expand).
    pub fn expand_from(&self, build_args: &BuildArgs) -> Result<Spanned<Base<String>>> {
        let mut scope = Scope::default();
        for spanned in &self.instructions {
            match &spanned.node {
                Instruction::Arg(vars) => {
                    declare(&mut scope, vars, build_args, &spanned.span)?;
                }
                Instruction::From(base) => {
                    let expander = Expander {
                        scope: &scope,
                        span: &spanned.span,
                    };
                    return Ok(Spanned::new(spanned.span.clone(), expander.base(base)?));
                }
                _ => break,
            }
        }
        // `parse` guarantees a FROM; a hand-built tree may lack one.
        Err(KubefileError::at(
            Span::new(self.file.clone(), 1, 1),
            "no FROM instruction: a Kubefile starts with FROM <image> or FROM scratch",
        ))
    }

    /// Resolves every instruction. `base_env` is the base image's environment (its config's
    /// `Env`, split at the first `=`; empty for `FROM scratch`).
    pub fn expand(
        &self,
        build_args: &BuildArgs,
        base_env: &[(String, String)],
    ) -> Result<Expanded> {
        let mut scope = Scope::default();
        let mut steps = Vec::with_capacity(self.instructions.len());
        for spanned in &self.instructions {
            let span = &spanned.span;
            let expander = Expander {
                scope: &scope,
                span,
            };
            let resolved = match &spanned.node {
                Instruction::From(base) => {
                    let base = expander.base(base)?;
                    scope.after_from = true;
                    for (key, value) in base_env {
                        scope.set_env(key.clone(), value.clone());
                    }
                    Instruction::From(base)
                }
                Instruction::Arg(vars) => {
                    let resolved = declare(&mut scope, vars, build_args, span)?;
                    Instruction::Arg(resolved)
                }
                Instruction::Copy(copy) => Instruction::Copy(expander.copy("COPY", copy)?),
                Instruction::Add(copy) => Instruction::Add(expander.copy("ADD", copy)?),
                Instruction::Env(values) => {
                    let pairs = expander.pairs(&values.pairs)?;
                    for pair in &pairs {
                        scope.set_env(pair.key.clone(), pair.value.clone());
                    }
                    Instruction::Env(KeyValues {
                        pairs,
                        legacy: false,
                    })
                }
                Instruction::Label(values) => Instruction::Label(KeyValues {
                    pairs: expander.pairs(&values.pairs)?,
                    legacy: false,
                }),
                Instruction::Maintainer(text) => Instruction::Maintainer(text.clone()),
                Instruction::Run(command) => Instruction::Run(command.clone()),
                Instruction::App(app) => Instruction::App(expander.app("APP", app)?),
                Instruction::Cni(app) => Instruction::Cni(expander.app("CNI", app)?),
                Instruction::Csi(app) => Instruction::Csi(expander.app("CSI", app)?),
                Instruction::AppCmds(cmds) => Instruction::AppCmds(cmds.clone()),
                Instruction::AppEnv(env) => Instruction::AppEnv(AppEnv {
                    app: env.app.clone(),
                    vars: expander.pairs(&env.vars)?,
                }),
                Instruction::KubeVersion(range) => {
                    let value = expander.word(range)?;
                    kubeversion::check_range(&value).map_err(|why| {
                        KubefileError::at(
                            span.clone(),
                            format!(
                                "{KUBEVERSION_USAGE}: {} expanded to {value:?}: {why}",
                                range.raw()
                            ),
                        )
                    })?;
                    Instruction::KubeVersion(value)
                }
                Instruction::Launch(apps) => Instruction::Launch(apps.clone()),
                Instruction::Cmds(cmds) => Instruction::Cmds(cmds.clone()),
                Instruction::Cmd(command) => Instruction::Cmd(command.clone()),
            };
            steps.push(Step {
                instruction: Spanned::new(span.clone(), resolved),
                env: scope.run_env(),
            });
        }
        let unused_build_args = build_args
            .keys()
            .filter(|name| !scope.used.contains(*name))
            .cloned()
            .collect();
        Ok(Expanded {
            steps,
            env: scope.env,
            unused_build_args,
        })
    }
}

/// Declares the variables of an ARG; returns them resolved (the value in effect as the
/// default, so the canonical text changes with a build arg).
fn declare(
    scope: &mut Scope,
    vars: &[ArgVar],
    build_args: &BuildArgs,
    span: &Span,
) -> Result<Vec<ArgVar<String>>> {
    let mut resolved = Vec::with_capacity(vars.len());
    for var in vars {
        let default = {
            let expander = Expander { scope, span };
            expander.optional(var.default.as_ref())?
        };
        let value = match build_args.get(&var.name) {
            Some(value) => {
                scope.used.insert(var.name.clone());
                Some(value.clone())
            }
            None if default.is_some() => default,
            None if scope.after_from => scope.global.get(&var.name).cloned().flatten(),
            None => None,
        };
        let declared = if scope.after_from {
            &mut scope.args
        } else {
            &mut scope.global
        };
        declared.insert(var.name.clone(), value.clone());
        resolved.push(ArgVar {
            name: var.name.clone(),
            default: value,
        });
    }
    Ok(resolved)
}
