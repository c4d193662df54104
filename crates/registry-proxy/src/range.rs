//! `Range: bytes=…` of blob GETs and `Content-Range: a-b` of upload chunks.

use std::ops::Range;

/// One byte range of a `Range` header, before the blob's size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=a-b` (inclusive).
    FromTo(u64, u64),
    /// `bytes=a-`.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// Parses a `Range` header. `None` for anything that is not a well-formed `bytes=`
    /// range (the whole blob is then served, as RFC 9110 says); of several ranges the first
    /// is taken.
    pub fn parse(header: &str) -> Option<Self> {
        let spec = header.trim().strip_prefix("bytes=")?;
        let first = spec.split(',').next()?.trim();
        let (start, end) = first.split_once('-')?;
        let number = |text: &str| text.trim().parse::<u64>().ok();
        match (start.trim().is_empty(), end.trim().is_empty()) {
            (true, false) => Some(Self::Suffix(number(end)?)),
            (false, true) => Some(Self::From(number(start)?)),
            (false, false) => {
                let (start, end) = (number(start)?, number(end)?);
                (start <= end).then_some(Self::FromTo(start, end))
            }
            (true, true) => None,
        }
    }

    /// The byte range (end exclusive) of a blob of `size` bytes, or `None` when it is not
    /// satisfiable (answer 416 with `Content-Range: bytes */size`).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        match self {
            Self::FromTo(start, end) if start < size => {
                Some(start..end.saturating_add(1).min(size))
            }
            Self::From(start) if start < size => Some(start..size),
            Self::Suffix(len) if len > 0 && size > 0 => Some(size.saturating_sub(len)..size),
            _ => None,
        }
    }
}

/// Parses an upload chunk's `Content-Range`: `a-b` (as Docker sends it) or
/// `bytes a-b/total`; inclusive bounds.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let text = header.trim();
    let text = text
        .strip_prefix("bytes")
        .map(str::trim_start)
        .unwrap_or(text);
    let text = text.strip_prefix('=').unwrap_or(text);
    let range = text.split('/').next()?;
    let (start, end) = range.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (start <= end).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        assert_eq!(
            RangeRequest::parse("bytes=0-9"),
            Some(RangeRequest::FromTo(0, 9))
        );
        assert_eq!(RangeRequest::parse("bytes=5-"), Some(RangeRequest::From(5)));
        assert_eq!(
            RangeRequest::parse("bytes=-3"),
            Some(RangeRequest::Suffix(3))
        );
        assert_eq!(
            RangeRequest::parse("bytes=1-2, 5-6"),
            Some(RangeRequest::FromTo(1, 2))
        );
        for bad in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=9-1",
            "items=0-1",
            "bytes=a-b",
        ] {
            assert_eq!(RangeRequest::parse(bad), None, "{bad}");
        }
        assert_eq!(RangeRequest::FromTo(0, 9).resolve(100), Some(0..10));
        assert_eq!(RangeRequest::FromTo(90, 200).resolve(100), Some(90..100));
        assert_eq!(RangeRequest::FromTo(100, 200).resolve(100), None);
        assert_eq!(RangeRequest::From(99).resolve(100), Some(99..100));
        assert_eq!(RangeRequest::From(100).resolve(100), None);
        assert_eq!(RangeRequest::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(RangeRequest::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(RangeRequest::Suffix(0).resolve(100), None);
        assert_eq!(RangeRequest::From(0).resolve(0), None);
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes=10-19"), Some((10, 19)));
        assert_eq!(parse_content_range("5-1"), None);
        assert_eq!(parse_content_range("x"), None);
    }
}
