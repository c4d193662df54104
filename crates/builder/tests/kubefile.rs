//! The Kubefile parser: malformed files with their exact messages, round trips of
//! well-formed ones, variable expansion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sealer_builder::kubefile::{
    self, AppSource, AppType, Base, BuildArgs, Command, Instruction, Kubefile, ResolvedInstruction,
};
use sealer_fs_abstraction::{Fs, MemFs};

/// What a malformed Kubefile is checked with.
#[derive(Clone, Copy)]
enum Stage {
    /// `parse` alone.
    Parse,
    /// `parse`, then `check_app_names` with the base image's apps `["base-app"]`.
    AppNames,
    /// `parse`, then `check_app_types` where only `typed` has a detectable type.
    AppTypes,
    /// `parse`, then `expand` with no build args.
    Expand,
}

fn check(source: &str, stage: Stage) -> Result<(), kubefile::KubefileError> {
    let kubefile = kubefile::parse(source, "Kubefile")?;
    match stage {
        Stage::Parse => {}
        Stage::AppNames => kubefile.check_app_names(&["base-app"])?,
        Stage::AppTypes => {
            kubefile.check_app_types(|name| (name == "typed").then_some(AppType::Kube))?
        }
        Stage::Expand => {
            kubefile.expand(&BuildArgs::new(), &[])?;
        }
    }
    Ok(())
}

