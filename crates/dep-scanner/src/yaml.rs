//! A generic YAML tree whose scalars keep their source text (`tag: 1.20` stays `"1.20"`) and
//! the line they start on, built from granit-parser's events (every document of a stream).

use std::collections::HashMap;

use granit_parser::{Event, Parser};

/// A YAML node with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    pub(crate) value: Value,
}

/// The content of a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// A scalar as written (escapes processed, no type resolution).
    Scalar(String),
    Seq(Vec<Node>),
    /// Pairs in source order (keys kept as nodes).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The scalar text, if this is a scalar.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(text) => Some(text),
            _ => None,
        }
    }

    /// The value of `key` in a mapping.
    pub(crate) fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Why a text is not YAML: the message and the line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) message: String,
}

/// Every document of `text`; empty documents are left out.
pub(crate) fn parse_documents(text: &str) -> Result<Vec<Node>, ParseError> {
    let mut documents = Vec::new();
    // Open collections: the node being built and, for maps, a key waiting for its value.
    let mut stack: Vec<(Node, Option<Node>, usize)> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|error| ParseError {
            line: error.marker().line(),
            message: match error.info() {
                info if info.is_empty() => format!("{:?}", error.kind()),
                info => info,
            },
        })?;
        let line = span.start.line();
        let finished = match event {
            Event::DocumentStart(..) => {
                anchors.clear();
                None
            }
            Event::Scalar(text, _, anchor, _) => {
                let node = Node {
                    line,
                    value: Value::Scalar(text.into_owned()),
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                Some(node)
            }
            Event::Alias(id) => Some(anchors.get(&id).cloned().ok_or_else(|| ParseError {
                line,
                message: "alias of an unknown anchor".to_owned(),
            })?),
            Event::SequenceStart(_, anchor, _) => {
                stack.push((
                    Node {
                        line,
                        value: Value::Seq(Vec::new()),
                    },
                    None,
                    anchor,
                ));
                None
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push((
                    Node {
                        line,
                        value: Value::Map(Vec::new()),
                    },
                    None,
                    anchor,
                ));
                None
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some((node, _, anchor)) => {
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    Some(node)
                }
                None => None,
            },
            _ => None,
        };
        let Some(node) = finished else { continue };
        match stack.last_mut() {
            None => documents.push(node),
            Some((parent, pending_key, _)) => match &mut parent.value {
                Value::Seq(items) => items.push(node),
                Value::Map(pairs) => match pending_key.take() {
                    Some(key) => pairs.push((key, node)),
                    None => *pending_key = Some(node),
                },
                Value::Scalar(_) => {}
            },
        }
    }
    Ok(documents
        .into_iter()
        .filter(|document| document.as_str().is_none_or(|text| !text.is_empty()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keep_their_text_and_lines() {
        let docs = parse_documents("a: 1.20\nb:\n  - 'x'\n---\n{c: \"d\"}\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].get("a").unwrap().as_str(), Some("1.20"));
        assert_eq!(docs[0].get("a").unwrap().line, 1);
        let Value::Seq(items) = &docs[0].get("b").unwrap().value else {
            panic!()
        };
        assert_eq!(items[0].as_str(), Some("x"));
        assert_eq!(items[0].line, 3);
        assert_eq!(docs[1].get("c").unwrap().as_str(), Some("d"));
        assert_eq!(docs[1].get("c").unwrap().line, 5);
    }

    #[test]
    fn aliases_resolve_and_errors_have_lines() {
        let docs = parse_documents("a: &x {tag: '1'}\nb: *x\n").unwrap();
        assert_eq!(
            docs[0].get("b").unwrap().get("tag").unwrap().as_str(),
            Some("1")
        );
        let error = parse_documents("a: b\n c: [\n").unwrap_err();
        assert!(error.line >= 2, "{error:?}");
        // Nesting is bounded by the parser (no deep recursion in the tree walks).
        let error = parse_documents(&"[".repeat(100_000)).unwrap_err();
        assert!(!error.message.is_empty(), "{error:?}");
    }
}
