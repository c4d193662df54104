//! `sealer login` and `sealer logout`.

use std::io::{BufRead, IsTerminal, Read};

use anyhow::{Context, Result, bail};
use sealer_registry_client::normalize_registry;

use super::{registry_client, runtime};
use crate::cli::{LoginArgs, LogoutArgs};

pub fn login(args: &LoginArgs) -> Result<()> {
    let host = normalize_registry(&args.host)?;
    let interactive = !args.password_stdin && std::io::stdin().is_terminal();
    if !args.password_stdin && !interactive {
        bail!("standard input is not a terminal: give the password on it with --password-stdin");
    }
    let username = match args.username.as_deref() {
        Some(username) => username.to_owned(),
        None if interactive => prompt_line("Username: ", true)?,
        None => bail!("give the user name with -u USER"),
    };
    if username.is_empty() {
        bail!("the user name is empty");
    }
    let password = if interactive {
        prompt_line("Password: ", false)?
    } else {
        let mut password = String::new();
        std::io::stdin()
            .take(64 << 10)
            .read_to_string(&mut password)
            .context("reading the password from standard input")?;
        password.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let password = password.as_str();
    let username = username.as_str();
    let client = registry_client(&host, &args.registry, 1)?;
    let path = runtime()?
        .block_on(client.login(&host, username, password))
        .with_context(|| format!("logging in to {host}"))?;
    say!("Login succeeded; credentials saved in {}", path.display());
    Ok(())
}

/// Asks on the terminal (stdin) for one line, the prompt on stderr; with `echo` off the typed
/// text is not shown, and echo is restored even when reading fails.
fn prompt_line(prompt: &str, echo: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let saved = if echo {
        None
    } else {
        let saved = rustix::termios::tcgetattr(&stdin).context("reading the terminal's mode")?;
        let mut quiet = saved.clone();
        quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &quiet)
            .context("turning the terminal's echo off")?;
        Some(saved)
    };
    // Only now (echo already off): a fast typist's first keys are not shown either.
    {
        use std::io::Write as _;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "{prompt}").and_then(|()| stderr.flush());
    }
    let mut line = String::new();
    let read = stdin.lock().take(64 << 10).read_line(&mut line);
    if let Some(saved) = saved {
        // The Enter typed was not echoed either.
        tell!("");
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved)
            .context("restoring the terminal's echo")?;
    }
    read.context("reading from the terminal")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn logout(args: &LogoutArgs) -> Result<()> {
    let host = normalize_registry(&args.host)?;
    let client = registry_client(&host, &crate::cli::RegistryArgs::default(), 1)?;
    if client.logout(&host)? {
        say!("Removed the credentials for {host}");
    } else {
        say!("No credentials were saved for {host}");
    }
    Ok(())
}
