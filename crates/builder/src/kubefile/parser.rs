//! Logical lines to instructions.

use std::sync::Arc;

use crate::kubefile::ast::{
    App, AppCmds, AppEnv, AppSource, ArgVar, Base, Command, CopyArgs, Instruction, KeyValue,
    KeyValues, Kubefile, Span, Spanned, Warning, Word,
};
use crate::kubefile::error::{KubefileError, Result};
use crate::kubefile::kubeversion;
use crate::kubefile::lexer::{Line, logical_lines, split_words, unquoted_equals};
use crate::kubefile::shell::{self, Mode};
use crate::kubefile::validate;

/// Every keyword, in the order messages list them.
pub(crate) const KEYWORDS: &str = "FROM, ARG, COPY, ADD, ENV, LABEL, MAINTAINER, RUN, APP, APPCMDS, APPENV, CNI, CSI, KUBEVERSION, LAUNCH, CMDS, CMD";

/// Dockerfile instructions a Kubefile does not have.
const DOCKERFILE_ONLY: [&str; 10] = [
    "ENTRYPOINT",
    "EXPOSE",
    "HEALTHCHECK",
    "ONBUILD",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
    "CHECKSUM",
];

const FROM_USAGE: &str = "e.g. FROM docker.io/sealerio/kubernetes:v1.22.15 or FROM scratch";
const APPCMDS_USAGE: &str = r#"APPCMDS expects a JSON array of strings, e.g. APPCMDS app ["kubectl","apply","-f","x.yaml"]"#;
const LAUNCH_USAGE: &str =
    r#"LAUNCH expects a JSON array of app names, e.g. LAUNCH ["calico","nginx"]"#;
const CMDS_USAGE: &str =
    r#"CMDS expects a JSON array of commands, e.g. CMDS ["kubectl apply -f manifests/"]"#;
pub(crate) const KUBEVERSION_USAGE: &str =
    "KUBEVERSION expects a semver range such as >=1.20.0 <1.27.0, ~1.22 or 1.20 - 1.24";
pub(crate) const APP_SOURCE_USAGE: &str = "sources start with local://, http:// or https://";

/// Parses a Kubefile (`file` names it in spans) and checks its structure: FROM first (after
/// ARGs) and once; LAUNCH/CMDS last, once, and exclusive (and CMD not with LAUNCH); apps
/// defined once; APPCMDS/APPENV not before the app they name; KUBEVERSION a valid range.
/// Checks that need the base image or the context are `Kubefile::check_app_names` and
/// `Kubefile::check_app_types`.
pub fn parse(source: &str, file: &str) -> Result<Kubefile> {
    let file: Arc<str> = Arc::from(file);
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    for line in logical_lines(source) {
        let (instruction, warning) = parse_line(&file, &line)?;
        instructions.push(instruction);
        warnings.extend(warning);
    }
    for warning in &warnings {
        tracing::warn!("{warning}");
    }
    let kubefile = Kubefile {
        file,
        instructions,
        warnings,
    };
    validate::structure(&kubefile)?;
    Ok(kubefile)
}

/// One logical line and where its parts are.
struct Ctx<'a> {
    file: &'a Arc<str>,
    line: &'a Line,
    keyword: &'static str,
    keyword_offset: usize,
    args_offset: usize,
    args: &'a str,
}

/// A word of the arguments: raw text and byte offset in the line.
type RawWord = (String, usize);

impl Ctx<'_> {
    fn span(&self, offset: usize) -> Span {
        let (line, column) = self.line.position(offset);
        Span::new(self.file.clone(), line, column)
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> KubefileError {
        KubefileError::at(self.span(offset), message)
    }

    /// An error about the instruction as a whole (a missing argument): at its keyword.
    fn error_here(&self, message: impl Into<String>) -> KubefileError {
        self.error(self.keyword_offset, message)
    }

    fn words(&self) -> Result<Vec<RawWord>> {
        split_words(self.args)
            .map(|words| {
                words
                    .into_iter()
                    .map(|(word, offset)| (word, self.args_offset + offset))
                    .collect()
            })
            .map_err(|error| self.error(self.args_offset + error.offset, error.message))
    }

    /// A word whose quoting and `${…}` syntax is valid.
    fn word(&self, (raw, offset): &RawWord) -> Result<Word> {
        shell::process(raw, &Mode::Check)
            .map_err(|error| self.error(offset + error.offset, error.message))?;
        Ok(Word::new(raw.clone()))
    }

    /// A word with quotes and escapes removed and `$` literal (keys, names).
    fn unquoted(&self, (raw, offset): &RawWord) -> Result<String> {
        shell::process(raw, &Mode::Unquote)
            .map_err(|error| self.error(offset + error.offset, error.message))
    }

    /// The arguments from byte `offset` of the line on.
    fn rest_from(&self, offset: usize) -> &str {
        let start = offset.saturating_sub(self.args_offset).min(self.args.len());
        self.args.get(start..).unwrap_or_default()
    }
}

