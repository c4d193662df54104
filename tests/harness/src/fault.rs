//! A fault-injecting HTTP/1.1 proxy: forwards each connection to one upstream and spoils the
//! responses to chosen requests (cut short, one byte flipped, never answered, or answered with
//! a chosen status).
//!
//! One request per connection: `Connection: close` is forced on the request and the response,
//! so a response body always ends when the upstream closes, whatever its framing.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context as _, anyhow};

use crate::Result;
use crate::http::find;

/// Largest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// Bound on connecting to the upstream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The one kind of fault a [`FaultProxy`] injects. A request matches when its target (path
/// and query) contains `path_contains` (`""` matches every request).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything untouched.
    #[default]
    None,
    /// Forward the response head and the first `bytes` bytes of the body, then close the
    /// client connection. Applies to the first `times` matching 2xx responses that have a
    /// `Content-Length` body; later ones pass (so a client resuming with Range succeeds).
    CutAfter {
        /// Substring of the request target.
        path_contains: String,
        /// Body bytes forwarded before the cut.
        bytes: u64,
        /// How many responses to cut.
        times: usize,
    },
    /// Flip (xor 0xff) the body byte at `offset`; length and headers unchanged. Applies to
    /// the first `times` matching 2xx responses that have a `Content-Length` body.
    FlipByte {
        /// Substring of the request target.
        path_contains: String,
        /// Body offset of the byte to flip (past the end: nothing flipped).
        offset: u64,
        /// How many responses to corrupt.
        times: usize,
    },
    /// Read the request and never answer nor forward it; the connection stays open until
    /// the proxy is dropped. Applies to every matching request.
    Hang {
        /// Substring of the request target.
        path_contains: String,
    },
    /// Close the connection as soon as the request head is read, answering nothing (a
    /// server that is down or resets). Applies to every matching request.
    Refuse {
        /// Substring of the request target.
        path_contains: String,
    },
    /// Answer with `status` (and `Retry-After: <retry_after>` when given) and an empty body,
    /// without forwarding the request (a rate-limiting or failing upstream). Applies to every
    /// matching request.
    Status {
        /// Substring of the request target.
        path_contains: String,
        /// The status answered.
        status: u16,
        /// The `Retry-After` seconds sent, if any.
        retry_after: Option<u64>,
    },
    /// Forward the response head and the first `bytes` bytes of the body, then send nothing
    /// more while keeping the connection open (an upstream that stalls mid-transfer). Applies
    /// to the first `times` matching 2xx responses that have a `Content-Length` body.
    StallAfter {
        /// Substring of the request target.
        path_contains: String,
        /// Body bytes forwarded before the stall.
        bytes: u64,
        /// How many responses to stall.
        times: usize,
    },
}

impl Fault {
    /// Cut the first matching response after `bytes` body bytes.
    pub fn cut_after(path_contains: &str, bytes: u64) -> Self {
        Self::CutAfter {
            path_contains: path_contains.to_owned(),
            bytes,
            times: 1,
        }
    }

    /// Flip the body byte at `offset` of every matching response.
    pub fn flip_byte(path_contains: &str, offset: u64) -> Self {
        Self::FlipByte {
            path_contains: path_contains.to_owned(),
            offset,
            times: usize::MAX,
        }
    }

    /// Never answer matching requests.
    pub fn hang(path_contains: &str) -> Self {
        Self::Hang {
            path_contains: path_contains.to_owned(),
        }
    }

    /// Refuse every matching request.
    pub fn refuse(path_contains: &str) -> Self {
        Self::Refuse {
            path_contains: path_contains.to_owned(),
        }
    }

    /// Answer every matching request with `status` (and `Retry-After` seconds when given).
    pub fn status(path_contains: &str, status: u16, retry_after: Option<u64>) -> Self {
        Self::Status {
            path_contains: path_contains.to_owned(),
            status,
            retry_after,
        }
    }

    /// Stall the first matching response after `bytes` body bytes.
    pub fn stall_after(path_contains: &str, bytes: u64) -> Self {
        Self::StallAfter {
            path_contains: path_contains.to_owned(),
            bytes,
            times: 1,
        }
    }

    /// The substring requests must contain, `None` for [`Fault::None`].
    fn pattern(&self) -> Option<&str> {
        match self {
            Self::None => None,
            Self::CutAfter { path_contains, .. }
            | Self::FlipByte { path_contains, .. }
            | Self::StallAfter { path_contains, .. }
            | Self::Hang { path_contains }
            | Self::Refuse { path_contains }
            | Self::Status { path_contains, .. } => Some(path_contains),
        }
    }

    /// How many responses it spoils.
    fn times(&self) -> usize {
        match self {
            Self::None => 0,
            Self::CutAfter { times, .. }
            | Self::FlipByte { times, .. }
            | Self::StallAfter { times, .. } => *times,
            Self::Hang { .. } | Self::Refuse { .. } | Self::Status { .. } => usize::MAX,
        }
    }
}

