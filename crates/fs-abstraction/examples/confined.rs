//! Opens a rooted `Fs` on a directory, writes a file in it atomically, then shows that a
//! `..` path, an absolute path and a symlink leading out of the root are all refused:
//! `cargo run -p sealer-fs-abstraction --example confined -- DIR`.
//!
//! `DIR` is created when missing. The example leaves `DIR/hello.txt` and the symlink
//! `DIR/outside` (pointing to `/etc`) behind; nothing outside `DIR` is read or written.

use std::error::Error;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use sealer_fs_abstraction::{AtomicFile, Fs, FsError, RealFs, error_chain};

const USAGE: &str = "usage: confined DIR";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if let Err(error) = run(Path::new(&dir)) {
        eprintln!("error: {}", error_chain(&*error));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
    let fs = RealFs::create_root(dir)?;
    println!("opened {} as the root", fs.root().display());

    // Written under a temporary name, fsynced, renamed on commit: readers see the old file
    // or the whole new one, never a part.
    let mut file = AtomicFile::create(&fs, Path::new("hello.txt"))?;
    file.write_all(b"hello from inside the root\n")?;
    file.commit()?;
    let text = fs.read(Path::new("hello.txt"))?;
    println!(
        "wrote hello.txt atomically and read it back: {:?}",
        String::from_utf8_lossy(&text)
    );

    // A symlink's target is stored as written; following it out of the root is refused.
    let link = Path::new("outside");
    if fs.symlink_metadata(link).is_ok() {
        fs.remove_file(link)?;
    }
    fs.symlink(Path::new("/etc"), link)?;

    let attempts = [
        ("a path climbing out with ..", "../escape.txt"),
        ("an absolute path", "/etc/hostname"),
        (
            "a symlink leading out (outside -> /etc)",
            "outside/hostname",
        ),
    ];
    for (what, path) in attempts {
        match fs.read(Path::new(path)) {
            Err(error @ (FsError::InvalidPath { .. } | FsError::Escape { .. })) => {
                println!("refused {what}: {error}");
            }
            Err(error) => return Err(format!("reading {path}: {error}").into()),
            Ok(_) => return Err(format!("reading {path} was not refused").into()),
        }
    }
    Ok(())
}
