//! Resolving the simple Helm templates image fields use, from the chart's own `values.yaml`
//! and `Chart.yaml`, without helm: `{{ .Values.image.repository }}:{{ .Values.image.tag |
//! default .Chart.AppVersion }}`. Only paths into the values, `.Chart.AppVersion`, quoted
//! strings and `default` (pipe or call form) are understood; anything else (`include`,
//! `printf`, conditionals) leaves the text unresolved, and the caller reports it.

use crate::yaml::{Node, Value};

/// What a chart's templates can be resolved with.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChartValues {
    /// The first document of the chart's `values.yaml`.
    pub(crate) values: Option<Node>,
    /// `appVersion` of its `Chart.yaml`.
    pub(crate) app_version: Option<String>,
}

/// A term's value: found (maybe empty), or absent (`default` then applies).
enum Term {
    Found(String),
    Absent,
}

impl ChartValues {
    /// The chart's `global.imageRegistry`, when set.
    pub(crate) fn image_registry(&self) -> Option<&str> {
        self.values
            .as_ref()?
            .path(&["global", "imageRegistry"])?
            .as_str()
            .map(str::trim)
            .filter(|registry| !registry.is_empty())
    }

    /// The values a subchart named `name` sees: its own, overridden by the parent's
    /// `name:` section and `global:` (Helm's coalescing).
    pub(crate) fn for_subchart(&self, name: &str, own: Option<Node>) -> Option<Node> {
        let parent = self.values.as_ref();
        let mut merged = own;
        for over in [
            parent.and_then(|values| values.get(name)),
            parent
                .and_then(|values| values.get("global"))
                .map(|global| {
                    let key = Node {
                        line: global.line,
                        plain: true,
                        value: Value::Scalar("global".to_owned()),
                    };
                    Node {
                        line: global.line,
                        plain: true,
                        value: Value::Map(vec![(key, global.clone())]),
                    }
                })
                .as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            merged = Some(match merged {
                Some(base) => merge(base, over),
                None => over.clone(),
            });
        }
        merged
    }

    /// Whether `text` uses a `.Values.…` path that holds an image values shape (a mapping
    /// with `repository`): charts' image helpers build the image from it, and the
    /// helm-values rule reports it from values.yaml.
    pub(crate) fn names_image_values(&self, text: &str) -> bool {
        let Some(values) = &self.values else {
            return false;
        };
        text.match_indices(".Values.").any(|(at, found)| {
            let rest = &text[at + found.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .unwrap_or(rest.len());
            let keys: Vec<&str> = rest[..end]
                .split('.')
                .filter(|key| !key.is_empty())
                .collect();
            values
                .path(&keys)
                .is_some_and(|node| node.get("repository").is_some())
        })
    }

    /// `text` with every `{{ … }}` replaced by its value; `None` when any cannot be
    /// resolved.
    pub(crate) fn resolve(&self, text: &str) -> Option<String> {
        let mut resolved = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            resolved.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after.find("}}")?;
            let expression = after[..end]
                .trim()
                .trim_start_matches('-')
                .trim_end_matches('-')
                .trim();
            resolved.push_str(&self.evaluate(expression)?);
            rest = &after[end + 2..];
        }
        resolved.push_str(rest);
        Some(resolved)
    }

    /// A pipeline: a term or `default FALLBACK TERM`, then `| default FALLBACK`, `| quote`,
    /// `| toString` or `| trim` stages.
    fn evaluate(&self, expression: &str) -> Option<String> {
        let mut stages = expression.split('|').map(str::trim);
        let first: Vec<&str> = stages.next()?.split_whitespace().collect();
        let mut value = match first.as_slice() {
            [term] => self.term(term)?,
            ["default", fallback, term] => self.with_default(self.term(term)?, fallback)?,
            _ => return None,
        };
        for stage in stages {
            let words: Vec<&str> = stage.split_whitespace().collect();
            value = match words.as_slice() {
                ["default", fallback] => self.with_default(value, fallback)?,
                ["quote" | "toString" | "trim"] => value,
                _ => return None,
            };
        }
        match value {
            Term::Found(text) => Some(text),
            // Helm would print `<no value>`: not an image.
            Term::Absent => None,
        }
    }

    /// Helm's `default`: the fallback when the value is absent or empty.
    fn with_default(&self, value: Term, fallback: &str) -> Option<Term> {
        match value {
            Term::Found(text) if !text.is_empty() => Some(Term::Found(text)),
            _ => self.term(fallback),
        }
    }

    /// `.Values.a.b`, `.Chart.AppVersion` or a quoted string; `None`: not understood.
    fn term(&self, term: &str) -> Option<Term> {
        if let Some(path) = term.strip_prefix(".Values.") {
            let mut node = self.values.as_ref();
            for key in path.split('.') {
                node = node.and_then(|node| node.get(key));
            }
            return Some(match node {
                Some(node) => Term::Found(node.as_str()?.to_owned()),
                None => Term::Absent,
            });
        }
        if term == ".Chart.AppVersion" {
            return Some(match &self.app_version {
                Some(version) => Term::Found(version.clone()),
                None => Term::Absent,
            });
        }
        let quoted = term
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))?;
        Some(Term::Found(quoted.to_owned()))
    }
}

/// `over` coalesced onto `base`: mappings merge key by key, anything else replaces.
fn merge(base: Node, over: &Node) -> Node {
    match (base.value, &over.value) {
        (Value::Map(mut pairs), Value::Map(overrides)) => {
            for (key, value) in overrides {
                match pairs.iter().position(|(k, _)| k.as_str() == key.as_str()) {
                    Some(at) => {
                        let (k, old) = pairs.remove(at);
                        pairs.insert(at, (k, merge(old, value)));
                    }
                    None => pairs.push((key.clone(), value.clone())),
                }
            }
            Node {
                line: base.line,
                plain: base.plain,
                value: Value::Map(pairs),
            }
        }
        _ => over.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn chart(values: &str, app_version: Option<&str>) -> ChartValues {
        ChartValues {
            values: crate::yaml::first_document(values),
            app_version: app_version.map(str::to_owned),
        }
    }

    #[test]
    fn values_paths_defaults_and_app_version() {
        let chart = chart(
            "image:\n  registry: quay.io\n  repository: a/b\n  tag: \"\"\nglobal: {}\n",
            Some("2.4.1"),
        );
        for (text, expected) in [
            (
                "{{ .Values.image.registry }}/{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}",
                Some("quay.io/a/b:2.4.1"),
            ),
            (
                "{{- .Values.image.repository -}}:{{ default \"1.0\" .Values.image.tag }}",
                Some("a/b:1.0"),
            ),
            (
                "{{ .Values.global.imageRegistry | default \"docker.io\" }}/x:1",
                Some("docker.io/x:1"),
            ),
            ("plain:1", Some("plain:1")),
            // Absent without a default, a map, other functions, an unclosed action.
            ("{{ .Values.global.imageRegistry }}/x:1", None),
            ("{{ .Values.image }}", None),
            ("{{ include \"x.image\" . }}", None),
            ("{{ printf \"%s:%s\" .Values.a .Values.b }}", None),
            ("{{ .Values.image.repository", None),
        ] {
            assert_eq!(chart.resolve(text).as_deref(), expected, "{text}");
        }
        assert_eq!(
            super::ChartValues::default().resolve("{{ .Chart.AppVersion }}"),
            None
        );
    }
}