fn parse_line(file: &Arc<str>, line: &Line) -> Result<(Spanned<Instruction>, Option<Warning>)> {
    let text = line.text.as_str();
    let keyword_offset = text.len() - text.trim_start().len();
    let after_keyword = text[keyword_offset..]
        .find(char::is_whitespace)
        .map_or(text.len(), |end| keyword_offset + end);
    let written = &text[keyword_offset..after_keyword];
    let args_offset = text.len() - text[after_keyword..].trim_start().len();
    let args = text[args_offset..].trim_end();
    let upper = written.to_ascii_uppercase();
    let span = {
        let (line_number, column) = line.position(keyword_offset);
        Span::new(file.clone(), line_number, column)
    };
    let keyword = match KEYWORDS.split(", ").find(|keyword| *keyword == upper) {
        Some(keyword) => keyword,
        None if DOCKERFILE_ONLY.contains(&upper.as_str()) => {
            return Err(KubefileError::at(
                span,
                format!(
                    "{upper} is a Dockerfile instruction that Kubefiles do not support; expected one of {KEYWORDS}"
                ),
            ));
        }
        None => {
            return Err(KubefileError::at(
                span,
                format!("unknown instruction {written:?}; expected one of {KEYWORDS}"),
            ));
        }
    };
    let ctx = Ctx {
        file,
        line,
        keyword,
        keyword_offset,
        args_offset,
        args,
    };
    let mut warning = None;
    let instruction = match keyword {
        "FROM" => Instruction::From(parse_from(&ctx)?),
        "ARG" => Instruction::Arg(parse_arg(&ctx)?),
        "COPY" => Instruction::Copy(parse_copy(&ctx)?),
        "ADD" => Instruction::Add(parse_copy(&ctx)?),
        "ENV" | "LABEL" => {
            let values = parse_key_values(&ctx)?;
            if values.legacy {
                warning = Some(Warning {
                    span: span.clone(),
                    message: format!(
                        "the legacy form `{keyword} KEY value` is deprecated; write {keyword} KEY=value"
                    ),
                });
            }
            if keyword == "ENV" {
                Instruction::Env(values)
            } else {
                Instruction::Label(values)
            }
        }
        "MAINTAINER" => {
            if args.is_empty() {
                return Err(ctx.error_here(
                    "MAINTAINER expects a name, e.g. MAINTAINER Jane Doe <jane@example.com>",
                ));
            }
            Instruction::Maintainer(args.to_owned())
        }
        "RUN" => Instruction::Run(parse_command(&ctx)?),
        "CMD" => {
            warning = Some(Warning {
                span: span.clone(),
                message: r#"CMD is deprecated; use CMDS ["cmd", …]"#.to_owned(),
            });
            Instruction::Cmd(parse_command(&ctx)?)
        }
        "APP" => Instruction::App(parse_app(&ctx)?),
        "CNI" => Instruction::Cni(parse_app(&ctx)?),
        "CSI" => Instruction::Csi(parse_app(&ctx)?),
        "APPCMDS" => Instruction::AppCmds(parse_appcmds(&ctx)?),
        "APPENV" => Instruction::AppEnv(parse_appenv(&ctx)?),
        "KUBEVERSION" => Instruction::KubeVersion(parse_kubeversion(&ctx)?),
        "LAUNCH" => {
            let apps = json_array(&ctx, LAUNCH_USAGE, "LAUNCH expects at least one app name")?;
            for app in &apps {
                validate::check_app_name(app).map_err(|message| ctx.error(args_offset, message))?;
            }
            Instruction::Launch(apps)
        }
        _ => Instruction::Cmds(json_array(
            &ctx,
            CMDS_USAGE,
            "CMDS expects at least one command",
        )?),
    };
    Ok((Spanned::new(span, instruction), warning))
}

/// A `--name[=value]` flag: name, value (raw word and offset), offset of the flag.
struct Flag {
    name: String,
    value: Option<RawWord>,
    offset: usize,
}

