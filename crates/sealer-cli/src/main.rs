//! The `sealer` command: argument parsing and printing around the sealer libraries. No logic
//! lives here; every decision is made by a library call (see ARCHITECTURE.md).

/// `println!` that returns the error instead of panicking (on a closed pipe, for example).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// `eprintln!` that never panics: a closed stderr (`sealer … 2>&1 | head -1`) leaves
/// nowhere to report to, so the line is dropped.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cli;
mod commands;
mod download;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // A server reports what it serves; other commands speak only about problems.
    let server = matches!(
        cli.command,
        cli::Command::Registry {
            command: cli::RegistryCommand::Serve(_)
        }
    );
    init_logging(
        cli.verbose,
        if server { "info" } else { "warn" },
        cli.log_format,
    );
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // `sealer images | head -1`: the reader has seen enough.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            tell!("error: {}", error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, each line with its UTC time: warnings (`quiet`) by default, more with
/// each `-v`; `RUST_LOG` wins. JSON lines carry the event's fields at the top level
/// (`timestamp`, `level`, `message`, `status`, …) and the request span, if any, as `span`.
fn init_logging(verbose: u8, quiet: &str, format: cli::LogFormat) {
    let level = match verbose {
        0 => quiet,
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1);
    match format {
        cli::LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        cli::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, each once (the one mechanism every front end uses).
fn error_chain(error: &anyhow::Error) -> String {
    sealer_registry_client::error_chain(&**error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_error_chain_is_printed_once() {
        let inner = std::io::Error::other("disk on fire");
        let error = Err::<(), _>(inner)
            .context("read blob sha256:ab: disk on fire")
            .context("loading archive /x.tar")
            .unwrap_err();
        assert_eq!(
            error_chain(&error),
            "loading archive /x.tar: read blob sha256:ab: disk on fire"
        );
    }
}
