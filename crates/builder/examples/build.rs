//! Builds the Kubefile of a build context into an image store under a name, printing each
//! step: `cargo run -p sealer-builder --example build -- CONTEXT ROOT NAME`.
//!
//! For example `-- examples/nginx-cluster /tmp/store localhost/nginx-cluster:v1` (from the
//! repository's root). `ROOT` is created when missing. The build is for the host's platform
//! and in lite mode: the images the cluster needs are not pulled and carried (`sealer build`
//! does that, with a registry client as the engine's pull hook), so the base must be
//! `FROM scratch` or an image already in the store, and APP sources must be `local://`.
//! Build twice: every layer comes from the layer cache and the digest is the same.

use std::error::Error;
use std::path::Path;
use std::process::ExitCode;

use sealer_builder::engine::{
    BuildMode, BuildObserver, BuildOptions, StepInfo, StepOutcome, build,
};
use sealer_builder::kubefile::{DEFAULT_NAME, parse_file};
use sealer_fs_abstraction::{RealFs, error_chain};
use sealer_image_store::{Reference, Store};

const USAGE: &str = "usage: build CONTEXT ROOT NAME";

/// Prints each step as it ends.
struct PrintSteps;

impl BuildObserver for PrintSteps {
    fn step_finished(&mut self, step: &StepInfo, outcome: StepOutcome) {
        let how = match outcome {
            StepOutcome::Cached => "cached".to_owned(),
            StepOutcome::Built(took) => format!("built in {took:.1?}"),
            StepOutcome::Metadata(_) => "metadata".to_owned(),
        };
        println!("[{}/{}] {} ({how})", step.number, step.total, step.text);
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [context, root, name] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let name = match Reference::parse_user_input(name) {
        Ok(name) => name,
        Err(error) => {
            eprintln!("error: invalid NAME {name:?}: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = run(Path::new(context), Path::new(root), name) {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(context_dir: &Path, root: &Path, name: Reference) -> Result<(), Box<dyn Error>> {
    // Sources are read through this handle, so no COPY can reach outside the context.
    let context = RealFs::open_root(context_dir)?;
    let kubefile = parse_file(&context, Path::new(DEFAULT_NAME))?;
    for warning in &kubefile.warnings {
        eprintln!("warning: {warning}");
    }
    let store = Store::open_dir(root)?;
    let options = BuildOptions {
        tags: vec![name.clone()],
        build_mode: BuildMode::Lite,
        ..BuildOptions::default()
    };
    let report = build(&kubefile, &context, &store, &options, &mut PrintSteps)?;
    for warning in &report.warnings {
        eprintln!("warning: {warning}");
    }
    println!(
        "built {name} ({}): {} layers built, {} from the cache",
        report.descriptor.digest, report.layers_built, report.layers_cached
    );
    Ok(())
}
