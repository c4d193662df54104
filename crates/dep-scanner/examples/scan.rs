//! Scans a directory or one file for the container images a cluster needs and prints each
//! image with every file:line that names it, then the warnings:
//! `cargo run -p sealer-dep-scanner --example scan -- PATH`.
//!
//! `PATH` is a cluster tree (`manifests/`, `charts/`, `application/apps/`, `imageList`), a
//! Helm chart, any directory of Kubernetes YAML, or one YAML file or image list; for example
//! `examples/nginx-cluster` of this repository. Charts are read statically (no `helm`).

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use sealer_dep_scanner::{ScanOptions, scan, scan_file};
use sealer_fs_abstraction::{FileKind, Fs, RealFs, error_chain};

const USAGE: &str = "usage: scan PATH";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(error) = run(Path::new(&path)) {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(path: &Path) -> Result<(), Box<dyn Error>> {
    let options = ScanOptions::default();
    // A directory is the root; a file is scanned inside its directory, named by its name.
    let report = match RealFs::open_root(path) {
        Ok(root) => scan(&root, &options)?,
        Err(_) => {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            let name = path.file_name().ok_or_else(|| {
                format!("{} names neither a directory nor a file", path.display())
            })?;
            let dir = RealFs::open_root(parent)?;
            let metadata = dir.metadata(Path::new(name))?;
            if metadata.kind != FileKind::File {
                return Err(
                    format!("{} is not a directory or a regular file", path.display()).into(),
                );
            }
            scan_file(&dir, Path::new(name), &options)?
        }
    };
    if report.images.is_empty() {
        println!("no images found in {}", path.display());
    }
    for finding in &report.images {
        let runtime = if finding.runtime { " (runtime)" } else { "" };
        println!("{}{runtime}", finding.reference);
        for source in &finding.sources {
            println!("    {source}");
        }
    }
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    Ok(())
}