/// Takes the leading `--flag` words off `words`.
fn take_flags(words: &mut Vec<RawWord>) -> Vec<Flag> {
    let count = words
        .iter()
        .take_while(|(word, _)| word.starts_with("--"))
        .count();
    words
        .drain(..count)
        .map(|(word, offset)| {
            let body = &word[2..];
            match body.split_once('=') {
                Some((name, value)) => Flag {
                    name: name.to_owned(),
                    value: Some((value.to_owned(), offset + 3 + name.len())),
                    offset,
                },
                None => Flag {
                    name: body.to_owned(),
                    value: None,
                    offset,
                },
            }
        })
        .collect()
}

fn parse_from(ctx: &Ctx<'_>) -> Result<Base> {
    let mut words = ctx.words()?;
    let mut platform = None;
    for flag in take_flags(&mut words) {
        match (flag.name.as_str(), &flag.value) {
            ("platform", Some(value)) if !value.0.is_empty() => {
                platform = Some(ctx.word(value)?);
            }
            _ => {
                return Err(ctx.error(
                    flag.offset,
                    format!(
                        "FROM accepts only --platform=<os>/<arch>[/<variant>], found --{}",
                        flag_text(&flag)
                    ),
                ));
            }
        }
    }
    match words.as_slice() {
        [] => Err(ctx.error_here(format!("FROM expects an image, {FROM_USAGE}"))),
        [image] => Ok(Base {
            platform,
            image: ctx.word(image)?,
        }),
        [_, (as_word, offset), ..] if as_word.eq_ignore_ascii_case("as") => Err(ctx.error(
            *offset,
            "FROM … AS <name> is not supported: a Kubefile has a single stage",
        )),
        [_, (extra, offset), ..] => Err(ctx.error(
            *offset,
            format!("FROM expects one image, found an extra argument {extra:?}"),
        )),
    }
}

fn flag_text(flag: &Flag) -> String {
    match &flag.value {
        Some((value, _)) => format!("{}={value}", flag.name),
        None => flag.name.clone(),
    }
}

fn is_arg_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_arg(ctx: &Ctx<'_>) -> Result<Vec<ArgVar>> {
    let words = ctx.words()?;
    if words.is_empty() {
        return Err(ctx.error_here("ARG expects NAME or NAME=default, e.g. ARG VERSION=1.0"));
    }
    words
        .iter()
        .map(|(word, offset)| {
            let (name, default) = match word.split_once('=') {
                Some((name, default)) => (name, Some((default.to_owned(), offset + name.len() + 1))),
                None => (word.as_str(), None),
            };
            if !is_arg_name(name) {
                return Err(ctx.error(
                    *offset,
                    format!("ARG expects NAME or NAME=default where NAME is letters, digits and _ (not starting with a digit), found {word:?}"),
                ));
            }
            Ok(ArgVar {
                name: name.to_owned(),
                default: default.as_ref().map(|default| ctx.word(default)).transpose()?,
            })
        })
        .collect()
}

fn parse_copy(ctx: &Ctx<'_>) -> Result<CopyArgs> {
    let keyword = ctx.keyword;
    let usage = format!(
        "{keyword} expects at least one source and a destination, e.g. {keyword} manifests/ manifests/"
    );
    let mut words = ctx.words()?;
    let flags = take_flags(&mut words);
    let mut chown = None;
    let mut chmod = None;
    for flag in &flags {
        let slot = match flag.name.as_str() {
            "chown" => &mut chown,
            "chmod" => &mut chmod,
            "from" => {
                return Err(ctx.error(
                    flag.offset,
                    format!("{keyword} --from is not supported: a Kubefile has a single stage"),
                ));
            }
            _ => {
                return Err(ctx.error(
                    flag.offset,
                    format!(
                        "{keyword} accepts only --chown=<user>[:<group>] and --chmod=<mode>, found --{}",
                        flag_text(flag)
                    ),
                ));
            }
        };
        match &flag.value {
            Some(value) if !value.0.is_empty() => *slot = Some(ctx.word(value)?),
            _ => {
                let example = if flag.name == "chown" { "0:0" } else { "0644" };
                return Err(ctx.error(
                    flag.offset,
                    format!(
                        "{keyword} --{name} expects a value, e.g. --{name}={example}",
                        name = flag.name
                    ),
                ));
            }
        }
    }
    let first = words.first().map(|(_, offset)| *offset);
    let rest = first
        .map(|offset| ctx.rest_from(offset))
        .unwrap_or_default();
    let (words, json_form) = if rest.starts_with('[') {
        let Some(items) = json_strings(rest) else {
            return Err(ctx.error(
                first.unwrap_or(ctx.keyword_offset),
                format!(
                    r#"{keyword} in JSON form expects an array of strings, e.g. {keyword} ["src", "dest/"]"#
                ),
            ));
        };
        let offset = first.unwrap_or(ctx.keyword_offset);
        (
            items
                .into_iter()
                .map(|item| (item, offset))
                .collect::<Vec<_>>(),
            true,
        )
    } else {
        (words, false)
    };
    let mut sources = words
        .iter()
        .map(|word| ctx.word(word))
        .collect::<Result<Vec<_>>>()?;
    let dest = sources.pop().filter(|_| !sources.is_empty());
    let Some(dest) = dest else {
        return Err(ctx.error_here(usage));
    };
    Ok(CopyArgs {
        chown,
        chmod,
        sources,
        dest,
        json_form,
    })
}

