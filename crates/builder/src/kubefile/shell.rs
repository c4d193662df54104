//! Processing of one word with Dockerfile rules: quotes removed (`'…'` literal, `"…"` with
//! `\"`, `\\`, `\$` escapes and substitution), `\x` outside quotes is `x`, and variables
//! substituted: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`,
//! `${NAME+word}`, `${NAME:?message}`, `${NAME?message}`. An unset variable is empty.

use std::iter::Peekable;
use std::str::CharIndices;

use crate::kubefile::ast::ARCH_PLACEHOLDER;

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WordError {
    /// Byte offset in the word.
    pub(crate) offset: usize,
    /// What is wrong.
    pub(crate) message: String,
}

/// How to process a word.
pub(crate) enum Mode<'a> {
    /// Only check the syntax: variables are not looked up, `${X:?}` never fails.
    Check,
    /// Remove quotes and escapes; `$` is literal (for keys, which are never substituted).
    Unquote,
    /// Substitute variables with `lookup` (`None`: unset). With `keep_arch`, `$ARCH` and
    /// `${ARCH}` become [`ARCH_PLACEHOLDER`] whatever the variables say.
    Expand {
        /// Looks a variable up.
        lookup: &'a dyn Fn(&str) -> Option<String>,
        /// Whether to keep `${ARCH}` for a later per-platform substitution.
        keep_arch: bool,
    },
}

/// Processes `word` in `mode`.
pub(crate) fn process(word: &str, mode: &Mode<'_>) -> Result<String, WordError> {
    let mut processor = Processor {
        chars: word.char_indices().peekable(),
        mode,
    };
    processor.sequence(None)
}

/// Whether `word` has a `$` that substitution could act on (quotes and escapes aside).
pub(crate) fn has_variables(word: &str) -> bool {
    word.contains('$')
}

struct Processor<'w, 'm> {
    chars: Peekable<CharIndices<'w>>,
    mode: &'m Mode<'m>,
}

