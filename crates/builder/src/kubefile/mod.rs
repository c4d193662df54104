//! Kubefiles: sealer's build file — parsing, validation and variable expansion.
//!
//! The instructions (keywords are case-insensitive; `\` continues a line; `#` starts a
//! comment line) are those of sealer v0.11: FROM, ARG, COPY, ADD, ENV, LABEL, MAINTAINER,
//! RUN, APP, APPCMDS, APPENV, CNI, CSI, KUBEVERSION, LAUNCH, CMDS and the deprecated CMD.
//! See [`Instruction`] for each one's arguments.
//!
//! The engine's sequence:
//!
//! 1. [`parse`] (or [`parse_file`]): syntax and structure; every error reads
//!    `file:line:column: what was expected`.
//! 2. [`Kubefile::expand_from`]: the FROM line resolved with the ARGs before it and the
//!    build args, to pull the base image.
//! 3. [`Kubefile::check_app_names`] with the base image's app names.
//! 4. [`Kubefile::expand`] with the build args and the base image's environment: every
//!    instruction resolved ([`Step`]), with the environment a RUN gets.
//! 5. Per platform, [`Instruction::with_arch`] on each step; its `to_string()` is the
//!    canonical text the layer cache keys the step on.
//! 6. [`Kubefile::check_app_types`] once app types are detected from their files.

pub mod ast;
mod error;
mod expand;
mod kubeversion;
mod lexer;
mod parser;
mod shell;
mod validate;

use std::path::Path;

use sealer_fs_abstraction::Fs;

pub use ast::{
    ARCH_PLACEHOLDER, App, AppCmds, AppEnv, AppSource, AppType, ArgVar, Base, CNI_LABEL_PREFIX,
    CSI_LABEL_PREFIX, Command, CopyArgs, Instruction, KUBE_VERSION_LABEL, KeyValue, KeyValues,
    Kubefile, ResolvedInstruction, Span, Spanned, Text, Warning, Word, quote,
};
pub use error::{KubefileError, Result};
pub use expand::{BuildArgs, Expanded, Step};
pub use parser::parse;

/// The default Kubefile name in a build context.
pub const DEFAULT_NAME: &str = "Kubefile";

/// Largest Kubefile read (a Kubefile is a short text).
pub const MAX_SIZE: u64 = 1 << 20;

/// Reads and parses the Kubefile at `path` of `fs`; spans name it as `path` is written.
pub fn parse_file(fs: &dyn Fs, path: &Path) -> Result<Kubefile> {
    let name = path.display().to_string();
    let metadata = fs.metadata(path)?;
    if metadata.len > MAX_SIZE {
        return Err(KubefileError::at(
            Span::new(name.as_str().into(), 1, 1),
            format!(
                "the Kubefile is {} bytes; at most {MAX_SIZE} are read",
                metadata.len
            ),
        ));
    }
    let bytes = fs.read(path)?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => {
            let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
            let before = String::from_utf8_lossy(valid);
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .map_or(0, |last| last.chars().count())
                + 1;
            return Err(KubefileError::at(
                Span::new(name.as_str().into(), line, column),
                "the Kubefile is not UTF-8 text",
            ));
        }
    };
    parse(&text, &name)
}

impl Kubefile {
    /// [`parse`].
    pub fn parse(source: &str, file: &str) -> Result<Self> {
        parse(source, file)
    }
}
