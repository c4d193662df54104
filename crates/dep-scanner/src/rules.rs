//! The rules that find image references in one YAML document, and in template and list lines.

use std::collections::HashSet;

use sealer_image_store::Reference;

use crate::yaml::{Node, Value};
use crate::{Collector, Rule};

/// Where the pod spec of each workload kind is, as a key path from the object.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&["spec"]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template", "spec"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        "PodTemplate" => Some(&["template", "spec"]),
        _ => None,
    }
}

const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// What the rules need to know about the file a document comes from.
pub(crate) struct Context<'a> {
    /// The file as shown in provenance.
    pub(crate) file: &'a str,
    /// The tag of a values shape without one (a chart's `appVersion`).
    pub(crate) default_tag: Option<&'a str>,
    /// The chart's `global.imageRegistry`, which Helm charts put before every image.
    pub(crate) image_registry: Option<&'a str>,
    /// The rule every finding is credited to instead (rendered charts).
    pub(crate) rule: Option<Rule>,
}

impl<'a> Context<'a> {
    /// A context for a file outside charts.
    pub(crate) fn plain(file: &'a str) -> Self {
        Self {
            file,
            default_tag: None,
            image_registry: None,
            rule: None,
        }
    }

    fn rule(&self, rule: Rule) -> Rule {
        self.rule.unwrap_or(rule)
    }
}

/// Finds the images of one document: pod templates of workloads, then every other `image:`
/// string, every Helm-values shape, and the images operators start at runtime (container
/// arguments, environment, ConfigMap data, `…Image` fields).
pub(crate) fn scan_document(document: &Node, context: &Context<'_>, collector: &mut Collector) {
    if document.get("kind").and_then(Node::as_str) == Some("List")
        && let Some(Node {
            value: Value::Seq(items),
            ..
        }) = document.get("items")
    {
        for item in items {
            scan_document(item, context, collector);
        }
        return;
    }
    // Image nodes already reported by the pod-spec rule, by address.
    let mut claimed: HashSet<*const Node> = HashSet::new();
    let kind = document.get("kind").and_then(Node::as_str);
    if let Some(path) = kind.and_then(pod_spec_path) {
        let spec = document.path(path);
        for list in spec
            .into_iter()
            .flat_map(|spec| CONTAINER_LISTS.iter().filter_map(|name| spec.get(name)))
        {
            let Value::Seq(containers) = &list.value else {
                continue;
            };
            for container in containers {
                match container.get("image") {
                    Some(image) => {
                        image_key(image, context, Rule::PodSpec, collector);
                        claimed.insert(image);
                    }
                    None => collector.warn(
                        context.file,
                        Some(container.line),
                        "a container without an image".to_owned(),
                    ),
                }
            }
        }
        // Image volumes (Kubernetes 1.31+): `volumes[].image.reference`.
        if let Some(Node {
            value: Value::Seq(volumes),
            ..
        }) = spec.and_then(|spec| spec.get("volumes"))
        {
            for reference in volumes
                .iter()
                .filter_map(|volume| volume.get("image")?.get("reference"))
            {
                image_key(reference, context, Rule::PodSpec, collector);
            }
        }
    }
    if kind == Some("ConfigMap")
        && let Some(Node {
            value: Value::Map(pairs),
            ..
        }) = document.get("data")
    {
        for (key, value) in pairs {
            if let (Some(key), Some(text)) = (key.as_str(), value.as_str()) {
                config_value(key, text, value, context, collector);
                claimed.insert(value);
            }
        }
    }
    walk(document, None, context, &claimed, collector);
}

/// A scalar that holds something (not empty, not null).
fn present(node: &Node) -> Option<&str> {
    node.as_str()
        .map(str::trim)
        .filter(|text| !text.is_empty() && !matches!(*text, "~" | "null" | "Null" | "NULL"))
}

/// The value of an `image` key: an image, or a warning when it is an empty string (a
/// plain empty value is YAML's null: nothing asked for).
fn image_key(node: &Node, context: &Context<'_>, rule: Rule, collector: &mut Collector) {
    if let Some(text) = present(node) {
        collector.image(text, context.file, node.line, context.rule(rule));
    } else if node.as_str().is_some_and(|text| text.trim().is_empty()) && !node.plain {
        collector.warn(context.file, Some(node.line), "empty image \"\"".to_owned());
    } else if rule == Rule::PodSpec && node.as_str().is_some() {
        collector.warn(
            context.file,
            Some(node.line),
            "a container without an image".to_owned(),
        );
    }
}

