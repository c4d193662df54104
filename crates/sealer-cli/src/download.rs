//! Downloads of `http(s)://` app sources for `sealer build` (the engine's fetch hook):
//! the system's CA certificates (plus `--ca-file`s), redirects followed (never from HTTPS
//! to plain HTTP), a size limit, an error for any non-2xx status.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Largest source downloaded (APP sources are held in memory, ADD downloads are streamed
/// to a file).
pub const MAX_DOWNLOAD: u64 = 256 << 20;

/// A downloader with its own runtime.
pub struct Downloader {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Downloader {
    /// A downloader trusting the system CAs and `ca_files`.
    pub fn new(ca_files: &[PathBuf]) -> Result<Self> {
        // The registry client's TLS setup, so both trust the same CAs the same way.
        let tls = sealer_registry_client::tls_config(ca_files)?;
        let redirect = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|url| url.scheme() == "https");
            if downgrade || attempt.previous().len() > 10 {
                attempt.error("refusing the redirect (to plain HTTP, or too many)")
            } else {
                attempt.follow()
            }
        });
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(30))
            .read_timeout(Duration::from_secs(60))
            .redirect(redirect)
            .build()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Self { runtime, client })
    }

    /// Writes the body of `url` into `into` as it arrives (at most [`MAX_DOWNLOAD`] bytes;
    /// a body shorter or longer than its `Content-Length` is an error).
    pub fn get_into(&self, url: &str, into: &mut dyn Write) -> Result<()> {
        self.runtime.block_on(async {
            let mut response = self.client.get(url).send().await?;
            let status = response.status();
            if !status.is_success() {
                bail!("HTTP {status}");
            }
            let declared = response.content_length();
            let mut received: u64 = 0;
            while let Some(chunk) = response.chunk().await? {
                received += chunk.len() as u64;
                if received > MAX_DOWNLOAD {
                    bail!("larger than {MAX_DOWNLOAD} bytes");
                }
                into.write_all(&chunk).context("storing the download")?;
            }
            if let Some(declared) = declared
                && declared != received
            {
                bail!("the server announced {declared} bytes but sent {received}");
            }
            Ok(())
        })
    }
}