/// `KEY=value` pairs; `allow_legacy` also accepts `KEY value…`.
fn key_value_pairs(ctx: &Ctx<'_>, words: &[RawWord], usage: &str) -> Result<Vec<KeyValue>> {
    words
        .iter()
        .map(|(word, offset)| {
            let Some(equals) = unquoted_equals(word) else {
                return Err(ctx.error(*offset, format!("{usage}; found {word:?} without =")));
            };
            let key = ctx.unquoted(&(word[..equals].to_owned(), *offset))?;
            if key.is_empty() {
                return Err(ctx.error(*offset, format!("{usage}; found an empty name before =")));
            }
            let value = ctx.word(&(word[equals + 1..].to_owned(), offset + equals + 1))?;
            Ok(KeyValue { key, value })
        })
        .collect()
}

fn parse_key_values(ctx: &Ctx<'_>) -> Result<KeyValues> {
    let keyword = ctx.keyword;
    let usage = format!("{keyword} expects KEY=VALUE pairs, e.g. {keyword} KEY=value");
    let words = ctx.words()?;
    let Some(first) = words.first() else {
        return Err(ctx.error_here(usage));
    };
    if unquoted_equals(&first.0).is_none() {
        // The legacy form: KEY, then the rest of the line is the value.
        let Some((_, value_offset)) = words.get(1) else {
            return Err(ctx.error(first.1, format!("{usage}; found {:?} without =", first.0)));
        };
        let key = ctx.unquoted(first)?;
        let value = ctx.word(&(ctx.rest_from(*value_offset).to_owned(), *value_offset))?;
        return Ok(KeyValues {
            pairs: vec![KeyValue { key, value }],
            legacy: true,
        });
    }
    Ok(KeyValues {
        pairs: key_value_pairs(ctx, &words, &usage)?,
        legacy: false,
    })
}

fn json_strings(text: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(text).ok()
}

fn parse_command(ctx: &Ctx<'_>) -> Result<Command> {
    let keyword = ctx.keyword;
    if ctx.args.is_empty() {
        return Err(ctx.error_here(format!(
            r#"{keyword} expects a command, e.g. {keyword} kubectl version --client or {keyword} ["sh", "-c", "…"]"#
        )));
    }
    if ctx.args.starts_with("--") && ctx.args[2..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        let flag = ctx.args.split_whitespace().next().unwrap_or_default();
        return Err(ctx.error(
            ctx.args_offset,
            format!("{keyword} does not accept flags, found {flag}"),
        ));
    }
    if ctx.args.starts_with('[')
        && let Some(items) = json_strings(ctx.args)
    {
        if items.is_empty() {
            return Err(ctx.error(
                ctx.args_offset,
                format!("{keyword} in JSON form expects at least one string"),
            ));
        }
        return Ok(Command::Exec(items));
    }
    Ok(Command::Shell(ctx.args.to_owned()))
}

/// The app name that starts the arguments of APP, CNI, CSI, APPCMDS and APPENV.
fn app_name(ctx: &Ctx<'_>, words: &[RawWord], usage: &str) -> Result<String> {
    let Some((name, offset)) = words.first() else {
        return Err(ctx.error_here(usage.to_owned()));
    };
    validate::check_app_name(name).map_err(|message| ctx.error(*offset, message))?;
    Ok(name.clone())
}

/// Checks an app source now when it has no variables (else expansion checks it).
pub(crate) fn check_app_source(keyword: &str, value: &str) -> Result<(), String> {
    if AppSource::parse(value).is_some() {
        return Ok(());
    }
    Err(format!(
        "{keyword} {APP_SOURCE_USAGE}, found {value:?} (e.g. local://{})",
        value.split_once("://").map_or(value, |(_, rest)| rest)
    ))
}

