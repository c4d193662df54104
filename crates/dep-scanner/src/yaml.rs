//! A generic YAML tree whose scalars keep their source text (`tag: 1.20` stays `"1.20"`) and
//! the line they start on, built from granit-parser's events, one document at a time.
//!
//! A stream is split into documents here, at its `---` and `...` lines (the YAML spec forbids
//! those markers inside any scalar at column 0), so one broken document does not lose its
//! neighbours and a large file is never held as one tree. Alias expansion is bounded per
//! document (count, expanded size, depth): an alias bomb is an error of its document only.

use std::collections::HashMap;

use granit_parser::{Event, Parser, ScalarStyle};

/// The most aliases one document may use.
pub(crate) const MAX_ALIASES: usize = 10_000;
/// The most bytes (nodes and scalar text) that aliases may add to one document's tree.
pub(crate) const MAX_ALIAS_BYTES: usize = 4 << 20;
/// The deepest a tree may get (aliases nest anchored trees into each other).
const MAX_DEPTH: usize = 512;

/// A YAML node with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) line: usize,
    /// Whether it is a plain scalar (`image:` alone is plain and empty, `image: ""` is not).
    pub(crate) plain: bool,
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

    /// The node at a key path of mappings.
    pub(crate) fn path(&self, keys: &[&str]) -> Option<&Node> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }
}

/// Why a document is not usable: the message and the (1-based) line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) message: String,
    /// Whether the document is YAML but over a budget (aliases), rather than not YAML.
    pub(crate) over_budget: bool,
}

/// One document's text and the line of the stream it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Chunk {
    pub(crate) first_line: usize,
    pub(crate) text: String,
    /// Whether the document was larger than [`MAX_DOCUMENT`] (its text is then dropped).
    pub(crate) oversized: bool,
}

/// The largest document parsed (a stream of documents may be of any size).
pub(crate) const MAX_DOCUMENT: usize = 64 << 20;

/// Splits a stream into documents, line by line.
#[derive(Debug)]
pub(crate) struct Splitter {
    chunk: String,
    first_line: usize,
    next_line: usize,
    /// Whether the chunk holds more than comments, blanks and directives.
    has_content: bool,
    /// Whether the chunk outgrew `limit` (no more text is kept).
    oversized: bool,
    /// The largest document kept ([`MAX_DOCUMENT`]).
    limit: usize,
}

impl Default for Splitter {
    fn default() -> Self {
        Self {
            chunk: String::new(),
            first_line: 1,
            next_line: 1,
            has_content: false,
            oversized: false,
            limit: MAX_DOCUMENT,
        }
    }
}

/// Whether `line` is the marker `marker` (`---`, `...`), alone or followed by a blank.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

impl Splitter {
    /// Feeds the next line (with its line break, if any); returns the document it ends.
    pub(crate) fn push(&mut self, line: &str) -> Option<Chunk> {
        let mut done = None;
        if is_marker(line, "---") && (self.has_content || self.oversized) {
            done = Some(self.take());
        }
        if self.chunk.is_empty() && !self.oversized {
            self.first_line = self.next_line;
        }
        if self.chunk.len() + line.len() > self.limit {
            self.oversized = true;
            self.chunk = String::new();
        }
        if !self.oversized {
            self.chunk.push_str(line);
        }
        self.next_line += 1;
        let trimmed = line.trim();
        if is_marker(line, "---")
            || !(trimmed.is_empty() || trimmed.starts_with('#') || line.starts_with('%'))
        {
            self.has_content = true;
        }
        if is_marker(line, "...") {
            // The explicit end of a document: what follows is the next one.
            return done.or_else(|| Some(self.take()));
        }
        done
    }

    /// The last document.
    pub(crate) fn finish(mut self) -> Option<Chunk> {
        (!self.chunk.is_empty() || self.oversized).then(|| self.take())
    }

    fn take(&mut self) -> Chunk {
        self.has_content = false;
        Chunk {
            first_line: self.first_line,
            text: std::mem::take(&mut self.chunk),
            oversized: std::mem::take(&mut self.oversized),
        }
    }
}

/// The documents of `text`.
pub(crate) fn split(text: &str) -> Vec<Chunk> {
    let mut splitter = Splitter::default();
    let mut chunks: Vec<Chunk> = text
        .split_inclusive('\n')
        .filter_map(|line| splitter.push(line))
        .collect();
    chunks.extend(splitter.finish());
    chunks
}

/// An open collection: the node being built, for maps a key waiting for its value, its
/// anchor, the node count when it started and the depth of its deepest child.
struct Open {
    node: Node,
    pending_key: Option<Node>,
    anchor: usize,
    nodes_before: usize,
    child_depth: usize,
}

/// An anchored node with what copying it costs.
struct Anchored {
    node: Node,
    nodes: usize,
    bytes: usize,
    depth: usize,
}