/// A request the proxy received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// Request method.
    pub method: String,
    /// Request target (path and query).
    pub target: String,
    /// Whether the fault was applied to it.
    pub faulted: bool,
}

/// The fault now in force and how often it was applied.
#[derive(Debug)]
struct FaultState {
    fault: Fault,
    applied: usize,
}

/// State shared with the connection threads.
#[derive(Debug)]
struct Shared {
    upstream: SocketAddr,
    fault: Mutex<FaultState>,
    requests: Mutex<Vec<ProxiedRequest>>,
    /// Open sockets by connection, shut down on drop (clones: removing them matters, or the
    /// sockets would never close).
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
    next_connection: AtomicU64,
    stop: AtomicBool,
}

/// What to do to one response.
#[derive(Debug, Clone, Copy)]
enum Action {
    Cut(u64),
    Flip(u64),
    Stall(u64),
}

/// A running proxy on `127.0.0.1:PORT`. Dropping it stops accepting and closes every
/// connection (hung ones included).
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a kernel-chosen port and forwards to `upstream`, injecting `fault`.
    pub fn start(upstream: SocketAddr, fault: Fault) -> Result<Self> {
        let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(FaultState { fault, applied: 0 }),
            requests: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let accepting = Arc::clone(&shared);
        let acceptor = thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&accepting);
                thread::spawn(move || handle(&shared, stream));
            }
        });
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Starts a proxy in front of `host` (`127.0.0.1:PORT`, as [`crate::Registry::host`]).
    pub fn in_front_of(host: &str, fault: Fault) -> Result<Self> {
        let upstream = host
            .parse()
            .with_context(|| format!("{host}: not an IP:PORT address"))?;
        Self::start(upstream, fault)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the fault in force (the count of applications starts again).
    pub fn set_fault(&self, fault: Fault) {
        *self
            .shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = FaultState { fault, applied: 0 };
    }

    /// How many requests or responses the current fault has spoiled.
    pub fn faults_applied(&self) -> usize {
        self.shared
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .applied
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<ProxiedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let sockets = std::mem::take(
            &mut *self
                .shared
                .sockets
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for stream in sockets.into_values().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Serves one client connection.
fn handle(shared: &Shared, client: TcpStream) {
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed);
    let keep_open = proxy_one(shared, id, &client).unwrap_or(false);
    if !keep_open {
        let _ = client.shutdown(Shutdown::Both);
        let sockets = shared
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        for stream in sockets.into_iter().flatten() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Registers a clone of `stream` under connection `id`, for shutdown on drop.
fn track(shared: &Shared, id: u64, stream: &TcpStream) -> io::Result<()> {
    let clone = stream.try_clone()?;
    shared
        .sockets
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(id)
        .or_default()
        .push(clone);
    Ok(())
}

/// Proxies the one request of a connection. Returns whether the connection must stay open
/// (a hung request).
fn proxy_one(shared: &Shared, id: u64, client: &TcpStream) -> Result<bool> {
    track(shared, id, client)?;
    if shared.stop.load(Ordering::SeqCst) {
        return Ok(false);
    }
    let mut client_reader = client.try_clone()?;
    let (head, leftover) = read_head(&mut client_reader)?;
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut request_line = head_text.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();

    // Match the request against the fault.
    let (matched, hang, refuse, answer) = {
        let mut state = shared.fault.lock().unwrap_or_else(PoisonError::into_inner);
        let matched = state
            .fault
            .pattern()
            .is_some_and(|pattern| target.contains(pattern))
            && state.applied < state.fault.times();
        let hang = matched && matches!(state.fault, Fault::Hang { .. });
        let refuse = matched && matches!(state.fault, Fault::Refuse { .. });
        let answer = match state.fault {
            Fault::Status {
                status,
                retry_after,
                ..
            } if matched => Some((status, retry_after)),
            _ => None,
        };
        if hang || refuse || answer.is_some() {
            state.applied += 1;
        }
        (matched, hang, refuse, answer)
    };
    let record = {
        let mut requests = shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        requests.push(ProxiedRequest {
            method: method.clone(),
            target,
            faulted: hang || refuse || answer.is_some(),
        });
        requests.len() - 1
    };
    if hang {
        return Ok(true);
    }
    if refuse {
        return Ok(false);
    }
    if let Some((status, retry_after)) = answer {
        let retry_after = retry_after
            .map(|seconds| format!("Retry-After: {seconds}\r\n"))
            .unwrap_or_default();
        let mut client = client;
        write!(
            client,
            "HTTP/1.1 {status} Fault\r\n{retry_after}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(false);
    }

    let upstream = match TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) {
        Ok(upstream) => upstream,
        Err(error) => {
            let body = format!("fault proxy: upstream {}: {error}", shared.upstream);
            let mut client = client;
            let _ = write!(
                client,
                "HTTP/1.1 502 Bad Gateway\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            return Ok(false);
        }
    };
    track(shared, id, &upstream)?;
    let mut upstream_writer = upstream.try_clone()?;
    upstream_writer.write_all(&with_connection_close(&head))?;
    upstream_writer.write_all(&leftover)?;
    // The request body, whatever its framing, until the client stops sending. No half-close
    // upstream: Go servers cancel a request whose connection reads EOF.
    thread::spawn(move || {
        let _ = io::copy(&mut client_reader, &mut upstream_writer);
    });

    let mut upstream_reader = upstream.try_clone()?;
    let (response_head, mut body_start) = read_head(&mut upstream_reader)?;
    let response_text = String::from_utf8_lossy(&response_head).into_owned();
    let status: u16 = response_text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let content_length = header(&response_text, "content-length")
        .and_then(|length| length.parse::<u64>().ok())
        .filter(|length| *length > 0);
    let chunked = header(&response_text, "transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let mut client_writer = client.try_clone()?;

    if (100..200).contains(&status) {
        // Interim response: pass everything through untouched.
        client_writer.write_all(&response_head)?;
        client_writer.write_all(&body_start)?;
        io::copy(&mut upstream_reader, &mut client_writer)?;
        return Ok(false);
    }

    let action = if matched
        && method != "HEAD"
        && (200..300).contains(&status)
        && content_length.is_some()
        && !chunked
    {
        let mut state = shared.fault.lock().unwrap_or_else(PoisonError::into_inner);
        if state.applied < state.fault.times() {
            state.applied += 1;
            match state.fault {
                Fault::CutAfter { bytes, .. } => Some(Action::Cut(bytes)),
                Fault::FlipByte { offset, .. } => Some(Action::Flip(offset)),
                Fault::StallAfter { bytes, .. } => Some(Action::Stall(bytes)),
                Fault::None | Fault::Hang { .. } | Fault::Refuse { .. } | Fault::Status { .. } => {
                    None
                }
            }
        } else {
            None
        }
    } else {
        None
    };
    if action.is_some()
        && let Some(entry) = shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(record)
    {
        entry.faulted = true;
    }

    client_writer.write_all(&with_connection_close(&response_head))?;
    let mut offset = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let mut chunk = if body_start.is_empty() {
            let read = match upstream_reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            buffer[..read].to_vec()
        } else {
            std::mem::take(&mut body_start)
        };
        let length = chunk.len() as u64;
        match action {
            Some(Action::Cut(limit)) if offset + length >= limit => {
                let keep = usize::try_from(limit.saturating_sub(offset)).unwrap_or(usize::MAX);
                client_writer.write_all(&chunk[..keep.min(chunk.len())])?;
                client_writer.flush()?;
                return Ok(false);
            }
            Some(Action::Stall(limit)) if offset + length >= limit => {
                let keep = usize::try_from(limit.saturating_sub(offset)).unwrap_or(usize::MAX);
                client_writer.write_all(&chunk[..keep.min(chunk.len())])?;
                client_writer.flush()?;
                // Open and silent until the proxy is dropped.
                return Ok(true);
            }
            Some(Action::Flip(at)) if (offset..offset + length).contains(&at) => {
                let index = usize::try_from(at - offset).unwrap_or(0);
                chunk[index] ^= 0xff;
            }
            _ => {}
        }
        client_writer.write_all(&chunk)?;
        offset += length;
    }
    client_writer.flush()?;
    Ok(false)
}

/// Reads up to the end of an HTTP head (`\r\n\r\n`): returns the head (with the blank line)
/// and the bytes read past it.
fn read_head(stream: &mut TcpStream) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            return Ok((data, rest));
        }
        if data.len() > MAX_HEAD {
            return Err(anyhow!("HTTP head larger than {MAX_HEAD} bytes"));
        }
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(anyhow!("connection closed before the end of a head"));
        }
        data.extend_from_slice(&buffer[..read]);
    }
}

/// The head with its `Connection`, `Keep-Alive` and `Proxy-Connection` fields replaced by
/// `Connection: close`.
fn with_connection_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n")
        .split("\r\n")
        .filter(|line| {
            let name = line
                .split_once(':')
                .map(|(name, _)| name.trim().to_ascii_lowercase());
            !matches!(
                name.as_deref(),
                Some("connection" | "keep-alive" | "proxy-connection")
            )
        })
        .collect();
    lines.push("Connection: close");
    let mut out = lines.join("\r\n").into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out
}

/// The value of header `name` (lower case) in a head.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(value.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forces_connection_close() {
        let head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n";
        assert_eq!(
            with_connection_close(head),
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec()
        );
        let text = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n";
        assert_eq!(header(text, "content-length"), Some("12"));
    }
}