fn parse_app(ctx: &Ctx<'_>) -> Result<App> {
    let keyword = ctx.keyword;
    let usage = format!(
        "{keyword} expects a name and at least one source, e.g. {keyword} {} local://{}",
        match keyword {
            "CNI" => "calico",
            "CSI" => "openebs",
            _ => "nginx",
        },
        match keyword {
            "CNI" => "calico.yaml",
            "CSI" => "openebs/",
            _ => "nginx.yaml",
        }
    );
    let words = ctx.words()?;
    let name = app_name(ctx, &words, &usage)?;
    if words.len() < 2 {
        return Err(ctx.error_here(usage));
    }
    let sources = words[1..]
        .iter()
        .map(|word| {
            let checked = ctx.word(word)?;
            if !shell::has_variables(&word.0) {
                let value = ctx.unquoted(word)?;
                check_app_source(keyword, &value).map_err(|message| ctx.error(word.1, message))?;
            }
            Ok(checked)
        })
        .collect::<Result<_>>()?;
    Ok(App { name, sources })
}

/// A JSON array of strings filling the rest of the arguments from `offset`; not empty.
fn json_array_at(ctx: &Ctx<'_>, offset: usize, usage: &str, empty: &str) -> Result<Vec<String>> {
    let text = ctx.rest_from(offset);
    let items = json_strings(text)
        .filter(|_| text.starts_with('['))
        .ok_or_else(|| ctx.error(offset, usage.to_owned()))?;
    if items.is_empty() {
        return Err(ctx.error(offset, empty.to_owned()));
    }
    Ok(items)
}

fn json_array(ctx: &Ctx<'_>, usage: &str, empty: &str) -> Result<Vec<String>> {
    if ctx.args.is_empty() {
        return Err(ctx.error_here(usage.to_owned()));
    }
    json_array_at(ctx, ctx.args_offset, usage, empty)
}

fn parse_appcmds(ctx: &Ctx<'_>) -> Result<AppCmds> {
    if ctx.args.starts_with('[') {
        return Err(ctx.error(
            ctx.args_offset,
            format!("APPCMDS expects an app name before the array; {APPCMDS_USAGE}"),
        ));
    }
    // The name is the first blank-separated word; the array is everything after it.
    let name_end = ctx.args.find(char::is_whitespace).unwrap_or(ctx.args.len());
    let name_word = (ctx.args[..name_end].to_owned(), ctx.args_offset);
    let words: Vec<RawWord> = if name_word.0.is_empty() {
        Vec::new()
    } else {
        vec![name_word]
    };
    let app = app_name(ctx, &words, APPCMDS_USAGE)?;
    let after = &ctx.args[name_end..];
    let array_offset = ctx.args_offset + name_end + (after.len() - after.trim_start().len());
    if after.trim().is_empty() {
        return Err(ctx.error_here(APPCMDS_USAGE));
    }
    let commands = json_array_at(
        ctx,
        array_offset,
        APPCMDS_USAGE,
        "APPCMDS expects at least one command",
    )?;
    Ok(AppCmds { app, commands })
}

fn parse_appenv(ctx: &Ctx<'_>) -> Result<AppEnv> {
    let usage = "APPENV expects an app name and KEY=VALUE pairs, e.g. APPENV nginx REPLICAS=3";
    let words = ctx.words()?;
    let app = app_name(ctx, &words, usage)?;
    if words.len() < 2 {
        return Err(ctx.error_here(usage));
    }
    Ok(AppEnv {
        app,
        vars: key_value_pairs(
            ctx,
            &words[1..],
            "APPENV expects KEY=VALUE pairs after the app name",
        )?,
    })
}

fn parse_kubeversion(ctx: &Ctx<'_>) -> Result<Word> {
    if ctx.args.is_empty() {
        return Err(ctx.error_here(format!(
            "{KUBEVERSION_USAGE}, e.g. KUBEVERSION >=1.20.0 <1.27.0"
        )));
    }
    let raw = (ctx.args.to_owned(), ctx.args_offset);
    let word = ctx.word(&raw)?;
    if !shell::has_variables(ctx.args) {
        let value = ctx.unquoted(&raw)?;
        kubeversion::check_range(&value)
            .map_err(|why| ctx.error(ctx.args_offset, format!("{KUBEVERSION_USAGE}: {why}")))?;
    }
    Ok(word)
}
