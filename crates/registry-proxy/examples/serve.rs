//! Serves an image store read-only as an OCI distribution registry on `127.0.0.1:PORT`, until
//! Ctrl-C: `cargo run -p sealer-registry-proxy --example serve -- ROOT [PORT]`.
//!
//! `ROOT` is the store directory (created when missing); `PORT` defaults to 5000. Every
//! other setting is the default of `sealer registry serve` (`examples/registry.yaml`): no
//! auth, no TLS, no upstreams; pushes are answered 403 `DENIED`. An image named
//! `localhost/team/app:v1` in the store is pulled as `127.0.0.1:PORT/team/app:v1`, for
//! example with `skopeo inspect --tls-verify=false docker://127.0.0.1:PORT/team/app:v1`.
//! One access log line per request goes to stderr.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use sealer_fs_abstraction::error_chain;
use sealer_registry_proxy::{Mode, ServerConfig, Storage, run, shutdown_signal};

const USAGE: &str = "usage: serve ROOT [PORT]";

#[tokio::main]
async fn main() -> ExitCode {
    let (root, port) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        storage: Some(Storage::Path(root)),
        mode: Mode::ReadOnly,
        ..ServerConfig::default()
    };
    println!("serving on http://{} (Ctrl-C stops)", config.listen);
    if let Err(error) = run(&config, shutdown_signal()).await {
        eprintln!("error: {}", error_chain(&error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_args() -> Result<(PathBuf, u16), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(option) = args.iter().find(|arg| arg.starts_with('-')) {
        return Err(format!("unknown option {option}"));
    }
    match args.as_slice() {
        [root] => Ok((PathBuf::from(root), 5000)),
        [root, port] => {
            let port = port
                .parse()
                .map_err(|_| format!("invalid PORT {port:?}: expected a number 0-65535"))?;
            Ok((PathBuf::from(root), port))
        }
        _ => Err("expected ROOT and at most one PORT".to_owned()),
    }
}