/// The documents of one chunk (normally one; empty ones are left out), lines counted in the
/// stream. Aliases are expanded within the budget of [`MAX_ALIASES`] and [`MAX_ALIAS_BYTES`].
pub(crate) fn parse_chunk(chunk: &Chunk) -> Result<Vec<Node>, ParseError> {
    let offset = chunk.first_line.saturating_sub(1);
    let mut tree = TreeBuilder::default();
    for event in Parser::new_from_str(&chunk.text) {
        let (event, span) = event.map_err(|error| ParseError {
            line: error.marker().line() + offset,
            message: match error.info() {
                info if info.is_empty() => format!("{:?}", error.kind()),
                info => info,
            },
            over_budget: false,
        })?;
        let line = span.start.line() + offset;
        match event {
            Event::DocumentStart(..) => tree.start_document(),
            Event::Scalar(text, style, anchor, _) => tree.scalar(
                Node {
                    line,
                    plain: style == ScalarStyle::Plain,
                    value: Value::Scalar(text.into_owned()),
                },
                anchor,
            ),
            Event::Alias(id) => tree.alias(id, line)?,
            Event::SequenceStart(_, anchor, _) => tree.open(line, Value::Seq(Vec::new()), anchor),
            Event::MappingStart(_, anchor, _) => tree.open(line, Value::Map(Vec::new()), anchor),
            Event::SequenceEnd | Event::MappingEnd => tree.close(),
            _ => {}
        }
    }
    Ok(tree
        .documents
        .into_iter()
        .filter(|document| {
            !(document.plain
                && document
                    .as_str()
                    .is_some_and(|text| text.is_empty() || text == "~"))
        })
        .collect())
}

/// The trees of a chunk as its events arrive: the collections still open, the anchors of
/// the current document and its alias budget.
#[derive(Default)]
struct TreeBuilder {
    documents: Vec<Node>,
    stack: Vec<Open>,
    anchors: HashMap<usize, Anchored>,
    /// Nodes made so far in the document.
    nodes: usize,
    /// Aliases used so far in the document.
    aliases: usize,
    /// Bytes the aliases added.
    alias_bytes: usize,
}

impl TreeBuilder {
    /// A new document: anchors and budget start afresh.
    fn start_document(&mut self) {
        self.anchors.clear();
        (self.nodes, self.aliases, self.alias_bytes) = (0, 0, 0);
    }

    /// A scalar: anchored when it has an anchor, then attached.
    fn scalar(&mut self, node: Node, anchor: usize) {
        self.nodes += 1;
        if anchor != 0 {
            let anchored = Anchored {
                node: node.clone(),
                nodes: 1,
                bytes: node.as_str().map_or(0, str::len),
                depth: 1,
            };
            self.anchors.insert(anchor, anchored);
        }
        self.attach(node, 1);
    }

    /// The copy of anchor `id`, charged to the document's budget, attached with its depth.
    fn alias(&mut self, id: usize, line: usize) -> Result<(), ParseError> {
        let anchored = self.anchors.get(&id).ok_or_else(|| ParseError {
            line,
            message: "alias of an unknown anchor".to_owned(),
            over_budget: false,
        })?;
        self.aliases += 1;
        self.alias_bytes = self.alias_bytes.saturating_add(
            anchored
                .nodes
                .saturating_mul(std::mem::size_of::<Node>())
                .saturating_add(anchored.bytes),
        );
        if self.aliases > MAX_ALIASES || self.alias_bytes > MAX_ALIAS_BYTES {
            return Err(ParseError {
                line,
                message: format!(
                    "aliases expand beyond the limit ({MAX_ALIASES} aliases, \
                     {MAX_ALIAS_BYTES} bytes per document): an alias bomb?"
                ),
                over_budget: true,
            });
        }
        if self.stack.len() + anchored.depth > MAX_DEPTH {
            return Err(ParseError {
                line,
                message: format!("aliases nest deeper than {MAX_DEPTH} levels"),
                over_budget: true,
            });
        }
        let (node, depth) = (anchored.node.clone(), anchored.depth);
        self.nodes += anchored.nodes;
        self.attach(node, depth);
        Ok(())
    }

    /// A sequence or mapping starts.
    fn open(&mut self, line: usize, value: Value, anchor: usize) {
        self.nodes += 1;
        self.stack.push(Open {
            node: Node {
                line,
                plain: true,
                value,
            },
            pending_key: None,
            anchor,
            nodes_before: self.nodes - 1,
            child_depth: 0,
        });
    }

    /// The innermost open collection ends: anchored when it has an anchor, then attached
    /// with its depth.
    fn close(&mut self) {
        let Some(open) = self.stack.pop() else {
            return;
        };
        let depth = open.child_depth + 1;
        if open.anchor != 0 {
            let anchored = Anchored {
                node: open.node.clone(),
                nodes: self.nodes - open.nodes_before,
                bytes: scalar_bytes(&open.node),
                depth,
            };
            self.anchors.insert(open.anchor, anchored);
        }
        self.attach(open.node, depth);
    }

    /// A finished node goes into its parent (a sequence item, a key, or a key's value), or
    /// is a document.
    fn attach(&mut self, node: Node, depth: usize) {
        let Some(parent) = self.stack.last_mut() else {
            self.documents.push(node);
            return;
        };
        parent.child_depth = parent.child_depth.max(depth);
        match &mut parent.node.value {
            Value::Seq(items) => items.push(node),
            Value::Map(pairs) => match parent.pending_key.take() {
                Some(key) => pairs.push((key, node)),
                None => parent.pending_key = Some(node),
            },
            Value::Scalar(_) => {}
        }
    }
}

