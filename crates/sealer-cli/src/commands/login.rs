//! `sealer login` and `sealer logout`.

use std::io::{IsTerminal, Read};

use anyhow::{Context, Result, bail};
use sealer_registry_client::normalize_registry;

use super::{registry_client, runtime};
use crate::cli::{LoginArgs, LogoutArgs};

pub fn login(args: &LoginArgs) -> Result<()> {
    let host = normalize_registry(&args.host)?;
    let Some(username) = args.username.as_deref() else {
        bail!("give the user name with -u USER (sealer never prompts)");
    };
    if !args.password_stdin {
        bail!("give the password on standard input with --password-stdin (sealer never prompts)");
    }
    if std::io::stdin().is_terminal() {
        tell!("Reading the password from standard input (end with Ctrl-D)");
    }
    let mut password = String::new();
    std::io::stdin()
        .take(64 << 10)
        .read_to_string(&mut password)
        .context("reading the password from standard input")?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("the password on standard input is empty");
    }
    let client = registry_client(&host, &args.registry, 1)?;
    let path = runtime()?
        .block_on(client.login(&host, username, password))
        .with_context(|| format!("logging in to {host}"))?;
    say!("Login succeeded; credentials saved in {}", path.display());
    Ok(())
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
