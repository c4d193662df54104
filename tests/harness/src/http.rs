//! A minimal blocking HTTP/1.1 client (one request per connection, `Connection: close`) with
//! an overall deadline: enough for readiness probes and raw protocol checks in tests.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};

use crate::Result;

/// A response read to the end of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), or as much of it as arrived.
    pub body: Vec<u8>,
    /// Whether the whole body arrived: false when the connection closed or was reset before
    /// `Content-Length` bytes (or the last chunk) were read.
    pub complete: bool,
}

impl HttpResponse {
    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// `GET url` with no extra header; see [`http_request`].
pub fn http_get(url: &str, timeout: Duration) -> Result<HttpResponse> {
    http_request("GET", url, &[], &[], timeout)
}

/// Sends one request to an `http://host:port/path?query` URL and reads the response until the
/// server closes the connection. Fails when connecting fails, when nothing that looks like a
/// response arrives, or when the whole exchange takes longer than `timeout` (the error then
/// says "timed out"). A truncated body is not an error: see [`HttpResponse::complete`].
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + timeout;
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
    let (authority, target) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .ok_or_else(|| anyhow!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {authority}"))?;
    stream.set_write_timeout(Some(remaining(deadline, method, url)?))?;

    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
        .with_context(|| format!("{method} {url}: sending"))?;

    let mut raw = Vec::new();
    let mut buffer = [0u8; 64 * 1024];
    let mut reset = false;
    loop {
        stream.set_read_timeout(Some(remaining(deadline, method, url)?))?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => raw.extend_from_slice(&buffer[..read]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("{method} {url}: timed out after {timeout:?}")
            }
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                reset = true;
                break;
            }
            Err(error) => return Err(error).with_context(|| format!("{method} {url}: reading")),
        }
    }
    parse_response(&raw, method == "HEAD", reset).with_context(|| format!("{method} {url}"))
}

/// Time left before `deadline`, or a timeout error.
fn remaining(deadline: Instant, method: &str, url: &str) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("{method} {url}: timed out");
    }
    Ok(left)
}

/// Parses everything a server sent on a `Connection: close` connection (interim 1xx
/// responses skipped).
fn parse_response(mut raw: &[u8], head_only: bool, reset: bool) -> Result<HttpResponse> {
    loop {
        let end = find(raw, b"\r\n\r\n").ok_or_else(|| {
            if raw.is_empty() {
                anyhow!("the connection closed without a response")
            } else {
                anyhow!(
                    "incomplete response head: {:?}",
                    String::from_utf8_lossy(raw)
                )
            }
        })?;
        let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
        let body = &raw[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
            .collect();
        if (100..200).contains(&status) {
            raw = body;
            continue;
        }
        let mut response = HttpResponse {
            status,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head_only || status == 204 || status == 304 {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
        if chunked {
            let (decoded, complete) = dechunk(body);
            response.body = decoded;
            response.complete = complete && !reset;
        } else if let Some(length) = response.header("content-length") {
            let length: usize = length
                .parse()
                .map_err(|_| anyhow!("bad Content-Length {length:?}"))?;
            response.complete = body.len() >= length;
            response.body = body[..body.len().min(length)].to_vec();
        } else {
            response.body = body.to_vec();
            response.complete = !reset;
        }
        return Ok(response);
    }
}

/// Decodes a chunked body; reports whether the last (empty) chunk was seen.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(raw, b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return (body, false);
        };
        raw = &raw[line_end + 2..];
        if size == 0 {
            return (body, true);
        }
        if raw.len() < size {
            body.extend_from_slice(raw);
            return (body, false);
        }
        body.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
}

/// Position of `needle` in `haystack`.
pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_chunked_and_truncated_bodies() {
        let full = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            false,
            false,
        )
        .unwrap();
        assert_eq!(
            (full.status, full.body.as_slice(), full.complete),
            (200, &b"abc"[..], true)
        );
        let cut = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
            false,
            true,
        )
        .unwrap();
        assert!(!cut.complete);
        let chunked = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            false,
            false,
        )
        .unwrap();
        assert_eq!(chunked.status, 201);
        assert_eq!(chunked.body, b"abcde");
        assert!(chunked.complete);
        let head =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true, false).unwrap();
        assert!(head.complete && head.body.is_empty());
    }
}
