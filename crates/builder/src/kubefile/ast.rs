//! The Kubefile syntax tree.
//!
//! One tree type serves two stages, told apart by the type of the words that variables may
//! appear in:
//!
//! * `Instruction<Word>` (the default, [`Instruction`]): as parsed. A [`Word`] keeps its
//!   quotes, escapes and `$VAR` references exactly as written.
//! * `Instruction<String>` ([`ResolvedInstruction`]): after variable expansion
//!   (`Kubefile::expand`) — every such word is its final
//!   value, quotes removed and variables substituted, except `${ARCH}` in COPY/ADD/APP/CNI/CSI
//!   sources, which stays until [`Instruction::with_arch`] replaces it per platform.
//!
//! Fields that Dockerfile rules never substitute into (RUN, CMD, CMDS, APPCMDS, LAUNCH,
//! MAINTAINER, app names, ENV/LABEL keys) are plain `String`s in both stages.
//!
//! `Display` prints the canonical text of an instruction: the keyword upper-cased, arguments
//! separated by one space, JSON arrays re-encoded. For a parsed instruction the words are
//! printed as written, so the text parses back to the same tree; for a resolved one they are
//! quoted where needed, so the text parses and expands back to the same values. The resolved
//! text is what the layer cache keys a step on.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The placeholder that COPY/ADD/APP/CNI/CSI sources keep for the target architecture until
/// [`Instruction::with_arch`]; `$ARCH` is normalised to it.
pub const ARCH_PLACEHOLDER: &str = "${ARCH}";

/// Where something is in a Kubefile. Lines and columns are 1-based; columns count characters.
/// Displays as `file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file's name as given to the parser (for messages).
    pub file: Arc<str>,
    /// Line number.
    pub line: usize,
    /// Column number, in characters.
    pub column: usize,
}

impl Span {
    /// A span at `line:column` of `file`.
    pub fn new(file: Arc<str>, line: usize, column: usize) -> Self {
        Self { file, line, column }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A node and where it starts (for an instruction: its keyword).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spanned<T> {
    /// Where the node starts.
    pub span: Span,
    /// The node.
    pub node: T,
}

impl<T> Spanned<T> {
    /// Wraps `node` with `span`.
    pub fn new(span: Span, node: T) -> Self {
        Self { span, node }
    }
}

/// A word as written in the Kubefile: quotes (`"…"`, `'…'`), backslash escapes and variable
/// references (`$VAR`, `${VAR}`, `${VAR:-default}`, …) are still in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Word(String);

impl Word {
    /// A word with this raw text (not checked: the parser checks the words it makes).
    pub fn new(raw: impl Into<String>) -> Self {
        Self(raw.into())
    }

    /// The raw text.
    pub fn raw(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Word {}
    impl Sealed for String {}
}

/// The two kinds of words an [`Instruction`] can hold: [`Word`] (as written) or `String`
/// (resolved). Sealed.
pub trait Text: sealed::Sealed + Clone + fmt::Debug + PartialEq + Eq {
    /// Whether this is the as-written form (printed verbatim) rather than a resolved value
    /// (printed quoted where needed).
    const RAW: bool;

    /// The text: raw for a [`Word`], the value for a `String`.
    fn text(&self) -> &str;

    /// The text as it appears in the canonical form of an instruction.
    fn render(&self) -> Cow<'_, str> {
        if Self::RAW {
            Cow::Borrowed(self.text())
        } else {
            quote(self.text())
        }
    }
}

impl Text for Word {
    const RAW: bool = true;
    fn text(&self) -> &str {
        &self.0
    }
}

impl Text for String {
    const RAW: bool = false;
    fn text(&self) -> &str {
        self
    }
}

/// Quotes a value so that the Kubefile word lexer and expansion give it back unchanged:
/// as-is when it holds nothing special, else in double quotes with `"`, `\` and `$` escaped.
pub fn quote(value: &str) -> Cow<'_, str> {
    let plain = !value.is_empty()
        && !value.starts_with('[')
        && !value
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | '$' | '='));
    if plain {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Cow::Owned(out)
}

/// A parsed Kubefile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kubefile {
    /// The file's name as given to the parser, for messages.
    pub file: Arc<str>,
    /// The instructions in order, each spanned at its keyword.
    pub instructions: Vec<Spanned<Instruction>>,
    /// Non-fatal findings (deprecated forms), also logged with `tracing::warn!`.
    pub warnings: Vec<Warning>,
}

/// A non-fatal finding of the parser. Displays as `file:line:column: warning: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where.
    pub span: Span,
    /// What.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.span, self.message)
    }
}

