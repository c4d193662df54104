//! Running tools (skopeo, openssl) with a deadline.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::Result;

/// Runs `command` to completion with its stdout and stderr captured (stdin is null); kills it
/// and fails when it runs longer than `timeout`. The exit status is the caller's to judge.
pub fn run_bounded(command: &mut Command, timeout: Duration) -> Result<Output> {
    let program = format!("{:?}", command.get_program());
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr
                .and_then(|reader| reader.join().ok())
                .unwrap_or_default();
            bail!(
                "{command:?} did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Runs `program ARGS…` with [`run_bounded`]; fails (with the command line, status, stdout
/// and stderr) unless it exits 0. Returns stdout.
pub fn run_ok(program: &str, args: &[&str], timeout: Duration) -> Result<Vec<u8>> {
    let output = run_bounded(Command::new(program).args(args), timeout)?;
    if !output.status.success() {
        bail!("{}", describe(program, args, &output));
    }
    Ok(output.stdout)
}

/// A failed command, for error messages.
pub(crate) fn describe(program: &str, args: &[&str], output: &Output) -> String {
    format!(
        "{program} {}\nexit: {}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Reads a pipe to its end on a thread (so that a chatty child never blocks on a full pipe).
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}