#[test]
fn malformed_kubefiles_are_refused_with_where_and_what() {
    use Stage::*;
    let cases: &[(&str, Stage, &str)] = &[
        (
            "",
            Parse,
            "Kubefile:1:1: no FROM instruction: a Kubefile starts with FROM <image> or FROM scratch",
        ),
        (
            "# only a comment\n\nARG A=1\n",
            Parse,
            "Kubefile:3:1: no FROM instruction: a Kubefile starts with FROM <image> or FROM scratch",
        ),
        (
            "FROM scratch\nFOO bar\n",
            Parse,
            "Kubefile:2:1: unknown instruction \"FOO\"; expected one of FROM, ARG, COPY, ADD, ENV, LABEL, MAINTAINER, RUN, APP, APPCMDS, APPENV, CNI, CSI, KUBEVERSION, LAUNCH, CMDS, CMD",
        ),
        (
            "FROM scratch\n  workdir /x\n",
            Parse,
            "Kubefile:2:3: WORKDIR is a Dockerfile instruction that Kubefiles do not support; expected one of FROM, ARG, COPY, ADD, ENV, LABEL, MAINTAINER, RUN, APP, APPCMDS, APPENV, CNI, CSI, KUBEVERSION, LAUNCH, CMDS, CMD",
        ),
        (
            "ARG V=1\nRUN echo\nFROM scratch\n",
            Parse,
            "Kubefile:2:1: expected FROM before RUN (only ARG may come before FROM)",
        ),
        (
            "FROM a\nFROM b\n",
            Parse,
            "Kubefile:2:1: a Kubefile has one FROM (multi-stage builds are not supported); the first is at Kubefile:1:1",
        ),
        (
            "FROM\n",
            Parse,
            "Kubefile:1:1: FROM expects an image, e.g. FROM docker.io/sealerio/kubernetes:v1.22.15 or FROM scratch",
        ),
        (
            "FROM kubernetes:v1.22 AS base\n",
            Parse,
            "Kubefile:1:23: FROM … AS <name> is not supported: a Kubefile has a single stage",
        ),
        (
            "FROM --os=linux kubernetes:v1.22\n",
            Parse,
            "Kubefile:1:6: FROM accepts only --platform=<os>/<arch>[/<variant>], found --os=linux",
        ),
        (
            "FROM a b\n",
            Parse,
            "Kubefile:1:8: FROM expects one image, found an extra argument \"b\"",
        ),
        (
            "FROM scratch\nCOPY manifests\n",
            Parse,
            "Kubefile:2:1: COPY expects at least one source and a destination, e.g. COPY manifests/ manifests/",
        ),
        (
            "FROM scratch\nCOPY --from=build a b\n",
            Parse,
            "Kubefile:2:6: COPY --from is not supported: a Kubefile has a single stage",
        ),
        (
            "FROM scratch\nADD --link a b\n",
            Parse,
            "Kubefile:2:5: ADD accepts only --chown=<user>[:<group>] and --chmod=<mode>, found --link",
        ),
        (
            "FROM scratch\nCOPY --chown a b\n",
            Parse,
            "Kubefile:2:6: COPY --chown expects a value, e.g. --chown=0:0",
        ),
        (
            "FROM scratch\nCOPY [\"a\", 1]\n",
            Parse,
            "Kubefile:2:6: COPY in JSON form expects an array of strings, e.g. COPY [\"src\", \"dest/\"]",
        ),
        (
            "FROM scratch\nCOPY \"a b c\n",
            Parse,
            "Kubefile:2:6: unterminated double quote: expected a closing \"",
        ),
        (
            "FROM scratch\nCOPY a/${DIR b\n",
            Parse,
            "Kubefile:2:13: bad substitution in ${DIR…}: unexpected ' '; expected }, :-, -, :+, +, :? or ?",
        ),
        (
            "FROM scratch\nCOPY a b/${DIR\n",
            Parse,
            "Kubefile:2:10: unterminated ${…}: expected a closing }",
        ),
        (
            "FROM scratch\nCOPY \\\n    a/${DIR:=x} b\n",
            Parse,
            "Kubefile:3:12: bad substitution in ${DIR:…}: expected :-, :+ or :? after the name",
        ),
        (
            "FROM scratch\nARG\n",
            Parse,
            "Kubefile:2:1: ARG expects NAME or NAME=default, e.g. ARG VERSION=1.0",
        ),
        (
            "FROM scratch\nARG 1X=2\n",
            Parse,
            "Kubefile:2:5: ARG expects NAME or NAME=default where NAME is letters, digits and _ (not starting with a digit), found \"1X=2\"",
        ),
        (
            "FROM scratch\nENV\n",
            Parse,
            "Kubefile:2:1: ENV expects KEY=VALUE pairs, e.g. ENV KEY=value",
        ),
        (
            "FROM scratch\nENV A=1 B\n",
            Parse,
            "Kubefile:2:9: ENV expects KEY=VALUE pairs, e.g. ENV KEY=value; found \"B\" without =",
        ),
        (
            "FROM scratch\nENV A\n",
            Parse,
            "Kubefile:2:5: ENV expects KEY=VALUE pairs, e.g. ENV KEY=value; found \"A\" without =",
        ),
        (
            "FROM scratch\nLABEL a=1 =2\n",
            Parse,
            "Kubefile:2:11: LABEL expects KEY=VALUE pairs, e.g. LABEL KEY=value; found an empty name before =",
        ),
        (
            "FROM scratch\nMAINTAINER\n",
            Parse,
            "Kubefile:2:1: MAINTAINER expects a name, e.g. MAINTAINER Jane Doe <jane@example.com>",
        ),
        (
            "FROM scratch\nRUN\n",
            Parse,
            "Kubefile:2:1: RUN expects a command, e.g. RUN kubectl version --client or RUN [\"sh\", \"-c\", \"…\"]",
        ),
        (
            "FROM scratch\nRUN --mount=type=cache,target=/x make\n",
            Parse,
            "Kubefile:2:5: RUN does not accept flags, found --mount=type=cache,target=/x",
        ),
        (
            "FROM scratch\nRUN []\n",
            Parse,
            "Kubefile:2:5: RUN in JSON form expects at least one string",
        ),
        (
            "FROM scratch\nAPP nginx\n",
            Parse,
            "Kubefile:2:1: APP expects a name and at least one source, e.g. APP nginx local://nginx.yaml",
        ),
        (
            "FROM scratch\nAPP nginx nginx.yaml\n",
            Parse,
            "Kubefile:2:11: APP sources start with local://, http:// or https://, found \"nginx.yaml\" (e.g. local://nginx.yaml)",
        ),
        (
            "FROM scratch\nCNI ../calico local://calico.yaml\n",
            Parse,
            "Kubefile:2:5: invalid app name \"../calico\": use letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit",
        ),
        (
            "FROM scratch\nAPP a local://a.yaml\nCSI a local://b\n",
            Parse,
            "Kubefile:3:1: app \"a\" is already defined at Kubefile:2:1",
        ),
        (
            "FROM scratch\nAPP app local://app/\nAPPCMDS app kubectl apply -f app/\n",
            Parse,
            "Kubefile:3:13: APPCMDS expects a JSON array of strings, e.g. APPCMDS app [\"kubectl\",\"apply\",\"-f\",\"x.yaml\"]",
        ),
        (
            "FROM scratch\nAPP app local://app/\n    APPCMDS app \\\n  [\"kubectl\", 2]\n",
            Parse,
            "Kubefile:4:3: APPCMDS expects a JSON array of strings, e.g. APPCMDS app [\"kubectl\",\"apply\",\"-f\",\"x.yaml\"]",
        ),
        (
            "FROM scratch\nAPPCMDS [\"kubectl\"]\n",
            Parse,
            "Kubefile:2:9: APPCMDS expects an app name before the array; APPCMDS expects a JSON array of strings, e.g. APPCMDS app [\"kubectl\",\"apply\",\"-f\",\"x.yaml\"]",
        ),
        (
            "FROM scratch\nAPP app local://a\nAPPCMDS app []\n",
            Parse,
            "Kubefile:3:13: APPCMDS expects at least one command",
        ),
        (
            "FROM scratch\nAPP app local://a\nAPPCMDS app [\"a\"]\nAPPCMDS app [\"b\"]\n",
            Parse,
            "Kubefile:4:1: APPCMDS for app \"app\" is already given at Kubefile:3:1",
        ),
        (
            "FROM scratch\nAPPENV app\n",
            Parse,
            "Kubefile:2:1: APPENV expects an app name and KEY=VALUE pairs, e.g. APPENV nginx REPLICAS=3",
        ),
        (
            "FROM scratch\nAPP app local://a\nAPPENV app REPLICAS\n",
            Parse,
            "Kubefile:3:12: APPENV expects KEY=VALUE pairs after the app name; found \"REPLICAS\" without =",
        ),
        (
            "FROM scratch\nKUBEVERSION\n",
            Parse,
            "Kubefile:2:1: KUBEVERSION expects a semver range such as >=1.20.0 <1.27.0, ~1.22 or 1.20 - 1.24, e.g. KUBEVERSION >=1.20.0 <1.27.0",
        ),
        (
            "FROM scratch\nKUBEVERSION >=1.20 <latest\n",
            Parse,
            "Kubefile:2:13: KUBEVERSION expects a semver range such as >=1.20.0 <1.27.0, ~1.22 or 1.20 - 1.24: \"latest\" is not a version (its parts must be numbers or x, X, *; expected e.g. 1.22, v1.22.3 or 1.22.x)",
        ),
        (
            "FROM scratch\nLAUNCH app\n",
            Parse,
            "Kubefile:2:8: LAUNCH expects a JSON array of app names, e.g. LAUNCH [\"calico\",\"nginx\"]",
        ),
        (
            "FROM scratch\nLAUNCH []\n",
            Parse,
            "Kubefile:2:8: LAUNCH expects at least one app name",
        ),
        (
            "FROM scratch\nLAUNCH [\"a b\"]\n",
            Parse,
            "Kubefile:2:8: invalid app name \"a b\": use letters, digits, '.', '_' and '-' (at most 128), starting with a letter or digit",
        ),
        (
            "FROM scratch\nCMDS kubectl apply -f x\n",
            Parse,
            "Kubefile:2:6: CMDS expects a JSON array of commands, e.g. CMDS [\"kubectl apply -f manifests/\"]",
        ),
        (
            "FROM scratch\nLAUNCH [\"a\"]\nRUN echo\n",
            Parse,
            "Kubefile:2:1: LAUNCH must be the last instruction, but RUN follows at Kubefile:3:1",
        ),
        (
            "FROM scratch\nCMDS [\"a\"]\nCMDS [\"b\"]\n",
            Parse,
            "Kubefile:3:1: CMDS may appear only once; the first is at Kubefile:2:1",
        ),
        (
            "FROM scratch\nLAUNCH [\"a\"]\ncmds [\"b\"]\n",
            Parse,
            "Kubefile:3:1: CMDS and LAUNCH are mutually exclusive; LAUNCH is at Kubefile:2:1",
        ),
        (
            "FROM scratch\nCMD kubectl get pods\nLAUNCH [\"a\"]\n",
            Parse,
            "Kubefile:3:1: LAUNCH and CMD are mutually exclusive; CMD is at Kubefile:2:1",
        ),
        (
            "FROM scratch\nAPP a local://a\nLAUNCH [\"a\", \"b\"]\n",
            AppNames,
            "Kubefile:3:1: LAUNCH names app \"b\", which is neither defined by APP, CNI or CSI nor inherited from the base image (known apps: a, base-app)",
        ),
        (
            "FROM scratch\nAPPENV calico MTU=1440\nCNI calico local://calico.yaml\n",
            AppNames,
            "Kubefile:2:1: APPENV names app \"calico\" before it is defined at Kubefile:3:1",
        ),
        (
            "FROM scratch\nAPP typed local://a.yaml\nAPP untyped local://bin/tool\n",
            AppTypes,
            "Kubefile:3:1: the type of app \"untyped\" cannot be detected (a helm chart, kube manifests or shell scripts): give its launch commands with APPCMDS untyped [\"…\"]",
        ),
        (
            "FROM scratch\nCOPY ${SRC:?pass --build-arg SRC} .\n",
            Expand,
            "Kubefile:2:1: SRC: pass --build-arg SRC",
        ),
        (
            "ARG BASE\nFROM $BASE\n",
            Expand,
            "Kubefile:2:1: FROM image $BASE expanded to nothing",
        ),
        (
            "FROM scratch\nARG SRC=nginx.yaml\nAPP nginx local://x $SRC\n",
            Expand,
            "Kubefile:3:1: APP sources start with local://, http:// or https://, found \"nginx.yaml\" (e.g. local://nginx.yaml)",
        ),
        (
            "FROM scratch\nARG K=latest\nKUBEVERSION >=$K\n",
            Expand,
            "Kubefile:3:1: KUBEVERSION expects a semver range such as >=1.20.0 <1.27.0, ~1.22 or 1.20 - 1.24: >=$K expanded to \">=latest\": \"latest\" is not a version (its parts must be numbers or x, X, *; expected e.g. 1.22, v1.22.3 or 1.22.x)",
        ),
    ];
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for (source, stage, expected) in cases {
        match check(source, *stage) {
            Ok(()) => failures.push(format!("accepted:\n{source}")),
            Err(error) if error.to_string() != *expected => failures.push(format!(
                "{source}\n  expected: {expected}\n  got:      {error}"
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every instruction, in most of its forms.
const EVERY_INSTRUCTION: &str = r#"# A cluster image with every instruction.
arg BASE=docker.io/sealerio/kubernetes:v1.22.15
ARG PLATFORM
FROM --platform=${PLATFORM:-linux/amd64} $BASE
ARG VERSION=1.0 CHANNEL
maintainer Jane Doe <jane@example.com>
LABEL org.opencontainers.image.version="$VERSION" "vendor name"=acme
LABEL legacy a value with spaces
ENV PATH=$PATH:/opt/bin GREETING="hello world"
Env LEGACY the rest of the line
COPY --chown=0:0 --chmod=0644 manifests/ imageList manifests/
COPY bin/${ARCH}/kubectl bin/$ARCH/helm \
     bin/
ADD ["charts/my chart", "charts/"]
RUN set -e; \
    echo "$GREETING" > greeting.txt
RUN ["sh", "-c", "echo exec form"]
RUN [ -f greeting.txt ] && echo shell form starting with a bracket
APP nginx local://nginx.yaml https://example.com/nginx-svc.yaml
APPCMDS nginx ["kubectl", "apply", "-f", "nginx.yaml"]
APPENV nginx REPLICAS=3 IMAGE="nginx:$VERSION"
CNI calico local://calico-${ARCH}.yaml
CSI openebs local://openebs/
KUBEVERSION >=1.20.0 <1.27.0 || ~1.28
LAUNCH ["calico", "openebs", "nginx"]
"#;

/// CMD and CMDS, which cannot be in the same Kubefile as LAUNCH.
const COMMANDS: &str = r#"FROM scratch
cmd kubectl get nodes
CMD ["kubectl", "get", "pods"]
CMDS ["kubectl apply -f manifests/", "helm install x charts/x"]
"#;

#[test]
fn every_instruction_parses_and_prints_back() {
    let parsed = kubefile::parse(EVERY_INSTRUCTION, "Kubefile").unwrap();
    let keywords: Vec<&str> = parsed
        .instructions
        .iter()
        .map(|i| i.node.keyword())
        .collect();
    assert_eq!(
        keywords,
        [
            "ARG",
            "ARG",
            "FROM",
            "ARG",
            "MAINTAINER",
            "LABEL",
            "LABEL",
            "ENV",
            "ENV",
            "COPY",
            "COPY",
            "ADD",
            "RUN",
            "RUN",
            "RUN",
            "APP",
            "APPCMDS",
            "APPENV",
            "CNI",
            "CSI",
            "KUBEVERSION",
            "LAUNCH"
        ]
    );
    let canonical = parsed.to_string();
    assert_eq!(
        canonical,
        r#"ARG BASE=docker.io/sealerio/kubernetes:v1.22.15
ARG PLATFORM
FROM --platform=${PLATFORM:-linux/amd64} $BASE
ARG VERSION=1.0 CHANNEL
MAINTAINER Jane Doe <jane@example.com>
LABEL org.opencontainers.image.version="$VERSION" "vendor name"=acme
LABEL legacy a value with spaces
ENV PATH=$PATH:/opt/bin GREETING="hello world"
ENV LEGACY the rest of the line
COPY --chown=0:0 --chmod=0644 manifests/ imageList manifests/
COPY bin/${ARCH}/kubectl bin/$ARCH/helm bin/
ADD ["charts/my chart","charts/"]
RUN set -e;     echo "$GREETING" > greeting.txt
RUN ["sh","-c","echo exec form"]
RUN [ -f greeting.txt ] && echo shell form starting with a bracket
APP nginx local://nginx.yaml https://example.com/nginx-svc.yaml
APPCMDS nginx ["kubectl","apply","-f","nginx.yaml"]
APPENV nginx REPLICAS=3 IMAGE="nginx:$VERSION"
CNI calico local://calico-${ARCH}.yaml
CSI openebs local://openebs/
KUBEVERSION >=1.20.0 <1.27.0 || ~1.28
LAUNCH ["calico","openebs","nginx"]
"#
    );
    let reparsed = kubefile::parse(&canonical, "Kubefile").unwrap();
    let nodes = |kubefile: &Kubefile| -> Vec<Instruction> {
        kubefile
            .instructions
            .iter()
            .map(|i| i.node.clone())
            .collect()
    };
    assert_eq!(nodes(&reparsed), nodes(&parsed));
    assert_eq!(reparsed.to_string(), canonical);

    // Spans point at keywords, continuations included.
    let spans: Vec<String> = parsed
        .instructions
        .iter()
        .map(|i| i.span.to_string())
        .collect();
    assert_eq!(spans[0], "Kubefile:2:1");
    assert_eq!(spans[12], "Kubefile:15:1");
    assert_eq!(spans[13], "Kubefile:17:1");

    // Deprecated forms are warned about, not refused.
    let warnings: Vec<String> = parsed.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "Kubefile:8:1: warning: the legacy form `LABEL KEY value` is deprecated; write LABEL KEY=value",
            "Kubefile:10:1: warning: the legacy form `ENV KEY value` is deprecated; write ENV KEY=value",
        ]
    );

    let commands = kubefile::parse(COMMANDS, "Kubefile").unwrap();
    let canonical = commands.to_string();
    assert_eq!(
        canonical,
        "FROM scratch\nCMD kubectl get nodes\nCMD [\"kubectl\",\"get\",\"pods\"]\nCMDS [\"kubectl apply -f manifests/\",\"helm install x charts/x\"]\n"
    );
    assert_eq!(
        nodes(&kubefile::parse(&canonical, "Kubefile").unwrap()),
        nodes(&commands)
    );
    assert_eq!(
        commands.warnings[1].to_string(),
        "Kubefile:3:1: warning: CMD is deprecated; use CMDS [\"cmd\", …]"
    );
}

fn build_args(pairs: &[(&str, &str)]) -> BuildArgs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_instruction_expands_and_its_resolved_text_round_trips() {
    let parsed = kubefile::parse(EVERY_INSTRUCTION, "Kubefile").unwrap();
    parsed.check_app_names::<&str>(&[]).unwrap();
    parsed
        .check_app_types(|name| match name {
            "nginx" => None, // has APPCMDS
            _ => Some(AppType::Kube),
        })
        .unwrap();
    let args = build_args(&[("VERSION", "2.0"), ("UNUSED", "x")]);
    let base_env = [("PATH".to_owned(), "/usr/bin".to_owned())];
    let from = parsed.expand_from(&args).unwrap();
    assert_eq!(
        from.node,
        Base {
            platform: Some("linux/amd64".to_owned()),
            image: "docker.io/sealerio/kubernetes:v1.22.15".to_owned()
        }
    );
    let expanded = parsed.expand(&args, &base_env).unwrap();
    assert_eq!(expanded.unused_build_args, ["UNUSED"]);
    assert_eq!(
        expanded.env,
        [
            ("PATH".to_owned(), "/usr/bin:/opt/bin".to_owned()),
            ("GREETING".to_owned(), "hello world".to_owned()),
            ("LEGACY".to_owned(), "the rest of the line".to_owned()),
        ]
    );
    let resolved: Vec<ResolvedInstruction> = expanded
        .steps
        .iter()
        .map(|step| step.instruction.node.with_arch("arm64"))
        .collect();
    let text: Vec<String> = resolved.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            "ARG BASE=docker.io/sealerio/kubernetes:v1.22.15",
            "ARG PLATFORM",
            "FROM --platform=linux/amd64 docker.io/sealerio/kubernetes:v1.22.15",
            "ARG VERSION=2.0 CHANNEL",
            "MAINTAINER Jane Doe <jane@example.com>",
            "LABEL org.opencontainers.image.version=2.0 \"vendor name\"=acme",
            "LABEL legacy=\"a value with spaces\"",
            "ENV PATH=/usr/bin:/opt/bin GREETING=\"hello world\"",
            "ENV LEGACY=\"the rest of the line\"",
            "COPY --chown=0:0 --chmod=0644 manifests/ imageList manifests/",
            "COPY bin/arm64/kubectl bin/arm64/helm bin/",
            "ADD \"charts/my chart\" charts/",
            "RUN set -e;     echo \"$GREETING\" > greeting.txt",
            "RUN [\"sh\",\"-c\",\"echo exec form\"]",
            "RUN [ -f greeting.txt ] && echo shell form starting with a bracket",
            "APP nginx local://nginx.yaml https://example.com/nginx-svc.yaml",
            "APPCMDS nginx [\"kubectl\",\"apply\",\"-f\",\"nginx.yaml\"]",
            "APPENV nginx REPLICAS=3 IMAGE=nginx:2.0",
            "CNI calico local://calico-arm64.yaml",
            "CSI openebs local://openebs/",
            "KUBEVERSION \">=1.20.0 <1.27.0 || ~1.28\"",
            "LAUNCH [\"calico\",\"openebs\",\"nginx\"]",
        ]
    );
    // The resolved text parses and expands back to the same instructions.
    let again = kubefile::parse(&(text.join("\n") + "\n"), "resolved")
        .unwrap()
        .expand(&BuildArgs::new(), &[])
        .unwrap();
    let again: Vec<ResolvedInstruction> = again
        .steps
        .into_iter()
        .map(|s| s.instruction.node)
        .collect();
    assert_eq!(again, resolved);

    // RUN sees ARGs with values and ENV (base image's included), sorted.
    let run = &expanded.steps[12];
    assert!(matches!(
        run.instruction.node,
        Instruction::Run(Command::Shell(_))
    ));
    assert_eq!(
        run.env,
        [
            ("GREETING".to_owned(), "hello world".to_owned()),
            ("LEGACY".to_owned(), "the rest of the line".to_owned()),
            ("PATH".to_owned(), "/usr/bin:/opt/bin".to_owned()),
            ("VERSION".to_owned(), "2.0".to_owned()),
        ]
    );
    match &resolved[15] {
        Instruction::App(app) => assert_eq!(
            app.parsed_sources(),
            [
                AppSource::Local("nginx.yaml".into()),
                AppSource::Remote("https://example.com/nginx-svc.yaml".into())
            ]
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn arg_and_env_follow_dockerfile_rules() {
    let source = r#"ARG TAG=v1 GLOBAL_ONLY=g
FROM k8s:$TAG
COPY $GLOBAL_ONLY/a ${TAG:-none}/b dst/
ARG TAG
ARG LOCAL=l-$TAG
COPY $TAG/$LOCAL dst/
ENV TAG=from-env A=$TAG
COPY $TAG/$A dst/
ARG TAG=ignored-default
COPY $TAG dst/
ENV X=1 Y=$X-y
COPY "$Y" '$Y' \$Y dst/
"#;
    let parsed = kubefile::parse(source, "Kubefile").unwrap();
    let copies = |args: &BuildArgs| -> Vec<String> {
        parsed
            .expand(args, &[])
            .unwrap()
            .steps
            .into_iter()
            .filter(|step| step.instruction.node.keyword() == "COPY")
            .map(|step| step.instruction.node.to_string())
            .collect()
    };
    assert_eq!(
        copies(&BuildArgs::new()),
        [
            "COPY /a none/b dst/",
            "COPY v1/l-v1 dst/",
            "COPY from-env/v1 dst/",
            "COPY from-env dst/",
            "COPY -y \"\\$Y\" \"\\$Y\" dst/",
        ]
    );
    assert_eq!(
        copies(&build_args(&[("TAG", "v2"), ("LOCAL", "cli")]))[..2],
        ["COPY /a none/b dst/", "COPY v2/cli dst/"]
    );
    assert_eq!(
        parsed
            .expand_from(&build_args(&[("TAG", "v3")]))
            .unwrap()
            .node
            .image,
        "k8s:v3"
    );
}

#[test]
fn inherited_apps_satisfy_references() {
    let source =
        "FROM base\nAPPENV base-app K=V\nAPPCMDS base-app [\"run\"]\nLAUNCH [\"base-app\"]\n";
    let parsed = kubefile::parse(source, "Kubefile").unwrap();
    parsed.check_app_names(&["base-app".to_owned()]).unwrap();
    assert!(parsed.check_app_names::<String>(&[]).is_err());
    parsed.check_app_types(|_| None).unwrap();
}

#[test]
fn keywords_are_case_insensitive_and_crlf_is_fine() {
    let parsed = kubefile::parse("from scratch\r\ncOpY a b\r\nLaunch [\"x\"]\r\n", "K").unwrap();
    assert_eq!(
        parsed.to_string(),
        "FROM scratch\nCOPY a b\nLAUNCH [\"x\"]\n"
    );
    let base = parsed.expand_from(&BTreeMap::new()).unwrap();
    assert!(base.node.is_scratch());
}

#[test]
fn files_are_read_through_fs() {
    let fs = MemFs::new();
    let mut file = fs.create(Path::new("Kubefile")).unwrap();
    file.write_all(b"FROM scratch\nCOPY a b\n").unwrap();
    drop(file);
    let parsed = kubefile::parse_file(&fs, Path::new("Kubefile")).unwrap();
    assert_eq!(parsed.instructions.len(), 2);
    assert_eq!(&*parsed.file, "Kubefile");

    let mut file = fs.create(Path::new("bad")).unwrap();
    file.write_all(b"FROM scratch\nLABEL a=\xff\n").unwrap();
    drop(file);
    let error = kubefile::parse_file(&fs, Path::new("bad")).unwrap_err();
    assert_eq!(error.to_string(), "bad:2:9: the Kubefile is not UTF-8 text");
    let missing = kubefile::parse_file(&fs, Path::new("missing")).unwrap_err();
    assert!(
        matches!(missing, kubefile::KubefileError::Read(_)),
        "{missing}"
    );
}