fn walk(
    node: &Node,
    parent_key: Option<&str>,
    context: &Context<'_>,
    claimed: &HashSet<*const Node>,
    collector: &mut Collector,
) {
    match &node.value {
        Value::Scalar(_) => {}
        Value::Seq(items) => {
            match parent_key {
                Some("args" | "command") => arguments(items, context, collector),
                Some("env") => environment(items, context, collector),
                _ => {}
            }
            for item in items {
                walk(item, None, context, claimed, collector);
            }
        }
        Value::Map(pairs) => {
            values_shape(node, parent_key, context, collector);
            for (key, value) in pairs {
                let key = key.as_str();
                if key == Some("image") && !claimed.contains(&std::ptr::from_ref(value)) {
                    image_key(value, context, Rule::ImageField, collector);
                } else if let Some(key) = key
                    && names_image(key)
                    && !claimed.contains(&std::ptr::from_ref(value))
                    && let Some(text) = value.as_str()
                {
                    runtime(
                        text,
                        true,
                        context.file,
                        value.line,
                        context.rule(Rule::CrdField),
                        collector,
                    );
                }
                walk(value, key, context, claimed, collector);
            }
        }
    }
}

/// Whether a key, flag or variable name says it holds an image (`engineImage`,
/// `CSI_ATTACHER_IMAGE`, `--engine-image`, `OPERATOR_IMG`), `image` itself aside.
fn names_image(name: &str) -> bool {
    let name = name.trim_start_matches('-');
    !name.eq_ignore_ascii_case("image") && ends_in_image(name)
}

/// Whether a name ends in image or img, in any case (`image` itself included).
fn ends_in_image(name: &str) -> bool {
    let ends_with = |suffix: &str| {
        name.len() >= suffix.len()
            && name.as_bytes()[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
    };
    ends_with("image") || ends_with("img")
}

/// Like [`names_image`], for flags and variables: the name mentions an image anywhere
/// (`--image-pull-policy`, whose values are then too weak to be images).
fn mentions_image(name: &str) -> bool {
    let contains = |needle: &[u8]| {
        name.as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle))
    };
    contains(b"image") || contains(b"img")
}

/// A value that may be an image the workload starts at runtime. Named contexts (`strong`:
/// the key, flag or variable says image) need a registry host or a tag/digest; anything
/// else needs both and a repository path, so addresses (`0.0.0.0:8080`), paths and URLs
/// never count. Templated values are resolved (or warned about) only in named contexts.
fn runtime(
    text: &str,
    strong: bool,
    file: &str,
    line: usize,
    rule: Rule,
    collector: &mut Collector,
) {
    let text = unquote(text.trim());
    if text.contains("{{") || text.contains("${") {
        if strong {
            collector.image(text, file, line, rule);
        }
        return;
    }
    if looks_like_image(text, strong) {
        collector.image(text, file, line, rule);
    }
}

/// The precision filter of [`runtime`].
pub(crate) fn looks_like_image(text: &str, strong: bool) -> bool {
    if text.is_empty()
        || text.contains("://")
        || text.contains(char::is_whitespace)
        || text.starts_with(['/', '.', '-', ':', '@'])
    {
        return false;
    }
    let name = text.split('@').next().unwrap_or(text);
    let has_host = name.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    });
    let last = name.rsplit('/').next().unwrap_or(name);
    let has_version = text.contains('@') || last.contains(':');
    let shaped = if strong {
        has_host || has_version
    } else {
        has_host && has_version
    };
    // The full parse last: most words of a command line fail the cheap checks.
    shaped && text.parse::<Reference>().is_ok()
}

/// Container `command`/`args`: `--flag=VALUE` and `--flag VALUE` (strong when the flag
/// names an image), and every other word (weak), in shell scripts too.
fn arguments(items: &[Node], context: &Context<'_>, collector: &mut Collector) {
    let rule = context.rule(Rule::Arg);
    let mut pending_flag: Option<bool> = None;
    for item in items {
        let Some(text) = item.as_str() else {
            pending_flag = None;
            continue;
        };
        for (index, line_text) in text.lines().enumerate() {
            let line = text_line(item, index);
            for word in words(line_text) {
                if let Some(strong) = pending_flag.take()
                    && !word.starts_with('-')
                    && !word.contains('=')
                {
                    runtime(word, strong, context.file, line, rule, collector);
                    continue;
                }
                if word.starts_with('-') {
                    match word.split_once('=') {
                        Some((flag, value)) => {
                            runtime(
                                value,
                                mentions_image(flag),
                                context.file,
                                line,
                                rule,
                                collector,
                            );
                        }
                        None => pending_flag = Some(mentions_image(word)),
                    }
                } else if let Some((name, value)) = word.split_once('=') {
                    // `IMAGE=quay.io/…` in a script.
                    runtime(
                        value,
                        mentions_image(name),
                        context.file,
                        line,
                        rule,
                        collector,
                    );
                } else {
                    runtime(word, false, context.file, line, rule, collector);
                }
            }
        }
    }
}

/// The source line of line `index` of a scalar's text (exact for block scalars, whose line
/// is that of their first line of text).
fn text_line(node: &Node, index: usize) -> usize {
    node.line + index
}

/// The words of a command line: split at blanks, quotes and `;`, `,`, `|`, `&`, `(`, `)`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || "\"'`;,|&()".contains(c))
        .filter(|word| !word.is_empty())
}

/// Container `env`: `{name, value}` items; a name mentioning an image makes it strong.
fn environment(items: &[Node], context: &Context<'_>, collector: &mut Collector) {
    for item in items {
        let (Some(name), Some(value)) =
            (item.get("name").and_then(Node::as_str), item.get("value"))
        else {
            continue;
        };
        if let Some(text) = value.as_str() {
            let strong = mentions_image(name);
            runtime(
                text,
                strong,
                context.file,
                value.line,
                context.rule(Rule::Env),
                collector,
            );
        }
    }
}

