//! Physical lines to logical lines (`\` continuations joined, comments and blank lines
//! dropped), positions mapped back to `line:column`, and shell-form word splitting.

/// A piece of a logical line that starts at `offset` (bytes, in the logical text) and comes
/// from `line:column` of the file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: usize,
    line: usize,
    column: usize,
}

/// One instruction's text, continuations joined.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    /// The text: physical lines concatenated without their trailing `\` (as Docker does).
    pub(crate) text: String,
    segments: Vec<Segment>,
}

impl Line {
    /// The `(line, column)` of byte `offset` of the text (1-based, columns in characters).
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let at = self
            .segments
            .partition_point(|segment| segment.offset <= offset)
            .saturating_sub(1);
        let Some(segment) = self.segments.get(at) else {
            return (1, 1);
        };
        let end = offset.min(self.text.len());
        let chars = self
            .text
            .get(segment.offset..end)
            .map_or(0, |piece| piece.chars().count());
        (segment.line, segment.column + chars)
    }
}

/// Whether a physical line is blank or a comment (`#` first after whitespace).
fn is_blank_or_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// Splits `source` into logical lines. A line ending in `\` (trailing blanks allowed)
/// continues on the next; comment and blank lines inside a continuation are skipped, as
/// Docker does.
pub(crate) fn logical_lines(source: &str) -> Vec<Line> {
    let source = source.strip_prefix('\u{feff}').unwrap_or(source);
    let mut lines = Vec::new();
    let mut current: Option<Line> = None;
    for (index, physical) in source.split('\n').enumerate() {
        let physical = physical.strip_suffix('\r').unwrap_or(physical);
        if is_blank_or_comment(physical) {
            continue;
        }
        let trimmed = physical.trim_end_matches([' ', '\t']);
        let (content, continues) = match trimmed.strip_suffix('\\') {
            Some(content) => (content, true),
            None => (physical, false),
        };
        let line = current.get_or_insert_with(|| Line {
            text: String::new(),
            segments: Vec::new(),
        });
        line.segments.push(Segment {
            offset: line.text.len(),
            line: index + 1,
            column: 1,
        });
        line.text.push_str(content);
        if !continues {
            lines.extend(current.take());
        }
    }
    lines.extend(current);
    lines
}

/// Why a word could not be split off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitError {
    /// Byte offset (in the text given) of the quote that is not closed.
    pub(crate) offset: usize,
    /// What is wrong.
    pub(crate) message: String,
}

/// Splits `text` into shell-form words at unquoted blanks. Words keep their quotes and
/// escapes (they are processed when expanded). Returns each word with its byte offset.
pub(crate) fn split_words(text: &str) -> Result<Vec<(String, usize)>, SplitError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut start = None;
    let mut quote: Option<(char, usize)> = None;
    // Inside `${…}` blanks do not split (`${X:-a b}` is one word, as in a shell).
    let mut braces = 0usize;
    let mut chars = text.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match (quote, c) {
            (None | Some(('"', _)), '$') if chars.peek().is_some_and(|(_, next)| *next == '{') => {
                braces += 1;
            }
            (None | Some(('"', _)), '}') if braces > 0 => braces -= 1,
            (None, c) if c.is_whitespace() && braces == 0 => {
                if let Some(start) = start.take() {
                    words.push((std::mem::take(&mut current), start));
                }
                continue;
            }
            (Some(('\'', _)), '\'') | (Some(('"', _)), '"') => quote = None,
            (None, '\'' | '"') => quote = Some((c, offset)),
            (None | Some(('"', _)), '\\') => {
                start.get_or_insert(offset);
                current.push(c);
                if let Some((_, next)) = chars.next() {
                    current.push(next);
                }
                continue;
            }
            _ => {}
        }
        start.get_or_insert(offset);
        current.push(c);
    }
    if let Some((c, offset)) = quote {
        let which = if c == '"' { "double" } else { "single" };
        return Err(SplitError {
            offset,
            message: format!("unterminated {which} quote: expected a closing {c}"),
        });
    }
    if let Some(start) = start {
        words.push((current, start));
    }
    Ok(words)
}

/// The byte offset of the first `=` of `word` that is outside quotes and not escaped.
pub(crate) fn unquoted_equals(word: &str) -> Option<usize> {
    let mut quote = None;
    let mut braces = 0usize;
    let mut chars = word.char_indices().peekable();
    while let Some((offset, c)) = chars.next() {
        match (quote, c) {
            (None | Some('"'), '$') if chars.peek().is_some_and(|(_, next)| *next == '{') => {
                braces += 1;
            }
            (None | Some('"'), '}') if braces > 0 => braces -= 1,
            (None, '=') if braces == 0 => return Some(offset),
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if q == c => quote = None,
            (None | Some('"'), '\\') => {
                chars.next();
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuations_comments_and_positions() {
        let source =
            "# comment\n\nFROM a\nRUN echo \\\n  # inside\n\n  one \\  \r\n  two\nCOPY x y \\";
        let lines = logical_lines(source);
        let texts: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
        assert_eq!(texts, ["FROM a", "RUN echo   one   two", "COPY x y "]);
        let run = &lines[1];
        assert_eq!(run.position(0), (4, 1));
        let one = run.text.find("one").unwrap();
        assert_eq!(run.position(one), (7, 3));
        let two = run.text.find("two").unwrap();
        assert_eq!(run.position(two), (8, 3));
        assert_eq!(run.position(run.text.len()), (8, 6));
    }

    #[test]
    fn columns_count_characters() {
        let lines = logical_lines("\u{feff}LABEL é=\"ü\" x=1");
        let line = &lines[0];
        assert_eq!(line.position(line.text.find('x').unwrap()), (1, 13));
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        let words = split_words(r#"a "b c" 'd e'f g\ h "i\"j""#).unwrap();
        let raw: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(raw, ["a", "\"b c\"", "'d e'f", "g\\ h", "\"i\\\"j\""]);
        assert_eq!(words[1].1, 2);
        let words = split_words("${A:-a b} \"${B:-c d}\" '${ e'").unwrap();
        let raw: Vec<&str> = words.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(raw, ["${A:-a b}", "\"${B:-c d}\"", "'${ e'"]);
        let error = split_words("a 'b c").unwrap_err();
        assert_eq!(error.offset, 2);
        assert_eq!(
            error.message,
            "unterminated single quote: expected a closing '"
        );
    }

    #[test]
    fn equals_outside_quotes() {
        assert_eq!(unquoted_equals("a=b"), Some(1));
        assert_eq!(unquoted_equals("\"a=b\"=c"), Some(5));
        assert_eq!(unquoted_equals("a\\=b=c"), Some(4));
        assert_eq!(unquoted_equals("ab"), None);
        assert_eq!(unquoted_equals("${A:-x=y}=z"), Some(9));
    }
}