impl fmt::Display for Kubefile {
    /// One instruction per line, in canonical form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for instruction in &self.instructions {
            writeln!(f, "{}", instruction.node)?;
        }
        Ok(())
    }
}

/// An instruction after expansion: words are final values.
pub type ResolvedInstruction = Instruction<String>;

/// One Kubefile instruction with its parsed arguments. `W` is [`Word`] as parsed, `String`
/// once resolved (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction<W: Text = Word> {
    /// `FROM [--platform=<platform>] <image>|scratch`.
    From(Base<W>),
    /// `ARG <name>[=<default>] …`.
    Arg(Vec<ArgVar<W>>),
    /// `COPY [--chown=…] [--chmod=…] <src>… <dest>` (or the JSON array form).
    Copy(CopyArgs<W>),
    /// `ADD`: the same arguments as COPY.
    Add(CopyArgs<W>),
    /// `ENV <key>=<value> …` or the legacy `ENV <key> <value>`.
    Env(KeyValues<W>),
    /// `LABEL <key>=<value> …` or the legacy `LABEL <key> <value>`.
    Label(KeyValues<W>),
    /// `MAINTAINER <text>`: the rest of the line.
    Maintainer(String),
    /// `RUN <shell command>` or `RUN ["exe", "arg", …]`.
    Run(Command),
    /// `APP <name> local://<path>|http(s)://<url> …`.
    App(App<W>),
    /// `APPCMDS <name> ["cmd", …]`.
    AppCmds(AppCmds),
    /// `APPENV <name> <key>=<value> …`.
    AppEnv(AppEnv<W>),
    /// `CNI <name> <src>…`: an APP labelled `cluster.alpha.sealer.io/kube-cni-<name>="true"`.
    Cni(App<W>),
    /// `CSI <name> <src>…`: an APP labelled `cluster.alpha.sealer.io/kube-csi-<name>="true"`.
    Csi(App<W>),
    /// `KUBEVERSION <semver range>` (Masterminds syntax, e.g. `>=1.20.0 <1.26.0`): the
    /// label `app.alpha.sealer.io/supported-kube-version`.
    KubeVersion(W),
    /// `LAUNCH ["app", …]`: apps started after the cluster is up, in order.
    Launch(Vec<String>),
    /// `CMDS ["cmd", …]`: raw commands run at deploy time.
    Cmds(Vec<String>),
    /// `CMD <command>` (deprecated form of CMDS; several are allowed).
    Cmd(Command),
}

/// The label a CNI instruction adds: `<prefix><name>="true"`.
pub const CNI_LABEL_PREFIX: &str = "cluster.alpha.sealer.io/kube-cni-";
/// The label a CSI instruction adds: `<prefix><name>="true"`.
pub const CSI_LABEL_PREFIX: &str = "cluster.alpha.sealer.io/kube-csi-";
/// The label KUBEVERSION sets.
pub const KUBE_VERSION_LABEL: &str = "app.alpha.sealer.io/supported-kube-version";

impl<W: Text> Instruction<W> {
    /// The keyword, upper-case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Self::From(_) => "FROM",
            Self::Arg(_) => "ARG",
            Self::Copy(_) => "COPY",
            Self::Add(_) => "ADD",
            Self::Env(_) => "ENV",
            Self::Label(_) => "LABEL",
            Self::Maintainer(_) => "MAINTAINER",
            Self::Run(_) => "RUN",
            Self::App(_) => "APP",
            Self::AppCmds(_) => "APPCMDS",
            Self::AppEnv(_) => "APPENV",
            Self::Cni(_) => "CNI",
            Self::Csi(_) => "CSI",
            Self::KubeVersion(_) => "KUBEVERSION",
            Self::Launch(_) => "LAUNCH",
            Self::Cmds(_) => "CMDS",
            Self::Cmd(_) => "CMD",
        }
    }

    /// The app an APP, CNI or CSI instruction defines.
    pub fn defined_app(&self) -> Option<&App<W>> {
        match self {
            Self::App(app) | Self::Cni(app) | Self::Csi(app) => Some(app),
            _ => None,
        }
    }
}

