//! The workspace's error messages never repeat their source: a message names what failed,
//! its cause is `source()`, and whatever shows an error shows the whole chain once
//! (`sealer_fs_abstraction::ErrorChain`). A message that also printed its source would show
//! the cause twice, or, where it is dropped as a repeat, hide the structure callers walk.

use std::path::Path;

use sealer_e2e::workspace_root;
use sealer_fs_abstraction::{FileKind, Fs, RealFs};

/// `file:line: message` for every `#[error(…)]` in `source` whose message interpolates the
/// variant's (or struct's) `#[source]`/`#[from]` field, or its field named `source`.
fn messages_printing_their_source(file: &str, source: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let Some(start) = line.find("#[error(") else {
            continue;
        };
        // The attribute, up to 6 lines, then the variant's fields up to its end.
        let mut attribute = line[start..].to_owned();
        let mut next = index + 1;
        while !attribute.trim_end().ends_with(")]") && next < lines.len().min(index + 6) {
            attribute.push_str(lines[next]);
            next += 1;
        }
        if attribute.contains("transparent") {
            continue;
        }
        let mut fields = String::new();
        for body_line in lines.iter().skip(next).take(15) {
            fields.push_str(body_line);
            fields.push('\n');
            let trimmed = body_line.trim();
            if trimmed.ends_with("),") || trimmed.ends_with("},") || trimmed == "}" {
                break;
            }
            if trimmed.ends_with(',') && !trimmed.starts_with("///") && fields.lines().count() == 1
            {
                break; // a unit variant
            }
        }
        let Some(field) = source_field(&fields) else {
            continue;
        };
        // Arguments after the format string (`"…", .0.display()`) name fields as `.field`.
        let arguments = attribute.rsplit_once('"').map_or("", |(_, after)| after);
        if attribute.contains(&format!("{{{field}}}"))
            || attribute.contains(&format!("{{{field}:"))
            || arguments.contains(&format!(".{field}"))
        {
            found.push(format!("{file}:{}: {}", index + 1, attribute.trim()));
        }
    }
    found
}

/// The name (or tuple index) of the source field among `fields`, if any.
fn source_field(fields: &str) -> Option<String> {
    for marker in ["#[source]", "#[from]"] {
        if let Some(at) = fields.find(marker) {
            let after = fields[at + marker.len()..].trim_start();
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let named = after[name.len()..].trim_start().starts_with(':')
                && !after[name.len()..].trim_start().starts_with("::");
            if named {
                return Some(name);
            }
            // A tuple field: its index among the fields before it.
            return Some(fields[..at].matches(',').count().to_string());
        }
    }
    fields
        .lines()
        .any(|line| line.trim_start().starts_with("source:"))
        .then(|| "source".to_owned())
}

#[test]
fn no_error_message_prints_its_source() {
    let fs = RealFs::open_root(workspace_root()).unwrap();
    let mut checked = 0;
    let mut found = Vec::new();
    for entry in fs.walk(Path::new("crates")).unwrap() {
        let path = entry.path.to_string_lossy().into_owned();
        let in_src = path.split('/').nth(2) == Some("src");
        if entry.metadata.kind != FileKind::File || !in_src || !path.ends_with(".rs") {
            continue;
        }
        let text = String::from_utf8(fs.read(&entry.path).unwrap()).unwrap();
        checked += text.matches("#[error(").count();
        found.extend(messages_printing_their_source(&path, &text));
    }
    assert!(
        checked > 100,
        "only {checked} error messages found: is the walk right?"
    );
    assert!(
        found.is_empty(),
        "messages that print their source:\n{}",
        found.join("\n")
    );
}

/// The check finds each way a message can print its source, and passes the ones that do not.
#[test]
fn the_check_finds_a_message_printing_its_source() {
    let sample = r#"
pub enum E {
    /// Named.
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Tuple, from.
    #[error("parsing: {0}")]
    Parse(#[from] serde_json::Error),
    /// Second tuple field.
    #[error("{0}: {1}")]
    Pair(String, #[source] std::io::Error),
    /// Fine: the cause is left to the chain.
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Fine.
    #[error(transparent)]
    Other(#[from] std::fmt::Error),
    /// Fine: a dot in the text is not a field.
    #[error("GET http://127.0.0.1:1/v2/")]
    Get(#[source] std::io::Error),
    /// Through an argument.
    #[error("{}", .0.kind())]
    Kind(#[source] std::io::Error),
    /// Fine: a unit variant.
    #[error("gone")]
    Gone,
}
"#;
    let found = messages_printing_their_source("sample.rs", sample);
    let lines: Vec<&str> = found
        .iter()
        .map(|finding| finding.split(':').nth(1).unwrap())
        .collect();
    assert_eq!(lines, ["4", "11", "14", "30"], "{found:#?}");
}
