//! The rules that find image references in one YAML document, and in template and list lines.

use std::collections::HashSet;

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
    /// The rule every finding is credited to instead (rendered charts).
    pub(crate) rule: Option<Rule>,
}

impl Context<'_> {
    fn rule(&self, rule: Rule) -> Rule {
        self.rule.unwrap_or(rule)
    }
}

/// Finds the images of one document: pod templates of workloads, then every other `image:`
/// string and every Helm-values shape anywhere.
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
        let spec = path.iter().try_fold(document, |node, key| node.get(key));
        for list in spec
            .into_iter()
            .flat_map(|spec| CONTAINER_LISTS.iter().filter_map(|name| spec.get(name)))
        {
            let Value::Seq(containers) = &list.value else {
                continue;
            };
            for image in containers
                .iter()
                .filter_map(|container| container.get("image"))
            {
                if let Some(text) = present(image) {
                    collector.image(text, context.file, image.line, context.rule(Rule::PodSpec));
                    claimed.insert(image);
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
                if let Some(text) = present(reference) {
                    let rule = context.rule(Rule::PodSpec);
                    collector.image(text, context.file, reference.line, rule);
                }
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
            for item in items {
                walk(item, None, context, claimed, collector);
            }
        }
        Value::Map(pairs) => {
            values_shape(node, parent_key, context, collector);
            for (key, value) in pairs {
                let key = key.as_str();
                if key == Some("image")
                    && !claimed.contains(&std::ptr::from_ref(value))
                    && let Some(text) = present(value)
                {
                    collector.image(
                        text,
                        context.file,
                        value.line,
                        context.rule(Rule::ImageField),
                    );
                }
                walk(value, key, context, claimed, collector);
            }
        }
    }
}

/// `{registry, repository, tag, digest}` and `{repository, tag}` (Helm values): one image.
/// A `repository` alone counts only under an `image` key.
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
    if let Some(registry) = node.get("registry").and_then(present) {
        text.push_str(registry.trim_end_matches('/'));
        text.push('/');
    }
    text.push_str(repository);
    // A chart's appVersion stands in for an absent tag, unless a digest pins the image.
    let tag = tag.or(context.default_tag.filter(|_| digest.is_none()));
    if let Some(tag) = tag {
        text.push(':');
        text.push_str(tag);
    }
    if let Some(digest) = digest {
        text.push('@');
        text.push_str(digest);
    }
    collector.image(
        &text,
        context.file,
        repository_node.line,
        context.rule(Rule::HelmValues),
    );
}

/// Line-based fallback for templates that are not YAML (Go templates): the value of each
/// `image:` line; templated ones become warnings in [`Collector::image`].
pub(crate) fn scan_template_lines(text: &str, file: &str, collector: &mut Collector) {
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
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
        collector.image(unquote(value), file, line_number, Rule::TemplateLine);
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
