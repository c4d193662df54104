//! Progress bars for save and load: an [`archive::Progress`] drawn by indicatif on stderr.
//!
//! The bar is hidden when stderr is not a terminal (pipes, CI logs, tests): indicatif's
//! stderr target draws nothing there, and we ask for a hidden target explicitly as well.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sealer_image_store::archive;

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

#[cfg(test)]
mod tests {
    use super::*;
    use archive::Progress;

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