/// The scalar bytes of a tree (only called on anchored collections, once each).
fn scalar_bytes(node: &Node) -> usize {
    match &node.value {
        Value::Scalar(text) => text.len(),
        Value::Seq(items) => items.iter().map(scalar_bytes).sum(),
        Value::Map(pairs) => pairs
            .iter()
            .map(|(key, value)| scalar_bytes(key) + scalar_bytes(value))
            .sum(),
    }
}

/// Every document of `text`, each parsed on its own.
pub(crate) fn parse_documents(text: &str) -> Vec<Result<Node, ParseError>> {
    let mut documents = Vec::new();
    for chunk in split(text) {
        match parse_chunk(&chunk) {
            Ok(nodes) => documents.extend(nodes.into_iter().map(Ok)),
            Err(error) => documents.push(Err(error)),
        }
    }
    documents
}

/// The first document of `text`, if it parses.
pub(crate) fn first_document(text: &str) -> Option<Node> {
    parse_documents(text).into_iter().next()?.ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ok(text: &str) -> Vec<Node> {
        parse_documents(text)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn scalars_keep_their_text_and_lines() {
        let docs = ok("a: 1.20\nb:\n  - 'x'\n---\n{c: \"d\"}\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].get("a").unwrap().as_str(), Some("1.20"));
        assert_eq!(docs[0].get("a").unwrap().line, 1);
        let Value::Seq(items) = &docs[0].get("b").unwrap().value else {
            panic!()
        };
        assert_eq!(items[0].as_str(), Some("x"));
        assert!(!items[0].plain);
        assert_eq!(items[0].line, 3);
        assert_eq!(docs[1].get("c").unwrap().as_str(), Some("d"));
        assert_eq!(docs[1].get("c").unwrap().line, 5);
        // A block scalar's line is that of its first line of text.
        let docs = ok("a: |\n  x\n  y\nb: >-\n  z\n");
        assert_eq!(docs[0].get("a").unwrap().line, 2);
        assert_eq!(docs[0].get("b").unwrap().line, 5);
    }

    #[test]
    fn aliases_resolve_and_errors_have_lines() {
        let docs = ok("a: &x {tag: '1'}\nb: *x\n");
        assert_eq!(docs[0].path(&["b", "tag"]).unwrap().as_str(), Some("1"));
        let errors = parse_documents("a: b\n c: [\n");
        let error = errors[0].clone().unwrap_err();
        assert!(error.line >= 2, "{error:?}");
        // Nesting is bounded by the parser (no deep recursion in the tree walks).
        let errors = parse_documents(&"[".repeat(100_000));
        assert!(!errors[0].clone().unwrap_err().message.is_empty());
    }

    #[test]
    fn documents_split_at_markers_and_fail_alone() {
        let text = "# head\n%YAML 1.2\n---\na: 1\n--- |\n  text\n---\nb: [\n...\nc: 3\n---\n";
        let chunks = split(text);
        let firsts: Vec<usize> = chunks.iter().map(|chunk| chunk.first_line).collect();
        assert_eq!(firsts, [1, 5, 7, 10, 11]);
        let docs = parse_documents(text);
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert_eq!(docs[0].as_ref().unwrap().get("a").unwrap().line, 4);
        assert_eq!(docs[1].as_ref().unwrap().as_str(), Some("text\n"));
        assert_eq!(docs[2].as_ref().unwrap_err().line, 8);
        assert_eq!(docs[3].as_ref().unwrap().get("c").unwrap().line, 10);
    }

    #[test]
    fn oversized_documents_are_dropped_alone() {
        let mut splitter = Splitter {
            limit: 20,
            ..Splitter::default()
        };
        let text = "a: 1\n---\nb: 0123456789\nc: 0123456789\n---\nd: 4\n";
        let mut chunks: Vec<Chunk> = text
            .split_inclusive('\n')
            .filter_map(|line| splitter.push(line))
            .collect();
        chunks.extend(splitter.finish());
        let shape: Vec<(usize, bool, &str)> = chunks
            .iter()
            .map(|chunk| (chunk.first_line, chunk.oversized, chunk.text.as_str()))
            .collect();
        assert_eq!(
            shape,
            [
                (1, false, "a: 1\n"),
                (2, true, ""),
                (5, false, "---\nd: 4\n")
            ]
        );
    }

    #[test]
    fn alias_bombs_are_an_error_of_their_document() {
        let mut bomb = String::from("---\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..10 {
            let previous = format!("*a{}", level - 1);
            let items = [previous.as_str(); 10].join(", ");
            bomb.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        bomb.push_str("---\nafter: 1\n");
        let docs = parse_documents(&bomb);
        assert_eq!(docs.len(), 2);
        let error = docs[0].as_ref().unwrap_err();
        assert!(error.message.contains("alias bomb"), "{error:?}");
        assert_eq!(docs[1].as_ref().unwrap().get("after").unwrap().line, 13);
    }
}