impl Processor<'_, '_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> WordError {
        WordError {
            offset,
            message: message.into(),
        }
    }

    /// Text up to `stop` (not consumed) or the end.
    fn sequence(&mut self, stop: Option<(char, usize)>) -> Result<String, WordError> {
        let mut out = String::new();
        loop {
            let Some(&(offset, c)) = self.chars.peek() else {
                return match stop {
                    Some((_, opened)) => {
                        Err(self.error(opened, "unterminated ${…}: expected a closing }"))
                    }
                    None => Ok(out),
                };
            };
            if stop.is_some_and(|(stop, _)| stop == c) {
                return Ok(out);
            }
            self.chars.next();
            match c {
                '\'' => out.push_str(&self.single_quoted(offset)?),
                '"' => out.push_str(&self.double_quoted(offset)?),
                '\\' => match self.chars.next() {
                    Some((_, next)) => out.push(next),
                    None => out.push('\\'),
                },
                '$' => out.push_str(&self.dollar(offset)?),
                c => out.push(c),
            }
        }
    }

    fn single_quoted(&mut self, opened: usize) -> Result<String, WordError> {
        let mut out = String::new();
        for (_, c) in self.chars.by_ref() {
            if c == '\'' {
                return Ok(out);
            }
            out.push(c);
        }
        Err(self.error(opened, "unterminated single quote: expected a closing '"))
    }

    fn double_quoted(&mut self, opened: usize) -> Result<String, WordError> {
        let mut out = String::new();
        while let Some((offset, c)) = self.chars.next() {
            match c {
                '"' => return Ok(out),
                '\\' => match self.chars.next() {
                    Some((_, next @ ('"' | '\\' | '$'))) => out.push(next),
                    Some((_, next)) => {
                        out.push('\\');
                        out.push(next);
                    }
                    None => break,
                },
                '$' => out.push_str(&self.dollar(offset)?),
                c => out.push(c),
            }
        }
        Err(self.error(opened, "unterminated double quote: expected a closing \""))
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(&(_, c)) = self.chars.peek() {
            if !(c.is_ascii_alphanumeric() || c == '_') {
                break;
            }
            name.push(c);
            self.chars.next();
        }
        name
    }

    /// After a `$` at `dollar`.
    fn dollar(&mut self, dollar: usize) -> Result<String, WordError> {
        if matches!(self.mode, Mode::Unquote) {
            return Ok("$".to_owned());
        }
        match self.chars.peek() {
            Some(&(_, '{')) => {
                self.chars.next();
                self.braced(dollar)
            }
            Some(&(_, c)) if c.is_ascii_alphabetic() || c == '_' => {
                let name = self.name();
                Ok(self.value_of(&name, true).unwrap_or_default())
            }
            _ => Ok("$".to_owned()),
        }
    }

    /// The value of `name`, `None` when unset; the placeholder for `ARCH` when kept.
    fn value_of(&self, name: &str, plain: bool) -> Option<String> {
        match self.mode {
            Mode::Expand { lookup, keep_arch } => {
                if plain && *keep_arch && name == "ARCH" {
                    Some(ARCH_PLACEHOLDER.to_owned())
                } else {
                    lookup(name)
                }
            }
            Mode::Check | Mode::Unquote => None,
        }
    }

    /// After `${` (the `$` at `dollar`).
    fn braced(&mut self, dollar: usize) -> Result<String, WordError> {
        let name = self.name();
        if name.is_empty() {
            let found = self
                .chars
                .peek()
                .map_or("the end".to_owned(), |(_, c)| format!("{c:?}"));
            return Err(self.error(
                dollar,
                format!("bad substitution: expected a variable name after ${{, found {found}"),
            ));
        }
        let Some((at, c)) = self.chars.next() else {
            return Err(self.error(dollar, "unterminated ${…}: expected a closing }"));
        };
        let (colon, operator) = match c {
            '}' => return Ok(self.value_of(&name, true).unwrap_or_default()),
            ':' => match self.chars.next() {
                Some((_, operator @ ('-' | '+' | '?'))) => (true, operator),
                _ => {
                    return Err(self.error(
                        at,
                        format!(
                            "bad substitution in ${{{name}:…}}: expected :-, :+ or :? after the name"
                        ),
                    ));
                }
            },
            '-' | '+' | '?' => (false, c),
            other => {
                return Err(self.error(
                    at,
                    format!(
                        "bad substitution in ${{{name}…}}: unexpected {other:?}; expected }}, :-, -, :+, +, :? or ?"
                    ),
                ));
            }
        };
        let word = self.sequence(Some(('}', dollar)))?;
        self.chars.next(); // the closing brace
        let value = self.value_of(&name, false);
        let set = if colon {
            value.as_deref().is_some_and(|value| !value.is_empty())
        } else {
            value.is_some()
        };
        match operator {
            '-' => Ok(if set { value.unwrap_or_default() } else { word }),
            '+' => Ok(if set { word } else { String::new() }),
            _ if set || !matches!(self.mode, Mode::Expand { .. }) => Ok(value.unwrap_or_default()),
            _ => {
                let message = if word.is_empty() {
                    "is not set".to_owned()
                } else {
                    word
                };
                Err(self.error(dollar, format!("{name}: {message}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(word: &str) -> Result<String, WordError> {
        let lookup = |name: &str| match name {
            "HOME" => Some("/root".to_owned()),
            "EMPTY" => Some(String::new()),
            "ARCH" => Some("from-arg".to_owned()),
            _ => None,
        };
        process(
            word,
            &Mode::Expand {
                lookup: &lookup,
                keep_arch: false,
            },
        )
    }

    #[test]
    fn quotes_escapes_and_variables() {
        let cases = [
            ("plain", "plain"),
            ("$HOME/x", "/root/x"),
            ("${HOME}x", "/rootx"),
            ("'$HOME'", "$HOME"),
            ("\"$HOME a\"", "/root a"),
            ("\\$HOME", "$HOME"),
            ("\"\\$HOME \\\" \\n\"", "$HOME \" \\n"),
            ("a\\ b", "a b"),
            ("$UNSET.", "."),
            ("$", "$"),
            ("$1", "$1"),
            ("a$", "a$"),
            ("${UNSET:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${UNSET-$HOME}", "/root"),
            ("${HOME:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${UNSET+set}", ""),
            ("${UNSET:-\"a }\"}", "a }"),
            ("${HOME:?}", "/root"),
        ];
        for (word, want) in cases {
            assert_eq!(expand(word).as_deref(), Ok(want), "{word}");
        }
    }

    #[test]
    fn errors_point_at_the_problem() {
        let cases = [
            (
                "a${",
                1,
                "bad substitution: expected a variable name after ${, found the end",
            ),
            ("${X", 0, "unterminated ${…}: expected a closing }"),
            ("${X:-abc", 0, "unterminated ${…}: expected a closing }"),
            (
                "x${X:=a}",
                4,
                "bad substitution in ${X:…}: expected :-, :+ or :? after the name",
            ),
            (
                "${X#a}",
                3,
                "bad substitution in ${X…}: unexpected '#'; expected }, :-, -, :+, +, :? or ?",
            ),
            ("'abc", 0, "unterminated single quote: expected a closing '"),
            (
                "a\"bc",
                1,
                "unterminated double quote: expected a closing \"",
            ),
            ("${UNSET:?must be set}", 0, "UNSET: must be set"),
            ("${EMPTY:?}", 0, "EMPTY: is not set"),
        ];
        for (word, offset, message) in cases {
            let error = expand(word).unwrap_err();
            assert_eq!(
                (error.offset, error.message.as_str()),
                (offset, message),
                "{word}"
            );
        }
        assert_eq!(expand("${EMPTY?x}").as_deref(), Ok(""));
    }

    #[test]
    fn check_and_unquote_modes() {
        assert_eq!(process("${X:?}", &Mode::Check).as_deref(), Ok(""));
        assert!(process("${X", &Mode::Check).is_err());
        assert_eq!(
            process("\"a $b\"'c'", &Mode::Unquote).as_deref(),
            Ok("a $bc")
        );
    }

    #[test]
    fn arch_is_kept_for_later() {
        let lookup = |_: &str| Some("x".to_owned());
        let mode = Mode::Expand {
            lookup: &lookup,
            keep_arch: true,
        };
        assert_eq!(
            process("bin/$ARCH/${ARCH}/$ARCHIVE", &mode).as_deref(),
            Ok("bin/${ARCH}/${ARCH}/x")
        );
        assert_eq!(process("${ARCH:-y}", &mode).as_deref(), Ok("x"));
    }
}