impl Instruction<String> {
    /// This instruction with `${ARCH}` in COPY/ADD/APP/CNI/CSI sources replaced by `arch`
    /// (e.g. `amd64`, as in an OCI platform). The engine calls it once per target platform;
    /// other instructions are returned unchanged.
    pub fn with_arch(&self, arch: &str) -> Self {
        let replace = |sources: &[String]| -> Vec<String> {
            sources
                .iter()
                .map(|source| source.replace(ARCH_PLACEHOLDER, arch))
                .collect()
        };
        match self {
            Self::Copy(copy) => Self::Copy(CopyArgs {
                sources: replace(&copy.sources),
                ..copy.clone()
            }),
            Self::Add(copy) => Self::Add(CopyArgs {
                sources: replace(&copy.sources),
                ..copy.clone()
            }),
            Self::App(app) => Self::App(app.with_sources(replace(&app.sources))),
            Self::Cni(app) => Self::Cni(app.with_sources(replace(&app.sources))),
            Self::Csi(app) => Self::Csi(app.with_sources(replace(&app.sources))),
            other => other.clone(),
        }
    }
}

/// `FROM [--platform=<platform>] <image>`: the base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base<W: Text = Word> {
    /// `--platform=…`, when given.
    pub platform: Option<W>,
    /// The image reference, or `scratch`.
    pub image: W,
}

impl Base<String> {
    /// Whether this is `FROM scratch` (an empty base: the cache chain starts from a constant).
    pub fn is_scratch(&self) -> bool {
        self.image == "scratch"
    }
}

/// One variable of an ARG instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgVar<W: Text = Word> {
    /// The name.
    pub name: String,
    /// The default value, when given (`--build-arg` overrides it).
    pub default: Option<W>,
}

/// COPY and ADD arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs<W: Text = Word> {
    /// `--chown=<user>[:<group>]`, when given (recorded; layers are owned by 0:0 unless the
    /// engine honours it).
    pub chown: Option<W>,
    /// `--chmod=<mode>`, when given.
    pub chmod: Option<W>,
    /// Sources, relative to the build context (globs allowed; `${ARCH}` kept until
    /// [`Instruction::with_arch`]).
    pub sources: Vec<W>,
    /// The destination in the rootfs.
    pub dest: W,
    /// Whether it was written as a JSON array (kept only to print it back the same way;
    /// always `false` once resolved).
    pub json_form: bool,
}

/// A `key=value` pair of ENV, LABEL or APPENV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue<W: Text = Word> {
    /// The key (quotes removed; never substituted).
    pub key: String,
    /// The value.
    pub value: W,
}

/// The pairs of an ENV or LABEL instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValues<W: Text = Word> {
    /// The pairs, in order (a later one wins).
    pub pairs: Vec<KeyValue<W>>,
    /// Whether it was written in the legacy `KEY value` form (one pair, the value being the
    /// rest of the line); kept only to print it back the same way, always `false` once
    /// resolved.
    pub legacy: bool,
}

/// A RUN or CMD command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Shell form: run with `sh -c`; the text as written (continuations joined).
    Shell(String),
    /// JSON (exec) form: the program and its arguments.
    Exec(Vec<String>),
}

/// An app defined by APP, CNI or CSI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App<W: Text = Word> {
    /// The app's name: its directory under `application/apps/`.
    pub name: String,
    /// Its sources: `local://<path>` (in the build context) or `http(s)://<url>`.
    pub sources: Vec<W>,
}

impl<W: Text> App<W> {
    fn with_sources(&self, sources: Vec<W>) -> Self {
        Self {
            name: self.name.clone(),
            sources,
        }
    }
}

impl App<String> {
    /// The sources, parsed. Expansion has checked every one, so none is dropped.
    pub fn parsed_sources(&self) -> Vec<AppSource> {
        self.sources
            .iter()
            .filter_map(|source| AppSource::parse(source))
            .collect()
    }
}

/// Where an app's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    /// `local://<path>`: a path in the build context.
    Local(String),
    /// `http://…` or `https://…`: a file to download.
    Remote(String),
}

impl AppSource {
    /// The URL scheme of local sources.
    pub const LOCAL_SCHEME: &'static str = "local://";

    /// Parses a source; `None` when it has none of the schemes `local://`, `http://`,
    /// `https://`, or nothing after it.
    pub fn parse(source: &str) -> Option<Self> {
        if let Some(path) = source.strip_prefix(Self::LOCAL_SCHEME) {
            return (!path.is_empty()).then(|| Self::Local(path.to_owned()));
        }
        let rest = source
            .strip_prefix("http://")
            .or_else(|| source.strip_prefix("https://"))?;
        (!rest.is_empty()).then(|| Self::Remote(source.to_owned()))
    }
}

/// The type of an app, as the engine detects it from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppType {
    /// A directory with `Chart.yaml`, `values.yaml` and `templates/`: `helm install`.
    Helm,
    /// Only `.yaml`/`.yml` files: `kubectl apply -f`.
    Kube,
    /// `.sh` files: `bash <file>`.
    Shell,
}

