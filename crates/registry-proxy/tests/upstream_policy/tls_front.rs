//! An HTTPS endpoint on a loopback port for upstreams admitted by policy (always HTTPS):
//! it terminates TLS as the proxy does (`tls::server_config`), with a certificate for
//! `127.0.0.1` and HTTP/1.1 only by ALPN, and either pipes every connection to a plain
//! docker-registry (its access log still counts the requests) or answers every request with
//! a `307` to a fixed location. It counts the connections it accepted, so a test can prove
//! that a refused upstream was never contacted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sealer_registry_proxy::config::TlsConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Bound on a handshake and on reading a request head.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest request head the redirecting endpoint reads.
const MAX_HEAD: usize = 64 << 10;

enum Behind {
    /// Pipe the decrypted bytes to this plain HTTP server.
    Pipe(SocketAddr),
    /// Answer `307 Temporary Redirect` to this location.
    Redirect(String),
}

/// A running endpoint; stopped when dropped.
pub struct TlsFront {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// HTTPS in front of the plain HTTP server at `backend`.
    pub fn pipe(cert: &Path, key: &Path, backend: SocketAddr) -> Self {
        Self::start(cert, key, Behind::Pipe(backend))
    }

    /// HTTPS that redirects every request to `location`.
    pub fn redirect(cert: &Path, key: &Path, location: &str) -> Self {
        Self::start(cert, key, Behind::Redirect(location.to_owned()))
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn start(cert: &Path, key: &Path, behind: Behind) -> Self {
        let mut config = sealer_registry_proxy::tls::server_config(&TlsConfig {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })
        .unwrap();
        // The piped docker-registry speaks HTTP/1.1 only.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let behind = Arc::new(behind);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // Runs until the shutdown signal (the select below drops it).
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        counter.fetch_add(1, Ordering::SeqCst);
                        let (acceptor, behind) = (acceptor.clone(), behind.clone());
                        tokio::spawn(async move {
                            let Ok(Ok(mut tls)) =
                                tokio::time::timeout(EXCHANGE_TIMEOUT, acceptor.accept(stream))
                                    .await
                            else {
                                return;
                            };
                            match &*behind {
                                Behind::Pipe(backend) => {
                                    // A stopped backend: the connection just closes.
                                    if let Ok(mut plain) =
                                        tokio::net::TcpStream::connect(backend).await
                                    {
                                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain)
                                            .await;
                                    }
                                }
                                Behind::Redirect(location) => {
                                    let _ = tokio::time::timeout(
                                        EXCHANGE_TIMEOUT,
                                        redirect(&mut tls, location),
                                    )
                                    .await;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            address,
            connections,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }
}

/// Reads one request head and answers it with a redirect to `location`.
async fn redirect<S>(stream: &mut S, location: &str) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buffer = [0_u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buffer[..read]);
    }
    let answer = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
