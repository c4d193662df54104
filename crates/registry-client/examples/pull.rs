//! Pulls an image from a registry into an image store, printing each blob's progress:
//! `cargo run -p sealer-registry-client --example pull -- REFERENCE ROOT [--all-platforms]`.
//!
//! `REFERENCE` is written as for `docker pull` (`nginx`, `quay.io/coreos/etcd:v3.5.9`,
//! `127.0.0.1:5000/team/app@sha256:…`). `ROOT` is the store directory, created when missing.
//! Without `--all-platforms` only the host's platform of a multi-arch image is pulled.
//! Credentials come from docker's `config.json` (`$DOCKER_CONFIG`, else `~/.docker`: `auths`,
//! `credsStore`, `credHelpers`) or containers' `auth.json`; anonymous otherwise. Loopback
//! registries may answer over plain HTTP; any other must speak HTTPS.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sealer_image_store::{Digest, Reference, Store};
use sealer_registry_client::{
    BlobOutcome, ClientOptions, PlatformSelection, RegistryClient, TransferProgress, error_chain,
};

const USAGE: &str = "usage: pull REFERENCE ROOT [--all-platforms]";

/// Prints a line when a blob starts, resumes and ends (several move at once).
struct PrintProgress;

impl TransferProgress for PrintProgress {
    fn blob_started(&self, digest: &Digest, size: u64) {
        println!("  {} fetching {size} bytes", digest.short());
    }

    fn blob_restarted(&self, digest: &Digest, offset: u64) {
        println!("  {} resuming at byte {offset}", digest.short());
    }

    fn blob_finished(&self, digest: &Digest, outcome: BlobOutcome) {
        let what = match outcome {
            BlobOutcome::Transferred => "done",
            BlobOutcome::AlreadyPresent | BlobOutcome::Mounted => "already in the store",
            BlobOutcome::Failed => "failed",
        };
        println!("  {} {what}", digest.short());
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (reference, root, platforms) = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = pull(&reference, &root, platforms).await {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn parse_args() -> Result<(Reference, PathBuf, PlatformSelection), String> {
    let mut platforms = PlatformSelection::Host;
    let mut positional = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--all-platforms" => platforms = PlatformSelection::All,
            _ if arg.starts_with('-') => return Err(format!("unknown option {arg}")),
            _ => positional.push(arg),
        }
    }
    let [reference, root] = positional.as_slice() else {
        return Err("expected REFERENCE and ROOT".to_owned());
    };
    let reference = Reference::parse_user_input(reference)
        .map_err(|error| format!("invalid REFERENCE {reference:?}: {error}"))?;
    Ok((reference, PathBuf::from(root), platforms))
}

async fn pull(
    reference: &Reference,
    root: &Path,
    platforms: PlatformSelection,
) -> Result<(), Box<dyn Error>> {
    let store = Store::open_dir(root)?;
    let client = RegistryClient::new(ClientOptions::default())?;
    println!("pulling {reference} into {}", root.display());
    let report = client
        .pull(&store, reference, platforms, &PrintProgress)
        .await?;
    let platforms: Vec<String> = report.platforms.iter().map(ToString::to_string).collect();
    println!("pulled {} ({})", report.reference, report.digest);
    if !platforms.is_empty() {
        println!("platforms: {}", platforms.join(", "));
    }
    println!(
        "{} blobs fetched ({} bytes), {} already present",
        report.blobs_fetched, report.bytes_fetched, report.blobs_present
    );
    Ok(())
}