/// `APPCMDS <app> ["cmd", …]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCmds {
    /// The app.
    pub app: String,
    /// Its launch commands.
    pub commands: Vec<String>,
}

/// `APPENV <app> <key>=<value> …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppEnv<W: Text = Word> {
    /// The app.
    pub app: String,
    /// Its variables (they win over ENV for this app).
    pub vars: Vec<KeyValue<W>>,
}

// ---- canonical text ----

fn json_array(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let values = items
        .into_iter()
        .map(|item| serde_json::Value::String(item.as_ref().to_owned()))
        .collect();
    serde_json::Value::Array(values).to_string()
}

fn write_pairs<W: Text>(f: &mut fmt::Formatter<'_>, pairs: &[KeyValue<W>]) -> fmt::Result {
    for pair in pairs {
        write!(f, " {}={}", quote(&pair.key), pair.value.render())?;
    }
    Ok(())
}

fn write_command(f: &mut fmt::Formatter<'_>, command: &Command) -> fmt::Result {
    match command {
        Command::Shell(text) => write!(f, " {text}"),
        Command::Exec(args) => write!(f, " {}", json_array(args)),
    }
}

impl<W: Text> fmt::Display for Instruction<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.keyword())?;
        match self {
            Self::From(from) => {
                if let Some(platform) = &from.platform {
                    write!(f, " --platform={}", platform.render())?;
                }
                write!(f, " {}", from.image.render())
            }
            Self::Arg(vars) => {
                for var in vars {
                    write!(f, " {}", var.name)?;
                    if let Some(default) = &var.default {
                        write!(f, "={}", default.render())?;
                    }
                }
                Ok(())
            }
            Self::Copy(copy) | Self::Add(copy) => {
                if let Some(chown) = &copy.chown {
                    write!(f, " --chown={}", chown.render())?;
                }
                if let Some(chmod) = &copy.chmod {
                    write!(f, " --chmod={}", chmod.render())?;
                }
                let words = copy.sources.iter().chain(std::iter::once(&copy.dest));
                if copy.json_form && W::RAW {
                    write!(f, " {}", json_array(words.map(Text::text)))
                } else {
                    words
                        .into_iter()
                        .try_for_each(|word| write!(f, " {}", word.render()))
                }
            }
            Self::Env(values) | Self::Label(values) => match values.pairs.as_slice() {
                [pair] if values.legacy => {
                    write!(f, " {} {}", quote(&pair.key), pair.value.render())
                }
                pairs => write_pairs(f, pairs),
            },
            Self::Maintainer(text) => write!(f, " {text}"),
            Self::Run(command) | Self::Cmd(command) => write_command(f, command),
            Self::App(app) | Self::Cni(app) | Self::Csi(app) => {
                write!(f, " {}", app.name)?;
                app.sources
                    .iter()
                    .try_for_each(|source| write!(f, " {}", source.render()))
            }
            Self::AppCmds(cmds) => write!(f, " {} {}", cmds.app, json_array(&cmds.commands)),
            Self::AppEnv(env) => {
                write!(f, " {}", env.app)?;
                write_pairs(f, &env.vars)
            }
            Self::KubeVersion(range) => write!(f, " {}", range.render()),
            Self::Launch(items) | Self::Cmds(items) => write!(f, " {}", json_array(items)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(raw: &str) -> Word {
        Word::new(raw)
    }

    #[test]
    fn span_displays_as_file_line_column() {
        assert_eq!(
            Span::new("Kubefile".into(), 7, 5).to_string(),
            "Kubefile:7:5"
        );
    }

    #[test]
    fn quote_leaves_plain_words_and_escapes_the_rest() {
        assert_eq!(quote("nginx:1.25"), "nginx:1.25");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("$HOME"), "\"\\$HOME\"");
        assert_eq!(quote("say \"hi\"\\"), "\"say \\\"hi\\\"\\\\\"");
        assert_eq!(quote("[x]"), "\"[x]\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }

    #[test]
    fn parsed_instructions_print_their_words_as_written() {
        let cases: Vec<(Instruction, &str)> = vec![
            (
                Instruction::From(Base {
                    platform: Some(w("$PLATFORM")),
                    image: w("kubernetes:v1.22"),
                }),
                "FROM --platform=$PLATFORM kubernetes:v1.22",
            ),
            (
                Instruction::Arg(vec![
                    ArgVar {
                        name: "A".into(),
                        default: None,
                    },
                    ArgVar {
                        name: "B".into(),
                        default: Some(w("\"x y\"")),
                    },
                ]),
                "ARG A B=\"x y\"",
            ),
            (
                Instruction::Copy(CopyArgs {
                    chown: Some(w("0:0")),
                    chmod: None,
                    sources: vec![w("${ARCH}/bin"), w("'a b'")],
                    dest: w("bin/"),
                    json_form: false,
                }),
                "COPY --chown=0:0 ${ARCH}/bin 'a b' bin/",
            ),
            (
                Instruction::Add(CopyArgs {
                    chown: None,
                    chmod: None,
                    sources: vec![w("a b")],
                    dest: w("c"),
                    json_form: true,
                }),
                "ADD [\"a b\",\"c\"]",
            ),
            (
                Instruction::Env(KeyValues {
                    pairs: vec![KeyValue {
                        key: "PATH".into(),
                        value: w("$PATH:/opt bin"),
                    }],
                    legacy: true,
                }),
                "ENV PATH $PATH:/opt bin",
            ),
            (
                Instruction::Label(KeyValues {
                    pairs: vec![
                        KeyValue {
                            key: "a.b".into(),
                            value: w("\"1 2\""),
                        },
                        KeyValue {
                            key: "c d".into(),
                            value: w("3"),
                        },
                    ],
                    legacy: false,
                }),
                "LABEL a.b=\"1 2\" \"c d\"=3",
            ),
            (
                Instruction::Run(Command::Exec(vec!["sh".into(), "-c".into(), "true".into()])),
                "RUN [\"sh\",\"-c\",\"true\"]",
            ),
            (
                Instruction::AppCmds(AppCmds {
                    app: "nginx".into(),
                    commands: vec!["kubectl apply -f nginx.yaml".into()],
                }),
                "APPCMDS nginx [\"kubectl apply -f nginx.yaml\"]",
            ),
            (
                Instruction::Launch(vec!["calico".into(), "nginx".into()]),
                "LAUNCH [\"calico\",\"nginx\"]",
            ),
        ];
        for (instruction, text) in cases {
            assert_eq!(instruction.to_string(), text);
        }
    }

    #[test]
    fn resolved_instructions_quote_what_needs_it() {
        let copy: ResolvedInstruction = Instruction::Copy(CopyArgs {
            chown: None,
            chmod: None,
            sources: vec!["a b".into(), "c".into()],
            dest: "$d".into(),
            json_form: true,
        });
        assert_eq!(copy.to_string(), "COPY \"a b\" c \"\\$d\"");
        let env: ResolvedInstruction = Instruction::Env(KeyValues {
            pairs: vec![KeyValue {
                key: "K".into(),
                value: "v w".into(),
            }],
            legacy: true,
        });
        assert_eq!(env.to_string(), "ENV K \"v w\"");
        let version: ResolvedInstruction = Instruction::KubeVersion(">=1.20 <1.26".into());
        assert_eq!(version.to_string(), "KUBEVERSION \">=1.20 <1.26\"");
    }

    #[test]
    fn with_arch_replaces_the_placeholder_in_sources_only() {
        let copy: ResolvedInstruction = Instruction::Copy(CopyArgs {
            chown: None,
            chmod: None,
            sources: vec!["bin/${ARCH}/kubectl".into()],
            dest: "${ARCH}".into(),
            json_form: false,
        });
        assert_eq!(
            copy.with_arch("arm64").to_string(),
            "COPY bin/arm64/kubectl \"\\${ARCH}\""
        );
        let app: ResolvedInstruction = Instruction::Cni(App {
            name: "calico".into(),
            sources: vec!["local://calico-${ARCH}.yaml".into()],
        });
        assert_eq!(
            app.with_arch("amd64").to_string(),
            "CNI calico local://calico-amd64.yaml"
        );
        let run: ResolvedInstruction = Instruction::Run(Command::Shell("echo ${ARCH}".into()));
        assert_eq!(run.with_arch("amd64"), run);
    }

    #[test]
    fn app_sources_need_a_scheme_and_something_after_it() {
        assert_eq!(
            AppSource::parse("local://charts/nginx"),
            Some(AppSource::Local("charts/nginx".into()))
        );
        assert_eq!(
            AppSource::parse("https://x.io/a.yaml"),
            Some(AppSource::Remote("https://x.io/a.yaml".into()))
        );
        for bad in ["nginx.yaml", "local://", "https://", "ftp://x", "LOCAL://a"] {
            assert_eq!(AppSource::parse(bad), None, "{bad}");
        }
    }
}
