//! Kubefiles: the syntax tree of sealer's build file (see REFERENCE §1 of the project docs
//! for the instructions).

pub mod ast;

pub use ast::{
    ARCH_PLACEHOLDER, App, AppCmds, AppEnv, AppSource, AppType, ArgVar, Base, CNI_LABEL_PREFIX,
    CSI_LABEL_PREFIX, Command, CopyArgs, Instruction, KUBE_VERSION_LABEL, KeyValue, KeyValues,
    Kubefile, ResolvedInstruction, Span, Spanned, Text, Warning, Word, quote,
};
