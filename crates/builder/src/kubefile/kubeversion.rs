//! KUBEVERSION ranges, checked against the syntax sealer reads them with (Masterminds
//! semver v3 constraints), hand-written to keep dependencies lean:
//!
//! ```text
//! range      = group *( "||" group )
//! group      = version " - " version                 ; hyphen range
//!            | comparator *( ("," | blank) comparator )
//! comparator = [ "=" | "!=" | ">" | "<" | ">=" | "=>" | "<=" | "=<" | "~" | "~>" | "^" ] version
//! version    = [ "v" ] part [ "." part [ "." part ] ] [ "-" prerelease ] [ "+" build ]
//! part       = digits | "x" | "X" | "*"
//! ```
//!
//! The `semver` crate's `VersionReq` is not used: it reads a different syntax (no `||`, no
//! blank-separated comparators, no `v` prefix), so it would refuse ranges sealer accepts.

/// Operators, longest first so that `>=` is not read as `>`.
const OPERATORS: [&str; 11] = ["!=", ">=", "=>", "<=", "=<", "~>", "=", ">", "<", "~", "^"];

/// Checks a range; the error says what is wrong with it.
pub(crate) fn check_range(range: &str) -> Result<(), String> {
    if range.trim().is_empty() {
        return Err("the range is empty".to_owned());
    }
    for group in range.split("||") {
        check_group(group.trim())?;
    }
    Ok(())
}

fn check_group(group: &str) -> Result<(), String> {
    if group.is_empty() {
        return Err("a range around || is empty".to_owned());
    }
    if let Some((low, high)) = group.split_once(" - ") {
        check_version(low.trim())?;
        return check_version(high.trim());
    }
    let mut tokens = group
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|token| !token.is_empty());
    while let Some(token) = tokens.next() {
        let operator = OPERATORS
            .iter()
            .find(|operator| token.starts_with(**operator))
            .copied()
            .unwrap_or("");
        let version = match &token[operator.len()..] {
            // The operator stands alone: its version is the next token (`>= 1.20`).
            "" if !operator.is_empty() => tokens
                .next()
                .ok_or_else(|| format!("expected a version after {operator:?}"))?,
            version => version,
        };
        check_version(version)?;
    }
    Ok(())
}

fn is_identifier_list(text: &str) -> bool {
    !text.is_empty()
        && text.split('.').all(|identifier| {
            !identifier.is_empty()
                && identifier
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn check_version(text: &str) -> Result<(), String> {
    let invalid = |why: &str| {
        Err(format!(
            "{text:?} is not a version ({why}; expected e.g. 1.22, v1.22.3 or 1.22.x)"
        ))
    };
    let version = text
        .strip_prefix('v')
        .or_else(|| text.strip_prefix('V'))
        .unwrap_or(text);
    let (version, build) = match version.split_once('+') {
        Some((version, build)) => (version, Some(build)),
        None => (version, None),
    };
    let (core, prerelease) = match version.split_once('-') {
        Some((core, prerelease)) => (core, Some(prerelease)),
        None => (version, None),
    };
    if core.is_empty() {
        return invalid("it has no number");
    }
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() > 3 {
        return invalid("more than three numbers");
    }
    let numeric = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    let wildcard = |part: &str| matches!(part, "x" | "X" | "*");
    if !parts.iter().all(|part| numeric(part) || wildcard(part)) {
        return invalid("its parts must be numbers or x, X, *");
    }
    if prerelease.is_some_and(|pre| !is_identifier_list(pre)) {
        return invalid("bad pre-release after -");
    }
    if build.is_some_and(|build| !is_identifier_list(build)) {
        return invalid("bad build metadata after +");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_sealer_accepts() {
        for range in [
            "1.22",
            "v1.22.3",
            ">=1.20.0 <1.27.0",
            ">=1.20, <1.27",
            ">= 1.20",
            "~1.22",
            "~>1.22.0",
            "^1.22",
            "1.22.x",
            "*",
            "1.20 - 1.24",
            ">=1.20 <1.22 || >=1.24",
            "=1.22.0-rc.1+build.5",
            "!=1.23.0",
        ] {
            assert_eq!(check_range(range), Ok(()), "{range}");
        }
    }

    #[test]
    fn explains_what_is_wrong() {
        let cases = [
            ("", "the range is empty"),
            (">=1.20 ||", "a range around || is empty"),
            (">=", "expected a version after \">=\""),
            (
                "abc",
                "\"abc\" is not a version (its parts must be numbers or x, X, *; expected e.g. 1.22, v1.22.3 or 1.22.x)",
            ),
            (
                "1.2.3.4",
                "\"1.2.3.4\" is not a version (more than three numbers; expected e.g. 1.22, v1.22.3 or 1.22.x)",
            ),
            (">=1.20 <", "expected a version after \"<\""),
            (
                "1.2-",
                "\"1.2-\" is not a version (bad pre-release after -; expected e.g. 1.22, v1.22.3 or 1.22.x)",
            ),
            (
                "=>v",
                "\"v\" is not a version (it has no number; expected e.g. 1.22, v1.22.3 or 1.22.x)",
            ),
        ];
        for (range, message) in cases {
            assert_eq!(check_range(range), Err(message.to_owned()), "{range}");
        }
    }
}