/// A ConfigMap data entry: a key ending in image names one; other one-line values are weak
/// candidates; in text values (configuration files), each `key: value` / `key=value` line
/// whose key ends in image, and weak words otherwise.
fn config_value(
    key: &str,
    text: &str,
    node: &Node,
    context: &Context<'_>,
    collector: &mut Collector,
) {
    let rule = context.rule(Rule::ConfigMap);
    if !text.contains('\n') {
        runtime(
            text,
            ends_in_image(key),
            context.file,
            node.line,
            rule,
            collector,
        );
        return;
    }
    for (index, line_text) in text.lines().enumerate() {
        let line = text_line(node, index);
        let trimmed = line_text.trim().trim_end_matches(',');
        let pair = trimmed
            .split_once(": ")
            .or_else(|| trimmed.split_once('='))
            .map(|(name, value)| (unquote(name.trim()), unquote(value.trim())));
        if let Some((name, value)) = pair
            && ends_in_image(name)
            && !value.contains(char::is_whitespace)
        {
            runtime(value, true, context.file, line, rule, collector);
            continue;
        }
        for word in words(line_text) {
            runtime(
                word.trim_end_matches(':'),
                false,
                context.file,
                line,
                rule,
                collector,
            );
        }
    }
}

/// `{registry, repository, tag, digest}` and `{repository, tag}` (Helm values): one image.
/// A `repository` alone counts only under an `image` key. As Helm charts' image helpers do,
/// the chart's `global.imageRegistry` replaces the registry, and a digest replaces the tag.
fn values_shape(
    node: &Node,
    parent_key: Option<&str>,
    context: &Context<'_>,
    collector: &mut Collector,
) {
    let Some(repository_node) = node.get("repository") else {
        return;
    };
    let Some(repository) = present(repository_node) else {
        return;
    };
    let tag = node.get("tag").and_then(present);
    let digest = node.get("digest").and_then(present);
    let under_image = parent_key.is_some_and(|key| key == "image" || key.ends_with("Image"));
    if !under_image && node.get("tag").is_none() && node.get("digest").is_none() {
        return;
    }
    let mut text = String::new();
    let registry = context
        .image_registry
        .or_else(|| node.get("registry").and_then(present));
    if let Some(registry) = registry {
        text.push_str(registry.trim_end_matches('/'));
        text.push('/');
    }
    text.push_str(repository);
    match digest {
        Some(digest) => {
            text.push('@');
            text.push_str(digest);
        }
        // A chart's appVersion stands in for an absent tag.
        None => {
            if let Some(tag) = tag.or(context.default_tag) {
                text.push(':');
                text.push_str(tag);
            }
        }
    }
    collector.image(
        &text,
        context.file,
        repository_node.line,
        context.rule(Rule::HelmValues),
    );
}

/// Line-based fallback for templates that are not YAML (Go templates): the value of each
/// `image:` line; templated ones become warnings in [`Collector::image`]. With
/// `unquoted_actions_only`, only values that start with `{{` (YAML reads those as a flow
/// mapping, so a template that parses still needs them read from its lines).
pub(crate) fn scan_template_lines(
    text: &str,
    first_line: usize,
    file: &str,
    unquoted_actions_only: bool,
    collector: &mut Collector,
) {
    for (index, line) in text.lines().enumerate() {
        let line_number = first_line + index;
        let trimmed = line.trim_start();
        let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed).trim_start();
        let Some(value) = trimmed.strip_prefix("image:") else {
            continue;
        };
        let value = strip_comment(value).trim();
        if value.is_empty() {
            // `image:` opening a nested mapping: its own lines are templated or values.
            continue;
        }
        if unquoted_actions_only && !value.starts_with("{{") {
            continue;
        }
        let value = unquote(value);
        if value.is_empty() {
            collector.warn(file, Some(line_number), "empty image \"\"".to_owned());
        } else {
            collector.image(value, file, line_number, Rule::TemplateLine);
        }
    }
}

/// An image list: one reference per line, `#` comments, blank lines.
pub(crate) fn scan_image_list(text: &str, file: &str, rule: Rule, collector: &mut Collector) {
    for (index, line) in text.lines().enumerate() {
        let entry = strip_comment(line).trim();
        if !entry.is_empty() {
            collector.image(entry, file, index + 1, rule);
        }
    }
}

/// The text before a `#` that starts a comment (at the start or after a blank).
pub(crate) fn strip_comment(text: &str) -> &str {
    let bytes = text.as_bytes();
    for (at, byte) in bytes.iter().enumerate() {
        if *byte == b'#' && (at == 0 || bytes[at - 1].is_ascii_whitespace()) {
            return &text[..at];
        }
    }
    text
}

fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text
            .strip_prefix(quote)
            .and_then(|rest| rest.strip_suffix(quote))
        {
            return inner;
        }
    }
    text
}
