//! Progress bars drawn by indicatif on stderr: one [`Bar`] for save and load (an
//! [`archive::Progress`]), and [`Transfers`], one bar per blob for pull and push (a
//! [`TransferProgress`]).
//!
//! Bars are hidden when stderr is not a terminal (pipes, CI logs, tests): indicatif's
//! stderr target draws nothing there, and we ask for a hidden target explicitly as well.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sealer_image_store::{Digest, archive};
use sealer_registry_client::{BlobOutcome, TransferProgress};

/// A byte-counting progress bar with throughput.
#[derive(Debug)]
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar labelled `message`; hidden unless stderr is a terminal.
    pub fn new(message: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(spinner_style());
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar }
    }

    /// Removes the bar from the screen.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // Errors are printed after this: the bar must not be left half drawn above them.
        self.bar.finish_and_clear();
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{spinner} {msg} {binary_bytes} ({binary_bytes_per_sec}) {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    )
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl archive::Progress for Bar {
    fn set_total(&self, bytes: u64) {
        if bytes == 0 {
            // Unknown: keep the spinner.
            self.bar.unset_length();
            self.bar.set_style(spinner_style());
        } else {
            self.bar.set_length(bytes);
            self.bar.set_style(bar_style());
        }
    }

    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}

/// One bar per blob in flight, under each other.
#[derive(Debug)]
pub struct Transfers {
    bars: MultiProgress,
    by_digest: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Transfers {
    /// Bars on stderr, hidden with `quiet` or when stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        let target = if !quiet && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Self {
            bars: MultiProgress::with_draw_target(target),
            by_digest: Mutex::default(),
        }
    }

    fn bar(&self, digest: &Digest) -> Option<ProgressBar> {
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(digest)
            .cloned()
    }

    /// Removes every bar (before the summary is printed).
    pub fn clear(&self) {
        let bars: Vec<ProgressBar> = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, bar)| bar)
            .collect();
        for bar in bars {
            bar.finish_and_clear();
        }
        let _ = self.bars.clear();
    }
}

impl Drop for Transfers {
    fn drop(&mut self) {
        self.clear();
    }
}

impl TransferProgress for Transfers {
    fn blob_started(&self, digest: &Digest, size: u64) {
        let bar = self.bars.add(ProgressBar::new(size));
        bar.set_style(bar_style());
        bar.set_message(digest.short().to_owned());
        self.by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest.clone(), bar);
    }

    fn blob_advanced(&self, digest: &Digest, bytes: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.inc(bytes);
        }
    }

    fn blob_restarted(&self, digest: &Digest, offset: u64) {
        if let Some(bar) = self.bar(digest) {
            bar.set_position(offset);
        }
    }

    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        let bar = self
            .by_digest
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(digest);
        if let Some(bar) = bar {
            if outcome == BlobOutcome::Transferred {
                bar.finish();
            } else {
                bar.finish_and_clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use archive::Progress;

    #[test]
    fn one_bar_per_blob_while_it_moves() {
        let transfers = Transfers::new(true);
        let digest = Digest::sha256(b"layer");
        transfers.blob_started(&digest, 100);
        transfers.blob_advanced(&digest, 60);
        transfers.blob_restarted(&digest, 40);
        transfers.blob_advanced(&digest, 60);
        let bar = transfers.bar(&digest).unwrap();
        assert_eq!(bar.position(), 100);
        assert!(bar.is_hidden());
        transfers.blob_finished(&digest, BlobOutcome::Transferred);
        assert!(transfers.bar(&digest).is_none());
        // Callbacks for blobs without a bar are ignored.
        transfers.blob_advanced(&Digest::sha256(b"other"), 1);
    }

    #[test]
    fn counts_bytes_and_accepts_an_unknown_total() {
        let bar = Bar::new("test");
        bar.set_total(0);
        bar.advance(10);
        bar.set_total(100);
        bar.advance(5);
        assert_eq!(bar.bar.position(), 15);
        assert_eq!(bar.bar.length(), Some(100));
        // `cargo test` captures stderr through a pipe or runs without a terminal in CI.
        if !std::io::stderr().is_terminal() {
            assert!(bar.bar.is_hidden());
        }
    }
}
